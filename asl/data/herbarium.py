"""Herbarium 2020 (FGVC7): ``train/metadata.json``, COCO-style, one category per image.

    DATA/train/metadata.json     {"images": [{"id", "file_name"}], "annotations": [{"image_id",
                                  "category_id"}], "categories": [{"id", "name"}]}
    DATA/train/images/...        the pictures, at the images' ``file_name`` under ``train/``

The competition's test split carries no labels, so ``train`` and ``val`` are a seeded hold-out of
the training images (``--val-fraction``, seed 0: the same for every run). The classes are the
categories in id order, named ``name`` (the species); a name two categories share is told apart by
its id. An image with no annotation or with two is one error naming it. Labels are held sparse (one
class per image), as the set has 32,093 classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from ..errors import DataError
from .base import DEFAULT_READ, MultiLabelDataset, ReadOptions, split_rows
from .labels import SparseLabels

__all__ = ["create_herbarium", "is_herbarium", "METADATA"]

METADATA = Path("train") / "metadata.json"


def is_herbarium(root: Path) -> bool:
    """A ``train/metadata.json`` (what ``--dataset auto`` tells Herbarium 2020 by)."""
    return (root / METADATA).is_file()


def _read(path: Path) -> Dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found (the Herbarium 2020 layout is train/metadata.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a metadata JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(f"{path}: not Herbarium's metadata (lists 'images', 'annotations', 'categories')")
    return data


def create_herbarium(
    root: str,
    split: str = "train",
    transform: Optional[Callable] = None,
    read: ReadOptions = DEFAULT_READ,
    val_fraction: float = 0.2,
) -> MultiLabelDataset:
    """The ``train`` or ``val`` part of Herbarium 2020's labelled images (module docstring)."""
    root_p = Path(root)
    data = _read(root_p / METADATA)
    try:
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        ids = [int(c["id"]) for c in cats]
        names = [str(c.get("name", c["id"])) for c in cats]
        by_id = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        owner: Dict[int, List[int]] = {}
        for a in data["annotations"]:
            owner.setdefault(int(a["image_id"]), []).append(int(a["category_id"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{root_p / METADATA}: an entry without its id / file_name / category ({e})") from None
    seen: Dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    names = [f"{n} ({i})" if seen[n] > 1 else n for n, i in zip(names, ids)]
    index = {c: k for k, c in enumerate(ids)}
    image_ids = sorted(by_id)
    for i in image_ids:
        cats_of = owner.get(i, [])
        if len(cats_of) != 1:
            raise DataError(f"{root_p / METADATA}: image {i} ({by_id[i]}) has {len(cats_of)} categories; one per image")
        if cats_of[0] not in index:
            raise DataError(f"{root_p / METADATA}: image {i} has category {cats_of[0]}, not in 'categories'")
    rows, _ = split_rows([None] * len(image_ids), split, val_fraction, 0, root_p / METADATA, "split")
    klass = np.array([index[owner[image_ids[r]][0]] for r in rows], dtype=np.int32)
    paths = [str(root_p / "train" / by_id[image_ids[r]]) for r in rows]
    labels = SparseLabels.one_per_image(klass, len(ids))
    return MultiLabelDataset(paths, labels, names, transform, name=f"herbarium {root} [{split}]", read=read)
