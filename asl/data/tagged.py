"""Custom tagged data: ``labels.csv`` with ``image,labels[,split]``.

Paths are relative to the CSV; labels are ``|``-separated tag names (empty = no
label). Without a split column a seeded random split holds out ``val_fraction``
of the images for validation. An optional ``classes.txt`` beside the CSV (one
name per line) fixes the class order; otherwise classes are the sorted tags.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Callable, List, Optional

from ..errors import DataError
from .base import (
    DEFAULT_READ,
    MultiLabelDataset,
    ReadOptions,
    check_file,
    find_by_stem,
    multi_hot,
    read_text,
    split_rows,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _resolve_csv(root: Path) -> Path:
    return root / "labels.csv" if root.is_dir() else root


NAME_COLUMNS = ("image", "image_name", "filename", "file_name")
TAG_COLUMNS = ("labels", "tags")


def read_tagged_csv(csv_path: Path, separator: Optional[str] = None):
    """Parse the CSV into (rows of (image, [tags], split or None), has_split). The header is
    ``image,labels[,split]`` (also ``image_name,tags``, Planet's); a blank separator splits on
    any whitespace. Unset (None), the separator is ``|``, or whitespace for Planet's ``tags``
    column when no cell holds a ``|`` (``haze primary water`` is three tags)."""
    rows, raw = [], []
    try:
        # utf-8-sig: a CSV saved by Excel starts with a byte-order mark, which is not part of 'image'
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{csv_path}: empty file")
            header = [h.strip().lower() for h in header]
            if (
                len(header) < 2
                or header[0] not in NAME_COLUMNS
                or header[1] not in TAG_COLUMNS
                or len(header) > 3
                or (len(header) == 3 and header[2] != "split")
            ):
                raise DataError(f"{csv_path}: header must be 'image,labels[,split]', got {','.join(header)!r}")
            has_split = len(header) == 3
            for line_no, rec in enumerate(reader, start=2):
                if not rec:
                    continue
                if len(rec) != len(header):
                    raise DataError(f"{csv_path}:{line_no}: expected {len(header)} fields, got {len(rec)}")
                split = rec[2].strip() if has_split else None
                if split is not None and split not in SPLITS:
                    raise DataError(f"{csv_path}:{line_no}: unknown split {split!r} (expected {'/'.join(SPLITS)})")
                raw.append((rec[0].strip(), rec[1], split))
    except UnicodeDecodeError as e:
        raise DataError(f"{csv_path}: not a UTF-8 text file ({e.reason})") from None
    except IsADirectoryError:
        raise DataError(f"{csv_path} is a folder, not a labels file") from None
    except csv.Error as e:
        raise DataError(f"{csv_path}: malformed CSV ({e})") from None
    if separator is None:
        separator = " " if header[1] == "tags" and not any("|" in cell for _, cell, _ in raw) else "|"
        if separator == " ":
            log.info("%s: Planet's 'tags' column without '|': tags separated by spaces (--tag-separator)", csv_path)
    for image, cell, split in raw:
        parts = cell.split(separator) if separator.strip() else cell.split()
        rows.append((image, list(dict.fromkeys(t.strip() for t in parts if t.strip())), split))
    return rows, has_split


def create_tagged(
    root: str,
    split: str = "train",
    transform: Optional[Callable] = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    tag_separator: Optional[str] = None,
    read: ReadOptions = DEFAULT_READ,
) -> MultiLabelDataset:
    """Load a split of a tagged dataset.

    Args:
        root: the folder holding ``labels.csv``, or the CSV itself.
        split: ``train``, ``val`` or ``test``.
        transform: PIL image -> tensor.
        val_fraction: held-out fraction when the CSV has no split column.
        seed: seed of that split.
        tag_separator: between the tags (unset: ``|``, or spaces for Planet's ``tags`` column without
            any ``|``; ``" "`` for space-separated tags).
        read: how pictures are read (:class:`~asl.data.base.ReadOptions`: unreadable ones tolerated,
            training's JPEG draft decode).
    """
    csv_path = check_file(_resolve_csv(Path(root)), "tagged dataset CSV")
    rows, has_split = read_tagged_csv(csv_path, tag_separator)
    if not rows:
        raise DataError(f"{csv_path}: no images listed")
    classes_file = csv_path.parent / "classes.txt"
    if classes_file.exists():
        class_names: List[str] = [c.strip() for c in read_text(classes_file, "classes file").splitlines() if c.strip()]
        known = set(class_names)
        for image, tags, _ in rows:
            for t in tags:
                if t not in known:
                    raise DataError(f"{csv_path}: tag {t!r} of {image} is not in {classes_file}")
    else:
        class_names = sorted({t for _, tags, _ in rows for t in tags})
    if not class_names:
        raise DataError(f"{csv_path}: no labels at all")

    chosen, _ = split_rows([r[2] for r in rows], split, val_fraction, seed, csv_path, "split column")
    selected = [rows[i] for i in chosen]
    if not selected:
        held = int(round(val_fraction * len(rows)))
        hint = (
            (
                f" ({len(rows)} images, --val-fraction {val_fraction} holds out {held}: add images, change "
                f"--val-fraction, or give labels.csv a split column)"
            )
            if not has_split
            else " (no row of labels.csv names it in its split column)"
        )
        raise DataError(f"{csv_path}: split {split!r} is empty{hint}")

    targets = multi_hot([tags for _, tags, _ in selected], class_names)
    base = csv_path.parent
    paths = find_by_stem([str(base / image) for image, _, _ in selected], base, csv_path)
    return MultiLabelDataset(
        paths,
        targets,
        class_names,
        transform,
        name=f"tagged {csv_path} [{split}]",
        read=read,
    )
