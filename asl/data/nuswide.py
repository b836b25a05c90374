"""NUS-WIDE with the ASL model zoo's split file (``nus_wid_data.csv``).

A CSV with a header and three columns: image path relative to the image root;
the labels as a Python-list string such as ``"['clouds', 'sky']"`` (parsed with
``ast.literal_eval``, never ``eval``; ``[]`` = no label); the split, ``train`` or
``val``. The 81 classes are the sorted unique names. The official checkpoint is
validated at 240 px (65.2 mAP; 64.0 at 448): ``--image-size 240``.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path
from typing import Callable, Optional

from ..errors import DataError
from .base import DEFAULT_READ, MultiLabelDataset, ReadOptions, check_exists, multi_hot

CSV_NAME = "nus_wid_data.csv"


def read_nuswide_csv(csv_path: Path):
    rows = []
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            if next(reader, None) is None:
                raise DataError(f"{csv_path}: empty file")
            for line_no, rec in enumerate(reader, start=2):
                if not rec:
                    continue
                if len(rec) != 3:
                    raise DataError(f"{csv_path}:{line_no}: expected 3 fields (path, labels, split), got {len(rec)}")
                try:
                    labels = ast.literal_eval(rec[1].strip() or "[]")
                except (ValueError, SyntaxError):
                    raise DataError(f"{csv_path}:{line_no}: labels are not a list literal: {rec[1][:60]!r}") from None
                if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) for x in labels):
                    raise DataError(f"{csv_path}:{line_no}: labels must be a list of names")
                rows.append((rec[0].strip(), [x.strip() for x in labels], rec[2].strip()))
    except UnicodeDecodeError:
        raise DataError(f"{csv_path}: not a UTF-8 text file") from None
    except IsADirectoryError:
        raise DataError(f"{csv_path} is a folder, not the split CSV") from None
    except csv.Error as e:
        raise DataError(f"{csv_path}: malformed CSV ({e})") from None
    return rows


def create_nuswide(
    root: str,
    split: str = "train",
    transform: Optional[Callable] = None,
    ann_file: Optional[str] = None,
    image_dir: Optional[str] = None,
    read: ReadOptions = DEFAULT_READ,
) -> MultiLabelDataset:
    """Load a NUS-WIDE split.

    Args:
        root: the image root (holding ``nus_wid_data.csv`` unless ``ann_file`` is given).
        split: ``train`` or ``val``.
        transform: PIL image -> tensor.
        ann_file: the split CSV (default ``ROOT/nus_wid_data.csv``).
        image_dir: image root, when not ``root``.
        read: how pictures are read (:class:`~asl.data.base.ReadOptions`: unreadable ones tolerated,
            training's JPEG draft decode).
    """
    root_p = check_exists(Path(root), "NUS-WIDE root")
    csv_path = check_exists(Path(ann_file) if ann_file else root_p / CSV_NAME, "NUS-WIDE split CSV")
    rows = read_nuswide_csv(csv_path)
    class_names = sorted({t for _, labels, _ in rows for t in labels})
    if not class_names:
        raise DataError(f"{csv_path}: no labels at all")
    selected = [r for r in rows if r[2] == split]
    if not selected:
        raise DataError(f"{csv_path}: split {split!r} is empty")
    targets = multi_hot([labels for _, labels, _ in selected], class_names)
    images = Path(image_dir) if image_dir else root_p
    return MultiLabelDataset(
        [str(images / p) for p, _, _ in selected],
        targets,
        class_names,
        transform,
        name=f"nuswide {split}",
        read=read,
    )
