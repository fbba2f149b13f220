"""The animation pipeline and demo.py end to end on the tiny config (CPU, seconds)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import NEEDS_FACES, PARITY_DIR, config_path, make_test_clip, write_parity_release
from dagan.model import load_official
from dagan.cli.demo import main as demo_main
from dagan.inference import DaGANPipeline, InferenceError, KeypointSmoother, OneEuroFilter
from dagan.io import probe
from dagan.config import load_config
from dagan.geometry import Keypoints
from dagan.model import DaGAN


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {"audio": str(make_test_clip(folder / "tone.mp4", 80, 64, seconds=1.3, fps=10, audio=True)),
            "silent": str(make_test_clip(folder / "silent.mp4", 64, 64, seconds=0.9, fps=15))}


@pytest.fixture
def source_png(tmp_path):
    from PIL import Image
    path = tmp_path / "source.png"
    y, x = np.mgrid[0:48, 0:48]
    Image.fromarray(np.stack([x * 5, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)).save(path)
    return str(path)


def run_demo(*arguments) -> int:
    """demo.py on the whole image (--crop none: these sources are not faces) unless a test asks for a crop."""
    arguments = [str(argument) for argument in arguments]
    return demo_main(arguments if "--crop" in arguments else ["--crop", "none", *arguments])


def test_video_in_video_out_with_audio(tiny_checkpoint, clips, source_png, tmp_path):
    out = tmp_path / "out.mp4"
    assert run_demo("--checkpoint", tiny_checkpoint, "--source_image", source_png, "--driving_video", clips["audio"],
                    "--result_video", out, "--relative", "--adapt_scale", "--batch_size", 4) == 0
    driving, result = probe(clips["audio"]), probe(out)
    assert result.num_frames == driving.num_frames == 13
    assert result.fps == pytest.approx(driving.fps)
    assert result.size == (64, 64)  # the tiny model's resolution
    assert result.has_audio


def test_silent_clip_gives_silent_result_and_png_frames(tiny_checkpoint, clips, source_png, tmp_path):
    out = tmp_path / "silent.mp4"
    assert run_demo("--checkpoint", tiny_checkpoint, "--source_image", source_png, "--driving_video",
                    clips["silent"], "--result_video", out) == 0
    assert not probe(out).has_audio and probe(out).num_frames == probe(clips["silent"]).num_frames
    frames_dir = tmp_path / "frames"
    assert run_demo("--checkpoint", tiny_checkpoint, "--source_image", source_png, "--driving_video",
                    clips["audio"], "--result_video", f"{frames_dir}/", "--relative") == 0
    assert sorted(os.listdir(frames_dir)) == [".dagan-result"] + [f"{index:06d}.png" for index in range(13)]
    # No audio flag: the tone is dropped.
    quiet = tmp_path / "quiet.mp4"
    assert run_demo("--checkpoint", tiny_checkpoint, "--source_image", source_png, "--driving_video",
                    clips["audio"], "--result_video", quiet, "--no_audio") == 0
    assert not probe(quiet).has_audio


def test_frame_directory_input_and_visualization(tiny_checkpoint, source_png, tmp_path):
    from PIL import Image
    folder = tmp_path / "driving"
    folder.mkdir()
    for index in (10, 2, 1):  # natural sort: 1, 2, 10
        Image.fromarray(np.full((64, 64, 3), index * 20, np.uint8)).save(folder / f"frame{index}.png")
    out = tmp_path / "result.mp4"
    assert run_demo("--checkpoint", tiny_checkpoint, "--source_image", source_png, "--driving_video", folder,
                    "--result_video", out, "--relative", "--visualize", "--smooth", "0.5") == 0
    assert probe(out).num_frames == 3
    visualization = probe(tmp_path / "result_visualization.mp4")
    assert visualization.num_frames == 3 and visualization.size == (5 * 64, 64)


def test_animation_consumes_frames_lazily(tiny_checkpoint):
    pipeline = DaGANPipeline.load(tiny_checkpoint, device="cpu", batch_size=2)
    pulled = []

    def frames():
        for index in range(100):
            pulled.append(index)
            yield np.random.default_rng(index).random((64, 64, 3), dtype=np.float32)

    animation = pipeline.animate(np.zeros((64, 64, 3), np.float32), frames(), relative=True)
    first = next(animation)
    assert first.frame.shape == (64, 64, 3) and first.frame.dtype == np.uint8
    assert len(pulled) == 2  # one batch, not the whole video
    next(animation), next(animation)
    assert len(pulled) == 4


def test_batch_size_does_not_change_results(tiny_checkpoint):
    rng = np.random.default_rng(0)
    source = rng.random((64, 64, 3), dtype=np.float32)
    frames = [rng.random((64, 64, 3), dtype=np.float32) for _ in range(7)]
    results = {}
    for batch_size in (1, 3, 8):
        pipeline = DaGANPipeline.load(tiny_checkpoint, device="cpu", batch_size=batch_size)
        pipeline_frames = list(pipeline.animate(source, frames, relative=True, adapt_scale=True))
        results[batch_size] = pipeline_frames
    for batch_size in (3, 8):
        for one, other in zip(results[1], results[batch_size]):
            assert np.abs(one.frame.astype(int) - other.frame.astype(int)).max() <= 1  # uint8 rounding
            assert torch.allclose(one.keypoints.value, other.keypoints.value, atol=1e-5)
    # Float outputs agree within 1e-5 across batch sizes.
    pipeline = DaGANPipeline.load(tiny_checkpoint, device="cpu")
    state = pipeline.prepare_source(source)
    value = torch.cat([result.keypoints.value for result in results[8]])
    jacobian = torch.cat([result.keypoints.jacobian for result in results[8]])
    together = pipeline.generate(state, Keypoints(value, jacobian)).prediction
    alone = torch.cat([pipeline.generate(state, Keypoints(value[i:i + 1], jacobian[i:i + 1])).prediction
                       for i in range(7)])
    assert float((together - alone).abs().max()) < 1e-5


def test_relative_adapt_scale_matches_parity_fixture(tmp_path):
    """The pipeline's transferred keypoints equal the reference's normalize_kp output."""
    paths = write_parity_release(tmp_path)
    model = load_official(paths["checkpoint"], os.path.dirname(paths["encoder"]), str(PARITY_DIR / "model.yaml"))
    inputs, expected = np.load(PARITY_DIR / "inputs.npz"), np.load(PARITY_DIR / "expected.npz")
    pipeline = DaGANPipeline(model, device="cpu", batch_size=2)
    driving = [inputs["driving_initial_uint8"], inputs["driving_uint8"]]
    for name, adapt in (("kp_norm", True), ("kp_norm_noadapt", False)):
        result = list(pipeline.animate(inputs["source_uint8"], driving, relative=True, adapt_scale=adapt))[1]
        assert np.abs(result.keypoints.value.numpy() - expected[f"{name}.value"]).max() < 1e-4
        assert np.abs(result.keypoints.jacobian.numpy() - expected[f"{name}.jacobian"]).max() < 1e-4
    absolute = list(pipeline.animate(inputs["source_uint8"], driving, relative=False))[1]
    assert np.abs(absolute.keypoints.value.numpy() - expected["kp_norm_abs.value"]).max() < 1e-4
    # The rendered frame matches the reference prediction (uint8 rounding + end-to-end tolerance).
    rendered = list(pipeline.animate(inputs["source_uint8"], driving, relative=True, adapt_scale=True))[1].frame
    reference = np.round(expected["generator.prediction"][0].transpose(1, 2, 0) * 255)
    assert np.abs(rendered.astype(float) - reference).max() <= 1


def test_one_euro_filter_smooths_jitter_but_follows_motion():
    rng = np.random.default_rng(0)
    filter_ = OneEuroFilter(frequency=25, min_cutoff=1.0, beta=0.0)
    noisy = [torch.tensor([0.3 + 0.02 * rng.standard_normal()]) for _ in range(100)]
    smoothed = torch.cat([filter_(value) for value in noisy])
    assert float(smoothed[20:].std()) < 0.5 * float(torch.cat(noisy)[20:].std())
    smoother = KeypointSmoother(fps=25)
    kp = Keypoints(torch.zeros(3, 2, 2), torch.eye(2).expand(3, 2, 2, 2))
    assert torch.equal(smoother(kp).value, kp.value)


@pytest.mark.parametrize("arguments, message", [
    (["--source_image", "missing.png"], "does not exist"),
    (["--driving_video", "EMPTY"], "contains no image files"),
    (["--device", "cuda"], "CUDA was asked for but no CUDA GPU"),
    (["--kp_num", "7"], "holds 5 keypoints"),
    (["--precision", "bf16", "--device", "cpu"], "needs a CUDA GPU"),
])
def test_errors_are_one_clear_line(tiny_checkpoint, clips, source_png, tmp_path, capsys, arguments, message):
    if torch.cuda.is_available() and "cuda" in arguments:
        pytest.skip("a GPU is present")
    empty = tmp_path / "empty"
    empty.mkdir()
    defaults = {"--checkpoint": tiny_checkpoint, "--source_image": source_png, "--driving_video": clips["silent"],
                "--result_video": str(tmp_path / "out.mp4")}
    flags = dict(zip(arguments[::2], arguments[1::2]))
    flags = {key: (str(empty) if value == "EMPTY" else value) for key, value in flags.items()}
    merged = {**defaults, **flags}
    assert run_demo(*[item for pair in merged.items() for item in pair]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()


def test_checkpoint_not_fitting_config(tmp_path, source_png, clips, capsys):
    from dagan.checkpoint import export_official
    paths = export_official(DaGAN(load_config(config_path("tiny.yaml"))), tmp_path / "release")
    code = run_demo("--config", config_path("tiny.yaml"), "--checkpoint", paths["checkpoint"], "--depth_checkpoint",
                    os.path.dirname(paths["encoder"]), "--source_image", source_png, "--driving_video",
                    clips["silent"], "--result_video", tmp_path / "o.mp4", "--kp_num", "10")
    assert code == 1 and "--kp_num 5" in capsys.readouterr().err
    code = run_demo("--checkpoint", paths["checkpoint"], "--source_image", source_png, "--driving_video",
                    clips["silent"], "--result_video", tmp_path / "o.mp4")
    assert code == 1 and "--depth_checkpoint" in capsys.readouterr().err


def test_out_of_memory_suggests_smaller_batch(tiny_checkpoint, clips, source_png, tmp_path, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(DaGANPipeline, "generate", out_of_memory)
    code = run_demo("--checkpoint", tiny_checkpoint, "--source_image", source_png, "--driving_video",
                    clips["silent"], "--result_video", tmp_path / "o.mp4", "--batch_size", "16")
    error = capsys.readouterr().err
    assert code == 1 and "smaller --batch_size" in error and "Traceback" not in error
    assert not (tmp_path / "o.mp4").exists()


def test_result_never_overwrites_an_input(tiny_checkpoint, clips, source_png, capsys):
    before = open(clips["silent"], "rb").read()
    code = run_demo("--checkpoint", tiny_checkpoint, "--source_image", source_png, "--driving_video",
                    clips["silent"], "--result_video", clips["silent"])
    assert code == 1 and open(clips["silent"], "rb").read() == before


def test_find_best_frame_without_faces_extra_names_it(tiny_checkpoint, clips, source_png, tmp_path, capsys,
                                                      monkeypatch):
    import dagan.faces.landmarks

    def missing(*args, **kwargs):
        raise dagan.faces.MissingFaceBackend('no face backend: pip install "dagan[faces]"')
    monkeypatch.setattr(dagan.faces.landmarks, "get_face_analyzer", missing)  # where best_aligned_frame finds it
    code = run_demo("--checkpoint", tiny_checkpoint, "--source_image", source_png, "--driving_video",
                    clips["silent"], "--result_video", tmp_path / "o.mp4", "--find_best_frame", "--relative")
    assert code == 1 and "dagan[faces]" in capsys.readouterr().err


def test_precision_checks():
    with pytest.raises(InferenceError, match="needs a CUDA GPU"):
        DaGANPipeline(DaGAN.__new__(DaGAN), device="cpu", precision="fp16")


@pytest.mark.slow
def test_compiled_pipeline_gives_the_same_frames(tiny_checkpoint):
    rng = np.random.default_rng(1)
    source = rng.random((64, 64, 3), dtype=np.float32)
    frames = [rng.random((64, 64, 3), dtype=np.float32) for _ in range(4)]
    eager = DaGANPipeline.load(tiny_checkpoint, device="cpu", batch_size=4)
    compiled = DaGANPipeline.load(tiny_checkpoint, device="cpu", batch_size=4, compile=True)
    for ours, theirs in zip(eager.animate(source, frames), compiled.animate(source, frames)):
        assert np.abs(ours.frame.astype(int) - theirs.frame.astype(int)).max() <= 1
        assert torch.allclose(ours.keypoints.value, theirs.keypoints.value, atol=1e-5)


def test_find_best_frame_and_best_frame_flag(tiny_checkpoint, short_clip, tmp_path, capsys):
    """On the first second of the sample clip (a real face in each of its 24 frames)."""
    pytest.importorskip("dlib", reason=NEEDS_FACES)
    pytest.importorskip("face_recognition_models", reason=NEEDS_FACES)
    samples = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "samples")
    driving = str(short_clip)
    out = tmp_path / "best.mp4"
    assert run_demo("--checkpoint", tiny_checkpoint, "--source_image", os.path.join(samples, "source.png"),
                    "--driving_video", driving, "--result_video", out, "--relative", "--adapt_scale",
                    "--find_best_frame") == 0
    assert "best frame: " in capsys.readouterr().err
    assert probe(out).num_frames == probe(driving).num_frames  # every frame rendered, in order
    anchored = tmp_path / "anchored.mp4"
    assert run_demo("--checkpoint", tiny_checkpoint, "--source_image", os.path.join(samples, "source.png"),
                    "--driving_video", driving, "--result_video", anchored, "--relative", "--best_frame", "5") == 0
    assert probe(anchored).num_frames == probe(driving).num_frames
    assert run_demo("--checkpoint", tiny_checkpoint, "--source_image", os.path.join(samples, "source.png"),
                    "--driving_video", driving, "--result_video", tmp_path / "x.mp4", "--relative",
                    "--best_frame", "500") == 1
    assert "past the end" in capsys.readouterr().err
