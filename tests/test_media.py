"""dagan.io: image reading, lazy video reading, atomic writers, and the bundled samples.

Test media are generated with the ffmpeg binary from imageio-ffmpeg (lavfi testsrc2 + sine).
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import List

import numpy as np
import pytest
import skimage.transform
from PIL import Image

from conftest import ffmpeg, make_test_clip
from dagan.io import (
    FrameDirectoryWriter,
    MediaError,
    VideoWriter,
    open_video,
    open_writer,
    probe,
    read_image,
    resize_to_model,
    to_uint8,
)
from dagan.io.files import atomic_write_bytes

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_FRAMES = 12
FPS = 10


def make_clip(
    path: Path, width: int = 64, height: int = 64, seconds: float = NUM_FRAMES / FPS, audio: bool = False
) -> Path:
    return make_test_clip(path, width, height, seconds, FPS, audio)


def ffmpeg_children() -> List[int]:
    """PIDs of ffmpeg processes whose parent is this test process (Linux /proc)."""
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat_file.read_text().rsplit(")", 1)[1].split()  # state, ppid, ...
            name = (stat_file.parent / "comm").read_text()
        except OSError:
            continue
        if int(after_name[1]) == os.getpid() and name.startswith("ffmpeg"):
            children.append(int(stat_file.parent.name))
    return children


def assert_one_line_error(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    directory = tmp_path_factory.mktemp("media")
    with_audio = make_clip(directory / "with_audio.mp4", audio=True)
    without_audio = make_clip(directory / "without_audio.mp4")
    wide = make_clip(directory / "wide.mp4", width=64, height=32)
    rotated = directory / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(wide), "-c", "copy", str(rotated))
    return types.SimpleNamespace(with_audio=with_audio, without_audio=without_audio, wide=wide, rotated=rotated)


# Images.


def test_read_image_composites_rgba_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[:, :5] = (255, 0, 0, 255)  # Opaque red left half; transparent right half.
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert image.shape == (8, 10, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(image[:, :5], np.broadcast_to([1.0, 0.0, 0.0], (8, 5, 3)))
    np.testing.assert_array_equal(image[:, 5:], np.ones((8, 5, 3)))


@pytest.mark.parametrize("mode", ["L", "P", "I;16", "1"])
def test_read_image_expands_single_channel_modes(tmp_path: Path, mode: str) -> None:
    gray = np.tile(np.array([0, 255], np.uint8), (6, 4))  # (6, 8): alternating black/white
    image = Image.fromarray(gray).convert(mode) if mode != "I;16" else Image.fromarray(gray.astype(np.uint16) * 257)
    image.save(tmp_path / "gray.png")
    result = read_image(tmp_path / "gray.png")
    assert result.shape == (6, 8, 3)
    np.testing.assert_allclose(result, np.repeat(gray[:, :, None] / 255.0, 3, axis=2), atol=1e-6)


def test_read_image_applies_exif_orientation(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)  # (H, W): red left half, blue right half.
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: rotate 90 degrees clockwise to display.
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (40, 20, 3)
    assert image[:15, :, 0].mean() > 0.9 and image[:15, :, 2].mean() < 0.1  # Left (red) is now on top.
    assert image[25:, :, 2].mean() > 0.9 and image[25:, :, 0].mean() < 0.1


def test_read_image_errors(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as error:
        read_image(tmp_path / "missing.png")
    assert_one_line_error(error, "missing.png", "does not exist")
    (tmp_path / "notes.png").write_text("not an image\nsecond line\n")
    with pytest.raises(MediaError) as error:
        read_image(tmp_path / "notes.png")
    assert_one_line_error(error, "notes.png", "could not be read")
    with pytest.raises(MediaError) as error:
        read_image(tmp_path)
    assert_one_line_error(error, "is a directory")
    assert issubclass(MediaError, ValueError)


def test_resize_to_model_matches_the_reference_demo() -> None:
    image = np.random.default_rng(0).integers(0, 256, (100, 80, 4), dtype=np.uint8)
    resized = resize_to_model(image)
    assert resized.shape == (256, 256, 3) and resized.dtype == np.float32
    assert 0.0 <= resized.min() and resized.max() <= 1.0
    np.testing.assert_allclose(resized, skimage.transform.resize(image, (256, 256))[..., :3], atol=1e-6)


def test_to_uint8_rounds_and_clips() -> None:
    np.testing.assert_array_equal(to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0])), [0, 0, 128, 255, 255])


# Reading videos.


def test_probe_and_open_video(media: types.SimpleNamespace) -> None:
    assert probe(media.with_audio) == (FPS, NUM_FRAMES, (64, 64), True)
    video = open_video(media.without_audio)
    assert (video.fps, video.num_frames, video.size, video.has_audio) == (FPS, NUM_FRAMES, (64, 64), False)
    frames = video.read_all()
    assert frames.shape == (NUM_FRAMES, 64, 64, 3) and frames.dtype == np.uint8
    frames[0, 0, 0] = 7  # Frames are writable arrays.


@pytest.mark.parametrize("suffix", ["gif", "webm", "avi", "mov"])
def test_open_video_reads_other_containers(tmp_path: Path, suffix: str) -> None:
    video = open_video(make_clip(tmp_path / f"clip.{suffix}", width=48, height=32))
    assert video.num_frames == NUM_FRAMES and video.size == (48, 32)
    assert sum(1 for _ in video) == NUM_FRAMES


def test_iteration_is_lazy_and_closes_ffmpeg(tmp_path: Path) -> None:
    long_clip = make_clip(tmp_path / "long.mp4", seconds=30)  # 300 frames: far more than a pipe buffer.
    frames = iter(open_video(long_clip))
    assert isinstance(frames, types.GeneratorType)
    assert ffmpeg_children() == []  # Nothing starts before the first frame is asked for.
    first = next(frames)
    assert first.shape == (64, 64, 3)
    assert len(ffmpeg_children()) == 1  # ffmpeg is blocked on the pipe: the video is not decoded yet.
    frames.close()
    assert ffmpeg_children() == []


def test_rotation_metadata_is_honoured(media: types.SimpleNamespace) -> None:
    rotated = open_video(media.rotated)
    assert rotated.size == (32, 64)
    frames = rotated.read_all()
    assert frames.shape == (NUM_FRAMES, 64, 32, 3)
    upright = open_video(media.wide).read_all()  # (T, 32, 64, 3)
    np.testing.assert_array_equal(frames, np.rot90(upright, k=1, axes=(1, 2)))  # 90 degrees counter-clockwise.


def test_frame_directory_is_read_in_natural_order(tmp_path: Path) -> None:
    for value, name in [(10, "frame10.png"), (2, "frame2.jpg"), (1, "frame1.png"), (25, ".hidden.png")]:
        Image.fromarray(np.full((6, 4, 3), value * 10, np.uint8)).save(tmp_path / name, quality=100)
    (tmp_path / "notes.txt").write_text("ignored")
    video = open_video(tmp_path, directory_fps=30)
    assert (video.fps, video.num_frames, video.size, video.has_audio) == (30.0, 3, (4, 6), False)
    assert [path.name for path in video.frame_paths] == ["frame1.png", "frame2.jpg", "frame10.png"]
    frames = list(video)
    assert all(frame.dtype == np.uint8 and frame.shape == (6, 4, 3) for frame in frames)
    np.testing.assert_allclose([frame.mean() for frame in frames], [10, 20, 100], atol=1)


def test_frame_directory_with_mixed_sizes_fails(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "0.png")
    Image.new("RGB", (5, 4)).save(tmp_path / "1.png")
    with pytest.raises(MediaError) as error:
        list(open_video(tmp_path))
    assert_one_line_error(error, "1.png", "same size")


def test_video_input_errors(tmp_path: Path, media: types.SimpleNamespace) -> None:
    with pytest.raises(MediaError) as error:
        open_video(tmp_path / "missing.mp4")
    assert_one_line_error(error, "missing.mp4", "does not exist")

    (tmp_path / "notes.mp4").write_text("this is not a video\n")
    with pytest.raises(MediaError) as error:
        open_video(tmp_path / "notes.mp4")
    assert_one_line_error(error, "notes.mp4", "could not be read", "Invalid data")

    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError) as error:
        open_video(tmp_path / "empty")
    assert_one_line_error(error, "empty", "no image files")

    ffmpeg("-i", str(media.wide), "-map", "0:v", "-c", "copy", "-frames:v", "0", str(tmp_path / "zero.avi"))
    with pytest.raises(MediaError) as error:
        open_video(tmp_path / "zero.avi")
    assert_one_line_error(error, "zero.avi", "no frames")

    ffmpeg("-i", str(media.with_audio), "-vn", "-c", "copy", str(tmp_path / "audio_only.m4a"))
    with pytest.raises(MediaError) as error:
        open_video(tmp_path / "audio_only.m4a")
    assert_one_line_error(error, "audio_only.m4a", "no video stream")


# Writing.


@pytest.mark.parametrize("source_name", ["with_audio", "without_audio"])
def test_video_writer_keeps_frames_fps_and_audio(
    tmp_path: Path, media: types.SimpleNamespace, source_name: str
) -> None:
    source = open_video(getattr(media, source_name))
    output = tmp_path / "result.mp4"
    with open_writer(output, source.fps, audio_from=source.path) as writer:
        assert isinstance(writer, VideoWriter)
        for frame in source:
            writer.write(frame)
    assert probe(output) == (source.fps, NUM_FRAMES, source.size, source.has_audio)
    difference = np.abs(open_video(output).read_all().astype(int) - source.read_all())
    assert difference.mean() < 6.0  # x264 at crf 18 + 4:2:0 chroma on a busy 64x64 test pattern.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["result.mp4"]


def test_video_writer_cuts_long_audio_at_a_known_number_of_frames(tmp_path: Path) -> None:
    """apad + -shortest alone ends the audio wherever the muxer's interleaving does (0.38 s to 1.15 s measured on a
    0.4 s clip); num_frames cuts it at the video's length."""
    from dagan.audio.decode import Audio, load_audio, write_wav

    speech = tmp_path / "long.wav"
    write_wav(speech, Audio((0.3 * np.sin(np.arange(48000) * 0.05)).astype(np.float32), 16000))  # 3 s
    lengths = {}
    for name, num_frames in (("cut.mp4", 10),):
        with VideoWriter(tmp_path / name, fps=25, audio_from=speech, num_frames=num_frames) as writer:
            for value in range(10):
                writer.write(np.full((32, 32, 3), 20 * value, np.uint8))
        lengths[name] = len(load_audio(tmp_path / name).samples) / 16000
    assert abs(lengths["cut.mp4"] - 0.4) <= 0.04, lengths  # one frame


