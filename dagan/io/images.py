"""Still images: reading (any format Pillow opens), resizing to the model, PNG writing.

Every image enters the project through `read_image`, which returns float32 RGB in [0, 1]:
EXIF orientation applied, transparency composited on a background, grayscale/palette/16-bit
expanded to three channels. `MediaError` is the single error type of `dagan.io`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import skimage.transform
from PIL import Image, ImageOps, UnidentifiedImageError

from dagan.io.files import atomic_write, first_line

PathLike = Union[str, os.PathLike]
RGB = Tuple[int, int, int]

WHITE: RGB = (255, 255, 255)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

# The largest picture decoded, in pixels: 50 MP holds the largest real photos (a 8688x5792 full-frame camera
# image) and stops a small file that claims an enormous size (a 500 KB PNG of 13000x13000 would take gigabytes)
# before anything is allocated. DAGAN_MAX_PIXELS, or set_pixel_limit(), changes it.
DEFAULT_MAX_PIXELS = 50_000_000
_pixel_limit: list[Optional[int]] = [None]  # None: DAGAN_MAX_PIXELS or the default, read on first use


class MediaError(ValueError):
    """A media file is missing, unreadable, empty, or an output would overwrite an input.

    The message is one line: the path, the problem, and what to do about it.
    """


class PixelLimitError(MediaError):
    """An image or video frame has more pixels than the limit (found from its header, before decoding)."""

    def __init__(self, what: str, size: Optional[Tuple[int, int]], limit: int):
        self.size, self.limit = size, limit
        super().__init__(f"{what} is {self.summary}; downscale it first, or raise the limit with --max_pixels "
                         "(or DAGAN_MAX_PIXELS)")

    @property
    def summary(self) -> str:
        """'13000x13000 pixels (169 MP), over the limit of 50 MP'."""
        size = f"{self.size[0]}x{self.size[1]} pixels ({self.size[0] * self.size[1] / 1e6:.0f} MP)" if self.size \
            else "far too many pixels"
        return f"{size}, over the limit of {self.limit / 1e6:.0f} MP"


def set_pixel_limit(max_pixels: int) -> None:
    """The largest width x height that images and video frames may have (``demo.py --max_pixels``)."""
    if max_pixels <= 0:
        raise ValueError(f"the pixel limit must be positive, got {max_pixels}")
    _pixel_limit[0] = int(max_pixels)


def pixel_limit() -> int:
    """The current limit: set_pixel_limit's, else DAGAN_MAX_PIXELS (MediaError, one line, when it is not a positive
    whole number), else DEFAULT_MAX_PIXELS."""
    if _pixel_limit[0] is None:
        text = os.environ.get("DAGAN_MAX_PIXELS", "").strip()
        if text and not (text.isdigit() and int(text) > 0):
            raise MediaError(f"DAGAN_MAX_PIXELS={text!r} is not a positive whole number of pixels; unset it or give "
                             "e.g. DAGAN_MAX_PIXELS=50000000")
        _pixel_limit[0] = int(text) if text else DEFAULT_MAX_PIXELS
    return _pixel_limit[0]


def check_pixel_count(width: int, height: int, what: str) -> None:
    """MediaError if a ``width`` x ``height`` picture is over the pixel limit (checked before decoding)."""
    if width * height > pixel_limit():
        raise PixelLimitError(what, (width, height), pixel_limit())


def read_image(path: PathLike, background: RGB = WHITE) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: any image Pillow reads (PNG, JPEG, BMP, WebP, TIFF, GIF: first frame, ...).
        background: RGB colour that transparent pixels are composited onto.
    Returns:
        (H, W, 3) float32 in [0, 1], upright according to the EXIF orientation tag.
    Raises:
        MediaError: the file is missing, is a directory, or is not a readable image.
    """
    array = _decode_rgb(Path(path), background)
    return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)


def read_image_uint8(path: PathLike, background: RGB = WHITE) -> np.ndarray:
    """Read an image file like `read_image`, returning (H, W, 3) uint8 in [0, 255]."""
    return _eight_bit(_decode_rgb(Path(path), background))


def _eight_bit(array: np.ndarray) -> np.ndarray:
    """uint8 as is; 16-bit values rounded to the nearest 8-bit level."""
    if array.dtype == np.uint16:
        array = ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return array


