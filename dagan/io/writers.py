"""Video and frame output: `open_writer` picks `VideoWriter` (H.264 MP4, optionally with AAC audio taken from
another file) or `FrameDirectoryWriter` (lossless PNG frames). Both write under a temporary name in the destination
directory and rename only when the result is complete, so an interrupted run never leaves a half-written result and
never damages an older one. Neither will overwrite an input.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import tempfile
import weakref
from fractions import Fraction
from pathlib import Path
from typing import IO, Iterable, List, Optional, Union

import numpy as np
from PIL import Image

from dagan.io.files import (OutputError, check_writable, describe_write_error, disk_is_nearly_full,
                            fsync_directory, publish, refuse_foreign_file, refuse_to_overwrite, remove_quietly,
                            remove_stale_temporaries, temporary_sibling)
from dagan.io.images import MediaError, PathLike, check_frame
from dagan.io.video import Size, _ffmpeg_url, _read_log, _reason, _stop_process, ffmpeg_executable, has_audio_stream

CONTAINER_BY_SUFFIX = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}
STILL_FORMAT_BY_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}  # one-frame results (a driving image)
FRAME_FILE_NAME = re.compile(r"^\d{6,}\.png$")
# Encoders run in their own process group: Ctrl-C in a terminal (sent to the whole foreground group) stops this
# program, which then finishes the file (a live recording is kept on Ctrl-C) or discards it, not ffmpeg halfway.
OWN_PROCESS_GROUP = ({"start_new_session": True} if os.name == "posix"
                     else {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP})



def refuse_to_overwrite_inputs(
    output: PathLike, inputs: Iterable[Optional[PathLike]], output_is_directory: bool = False
) -> None:
    """Raise MediaError if writing `output` would replace one of `inputs` (None entries are skipped).

    For a frame directory, an input is at risk when it is the directory itself or lies inside it.
    """
    try:
        refuse_to_overwrite(output, inputs, what="result", output_is_folder=output_is_directory)
    except OutputError as error:
        raise MediaError(str(error)) from None


def _remove_if_exists(path: Path) -> None:
    remove_quietly(path)  # a failed clean-up must never hide the error that caused it


def _discard_encoder(process: subprocess.Popen, temporary: Path) -> None:
    """Kill an unfinished encoder and delete its partial output (also run if a writer is garbage-collected)."""
    _stop_process(process)
    _remove_if_exists(temporary)


class _AtomicFrameWriter:
    """What both writers share: the context-manager protocol (commit on success, roll back on an exception)
    and the checks on each incoming frame. Subclasses implement ``close`` and ``abort``."""

    size: Optional[Size]
    _closed: bool

    def __enter__(self):
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _accept(self, frame: np.ndarray, what: str) -> None:
        """Validate one (H, W, 3) uint8 frame; the first frame fixes the size."""
        check_frame(frame)
        if self._closed:
            raise ValueError(f"{what} is already closed")
        height, width = frame.shape[:2]
        self.size = self.size or (width, height)
        if (width, height) != self.size:
            raise ValueError(f"frame is {width}x{height} but the output is {self.size[0]}x{self.size[1]}")


class VideoWriter(_AtomicFrameWriter):
    """Write uint8 RGB frames to an H.264 (libx264, yuv420p) MP4, atomically, optionally with audio.

    Usage:
        with VideoWriter("result.mp4", fps=25, audio_from="driving.mp4") as writer:
            for frame in frames:  # (H, W, 3) uint8
                writer.write(frame)

    Frames are piped to ffmpeg, which writes a hidden temporary file next to `path`; leaving the
    `with` block normally renames it to `path` (`os.replace`). If the block raises, or ffmpeg fails,
    the temporary file is deleted and a pre-existing `path` stays byte-identical.

    Args:
        path: output file ending in .mp4 (.m4v and .mov also accepted). Parent directories are created.
        fps: frame rate; NTSC rates such as 24000/1001 are written exactly.
        audio_from: a media file whose first audio stream is muxed in (AAC 128 kb/s), padded with
            silence or cut so that it lasts exactly as long as the video. Ignored if it has no audio.
        size: (width, height) every frame must have; None takes it from the first frame.
            yuv420p needs even sizes: an odd width/height is padded by one replicated edge pixel.
        crf: x264 constant rate factor (18: visually lossless; 23: x264's default).
        protected_paths: further inputs that must not be overwritten (`audio_from` always is).
        num_frames: the number of frames that will be written, when known: the output is cut at exactly
            `num_frames / fps` (`apad` + `-shortest` alone ends the audio wherever the muxer's interleaving does:
            0.38 s to 1.15 s measured on a 0.4 s clip).
        preset: x264's speed preset (`medium`; `veryfast` for a clip watched once, as it comes).
    """

    def __init__(
        self,
        path: PathLike,
        fps: float,
        audio_from: Optional[PathLike] = None,
        size: Optional[Size] = None,
        crf: int = 18,
        protected_paths: Iterable[Optional[PathLike]] = (),
        num_frames: Optional[int] = None,
        preset: str = "medium",
    ) -> None:
        self.path = Path(path)
        self.num_frames, self.preset = num_frames, preset
        self.fps = float(fps)
        self.size: Optional[Size] = None if size is None else (int(size[0]), int(size[1]))
        self.crf = int(crf)
        self.frames_written = 0
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self._container = check_video_path(self.path, [audio_from, *protected_paths])
        self.audio_path = Path(audio_from) if audio_from is not None and has_audio_stream(audio_from) else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path.parent)  # left by killed runs
        self._temporary = temporary_sibling(self.path)
        self._process: Optional[subprocess.Popen] = None
        self._log: Optional[IO[bytes]] = None
        self._finalizer: Optional[weakref.finalize] = None
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        self._accept(frame, f"VideoWriter for '{self.path}'")
        if self._process is None:
            self._start()
        try:
            self._process.stdin.write(np.ascontiguousarray(_pad_to_even(frame)).data)
        except OSError as error:  # Broken pipe: ffmpeg exited.
            message = self._failure_message()
            self.abort()
            raise MediaError(message) from error
        self.frames_written += 1

    def close(self) -> None:
        """Finish encoding and rename the temporary file to `path`. MediaError if no frame was written."""
        if self._closed:
            return
        if self._process is None:
            self._closed = True
            raise MediaError(f"no frames were written to '{self.path}'; nothing was saved")
        try:
            try:
                self._process.stdin.close()
            except OSError:  # ffmpeg already exited; its exit status below says so.
                pass
            returncode = self._process.wait()
            if returncode != 0:
                raise MediaError(self._failure_message())
            publish(self._temporary, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._finalizer.detach()
        self._log.close()

    def abort(self) -> None:
        """Stop without saving: end ffmpeg and delete the temporary file; `path` is left as it was."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()  # Runs `_discard_encoder` once.
        _remove_if_exists(self._temporary)
        if self._log is not None:
            self._log.close()

    def _start(self) -> None:
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            self._command(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log, **OWN_PROCESS_GROUP
        )
        self._finalizer = weakref.finalize(self, _discard_encoder, self._process, self._temporary)

    def _command(self) -> List[str]:
        width, height = _even_size(self.size)
        command = [
            ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-video_size", f"{width}x{height}",
            "-framerate", _rational(self.fps), "-i", "pipe:0",
        ]  # fmt: skip
        if self.audio_path is not None:
            command += ["-i", _ffmpeg_url(self.audio_path)]
        command += ["-map", "0:v:0", "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf)]
        command += ["-pix_fmt", "yuv420p"]
        if self.audio_path is not None:  # apad + shortest: the audio lasts exactly as long as the video.
            command += ["-map", "1:a:0", "-c:a", "aac", "-b:a", "128k", "-af", "apad", "-shortest"]
        command += ["-movflags", "+faststart", "-f", self._container]
        if self.num_frames is not None:  # -shortest overshoots the audio: cut at the known length
            command += ["-t", f"{self.num_frames / self.fps:.6f}"]
        command += [_ffmpeg_url(self._temporary)]
        return command

    def _failure_message(self) -> str:
        """One line for a failed encode: a full disk or an unwritable folder named as such, else ffmpeg's reason."""
        reason = self._failure_reason()
        if "No space left" in reason or disk_is_nearly_full(self.path.parent):
            return describe_write_error(self.path, OSError(errno.ENOSPC, reason))
        if "Permission denied" in reason or "Read-only file system" in reason:
            return describe_write_error(self.path, OSError(errno.EACCES, reason))
        return f"ffmpeg failed to write '{self.path}' ({reason})"

    def _failure_reason(self) -> str:
        """ffmpeg's last log line, or its exit status when it logged nothing."""
        if self._process is not None and self._process.poll() is None:
            self._process.wait(timeout=10)
        log = _read_log(self._log) if self._log is not None and not self._log.closed else ""
        return _reason(log) if log.strip() else f"ffmpeg exit status {self._process.returncode}"


def _container_format(path: Path) -> str:
    container = CONTAINER_BY_SUFFIX.get(path.suffix.lower())
    if container is None:
        raise MediaError(
            f"cannot write video '{path}': use a .mp4 file name, or a directory path ending with '/' for PNG frames"
        )
    return container


def _rational(fps: float) -> str:
    """Frame rate as an exact ffmpeg rational: 25.0 -> '25/1', 23.976... -> '24000/1001'."""
    fraction = Fraction(fps).limit_denominator(1001)
    return f"{fraction.numerator}/{fraction.denominator}"


def _even_size(size: Size) -> Size:
    width, height = size
    return width + width % 2, height + height % 2


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H + H%2, W + W%2, 3) by replicating the last row/column (yuv420p needs even sizes)."""
    pad_rows, pad_columns = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_rows or pad_columns:
        return np.pad(frame, ((0, pad_rows), (0, pad_columns), (0, 0)), mode="edge")
    return frame


def frame_file_name(index: int) -> str:
    """Name of output frame `index`: 000000.png, 000001.png, ..."""
    return f"{index:06d}.png"


RESULT_MARKER = ".dagan-result"  # a frame folder holding this file was written by this project


class FrameDirectoryWriter(_AtomicFrameWriter):
    """Write uint8 RGB frames as lossless PNG files 000000.png, 000001.png, ... in a directory.

    The directory must be new, empty, or a result folder this project wrote before (it holds the marker file
    ``.dagan-result``): a folder of the user's own files is refused, so nothing the user made is ever replaced.
    Frames are staged in a hidden temporary directory inside `directory`; closing moves each one into place
    with `os.replace` (an atomic rename per frame) and deletes numbered frames left by an older, longer result
    of ours. If the `with` block raises, the staged frames are deleted and the directory is left as it was.

    Args:
        directory: created (with parents) if missing.
        protected_paths: inputs that must not be overwritten.
    """

    def __init__(self, directory: PathLike, protected_paths: Iterable[Optional[PathLike]] = ()) -> None:
        self.directory = Path(directory)
        self.size: Optional[Size] = None
        self.frames_written = 0
        check_frame_directory(self.directory, protected_paths)
        self._created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.directory)  # staging folders of killed runs
        self._staging = temporary_sibling(self.directory / "frames")
        self._staging.mkdir()
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._staging, ignore_errors=True)
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame (all frames must have the same size)."""
        self._accept(frame, f"FrameDirectoryWriter for '{self.directory}'")
        Image.fromarray(frame).save(self._staging / frame_file_name(self.frames_written), format="PNG")
        self.frames_written += 1

    def close(self) -> None:
        """Move the staged frames into `directory`. MediaError if no frame was written."""
        if self._closed:
            return
        if self.frames_written == 0:
            self.abort()
            raise MediaError(f"no frames were written to '{self.directory}'; nothing was saved")
        try:
            (self.directory / RESULT_MARKER).write_text("PNG frames written by dagan (demo.py); this folder's "
                                                         "numbered frames are replaced by the next result\n")
            for index in range(self.frames_written):
                name = frame_file_name(index)
                os.replace(self._staging / name, self.directory / name)
            self._remove_stale_frames()
            fsync_directory(self.directory)
        finally:
            self._closed = True
            self._finalizer()

    def abort(self) -> None:
        """Delete the staged frames; the directory keeps its previous content (removed if we created it empty)."""
        self._closed = True
        self._finalizer()
        if self._created and not any(self.directory.iterdir()):
            self.directory.rmdir()

    def _remove_stale_frames(self) -> None:
        for path in self.directory.iterdir():
            if FRAME_FILE_NAME.match(path.name) and int(path.stem) >= self.frames_written:
                path.unlink()


class ImageWriter(_AtomicFrameWriter):
    """Write a one-frame result (a portrait driven by a driving image) as a PNG or JPEG (quality 95), atomically
    when the writer closes. A second frame is refused: a video needs a .mp4 or a folder."""

    def __init__(self, path: PathLike, protected_paths: Iterable[Optional[PathLike]] = ()) -> None:
        self.path = Path(path)
        self.format = check_image_path(self.path, protected_paths)
        self.size: Optional[Size] = None
        self.frame: Optional[np.ndarray] = None
        self.frames_written = 0
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        self._accept(frame, "ImageWriter")
        if self.frame is not None:
            raise MediaError(f"the result '{self.path}' is an image and holds one frame; give a .mp4 file or a "
                             "folder ending in / for a video")
        self.frame = frame.copy()
        self.frames_written = 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.frame is None:
            raise MediaError(f"no frame was written to '{self.path}'")
        from dagan.io.files import atomic_write_bytes
        from dagan.io.images import encode_image

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, encode_image(self.frame, self.format))

    def abort(self) -> None:
        self._closed = True


