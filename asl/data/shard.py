"""``asl-data shard SRC OUT``: any dataset we read, written as tar shards in the webdataset layout.

Into the new folder ``OUT`` (never into or over ``SRC``), for each split the source holds:

- ``{split}-000000.tar``, ``{split}-000001.tar``, ... of at most ``--shard-size`` bytes each (one
  sample always fits), the samples in a seeded shuffled order. Each sample is ``KEY.<ext>``, the
  picture's own bytes (``--resize-short N``: re-encoded as a JPEG of short side N), and ``KEY.json``:
  ``{"pos": [...], "neg": [...], "unk": [...], "name": "..."}``, class indices (``neg`` only for data
  that name negatives, ``unk`` only for unknown labels of data whose unlisted classes are negatives),
  ``name`` the picture's path under ``SRC``, ``index`` its place in the source's split.
- ``classes.txt``, one class a line, and ``_info.json`` in timm's layout (``splits.{name}.{num_samples,
  filenames, shard_lengths}``) plus ``classes_sha256``, ``unlisted`` (what a class a sample's JSON
  does not list is: 0, a negative, or -1, unknown), each split's positives and labelled entries per
  class, ``train_split`` / ``eval_split``, the source, its format and ``complete``; and per split
  ``_order-{split}.npy``, each sample's place in the source split (evaluation puts the scores back in
  that order, so ties rank as on the folder).

Each shard is written to a temporary file and renamed when whole; ``_info.json`` is rewritten after
every shard and lists whole shards only, with ``complete`` false until the last one, so a killed run
leaves nothing a reader could take for a finished set. An unreadable picture is skipped and named,
and counted against the dataset's bad-image limits.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..classes import classes_sha256
from ..errors import ConfigError, DataError
from ..files import atomic_write
from ..outputs import INFO_FILE

log = logging.getLogger(__name__)

__all__ = ["shard_dataset", "INFO", "main"]

INFO = INFO_FILE
FORMAT = "asl-shards/1"


def shard_dataset(
    root: str,
    output: str,
    dataset: str = "auto",
    seed: int = 0,
    shard_size: int = 10**9,
    resize_short: Optional[int] = None,
    tag_separator: Optional[str] = None,
    val_fraction: float = 0.2,
) -> Dict[str, Any]:
    """Write ``root``'s splits as shards into the new folder ``output`` (module docstring).

    Returns:
        dict with ``dataset`` (the format read), ``splits`` (split -> samples written), ``shards``
        (split -> tar count), ``skipped`` (unreadable pictures), ``seconds``, ``info`` (the path).
    """
    from ..outputs import SHARDING
    from ..rundir import claim, dataset_source

    if not Path(root).exists():
        raise DataError(f"data folder not found: {root}")
    if shard_size < 1:
        raise ConfigError("--shard-size must be at least 1 byte")
    with claim(output, SHARDING, sources=dataset_source(root)) as out:
        return _shard(root, out.resolve(), dataset, seed, shard_size, resize_short, tag_separator, val_fraction)


def _shard(root, out: Path, dataset, seed, shard_size, resize_short, tag_separator, val_fraction):
    from . import dataset_splits, default_splits
    from .detect import detect_dataset
    from .labels import SparseLabels

    if dataset == "auto":
        dataset, why = detect_dataset(root)
        log.info("--dataset auto: %s (%s)", dataset, why)
    parts = dataset_splits(dataset, root, tag_separator, val_fraction)
    classes = next(iter(parts.values())).class_names
    first = next(iter(parts.values())).labels
    unlisted = -1 if isinstance(first, SparseLabels) and first.unlisted == -1 else 0
    train_split, eval_split = default_splits(dataset)
    info: Dict[str, Any] = {
        "format": FORMAT,
        "name": Path(root).name,
        "source": str(Path(root).resolve()),
        "source_format": dataset,
        "num_classes": len(classes),
        "classes_sha256": classes_sha256(classes),
        "unlisted": unlisted,
        "train_split": train_split,
        "eval_split": eval_split if eval_split in parts else train_split,
        "seed": seed,
        "resize_short": resize_short,
        "complete": False,
        "splits": {},
    }
    atomic_write(out / "classes.txt", "".join(c + "\n" for c in classes))
    t0 = time.perf_counter()
    written, skipped = {}, 0
    for split, ds in parts.items():
        order = np.random.default_rng([seed, len(written)]).permutation(len(ds))
        n, bad = _write_split(ds, split, order, out, info, shard_size, resize_short, unlisted, Path(root))
        written[split], skipped = n, skipped + bad
    info["complete"] = True
    atomic_write(out / INFO, json.dumps(info, indent=1))
    return {
        "dataset": dataset,
        "splits": written,
        "shards": {s: len(v["filenames"]) for s, v in info["splits"].items()},
        "skipped": skipped,
        "seconds": time.perf_counter() - t0,
        "info": str(out / INFO),
    }


def _write_split(ds, split, order, out: Path, info, shard_size, resize_short, unlisted, root: Path) -> Tuple[int, int]:
    """One split's shards; returns (samples written, pictures skipped)."""
    from tqdm import tqdm

    c = len(ds.class_names)
    entry = {"name": split, "num_samples": 0, "filenames": [], "shard_lengths": []}
    entry["positives"] = [0] * c
    entry["labelled"] = [0] * c
    info["splits"][split] = entry
    stats = {"positives": np.zeros(c, np.int64), "labelled": np.zeros(c, np.int64)}
    stream = _Stream(_samples(ds, order, resize_short, unlisted, root))
    bar = tqdm(total=len(order), desc=f"shard {split}", unit="img", disable=None)
    counts: List[int] = []
    while stream.head is not None:
        name = f"{split}-{len(entry['filenames']):06d}.tar"
        atomic_write(out / name, writer=lambda f: counts.append(_fill(f, stream, shard_size, stats, bar)))
        entry["filenames"].append(name)
        entry["shard_lengths"].append(counts[-1])
        entry["num_samples"] += counts[-1]
        entry["positives"], entry["labelled"] = stats["positives"].tolist(), stats["labelled"].tolist()
        atomic_write(out / INFO, json.dumps(info, indent=1))  # lists whole shards only
    bar.close()
    # each sample's place in the source split: evaluation puts its scores back in the source's order,
    # so ties rank as they do on the folder and the metrics are the folder's to the last bit
    written = np.asarray(stream.written, dtype=np.int64)
    entry["source_order"] = f"_order-{split}.npy"
    atomic_write(out / entry["source_order"], writer=lambda f: np.save(f, written))
    atomic_write(out / INFO, json.dumps(info, indent=1))
    return entry["num_samples"], len(order) - entry["num_samples"]


