"""Look before you train: ``asl-data inspect DIR`` (also ``python -m asl.data.inspect DIR``).

Reads a dataset in any format (``--dataset auto`` by default). It reports:
- images found, missing and unreadable;
- the classes and their positives;
- labels per image and the positive fraction;
- the splits, and pictures in more than one;
- duplicate pictures (same bytes);
- a suggested ASL starting point, with its reason.

It writes ``positives.png`` (positives per class, log scale) and ``summary.json`` into
``--output`` (default ``runs/inspect-<data folder>``, never inside the dataset).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import DataError
from ..files import atomic_write
from ..images import load_rgb
from ..plots import plain_labels

__all__ = ["Inspection", "inspect_dataset", "suggest_loss", "format_inspection", "write_inspection", "main"]

COCO_POSITIVE_FRACTION = 2.9 / 80  # MS-COCO 2014: 2.9 labels per image over 80 classes


@dataclass
class Inspection:
    """What ``asl-data inspect`` found (``summary.json``)."""

    root: str
    dataset: str
    detected_by: str
    splits: Dict[str, int]
    images: int
    missing: List[str]
    unreadable: List[str]
    classes: List[str]
    positives: List[int]
    unknown_labels: int
    labels_per_image: Dict[str, float]
    positive_fraction: float
    in_two_splits: List[str]
    duplicates: List[List[str]]
    suggestion: Dict[str, Any] = field(default_factory=dict)
    long_tail: Dict[str, float] = field(default_factory=dict)


def long_tail(positives: Sequence[int]) -> Dict[str, float]:
    """How long the tail is: the share of the positives the commonest fifth of the classes holds
    (``head_share``), the share the rarer half holds (``tail_share``), and the ratio of the
    commonest class to the rarest one that has any (``imbalance``)."""
    counts = np.sort(np.asarray(positives, dtype=np.float64))[::-1]
    total = counts.sum()
    if not total:
        return {"head_share": 0.0, "tail_share": 0.0, "imbalance": 0.0}
    head = max(1, int(round(0.2 * len(counts))))
    tail = len(counts) // 2
    nonzero = counts[counts > 0]
    return {
        "head_share": float(counts[:head].sum() / total),
        "tail_share": float(counts[len(counts) - tail :].sum() / total) if tail else 0.0,
        "imbalance": float(nonzero[0] / nonzero[-1]),
    }


def suggest_loss(positive_fraction: float, rare: int, num_classes: int) -> Dict[str, Any]:
    """A starting point for ASL (γ−, γ+, clip) from how dense the labels are, with its reason.

    The paper's 4 / 0 / 0.05 is tuned for sparse labels, where negatives far outnumber positives
    (MS-COCO: 3.6% positive). Denser labels leave fewer easy negatives to down-weight, so γ− goes
    down. The paper notes that γ− too high for the data hurts the positives' gradient.
    """
    pct = 100 * positive_fraction
    if positive_fraction <= 0.1:
        s = dict(gamma_neg=4, gamma_pos=0, clip=0.05)
        why = (
            f"sparse labels ({pct:.1f}% positive, MS-COCO has {100 * COCO_POSITIVE_FRACTION:.1f}%): the paper's "
            f"setting, which down-weights the many easy negatives"
        )
    elif positive_fraction <= 0.3:
        s = dict(gamma_neg=2, gamma_pos=0, clip=0.05)
        why = (
            f"moderately dense labels ({pct:.1f}% positive): fewer easy negatives than MS-COCO, so less "
            f"focusing on them (gamma- 2)"
        )
    else:
        s = dict(gamma_neg=1, gamma_pos=0, clip=0.0)
        why = (
            f"dense labels ({pct:.1f}% positive): negatives are not the majority, so little asymmetry "
            f"(gamma- 1, no clip; compare with --loss bce)"
        )
    if rare:
        why += (
            f"; {rare} of {num_classes} classes have fewer than 5 positives: their AP will be noisy; "
            f"label more of them if you can"
        )
    flags = f"--gamma-neg {s['gamma_neg']} --gamma-pos {s['gamma_pos']} --clip {s['clip']}"
    return {**s, "flags": flags, "reason": why}


def _sha1(path: str) -> Optional[str]:
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def inspect_dataset(
    root: str,
    dataset: str = "auto",
    tag_separator: Optional[str] = None,
    val_fraction: float = 0.2,
    read_images: bool = True,
) -> Inspection:
    """Read a dataset's labels (and, with ``read_images``, decode every picture) and summarise them.

    Args:
        root: the dataset's folder (or labels file).
        dataset: a format name, or ``auto`` (:func:`asl.data.detect.detect_dataset`).
        tag_separator, val_fraction: the dataset options of ``train.py``.
        read_images: decode every picture to find the unreadable ones (else only missing ones).
    """
    from . import ReadOptions, dataset_splits
    from .detect import detect_dataset

    if not Path(root).exists():
        raise DataError(f"data folder not found: {root}")
    detected_by = "--dataset"
    if dataset == "auto":
        dataset, detected_by = detect_dataset(root)
    # every picture may be bad here: inspect reports them, it does not stop at a limit
    every = ReadOptions(max_bad_fraction=1.0, max_bad_images=10**9)
    parts = dataset_splits(dataset, root, tag_separator, val_fraction, every)
    first = next(iter(parts.values()))
    classes = first.class_names
    paths = [p for ds in parts.values() for p in ds.paths]
    labels = [ds.labels for ds in parts.values()]
    missing = [p for p in paths if not os.path.isfile(p)]
    unreadable = []
    if read_images:
        for p in paths:
            if os.path.isfile(p):
                try:
                    load_rgb(p)
                except DataError:
                    unreadable.append(p)
    per_image = np.concatenate([lab.positives_per_image() for lab in labels]) if labels else np.zeros(0, int)
    seen: Dict[str, List[str]] = defaultdict(list)
    for ds_name, ds in parts.items():
        for p in ds.paths:
            seen[os.path.realpath(p)].append(ds_name)
    by_hash: Dict[str, List[str]] = defaultdict(list)
    for real in seen:
        digest = _sha1(real)
        if digest is not None:
            by_hash[digest].append(real)
    positives = [int(v) for v in sum(lab.positives() for lab in labels)]
    known = int(sum(lab.labelled().sum() for lab in labels))
    fraction = float(sum(positives) / known) if known else 0.0
    return Inspection(
        root=str(root),
        dataset=dataset,
        detected_by=detected_by,
        splits={s: len(ds) for s, ds in parts.items()},
        images=len(paths),
        missing=missing,
        unreadable=unreadable,
        classes=list(classes),
        positives=positives,
        unknown_labels=int(sum(lab.unknown() for lab in labels)),
        labels_per_image={
            "mean": float(per_image.mean()) if len(per_image) else 0.0,
            "min": int(per_image.min()) if len(per_image) else 0,
            "max": int(per_image.max()) if len(per_image) else 0,
            "none": int((per_image == 0).sum()),
        },
        positive_fraction=fraction,
        in_two_splits=sorted(p for p, s in seen.items() if len(set(s)) > 1),
        duplicates=sorted(sorted(v) for v in by_hash.values() if len(v) > 1),
        suggestion=(
            {
                "flags": "--task single-label",
                "reason": "every picture has exactly one class: a softmax model with the single-label ASL "
                "(gamma- 4, gamma+ 0, label smoothing 0.1)",
            }
            if len(per_image) and int(per_image.min()) == int(per_image.max()) == 1
            else suggest_loss(fraction, sum(1 for k in positives if k < 5), len(classes))
        ),
        long_tail=long_tail(positives),
    )


def format_inspection(r: Inspection) -> str:
    """The summary in a few lines a person can read."""

    def first(items: Sequence[str], k: int = 3) -> str:
        return ", ".join(items[:k]) + (f" (+{len(items) - k} more)" if len(items) > k else "")

    order = np.argsort(r.positives, kind="stable")
    rare = ", ".join(f"{r.classes[i]} ({r.positives[i]})" for i in order[:3])
    common = ", ".join(f"{r.classes[i]} ({r.positives[i]})" for i in order[::-1][:3])
    lpi = r.labels_per_image
    lines = [
        f"{r.root}: {r.dataset} ({r.detected_by}); {r.images} images in "
        + ", ".join(f"{s} {n}" for s, n in r.splits.items()),
        f"  missing {len(r.missing)}, unreadable {len(r.unreadable)}"
        + (f": {first(r.missing + r.unreadable)}" if r.missing or r.unreadable else ""),
        f"  {len(r.classes)} classes; rarest: {rare}; most common: {common}",
        f"  labels per image: mean {lpi['mean']:.2f}, min {lpi['min']}, max {lpi['max']}, "
        f"{lpi['none']} images without any; {100 * r.positive_fraction:.1f}% of the labels are positive"
        + (f"; {r.unknown_labels} unknown" if r.unknown_labels else ""),
    ]
    if r.in_two_splits:
        lines.append(f"  leak: {len(r.in_two_splits)} pictures are in two splits: {first(r.in_two_splits)}")
    if r.duplicates:
        lines.append(
            f"  duplicates: {len(r.duplicates)} groups of identical pictures, e.g. {' = '.join(r.duplicates[0][:2])}"
        )
    t = r.long_tail
    if t:
        lines.append(
            f"  long tail: the commonest 20% of the classes hold {100 * t['head_share']:.0f}% of the labels, the "
            f"rarer half {100 * t['tail_share']:.0f}%; commonest / rarest class {t['imbalance']:.0f}x"
        )
    lines.append(f"  suggested start: {r.suggestion['flags']} ({r.suggestion['reason']})")
    return "\n".join(lines)


@plain_labels
def write_inspection(r: Inspection, out: Path) -> Dict[str, Path]:
    """``summary.json`` and ``positives.png`` (positives per class, sorted, log scale) into ``out``."""
    from ..plots import _pyplot, log_scale

    written = {"summary": out / "summary.json", "chart": out / "positives.png"}
    atomic_write(written["summary"], json.dumps(asdict(r), indent=1))
    plt = _pyplot()
    order = np.argsort(r.positives)[::-1]
    fig, ax = plt.subplots(figsize=(max(6, min(0.18 * len(r.classes), 40)), 4))
    ax.bar(range(len(order)), [max(r.positives[i], 0.8) for i in order], color="#3b6ea8")
    log_scale(ax, "y")
    ax.set_ylabel("positives (log scale)")
    t = r.long_tail or long_tail(r.positives)
    ax.set_title(
        f"{Path(r.root).name}: positives per class ({len(r.classes)} classes); commonest 20%: "
        f"{100 * t['head_share']:.0f}% of the labels, rarer half: {100 * t['tail_share']:.0f}%"
    )
    if len(order) <= 60:
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([r.classes[i] for i in order], rotation=90, fontsize=7)
    else:
        ax.set_xlabel("classes, most to least frequent")
    fig.tight_layout()
    atomic_write(written["chart"], writer=lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .. import cli
    from ..outputs import INSPECTION
    from ..rundir import claim, dataset_folder, dataset_source

    cfg = cli.data_config("inspect", __doc__.split("\n\n")[0], argv, "runs/inspect-<data folder>", extra=["overwrite"])
    root = Path(cfg.data_root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    out = Path(cfg.output) if cfg.output else Path("runs") / f"inspect-{dataset_folder(root).resolve().name}"
    with claim(out, INSPECTION, overwrite=cfg.overwrite, sources=dataset_source(root)):
        result = inspect_dataset(str(root), cfg.dataset, cfg.tag_separator, cfg.val_fraction)
        print(format_inspection(result))
        written = write_inspection(result, out)
    print(f"  chart -> {written['chart']}, summary -> {written['summary']}")
    return 0


if __name__ == "__main__":
    from .. import cli

    raise SystemExit(cli.run(main))