def resize_to_model(image: np.ndarray, size: Tuple[int, int] = (256, 256)) -> np.ndarray:
    """Resize an image exactly as the reference DaGAN demo prepares its inputs.

    The demo does `skimage.transform.resize(image, (256, 256))[..., :3]`: bilinear interpolation
    (order 1) with Gaussian anti-aliasing when shrinking, reflect padding, and a float result in
    [0, 1] (uint8 input is rescaled to [0, 1] first; float input is taken as already in [0, 1]).
    The aspect ratio is not kept: crop to a square first.

    Args:
        image: (H, W, C) uint8 or float in [0, 1], C >= 3 (extra channels such as alpha are dropped).
        size: (height, width) of the result, in skimage's (rows, columns) order.
    Returns:
        (height, width, 3) float32 in [0, 1].
    """
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"resize_to_model expects an (H, W, C>=3) image, got shape {image.shape}")
    resized = skimage.transform.resize(image, size)
    return resized[..., :3].astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a float image in [0, 1] to uint8 in [0, 255] (values outside are clipped, then rounded).

    Args:
        image: (..., 3) float array in [0, 1].
    Returns:
        array of the same shape, uint8.
    """
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def decode_image_uint8(data: bytes, name: str, background: RGB = WHITE) -> np.ndarray:
    """Decode an image held in memory (e.g. a PNG or JPEG member of a tar shard) exactly as `read_image_uint8`
    reads the same bytes from a file: (H, W, 3) uint8. ``name`` labels the image in error messages."""
    return _eight_bit(_to_rgb(_load_upright(io.BytesIO(data), name), background))


def encode_image(image: np.ndarray, image_format: str = "png", quality: int = 95) -> bytes:
    """A (H, W, 3) uint8 image as PNG (lossless) or JPEG (``quality`` 1-100, 4:2:0 chroma) file bytes."""
    check_frame(image)
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(image).save(buffer, format="PNG")
    else:
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def write_png(path: PathLike, image: np.ndarray) -> None:
    """Write a (H, W, 3) uint8 image as a lossless PNG, atomically (temp file, fsync, then `os.replace`).

    On any error the temp file is removed and a pre-existing `path` is left untouched.
    """
    check_frame(image)
    atomic_write(path, lambda stream: Image.fromarray(image).save(stream, format="PNG"))


def check_frame(frame: np.ndarray) -> None:
    """Raise ValueError unless `frame` is an (H, W, 3) uint8 array (use `to_uint8` for float images)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        kind = frame.dtype if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frames must be uint8 numpy arrays, got {kind}; convert float images with to_uint8")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must have shape (H, W, 3), got {frame.shape}")


def is_image_file(path: Path) -> bool:
    """True when `path` has one of the image suffixes read as video frames (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


# Decoding.


def _decode_rgb(path: Path, background: RGB) -> np.ndarray:
    """Open, orient and convert an image: (H, W, 3) uint8, or uint16 for 16-bit grayscale files."""
    return _to_rgb(_open_upright(path), background)


def _to_rgb(image: Image.Image, background: RGB) -> np.ndarray:
    """An opened image as (H, W, 3) uint8 (uint16 for 16-bit grayscale), transparency composited."""
    if image.mode in SIXTEEN_BIT_MODES:
        gray = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)  # (H, W)
        return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W, 3)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        image = _composite(image.convert("RGBA"), background)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _open_upright(path: Path) -> Image.Image:
    """Open and fully decode an image with Pillow, rotated/flipped as its EXIF orientation says."""
    if not path.exists():
        raise MediaError(f"image '{path}' does not exist; check the path")
    if path.is_dir():
        raise MediaError(f"image '{path}' is a directory; give the path of an image file")
    return _load_upright(path, str(path))


def _load_upright(source: Union[Path, io.BytesIO], name: str) -> Image.Image:
    """Decode a file or in-memory image with Pillow, EXIF orientation applied; MediaError naming ``name``."""
    try:
        with warnings.catch_warnings():  # Pillow warns of large pictures: our own limit is checked just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(source)  # reads the header only
        with opened:
            check_pixel_count(*opened.size, f"image '{name}'")
            opened.load()
            return ImageOps.exif_transpose(opened)
    except MediaError:
        raise
    except Image.DecompressionBombError:  # Pillow's own, larger limit, hit while reading the header
        raise PixelLimitError(f"image '{name}'", None, pixel_limit()) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        reason = first_line(error)
        raise MediaError(
            f"image '{name}' could not be read ({reason}); use a valid PNG, JPEG, BMP or WebP file"
        ) from error


def _composite(rgba: Image.Image, background: RGB) -> Image.Image:
    """Alpha-composite an RGBA image over an opaque background colour; returns RGB."""
    base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
    return Image.alpha_composite(base, rgba).convert("RGB")
