"""No command writes over its inputs or over files it did not create, and hostile inputs fail fast and clearly.

Each test reruns one case a hostile-but-fair user found: outputs named like inputs, a folder of the user's own
frames as the result, pictures that claim gigabytes of pixels, server paths through the web app, long training
clips, killed runs' temporary files, unwritable or full output folders.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, ffmpeg, load_script, make_test_clip
from dagan.cli.demo import main as demo_main
from dagan.io import open_video, read_image, set_pixel_limit, write_png
from dagan.io.images import DEFAULT_MAX_PIXELS, PixelLimitError

SAMPLES = REPO_ROOT / "data" / "samples"


@pytest.fixture
def restore_pixel_limit():
    yield
    set_pixel_limit(DEFAULT_MAX_PIXELS)


def one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny, valid PNG file whose header claims ``width`` x ``height`` pixels (a 'pixel bomb' costs ~100 bytes;
    decoding it would allocate width x height x 3 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


# 1-3: outputs that would replace inputs or the user's own files.
def test_evaluate_refuses_outputs_that_are_its_inputs(tmp_path, capsys):
    generated = make_test_clip(tmp_path / "g.mp4", seconds=0.3)
    reference = make_test_clip(tmp_path / "r.mp4", seconds=0.3)
    before = snapshot(tmp_path)
    evaluate = load_script("evaluate")
    for output, csv in ((generated, None), (tmp_path / "ok.json", reference)):
        arguments = ["--generated", str(generated), "--reference", str(reference), "--metrics", "l1",
                     "--output", str(output), "--no_progress"] + (["--csv", str(csv)] if csv else [])
        assert evaluate.main(arguments) == 1
        error = one_line_error(capsys)
        assert "refusing to write" in error and "would overwrite the input" in error
    assert snapshot(tmp_path) == before


def test_crop_script_refuses_to_replace_the_photo_it_crops(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_png(photos / "portrait.png", np.full((80, 60, 3), 128, np.uint8))
    before = snapshot(photos)
    assert load_script("crop_video").main(["--inp", str(photos / "portrait.png"), "--out", str(photos)]) == 2
    error = one_line_error(capsys)
    assert "refusing to write the crop" in error and "--out" in error
    assert snapshot(photos) == before


def test_demo_never_writes_frames_into_a_folder_of_the_users_files(tmp_path, tiny_checkpoint, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(60):
        write_png(frames / f"{index:06d}.png", np.full((8, 8, 3), index, np.uint8))
    (frames / "notes.txt").write_text("my notes")
    before = snapshot(frames)
    driving = make_test_clip(tmp_path / "driving.mp4", seconds=0.5)
    arguments = ["--checkpoint", tiny_checkpoint, "--crop", "none", "--source_image", str(SAMPLES / "source.png"),
                 "--driving_video", str(driving), "--result_video", str(frames) + os.sep]
    assert demo_main(arguments) == 1
    error = one_line_error(capsys)
    assert "61 file(s) this program did not write" in error and "new or empty folder" in error
    assert snapshot(frames) == before
    result = tmp_path / "result"
    assert demo_main(arguments[:-1] + [str(result) + os.sep]) == 0  # a new folder: written, then ours to replace
    assert demo_main(arguments[:-1] + [str(result) + os.sep]) == 0
    assert (result / ".dagan-result").is_file() and len(list(result.glob("*.png"))) == 5


# 5-7: the web app takes only its own checkpoints and reads uploads itself.
def test_app_loads_only_listed_checkpoints_and_answers_the_same_for_any_other_path(tmp_path, tiny_checkpoint):
    gr = pytest.importorskip("gradio", reason="the web app needs gradio: pip install gradio==6.31.0")
    from dagan.app import Animator, AppSettings
    root = tmp_path / "app"
    (root / "checkpoints").mkdir(parents=True)
    listed = root / "checkpoints" / "model.pt"
    listed.write_bytes(Path(tiny_checkpoint).read_bytes())
    animator = Animator(AppSettings(search_root=str(root), work_dir=str(tmp_path / "work"), device="cpu"))
    assert animator.resolve_checkpoint("checkpoints/model.pt") == str(root / "checkpoints" / "model.pt")
    answers = []
    for path in (tiny_checkpoint, "/etc/shadow", "/no/such/file.pt", "../model/tiny.pt"):
        with pytest.raises(gr.Error) as error:
            animator.resolve_checkpoint(path)
        answers.append(str(error.value.message).replace(path, "PATH"))
    assert len(set(answers)) == 1 and "not one of this server's checkpoints" in answers[0]


def test_app_hands_undecodable_uploads_to_the_handler(tmp_path):
    pytest.importorskip("gradio", reason="the web app needs gradio: pip install gradio==6.31.0")
    from gradio.data_classes import FileData

    from dagan.app import UploadedImage, read_portrait
    import gradio as gr
    bomb = png_claiming(tmp_path / "bomb.png", 13000, 13000)
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    component = UploadedImage(type="filepath")
    for upload, message in ((bomb, "is too large: 13000x13000 pixels (169 MP), over the limit of 50 MP"),
                            (text, "is not an image that can be read")):
        path = component.preprocess(FileData(path=str(upload)))
        assert path == str(upload)  # gradio did not decode it
        with pytest.raises(gr.Error, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_portrait(path)


# 6: pictures over the pixel limit fail from their header, before any allocation.
def test_pixel_bombs_are_refused_before_decoding(tmp_path, restore_pixel_limit, tiny_checkpoint, capsys):
    bomb = png_claiming(tmp_path / "bomb.png", 13000, 13000)
    with pytest.raises(PixelLimitError, match="13000x13000 pixels"):
        read_image(bomb)
    assert demo_main(["--checkpoint", tiny_checkpoint, "--crop", "none", "--source_image", str(bomb), "--driving_video",
                      str(SAMPLES / "driving.mp4"), "--result_video", str(tmp_path / "out.mp4")]) == 1
    assert "over the limit of 50 MP" in one_line_error(capsys)
    clip = make_test_clip(tmp_path / "clip.mp4", width=64, height=48, seconds=0.2)
    set_pixel_limit(64 * 48 - 1)
    with pytest.raises(PixelLimitError, match="64x48"):
        open_video(clip)
    set_pixel_limit(64 * 48)
    assert open_video(clip).size == (64, 48)


# 8 and 10: damaged checkpoints and leftovers of killed runs.
def test_an_empty_checkpoint_is_one_clear_line(tmp_path, capsys):
    empty = tmp_path / "model.pt"
    empty.write_bytes(b"")
    assert demo_main(["--checkpoint", str(empty), "--crop", "none", "--source_image", str(SAMPLES / "source.png"),
                      "--driving_video", str(SAMPLES / "driving.mp4"), "--result_video", str(tmp_path / "o.mp4")]) == 1
    error = one_line_error(capsys)
    assert "is empty (0 bytes)" in error and "IndexError" not in error


def test_a_killed_writers_partial_video_is_removed_by_the_next_run(tmp_path):
    from dagan.io import VideoWriter
    from dagan.io.files import temporary_sibling
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout)
    partial = temporary_sibling(tmp_path / "result.mp4")
    partial = partial.with_name(partial.name.replace(f"-{os.getpid()}-", f"-{dead_pid}-"))
    partial.write_bytes(b"half a video")
    with VideoWriter(tmp_path / "result.mp4", fps=10) as writer:
        writer.write(np.zeros((16, 16, 3), np.uint8))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["result.mp4"]


# 11: an output that cannot be written is found before the model loads.
def test_unwritable_or_full_output_folder_fails_before_any_work(tmp_path, monkeypatch, capsys):
    import dagan.io.files as files
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, not a folder")
    arguments = ["--checkpoint", str(tmp_path / "never_loaded.pt"), "--source_image", str(SAMPLES / "source.png"),
                 "--driving_video", str(SAMPLES / "driving.mp4"), "--result_video"]
    assert demo_main(arguments + [str(blocker / "result.mp4")]) == 1
    error = one_line_error(capsys)
    assert "cannot write the result" in error and "never_loaded" not in error
    monkeypatch.setattr(files, "disk_is_nearly_full", lambda directory: True)
    assert demo_main(arguments + [str(tmp_path / "result.mp4")]) == 1
    error = one_line_error(capsys)
    assert "the disk is full" in error and "never_loaded" not in error


# 12: long training clips are read by seeking, never decoded whole.
def test_long_training_clips_are_read_by_seeking(tmp_path, monkeypatch):
    from dagan.data.frames import VideoStore
    from dagan.io.video import VideoSource
    root = tmp_path / "clips"
    root.mkdir()
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:r=10:d=4", "-g", "7", "-pix_fmt", "yuv420p",
           str(root / "id1#long#1.mp4"))
    every_frame = open_video(root / "id1#long#1.mp4").read_all()  # (40, 48, 64, 3)
    monkeypatch.setattr(VideoSource, "read_all", lambda self: pytest.fail("a long clip was decoded whole"))
    store = VideoStore(root, "train", frame_shape=(48, 64), cache_bytes=every_frame.nbytes // 2)
    clip = store.open_clip(0)
    indices = [0, 1, 6, 7, 8, 23, 39]  # around keyframes (every 7th frame) and the last frame
    frames = clip.frames(indices).permute(0, 2, 3, 1).numpy()  # (T, 3, H, W) -> (T, H, W, 3)
    np.testing.assert_array_equal(np.rint(frames * 255).astype(np.uint8), every_frame[indices])
