"""The dataset every loader builds: image paths, a precomputed label matrix, class names."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

log = logging.getLogger(__name__)


class MultiLabelDataset(torch.utils.data.Dataset):
    """Images with multi-hot targets; labels are a precomputed (N, C) matrix.

    An image that cannot be read (missing, truncated, corrupt) is skipped: it is logged
    once with its path, counted in ``bad_images``, and the next readable sample is
    returned in its place, so an epoch goes on. More than ``max_bad_fraction`` of bad
    images stops with a :class:`DataError`.

    Args:
        paths: image paths, one per sample.
        targets: (N, C) float32, 1 positive, 0 negative, -1 unknown.
        class_names: C names.
        transform: PIL image -> tensor.
        name: for messages (dataset and split).
        max_bad_fraction: fraction of unreadable images that is tolerated.

    Yields:
        ``(image, target)``: transformed image, float32 (C,) target.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: np.ndarray,
        class_names: Sequence[str],
        transform: Optional[Callable] = None,
        name: str = "dataset",
        max_bad_fraction: float = 0.01,
    ):
        targets = np.asarray(targets, dtype=np.float32)
        if targets.ndim != 2 or targets.shape[0] != len(paths) or targets.shape[1] != len(class_names):
            raise ValueError("targets must be (len(paths), len(class_names))")
        self.paths: List[str] = [str(p) for p in paths]
        self.targets = targets
        self.class_names = list(class_names)
        self.transform = transform
        self.name = name
        self.max_bad_fraction = max_bad_fraction
        # Training only: let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding when the
        # image is that much larger than the network input (it never goes below draft_size).
        # Evaluation keeps the full decode of the official validate.py.
        self.draft_size: Optional[int] = None
        # One flag per sample in shared memory: DataLoader workers (forked or spawned) mark
        # the same table, so the main process can count them and each path is logged once.
        self._bad = torch.zeros(len(self.paths), dtype=torch.uint8).share_memory_()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as img:
            if self.draft_size:
                img.draft("RGB", (self.draft_size, self.draft_size))
            return img.convert("RGB")

    def __getitem__(self, index: int):
        n = len(self.paths)
        for attempt in range(n):
            i = (index + attempt) % n
            try:
                img = self.load_image(i)
            except (OSError, UnidentifiedImageError, ValueError) as e:
                self._record_bad(i, e)
                continue
            if self.transform is not None:
                img = self.transform(img)
            return img, torch.from_numpy(self.targets[i])
        raise DataError(f"{self.name}: no readable image at all")

    @property
    def bad_images(self) -> List[str]:
        """Paths found unreadable so far, by any process."""
        return [self.paths[i] for i in torch.nonzero(self._bad).flatten().tolist()]

    @property
    def bad_count(self) -> int:
        return int(self._bad.sum())

    def _record_bad(self, i: int, e: Exception) -> None:
        path = self.paths[i]
        if not self._bad[i]:
            self._bad[i] = 1
            log.warning("skipping unreadable image %s (%s)", path, type(e).__name__)
        count = self.bad_count
        if count > self.max_bad_fraction * len(self.paths):
            raise DataError(
                f"{self.name}: {count} of {len(self.paths)} images are unreadable "
                f"(more than {self.max_bad_fraction:.1%}); last: {path}")

    def summary(self) -> str:
        """One paragraph: images, classes, label cardinality, rarest and commonest classes."""
        t = self.targets
        pos = (t == 1).sum(0)
        card = float((t == 1).sum(1).mean()) if len(t) else 0.0
        order = np.argsort(pos, kind="stable")
        rare = ", ".join(f"{self.class_names[k]} ({int(pos[k])})" for k in order[:3])
        common = ", ".join(f"{self.class_names[k]} ({int(pos[k])})" for k in order[::-1][:3])
        unknown = int((t == -1).sum())
        return (f"{self.name}: {len(self)} images, {self.num_classes} classes, "
                f"{card:.2f} labels/image ({100 * card / max(self.num_classes, 1):.1f}% positive)"
                + (f", {unknown} unknown labels" if unknown else "")
                + f"; rarest: {rare}; most common: {common}")


def multi_hot(tag_lists: Sequence[Sequence[str]], class_names: Sequence[str]) -> np.ndarray:
    """(N, C) float32 targets, 1 where a sample's tag list names the class."""
    index = {c: k for k, c in enumerate(class_names)}
    targets = np.zeros((len(tag_lists), len(class_names)), dtype=np.float32)
    for i, tags in enumerate(tag_lists):
        for t in tags:
            targets[i, index[t]] = 1.0
    return targets


def check_exists(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    return path
