"""Open Images (V6, and the earlier releases' file names), read from the official files, its labels
held sparse.

The folder holds:

- ``oidv6-class-descriptions.csv`` (``LabelName,DisplayName``) or ``class-descriptions.csv`` (no
  header): MID -> display name. A MID (``/m/0dzct``) is a class's identity; display names repeat, and
  a repeated one is told apart as ``Name (/m/...)``.
- ``classes-trainable.txt`` (one MID a line): the classes and their order. Without it, the order of
  the checkpoint being validated or fine-tuned (its class names, MIDs or display names), else every
  MID with a positive in the training labels, sorted (which one is said in the log).
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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from .base import DEFAULT_READ, IdPaths, MultiLabelDataset, ReadOptions
from .labels import SparseLabels

log = logging.getLogger(__name__)

__all__ = [
    "create_openimages",
    "is_openimages",
    "read_descriptions",
    "read_descriptions_file",
    "described",
    "read_image_labels",
    "SPLITS",
]

DESCRIPTIONS = ("oidv6-class-descriptions.csv", "class-descriptions.csv")
TRAINABLE = "classes-trainable.txt"
LABEL_FILES = {
    "train": ("oidv6-train-annotations-human-imagelabels.csv", "train-annotations-human-imagelabels.csv"),
    "validation": ("validation-annotations-human-imagelabels.csv",),
    "test": ("test-annotations-human-imagelabels.csv",),
}
SPLITS = tuple(LABEL_FILES)
HEADER = ["ImageID", "Source", "LabelName", "Confidence"]
BLOCK_SIZE = 2 << 20  # bytes of CSV per batch: small blocks keep the reader's read-ahead small, and are no slower


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
    return {} if path is None else read_descriptions_file(path)


def read_descriptions_file(path: Path) -> Dict[str, str]:
    """MID -> display name from one class-descriptions CSV (with or without its header).

    Raises:
        DataError: a missing file, or one of another format.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, csv.Error) as e:
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


def _is_mid(name: str) -> bool:
    return name.startswith(("/m/", "/g/", "/t/"))


def mids_of(names: Sequence[str], descriptions: Dict[str, str], source: str) -> List[str]:
    """The MIDs a checkpoint's class names stand for: a MID itself, ``Name (/m/...)``, or a display
    name (a name several MIDs share takes them in the descriptions' order, one per repeat).

    Raises:
        DataError: names no MID answers to (counted, the first named).
    """
    by_name: Dict[str, List[str]] = {}
    for mid, name in descriptions.items():
        by_name.setdefault(name, []).append(mid)
    taken: Dict[str, int] = {}
    out, unknown = [], []
    for n in names:
        inner = n.rsplit(" (", 1)[-1].rstrip(")") if n.endswith(")") else ""
        if _is_mid(n) or _is_mid(inner):
            out.append(n if _is_mid(n) else inner)
            continue
        k = taken.get(n, 0)
        taken[n] = k + 1
        if k < len(by_name.get(n, ())):
            out.append(by_name[n][k])
        else:
            unknown.append(n)
    if unknown:
        raise DataError(
            f"{source}: {len(unknown)} of its {len(names)} class names are neither a MID nor a display name of "
            f"the class descriptions (first: {', '.join(map(repr, unknown[:3]))})"
        )
    return out


def described(names: Sequence[str], descriptions: Dict[str, str]) -> List[str]:
    """A model's class names with each MID (or ``Name (/m/...)``) the descriptions know replaced by
    its display name, repeated display names told apart by their MID; other names unchanged."""
    mids = []
    for n in names:
        inner = n.rsplit(" (", 1)[-1].rstrip(")") if n.endswith(")") else ""
        mids.append(n if n in descriptions else inner if inner in descriptions else None)
    shown = display_names([m for m in mids if m], descriptions)
    it = iter(shown)
    return [next(it) if m else n for n, m in zip(names, mids)]


def class_aliases(mids: Sequence[str], names: Sequence[str], descriptions: Dict[str, str]) -> Dict[str, List[str]]:
    """Other names the dataset's classes answer to (a checkpoint may store MIDs or plain display
    names): MID -> class name, and a plain display name -> the class names it may be, in order."""
    aliases: Dict[str, List[str]] = {}
    for mid, name in zip(mids, names):
        aliases[mid] = [name]
        plain = descriptions.get(mid)
        if plain and plain != name:
            aliases.setdefault(plain, []).append(name)
    return aliases


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv
    except ImportError:
        raise DataError("Open Images' label files are read with pyarrow: pip install -r requirements.txt") from None
    return pa, pc, pacsv