def test_video_writer_exact_ntsc_rate_and_odd_size(tmp_path: Path) -> None:
    output = tmp_path / "nested" / "odd.mp4"  # Parent directories are created.
    with VideoWriter(output, fps=24000 / 1001) as writer:
        for value in range(5):
            writer.write(np.full((33, 45, 3), 40 * value, np.uint8))
    info = probe(output)
    assert info.fps == 24000 / 1001 and info.num_frames == 5
    assert info.size == (46, 34)  # yuv420p needs even sizes: padded by one edge pixel.


def test_frame_directory_round_trip_is_lossless(tmp_path: Path, media: types.SimpleNamespace) -> None:
    source = open_video(media.with_audio)
    with open_writer(str(tmp_path / "frames") + os.sep, source.fps, audio_from=source.path) as writer:
        assert isinstance(writer, FrameDirectoryWriter)
        for frame in source:
            writer.write(frame)
    names = sorted(path.name for path in (tmp_path / "frames").iterdir())
    assert names == [".dagan-result"] + [f"{index:06d}.png" for index in range(NUM_FRAMES)]  # our result marker
    np.testing.assert_array_equal(open_video(tmp_path / "frames").read_all(), source.read_all())


def test_frame_directory_writer_replaces_an_older_longer_result(tmp_path: Path) -> None:
    with open_writer(tmp_path, fps=25) as writer:  # An existing (empty) directory: PNG frames.
        for _ in range(5):
            writer.write(np.full((4, 4, 3), 100, np.uint8))
    (tmp_path / "notes.txt").write_text("kept")
    with open_writer(tmp_path, fps=25) as writer:  # our own result folder (it has the marker): replaced
        for _ in range(2):
            writer.write(np.full((4, 4, 3), 200, np.uint8))
    assert sorted(path.name for path in tmp_path.iterdir()) == [".dagan-result", "000000.png", "000001.png",
                                                                 "notes.txt"]
    assert open_video(tmp_path).read_all().min() == 200


