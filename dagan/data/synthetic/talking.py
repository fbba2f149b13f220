"""Synthetic talking heads whose mouth follows speech, for the audio-driven tests and smoke runs.

Speech comes from espeak-ng (the Debian package ``espeak-ng`` or the ``espeakng-loader`` wheel), called through
its C API so that every phoneme arrives with its time in the audio. A phoneme-to-openness table turns the
phoneme timeline into a jaw trajectory (targets at phoneme centres, linearly interpolated, smoothed over
~40 ms for coarticulation), which drives the procedural head of :mod:`dagan.data.synthetic.heads`. Each identity has
its own head-pose style (turn / nod / tilt amplitudes and rhythm, and how much speech excites them).

Keypoints: instead of running a DaGAN keypoint detector on rendered frames (slow on a CPU), the clips give
**ground-truth keypoints**: fixed points of the head surface (lips, chin, mouth corners, nose, eyes, brows)
moved by the head pose and the jaw exactly as :func:`dagan.data.synthetic.heads.warp_points` moves them, projected
by the clip's camera to DaGAN's normalised [-1, 1] coordinates, with Jacobians = the projected local frame
(d image position / d surface x, y). The motion space is therefore the same kind as DaGAN's (K points + 2x2
Jacobians), small, and exactly known. ``render_talking_frames`` renders the frames too, when a test needs
pixels.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import threading
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

from dagan.audio.decode import SAMPLE_RATE, Audio
from dagan.data.synthetic.heads import (HEAD_DISTANCE, HeadShape, eye_point, make_intrinsics, open_jaw,
                                        render_frame, rotation_from_angles, smooth_trajectory, prepare_face_texture,
                                        make_background_texture, upper_lid)

# Jaw openness (0 closed, 1 wide open) by espeak-ng phoneme mnemonic, matched on the longest prefix.
OPENNESS = {"_": 0.0, "p": 0.0, "b": 0.0, "m": 0.0, "f": 0.15, "v": 0.15, "w": 0.2, "T": 0.2, "D": 0.2,
            "s": 0.15, "z": 0.15, "S": 0.25, "Z": 0.25, "tS": 0.25, "dZ": 0.25, "t": 0.2, "d": 0.2, "n": 0.2,
            "l": 0.3, "r": 0.3, "k": 0.3, "g": 0.3, "N": 0.3, "h": 0.4, "j": 0.25,
            "a": 1.0, "aI": 0.95, "aU": 0.95, "A": 1.0, "0": 0.8, "O": 0.8, "V": 0.75, "3": 0.6, "@": 0.45,
            "E": 0.7, "e": 0.6, "eI": 0.6, "I": 0.4, "i": 0.35, "U": 0.45, "u": 0.4, "oU": 0.7, "o": 0.7}
CONSONANT_DEFAULT, VOWEL_DEFAULT = 0.25, 0.6
VOWEL_LETTERS = "aeiouAEIOUV03@"
COARTICULATION_SECONDS = 0.04  # std of the Gaussian that smooths the jaw trajectory

# Head landmarks (object coordinates, see dagan.data.synthetic.heads), ordered so that the first few carry the mouth:
# a model with K keypoints uses the first K.
LANDMARKS = ((0.0, 0.215, -0.335), (0.0, 0.275, -0.315), (0.0, 0.18, -0.345), (-0.07, 0.19, -0.32),
             (0.07, 0.19, -0.32), (0.0, 0.085, -0.43), (-0.105, -0.02, -0.35), (0.105, -0.02, -0.35),
             (-0.095, -0.075, -0.36), (0.095, -0.075, -0.36), (-0.15, 0.22, -0.24), (0.15, 0.22, -0.24))
EYE_LANDMARKS = (6, 7)  # the eyes of LANDMARKS (image left, right): on the upper lids when given eye closures
JACOBIAN_STEP = 1e-3
JACOBIAN_SCALE = 0.1  # object units per Jacobian column, so Jacobians are O(1)

ESPEAK_EVENT_PHONEME, ESPEAK_EVENT_LIST_TERMINATED = 7, 0
ESPEAK_HINT = "install espeak-ng (apt-get install espeak-ng) or the espeakng-loader wheel (pip install espeakng-loader)"


class SpeechUnavailable(ImportError):
    """No espeak-ng library was found; the message says how to install one."""


class Phoneme(NamedTuple):
    start: float  # seconds
    name: str  # espeak-ng mnemonic


class Speech(NamedTuple):
    audio: Audio  # 16 kHz mono
    phonemes: tuple[Phoneme, ...]


@dataclass(frozen=True)
class PoseStyle:
    """A speaker's head-motion habit: amplitudes (degrees) of turn / nod / tilt, their rhythm (Hz), and how much
    of the motion only happens while speaking (0: always, 1: only when speaking)."""

    yaw_degrees: float = 8.0
    pitch_degrees: float = 5.0
    roll_degrees: float = 2.0
    frequency_hz: tuple[float, float] = (0.3, 0.8)
    speech_gain: float = 0.5


class TalkingClip(NamedTuple):
    """One synthetic talking clip. keypoints: (T, K, 2) in [-1, 1]; jacobians: (T, K, 2, 2); mouth_opening: (T,);
    head_angles: (T, 3) degrees (yaw, pitch, roll); translation: (T, 3); intrinsics: (3, 3); fps."""

    audio: Audio
    keypoints: np.ndarray
    jacobians: np.ndarray
    mouth_opening: np.ndarray
    head_angles: np.ndarray
    translation: np.ndarray
    intrinsics: np.ndarray
    fps: float


# espeak-ng through ctypes.
class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
_ESPEAK_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _espeak() -> tuple[ctypes.CDLL, int]:
    """The espeak-ng library, initialised for synchronous synthesis with phoneme events: (library, sample rate)."""
    path, data = ctypes.util.find_library("espeak-ng"), None
    if path is None:
        try:
            import espeakng_loader

            path, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        except ImportError:
            raise SpeechUnavailable(f"text-to-speech needs the espeak-ng library: {ESPEAK_HINT}") from None
    library = ctypes.CDLL(path)
    library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    sample_rate = library.espeak_Initialize(1, 0, data.encode() if data else None, 1)  # retrieval, phoneme events
    if sample_rate <= 0:
        raise SpeechUnavailable(f"espeak-ng at {path} failed to initialise; {ESPEAK_HINT}")
    return library, sample_rate


def available() -> bool:
    """Whether text-to-speech works here."""
    try:
        _espeak()
        return True
    except (SpeechUnavailable, OSError):
        return False


@functools.lru_cache(maxsize=256)
def synthesize(text: str, voice: str = "en", rate: int = 160, pitch: int = 50) -> Speech:
    """Speak ``text`` (16 kHz mono) with the times of its phonemes. Cached: equal arguments, equal result."""
    from scipy.signal import resample_poly

    library, native_rate = _espeak()
    pieces, phonemes = [], []

    def receive(wave, count, events) -> int:
        if count > 0:
            pieces.append(np.ctypeslib.as_array(wave, shape=(count,)).copy())
        index = 0
        while events[index].type != ESPEAK_EVENT_LIST_TERMINATED:
            if events[index].type == ESPEAK_EVENT_PHONEME:
                phonemes.append(Phoneme(events[index].audio_position / 1000.0,
                                        events[index].id.string.decode("ascii", "replace")))
            index += 1
        return 0

    callback = _CALLBACK(receive)
    encoded = text.encode("utf-8")
    with _ESPEAK_LOCK:
        library.espeak_SetSynthCallback(callback)
        library.espeak_SetVoiceByName(voice.encode())
        library.espeak_SetParameter(1, rate, 0)  # espeakRATE, words per minute
        library.espeak_SetParameter(3, pitch, 0)  # espeakPITCH, 0-100
        library.espeak_Synth(encoded, len(encoded) + 1, 0, 1, 0, 0, None, None)
        library.espeak_Synchronize()
    native = np.concatenate(pieces).astype(np.float32) / 32768.0 if pieces else np.zeros(1, np.float32)
    divisor = math.gcd(SAMPLE_RATE, native_rate)
    samples = resample_poly(native, SAMPLE_RATE // divisor, native_rate // divisor).astype(np.float32)
    return Speech(Audio(np.clip(samples, -1, 1), SAMPLE_RATE), tuple(phonemes))


# Jaw from phonemes.
def openness(phoneme: str) -> float:
    """Jaw openness of an espeak-ng phoneme (longest matching prefix in OPENNESS; else vowel/consonant default)."""
    name = phoneme.rstrip(":;-'#")
    for length in range(len(name), 0, -1):
        if name[:length] in OPENNESS:
            return OPENNESS[name[:length]]
    if not name:
        return 0.0
    return VOWEL_DEFAULT if name[0] in VOWEL_LETTERS else CONSONANT_DEFAULT


def mouth_trajectory(phonemes: Sequence[Phoneme], duration: float, times: np.ndarray) -> np.ndarray:
    """Jaw openness (T,) in [0, 1] at ``times``: each phoneme's target at its centre, closed at both ends,
    linearly interpolated, then smoothed by a Gaussian of COARTICULATION_SECONDS."""
    starts = [p.start for p in phonemes] + [duration]
    centres = [0.0] + [(starts[i] + starts[i + 1]) / 2 for i in range(len(phonemes))] + [duration]
    targets = [0.0] + [openness(p.name) for p in phonemes] + [0.0]
    fine = np.arange(0.0, duration + 0.2, 0.005)  # 200 Hz
    curve = np.interp(fine, centres, targets, left=0.0, right=0.0)
    kernel_time = np.arange(-3 * COARTICULATION_SECONDS, 3 * COARTICULATION_SECONDS + 1e-9, 0.005)
    kernel = np.exp(-0.5 * (kernel_time / COARTICULATION_SECONDS) ** 2)
    curve = np.convolve(curve, kernel / kernel.sum(), mode="same")
    return np.interp(times, fine, curve).astype(np.float32)


def speaking(phonemes: Sequence[Phoneme], duration: float, times: np.ndarray, smoothing: float = 0.25) -> np.ndarray:
    """Smoothed speech activity (T,) in [0, 1]: 1 inside words, 0 in pauses, low-passed over ``smoothing`` s."""
    starts = [p.start for p in phonemes] + [duration]
    fine = np.arange(0.0, duration + 0.2, 0.01)
    active = np.zeros_like(fine)
    for index, phoneme in enumerate(phonemes):
        if not phoneme.name.startswith("_"):
            active[(fine >= starts[index]) & (fine < starts[index + 1])] = 1.0
    kernel = np.ones(max(1, int(smoothing / 0.01)))
    active = np.convolve(active, kernel / kernel.sum(), mode="same")
    return np.interp(times, fine, active)


def head_motion(style: PoseStyle, activity: np.ndarray, fps: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Head angles (T, 3) degrees and translation (T, 3) for a style; ``activity`` (T,) scales the speech part."""
    generator = torch.Generator().manual_seed(seed)
    waves = smooth_trajectory(len(activity), fps, 3, style.frequency_hz, 2, generator).numpy()  # (T, 3) in [-1, 1]
    gain = (1.0 - style.speech_gain) + style.speech_gain * activity[:, None]
    angles = waves * np.array([style.yaw_degrees, style.pitch_degrees, style.roll_degrees]) * gain
    translation = np.zeros((len(activity), 3))
    translation[:, 2] = HEAD_DISTANCE
    return angles.astype(np.float32), translation.astype(np.float32)


