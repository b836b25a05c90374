"""What the label formats are read into: one :class:`LabelTable` per dataset, the split folders
(``train/``, ``validation/`` ..., one table over those that hold the format), and the CSV and path
helpers every reader shares. A name that leaves the dataset's folder is refused here, once."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import DataError
from .base import read_text

SPLIT_FOLDERS = {"train": ("train",), "val": ("validation", "valid", "val"), "test": ("test",)}


LABEL_COLUMNS = ("labels", "tags", "label")


@dataclass
class LabelTable:
    """Labels as read from a format, before a split is chosen.

    Attributes:
        source: the file or folder they came from (for messages).
        images: absolute image paths, one per row.
        tags: per row, the positive tag names.
        unknown: per row, the tag names marked unknown (-1), where the format can say so.
        splits: per row, ``train`` / ``val`` / ``test``, or None where the format holds no split.
        classes_file: a ``classes.txt`` that fixes the order, or None.
    """

    source: Path
    images: List[str] = field(default_factory=list)
    tags: List[List[str]] = field(default_factory=list)
    unknown: List[List[str]] = field(default_factory=list)
    splits: List[Optional[str]] = field(default_factory=list)
    classes_file: Optional[Path] = None
    columns: Optional[List[str]] = None  # onehot: the CSV's class columns, in order

    def add(self, image: str, tags: Sequence[str], split: Optional[str], unknown: Sequence[str] = ()) -> None:
        self.images.append(image)
        self.tags.append(list(tags))
        self.unknown.append(list(unknown))
        self.splits.append(split)

    def extend(self, other: "LabelTable") -> None:
        for i in range(len(other.images)):
            self.add(other.images[i], other.tags[i], other.splits[i], other.unknown[i])
        self.classes_file = self.classes_file or other.classes_file
        self.columns = self.columns or other.columns

    def class_names(self) -> List[str]:
        if self.classes_file is not None:
            names = [c.strip() for c in read_text(self.classes_file, "classes file").splitlines() if c.strip()]
            known = set(names)
            for image, tags, unk in zip(self.images, self.tags, self.unknown):
                for t in list(tags) + list(unk):
                    if t not in known:
                        raise DataError(f"{self.source}: tag {t!r} of {image} is not in {self.classes_file}")
            return names
        if self.columns is not None:
            return list(self.columns)
        return sorted({t for tags in self.tags for t in tags} | {t for u in self.unknown for t in u})

    def targets(self, rows: Sequence[int], class_names: Sequence[str]) -> np.ndarray:
        index = {n: k for k, n in enumerate(class_names)}
        out = np.zeros((len(rows), len(class_names)), dtype=np.float32)
        for r, i in enumerate(rows):
            for t in self.unknown[i]:
                out[r, index[t]] = -1.0
            for t in self.tags[i]:
                out[r, index[t]] = 1.0
        return out


def split_folders(root: Path) -> Dict[str, Path]:
    """The ``train/``, ``validation/`` ... sub-folders of ``root`` (split name -> folder)."""
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for n in names:
            if (root / n).is_dir():
                found[split] = root / n
                break
    return found if "train" in found else {}


# format name -> does a folder hold it (each format's module registers its own test)
HOLDS: Dict[str, Callable[[Path], bool]] = {}


def found_in(folder: Path) -> str:
    """The formats ``folder`` holds, by name (for messages about split folders)."""
    found = []
    for name, holds in HOLDS.items():
        try:
            if holds(folder):
                found.append(name)
        except DataError:  # two files of one format: it holds that format all the same
            found.append(name)
    return ", ".join(found) if found else "no labels a format reads"


def per_split(
    root: Path,
    read_one: Callable[[Path, Optional[str]], LabelTable],
    holds: Callable[[Path], bool],
    what: str,
    root_holds: Optional[Callable[[Path], bool]] = None,
):
    """One table over the split folders that hold the format, else over ``root`` itself.

    Raises:
        DataError: the format both in ``root`` and in its split folders (two datasets, one would
            be dropped), or split folders that hold it everywhere but in ``train/`` (each folder
            named with what it holds).
    """
    splits = split_folders(root)
    folders = {s: p for s, p in splits.items() if holds(p)}
    if not folders:
        return read_one(root, None)
    if root_holds is not None and root_holds(root):
        inner = ", ".join(f"{p.name}/" for p in folders.values())
        raise DataError(
            f"{root} holds {what} in itself and in its split folders ({inner}): two label sets, one of which "
            f"would be dropped; keep one"
        )
    if "train" not in folders:
        found = "; ".join(f"{p.name}/ holds {found_in(p)}" for p in splits.values())
        raise DataError(f"{root}: {what} in the split folders but not in {splits['train'].name}/ ({found})")
    table = LabelTable(root)
    for split, folder in folders.items():
        table.extend(read_one(folder, split))
    if table.classes_file is None and (root / "classes.txt").is_file():
        table.classes_file = root / "classes.txt"
    return table


def classes_beside(folder: Path) -> Optional[Path]:
    return folder / "classes.txt" if (folder / "classes.txt").is_file() else None


def inside(base: Path, name: str, source: Path, line: str) -> str:
    """``base / name`` as an absolute path; a name that leaves ``base`` is refused (``../x``, ``/etc``).
    The test is on the names, not on where symbolic links lead: a folder of linked pictures reads."""
    root = os.path.abspath(base)
    path = os.path.normpath(os.path.join(root, name))
    if os.path.commonpath([path, root]) != root:
        raise DataError(f"{source}{line}: {name!r} points outside {base}")
    return path


def open_text(path: Path, what: str):
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not {what}") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_csv(path: Path, what: str) -> List[List[str]]:
    try:
        with open_text(path, what) as f:
            return [rec for rec in csv.reader(f)]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None


def csv_header(path: Path) -> List[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [h.strip().lower() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
