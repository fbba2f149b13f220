"""Offline measures of audio-driven results: lip sync from rendered frames, and head-pose statistics.

* Mouth opening: the inner-lip gap of the 68 iBUG landmarks (mean of |62-66|, |61-67|, |63-65|, 0-based 61..67)
  divided by the mouth width (|48-54|), per frame: scale-free, NaN without a face.
* Lip sync: the correlation of the mouth opening with the audio energy (dB per frame), scanned over lags of
  +-10 frames; a synced video peaks at lag 0 (positive lag: the mouth trails the audio).
* Head pose: per-axis (pitch, yaw, roll) std and frame-to-frame velocity std of the generated video against
  the target's clip, as ratios (1 = the target's amount of motion).
* LSE-D / LSE-C (Prajwal et al. 2020, Wav2Lip's protocol on ``syncnet_python``'s offset search) with SyncNet
  (``dagan.networks.syncnet``) and the user's copy of the release's ``syncnet_v2.model``, never downloaded:
  see :func:`lse_scores` and the section before it.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from dagan.audio.decode import Audio, load_audio
from dagan.audio.features import frame_energy_db, frame_times, mfcc
from dagan.audio.prepare import lagged_correlation
from dagan.checkpoint import CheckpointError, load_strict, read_file
from dagan.faces.alignment import CropBox, warp_to_crop
from dagan.faces.detection import Box, NoFaceFound
from dagan.faces.plans import interpolated_and_smoothed
from dagan.io.video import open_video
from dagan.networks.syncnet import LIP_CLIP_SHAPE, MFCC_WINDOW_SHAPE, SyncNet

INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
MOUTH_CORNERS = (48, 54)


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap / mouth width of one face's (68, 2) landmarks."""
    points = np.asarray(landmarks, dtype=np.float64)
    gap = np.mean([np.linalg.norm(points[upper] - points[lower]) for upper, lower in INNER_LIP_PAIRS])
    return float(gap / max(np.linalg.norm(points[MOUTH_CORNERS[0]] - points[MOUTH_CORNERS[1]]), 1e-6))


class FaceTrack(NamedTuple):
    """Per frame: mouth opening (T,) and head pose (T, 3) pitch/yaw/roll degrees; NaN where no face was found."""

    mouth: np.ndarray
    pose: np.ndarray


def track_faces(frames: Iterable[np.ndarray], analyzer) -> FaceTrack:
    """Landmarks of every frame -> mouth opening and head pose (needs the ``[faces]`` extra)."""
    mouth, pose = [], []
    for frame in frames:
        points = analyzer.landmarks(frame)
        if points is None:
            mouth.append(np.nan)
            pose.append((np.nan,) * 3)
            continue
        mouth.append(mouth_opening(points))
        pose.append(tuple(analyzer.head_pose(points, (frame.shape[1], frame.shape[0]))))
    return FaceTrack(np.array(mouth), np.array(pose, dtype=np.float64).reshape(-1, 3))


