"""Reading pictures, without PyTorch: the one reader of the datasets, infer.py and the ONNX path.

A picture is read as a viewer shows it: the EXIF orientation applied (a portrait phone photo
stays portrait), 16-bit and 32-bit integer grey scaled to 8 bits instead of clipped (a 16-bit PNG
is not all white), floating-point grey in [0, 1] scaled to [0, 255] (a float TIFF is not black),
then converted to RGB. Only regular files are opened: a FIFO or a device named ``.jpg`` would
block the reader forever.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

__all__ = ["UNREADABLE", "IMAGE_EXTENSIONS", "iter_pictures", "load_rgb", "to_rgb"]

# What decoding can raise when the file is not a readable picture. PIL's plugins raise more
# than OSError on fuzzed input (DDS: NotImplementedError, TGA / ICO: struct.error, IndexError,
# ZeroDivisionError, ...), and its guard against decompression bombs.
UNREADABLE = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    Image.DecompressionBombError,
    NotImplementedError,
    SyntaxError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    EOFError,
    zlib.error,
    OverflowError,
    MemoryError,
)

# File name endings a folder's pictures are found by (infer.py DIR).
IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".dds",
    ".tga",
    ".ico",
}


def iter_pictures(folder: Union[str, os.PathLike]) -> Iterator[Path]:
    """The pictures of ``folder``'s whole tree by their extension (``IMAGE_EXTENSIONS``), sorted
    within each folder: regular files only (a FIFO named .jpg would block the reader forever),
    hidden files and folders (``.git``, a macOS ``._photo.jpg``) passed over."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for n in sorted(filenames):
            f = Path(dirpath) / n
            if not n.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                yield f


def _grey_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grey as 8-bit ``L``, scaled rather than clipped."""
    a = np.asarray(img)
    if img.mode == "F":
        a = a.astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        # float pictures hold [0, 1] by convention (TIFF, EXR exports); larger ones are 0..255
        if a.size and a.max() <= 1.0:
            a = a * 255.0
    else:
        a = a.astype(np.float64)
        if img.mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0  # 0..65535 -> 0..255 (a 32-bit "I" PNG holds 16-bit values)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """An opened picture as a viewer shows it, in RGB (orientation, bit depth, palette, alpha)."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _grey_to_8bit(img)
    return img.convert("RGB")


def load_rgb(path: Union[str, os.PathLike], draft_size: Optional[int] = None) -> Image.Image:
    """The picture at ``path`` as RGB (:func:`to_rgb`); one :class:`DataError` line when it cannot be read.

    Args:
        path: a picture file.
        draft_size: let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding when the
            picture is that much larger (never below this side); None decodes in full.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise DataError(f"cannot read image {path} (not a regular file)")
    except UNREADABLE as e:
        raise DataError(f"cannot read image {path} ({type(e).__name__})") from None
    return _rgb(path, str(path), draft_size)


def decode_rgb(data: bytes, name: str, draft_size: Optional[int] = None) -> Image.Image:
    """A picture's encoded bytes (a tar member) as RGB, decoded as :func:`load_rgb` decodes a file."""
    return _rgb(io.BytesIO(data), name, draft_size)


def _rgb(source, name: str, draft_size: Optional[int]) -> Image.Image:
    try:
        with Image.open(source) as img:
            if draft_size:
                img.draft("RGB", (draft_size, draft_size))
            return to_rgb(img)
    except UNREADABLE as e:
        raise DataError(f"cannot read image {name} ({type(e).__name__})") from None
