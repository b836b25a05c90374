"""Label Studio's JSON export of a multi-choice image classification project, beside its pictures.

Exports are told from other JSON files by their shape. Several annotations of one task (several
annotators) are joined: a class any of them chose is a positive, and the tasks where they disagree
are counted and said. The picture is the data field the results point at (``to_name``); an
upload's ``8f3a2b1c-`` prefix is removed to find ``photo.jpg``. Results of other types beside the
choices (a text area, a taxonomy) are left out and counted.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence
from urllib.parse import parse_qs, unquote, urlparse

from ..errors import DataError
from ..images import IMAGE_EXTENSIONS, iter_pictures
from .table import HOLDS, LabelTable, classes_beside, inside, per_split

log = logging.getLogger(__name__)


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


def labelstudio_files(folder: Path) -> List[Path]:
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
    files = labelstudio_files(folder)
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
    table = LabelTable(path, classes_file=classes_beside(base))
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
    return inside(base, os.path.relpath(local, base), source, f" task {n}")


def read_labelstudio(root: str, tag_separator: Optional[str] = None) -> LabelTable:
    root_p = Path(root)
    if root_p.is_file():
        return _read_labelstudio(root_p, None)
    has = lambda p: bool(labelstudio_files(p))  # noqa: E731
    return per_split(root_p, _read_labelstudio, has, "Label Studio exports", root_holds=has)


HOLDS["labelstudio"] = lambda folder: bool(labelstudio_files(folder))
