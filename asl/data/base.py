"""The dataset every loader builds: image paths, a precomputed label matrix, class names."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..classes import check_class_names
from ..errors import DataError
from ..images import load_rgb
from .labels import Labels, as_labels

log = logging.getLogger(__name__)


def _first(paths, k: int = 3) -> str:
    paths = list(paths)
    return ", ".join(paths[:k]) + (f" (+{len(paths) - k} more)" if len(paths) > k else "")


class IdPaths(Sequence[str]):
    """The pictures of a large set as ``folder/<id><suffix>``, built when asked: the ids are one
    compact array (``S``-dtype bytes), not millions of Python strings."""

    def __init__(self, folder: Union[str, os.PathLike], ids: np.ndarray, suffix: str = ".jpg"):
        self.folder, self.ids, self.suffix = str(folder), ids, suffix

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        v = self.ids[i]
        name = f"{int(v):016x}" if self.ids.dtype == np.uint64 else v.decode("ascii")
        return os.path.join(self.folder, name + self.suffix)


@dataclass(frozen=True)
class ReadOptions:
    """How a dataset reads its pictures, the arguments every dataset factory shares.

    Attributes:
        max_bad_fraction: fraction of unreadable images that is tolerated ...
        max_bad_images: ... or this many, whichever is more (a small set survives a bad photo).
        draft_size: training only: let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding
            when the image is that much larger than the network input (never below this side);
            None decodes in full, as the official validate.py does.
    """

    max_bad_fraction: float = 0.01
    max_bad_images: int = 5
    draft_size: Optional[int] = None


DEFAULT_READ = ReadOptions()  # the defaults (immutable: one instance serves every signature)


class MultiLabelDataset(torch.utils.data.Dataset):
    """Images with multi-hot targets; labels are a precomputed (N, C) matrix.

    An image that cannot be read (missing, truncated, corrupt, a decompression bomb) is
    skipped: it is logged once with its path, counted in ``bad_images``, and the next readable
    sample is returned in its place, so an epoch goes on. Missing files are found when the
    dataset is built (a stat per path) and listed then. More than
    ``max(max_bad_images, max_bad_fraction x N)`` bad images stops with a :class:`DataError`.
    A path listed twice is reported (a duplicate row weighs its image twice).

    Args:
        paths: image paths, one per sample (a list, or :class:`IdPaths` for a large set: its files
            are found missing when they are read, not stat-ed at start).
        targets: (N, C) float32, 1 positive, 0 negative, -1 unknown, or the labels of a large set
            (:class:`asl.data.labels.SparseLabels`: no (N, C) matrix is made).
        class_names: C names.
        transform: PIL image -> tensor.
        name: for messages (dataset and split).
        read: unreadable images tolerated, training's JPEG draft decode (:class:`ReadOptions`).

    Yields:
        ``(image, target)``: transformed image, float32 (C,) target.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Union[np.ndarray, Labels],
        class_names: Sequence[str],
        transform: Optional[Callable] = None,
        name: str = "dataset",
        read: ReadOptions = DEFAULT_READ,
    ):
        labels = as_labels(targets)
        if len(labels) != len(paths) or labels.num_classes != len(class_names):
            raise ValueError("targets must be (len(paths), len(class_names))")
        check_class_names(list(class_names), f"{name}: class names", error=DataError)  # one rule, every dataset
        lazy = isinstance(paths, IdPaths)
        self.paths: Sequence[str] = paths if lazy else [str(p) for p in paths]
        self.labels = labels
        self.class_names = list(class_names)
        # other names a class answers to (Open Images: its MID, its plain display name)
        self.class_aliases: Dict[str, List[str]] = {}
        self.transform = transform
        self.name = name
        self.max_bad_fraction = read.max_bad_fraction
        self.tolerated = max(int(read.max_bad_images), int(read.max_bad_fraction * len(self.paths)))
        self.draft_size = read.draft_size
        # One flag per sample in shared memory: DataLoader workers (forked or spawned) mark
        # the same table, so the main process can count them and each path is logged once.
        self._bad = torch.zeros(len(self.paths), dtype=torch.uint8).share_memory_()
        if not lazy:  # a large set's missing pictures are found when read (the same bad-image rules)
            self._check_files(name)

    def _check_files(self, name: str) -> None:
        missing = [i for i, p in enumerate(self.paths) if not os.path.isfile(p)]
        if missing:
            self._bad[missing] = 1
            log.warning(
                "%s: %d of %d images are missing and will be skipped: %s",
                name,
                len(missing),
                len(self.paths),
                _first(self.paths[i] for i in missing),
            )
            self._check_limit(self.paths[missing[-1]])
        counts = Counter(self.paths)
        if len(counts) < len(self.paths):
            log.warning(
                "%s: %d rows repeat an image listed before (it weighs twice): %s",
                name,
                len(self.paths) - len(counts),
                _first(p for p, k in counts.items() if k > 1),
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def targets(self) -> np.ndarray:
        """The (N, C) label matrix (a sparse set makes it only when small: ``asl.data.labels.DENSE_LIMIT``)."""
        return self.labels.dense()

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int) -> Image.Image:
        """The picture of sample ``index`` as a viewer shows it (:func:`asl.images.load_rgb`)."""
        return load_rgb(self.paths[index], self.draft_size)

    def __getitem__(self, index: int):
        n = len(self.paths)
        for attempt in range(n):
            i = (index + attempt) % n
            if self._bad[i]:  # known bad (missing, or failed before): no second try
                continue
            try:
                img = self.load_image(i)
            except DataError as e:
                self._record_bad(i, e)
                continue
            if self.transform is not None:
                img = self.transform(img)
            return img, torch.from_numpy(self.labels.row(i))
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
            log.warning("skipping unreadable image %s (%s)", path, str(e).rsplit("(", 1)[-1].rstrip(")"))
        self._check_limit(path)

    def _check_limit(self, last: str) -> None:
        count = self.bad_count
        if count > self.tolerated:
            raise DataError(
                f"{self.name}: {count} of {len(self.paths)} images are missing or unreadable (more than "
                f"{self.tolerated}: --max-bad-images / --max-bad-fraction raise the limit); last: {last}"
            )

    def summary(self) -> str:
        """One paragraph: images, classes, label cardinality, rarest and commonest classes."""
        pos = self.labels.positives()
        per_image = self.labels.positives_per_image()
        card = float(per_image.mean()) if len(per_image) else 0.0
        order = np.argsort(pos, kind="stable")
        rare = ", ".join(f"{self.class_names[k]} ({int(pos[k])})" for k in order[:3])
        common = ", ".join(f"{self.class_names[k]} ({int(pos[k])})" for k in order[::-1][:3])
        unknown = self.labels.unknown()
        return (
            f"{self.name}: {len(self)} images, {self.num_classes} classes, "
            f"{card:.2f} labels/image ({100 * card / max(self.num_classes, 1):.1f}% positive)"
            + (f", {unknown} unknown labels" if unknown else "")
            + f"; rarest: {rare}; most common: {common}"
        )


