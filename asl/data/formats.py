"""The label formats people export, read into one table and one :class:`MultiLabelDataset`.

- ``onehot``: a CSV ``filename,<class>,<class>,...`` of 0/1, where an empty cell or -1 is unknown
  (Roboflow's multi-label CSV ``_classes.csv``, Kaggle multi-label competitions).
- ``sidecar``: ``photo.jpg`` beside ``photo.txt`` holding ``tag1, tag2, ...`` (the image-tagger and
  captioning convention), searched recursively; ``--tag-separator`` changes the comma.
- ``imagefolder``: Hugging Face's ``imagefolder`` with ``metadata.jsonl`` or ``metadata.csv``
  (``file_name`` and a list-valued ``labels`` or ``tags`` column).
- ``labelstudio``: Label Studio's JSON export of a multi-choice image classification project.

Splits: ``train/``, ``validation/`` (or ``valid/``, ``val/``) and ``test/`` sub-folders each
holding the format, or one labelled folder split at random (``--val-fraction``, seeded), as for
``labels.csv``. A ``classes.txt`` beside the labels fixes the class order; else the classes are
sorted by name. Nothing under the dataset's folder is written.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from ..errors import DataError
from ..images import IMAGE_EXTENSIONS, iter_pictures
from .base import MultiLabelDataset, find_by_stem, read_text, split_rows

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": ("train",), "val": ("validation", "valid", "val"), "test": ("test",)}
ONEHOT_FILES = ("_classes.csv", "labels.csv")
ONEHOT_NAME_COLUMNS = ("filename", "file_name", "image", "image_name", "file", "path", "id", "image_id")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
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


# --------------------------------------------------------------------------- split folders


def split_folders(root: Path) -> Dict[str, Path]:
    """The ``train/``, ``validation/`` ... sub-folders of ``root`` (split name -> folder)."""
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for n in names:
            if (root / n).is_dir():
                found[split] = root / n
                break
    return found if "train" in found else {}


def _found_in(folder: Path) -> str:
    """The formats ``folder`` holds, by name (for messages about split folders)."""
    tests = {
        "onehot": lambda f: _onehot_file(f) is not None,
        "imagefolder": lambda f: _metadata_file(f) is not None,
        "labelstudio": lambda f: bool(_labelstudio_files(f)),
        "sidecar": has_sidecars,
    }
    found = []
    for name, holds in tests.items():
        try:
            if holds(folder):
                found.append(name)
        except DataError:  # two files of one format: it holds that format all the same
            found.append(name)
    return ", ".join(found) if found else "no labels a format reads"


def _per_split(
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
        found = "; ".join(f"{p.name}/ holds {_found_in(p)}" for p in splits.values())
        raise DataError(f"{root}: {what} in the split folders but not in {splits['train'].name}/ ({found})")
    table = LabelTable(root)
    for split, folder in folders.items():
        table.extend(read_one(folder, split))
    if table.classes_file is None and (root / "classes.txt").is_file():
        table.classes_file = root / "classes.txt"
    return table


def _classes_beside(folder: Path) -> Optional[Path]:
    return folder / "classes.txt" if (folder / "classes.txt").is_file() else None


def _inside(base: Path, name: str, source: Path, line: str) -> str:
    """``base / name`` as an absolute path; a name that leaves ``base`` is refused (``../x``, ``/etc``).
    The test is on the names, not on where symbolic links lead: a folder of linked pictures reads."""
    root = os.path.abspath(base)
    path = os.path.normpath(os.path.join(root, name))
    if os.path.commonpath([path, root]) != root:
        raise DataError(f"{source}{line}: {name!r} points outside {base}")
    return path


def _open_text(path: Path, what: str):
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not {what}") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _read_csv(path: Path, what: str) -> List[List[str]]:
    try:
        with _open_text(path, what) as f:
            return [rec for rec in csv.reader(f)]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None


def _header(path: Path) -> List[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [h.strip().lower() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


# --------------------------------------------------------------------------- one-hot CSV


def is_onehot_csv(path: Path) -> bool:
    """A CSV whose first column names the image and whose other columns are classes."""
    h = _header(path)
    return len(h) >= 2 and h[0] in ONEHOT_NAME_COLUMNS and h[1] not in LABEL_COLUMNS


def _onehot_file(folder: Path) -> Optional[Path]:
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
    path = _onehot_file(folder)
    if path is None:
        raise DataError(f"{folder}: no one-hot CSV ({' or '.join(ONEHOT_FILES)} with 'filename,<class>,...')")
    rows = _read_csv(path, "a one-hot CSV")
    header = [h.strip() for h in rows[0]]
    classes = header[1:]
    if len(set(classes)) != len(classes) or any(not c for c in classes):
        raise DataError(f"{path}: class columns must be distinct and named, got {','.join(classes)!r}")
    table = LabelTable(path, classes_file=_classes_beside(path.parent), columns=classes)
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
        table.add(_inside(path.parent, rec[0].strip(), path, f":{line_no}"), pos, split, unk)
    table.images = find_by_stem(table.images, path.parent, path)  # Kaggle's ids without an extension
    return table


def read_onehot(root: str, tag_separator: Optional[str] = None) -> LabelTable:
    root_p = Path(root)
    if root_p.is_file():
        return _read_onehot(root_p, None)
    has = lambda p: _onehot_file(p) is not None  # noqa: E731
    return _per_split(root_p, _read_onehot, has, "one-hot CSVs", root_holds=has)


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
    table = LabelTable(folder, classes_file=_classes_beside(folder))
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
    return _per_split(Path(root), lambda f, s: _read_sidecar(f, s, sep), has_sidecars, "tag files")


# --------------------------------------------------------------------------- Hugging Face imagefolder


def _metadata_file(folder: Path) -> Optional[Path]:
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
        with _open_text(path, "a metadata file") as f:
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
    rows = _read_csv(path, "a metadata file")
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
    path = _metadata_file(folder)
    if path is None:
        raise DataError(f"{folder}: no {' or '.join(METADATA_FILES)}")
    table = LabelTable(path, classes_file=_classes_beside(folder))
    records = _metadata_records(path)
    if not records:
        raise DataError(f"{path}: no rows")
    column = _label_column(records, path)
    for line_no, rec in records:
        name = rec.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{path}:{line_no}: 'file_name' must be a path, got {name!r}")
        image = _inside(folder, name.strip(), path, f":{line_no}")
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
    has = lambda p: _metadata_file(p) is not None  # noqa: E731
    return _per_split(Path(root), lambda f, s: _read_imagefolder(f, s, sep), has, "metadata files", root_holds=has)


# --------------------------------------------------------------------------- Label Studio


def _is_labelstudio_export(path: Path) -> bool:
    """A Label Studio JSON export by its shape: a list of tasks, each an object with a ``data``
    object and an ``annotations`` (or ``predictions``) list. An unrelated JSON beside it is not one."""
    try:
        with open(path, "rb") as f:
            if not f.read(4096).lstrip().startswith(b"["):
                return False
        tasks = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (
        isinstance(tasks, list)
        and bool(tasks)
        and all(
            isinstance(t, dict)
            and isinstance(t.get("data"), dict)
            and isinstance(t.get("annotations", t.get("predictions")), list)
            for t in tasks
        )
    )


def _labelstudio_files(folder: Path) -> List[Path]:
    files = sorted(folder.glob("*.json")) if folder.is_dir() else [folder]
    return [p for p in files if p.is_file() and _is_labelstudio_export(p)]


UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio renames an upload photo.jpg to 8f3a2b1c-photo.jpg


def _local_name(url: str) -> str:
    """The file a Label Studio image reference names: ``/data/local-files/?d=dir/x.jpg`` -> ``dir/x.jpg``,
    an upload or a URL -> its file name."""
    parsed = urlparse(url)
    q = parse_qs(parsed.query).get("d")
    if q:
        return unquote(q[0])
    return unquote(os.path.basename(parsed.path))


def _image_reference(data: dict, results: Sequence[dict]) -> Optional[str]:
    """The picture of a task: the ``data`` key its results point at (``to_name``, the image
    object's name, which is its data key in the usual configs), else ``image``, else the one value
    that names a picture file (a text field beside it is not taken for the picture)."""
    for key in [r.get("to_name") for r in results if isinstance(r, dict)] + ["image", "img"]:
        if isinstance(key, str) and isinstance(data.get(key), str):
            return data[key]
    pictures = [
        v for v in data.values() if isinstance(v, str) and Path(_local_name(v)).suffix.lower() in IMAGE_EXTENSIONS
    ]
    return pictures[0] if len(pictures) == 1 else None


def _choices(result: dict, where: str) -> List[str]:
    value = result.get("value")
    if not isinstance(value, dict):
        raise DataError(f"{where}: a 'choices' result whose value is {value!r:.60}, not an object with 'choices'")
    chosen = value.get("choices") or []
    if isinstance(chosen, str):  # one choice written as a string, not a list of one
        chosen = [chosen]
    if not isinstance(chosen, list):
        raise DataError(f"{where}: 'choices' must be a list of names, got {chosen!r:.60}")
    return [str(c) for c in chosen]


def _read_labelstudio(folder: Path, split: Optional[str]) -> LabelTable:
    """A Label Studio export. Several annotations of one task (several annotators) are joined: a
    class any of them chose is a positive, and the tasks where they disagree are counted and said.
    Results of other types beside the choices (a text area, a taxonomy) are left out and counted."""
    files = _labelstudio_files(folder)
    if not files:
        raise DataError(f"{folder}: no Label Studio JSON export (a list of tasks with 'data' and 'annotations')")
    if len(files) > 1:
        raise DataError(f"{folder}: {len(files)} Label Studio exports ({files[0].name}, {files[1].name}); keep one")
    path = files[0]
    tasks = json.loads(path.read_text(encoding="utf-8-sig"))  # its shape was checked
    base = path.parent
    by_name: Dict[str, List[Path]] = {}
    for img in iter_pictures(base):
        by_name.setdefault(img.name, []).append(img)
    table = LabelTable(path, classes_file=_classes_beside(base))
    skipped, disagree, other, n_choices = 0, 0, Counter(), 0
    for n, task in enumerate(tasks):
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        results = [r for a in annotations for r in a.get("result") or [] if isinstance(r, dict)]
        url = _image_reference(task["data"], results)
        if url is None or not annotations:
            skipped += 1
            continue
        per_annotator = []
        for a in annotations:
            chosen = []
            for r in a.get("result") or []:
                if not isinstance(r, dict) or r.get("type") != "choices":
                    other[r.get("type") if isinstance(r, dict) else type(r).__name__] += 1
                    continue
                chosen += _choices(r, f"{path}: task {n}")
                n_choices += 1
            per_annotator.append(list(dict.fromkeys(chosen)))
        if len({tuple(sorted(c)) for c in per_annotator}) > 1:
            disagree += 1
        tags = list(dict.fromkeys(t for chosen in per_annotator for t in chosen))
        table.add(_resolve_upload(base, _local_name(url), by_name, path, n), tags, split)
    if not n_choices and other:
        kinds = ", ".join(f"{k!r}" for k in other)
        raise DataError(
            f"{path}: no 'choices' result in any task, only {kinds}: a multi-label classification export holds "
            f"'choices' (is it an export of another task type?)"
        )
    if other:
        log.warning(
            "%s: %d results that are not choices (%s) are left out",
            path,
            sum(other.values()),
            ", ".join(f"{k} {v}" for k, v in other.items()),
        )
    if disagree:
        log.warning(
            "%s: %d tasks have annotations that disagree; their choices are joined (a class any annotator "
            "chose is a positive)",
            path,
            disagree,
        )
    if skipped:
        log.warning("%s: %d tasks without an annotation are left out", path, skipped)
    return table


def _resolve_upload(base: Path, name: str, by_name: Dict[str, List[Path]], source: Path, n: int) -> str:
    """A task's picture under ``base``: the path it names, else the one picture of its file name
    (an upload's ``8f3a2b1c-`` prefix removed, as Label Studio adds it)."""
    local = base / name
    if not local.is_file():
        plain = os.path.basename(name)
        found = by_name.get(plain, []) or by_name.get(UPLOAD_PREFIX.sub("", plain), [])
        if len(found) > 1:
            raise DataError(
                f"{source} task {n}: {plain!r} matches {len(found)} pictures ({found[0]}, {found[1]}): ambiguous; "
                f"keep one picture of that name, or name it with its folder (?d=folder/{plain})"
            )
        if found:
            local = found[0]
    return _inside(base, os.path.relpath(local, base), source, f" task {n}")


def read_labelstudio(root: str, tag_separator: Optional[str] = None) -> LabelTable:
    root_p = Path(root)
    if root_p.is_file():
        return _read_labelstudio(root_p, None)
    has = lambda p: bool(_labelstudio_files(p))  # noqa: E731
    return _per_split(root_p, _read_labelstudio, has, "Label Studio exports", root_holds=has)


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
    max_bad_fraction: float = 0.01,
    max_bad_images: int = 5,
    draft_size: Optional[int] = None,
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
        max_bad_fraction=max_bad_fraction,
        max_bad_images=max_bad_images,
        draft_size=draft_size,
    )


def _factory(kind: str):
    def create(
        root: str,
        split: str = "train",
        transform: Optional[Callable] = None,
        tag_separator: Optional[str] = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        **common,
    ) -> MultiLabelDataset:
        if not Path(root).exists():
            raise DataError(f"data folder not found: {root}")
        table = READERS[kind](root, tag_separator)
        return dataset_from_table(table, kind, split, transform, val_fraction, seed, **common)

    create.__name__ = f"create_{kind}"
    create.__doc__ = f"A split of a {kind} dataset (module docstring)."
    return create


create_onehot = _factory("onehot")
create_sidecar = _factory("sidecar")
create_imagefolder = _factory("imagefolder")
create_labelstudio = _factory("labelstudio")
