"""Video input through the ffmpeg binary bundled with imageio-ffmpeg (output: :mod:`dagan.io.writers`).

Reading: `open_video(path)` returns a `VideoSource` for a video file (anything ffmpeg decodes:
mp4, mov, webm, avi, gif, ...) or for a directory of image frames. Iterating a `VideoSource` yields
(H, W, 3) uint8 RGB frames one at a time from an ffmpeg pipe, so memory holds one frame whatever
the length of the video. Rotation metadata is honoured (ffmpeg autorotates).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import imageio_ffmpeg
import numpy as np

from dagan.io.images import IMAGE_SUFFIXES, MediaError, PathLike, check_pixel_count, is_image_file, read_image_uint8

DEFAULT_DIRECTORY_FPS = 25.0
FALLBACK_FPS = 25.0  # Used when a file states no frame rate (ffmpeg assumes the same).
VIDEO_HINT = "give a video file ffmpeg can decode (mp4, mov, webm, avi, gif) or a directory of frames"

Size = Tuple[int, int]  # (width, height)

# Video containers this project reads as videos (anything else in a folder of clips is ignored).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".webm", ".mkv", ".gif", ".mpg", ".mpeg", ".flv", ".wmv")


def is_video_file(path: Path) -> bool:
    """True when `path` has one of the video suffixes (case-insensitive); the file itself is not opened."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def ffmpeg_executable() -> str:
    """Path of the static ffmpeg binary shipped in the imageio-ffmpeg wheel."""
    return imageio_ffmpeg.get_ffmpeg_exe()


# Probing.


class VideoInfo(NamedTuple):
    """What `probe` finds in a video file.

    fps: frames per second (NTSC rates such as 23.98 are returned exactly, e.g. 24000/1001).
    num_frames: number of video frames (counted by demuxing the stream), None if ffmpeg did not say.
    size: (width, height) of the frames as displayed, i.e. after rotation metadata is applied.
    has_audio: whether the file has at least one audio stream.
    """

    fps: float
    num_frames: Optional[int]
    size: Size
    has_audio: bool


def probe(path: PathLike) -> VideoInfo:
    """Read frame rate, frame count, displayed size and audio presence of a video file.

    Runs `ffmpeg -i path -map 0:V:0 -c copy -f null -` (`V`: the first video stream that is not cover
    art), which demuxes without decoding (fast), and parses its verbose log; the frame count is the
    number of video packets (one per frame in every common container). Raises MediaError for a
    missing or unreadable file or one with no video stream.
    """
    path = _existing_file(Path(path), "video")
    returncode, log = _run_ffmpeg(
        ["-nostats", "-loglevel", "verbose", "-i", _ffmpeg_url(path), "-map", "0:V:0", "-c", "copy", "-f", "null", "-"]
    )
    header = _input_section(log)
    if "Input #0" not in header:
        raise MediaError(f"video '{path}' could not be read by ffmpeg ({_reason(log)}); {VIDEO_HINT}")
    video_line, video_block = _first_video_stream(header)
    if video_line is None:
        raise MediaError(f"'{path}' contains no video stream; {VIDEO_HINT}")
    if returncode != 0:
        raise MediaError(f"video '{path}' could not be read by ffmpeg ({_reason(log)}); {VIDEO_HINT}")
    frame_counts = re.findall(r"Output stream #0:0 \(video\): (\d+) packets muxed", log)
    return VideoInfo(
        fps=_parse_fps(video_line),
        num_frames=int(frame_counts[-1]) if frame_counts else None,
        size=_parse_displayed_size(path, video_line, video_block),
        has_audio=_has_audio_line(header),
    )