def _check_header(path: Path) -> None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a label CSV ({e})") from None
    if header != HEADER:
        raise DataError(f"{path}: columns {header}, expected {','.join(HEADER)}")


def _batches(path: Path, columns=("ImageID", "LabelName", "Confidence")):
    """The label CSV in record batches of BLOCK_SIZE bytes (pyarrow's streaming reader): tens of millions
    of rows never sit in memory as strings at once."""
    pa, _, pacsv = _pyarrow()
    _check_header(path)
    try:
        reader = pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(block_size=BLOCK_SIZE),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(columns),
                column_types={"ImageID": pa.string(), "LabelName": pa.string(), "Confidence": pa.float64()},
                strings_can_be_null=False,
            ),
            # the system allocator gives a batch's memory back when it is done (the default pool
            # keeps it: about 0.5 GB more at the peak for 6.5 million rows)
            memory_pool=pa.system_memory_pool(),
        )
        yield from reader
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a label CSV ({str(e).splitlines()[0][:160]})") from None


_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _hex_ids(column) -> Optional[np.ndarray]:
    """Open Images' ImageIDs (16 hex digits) as uint64, read off the column's buffer without a
    Python string per row; None when some id is of another form."""
    _, pc, _ = _pyarrow()
    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if len(column) == 0 or pc.min_max(pc.utf8_length(column)).as_py() != {"min": 16, "max": 16}:
        return None
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset : column.offset + len(column) + 1]
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    nibbles = _HEX[data].reshape(-1, 16)
    if (nibbles == 255).any():
        return None
    out = np.zeros(len(column), dtype=np.uint64)
    for j in range(16):
        out = (out << np.uint64(4)) | nibbles[:, j].astype(np.uint64)
    return out


def read_image_labels(path: Path, class_index: Dict[str, int]) -> Tuple[np.ndarray, SparseLabels, Dict[str, int]]:
    """An image-level label file as (image ids, labels, rows left out per MID not in the class list).

    The ids are uint64 for Open Images' 16-hex-digit ids, else byte strings. A file whose rows are
    grouped by image in id order (the official ones) is indexed batch by batch: memory grows with
    the index (about 9 bytes a label), not with the rows' strings; any other order is sorted whole
    (about 30 bytes a row at the peak). Never with images x classes.

    Raises:
        DataError: other columns, a Confidence other than 0 or 1 (the machine-generated files carry
            fractions), one (image, class) labelled both 1 and 0, no labelled entry for any class.
    """
    c = len(class_index)
    for by_name in (False, True):
        grouped = _Grouped(path, c)
        try:
            left_out, names = _collect(path, class_index, by_name, grouped)
        except _MixedIds:  # ids of another form after Open Images' hex ones: all numbered by name
            continue
        if grouped.rows is None:  # not in image order: the rows were kept, sort them
            image, klass, value = (np.concatenate(a) for a in zip(*grouped.kept))
            grouped.kept = []
            if not len(image):
                raise DataError(f"{path}: no labelled entry for any class of the class list")
            ids, index = _number_images(image, names)
            del image
            return ids, _sparse(path, ids, index, klass, value, c), left_out
        ids, labels = grouped.finish(names)
        return ids, labels, left_out
    raise AssertionError("unreachable: numbering by name never mixes forms")


class _MixedIds(Exception):
    """A batch of ids not in Open Images' hex form after batches that were."""


