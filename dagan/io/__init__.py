"""Media input/output: images, videos and frame directories in; MP4 or PNG frames out.

Images come back as float32 (H, W, 3) RGB in [0, 1] (`read_image`); video frames as uint8
(H, W, 3) RGB, one at a time (`open_video`). Writers are atomic and never overwrite an input.
Every failure a user can cause (missing, unreadable or empty input; output equal to an input)
raises `MediaError`, a `ValueError` with a one-line message.
"""

from dagan.io.images import (
    IMAGE_SUFFIXES,
    MediaError,
    decode_image_uint8,
    encode_image,
    is_image_file,
    read_image,
    read_image_uint8,
    resize_to_model,
    set_pixel_limit,
    to_uint8,
    write_png,
)
from dagan.io.video import (
    VIDEO_SUFFIXES,
    VideoInfo,
    VideoSource,
    ffmpeg_executable,
    has_audio_stream,
    is_video_file,
    natural_sort_key,
    open_image_as_video,
    open_video,
    probe,
)
from dagan.io.writers import (
    FrameDirectoryWriter,
    ImageWriter,
    VideoWriter,
    check_result_path,
    frame_file_name,
    open_writer,
    refuse_to_overwrite_inputs,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "FrameDirectoryWriter",
    "ImageWriter",
    "MediaError",
    "decode_image_uint8",
    "encode_image",
    "VideoInfo",
    "VideoSource",
    "VideoWriter",
    "check_result_path",
    "ffmpeg_executable",
    "frame_file_name",
    "has_audio_stream",
    "is_image_file",
    "is_video_file",
    "natural_sort_key",
    "open_image_as_video",
    "open_video",
    "open_writer",
    "probe",
    "read_image",
    "read_image_uint8",
    "refuse_to_overwrite_inputs",
    "resize_to_model",
    "set_pixel_limit",
    "to_uint8",
    "write_png",
]