def fill_gaps(values: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN entries (T,); all-NaN stays NaN."""
    values = np.asarray(values, dtype=np.float64).copy()
    valid = np.isfinite(values)
    if valid.any() and not valid.all():
        values[~valid] = np.interp(np.flatnonzero(~valid), np.flatnonzero(valid), values[valid])
    return values


def lip_sync_scan(mouth: np.ndarray, audio: Audio, fps: float, max_lag: int = 10) -> dict[int, float]:
    """Correlation of the mouth opening (T,) with the audio energy at each lag in [-max_lag, max_lag] frames."""
    energy = frame_energy_db(audio, frame_times(len(mouth), fps), 1.0 / fps)
    mouth = fill_gaps(mouth)
    return {lag: lagged_correlation(energy, mouth, lag) for lag in range(-max_lag, max_lag + 1)}


class PoseRatios(NamedTuple):
    """Generated / target per-axis (pitch, yaw, roll) std and velocity std."""

    std: np.ndarray
    velocity_std: np.ndarray


def pose_ratios(generated: np.ndarray, target: np.ndarray) -> PoseRatios:
    """Ratios of the spread of two (T, 3) pose tracks (NaN frames dropped)."""
    def spread(track: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        track = track[np.isfinite(track).all(1)]
        return track.std(0), np.diff(track, axis=0).std(0)

    (generated_std, generated_velocity), (target_std, target_velocity) = spread(generated), spread(target)
    return PoseRatios(generated_std / np.maximum(target_std, 1e-6), generated_velocity / np.maximum(target_velocity, 1e-6))


# LSE-D / LSE-C with SyncNet.
#
# The protocol of Wav2Lip (Prajwal et al. 2020, its evaluation/scores_LSE) on syncnet_python's offset search:
# face crops at 25 fps (syncnet_python's run_pipeline framing of a detected face box, 224x224), the audio as
# 16-bit PCM at 16 kHz and its MFCCs (100 per second: 4 per video frame); for every video frame t the network
# embeds the five frames t..t+4 and the 20 MFCC frames 4t..4t+19 (the same 0.2 s); for each audio offset o in
# [-15, 15] frames the distance d_o(t) = ||lips[t] - audio[t - o]|| (audio outside the clip: a zero embedding, as
# the release pads), averaged over t: D(o). LSE-D = min_o D(o), LSE-C = median_o D(o) - min_o D(o), and the
# offset is the arg-min (positive: the audio comes earlier than the mouth, as ``lip_sync_scan``'s lags).

SYNCNET_FPS = 25.0
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
MFCC_PER_FRAME = 4  # 100 MFCC frames per second / 25 fps
MAX_OFFSET = 15  # frames searched on each side (Wav2Lip's --vshift)
CROP_SCALE = 0.4  # syncnet_python's --crop_scale
PCM16_SCALE = 32768.0  # the release reads 16-bit PCM values (its ffmpeg -acodec pcm_s16le)
SYNCNET_HELP = ("the weights are the syncnet_v2.model file of the syncnet_python release by Chung & Zisserman "
                "(github.com/joonson/syncnet_python, its download_model.sh); dagan never downloads them: pass the "
                "file with --syncnet_weights PATH")


def load_syncnet(path: Optional[str | os.PathLike], device: str | torch.device = "cpu") -> SyncNet:
    """SyncNet in eval mode with the release's weights from ``path`` (a bare state dict, read with
    ``weights_only=True``). Raises CheckpointError (one line) without a path, for a missing or unreadable file, a
    pickled whole model, or a state dict that is not SyncNet's."""
    if not path:
        raise CheckpointError(f"LSE-C/LSE-D need SyncNet's weights: {SYNCNET_HELP}")
    state = read_file(path, "cpu", "SyncNet weights", hint=SYNCNET_HELP)
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"SyncNet weights file {os.fspath(path)!r} holds a {type(state).__name__}, not a state "
                              f"dict of tensors; {SYNCNET_HELP}")
    network = SyncNet()
    # Files saved before PyTorch 0.4.1 have no batch-norm counters (unused in eval mode): keep the network's.
    counters = {key: value for key, value in network.state_dict().items() if key.endswith(".num_batches_tracked")}
    load_strict(network, {**counters, **state}, f"SyncNet (file {os.fspath(path)!r})",
                hint=f"it is not the syncnet_python release's syncnet_v2.model ({SYNCNET_HELP})")
    return network.eval().to(device)


def frames_at_syncnet_rate(frames: Iterable[np.ndarray], fps: float) -> Iterator[np.ndarray]:
    """The frames of a video at ``fps`` resampled to 25 fps: output frame t shows source frame round(t fps / 25)
    (dropped or repeated frames, like ffmpeg's ``-r 25``); a 25 fps video passes through unchanged."""
    if abs(fps - SYNCNET_FPS) < 1e-3:
        yield from frames
        return
    output = 0
    for index, frame in enumerate(frames):
        while int(np.floor(output * fps / SYNCNET_FPS + 0.5)) == index:
            yield frame
            output += 1


def release_crop(box: Box, crop_scale: float = CROP_SCALE) -> CropBox:
    """syncnet_python's crop of a face box with half-size s = max(width, height) / 2 and centre (x, y): the square
    of side 2 (1 + crop_scale) s from y - s down to y + (1 + 2 crop_scale) s, centred on x (face and chin)."""
    half = max(box.width, box.height) / 2
    center_x, center_y = box.center
    return CropBox(center_x, center_y + crop_scale * half, 2 * (1 + crop_scale) * half, 0.0)


