"""Hugging Face's ``imagefolder``: ``metadata.jsonl`` or ``metadata.csv`` with ``file_name`` and a
list-valued ``labels`` (or ``tags``) column, in the dataset's folder or in each split folder; a root
file whose paths start with split folders is split by them, as Hugging Face reads it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

from ..errors import DataError
from .table import (
    HOLDS,
    LABEL_COLUMNS,
    SPLIT_FOLDERS,
    LabelTable,
    classes_beside,
    inside,
    open_text,
    per_split,
    read_csv,
)

METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def metadata_file(folder: Path) -> Optional[Path]:
    """The ``metadata.jsonl`` or ``metadata.csv`` of ``folder``.

    Raises:
        DataError: both (Hugging Face refuses that too: one would be dropped)."""
    found = [folder / n for n in METADATA_FILES if (folder / n).is_file()]
    if len(found) > 1:
        raise DataError(f"{folder} holds both {found[0].name} and {found[1].name}: keep one")
    return found[0] if found else None


def _as_tags(value, path: Path, line: int, separator: str) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                value = json.loads(s)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{line}: labels {s[:40]!r} are not a JSON list") from None
        else:
            return [t.strip() for t in s.split(separator) if t.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return list(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))
    raise DataError(f"{path}:{line}: labels must be a list of names, got {value!r:.60}")


def _metadata_records(path: Path) -> List[tuple]:
    """(line number, record) of a ``metadata.jsonl`` or ``metadata.csv``."""
    records = []
    if path.suffix == ".jsonl":
        with open_text(path, "a metadata file") as f:
            try:
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{line_no}: not JSON ({e.msg})") from None
                    if not isinstance(rec, dict):
                        raise DataError(f"{path}:{line_no}: each line must be a JSON object")
                    records.append((line_no, rec))
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
        return records
    rows = read_csv(path, "a metadata file")
    header = [h.strip() for h in rows[0]] if rows else []
    for line_no, rec in enumerate(rows[1:], start=2):
        if not rec:
            continue
        if len(rec) != len(header):  # unquoted tags after a comma would be dropped: quote them, or use JSON lists
            raise DataError(
                f"{path}:{line_no}: expected {len(header)} fields, got {len(rec)} (quote a cell that holds "
                f'commas: "cat,dog", or a JSON list)'
            )
        records.append((line_no, dict(zip(header, rec))))
    return records


def _label_column(records: List[tuple], path: Path) -> str:
    """The labels' column, over every record: ``labels`` / ``tags`` / ``label``, else the one
    list-valued column."""
    keys = set().union(*(rec.keys() for _, rec in records))
    if "file_name" not in keys:
        raise DataError(f"{path}: needs a 'file_name' column (Hugging Face imagefolder), got {sorted(keys)}")
    named = [c for c in LABEL_COLUMNS if c in keys]
    if len(named) > 1:
        raise DataError(f"{path}: records name their labels in two columns ({named[0]!r}, {named[1]!r}): use one")
    if named:
        return named[0]
    lists = sorted({k for _, rec in records for k, v in rec.items() if isinstance(v, list)})
    if len(lists) != 1:
        raise DataError(f"{path}: no labels column (looked for {', '.join(LABEL_COLUMNS)} or one list-valued column)")
    return lists[0]


def _read_imagefolder(folder: Path, split: Optional[str], separator: str) -> LabelTable:
    path = metadata_file(folder)
    if path is None:
        raise DataError(f"{folder}: no {' or '.join(METADATA_FILES)}")
    table = LabelTable(path, classes_file=classes_beside(folder))
    records = _metadata_records(path)
    if not records:
        raise DataError(f"{path}: no rows")
    column = _label_column(records, path)
    for line_no, rec in records:
        name = rec.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{path}:{line_no}: 'file_name' must be a path, got {name!r}")
        image = inside(folder, name.strip(), path, f":{line_no}")
        table.add(image, _as_tags(rec.get(column), path, line_no, separator), split or _split_of(folder, image))
    if split is None and any(table.splits) and not all(table.splits):
        loose = next(i for i, s in zip(table.images, table.splits) if s is None)
        raise DataError(
            f"{path}: some pictures are in split folders (train/, validation/, test/) and some are not "
            f"({loose}): put every picture in one, or none"
        )
    return table


def _split_of(root: Path, image: str) -> Optional[str]:
    """The split a picture's first folder under ``root`` names (``train/x.jpg``: train), as
    Hugging Face reads a root ``metadata.jsonl`` whose paths start with split folders."""
    first = Path(os.path.relpath(image, root)).parts[0]
    return next((s for s, names in SPLIT_FOLDERS.items() if first in names), None)


def read_imagefolder(root: str, tag_separator: Optional[str] = None) -> LabelTable:
    sep = tag_separator if tag_separator is not None else ","
    has = lambda p: metadata_file(p) is not None  # noqa: E731
    return per_split(Path(root), lambda f, s: _read_imagefolder(f, s, sep), has, "metadata files", root_holds=has)


HOLDS["imagefolder"] = lambda folder: metadata_file(folder) is not None
