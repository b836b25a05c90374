"""An evaluation's scores kept only at its labelled (image, class) entries.

A split whose labels are mostly unknown (Open Images: 125,436 test images x 9,605 classes, a few
human-verified labels per image) is scored by Google's rule: each class's AP is computed over the
images that carry an explicit positive or negative label for it, and only classes with a labelled
positive count. Only those entries are needed, so evaluation memory grows with the labels, not with
N x C (the dense float32 score matrix alone would be 4.8 GB).

:class:`LabelledScores` holds them class by class (CSC: class ``k``'s entries are
``[indptr[k], indptr[k + 1])``, in image order), which is the order the dense masked computation
visits them in, so every figure computed from it (AP, the thresholded metrics, calibrated thresholds,
the report's curves) equals the dense one bit for bit. :class:`ScoreCollector` fills it batch by
batch during an evaluation and keeps the dense (N, C) arrays as well while N x C is at most
``DENSE_LIMIT``, so ``validate.py --output`` can still write ``scores.npy`` / ``targets.npy`` there.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["LabelledScores", "ScoreCollector", "LABELLED_FILE", "DENSE_LIMIT"]

# Past this many (image, class) entries no dense matrix is made (10^8 float32: 400 MB): not for the
# labels (asl.data.labels), not for an evaluation's scores.
DENSE_LIMIT = 10**8

# validate.py --output's file for a split too large for scores.npy / targets.npy.
LABELLED_FILE = "labelled_scores.npz"
_FIELDS = ("indptr", "rows", "scores", "positive")


@dataclass
class LabelledScores:
    """Scores and labels at the labelled entries of an (N, C) evaluation, class-major.

    Attributes:
        num_images: N.
        indptr: (C + 1,) int64; class ``k``'s entries are ``indptr[k]:indptr[k + 1]``.
        rows: (E,) int32 image index of each entry, increasing within a class.
        scores: (E,) float32 scores.
        positive: (E,) bool, the label (True: positive, False: a verified negative).
    """

    num_images: int
    indptr: np.ndarray
    rows: np.ndarray
    scores: np.ndarray
    positive: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.indptr) - 1

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def complete(self) -> bool:
        """True when every (image, class) entry is labelled (no unknown label)."""
        return len(self.rows) == self.num_images * self.num_classes

    @classmethod
    def from_entries(cls, num_images: int, num_classes: int, rows, cols, scores, positive) -> "LabelledScores":
        """From entries in image-major order (each image's entries together, images in order): a
        stable sort by class keeps each class's entries in image order.

        Args:
            rows, cols: (E,) image and class index of each entry.
            scores: (E,) scores.
            positive: (E,) bool labels.
        """
        cols = np.asarray(cols)
        order = np.argsort(cols, kind="stable")
        indptr = np.zeros(num_classes + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=num_classes), out=indptr[1:])
        return cls(
            int(num_images),
            indptr,
            np.asarray(rows, dtype=np.int32)[order],
            np.asarray(scores)[order],
            np.asarray(positive, dtype=bool)[order],
        )

    @classmethod
    def from_dense(cls, targets: np.ndarray, scores: np.ndarray, ignore_index: Optional[float] = -1):
        """The labelled entries of dense (N, C) targets and scores (``ignore_index``: unknown)."""
        targets, scores = np.asarray(targets), np.asarray(scores)
        n, c = targets.shape
        known = targets != ignore_index if ignore_index is not None else np.ones(targets.shape, dtype=bool)
        # Transposed: nonzero walks class by class, each class's images in order (the CSC order).
        cols, rows = np.nonzero(known.T)
        indptr = np.zeros(c + 1, dtype=np.int64)
        np.cumsum(known.sum(0), out=indptr[1:])
        return cls(n, indptr, rows.astype(np.int32), scores[rows, cols], targets[rows, cols] == 1)

    def segment(self, k: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class ``k``'s (image rows, scores, labels), in image order."""
        a, b = self.indptr[k], self.indptr[k + 1]
        return self.rows[a:b], self.scores[a:b], self.positive[a:b]

    @property
    def cols(self) -> np.ndarray:
        """(E,) class index of each entry."""
        return np.repeat(np.arange(self.num_classes, dtype=np.int32), np.diff(self.indptr))

    def positives(self) -> np.ndarray:
        """(C,) labelled positives per class."""
        return np.bincount(self.cols[self.positive], minlength=self.num_classes)

    def per_class(self, fn: Callable[[np.ndarray, np.ndarray], object], threads: bool = True) -> List:
        """``fn(scores, positive)`` for each class, classes spread over threads (numpy's sorts
        release the GIL)."""
        c = self.num_classes
        workers = min(os.cpu_count() or 1, 8, max(c, 1))

        def one(k: int):
            a, b = self.indptr[k], self.indptr[k + 1]
            return fn(self.scores[a:b], self.positive[a:b])

        if threads and workers > 1 and len(self) >= 200_000:
            with ThreadPoolExecutor(workers) as ex:
                return list(ex.map(one, range(c)))
        return [one(k) for k in range(c)]

    def row_major(self) -> np.ndarray:
        """The entries' permutation into image-major order (by image, then class)."""
        return np.lexsort((self.cols, self.rows))

    def dense(self) -> Tuple[np.ndarray, np.ndarray]:
        """(targets, scores), (N, C) float32 with -1 / NaN at the unknown entries (small sets only)."""
        n, c = self.num_images, self.num_classes
        if n * c > DENSE_LIMIT:
            raise ValueError(f"{n} x {c} entries are too many for a dense matrix")
        targets = np.full((n, c), -1.0, dtype=np.float32)
        scores = np.full((n, c), np.nan, dtype=np.float32)
        cols = self.cols
        targets[self.rows, cols] = self.positive
        scores[self.rows, cols] = self.scores
        return targets, scores

    def save(self, path, writer: Callable) -> None:
        """Written through ``writer`` (``asl.files.atomic_write``) as an ``.npz`` of the four arrays
        and ``num_images``."""
        arrays = {f: getattr(self, f) for f in _FIELDS}
        writer(path, writer=lambda f: np.savez(f, num_images=np.int64(self.num_images), **arrays))

    @classmethod
    def load(cls, path) -> "LabelledScores":
        """Read what :meth:`save` wrote (no pickle)."""
        with np.load(path, allow_pickle=False) as z:
            missing = [f for f in (*_FIELDS, "num_images") if f not in z.files]
            if missing:
                raise ValueError(f"{path}: not a labelled-scores file (no {', '.join(missing)})")
            out = cls(int(z["num_images"]), *(z[f] for f in _FIELDS))
        if out.indptr[-1] != len(out.rows) or not (len(out.rows) == len(out.scores) == len(out.positive)):
            raise ValueError(f"{path}: its arrays disagree in length")
        return out


class ScoreCollector:
    """An evaluation's scores, batch by batch: the labelled entries, or the dense (N, C) scores and
    targets while N x C is at most ``dense_limit`` (the labelled entries are then taken from them).
    Also the per-class mean score over every image (the class prior of CSL's ``ComputePrior``) and
    which classes scored NaN or inf.

    Under DDP each rank collects its shard (row ``i`` of rank ``r`` is image ``i * world_size + r``;
    the sampler's padding past N is left out) and :func:`asl.distributed.gather_scores` merges them.

    Args:
        num_images: N, the whole split's size.
        num_classes: C.
        dense_limit: the most N x C entries kept dense (None: ``DENSE_LIMIT``).
        rank, world_size: this process's shard.
    """

    def __init__(
        self,
        num_images: int,
        num_classes: Optional[int] = None,
        dense_limit: Optional[int] = None,
        rank: int = 0,
        world_size: int = 1,
        single_label: bool = False,
    ):
        self.single_label = single_label
        # single-label: (rows, each image's class, its top-5 classes, their scores)
        self._top: List[Tuple[np.ndarray, ...]] = []
        self.num_images = num_images
        self.dense_limit = DENSE_LIMIT if dense_limit is None else dense_limit
        self.rank, self.world_size = rank, world_size
        self._scores: Optional[np.ndarray] = None  # (rows, C), kept dense; the first `_filled` rows are set
        self._targets: Optional[np.ndarray] = None
        self._filled = 0
        self._entries: List[Tuple[np.ndarray, ...]] = []
        self.seen = 0
        self._start(num_classes or 0)

    @classmethod
    def for_dataset(cls, dataset, **kwargs) -> "ScoreCollector":
        """A collector sized for ``dataset``: the whole split's N (shards: ``num_samples``, as their
        ``len`` is this rank's share) and its class count where it names its classes."""
        n = getattr(dataset, "num_samples", None) or len(dataset)
        return cls(n, len(getattr(dataset, "class_names", ())) or None, **kwargs)

    def _start(self, num_classes: int) -> None:
        """Sized for C classes (told, or read off the first batch)."""
        self.num_classes = num_classes
        self.keep_dense = self.num_images * num_classes <= self.dense_limit
        self.score_sum = np.zeros(num_classes, dtype=np.float64)
        self.score_count = np.zeros(num_classes, dtype=np.int64)
        self.nonfinite = np.zeros(num_classes, dtype=bool)

    def add(self, scores: np.ndarray, targets: np.ndarray) -> None:
        """One batch: (B, C) scores and (B, C) targets (1 / 0 / -1)."""
        if not self.seen and scores.shape[1] != self.num_classes:
            self._start(scores.shape[1])
        image = (self.seen + np.arange(len(scores), dtype=np.int64)) * self.world_size + self.rank
        self.seen += len(scores)
        if self.keep_dense:  # padding is dropped when the ranks' rows are gathered
            self._keep(scores, targets)
        keep = image < self.num_images
        if not keep.all():
            image, scores, targets = image[keep], scores[keep], targets[keep]
        self.nonfinite |= ~np.isfinite(scores).all(0)
        if self.single_label:  # the class of each image and the five top-scored: what its metrics read
            k = min(5, scores.shape[1])
            top = np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=1, kind="stable")[:, :k]
            truth = np.where(targets.max(1) == 1, targets.argmax(1), -1)
            top_p = np.take_along_axis(scores, top, axis=1).astype(np.float32)
            self._top.append((image.astype(np.int64), truth.astype(np.int64), top.astype(np.int32), top_p))
        notnan = ~np.isnan(scores)
        self.score_sum += np.where(notnan, scores, 0).sum(0, dtype=np.float64)
        self.score_count += notnan.sum(0)
        if not self.keep_dense and not self.single_label:
            rows, cols = np.nonzero(targets != -1)
            picked = (scores[rows, cols], targets[rows, cols] == 1)
            self._entries.append((image[rows].astype(np.int32), cols.astype(np.int32), *picked))

    def _keep(self, scores: np.ndarray, targets: np.ndarray) -> None:
        """Rows into (N / world_size, C) arrays made once, so no (N, C) concatenation doubles them."""
        a, b = self.seen - len(scores), self.seen
        if self._scores is None or b > len(self._scores):  # the first batch, or more rows than the split
            rows = max(-(-self.num_images // self.world_size), b)
            grown = [np.empty((rows, self.num_classes), np.float32) for _ in range(2)]
            for new, old in zip(grown, (self._scores, self._targets)):
                if old is not None:
                    new[:a] = old[:a]
            self._scores, self._targets = grown
        self._scores[a:b] = scores
        self._targets[a:b] = targets
        self._filled = b

    def dense(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """This process's (N, C) scores and targets, or (None, None) past the dense limit."""
        if not self.keep_dense:
            return None, None
        if self._scores is None:
            return np.zeros((0, self.num_classes), np.float32), np.zeros((0, self.num_classes), np.float32)
        return self._scores[: self._filled], self._targets[: self._filled]

    def entries(self) -> Tuple[np.ndarray, ...]:
        """(rows, cols, scores, positive) of the collected labelled entries, image-major."""
        if not self._entries:
            return (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, bool))
        return tuple(np.concatenate(parts) for parts in zip(*self._entries))

    def top(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Single-label, in image order: (N,) each image's class (-1: none), (N, k) its top-scored
        classes (k = 5, or C when fewer) and (N, k) their scores."""
        if not self._top:
            k = min(5, self.num_classes)
            return np.zeros(0, np.int64), np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
        rows, truth, top, top_p = (np.concatenate(p) for p in zip(*self._top))
        order = np.argsort(rows, kind="stable")
        return truth[order], top[order], top_p[order]

    def shared_state(self) -> Dict[str, object]:
        """What another rank needs to merge this one's (:meth:`absorb`), the dense rows aside."""
        entries = self.entries()
        state = {"sum": self.score_sum, "count": self.score_count, "nonfinite": self.nonfinite, "entries": entries}
        if self.single_label:
            state["top"] = [tuple(np.concatenate(p) for p in zip(*self._top))] if self._top else []
        return state

    def absorb(self, states: Sequence[Dict[str, object]], scores=None, targets=None) -> None:
        """Become the merge of every rank's :meth:`shared_state` (and, kept dense, every rank's rows
        already gathered into ``scores`` / ``targets``)."""
        self.score_sum = np.sum([s["sum"] for s in states], axis=0)
        self.score_count = np.sum([s["count"] for s in states], axis=0)
        self.nonfinite = np.any([s["nonfinite"] for s in states], axis=0)
        if self.single_label:
            self._top = [part for s in states for part in s["top"]]
        if self.keep_dense:
            self._scores, self._targets, self._filled = scores, targets, len(scores)
            return
        rows, cols, sc, pos = (np.concatenate(parts) for parts in zip(*(s["entries"] for s in states)))
        order = np.lexsort((cols, rows))
        self._entries = [(rows[order], cols[order], sc[order], pos[order])]

    def reorder(self, place: np.ndarray) -> None:
        """Put the (gathered) rows in another order: row ``q`` goes to ``place[q]`` (``place``: a
        permutation of the N images)."""
        if self.single_label and self._top:
            rows, *rest = (np.concatenate(p) for p in zip(*self._top))
            self._top = [(place[rows], *rest)]
        if self.keep_dense:
            scores, targets = self.dense()
            n = len(place)
            new_s, new_t = np.empty_like(scores[:n]), np.empty_like(targets[:n])
            new_s[place], new_t[place] = scores[:n], targets[:n]
            self._scores, self._targets, self._filled = new_s, new_t, n
            return
        rows, cols, sc, pos = self.entries()
        rows = place[rows].astype(np.int32)
        order = np.lexsort((cols, rows))
        self._entries = [(rows[order], cols[order], sc[order], pos[order])]

    def labelled(self) -> LabelledScores:
        """The finished evaluation's :class:`LabelledScores`."""
        if self.keep_dense:
            scores, targets = self.dense()
            return LabelledScores.from_dense(targets, scores)
        return LabelledScores.from_entries(self.num_images, self.num_classes, *self.entries())

    def class_mean(self) -> np.ndarray:
        """(C,) mean score of each class over every image (NaN scores left out)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.score_sum / self.score_count
