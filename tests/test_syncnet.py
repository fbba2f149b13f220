"""SyncNet (syncnet_python's layout), its MFCCs, and LSE-D / LSE-C (dagan/networks/syncnet.py, dagan/eval/lipsync.py).

The release's weights are never here: the tests write random weights in the release's layout, from a table of
its layers written out below (independently of dagan's network code).
"""
from __future__ import annotations

import importlib.util
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from conftest import NEEDS_FACES, load_script
from dagan.audio.features import bin_mel_filterbank, mfcc
from dagan.checkpoint import CheckpointError
from dagan.eval.lipsync import (MAX_OFFSET, SyncEmbeddings, frames_at_syncnet_rate, load_syncnet, lse_from_distances,
                                lse_scores, mfcc_windows, num_sync_windows, offset_distances, release_crop,
                                sync_embeddings)
from dagan.faces import Box
from dagan.networks.syncnet import SyncNet

# syncnet_python's SyncNetModel.S: (layer index, weight shape) of each convolution / linear layer; the batch norm
# after each one sits at index + 1 with out_channels entries.
RELEASE_CONVOLUTIONS = {
    "netcnnaud": [(0, (64, 1, 3, 3)), (4, (192, 64, 3, 3)), (8, (384, 192, 3, 3)), (11, (256, 384, 3, 3)),
                  (14, (256, 256, 3, 3)), (18, (512, 256, 5, 4))],
    "netcnnlip": [(0, (96, 3, 5, 7, 7)), (4, (256, 96, 1, 5, 5)), (8, (256, 256, 1, 3, 3)), (11, (256, 256, 1, 3, 3)),
                  (14, (256, 256, 1, 3, 3)), (18, (512, 256, 1, 6, 6))],
}
RELEASE_HEADS = {"netfcaud": [(0, (512, 512)), (3, (1024, 512))], "netfclip": [(0, (512, 512)), (3, (1024, 512))]}