class _Stream:
    """The samples still to write, the next one at hand (it may open the next shard)."""

    def __init__(self, samples: Iterator):
        self.samples = samples
        self.written: List[int] = []  # the source index of each sample written
        self.head = next(samples, None)

    def advance(self) -> None:
        self.written.append(self.head[5])
        self.head = next(self.samples, None)


def _fill(f, stream: _Stream, shard_size: int, stats: Dict[str, np.ndarray], bar) -> int:
    """Write samples into one tar on ``f`` until the next would pass ``shard_size``; returns how many."""
    count = size = 0
    with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        while stream.head is not None:
            key, ext, picture, label_json, row, _ = stream.head
            need = len(picture) + len(label_json) + 2048  # two headers and their padding, at most
            if count and size + need > shard_size:
                break
            _add(tar, f"{key}{ext}", picture)
            _add(tar, f"{key}.json", label_json)
            size += need
            count += 1
            stats["positives"][row == 1] += 1
            stats["labelled"][row >= 0] += 1
            bar.update(1)
            stream.advance()
    return count


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 0  # no clock in the bytes: the same input, the same tar
    tar.addfile(ti, io.BytesIO(data))


def _samples(ds, order, resize_short, unlisted, root: Path) -> Iterator[Tuple[str, str, bytes, bytes, np.ndarray, int]]:
    """(key, extension, picture bytes, label JSON, label row, source index) of each readable sample,
    in ``order``."""
    for pos, i in enumerate(order):
        try:
            picture, ext = _picture(ds, int(i), resize_short)
        except DataError as e:
            ds._record_bad(int(i), e)  # named, counted against the limits as when training
            continue
        row = ds.labels.row(int(i))
        labels: Dict[str, Any] = {"pos": np.flatnonzero(row == 1).tolist()}
        if unlisted == -1:
            labels["neg"] = np.flatnonzero(row == 0).tolist()
        elif (row == -1).any():
            labels["unk"] = np.flatnonzero(row == -1).tolist()
        path = str(ds.paths[int(i)])
        try:
            labels["name"] = os.path.relpath(path, root) if root.is_dir() else os.path.basename(path)
        except ValueError:  # another drive
            labels["name"] = os.path.basename(path)
        labels["index"] = int(i)
        yield f"{pos:09d}", ext, picture, json.dumps(labels, separators=(",", ":")).encode(), row, int(i)


def _picture(ds, i: int, resize_short: Optional[int]) -> Tuple[bytes, str]:
    """Sample ``i``'s picture: its own bytes (checked to decode), or re-encoded at ``resize_short``."""
    img = ds.load_image(i)  # raises DataError for a missing, truncated or corrupt picture
    if resize_short is None:
        path = str(ds.paths[i])
        with open(path, "rb") as f:
            data = f.read()
        ext = os.path.splitext(path)[1].lower() or ".jpg"
        return data, ext
    from PIL import Image

    w, h = img.size
    scale = resize_short / min(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), ".jpg"


def main(argv: Optional[Sequence[str]] = None) -> int:
    import sys

    from .. import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and not argv[0].startswith("-") and not argv[1].startswith("-"):
        argv[1:2] = ["--output", argv[1]]  # asl-data shard SRC OUT
    cfg = cli.data_config(
        "shard",
        __doc__.split("\n\n")[0],
        argv,
        "(required) a new folder",
        extra=["seed", "shard_size", "resize_short"],
    )
    if not cfg.output:
        raise ConfigError("pass --output NEW_FOLDER: shard writes its tars into a new folder")
    r = shard_dataset(
        cfg.data_root,
        cfg.output,
        cfg.dataset,
        cfg.seed,
        cfg.shard_size,
        cfg.resize_short,
        cfg.tag_separator,
        cfg.val_fraction,
    )
    splits = ", ".join(f"{k} {v} in {r['shards'][k]} shards" for k, v in r["splits"].items())
    print(f"{cfg.data_root} ({r['dataset']}): {splits}; {r['skipped']} skipped; {r['seconds']:.1f} s")
    print(f"  -> {r['info']}")
    return 0


if __name__ == "__main__":
    from .. import cli

    raise SystemExit(cli.run(main))