def test_writers_refuse_to_overwrite_inputs(tmp_path: Path, media: types.SimpleNamespace) -> None:
    with pytest.raises(MediaError) as error:
        VideoWriter(media.with_audio, fps=10, audio_from=media.with_audio)
    assert_one_line_error(error, "refusing", "with_audio.mp4")
    with pytest.raises(MediaError):
        open_writer(media.without_audio, fps=10, protected_paths=[media.without_audio])
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (4, 4)).save(frames / "000000.png")
    with pytest.raises(MediaError):
        open_writer(frames, fps=25, protected_paths=[frames])
    with pytest.raises(MediaError):
        open_writer(frames, fps=25, protected_paths=[frames / "000000.png"])
    assert sorted(path.name for path in frames.iterdir()) == ["000000.png"]


def test_video_writer_is_atomic_when_writing_fails(tmp_path: Path) -> None:
    output = tmp_path / "result.mp4"
    atomic_write_bytes(output, b"previous result")  # an earlier result of ours: the writer may replace it
    with pytest.raises(RuntimeError, match="model crashed"):
        with VideoWriter(output, fps=10) as writer:
            for index in range(3):
                writer.write(np.full((16, 16, 3), index, np.uint8))
            raise RuntimeError("model crashed")
    assert output.read_bytes() == b"previous result"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["result.mp4"]
    assert ffmpeg_children() == []