def has_audio_stream(path: PathLike) -> bool:
    """Whether a media file (video or audio-only) has an audio stream. MediaError if unreadable."""
    path = _existing_file(Path(path), "media file")
    _, log = _run_ffmpeg(["-i", _ffmpeg_url(path)])  # No output given: ffmpeg prints the header and stops.
    header = _input_section(log)
    if "Input #0" not in header:
        raise MediaError(
            f"media file '{path}' could not be read by ffmpeg ({_reason(log)}); give an audio or video file"
        )
    return _has_audio_line(header)


def _run_ffmpeg(arguments: Sequence[str]) -> Tuple[int, str]:
    """Run ffmpeg to completion; returns (exit status, stderr log as text)."""
    command = [ffmpeg_executable(), "-hide_banner", "-nostdin", *arguments]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
    return result.returncode, result.stderr.decode("utf-8", "replace")


def _input_section(log: str) -> str:
    """The part of an ffmpeg log that describes the inputs (before the output/mapping lines)."""
    end = len(log)
    for marker in ("Stream mapping:", "Output #0", "At least one output file"):
        position = log.find(marker)
        if position >= 0:
            end = min(end, position)
    return log[:end]


def _first_video_stream(header: str) -> Tuple[Optional[str], str]:
    """(line of the first video stream, that line plus its metadata/side-data lines) or (None, '')."""
    lines = header.splitlines()
    for index, line in enumerate(lines):
        if re.search(r"Stream #\d+:\d+.*: Video: ", line) and "(attached pic)" not in line:  # Not cover art.
            block = [line]
            for following in lines[index + 1 :]:
                if re.search(r"^\s*Stream #", following):
                    break
                block.append(following)
            return line, "\n".join(block)
    return None, ""


def _has_audio_line(header: str) -> bool:
    return re.search(r"Stream #\d+:\d+.*: Audio: ", header) is not None


def _parse_fps(video_line: str) -> float:
    """Frame rate from a stream line ('23.98 fps', else '25 tbr'), NTSC rates made exact."""
    match = re.search(r"([\d.]+)(k?) fps", video_line) or re.search(r"([\d.]+)(k?) tbr", video_line)
    if match is None:
        return FALLBACK_FPS
    fps = float(match.group(1)) * (1000.0 if match.group(2) else 1.0)
    for base in (24, 30, 48, 60, 120):  # ffmpeg prints 24000/1001 as 23.98: undo the rounding.
        if abs(fps - base * 1000 / 1001) < 0.006:
            return base * 1000 / 1001
    return fps if fps > 0 else FALLBACK_FPS


def _parse_displayed_size(path: Path, video_line: str, video_block: str) -> Size:
    """(width, height) after autorotation: coded size, swapped for a +-90 degree display matrix."""
    match = re.search(r"\s(\d+)x(\d+)(?=[\s,\[]|$)", video_line)
    if match is None or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise MediaError(f"video '{path}' has no frame size in its header; {VIDEO_HINT}")
    width, height = int(match.group(1)), int(match.group(2))
    rotation = re.search(r"rotation of (-?[\d.]+) degrees", video_block)
    if rotation is not None and round(float(rotation.group(1))) % 180 == 90:
        width, height = height, width
    return width, height


def _reason(log: str) -> str:
    """The last meaningful line of an ffmpeg log, without its '[component @ 0x...]' prefix."""
    lines = [line.strip() for line in log.replace("\r", "\n").splitlines() if line.strip()]
    noise = ("frame=", "size=", "Press [q]", "Exiting with exit code", "[AVIOContext")
    lines = [line for line in lines if not line.startswith(noise)]
    if not lines:
        return "no error message"
    reason = re.sub(r"^\[[^\]]*\]\s*", "", lines[-1])
    if reason.startswith("Error opening input file"):
        reason = reason.split(": ", 1)[-1]
    return reason


def _existing_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise MediaError(f"{what} '{path}' does not exist; check the path")
    if path.is_dir():
        raise MediaError(f"{what} '{path}' is a directory; give the path of a file")
    return path


def _ffmpeg_url(path: Path) -> str:
    """An ffmpeg URL that is always read as a local file (names with ':' or a leading '-' are safe)."""
    return "file:" + os.path.abspath(path)


