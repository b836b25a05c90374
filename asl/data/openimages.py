"""Open Images (V6, and the earlier releases' file names), read from the official files, its labels
held sparse.

The folder holds:

- ``oidv6-class-descriptions.csv`` (``LabelName,DisplayName``) or ``class-descriptions.csv`` (no
  header): MID -> display name. A MID (``/m/0dzct``) is a class's identity; display names repeat, and
  a repeated one is told apart as ``Name (/m/...)``.
- ``classes-trainable.txt`` (one MID a line): the classes and their order. Without it, every MID
  with a positive in the training labels, sorted (said in the log).
- ``oidv6-train-annotations-human-imagelabels.csv`` (or ``train-annotations-human-imagelabels.csv``),
  ``validation-annotations-human-imagelabels.csv``, ``test-annotations-human-imagelabels.csv``
  (``ImageID,Source,LabelName,Confidence``): Confidence 1 a positive, 0 a verified negative, and no
  row an unknown label (-1).
- the pictures at ``train/<ImageID>.jpg``, ``validation/<ImageID>.jpg``, ``test/<ImageID>.jpg``.

The training split is ``train``; the evaluation split is ``test`` (the published numbers'),
``validation`` when asked (``--val-split validation``). The label CSVs are read by pyarrow's
columnar reader; the labels are kept as per-image class indices
(:class:`asl.data.labels.SparseLabels`) and the image ids as one bytes array: no (N, C) matrix and
no file is stat-ed at start (a missing picture is skipped and named when read).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import DataError
from .base import DEFAULT_READ, IdPaths, MultiLabelDataset, ReadOptions
from .labels import SparseLabels

log = logging.getLogger(__name__)

__all__ = ["create_openimages", "is_openimages", "read_descriptions", "read_image_labels", "SPLITS"]

DESCRIPTIONS = ("oidv6-class-descriptions.csv", "class-descriptions.csv")
TRAINABLE = "classes-trainable.txt"
LABEL_FILES = {
    "train": ("oidv6-train-annotations-human-imagelabels.csv", "train-annotations-human-imagelabels.csv"),
    "validation": ("validation-annotations-human-imagelabels.csv",),
    "test": ("test-annotations-human-imagelabels.csv",),
}
SPLITS = tuple(LABEL_FILES)
HEADER = ["ImageID", "Source", "LabelName", "Confidence"]


def label_file(root: Path, split: str) -> Optional[Path]:
    """The human-verified image-level labels of ``split``, under one of its official names."""
    return next((root / n for n in LABEL_FILES[split] if (root / n).is_file()), None)


def is_openimages(root: Path) -> bool:
    """A folder holding Open Images' label files (what ``--dataset auto`` tells it by)."""
    return root.is_dir() and any(label_file(root, s) is not None for s in SPLITS)


