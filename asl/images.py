"""Reading pictures, without PyTorch: shared by the datasets, infer.py and the ONNX runtime path."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import DataError

__all__ = ["UNREADABLE", "load_rgb"]

# What opening an image can raise when the file is not a readable image: PIL's errors, and its
# guard against decompression bombs (a small file declaring billions of pixels).
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def load_rgb(path: Path) -> Image.Image:
    """The picture at ``path`` as RGB; one :class:`DataError` line when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except UNREADABLE as e:
        raise DataError(f"cannot read image {path} ({type(e).__name__})") from None