# Keypoints.
def project_landmarks(angles: np.ndarray, translation: np.ndarray, mouth_opening: np.ndarray, intrinsics: np.ndarray,
                      size: int, num_kp: int, shape: HeadShape = HeadShape(),
                      eye_closure: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth keypoints (T, K, 2) in [-1, 1] (x, y; ``grid_sample`` convention) and Jacobians (T, K, 2, 2).

    Landmark k (with two neighbours JACOBIAN_STEP along the surface x and y) is opened by the jaw, posed
    (X = R X_object + t) and projected; the Jacobian columns are the projected neighbour offsets per
    JACOBIAN_SCALE object units. eye_closure: (T,) upper lids of the frames (``heads.upper_lid``); given, the eye
    landmarks (EYE_LANDMARKS) sit in the middle of the upper lids' edges instead of the eye centres.
    """
    if not 1 <= num_kp <= len(LANDMARKS):
        raise ValueError(f"num_kp must be in [1, {len(LANDMARKS)}] for the synthetic head, got {num_kp}")
    angles_t = torch.from_numpy(np.asarray(angles, dtype=np.float32))
    rotation = rotation_from_angles(angles_t[:, 0], angles_t[:, 1], angles_t[:, 2]).double()  # (T, 3, 3)
    closures = [None] * len(angles_t) if eye_closure is None else np.asarray(eye_closure, np.float32)
    points = []
    for index, opening in enumerate(np.asarray(mouth_opening, dtype=np.float32)):
        rest = _landmark_points(num_kp, shape, None if closures[index] is None else float(closures[index]))
        moved = open_jaw(rest, float(opening), shape).double()  # (3, 3K)
        points.append(rotation[index] @ moved + torch.from_numpy(np.asarray(translation[index], np.float64))[:, None])
    camera = torch.stack(points).numpy()  # (T, 3, 3K)
    pixels = np.einsum("ij,tjn->tin", np.asarray(intrinsics, np.float64), camera)
    pixels = pixels[:, :2] / pixels[:, 2:3]  # (T, 2, 3K) u, v
    normalised = ((pixels + 0.5) / size * 2.0 - 1.0).reshape(len(camera), 2, 3, num_kp)  # (T, 2, 3, K)
    keypoints = normalised[:, :, 0].transpose(0, 2, 1)  # (T, K, 2)
    columns = (normalised[:, :, 1:] - normalised[:, :, :1]) * (JACOBIAN_SCALE / JACOBIAN_STEP)  # (T, 2, 2, K)
    jacobians = columns.transpose(0, 3, 1, 2)  # (T, K, 2 [x, y], 2 [d/dx, d/dy])
    return keypoints.astype(np.float32), jacobians.astype(np.float32)


def _landmark_points(num_kp: int, shape: HeadShape, eye_closure: Optional[float]) -> torch.Tensor:
    """Rest-pose landmarks with their Jacobian neighbours (3, 3K): point, +x, +y for each of the first K; with
    ``eye_closure``, the eye landmarks on the middle of the upper lids' edges."""
    landmarks = torch.tensor(LANDMARKS[:num_kp], dtype=torch.float32).T  # (3, K)
    if eye_closure is not None:
        x, y = eye_point(0.0, upper_lid(0.0, eye_closure), shape)
        for index, sign in zip(EYE_LANDMARKS, (-1.0, 1.0)):
            if index < num_kp:
                landmarks[0, index], landmarks[1, index] = sign * x, y
    offsets = torch.tensor([[0.0, 0.0, 0.0], [JACOBIAN_STEP, 0.0, 0.0], [0.0, JACOBIAN_STEP, 0.0]]).T  # (3, 3)
    return (landmarks[:, None, :] + offsets[:, :, None]).reshape(3, -1)


def make_talking_clip(speech: Speech, style: PoseStyle, fps: float = 25.0, num_kp: int = 10, size: int = 64,
                      seed: int = 0, lead_seconds: float = 0.0) -> TalkingClip:
    """The talking head that says ``speech`` with ``style``: num_video_frames(duration, fps) frames.

    lead_seconds: silence added before the speech (the head keeps still lips meanwhile).
    """
    from dagan.audio.features import frame_times, num_video_frames

    lead = np.zeros(int(round(lead_seconds * speech.audio.sample_rate)), np.float32)
    audio = Audio(np.concatenate([lead, speech.audio.samples]), speech.audio.sample_rate)
    phonemes = [Phoneme(p.start + lead_seconds, p.name) for p in speech.phonemes]
    times = frame_times(num_video_frames(audio.duration, fps), fps)
    mouth = mouth_trajectory(phonemes, audio.duration, times)
    angles, translation = head_motion(style, speaking(phonemes, audio.duration, times), fps, seed)
    intrinsics = make_intrinsics(size, torch.Generator().manual_seed(1000 + seed)).numpy()
    keypoints, jacobians = project_landmarks(angles, translation, mouth, intrinsics, size, num_kp)
    return TalkingClip(audio, keypoints, jacobians, mouth, angles, translation, intrinsics, fps)


def concatenate_clips(clips: Sequence[TalkingClip]) -> TalkingClip:
    """One clip made of several in a row (same fps and camera); audio is cut to whole frames between them."""
    samples, fields = [], {name: [] for name in ("keypoints", "jacobians", "mouth_opening", "head_angles",
                                                  "translation")}
    for clip in clips:
        frames = len(clip.keypoints)
        length = int(round(frames / clip.fps * clip.audio.sample_rate))
        samples.append(np.pad(clip.audio.samples, (0, max(0, length - len(clip.audio.samples))))[:length])
        for name in fields:
            fields[name].append(getattr(clip, name))
    first = clips[0]
    return TalkingClip(Audio(np.concatenate(samples), first.audio.sample_rate),
                       **{name: np.concatenate(values) for name, values in fields.items()},
                       intrinsics=first.intrinsics, fps=first.fps)


def render_talking_frames(clip: TalkingClip, size: int = 64, seed: int = 0,
                          texture: Optional[np.ndarray] = None) -> np.ndarray:
    """Ray-cast the clip's frames (T, size, size, 3) uint8 (about 0.1 s per 64x64 frame on one CPU core)."""
    generator = torch.Generator().manual_seed(seed)
    background = make_background_texture(generator)
    face = prepare_face_texture(texture, target_height=size)
    angles = torch.from_numpy(clip.head_angles)
    rotation = rotation_from_angles(angles[:, 0], angles[:, 1], angles[:, 2])
    intrinsics = torch.from_numpy(clip.intrinsics).float()
    frames = [render_frame(rotation[t], torch.from_numpy(clip.translation[t]), float(clip.mouth_opening[t]),
                           intrinsics, size, face, background).image for t in range(len(clip.keypoints))]
    return (torch.stack(frames).permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)


# A small corpus: sentences, and identities with their own voice and head-pose style.
SENTENCES = ("the quick brown fox jumps over a lazy dog", "please call me back when you are ready",
             "we will meet at the old bridge tomorrow", "a bright moon rose above the quiet harbour",
             "open the window and let the fresh air in", "my father bought a map of the mountains",
             "she sells sea shells by the sea shore", "bob made a big pot of warm apple soup",
             "how far is the station from the market", "every morning the baker opens his shop",
             "maybe we can paint the boat blue", "the children laughed at the funny puppet",
             "park the car behind the white house", "i would like a cup of hot tea",
             "what time does the museum open", "our team played well in the final match")


class Identity(NamedTuple):
    name: str
    voice: str
    rate: int
    pitch: int
    style: PoseStyle
    seed: int


IDENTITIES = (
    Identity("turner", "en", 150, 40, PoseStyle(18.0, 3.0, 2.0, (0.2, 0.4), 0.3), 1),  # slow wide turns
    Identity("nodder", "en-us", 175, 65, PoseStyle(3.0, 10.0, 1.0, (1.0, 1.6), 0.8), 2),  # quick nods when speaking
    Identity("tilter", "en", 165, 55, PoseStyle(6.0, 4.0, 8.0, (0.4, 0.9), 0.5), 3),
    Identity("still", "en-us", 160, 30, PoseStyle(2.0, 1.5, 0.5, (0.3, 0.6), 0.2), 4),
)


def identity_clip(identity: Identity, sentences: Sequence[str], fps: float = 25.0, num_kp: int = 10,
                  lead_seconds: float = 0.2) -> TalkingClip:
    """``identity`` saying ``sentences`` one after the other (each with ``lead_seconds`` of silence before it)."""
    clips = [make_talking_clip(synthesize(text, identity.voice, identity.rate, identity.pitch), identity.style, fps,
                               num_kp, seed=identity.seed * 100 + index, lead_seconds=lead_seconds)
             for index, text in enumerate(sentences)]
    return concatenate_clips(clips)
