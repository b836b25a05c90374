"""A dataset's labels, dense or sparse, behind one interface.

``DenseLabels`` holds the (N, C) float32 matrix of a set whose N x C is small (COCO, VOC, the label
formats). ``SparseLabels`` holds, per image, its positive and its annotated-negative class indices
(CSR arrays, int32) and what an unlisted class is: unknown (-1, Open Images' rule) or negative (0).
A (C,) target row is built when an item is read; the counts a summary, a split check or ``inspect``
need come from the indices, so nothing holds an (N, C) matrix for a sparse set. At Open Images'
training size (about 9 million images, 6 to 7 labels each) the indices take a few hundred MB where
the dense matrix would take over 300 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from ..labelled import DENSE_LIMIT

__all__ = ["DenseLabels", "SparseLabels", "as_labels", "DENSE_LIMIT"]


class DenseLabels:
    """The (N, C) float32 matrix of 1 / 0 / -1 labels (small sets)."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = np.asarray(matrix, dtype=np.float32)
        self.num_classes = self.matrix.shape[1]

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def row(self, i: int) -> np.ndarray:
        return self.matrix[i]

    def positives(self) -> np.ndarray:
        """(C,) positives per class."""
        return (self.matrix == 1).sum(0)

    def labelled(self) -> np.ndarray:
        """(C,) annotated labels (positive or negative) per class."""
        return (self.matrix >= 0).sum(0)

    def positives_per_image(self) -> np.ndarray:
        return (self.matrix == 1).sum(1)

    def unknown(self) -> int:
        return int((self.matrix == -1).sum())

    def take(self, rows: Sequence[int]) -> "DenseLabels":
        return DenseLabels(self.matrix[np.asarray(rows, dtype=np.int64)])

    def dense(self) -> np.ndarray:
        return self.matrix


@dataclass
class SparseLabels:
    """Per image, its positive and annotated-negative class indices (CSR: row ``i``'s positives are
    ``pos_indices[pos_indptr[i]:pos_indptr[i + 1]]``), and the value of every unlisted class.

    Attributes:
        num_classes: C.
        pos_indptr, neg_indptr: (N + 1,) int64 row offsets.
        pos_indices, neg_indices: int32 class indices.
        unlisted: -1 (unknown, Open Images) or 0 (negative).
    """

    num_classes: int
    pos_indptr: np.ndarray
    pos_indices: np.ndarray
    neg_indptr: np.ndarray
    neg_indices: np.ndarray
    unlisted: float = -1.0

    @classmethod
    def from_entries(
        cls,
        n: int,
        num_classes: int,
        image: np.ndarray,
        klass: np.ndarray,
        value: np.ndarray,
        unlisted: float = -1.0,
        presorted: bool = False,
    ) -> "SparseLabels":
        """From (image, class, value) triples, value 1 or 0, each pair at most once (``presorted``:
        already in (image, class) order)."""
        image, klass, value = np.asarray(image, np.int64), np.asarray(klass, np.int32), np.asarray(value)
        if not presorted:
            order = np.lexsort((klass, image))
            image, klass, value = image[order], klass[order], value[order]
        pos, neg = value == 1, value == 0

        def csr(sel):
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.bincount(image[sel], minlength=n), out=indptr[1:])
            return indptr, klass[sel].astype(np.int32)

        (pi, px), (ni, nx) = csr(pos), csr(neg)
        return cls(num_classes, pi, px, ni, nx, float(unlisted))

    @classmethod
    def one_per_image(cls, klass, num_classes: int) -> "SparseLabels":
        """Single-label data: image ``i``'s class is ``klass[i]``, every other class a negative."""
        klass = np.asarray(klass)
        n = len(klass)
        return cls.from_entries(n, num_classes, np.arange(n), klass, np.ones(n, np.int8), unlisted=0.0, presorted=True)

    def __len__(self) -> int:
        return len(self.pos_indptr) - 1

    def row(self, i: int) -> np.ndarray:
        out = np.full(self.num_classes, self.unlisted, dtype=np.float32)
        out[self.neg_indices[self.neg_indptr[i] : self.neg_indptr[i + 1]]] = 0.0
        out[self.pos_indices[self.pos_indptr[i] : self.pos_indptr[i + 1]]] = 1.0
        return out

    def positives(self) -> np.ndarray:
        return np.bincount(self.pos_indices, minlength=self.num_classes)

    def labelled(self) -> np.ndarray:
        both = np.bincount(self.pos_indices, minlength=self.num_classes)
        if self.unlisted == 0:  # every class of every image is labelled
            return np.full(self.num_classes, len(self), dtype=np.int64)
        return both + np.bincount(self.neg_indices, minlength=self.num_classes)

    def positives_per_image(self) -> np.ndarray:
        return np.diff(self.pos_indptr)

    def unknown(self) -> int:
        if self.unlisted != -1:
            return 0
        return len(self) * self.num_classes - len(self.pos_indices) - len(self.neg_indices)

    def take(self, rows: Sequence[int]) -> "SparseLabels":
        rows = np.asarray(rows, dtype=np.int64)

        def pick(indptr, indices):
            starts, ends = indptr[rows], indptr[rows + 1]
            lengths = ends - starts
            new_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum(lengths, out=new_ptr[1:])
            idx = np.repeat(starts - new_ptr[:-1], lengths) + np.arange(new_ptr[-1])
            return new_ptr, indices[idx]

        (pi, px), (ni, nx) = pick(self.pos_indptr, self.pos_indices), pick(self.neg_indptr, self.neg_indices)
        return SparseLabels(self.num_classes, pi, px, ni, nx, self.unlisted)

    def dense(self) -> np.ndarray:
        """The (N, C) matrix, for sets small enough (``DENSE_LIMIT`` entries)."""
        if len(self) * self.num_classes > DENSE_LIMIT:
            raise ValueError(f"{len(self)} x {self.num_classes} labels are too many for a dense matrix")
        out = np.full((len(self), self.num_classes), self.unlisted, dtype=np.float32)
        rows = np.repeat(np.arange(len(self)), np.diff(self.neg_indptr))
        out[rows, self.neg_indices] = 0.0
        rows = np.repeat(np.arange(len(self)), np.diff(self.pos_indptr))
        out[rows, self.pos_indices] = 1.0
        return out

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.pos_indptr, self.pos_indices, self.neg_indptr, self.neg_indices))


Labels = Union[DenseLabels, SparseLabels]


def as_labels(targets) -> Labels:
    """``targets`` as a labels object: a matrix becomes :class:`DenseLabels`."""
    if isinstance(targets, (DenseLabels, SparseLabels)):
        return targets
    return DenseLabels(np.asarray(targets, dtype=np.float32))