class _Grouped:
    """The CSR index of a label file grouped by image in id order, built batch by batch: each
    batch's finished images are sorted by class, checked for repeats and split into positives and
    negatives; the last image's rows wait for the next batch (it may go on there). A batch out of
    order turns it off (``rows`` None) and the rows are kept whole for a sort."""

    def __init__(self, path: Path, num_classes: int):
        self.path, self.c = path, num_classes
        self.rows: Optional[int] = 0
        self.kept: List[Tuple[np.ndarray, ...]] = []  # every row so far, while the order is unknown
        self.carry = (np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.int8))
        self.last: Optional[int] = None
        self.parts: Dict[str, List[np.ndarray]] = {k: [] for k in ("ids", "npos", "nneg", "pos", "neg")}
        self.names: Dict[str, int] = {}  # ids not in the hex form, by number (filled by _collect)

    def add(self, image: np.ndarray, klass: np.ndarray, value: np.ndarray) -> None:
        if self.rows is None:
            self.kept.append((image, klass, value))
            return
        image, klass, value = (np.concatenate([a, b]) for a, b in zip(self.carry, (image, klass, value)))
        if len(image) and (
            bool((image[1:] < image[:-1]).any()) or (self.last is not None and int(image[0]) <= self.last)
        ):
            self.rows = None  # out of order: keep every row from the start for a sort
            self.kept = [self._rows_so_far(), (image, klass, value)]
            return
        n_done = int(np.searchsorted(image, image[-1])) if len(image) else 0
        self._finish_rows(image[:n_done], klass[:n_done], value[:n_done])
        self.carry = (image[n_done:], klass[n_done:], value[n_done:])

    def _rows_so_far(self) -> Tuple[np.ndarray, ...]:
        """The finished images' rows again (the order broke after them): from the index itself."""

        def part(key: str, dtype) -> np.ndarray:
            return np.concatenate(self.parts[key]) if self.parts[key] else np.zeros(0, dtype)

        ids, npos, nneg = part("ids", np.uint64), part("npos", np.int32), part("nneg", np.int32)
        pos, neg = part("pos", np.int32), part("neg", np.int32)
        self.parts = {k: [] for k in self.parts}
        image = np.concatenate([np.repeat(ids, npos), np.repeat(ids, nneg)])
        value = np.concatenate([np.ones(len(pos), np.int8), np.zeros(len(neg), np.int8)])
        return image, np.concatenate([pos, neg]), value

    def _finish_rows(self, image: np.ndarray, klass: np.ndarray, value: np.ndarray) -> None:
        if not len(image):
            return
        starts = np.empty(len(image), dtype=bool)
        starts[0], starts[1:] = True, image[1:] != image[:-1]
        local = np.cumsum(starts, dtype=np.int64) - 1
        ids = image[starts]
        labels = _sparse(self.path, ids, local, klass, value, self.c, self.names)
        self.parts["ids"].append(ids)
        self.parts["npos"].append(np.diff(labels.pos_indptr).astype(np.int32))
        self.parts["nneg"].append(np.diff(labels.neg_indptr).astype(np.int32))
        self.parts["pos"].append(labels.pos_indices)
        self.parts["neg"].append(labels.neg_indices)
        self.last = int(ids[-1])
        self.rows += len(image)

    def finish(self, names: Dict[str, int]) -> Tuple[np.ndarray, SparseLabels]:
        self._finish_rows(*self.carry)
        self.carry = ()
        if not self.rows:
            raise DataError(f"{self.path}: no labelled entry for any class of the class list")

        def joined(key: str) -> np.ndarray:
            out = np.concatenate(self.parts[key])
            self.parts[key] = []
            return out

        def indptr(counts: np.ndarray) -> np.ndarray:
            out = np.zeros(len(counts) + 1, dtype=np.int64)
            np.cumsum(counts, out=out[1:])
            return out

        ids = joined("ids")
        if names:  # numbered through the dictionary: give them back as strings
            ids = _names_of(ids, names)
        labels = SparseLabels(self.c, indptr(joined("npos")), joined("pos"), indptr(joined("nneg")), joined("neg"))
        return ids, labels


def _names_of(numbers: np.ndarray, names: Dict[str, int]) -> np.ndarray:
    by_number = np.empty(len(names), dtype=object)
    for text, k in names.items():
        by_number[k] = text
    return np.asarray(by_number[numbers.astype(np.int64)].tolist(), dtype="S")


def _collect(path: Path, class_index: Dict[str, int], by_name: bool, grouped: "_Grouped"):
    """Every row whose MID the class list holds, as (image id or number, class, value), into
    ``grouped``; returns the rows left out per other MID and the names of non-hex ids."""
    _, pc, _ = _pyarrow()
    left_out, names = {}, grouped.names
    seen_hex = False
    for batch in _batches(path):
        conf = batch.column("Confidence").to_numpy()
        odd = ~np.isin(conf, (0, 1))
        if odd.any():
            raise DataError(
                f"{path}: Confidence {float(conf[odd][0])!r} on {int(odd.sum())} rows of a batch; human-verified "
                f"labels are 0 or 1 (a machine-generated label file carries fractions: use the human-imagelabels files)"
            )
        mids = pc.dictionary_encode(batch.column("LabelName"))
        words = mids.dictionary.to_pylist()
        lookup = np.array([class_index.get(m, -1) for m in words], dtype=np.int32)
        klass = lookup[mids.indices.to_numpy(zero_copy_only=False)]
        keep = klass >= 0
        if not keep.all():
            for k, c in zip(*np.unique(mids.indices.to_numpy(zero_copy_only=False)[~keep], return_counts=True)):
                left_out[words[k]] = left_out.get(words[k], 0) + int(c)
        ids = None if by_name else _hex_ids(batch.column("ImageID"))
        if ids is None:  # ids of another form: numbered through a dictionary
            if seen_hex:
                raise _MixedIds()
            strings = batch.column("ImageID").to_pylist()
            ids = np.array([names.setdefault(x, len(names)) for x in strings], dtype=np.uint64)
        elif names:
            raise _MixedIds()
        else:
            seen_hex = True
        grouped.add(ids[keep], klass[keep], conf[keep].astype(np.int8))
    return left_out, names