def is_image_path(result_path: PathLike) -> bool:
    """Whether ``open_writer`` writes one image for this path (.png, .jpg, .jpeg)."""
    return Path(os.fspath(result_path)).suffix.lower() in STILL_FORMAT_BY_SUFFIX


def check_image_path(path: Path, protected_paths: Iterable[Optional[PathLike]]) -> str:
    """The image format of a one-frame result, after checking it replaces no input and is not a folder."""
    refuse_to_overwrite_inputs(path, protected_paths)
    if path.is_dir():
        raise MediaError(f"image output '{path}' is an existing directory; give a .png or .jpg file path")
    return STILL_FORMAT_BY_SUFFIX[path.suffix.lower()]


def check_video_path(path: Path, protected_paths: Iterable[Optional[PathLike]]) -> str:
    """The container for an .mp4/.mov output, after checking it replaces no input, is not a folder and is not a
    file this project did not write (:func:`dagan.io.files.refuse_foreign_file`)."""
    container = _container_format(path)
    refuse_to_overwrite_inputs(path, protected_paths)
    if path.is_dir():
        raise MediaError(f"video output '{path}' is an existing directory; give a .mp4 file path")
    try:
        refuse_foreign_file(path, what="result")
    except OutputError as error:
        raise MediaError(str(error)) from None
    return container