# Below this many images a validation mAP moves by whole points from one image to the next.
SMALL_EVAL_SET = 50


def split_warnings(train: Optional[MultiLabelDataset], evaluation: MultiLabelDataset) -> List[str]:
    """What a user should know before trusting the validation mAP: images that are in both
    splits (a leak: the score is optimistic) and an evaluation split too small to rank models."""
    out = []
    if train is not None and not isinstance(train.paths, IdPaths) and not isinstance(evaluation.paths, IdPaths):
        both = sorted(set(map(os.path.realpath, train.paths)) & set(map(os.path.realpath, evaluation.paths)))
        if both:
            out.append(
                f"{len(both)} images are in both the training and the evaluation split, so the validation "
                f"mAP is optimistic: {_first(both)}"
            )
    empty = [n for n, k in zip(evaluation.class_names, evaluation.labels.positives()) if k == 0]
    if empty:
        out.append(
            f"{len(empty)} of {evaluation.num_classes} classes have no positive in {evaluation.name} "
            f"({_first(empty)}): the official mAP counts each as AP 0"
        )
    if len(evaluation) < SMALL_EVAL_SET:
        out.append(
            f"{evaluation.name} has only {len(evaluation)} images: its mAP is noisy (one image can move it "
            f"by points); hold out more images to compare runs"
        )
    return out


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


def check_file(path: Path, what: str) -> Path:
    """``path`` exists and is a file (not a folder): else one :class:`DataError` line."""
    check_exists(path, what)
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder, not a file")
    return path


def read_text(path: Path, what: str) -> str:
    """A dataset's text file (UTF-8, a byte-order mark accepted), or one :class:`DataError` line."""
    check_file(path, what)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file (save it as UTF-8)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None


def find_by_stem(paths: Sequence[str], base: Path, source) -> List[str]:
    """Names listed without an extension (Planet's ``train_0``, a Kaggle CSV's ``Train_0`` for
    ``images/Train_0.jpg``) found by their stem among the pictures under ``base``; other paths are
    kept as listed.

    Raises:
        DataError: a stem that two pictures share (ambiguous, not missing).
    """
    bare = [p for p in paths if not Path(p).suffix and not os.path.exists(p)]
    if not bare:
        return list(paths)
    from ..images import iter_pictures

    by_stem: dict = {}
    for f in iter_pictures(base):
        by_stem.setdefault(f.stem, []).append(str(f))
    found = {}
    for p in bare:
        hits = by_stem.get(Path(p).name, [])
        if len(hits) > 1:
            raise DataError(
                f"{source}: {Path(p).name!r} names {len(hits)} pictures ({hits[0]}, {hits[1]}): ambiguous; "
                f"name each with its extension and folder"
            )
        if hits:
            found[p] = hits[0]
    return [found.get(p, p) for p in paths]


def split_rows(
    splits: Sequence[Optional[str]], split: str, val_fraction: float, seed: int, source, holds: str
) -> Tuple[List[int], bool]:
    """The rows of ``split``: by the labels' own splits, or (none given) a seeded random hold-out
    of ``val_fraction`` for ``val``. Returns (rows, whether the labels had splits).

    Args:
        splits: per row, its split name or None.
        source, holds: for the error of a ``test`` split asked of labels without splits
            (``labels.csv has no split column``).
    """
    has_split = any(s is not None for s in splits)
    if has_split:
        return [i for i, s in enumerate(splits) if s == split], True
    if split == "test":
        raise DataError(f"{source}: has no {holds}, so no 'test' split")
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(splits), dtype=bool)
    is_val[rng.permutation(len(splits))[: int(round(val_fraction * len(splits)))]] = True
    return [i for i, v in enumerate(is_val) if v == (split == "val")], False
