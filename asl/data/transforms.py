"""Train and eval transform presets.

Evaluation is the official preprocessing: squish ``Resize((S, S))`` (bilinear,
antialias), ``ToTensor()``, then mean/std normalization only when the model has
one (TResNet/ASL checkpoints use mean 0, std 1, i.e. none). Training adds the
official augmentations when asked: Cutout (half the image side, random fill, as
the official ``CutoutPIL``) and torchvision's RandAugment.
"""

from __future__ import annotations

import random
from typing import Sequence

from PIL import Image, ImageDraw

__all__ = ["CutoutPIL", "PILResize", "build_transform", "build_infer_transform", "AUGMENTATIONS"]

AUGMENTATIONS = ("none", "cutout", "randaugment", "cutout_randaugment")


class CutoutPIL:
    """Paint one random rectangle of ``cutout_factor`` x the image side with a random colour.

    Args:
        cutout_factor: side of the square hole relative to the image (official: 0.5).
        p: probability of applying it.
    """

    def __init__(self, cutout_factor: float = 0.5, p: float = 1.0):
        self.cutout_factor = cutout_factor
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        img = img.copy()
        w, h = img.size
        hh, ww = int(self.cutout_factor * h + 0.5), int(self.cutout_factor * w + 0.5)
        cy, cx = random.randint(0, h - 1), random.randint(0, w - 1)
        y0, y1 = max(cy - hh // 2, 0), min(cy + hh // 2, h)
        x0, x1 = max(cx - ww // 2, 0), min(cx + ww // 2, w)
        fill = tuple(random.randint(0, 255) for _ in range(3))
        ImageDraw.Draw(img).rectangle([x0, y0, x1, y1], fill=fill)
        return img

    def __repr__(self) -> str:
        return f"CutoutPIL(cutout_factor={self.cutout_factor}, p={self.p})"


class PILResize:
    """``img.resize((S, S))`` with Pillow's default filter (bicubic since Pillow 7), as the
    official infer.py resizes; validate.py's official path is torchvision's bilinear
    ``Resize((S, S))`` instead, and the two differ by up to ~0.15 per pixel."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.resize((self.size, self.size))

    def __repr__(self) -> str:
        return f"PILResize(size={self.size})"


def _to_tensor_ops(mean: Sequence[float], std: Sequence[float]) -> list:
    from torchvision import transforms as T

    ops = [T.ToTensor()]  # uint8 HWC -> float CHW / 255, as the official float() / 255.0
    if any(m != 0.0 for m in mean) or any(s != 1.0 for s in std):
        ops.append(T.Normalize(mean=list(mean), std=list(std)))
    return ops


def build_infer_transform(
    image_size: int, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)
):
    """infer.py's preprocessing, the official infer.py's: PIL RGB image -> PIL ``resize((S, S))``
    -> float tensor (3, S, S) in [0, 1]; normalized only for a model with a mean/std (not TResNet)."""
    from torchvision import transforms as T

    return T.Compose([PILResize(image_size), *_to_tensor_ops(mean, std)])


def build_transform(
    train: bool,
    image_size: int,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    augment: str = "none",
    resize: str = "squish",
):
    """Build a torchvision transform: PIL RGB image -> float tensor (3, S, S).

    Args:
        train: add the training augmentations named by ``augment``.
        image_size: S; images are squish-resized to S x S as in the official code.
        mean, std: normalization; skipped when mean = 0 and std = 1 (ASL checkpoints).
        augment: one of ``none``, ``cutout``, ``randaugment``, ``cutout_randaugment``.
        resize: ``squish`` (the official ``Resize((S, S))``, aspect ratio not kept) or ``crop``
            (``RandomResizedCrop`` for training, ``Resize(S)`` + ``CenterCrop(S)`` for evaluation).
    """
    from torchvision import transforms as T

    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    if resize not in ("squish", "crop"):
        raise ValueError(f"resize must be 'squish' or 'crop', got {resize!r}")
    if resize == "crop":
        ops = (
            [T.RandomResizedCrop(image_size, antialias=True)]
            if train
            else [T.Resize(image_size, antialias=True), T.CenterCrop(image_size)]
        )
    else:
        ops = [T.Resize((image_size, image_size), antialias=True)]
    if train and "cutout" in augment:
        ops.append(CutoutPIL(cutout_factor=0.5))
    if train and "randaugment" in augment:
        ops.append(T.RandAugment())
    return T.Compose(ops + _to_tensor_ops(mean, std))
