"""The ImageFolder layout of torchvision and timm: one folder per class, one class per picture.

    DATA/train/<class>/<picture>      the training split
    DATA/val/<class>/<picture>        the evaluation split (``validation/`` too); ``test/`` when there

The classes are the training split's folder names, sorted (torchvision's order); a picture is
labelled by its folder. Labels are held sparse (its class per picture, every other class a negative),
so a set of a million pictures and tens of thousands of classes (Herbarium 2020) needs no (N, C)
matrix. A class folder with no picture, a folder inside a class folder (deeper than the layout), a
class of another split that the training split lacks, and a split with no class folder are errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional

from ..errors import DataError
from ..images import IMAGE_EXTENSIONS
from .base import DEFAULT_READ, MultiLabelDataset, ReadOptions
from .labels import SparseLabels

__all__ = ["create_classfolder", "is_classfolder", "SPLIT_FOLDERS"]

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


def _split_folder(root: Path, split: str) -> Optional[Path]:
    return next((root / n for n in SPLIT_FOLDERS.get(split, (split,)) if (root / n).is_dir()), None)


def _pictures(folder: Path) -> List[str]:
    return sorted(
        e.name
        for e in os.scandir(folder)
        if e.is_file() and not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS
    )


def is_classfolder(root: Path) -> bool:
    """A ``train/`` whose entries are folders of pictures (what ``--dataset auto`` tells it by)."""
    train = root / "train"
    if not train.is_dir():
        return False
    entries = [e for e in os.scandir(train) if not e.name.startswith(".")]
    folders = [e for e in entries if e.is_dir()]
    return bool(folders) and len(folders) == len(entries) and any(_pictures(Path(f.path)) for f in folders[:20])


def _class_names(root: Path) -> List[str]:
    train = _split_folder(root, "train")
    if train is None:
        raise DataError(f"{root}: no train/ folder of class folders")
    names = sorted(e.name for e in os.scandir(train) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(f"{train}: no class folder (the layout is train/<class>/<picture>)")
    return names


def create_classfolder(
    root: str,
    split: str = "train",
    transform: Optional[Callable] = None,
    read: ReadOptions = DEFAULT_READ,
) -> MultiLabelDataset:
    """One split of an ImageFolder layout (module docstring)."""
    root_p = Path(root)
    classes = _class_names(root_p)
    folder = _split_folder(root_p, split)
    if folder is None:
        raise DataError(f"{root}: no {' or '.join(SPLIT_FOLDERS.get(split, (split,)))}/ folder")
    index = {c: k for k, c in enumerate(classes)}
    paths: List[str] = []
    klass: List[int] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            raise DataError(f"{entry.path}: a file where the layout has class folders ({folder}/<class>/<picture>)")
        if entry.name not in index:
            raise DataError(f"{entry.path}: class {entry.name!r} is not a class of the training split")
        nested = next((e.path for e in os.scandir(entry.path) if e.is_dir() and not e.name.startswith(".")), None)
        if nested:
            raise DataError(f"{nested}: a folder inside a class folder (the layout is {folder.name}/<class>/<picture>)")
        pictures = _pictures(Path(entry.path))
        if not pictures:
            raise DataError(f"{entry.path}: a class folder with no picture")
        paths += [os.path.join(entry.path, p) for p in pictures]
        klass += [index[entry.name]] * len(pictures)
    if not paths:
        raise DataError(f"{folder}: no class folder")
    labels = SparseLabels.one_per_image(klass, len(classes))
    return MultiLabelDataset(paths, labels, classes, transform, name=f"classfolder {root} [{split}]", read=read)