def test_frame_directory_writer_is_atomic_when_writing_fails(tmp_path: Path) -> None:
    with FrameDirectoryWriter(tmp_path) as writer:  # an earlier result
        writer.write(np.full((4, 4, 3), 9, np.uint8))
    before = (tmp_path / "000000.png").read_bytes()
    with pytest.raises(RuntimeError):
        with FrameDirectoryWriter(tmp_path) as writer:
            writer.write(np.zeros((4, 4, 3), np.uint8))
            raise RuntimeError("model crashed")
    assert sorted(path.name for path in tmp_path.iterdir()) == [".dagan-result", "000000.png"]
    assert (tmp_path / "000000.png").read_bytes() == before


def test_writers_reject_empty_results_and_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4", fps=25):
            pass
    with pytest.raises(MediaError, match="no frames"):
        with FrameDirectoryWriter(tmp_path / "empty_frames"):
            pass
    assert list(tmp_path.iterdir()) == []
    with VideoWriter(tmp_path / "float.mp4", fps=25) as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((8, 8, 3), np.float32))
        writer.write(to_uint8(np.zeros((8, 8, 3), np.float32)))
    with pytest.raises(MediaError, match=".mp4"):
        open_writer(tmp_path / "result.avi", fps=25)


# Bundled samples.


def test_bundled_samples_are_valid() -> None:
    samples = REPO_ROOT / "data" / "samples"
    info = probe(samples / "driving.mp4")
    assert info.size == (256, 256) and info.has_audio
    assert 3.0 <= info.num_frames / info.fps <= 4.5 and abs(info.fps - 24000 / 1001) < 1e-9
    assert (samples / "driving.mp4").stat().st_size < 1_000_000
    assert read_image(samples / "source.png").shape == (256, 256, 3)
