"""The label formats people export, read into one table and one :class:`MultiLabelDataset`.

- ``onehot``: a CSV ``filename,<class>,<class>,...`` of 0/1, where an empty cell or -1 is unknown
  (Roboflow's multi-label CSV ``_classes.csv``, Kaggle multi-label competitions).
- ``sidecar``: ``photo.jpg`` beside ``photo.txt`` holding ``tag1, tag2, ...`` (the image-tagger and
  captioning convention), searched recursively; ``--tag-separator`` changes the comma.
- ``imagefolder``: Hugging Face's ``imagefolder`` (:mod:`asl.data.imagefolder`).
- ``labelstudio``: Label Studio's JSON export (:mod:`asl.data.labelstudio`).

Splits: ``train/``, ``validation/`` (or ``valid/``, ``val/``) and ``test/`` sub-folders each
holding the format, or one labelled folder split at random (``--val-fraction``, seeded), as for
``labels.csv``. A ``classes.txt`` beside the labels fixes the class order; else the classes are
sorted by name. Nothing under the dataset's folder is written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..errors import DataError
from ..images import iter_pictures
from .base import DEFAULT_READ, MultiLabelDataset, ReadOptions, find_by_stem, split_rows
from .imagefolder import read_imagefolder
from .labelstudio import read_labelstudio
from .table import HOLDS, LABEL_COLUMNS, LabelTable, classes_beside, csv_header, inside, per_split, read_csv

log = logging.getLogger(__name__)

ONEHOT_FILES = ("_classes.csv", "labels.csv")
ONEHOT_NAME_COLUMNS = ("filename", "file_name", "image", "image_name", "file", "path", "id", "image_id")


# --------------------------------------------------------------------------- one-hot CSV


def is_onehot_csv(path: Path) -> bool:
    """A CSV whose first column names the image and whose other columns are classes."""
    h = csv_header(path)
    return len(h) >= 2 and h[0] in ONEHOT_NAME_COLUMNS and h[1] not in LABEL_COLUMNS


def onehot_file(folder: Path) -> Optional[Path]:
    """The one-hot CSV of ``folder`` (or ``folder`` itself, a CSV).

    Raises:
        DataError: two of them (``_classes.csv`` and a one-hot ``labels.csv``): two label sets.
    """
    if folder.is_file():
        return folder if is_onehot_csv(folder) else None
    found = [folder / n for n in ONEHOT_FILES if (folder / n).is_file() and is_onehot_csv(folder / n)]
    if len(found) > 1:
        raise DataError(f"{folder} holds two one-hot CSVs ({found[0].name}, {found[1].name}): keep one")
    return found[0] if found else None


def _read_onehot(folder: Path, split: Optional[str]) -> LabelTable:
    path = onehot_file(folder)
    if path is None:
        raise DataError(f"{folder}: no one-hot CSV ({' or '.join(ONEHOT_FILES)} with 'filename,<class>,...')")
    rows = read_csv(path, "a one-hot CSV")
    header = [h.strip() for h in rows[0]]
    classes = header[1:]
    if len(set(classes)) != len(classes) or any(not c for c in classes):
        raise DataError(f"{path}: class columns must be distinct and named, got {','.join(classes)!r}")
    table = LabelTable(path, classes_file=classes_beside(path.parent), columns=classes)
    for line_no, rec in enumerate(rows[1:], start=2):
        if not rec or not any(v.strip() for v in rec):
            continue
        if len(rec) != len(header):
            raise DataError(f"{path}:{line_no}: expected {len(header)} fields, got {len(rec)}")
        pos, unk = [], []
        for c, v in zip(classes, rec[1:]):
            v = v.strip()
            if v in ("", "-1", "-1.0"):
                unk.append(c)
            elif v in ("1", "1.0"):
                pos.append(c)
            elif v not in ("0", "0.0"):
                raise DataError(f"{path}:{line_no}: column {c!r} holds {v!r}; a one-hot CSV holds 0, 1, or -1 / empty")
        table.add(inside(path.parent, rec[0].strip(), path, f":{line_no}"), pos, split, unk)
    table.images = find_by_stem(table.images, path.parent, path)  # Kaggle's ids without an extension
    return table


def read_onehot(root: str, tag_separator: Optional[str] = None) -> LabelTable:
    root_p = Path(root)
    if root_p.is_file():
        return _read_onehot(root_p, None)
    has = lambda p: onehot_file(p) is not None  # noqa: E731
    return per_split(root_p, _read_onehot, has, "one-hot CSVs", root_holds=has)


# --------------------------------------------------------------------------- sidecar tag files


def sidecar_of(img: Path) -> Optional[Path]:
    """The tag file of a picture: same name, extension ``.txt`` in any case (``photo.JPG`` +
    ``photo.TXT``, as a camera or Windows writes them)."""
    exact = img.with_suffix(".txt")
    if exact.is_file():
        return exact
    for ext in (".TXT", ".Txt"):
        if img.with_suffix(ext).is_file():
            return img.with_suffix(ext)
    return None


def has_sidecars(folder: Path, limit: int = 2000) -> bool:
    """Whether some picture under ``folder`` has a same-named ``.txt`` beside it (looks at the
    first ``limit`` pictures only: detection stays fast on a large folder)."""
    for n, img in enumerate(iter_pictures(folder)):
        if sidecar_of(img) is not None:
            return True
        if n + 1 >= limit:
            return False
    return False


def _read_tag_file(path: Path, separator: str) -> List[str]:
    """The tags of one file: ``separator``-separated, and one tag a line too (the other common
    tagger layout)."""
    data = path.read_bytes()
    if b"\0" in data:
        raise DataError(f"{path}: a binary file, not a tag list")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    if separator.strip():
        parts = [t for line in text.splitlines() for t in line.split(separator)]
    else:
        parts = text.split()
    return list(dict.fromkeys(t.strip() for t in parts if t.strip()))


def _read_sidecar(folder: Path, split: Optional[str], separator: str) -> LabelTable:
    table = LabelTable(folder, classes_file=classes_beside(folder))
    untagged = []
    for img in iter_pictures(folder):
        txt = sidecar_of(img)
        if txt is None:
            untagged.append(str(img))
            continue
        table.add(os.path.abspath(img), _read_tag_file(txt, separator), split)
    if untagged:
        log.warning(
            "%s: %d pictures have no .txt of tags and are left out (first: %s)", folder, len(untagged), untagged[0]
        )
    return table


def read_sidecar(root: str, tag_separator: Optional[str] = None) -> LabelTable:
    sep = tag_separator if tag_separator is not None else ","
    return per_split(Path(root), lambda f, s: _read_sidecar(f, s, sep), has_sidecars, "tag files")


# --------------------------------------------------------------------------- Hugging Face imagefolder


# --------------------------------------------------------------------------- Label Studio


HOLDS["onehot"] = lambda folder: onehot_file(folder) is not None
HOLDS["sidecar"] = has_sidecars

READERS: Dict[str, Callable[..., LabelTable]] = {
    "onehot": read_onehot,
    "sidecar": read_sidecar,
    "imagefolder": read_imagefolder,
    "labelstudio": read_labelstudio,
}


# --------------------------------------------------------------------------- splits and the dataset


def dataset_from_table(
    table: LabelTable,
    kind: str,
    split: str = "train",
    transform: Optional[Callable] = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    read: ReadOptions = DEFAULT_READ,
) -> MultiLabelDataset:
    """A split of ``table`` as a :class:`MultiLabelDataset` (missing or unreadable pictures are
    skipped and named by it)."""
    if not table.images:
        raise DataError(f"{table.source}: no labelled pictures")
    class_names = table.class_names()
    if not class_names:
        raise DataError(f"{table.source}: no labels at all")
    rows, had = split_rows(table.splits, split, val_fraction, seed, table.source, "split folders or column")
    if not rows:
        hint = "" if had else f" (--val-fraction {val_fraction} of {len(table.images)} pictures holds none)"
        raise DataError(f"{table.source}: split {split!r} is empty{hint}")
    return MultiLabelDataset(
        [table.images[i] for i in rows],
        table.targets(rows, class_names),
        class_names,
        transform,
        name=f"{kind} {table.source} [{split}]",
        read=read,
    )


def _factory(kind: str):
    def create(
        root: str,
        split: str = "train",
        transform: Optional[Callable] = None,
        tag_separator: Optional[str] = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        read: ReadOptions = DEFAULT_READ,
    ) -> MultiLabelDataset:
        if not Path(root).exists():
            raise DataError(f"data folder not found: {root}")
        table = READERS[kind](root, tag_separator)
        return dataset_from_table(table, kind, split, transform, val_fraction, seed, read)

    create.__name__ = f"create_{kind}"
    create.__doc__ = f"A split of a {kind} dataset (module docstring)."
    return create


create_onehot = _factory("onehot")
create_sidecar = _factory("sidecar")
create_imagefolder = _factory("imagefolder")
create_labelstudio = _factory("labelstudio")