def face_track(frames: Iterable[np.ndarray], analyzer, num_frames: Optional[int] = None) -> list[CropBox]:
    """The crop of every frame (T,) from the largest detected face: frames without a face interpolated, the track
    smoothed over half a second (``dagan.faces.plans``' crop smoothing). Raises NoFaceFound without any face."""
    found: dict[int, CropBox] = {}
    count = 0
    for index, frame in enumerate(tqdm(frames, total=num_frames, desc="finding faces (LSE)", unit="frame",
                                       leave=False)):
        count = index + 1
        boxes = analyzer.detect(frame)
        if boxes:
            found[index] = release_crop(boxes[0])
    if not found:
        raise NoFaceFound("LSE found no face in the video; it needs one face seen roughly from the front")
    return interpolated_and_smoothed(found, count, SYNCNET_FPS)


def face_crops(frames: Iterable[np.ndarray], track: Sequence[CropBox], size: int = LIP_CLIP_SHAPE[-1]
               ) -> Iterator[np.ndarray]:
    """(size, size, 3) uint8 RGB crops of the frames along the track (T,), one at a time, by
    ``dagan.faces.alignment.warp_to_crop``."""
    for frame, box in zip(frames, track):
        yield warp_to_crop(frame, box.transform((size, size)))


def num_sync_windows(num_frames: int, num_samples: int) -> int:
    """Video frames with a full 5-frame clip and 20-MFCC window, as the release counts them:
    min(frames, samples // 640) - 5."""
    return min(num_frames, num_samples // SAMPLES_PER_FRAME) - 5


def lip_clips(crops: np.ndarray, starts: Sequence[int]) -> torch.Tensor:
    """crops (T, 224, 224, 3) uint8 RGB -> clips (B, 3, 5, 224, 224) float BGR in [0, 255] of frames s..s+4."""
    length = LIP_CLIP_SHAPE[1]
    windows = np.stack([crops[start:start + length] for start in starts])  # (B, 5, H, W, 3)
    bgr = windows[..., ::-1].transpose(0, 4, 1, 2, 3)  # (B, 3, 5, H, W)
    return torch.from_numpy(np.ascontiguousarray(bgr)).float()


def mfcc_windows(cepstra: np.ndarray, starts: Sequence[int]) -> torch.Tensor:
    """cepstra (N, 13) -> windows (B, 1, 13, 20): MFCC frames 4 s .. 4 s + 19 of each video frame s."""
    window = MFCC_WINDOW_SHAPE[-1]
    index = MFCC_PER_FRAME * np.asarray(starts)[:, None] + np.arange(window)[None]  # (B, 20)
    return torch.from_numpy(cepstra[index].transpose(0, 2, 1)[:, None].copy()).float()  # (B, 1, 13, 20)


class SyncEmbeddings(NamedTuple):
    """SyncNet embeddings of every window (T,): lips (T, E) and audio (T, E)."""

    lips: torch.Tensor
    audio: torch.Tensor


@torch.no_grad()
def sync_embeddings(network: SyncNet, crops: Iterable[np.ndarray], cepstra: np.ndarray, num_windows: int,
                    batch_size: int = 20) -> SyncEmbeddings:
    """Embed windows 0..num_windows-1 in batches of ``batch_size``. crops: (224, 224, 3) uint8 RGB frames, a list or
    a stream (at most batch_size + 4 of them are held); cepstra: (N, 13) from :func:`dagan.audio.features.mfcc`."""
    device = next(network.parameters()).device
    clip_length = LIP_CLIP_SHAPE[1]
    lips, audio, buffer = [], [], []
    first = 0  # the window that starts at buffer[0]
    with tqdm(total=num_windows, desc="SyncNet", unit="window", leave=False) as progress:
        for crop in crops:
            buffer.append(crop)
            ready = min(len(buffer) - clip_length + 1, num_windows - first)  # windows whose 5 frames are in
            if ready < batch_size and first + ready < num_windows:
                continue
            lips.append(network.embed_lips(lip_clips(np.stack(buffer), range(ready)).to(device)).cpu())
            audio.append(network.embed_audio(mfcc_windows(cepstra, range(first, first + ready)).to(device)).cpu())
            buffer, first = buffer[ready:], first + ready
            progress.update(ready)
            if first == num_windows:
                break
    if first < num_windows:
        raise ValueError(f"{num_windows} SyncNet windows need {num_windows + clip_length - 1} frames, got fewer")
    return SyncEmbeddings(torch.cat(lips), torch.cat(audio))


def offset_distances(embeddings: SyncEmbeddings, max_offset: int = MAX_OFFSET) -> np.ndarray:
    """Mean distance D(o) (2 K + 1,) for offsets o = -K..K (index o + K): the mean over t of
    ||lips[t] - audio[t - o]||, a zero audio embedding outside the clip (``torch.nn.functional.pairwise_distance``,
    as the release computes it)."""
    lips, audio = embeddings
    padded = torch.nn.functional.pad(audio, (0, 0, max_offset, max_offset))  # (T + 2K, E)
    frames = torch.arange(len(lips))
    means = [torch.nn.functional.pairwise_distance(lips, padded[frames - offset + max_offset]).mean()
             for offset in range(-max_offset, max_offset + 1)]
    return torch.stack(means).double().numpy()


class LSEScores(NamedTuple):
    """LSE-D (lower is better), LSE-C (higher is better), the best offset in frames (positive: the audio comes
    earlier than the mouth), the mean distance per offset (2 K + 1,) and the number of windows averaged."""

    lse_d: float
    lse_c: float
    offset: int
    distances: np.ndarray
    num_windows: int


def lse_from_distances(distances: np.ndarray, num_windows: int) -> LSEScores:
    """LSE-D = min D, LSE-C = median D - min D, offset = arg-min (the first one) - K. distances: (2 K + 1,)."""
    distances = np.asarray(distances, dtype=np.float64)
    best = int(np.argmin(distances))
    return LSEScores(float(distances[best]), float(np.median(distances) - distances[best]),
                     best - (len(distances) - 1) // 2, distances, num_windows)


def lse_scores(video: str | os.PathLike, syncnet_weights: SyncNet | str | os.PathLike | None,
               audio: Optional[str] = None, analyzer=None, batch_size: int = 20, device: str = "cpu",
               max_offset: int = MAX_OFFSET) -> LSEScores:
    """LSE-D / LSE-C of a talking video (the section above): its own audio track, or ``audio`` (any file ffmpeg
    decodes). syncnet_weights: the release's weight file, or a network from :func:`load_syncnet`. analyzer: a
    ``dagan.faces.FaceAnalyzer`` (default: ``get_face_analyzer("auto")``).

    Raises CheckpointError without usable weights, MediaError for unreadable media, NoFaceFound without a face and
    ValueError for a clip shorter than 6 frames (0.24 s); all one line.
    """
    network = syncnet_weights if isinstance(syncnet_weights, SyncNet) else load_syncnet(syncnet_weights, device)
    if analyzer is None:
        from dagan.faces import get_face_analyzer
        analyzer = get_face_analyzer("auto")
    source = open_video(video)
    expected = None if source.num_frames is None else int(round(source.num_frames * SYNCNET_FPS / source.fps))
    speech = load_audio(audio or video)
    track = face_track(frames_at_syncnet_rate(source, source.fps), analyzer, expected)
    num_windows = num_sync_windows(len(track), len(speech.samples))
    if num_windows < 1:
        raise ValueError(f"LSE needs at least 6 frames (0.24 s) of video with audio; {os.fspath(video)!r} has "
                         f"{len(track)} frames at 25 fps and {speech.duration:.2f} s of audio")
    pcm = np.clip(np.round(speech.samples.astype(np.float64) * PCM16_SCALE), -PCM16_SCALE, PCM16_SCALE - 1)
    crops = face_crops(frames_at_syncnet_rate(source, source.fps), track)  # decoded a second time, one at a time
    embeddings = sync_embeddings(network, crops, mfcc(pcm, speech.sample_rate), num_windows, batch_size)
    return lse_from_distances(offset_distances(embeddings, max_offset), num_windows)