def _number_images(image: np.ndarray, names: Dict[str, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(ids of the images in order, each row's image number). Rows grouped by image, as the
    official files are, are numbered in one pass; others through a sort."""
    if len(image) > 1 and bool((image[1:] >= image[:-1]).all()):
        starts = np.empty(len(image), dtype=bool)
        starts[0], starts[1:] = True, image[1:] != image[:-1]
        index = np.cumsum(starts, dtype=np.int64) - 1
        ids = image[starts]
    else:
        ids, index = np.unique(image, return_inverse=True)
    if names:  # ids were numbered through the dictionary: give them back as strings
        ids = _names_of(ids, names)
    return ids, index


def _sparse(
    path: Path,
    ids: np.ndarray,
    index: np.ndarray,
    klass: np.ndarray,
    value: np.ndarray,
    c: int,
    names: Optional[Dict[str, int]] = None,
):
    """CSR labels of (image number, class, value) rows; a pair given twice with one label counts
    once, with two labels is an error (``names``: the ids' texts where ``ids`` number them)."""
    key = index * c + klass
    if not bool((key[1:] > key[:-1]).all()):
        order = np.argsort(key, kind="stable")
        key, value = key[order], value[order]
        del order
    repeat = np.flatnonzero(key[1:] == key[:-1])
    clash = repeat[value[repeat] != value[repeat + 1]]
    if len(clash):
        bad = ids[int(key[clash[0]] // c)]
        if names:
            shown = next(text for text, k in names.items() if k == int(bad))
        else:
            shown = f"{int(bad):016x}" if ids.dtype == np.uint64 else bad.decode()
        raise DataError(
            f"{path}: image {shown} is labelled both 1 and 0 for {int(len(clash))} classes; keep one row per "
            f"image and class"
        )
    if len(repeat):
        keep = np.ones(len(key), dtype=bool)
        keep[repeat + 1] = False
        key, value = key[keep], value[keep]
    return SparseLabels.from_entries(len(ids), c, key // c, (key % c).astype(np.int32), value, presorted=True)


def class_list(root: Path, class_order: Optional[Sequence[str]] = None) -> Tuple[List[str], str]:
    """(MIDs in order, how the list was chosen): ``classes-trainable.txt``, else the checkpoint's
    classes (``class_order``: its names, MIDs or display names), else every MID with a positive in
    the training labels, sorted."""
    trainable = root / TRAINABLE
    if trainable.is_file():
        mids = [ln.strip() for ln in trainable.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not mids or not all(m.startswith("/") for m in mids):
            raise DataError(f"{trainable}: not a list of MIDs (one '/m/...' a line)")
        return mids, TRAINABLE
    if class_order:
        return mids_of(class_order, read_descriptions(root), "the checkpoint"), "the checkpoint's class order"
    source = label_file(root, "train") or next(label_file(root, s) for s in SPLITS if label_file(root, s))
    _, pc, _ = _pyarrow()
    mids = set()
    for batch in _batches(source, ("LabelName", "Confidence")):
        positive = pc.equal(batch.column("Confidence"), 1)
        mids.update(pc.unique(pc.filter(batch.column("LabelName"), positive)).to_pylist())
    return sorted(mids), f"the MIDs with a positive in {source.name}"


def create_openimages(
    root: str,
    split: str = "train",
    transform: Optional[Callable] = None,
    read: ReadOptions = DEFAULT_READ,
    class_order: Optional[Sequence[str]] = None,
) -> MultiLabelDataset:
    """A split of Open Images (module docstring): ``train``, ``validation`` or ``test``.

    Args:
        class_order: the class names of the checkpoint being validated or fine-tuned: the class list
            and order where the folder has no ``classes-trainable.txt``.

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
    mids, how = class_list(root_p, class_order)
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
    descriptions = read_descriptions(root_p)
    names = display_names(mids, descriptions)
    ds = MultiLabelDataset(
        IdPaths(root_p / split, ids), labels, names, transform, name=f"openimages {root} [{split}]", read=read
    )
    ds.class_aliases = class_aliases(mids, names, descriptions)
    return ds