def read_descriptions(root: Path) -> Dict[str, str]:
    """MID -> display name, from ``oidv6-class-descriptions.csv`` or ``class-descriptions.csv``
    (empty when neither is there).

    Raises:
        DataError: a file of another format (not two columns of a MID and a name).
    """
    path = next((root / n for n in DESCRIPTIONS if (root / n).is_file()), None)
    if path is None:
        return {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a class-descriptions CSV ({e})") from None
    if rows and rows[0] == ["LabelName", "DisplayName"]:
        rows = rows[1:]
    bad = next((r for r in rows if len(r) != 2 or not r[0].startswith("/")), None)
    if bad is not None or not rows:
        raise DataError(
            f"{path}: not a class-descriptions CSV (MID,DisplayName rows such as '/m/0dzct,Human face'); "
            f"found {bad!r:.80}"
        )
    return {mid: name for mid, name in rows}


def display_names(mids: List[str], descriptions: Dict[str, str]) -> List[str]:
    """Each MID's display name, a repeated name told apart by its MID (``Name (/m/...)``); the MID
    itself where the descriptions do not name it."""
    names = [descriptions.get(m, m) for m in mids]
    count: Dict[str, int] = {}
    for n in names:
        count[n] = count.get(n, 0) + 1
    return [f"{n} ({m})" if count[n] > 1 and n != m else n for n, m in zip(names, mids)]


def _read_columns(path: Path):
    """The label CSV's four columns, read by pyarrow (tens of millions of rows)."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        raise DataError("Open Images' label files are read with pyarrow: pip install -r requirements.txt") from None
    try:
        table = pacsv.read_csv(
            str(path),
            convert_options=pacsv.ConvertOptions(
                column_types={"ImageID": pa.string(), "LabelName": pa.string(), "Source": pa.string()},
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a label CSV ({str(e).splitlines()[0][:160]})") from None
    if table.column_names != HEADER:
        raise DataError(f"{path}: columns {table.column_names}, expected {','.join(HEADER)}")
    return table


def read_image_labels(path: Path, class_index: Dict[str, int]) -> Tuple[np.ndarray, SparseLabels, Dict[str, int]]:
    """An image-level label file as (image ids, labels, rows left out per MID not in the class list).

    Raises:
        DataError: other columns, a Confidence other than 0 or 1 (the machine-generated files carry
            fractions), one (image, class) labelled both 1 and 0, no labelled entry for any class.
    """
    import pyarrow.compute as pc

    table = _read_columns(path)
    conf = table["Confidence"].to_numpy() if table.num_rows else np.zeros(0)
    odd = ~np.isin(conf, (0, 1))
    if odd.any():
        raise DataError(
            f"{path}: Confidence {float(conf[odd][0])!r} on {int(odd.sum())} rows; human-verified labels are 0 or 1 "
            f"(a machine-generated label file carries fractions: use the human-imagelabels files)"
        )
    images = pc.dictionary_encode(table["ImageID"]).combine_chunks()
    mids = pc.dictionary_encode(table["LabelName"]).combine_chunks()
    ids = np.asarray(images.dictionary.to_pylist(), dtype="S")
    image = images.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    lookup = np.array([class_index.get(m, -1) for m in mids.dictionary.to_pylist()], dtype=np.int64)
    klass = lookup[mids.indices.to_numpy(zero_copy_only=False)]
    left_out: Dict[str, int] = {}
    if (klass < 0).any():
        names = mids.dictionary.to_pylist()
        per = np.bincount(mids.indices.to_numpy(zero_copy_only=False)[klass < 0], minlength=len(names))
        left_out = {names[k]: int(c) for k, c in enumerate(per) if c}
    keep = klass >= 0
    image, klass, value = image[keep], klass[keep], conf[keep].astype(np.int8)
    if not len(image):
        raise DataError(f"{path}: no labelled entry for any class of the class list")
    key = image * len(class_index) + klass
    order = np.argsort(key, kind="stable")
    key, value, image, klass = key[order], value[order], image[order], klass[order]
    repeat = np.flatnonzero(key[1:] == key[:-1])
    clash = repeat[value[repeat] != value[repeat + 1]]
    if len(clash):
        bad = int(image[clash[0]])
        raise DataError(
            f"{path}: image {ids[bad].decode()} is labelled both 1 and 0 for {int(len(clash))} classes; "
            f"keep one row per image and class"
        )
    first = np.ones(len(key), dtype=bool)
    first[repeat + 1] = False  # a row given twice with the same label counts once
    labels = SparseLabels.from_entries(len(ids), len(class_index), image[first], klass[first], value[first])
    return ids, labels, left_out


def class_list(root: Path) -> Tuple[List[str], str]:
    """(MIDs in order, how the list was chosen): ``classes-trainable.txt``, else every MID with a
    positive in the training labels, sorted."""
    trainable = root / TRAINABLE
    if trainable.is_file():
        mids = [ln.strip() for ln in trainable.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not mids or not all(m.startswith("/") for m in mids):
            raise DataError(f"{trainable}: not a list of MIDs (one '/m/...' a line)")
        return mids, TRAINABLE
    source = label_file(root, "train") or next(label_file(root, s) for s in SPLITS if label_file(root, s))
    table = _read_columns(source)
    import pyarrow.compute as pc

    positive = pc.equal(table["Confidence"], 1)
    mids = sorted(set(pc.filter(table["LabelName"], positive).to_pylist()))
    return mids, f"the MIDs with a positive in {source.name}"


def create_openimages(
    root: str,
    split: str = "train",
    transform: Optional[Callable] = None,
    read: ReadOptions = DEFAULT_READ,
) -> MultiLabelDataset:
    """A split of Open Images (module docstring): ``train``, ``validation`` or ``test``.

    Raises:
        DataError: the split's label file missing, or bad label files (one line naming the file).
    """
    root_p = Path(root)
    if split == "val":
        split = "validation"
    if split not in SPLITS:
        raise DataError(f"Open Images has the splits {', '.join(SPLITS)}, not {split!r}")
    path = label_file(root_p, split)
    if path is None:
        raise DataError(f"{root}: no labels of the {split} split ({' or '.join(LABEL_FILES[split])})")
    mids, how = class_list(root_p)
    log.info("Open Images classes: %d, from %s", len(mids), how)
    class_index = {m: k for k, m in enumerate(mids)}
    ids, labels, left_out = read_image_labels(path, class_index)
    if left_out:
        rows = sum(left_out.values())
        log.warning(
            "warning: %s: %d rows of %d MIDs not in the class list are left out (first: %s)",
            path.name,
            rows,
            len(left_out),
            ", ".join(list(left_out)[:3]),
        )
    names = display_names(mids, read_descriptions(root_p))
    return MultiLabelDataset(
        IdPaths(root_p / split, ids), labels, names, transform, name=f"openimages {root} [{split}]", read=read
    )
