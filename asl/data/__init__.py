"""Dataset registry: ``create_dataset(name, root, split, transform)``.

Every dataset yields ``(image, target)`` with ``target`` float32 (C,) in {0, 1}
or -1 (unknown) and exposes ``class_names``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

from ..errors import DataError
from .base import MultiLabelDataset
from .coco import create_coco
from .demo import create_demo
from .nuswide import create_nuswide
from .tagged import create_tagged
from .transforms import build_transform
from .voc import create_voc

__all__ = ["create_dataset", "DATASETS", "MultiLabelDataset", "build_transform", "default_splits"]

# name -> (factory, training split, evaluation split)
DATASETS: Dict[str, tuple] = {
    "coco": (create_coco, "train", "val"),  # train2014 / val2014, or the 2017 pair when only it exists
    "voc": (create_voc, "trainval", "test"),
    "nuswide": (create_nuswide, "train", "val"),
    "tagged": (create_tagged, "train", "val"),
    "demo": (create_demo, "train", "val"),
}


def default_splits(name: str):
    """(training split, evaluation split) of a dataset, as train.py and validate.py use them."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name][1], DATASETS[name][2]


def create_dataset(name: str, root: str, split: str, transform: Optional[Callable] = None,
                   **kwargs) -> MultiLabelDataset:
    """Build a dataset split by name.

    Args:
        name: a key of ``DATASETS``.
        root: the dataset's folder (or file, for a tagged CSV).
        split: split name (``train``, ``val``, ...).
        transform: PIL image -> tensor.
        **kwargs: loader options (``val_fraction``, ``seed``, ``max_bad_fraction``, ...).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name][0](root, split=split, transform=transform, **kwargs)
