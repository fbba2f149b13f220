"""The speech stage's corpus through the streaming engine: prepared items written by make_shards.py --speech give
the speech stage the same batches as the folder (local and s3:// through moto), a run from s3:// resumes bit for
bit, each item is read alone, and a corrupt item is skipped, counted and found by --verify."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import config_path, load_script
from dagan.audio.data import AVItem, load_item, save_item
from dagan.config import load_config
from dagan.data.speech import SpeechStore, speech_items
from dagan.data.stream import StreamError, StreamSettings, make_speech_stream, verify_stream
from dagan.training.audio_stage import load_training_data, sample_batch, step_generator, train_audio
from test_stream import moto_s3

litdata = pytest.importorskip("litdata")

NUM_KP, NUM_MELS, FPS = 10, 40, 25.0
MODEL_SETTINGS = [f"audio_params.num_mels={NUM_MELS}", "audio_params.audio_channels=16",
                  "audio_params.hidden_channels=16", "audio_params.pose_hidden_channels=8",
                  "audio_train_params.batch_size=4", "audio_train_params.sequence_length=8"]
SMALL = StreamSettings("speech", chunk_bytes=40_000, part_bytes=60_000)  # several parts and chunks


def synthetic_item(number: int) -> AVItem:
    """A clip of 30-44 frames: keypoints drifting smoothly around a grid, log-mel noise at 100 frames/s."""
    rng = np.random.default_rng(number)
    frames = 30 + 2 * number
    grid = rng.uniform(-0.5, 0.5, (1, NUM_KP, 2))
    keypoints = grid + np.cumsum(rng.normal(0, 0.01, (frames, NUM_KP, 2)), axis=0)
    jacobians = np.eye(2)[None, None] + rng.normal(0, 0.02, (frames, NUM_KP, 2, 2))
    mel = rng.normal(0, 1, (frames * 4, NUM_MELS))
    return AVItem(keypoints.astype(np.float32), jacobians.astype(np.float32), mel.astype(np.float32),
                  rng.random(frames) < 0.3, FPS, int(number % 3) - 1)


@pytest.fixture(scope="module")
def items_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("av") / "items"
    for number in range(8):
        save_item(folder / f"speaker{number % 3}_{number:02d}.npz", synthetic_item(number))
    return folder


@pytest.fixture(scope="module")
def speech_root(items_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("speech-stream") / "av"
    make_speech_stream(items_dir, output, SMALL, workers=2)
    return output


def speech_config(data_dir, fmt="folders", *extra):
    return load_config(config_path("tiny.yaml"), ["train_params.stage=audio", *MODEL_SETTINGS,
                                                  f"audio_train_params.data_dir={data_dir}",
                                                  f"dataset_params.format={fmt}", *extra])


def assert_same_batches(first, second, steps=3):
    """The speech stage's batches of steps 0..steps-1 (the stage's own sampling) are equal bit for bit."""
    a, b = load_training_data(first), load_training_data(second)
    assert len(a.train) == len(b.train) and a.num_kp == b.num_kp
    for clip_a, clip_b in zip(a.train, b.train):
        for name in clip_a._fields:
            assert torch.equal(getattr(clip_a, name), getattr(clip_b, name)), name
    from dagan.audio.model import Normalization

    normalization = Normalization.fit(torch.cat([clip.local for clip in a.train]),
                                      torch.cat([clip.pose for clip in a.train]))
    for step in range(steps):
        batches = [sample_batch(data.train, normalization, 4, 8, step_generator(0, step, "batch")) for data in (a, b)]
        for name in batches[0]._fields:
            assert torch.equal(getattr(batches[0], name), getattr(batches[1], name)), (step, name)


def test_speech_items_stream_bit_identically_and_alone(items_dir, speech_root):
    assert len(json.loads((speech_root / "train" / "index.json").read_text())["chunks"]) > 2
    folder_labels, folder_items, _ = speech_items(str(items_dir))
    stream_labels, stream_items, skipped = speech_items(str(speech_root), "stream")
    assert [label.rsplit("/", 1)[1] for label in stream_labels] == [path.rsplit("/", 1)[1] for path in folder_labels]
    assert skipped == []
    for first, second in zip(folder_items, stream_items):
        for name in AVItem._fields:
            assert np.array_equal(getattr(first, name), getattr(second, name)), name
            assert type(getattr(first, name)) is type(getattr(second, name)), name
    assert_same_batches(speech_config(items_dir), speech_config(speech_root, "stream"))
    store = SpeechStore(str(speech_root))
    for number in range(3):  # one item read, not its chunk: the item's own arrays (+ fps, offset and digest)
        before = store.bytes_read
        item = store.item(number)
        arrays = item.keypoints.nbytes + item.jacobians.nbytes + item.mel.nbytes + item.silence.nbytes
        assert store.bytes_read - before == arrays + 24
    with pytest.raises(StreamError, match="not frames or videos|holds speech"):
        from dagan.data.stream import StreamStore

        StreamStore(speech_root)


def test_a_corrupt_speech_item_is_skipped_counted_and_verified(items_dir, speech_root, tmp_path):
    root = tmp_path / "av"
    shutil.copytree(speech_root, root)
    victim = SpeechStore(str(root)).names[2]
    mel = load_item(items_dir / victim).mel.tobytes()
    for chunk in (root / "train").glob("chunk-*.bin"):
        content = chunk.read_bytes()
        position = content.find(mel)
        if position >= 0:  # one byte inside the item's mel features (a damaged chunk)
            chunk.write_bytes(content[:position + 100] + bytes([content[position + 100] ^ 0xFF]) +
                              content[position + 101:])
            break
    else:
        raise AssertionError("the item's mel features are in no chunk")
    with pytest.warns(UserWarning, match="corrupt"):
        labels, items, skipped = speech_items(str(root), "stream")
    assert [name for name, _ in skipped] == [victim] and len(items) == len(labels) == 7
    report = verify_stream(str(root))
    assert len(report.errors) == 2 and "SHA-256 differs" in report.errors[0] and victim in report.errors[1]


@pytest.mark.slow
def test_speech_run_from_s3_resumes_bit_identically(items_dir, speech_root, tmp_path):
    """The speech stage reads s3:// (moto): 4 steps straight, then 2 + 2 resumed; the same weights, bit for bit,
    and the same batches as from the folder."""
    from dagan.audio.model import AudioDrivenModel

    with moto_s3({"s3://dagan-speech/av": speech_root}):
        def config(steps):
            return speech_config("s3://dagan-speech/av", "stream", f"audio_train_params.num_steps={steps}",
                                 "train_params.checkpoint_every=2",
                                 f"dataset_params.stream_cache_dir={tmp_path / 'cache'}")

        assert_same_batches(speech_config(items_dir), config(4), steps=2)
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            straight = train_audio(config(4), str(tmp_path / "straight"))
            train_audio(config(2), str(tmp_path / "resumed"))
            resumed = train_audio(config(4), str(tmp_path / "resumed"), resume="auto")
        finally:
            torch.set_num_threads(previous)
        verified = verify_stream("s3://dagan-speech/av", cache_dir=str(tmp_path / "cache"))
    assert verified.errors == [] and verified.frames_decoded == 8
    assert resumed["step"] == straight["step"] == 4
    first, second = AudioDrivenModel.load(straight["model"]), AudioDrivenModel.load(resumed["model"])
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name


def test_make_shards_writes_and_verifies_speech_items(items_dir, tmp_path, capsys):
    script = load_script("make_shards")
    broken = tmp_path / "items"
    shutil.copytree(items_dir, broken)
    (broken / "zz_broken.npz").write_bytes(b"not an npz")
    arguments = ["--speech", str(broken), "--out", str(tmp_path / "out"), "--part_size", "100KiB", "--no_progress",
                 "--workers", "1"]
    with pytest.warns(UserWarning, match="zz_broken"):
        assert script.main(arguments) == 0
    output = capsys.readouterr().out
    assert "1 unreadable clip(s) skipped" in output and "8 clip(s), 8 frame(s) decoded: 0 problem(s)" in output
    assert SpeechStore(str(tmp_path / "out")).names == sorted(path.name for path in items_dir.glob("*.npz"))
    assert script.main(["--speech", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--no_progress"]) == 2
    assert "holds no .npz items" in capsys.readouterr().err


def test_benchmark_measures_speech_items(items_dir, speech_root):
    script = load_script("benchmark_data")
    folder, stream = (script.measure_speech(location, 8) for location in (str(items_dir), f"stream:{speech_root}"))
    files = sorted(items_dir.glob("*.npz"))  # all 8: the stream reads them in storage order
    assert folder["bytes_per_sample"] == sum(path.stat().st_size for path in files) / 8
    arrays = [load_item(path) for path in files]
    assert stream["bytes_per_sample"] == sum(item.keypoints.nbytes + item.jacobians.nbytes + item.mel.nbytes +
                                             item.silence.nbytes + 24 for item in arrays) / 8
    assert all(result[name] > 0 for result in (folder, stream) for name in ("decoded_per_cpu_s", "augmented_per_cpu_s"))