# Reading.


@dataclass(frozen=True)
class VideoSource:
    """A video file or a directory of frames, opened lazily by `open_video`.

    Iterating yields (H, W, 3) uint8 RGB frames one at a time; each `iter()` starts from frame 0 with
    its own decoder. A partly consumed iterator can be stopped with `.close()` (or by dropping it);
    the ffmpeg process is then ended.

    path: the file or directory.
    fps: frames per second (for a directory, the rate given to `open_video`, default 25).
    num_frames: number of frames, None if unknown.
    size: (width, height) of the frames, rotation applied.
    has_audio: whether the file has an audio stream (always False for a directory).
    frame_paths: the frame files in reading order, for a directory; None for a video file.
    """

    path: Path
    fps: float
    num_frames: Optional[int]
    size: Size
    has_audio: bool
    frame_paths: Optional[Tuple[Path, ...]] = field(default=None, repr=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.frame_paths is not None:
            return _iterate_frame_files(self.frame_paths, self.size)
        return _iterate_video_file(self.path, self.size)

    def read_all(self) -> np.ndarray:
        """All frames as one (T, H, W, 3) uint8 array. Holds the whole video in memory: short clips only."""
        return np.stack(list(self))

    def read_frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) uint8, without decoding the frames before it.

        A frame folder reads one file; a video file is seeked: ffmpeg jumps to the keyframe before the frame's
        time and decodes from there (exact for constant-frame-rate videos, such as VoxCeleb and HDTF clips).
        """
        if self.num_frames is not None and not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} of '{self.path}' is out of range (it has {self.num_frames})")
        if self.frame_paths is not None:
            return next(_iterate_frame_files(self.frame_paths[index:index + 1], self.size))
        return _decode_frame_at(self.path, self.size, (index - 0.5) / self.fps if index else 0.0, index)


def open_video(path: PathLike, directory_fps: float = DEFAULT_DIRECTORY_FPS) -> VideoSource:
    """Open a video file or a directory of frames for lazy reading.

    Args:
        path: a video file, or a directory of png/jpg/jpeg/bmp/webp frames read in natural name order
            (frame2 before frame10; hidden files and other suffixes are ignored).
        directory_fps: frame rate reported for a directory of frames (files carry no timing).
    Raises:
        MediaError: missing path, unreadable/corrupt file, no video stream, zero frames, empty directory.
    """
    path = Path(path)
    if path.is_dir():
        return _open_frame_directory(path, directory_fps)
    info = probe(path)
    if info.num_frames == 0:
        raise MediaError(f"video '{path}' has no frames; {VIDEO_HINT}")
    check_pixel_count(*info.size, f"video '{path}'")
    return VideoSource(path=path, fps=info.fps, num_frames=info.num_frames, size=info.size, has_audio=info.has_audio)


def open_image_as_video(path: PathLike, fps: float = DEFAULT_DIRECTORY_FPS) -> VideoSource:
    """A single image (a driving image) as a one-frame `VideoSource`, read like `read_image_uint8` reads it."""
    path = Path(path)
    frame = read_image_uint8(path)  # MediaError for a missing or unreadable image
    height, width = frame.shape[:2]
    return VideoSource(path=path, fps=fps, num_frames=1, size=(width, height), has_audio=False, frame_paths=(path,))


def natural_sort_key(path: Path) -> Tuple[Union[int, str], ...]:
    """Sort key that orders embedded numbers by value: 'frame2.png' < 'frame10.png'."""
    parts = re.split(r"(\d+)", path.name)  # Strings at even positions, digit runs at odd positions.
    return tuple(int(part) if index % 2 else part.lower() for index, part in enumerate(parts))


def _open_frame_directory(directory: Path, fps: float) -> VideoSource:
    candidates = [path for path in directory.iterdir() if not path.name.startswith(".")]
    frame_paths = sorted((path for path in candidates if path.is_file() and is_image_file(path)), key=natural_sort_key)
    if not frame_paths:
        raise MediaError(
            f"frame directory '{directory}' contains no image files ({', '.join(IMAGE_SUFFIXES)}); "
            "put the frames there or give a video file"
        )
    height, width = read_image_uint8(frame_paths[0]).shape[:2]
    return VideoSource(
        path=directory,
        fps=float(fps),
        num_frames=len(frame_paths),
        size=(width, height),
        has_audio=False,
        frame_paths=tuple(frame_paths),
    )


def _iterate_frame_files(frame_paths: Sequence[Path], size: Size) -> Iterator[np.ndarray]:
    """Yield each frame file as (H, W, 3) uint8, checking that all have the first frame's size."""
    for frame_path in frame_paths:
        frame = read_image_uint8(frame_path)
        height, width = frame.shape[:2]
        if (width, height) != size:
            raise MediaError(
                f"frame '{frame_path}' is {width}x{height} but the first frame is {size[0]}x{size[1]}; "
                "all frames in a directory must have the same size"
            )
        yield frame


