"""``asl-data convert SRC --output NEW``: any dataset format to our ``labels.csv`` + ``classes.txt``.

The new folder must not exist yet (or be empty) and may not lie inside the source's folder (the
folder of its label file, when a file is named): nothing of the source is written. ``labels.csv``
names each picture by its path relative to the new folder, with ``image,labels,split`` (the split
the source gives, or the seeded ``--val-fraction`` hold-out ``train.py`` would draw). Unknown
labels (-1) have no spelling in ``labels.csv``: they are written as negatives, and their count is
said.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..errors import ConfigError, DataError
from ..files import atomic_write

log = logging.getLogger(__name__)

__all__ = ["convert_dataset", "main"]


def convert_dataset(
    root: str, output: str, dataset: str = "auto", tag_separator: Optional[str] = None, val_fraction: float = 0.2
) -> Dict[str, Any]:
    """Write ``root``'s labels as ``output/labels.csv`` and ``output/classes.txt``.

    Returns:
        dict with ``dataset`` (the format read), ``images``, ``classes``, ``splits`` (rows per split),
        ``unknown_as_negative``, ``labels_csv``.
    """
    from ..outputs import CONVERSION
    from ..rundir import claim, dataset_source

    if not Path(root).exists():
        raise DataError(f"data folder not found: {root}")
    with claim(output, CONVERSION, sources=dataset_source(root)) as out:
        return _convert(root, out.resolve(), dataset, tag_separator, val_fraction)


def _convert(root: str, out: Path, dataset: str, tag_separator: Optional[str], val_fraction: float) -> Dict[str, Any]:
    from . import dataset_splits, default_splits
    from .detect import detect_dataset

    if dataset == "auto":
        dataset, why = detect_dataset(root)
        log.info("--dataset auto: %s (%s)", dataset, why)
    parts = dataset_splits(dataset, root, tag_separator, val_fraction)
    train_split, eval_split = default_splits(dataset)
    ours = {train_split: "train", eval_split: "val"}  # labels.csv's split names; any other is test
    classes = next(iter(parts.values())).class_names
    bad = [c for c in classes if "|" in c or "\n" in c]
    if bad:
        raise DataError(f"class name {bad[0]!r} holds '|' or a line break, which labels.csv cannot spell")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "labels", "split"])
    unknown, counts = 0, {}
    for split, ds in parts.items():
        name = ours.get(split, "test")
        counts[name] = len(ds)
        for i, path in enumerate(ds.paths):
            row = ds.labels.row(i)
            unknown += int((row < 0).sum())
            tags = "|".join(c for c, v in zip(classes, row) if v == 1)
            w.writerow([os.path.relpath(path, out), tags, name])
    atomic_write(out / "classes.txt", "".join(c + "\n" for c in classes))
    atomic_write(out / "labels.csv", buf.getvalue())
    if unknown:
        log.warning("warning: %d unknown labels (-1) are written as negatives: labels.csv has no unknown", unknown)
    return {
        "dataset": dataset,
        "images": sum(counts.values()),
        "classes": len(classes),
        "splits": counts,
        "unknown_as_negative": unknown,
        "labels_csv": str(out / "labels.csv"),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .. import cli

    cfg = cli.data_config("convert", __doc__.split("\n\n")[0], argv, "(required) a new folder")
    if not cfg.output:
        raise ConfigError("pass --output NEW_FOLDER: convert writes labels.csv and classes.txt into a new folder")
    r = convert_dataset(cfg.data_root, cfg.output, cfg.dataset, cfg.tag_separator, cfg.val_fraction)
    splits = ", ".join(f"{k} {v}" for k, v in r["splits"].items())
    print(f"{cfg.data_root} ({r['dataset']}): {r['images']} images ({splits}), {r['classes']} classes")
    print(f"  -> {r['labels_csv']}")
    return 0


if __name__ == "__main__":
    from .. import cli

    raise SystemExit(cli.run(main))
