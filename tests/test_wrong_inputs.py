"""Wrong inputs are refused before any work with one line, instead of giving a silent wrong result: a personalisation
run resumed for other inputs, two inputs with the same name in one output folder, speech with NaN samples, malformed
training items."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import load_script
from dagan.io.video import ffmpeg_executable


# A personalisation run is bound to its inputs.
def test_a_run_directory_is_resumed_only_for_the_inputs_it_was_made_for(tmp_path, capsys):
    from dagan.training.personalize import RUN_INPUTS, bind_run

    run = tmp_path / "target_run"
    first = {"clip": "a" * 64, "init": None, "checkpoint0": "c" * 64}
    bind_run(str(run), first, overwrite=False)  # a new run records its inputs
    (run / "config.yaml").write_text("finished run\n")
    bind_run(str(run), first, overwrite=False)  # the same inputs: resumed
    other = {**first, "clip": "b" * 64}
    with pytest.raises(ValueError, match=r"holds a run for other inputs \(clip differ\).*--overwrite"):
        bind_run(str(run), other, overwrite=False)
    bind_run(str(run), other, overwrite=True)  # moved aside, never deleted
    moved = [path for path in tmp_path.iterdir() if path.name.startswith("target_run.old-")]
    assert len(moved) == 1 and (moved[0] / "config.yaml").read_text() == "finished run\n"
    assert json.loads((run / RUN_INPUTS).read_text()) == other and not (run / "config.yaml").exists()
    legacy = tmp_path / "legacy_run"
    legacy.mkdir()
    (legacy / "config.yaml").write_text("a run made before runs recorded their inputs\n")
    with pytest.raises(ValueError, match="other inputs"):
        bind_run(str(legacy), first, overwrite=False)


def test_input_fingerprint_follows_the_bytes_of_each_input(tmp_path):
    from dagan.training.personalize import input_fingerprint

    clip, checkpoint = tmp_path / "clip.mp4", tmp_path / "depth"
    clip.write_bytes(b"clip one")
    checkpoint.mkdir()
    (checkpoint / "depth.pth").write_bytes(b"weights")
    before = input_fingerprint(str(clip), None, (str(checkpoint),))
    clip.write_bytes(b"clip two")
    after = input_fingerprint(str(clip), None, (str(checkpoint),))
    assert before["checkpoint0"] == after["checkpoint0"] and before["clip"] != after["clip"]


# Same names in one output folder.
def test_a_batch_refuses_two_sources_with_one_name(tmp_path, capfd):
    from dagan.cli.demo import main

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("face.png", "face.jpg", "other.png"):
        (folder / name).write_bytes(b"a photo")
    (tmp_path / "dagan.pt").write_bytes(b"checkpoint")
    (tmp_path / "driving.mp4").write_bytes(b"video")
    code = main(["--checkpoint", str(tmp_path / "dagan.pt"), "--source_image", str(folder), "--driving_video",
                 str(tmp_path / "driving.mp4"), "--result_video", f"{tmp_path / 'results'}/", "--cpu"])
    error = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and "would both write" in error[-1] and "face_by_driving.mp4" in error[-1]
    assert not (tmp_path / "results").exists()


def test_prepare_av_refuses_two_clips_with_one_name(tmp_path, capfd):
    for folder in ("a", "b"):
        (tmp_path / "clips" / folder).mkdir(parents=True)
        (tmp_path / "clips" / folder / "talk.mp4").write_bytes(b"video")
    (tmp_path / "dagan.pt").write_bytes(b"checkpoint")
    code = load_script("prepare_av").main(["--inp", str(tmp_path / "clips"), "--out", str(tmp_path / "items"),
                                           "--checkpoint", str(tmp_path / "dagan.pt"), "--no_progress"])
    error = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and "would both be written to" in error[-1] and "talk.npz" in error[-1]


# Speech with NaN or infinite samples.
@pytest.fixture
def broken_speech(tmp_path):
    samples = (0.3 * np.sin(np.arange(16000) / 10)).astype("<f4")
    samples[5000:5010], samples[9000] = np.nan, np.inf
    samples.tofile(tmp_path / "speech.raw")
    path = tmp_path / "speech.wav"
    subprocess.run([ffmpeg_executable(), "-y", "-loglevel", "error", "-f", "f32le", "-ar", "16000", "-ac", "1", "-i",
                    str(tmp_path / "speech.raw"), "-c:a", "pcm_f32le", str(path)], check=True)
    return path


def test_speech_with_nan_samples_is_refused_at_decoding_with_one_line(broken_speech):
    from dagan.audio.decode import load_audio, open_audio
    from dagan.io import MediaError

    for decode in (load_audio, open_audio):
        with pytest.raises(MediaError) as caught:
            decode(broken_speech)
        message = str(caught.value)
        assert "NaN or infinite" in message and "'speech.wav'" in message and str(broken_speech.parent) not in message


# The training items' schema.
def good_item(frames: int = 50, fps: float = 25.0) -> dict:
    return {"keypoints": np.zeros((frames, 5, 2), np.float32), "jacobians": np.zeros((frames, 5, 2, 2), np.float32),
            "mel": np.zeros((int(frames / fps * 100) + 1, 24), np.float32), "silence": np.zeros(frames, bool),
            "fps": np.float64(fps), "offset_frames": np.int64(0)}


MALFORMED = {
    "keypoints must be (T >= 2, K, 2)": {"keypoints": np.zeros((50, 5, 3), np.float32)},
    "jacobians must be": {"jacobians": np.zeros((50, 5, 2), np.float32)},
    "fps must be one positive": {"fps": np.float64(0.0)},
    "fps must hold finite": {"fps": np.float64(np.nan)},
    "mel must hold finite": {"mel": np.full((201, 24), np.nan, np.float32)},
    "silence must be": {"silence": np.zeros(49, bool)},
    "last 2.00 s but the mel features 12.00 s": {"mel": np.zeros((1200, 24), np.float32)},
    "keypoints must hold finite": {"keypoints": np.array(["a"] * 500).reshape(50, 5, 2)},
    "missing fps": {"fps": None},
}


@pytest.mark.parametrize("problem", MALFORMED)
def test_malformed_items_are_refused_on_load_naming_the_file(tmp_path, problem):
    from dagan.audio.data import load_item

    values = {**good_item(), **MALFORMED[problem]}
    path = tmp_path / "clip.npz"
    np.savez(path, **{name: value for name, value in values.items() if value is not None})
    with pytest.raises(ValueError, match=str(path)) as caught:
        load_item(path)
    assert problem in str(caught.value)


def test_a_well_formed_item_loads_in_its_training_types(tmp_path):
    from dagan.audio.data import load_item

    np.savez(tmp_path / "clip.npz", **good_item())
    item = load_item(tmp_path / "clip.npz")
    assert item.keypoints.dtype == np.float32 and item.silence.dtype == bool and item.fps == 25.0


# Small: a YAML alias bomb, a bad DAGAN_MAX_PIXELS.
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Nine levels of ten aliases: 10^9 ones behind a 600-byte file; the error message names the first bad value
    without walking (or printing) the whole structure."""
    import time

    from dagan.config import ConfigError, load_config

    levels = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"&a{level} [{', '.join([f'*a{level - 1}'] * 10)}]" for level in range(1, 9)]
    for text in (f"attention: [{', '.join(levels)}]\n",  # an unknown key holding the bomb
                 f"model_params:\n  generator_params:\n    attention_layers: [{', '.join(levels)}]\n"):
        path = tmp_path / "bomb.yaml"
        path.write_text(text)
        started = time.perf_counter()
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert time.perf_counter() - started < 5 and len(str(caught.value)) < 400


def test_a_bad_dagan_max_pixels_is_one_line_and_help_still_works(monkeypatch, capfd):
    from dagan.cli.demo import main
    from dagan.io import images

    monkeypatch.setenv("DAGAN_MAX_PIXELS", "abc")
    monkeypatch.setattr(images, "_pixel_limit", [None])
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    capfd.readouterr()
    assert main(["--checkpoint", "dagan.pt", "--source_image", "a.png", "--driving_video", "b.mp4"]) == 1
    assert capfd.readouterr().err.strip() == ("error: DAGAN_MAX_PIXELS='abc' is not a positive whole number of "
                                              "pixels; unset it or give e.g. DAGAN_MAX_PIXELS=50000000")