def release_state_dict(seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """Random weights keyed and shaped as syncnet_v2.model, without batch-norm counters (files saved before
    PyTorch 0.4.1 have none; with them they load too, see the round trip)."""
    generator = torch.Generator().manual_seed(seed)
    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    def norm(prefix: str, channels: int) -> None:
        state[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(channels, generator=generator)
        state[f"{prefix}.bias"] = 0.1 * torch.randn(channels, generator=generator)
        state[f"{prefix}.running_mean"] = 0.1 * torch.randn(channels, generator=generator)
        state[f"{prefix}.running_var"] = 1 + 0.1 * torch.rand(channels, generator=generator)

    for stream, layers in {**RELEASE_CONVOLUTIONS, **RELEASE_HEADS}.items():
        for index, shape in layers:
            fan_in = int(np.prod(shape[1:]))
            state[f"{stream}.{index}.weight"] = torch.randn(shape, generator=generator) / fan_in ** 0.5
            state[f"{stream}.{index}.bias"] = 0.01 * torch.randn(shape[0], generator=generator)
            if stream in RELEASE_CONVOLUTIONS or index == 0:  # every layer but the last linear one has a norm
                norm(f"{stream}.{index + 1}", shape[0])
    return state


@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    """(path, state dict): random weights saved as the release stores syncnet_v2.model (a bare state dict)."""
    state = release_state_dict()
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def network(release_file) -> SyncNet:
    return load_syncnet(release_file[0])


def test_release_weights_load_strictly_and_round_trip(release_file, network, tmp_path):
    path, state = release_file
    loaded = network.state_dict()
    assert {key for key in loaded if not key.endswith("num_batches_tracked")} == set(state)
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert not network.training
    torch.save(loaded, tmp_path / "again.model")  # our state dict (with batch-norm counters) loads back the same
    again = load_syncnet(tmp_path / "again.model").state_dict()
    assert all(torch.equal(again[key], value) for key, value in loaded.items())
    counters = {key: value for key, value in loaded.items() if key.endswith("num_batches_tracked")}
    assert len(counters) == 14  # 12 convolution norms + one per head
    SyncNet().load_state_dict({**state, **counters}, strict=True)  # the release's keys, straight into torch


def test_network_takes_the_release_shapes(network):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        audio = network.embed_audio(torch.randn(3, 1, 13, 20, generator=generator))
        lips = network.embed_lips(255 * torch.rand(1, 3, 5, 224, 224, generator=generator))
    assert audio.shape == (3, 1024) and lips.shape == (1, 1024)
    assert torch.isfinite(audio).all() and torch.isfinite(lips).all() and audio.std() > 0
    with pytest.raises(ValueError, match=r"MFCC windows must be \(B, 1, 13, 20\)"):
        network.embed_audio(torch.zeros(1, 1, 13, 19))
    with pytest.raises(ValueError, match=r"lip clips must be \(B, 3, 5, 224, 224\)"):
        network.embed_lips(torch.zeros(1, 3, 4, 224, 224))


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_foreign_files_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError) as error:
        lse_scores("talking.mp4", None)
    assert "syncnet_v2.model" in one_line(error) and "--syncnet_weights PATH" in one_line(error)
    with pytest.raises(CheckpointError, match="does not exist.*syncnet_python"):
        load_syncnet(tmp_path / "missing.model")
    small = OrderedDict(("netfcaud.0.weight" if key == "netfclip.0.weight" else key, torch.zeros(1))
                        for key in ("netcnnaud.0.weight", "netfclip.0.weight", "other.bias"))
    torch.save(small, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError) as error:
        load_syncnet(tmp_path / "foreign.pth")
    assert "missing" in one_line(error) and "unexpected ['other.bias']" in one_line(error)
    assert "not the syncnet_python release's syncnet_v2.model" in one_line(error)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole_model.model")  # a pickled module, not a state dict
    with pytest.raises(CheckpointError) as error:
        load_syncnet(tmp_path / "whole_model.model")
    assert "unsafe unpickling" in one_line(error) and "state_dict()" in one_line(error)
    (tmp_path / "notes.model").write_text("not weights")
    with pytest.raises(CheckpointError, match="could not be read as a torch file"):
        load_syncnet(tmp_path / "notes.model")
    torch.save([torch.zeros(1)], tmp_path / "list.model")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_syncnet(tmp_path / "list.model")


def release_offset_search(lips: torch.Tensor, audio: torch.Tensor, max_offset: int) -> tuple[np.ndarray, int]:
    """The release's search written as its loop: frame i against the zero-padded audio frames i..i+2K."""
    padded = torch.cat([torch.zeros(max_offset, audio.shape[1]), audio, torch.zeros(max_offset, audio.shape[1])])
    window = 2 * max_offset + 1
    rows = [torch.nn.functional.pairwise_distance(lips[[i]].repeat(window, 1), padded[i:i + window])
            for i in range(len(lips))]
    means = torch.stack(rows, 1).mean(1)
    return means.numpy(), max_offset - int(torch.argmin(means))


@pytest.mark.parametrize("shift", [3, -5])
def test_offset_search_finds_the_audio_shift(shift):
    generator = torch.Generator().manual_seed(2)
    lips = torch.randn(150, 16, generator=generator)
    audio = torch.randn(150, 16, generator=generator)
    frames = torch.arange(150)
    inside = (frames + shift >= 0) & (frames + shift < 150)
    audio[inside] = lips[frames[inside] + shift]  # audio[t - shift] == lips[t]: the audio comes `shift` frames early
    distances = offset_distances(SyncEmbeddings(lips, audio))
    reference, reference_offset = release_offset_search(lips, audio, MAX_OFFSET)
    np.testing.assert_allclose(distances, reference[::-1], rtol=1e-5)  # ours by offset -K..K, the release's by K - offset
    scores = lse_from_distances(distances, 150)
    assert scores.offset == shift == reference_offset and distances.shape == (2 * MAX_OFFSET + 1,)
    assert scores.lse_d < 0.2 and scores.lse_c > 4.0  # random pairs lie ~sqrt(32) = 5.7 apart
    unrelated = lse_from_distances(offset_distances(SyncEmbeddings(lips, torch.randn(150, 16, generator=generator))),
                                   150)
    assert unrelated.lse_d > 5.0 and unrelated.lse_c < 0.3


def test_lse_from_distances_takes_the_first_minimum_and_the_median():
    distances = np.array([3.0, 1.0, 2.0, 1.0, 5.0])
    scores = lse_from_distances(distances, 9)
    assert (scores.lse_d, scores.lse_c, scores.offset, scores.num_windows) == (1.0, 1.0, -1, 9)


def test_windows_are_counted_as_the_release_does():
    assert num_sync_windows(100, 100 * 640) == 95 and num_sync_windows(100, 50 * 640 + 639) == 45
    assert num_sync_windows(5, 10 * 640) == 0


def test_mfcc_windows_read_four_mfcc_frames_per_video_frame():
    cepstra = np.arange(60 * 13, dtype=np.float64).reshape(60, 13)  # (N, 13)
    windows = mfcc_windows(cepstra, [0, 2])
    assert windows.shape == (2, 1, 13, 20)
    assert torch.equal(windows[1, 0, :, 0], torch.from_numpy(cepstra[8]).float())  # frame 2 -> MFCC frame 8
    assert torch.equal(windows[1, 0, 3, :], torch.from_numpy(cepstra[8:28, 3]).float())


class FrameReader(torch.nn.Module):
    """A stand-in for SyncNet that shows what it was given: the corner pixel of each channel and frame of a clip
    (B, 15), the first coefficient of each MFCC frame of a window (B, 20)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def embed_lips(self, clips: torch.Tensor) -> torch.Tensor:
        assert clips.shape[1:] == (3, 5, 224, 224)
        return clips[:, :, :, 0, 0].flatten(1)

    def embed_audio(self, windows: torch.Tensor) -> torch.Tensor:
        return windows[:, 0, 0, :]


@pytest.mark.parametrize("batch_size", [2, 20])
def test_embeddings_pair_frames_t_to_t_plus_4_with_mfcc_frames_4t_on(batch_size):
    crops = (np.full((224, 224, 3), (t, 50 + t, 100 + t), np.uint8) for t in range(11))  # RGB, a stream
    cepstra = np.arange(44 * 13, dtype=np.float64).reshape(44, 13)
    lips, audio = sync_embeddings(FrameReader(), crops, cepstra, num_windows=6, batch_size=batch_size)
    assert lips.shape == (6, 15) and audio.shape == (6, 20)
    for start in range(6):
        frames = torch.arange(start, start + 5, dtype=torch.float32)
        assert torch.equal(lips[start], torch.cat([100 + frames, 50 + frames, frames]))  # blue, green, red
        assert torch.equal(audio[start], torch.from_numpy(cepstra[4 * start:4 * start + 20, 0]).float())


def test_frames_are_resampled_to_25_fps():
    assert list(frames_at_syncnet_rate(range(7), 25.0)) == list(range(7))
    assert list(frames_at_syncnet_rate(range(6), 30.0)) == [0, 1, 2, 4, 5]  # round(t * 1.2)
    assert list(frames_at_syncnet_rate(range(3), 12.5)) == [0, 1, 1, 2, 2]  # round(t / 2), half up


def test_release_crop_of_a_face_box():
    crop = release_crop(Box(100, 50, 200, 170))  # half-size s = 60, centre (150, 110)
    assert crop.center_x == 150 and crop.side == pytest.approx(2.8 * 60)
    assert crop.center_y - crop.side / 2 == pytest.approx(110 - 60)  # top: the centre - s
    assert crop.center_y + crop.side / 2 == pytest.approx(110 + 1.8 * 60)  # bottom: the centre + (1 + 2 x 0.4) s


def test_mfcc_matches_python_speech_features():
    if importlib.util.find_spec("python_speech_features") is None:
        pytest.skip("needs python_speech_features: pip install python_speech_features==0.6 (the [dev] extra)")
    import python_speech_features

    generator = np.random.default_rng(3)
    time = np.arange(16000) / 16000
    speech = 3000 * np.sin(2 * np.pi * 220 * time) * (time > 0.3) + 500 * generator.standard_normal(16000)
    speech = np.round(speech).astype(np.int16)
    speech[:2000] = 0  # silence: the zero-energy floor
    for samples in (speech, speech[:400], speech[:401], speech[:130]):
        np.testing.assert_allclose(mfcc(samples), python_speech_features.mfcc(samples, 16000), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(bin_mel_filterbank(26, 512, 16000),
                                  python_speech_features.get_filterbanks(26, 512, 16000))


@pytest.fixture(scope="module")
def talking_video(tmp_path_factory):
    """8 frames (0.32 s, 25 fps: 3 SyncNet windows) of the astronaut's face moving sideways, noise as speech."""
    skimage_data = pytest.importorskip("skimage.data")
    from dagan.audio import SAMPLE_RATE, Audio, write_wav
    from dagan.io.writers import VideoWriter

    folder = tmp_path_factory.mktemp("talking")
    samples = 0.2 * np.random.default_rng(4).standard_normal(int(0.32 * SAMPLE_RATE)).astype(np.float32)
    write_wav(folder / "speech.wav", Audio(samples, SAMPLE_RATE))
    face = skimage_data.astronaut()[0:320, 50:370]  # the face near x 120-200, y 60-160
    with VideoWriter(folder / "talking.mp4", 25, audio_from=folder / "speech.wav") as writer:
        for index in range(8):
            writer.write(np.roll(face, 2 * index, axis=1))
    return folder / "talking.mp4"


def test_cli_adds_lse_with_weights(release_file, talking_video, tmp_path, capsys):
    pytest.importorskip("dlib", reason=NEEDS_FACES)
    pytest.importorskip("cv2", reason=NEEDS_FACES)
    script = load_script("evaluate_lipsync")
    assert script.main(["--video", str(talking_video), "--syncnet_weights", str(release_file[0]), "--max_lag", "2",
                        "--out", str(tmp_path / "lipsync.json")]) == 0
    results = json.loads((tmp_path / "lipsync.json").read_text())
    assert results["frames"] == 8 and results["faces_found"] == 8
    assert results["lse_d"] > 0 and results["lse_c"] >= 0 and -MAX_OFFSET <= results["lse_offset"] <= MAX_OFFSET
    capsys.readouterr()
    assert script.main(["--video", str(talking_video), "--syncnet_weights", str(tmp_path / "none.model")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "SyncNet weights file" in error[0] and "does not exist" in error[0]