def check_frame_directory(directory: Path, protected_paths: Iterable[Optional[PathLike]]) -> None:
    """A PNG-frame output folder must hold no input, not be a file, and be new, empty or one of ours."""
    refuse_to_overwrite_inputs(directory, protected_paths, output_is_directory=True)
    if directory.exists() and not directory.is_dir():
        raise MediaError(f"frame output '{directory}' is an existing file; give a directory path")
    refuse_foreign_directory(directory)


def refuse_foreign_directory(directory: Path) -> None:
    """MediaError if ``directory`` holds files and is not one of our result folders (no ``.dagan-result``)."""
    if not directory.is_dir() or (directory / RESULT_MARKER).is_file():
        return
    entries = [entry.name for entry in directory.iterdir()]
    if entries:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise MediaError(f"refusing to write PNG frames into '{directory}': it already holds {len(entries)} "
                         f"file(s) this program did not write ({shown}); give a new or empty folder")


def open_writer(
    result_path: PathLike,
    fps: float,
    audio_from: Optional[PathLike] = None,
    protected_paths: Iterable[Optional[PathLike]] = (),
) -> Union[VideoWriter, FrameDirectoryWriter]:
    """Open the writer that `result_path` asks for.

    An existing directory, or a path ending with '/' (os.sep), gives a `FrameDirectoryWriter`
    (PNG frames; `fps` and audio do not apply); a .png / .jpg / .jpeg file an `ImageWriter` (one frame: a
    portrait driven by an image); anything else gives an MP4 `VideoWriter`.
    `audio_from` and `protected_paths` are never overwritten.
    """
    if is_frame_directory_path(result_path):
        return FrameDirectoryWriter(result_path, protected_paths=[*protected_paths, audio_from])
    if is_image_path(result_path):
        return ImageWriter(result_path, protected_paths=[*protected_paths, audio_from])
    return VideoWriter(result_path, fps, audio_from=audio_from, protected_paths=protected_paths)


def is_frame_directory_path(result_path: PathLike) -> bool:
    """Whether ``open_writer`` writes PNG frames for this path (an existing folder, or a path ending with '/')."""
    text = os.fspath(result_path)
    return os.path.isdir(text) or text.endswith(("/", os.sep))


def check_result_path(result_path: PathLike, protected_paths: Iterable[Optional[PathLike]] = ()) -> None:
    """Every check ``open_writer`` makes, without writing anything: run it before the work starts.

    MediaError if the result would replace an input, is a folder of someone else's files, has a suffix that is
    not a video container, or lies in a folder that cannot be written (read-only, full disk).
    """
    protected = list(protected_paths)
    if is_frame_directory_path(result_path):
        check_frame_directory(Path(result_path), protected)
    elif is_image_path(result_path):
        check_image_path(Path(result_path), protected)
    else:
        check_video_path(Path(result_path), protected)
    try:
        check_writable(result_path, "result")
    except OutputError as error:
        raise MediaError(str(error)) from None