def _iterate_video_file(path: Path, size: Size) -> Iterator[np.ndarray]:
    """Decode with an ffmpeg subprocess piping raw rgb24; yield (H, W, 3) uint8 frames one at a time."""
    width, height = size
    command = [
        ffmpeg_executable(), "-hide_banner", "-nostdin", "-loglevel", "error",
        "-i", _ffmpeg_url(path), "-map", "0:V:0", "-fps_mode", "passthrough",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:  # A file, not a pipe: a full stderr pipe could block ffmpeg.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        try:
            count = 0
            while True:
                frame = np.empty((height, width, 3), dtype=np.uint8)
                filled = _read_into(process.stdout, memoryview(frame).cast("B"))
                if filled == 0:
                    break
                if filled < frame.nbytes:
                    raise MediaError(
                        f"video '{path}' stopped in the middle of frame {count}; the file may be truncated"
                    )
                count += 1
                yield frame
            if process.wait() != 0 or count == 0:
                problem = _reason(_read_log(log)) if process.returncode else "no frame could be decoded"
                raise MediaError(f"video '{path}' could not be decoded after {count} frames ({problem}); {VIDEO_HINT}")
        finally:
            _stop_process(process)


def _decode_frame_at(path: Path, size: Size, seconds: float, index: int) -> np.ndarray:
    """The first frame at or after ``seconds`` (half a frame before frame ``index``'s time, so rounding of
    timestamps never skips it)."""
    width, height = size
    command = [
        ffmpeg_executable(), "-hide_banner", "-nostdin", "-loglevel", "error", "-ss", f"{max(seconds, 0.0):.6f}",
        "-i", _ffmpeg_url(path), "-map", "0:V:0", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]  # fmt: skip
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
    if result.returncode != 0 or len(result.stdout) != width * height * 3:
        problem = _reason(result.stderr.decode("utf-8", "replace")) if result.returncode else "no frame there"
        raise MediaError(f"frame {index} of video '{path}' could not be decoded ({problem}); {VIDEO_HINT}")
    return np.frombuffer(result.stdout, dtype=np.uint8).reshape(height, width, 3).copy()


def _read_into(stream: IO[bytes], buffer: memoryview) -> int:
    """Fill `buffer` from `stream`; returns the number of bytes read (less than its size only at EOF)."""
    filled = 0
    while filled < len(buffer):
        count = stream.readinto(buffer[filled:])
        if not count:
            break
        filled += count
    return filled


def _read_log(log: IO[bytes]) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode("utf-8", "replace")


def _stop_process(process: subprocess.Popen) -> None:
    """End an ffmpeg child process we started (if still running) and close its pipes."""
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:  # A broken pipe while flushing the last bytes: ffmpeg is gone anyway.
                pass
