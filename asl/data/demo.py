"""The built-in demo: COCO's label shape in miniature, generated with no download.

80 classes = 10 digits x 8 well-separated colours. Each 64x64 image has a dark
noisy background and 1-4 coloured handwritten digits (scikit-learn's bundled
``load_digits``, 8x8 glyphs upsampled to random sizes, pasted at random places,
overlaps allowed); classes follow Zipf-like frequencies, about 2.7 labels per
image, about 3.4% of the labels positive. Train and val draw from disjoint
source digits. The set is written once into ``data/demo/`` in the custom tagged
format (``labels.csv`` with a split column, ``classes.txt``, PNG files), so the
demo runs through the real tagged loader. Deterministic given the seed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from PIL import Image

from ..errors import DataError
from ..files import output_error
from .base import DEFAULT_READ, ReadOptions
from .tagged import create_tagged

log = logging.getLogger(__name__)

COLOURS = {
    "red": (235, 40, 40),
    "green": (40, 200, 60),
    "blue": (60, 100, 255),
    "yellow": (240, 225, 40),
    "cyan": (40, 225, 225),
    "magenta": (225, 50, 225),
    "white": (245, 245, 245),
    "orange": (255, 140, 0),
}
CLASS_NAMES = [f"{colour}_{digit}" for digit in range(10) for colour in COLOURS]
# 2: demo.json lists every file the generator wrote with its SHA-256 (the folder's manifest).
VERSION = 2
PARAMS = ("num_train", "num_val", "image_size", "seed", "num_classes", "single_label")
DEFAULTS = dict(num_train=4000, num_val=1000, image_size=64, seed=0, num_classes=80, single_label=False)
MARKER = "demo.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> Dict[str, Path]:
    """Every entry below ``root`` by its relative POSIX path (folders end with '/')."""
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        out[rel + "/" if p.is_dir() and not p.is_symlink() else rel] = p
    return out


def _zipf_probs(num_classes: int, rng: np.random.Generator, exponent: float = 1.0) -> np.ndarray:
    ranks = rng.permutation(num_classes) + 1.0
    p = ranks**-exponent
    return p / p.sum()


def _render(rng, glyphs, glyph_labels, class_probs, num_classes, size, single_label=False):
    """One image and its label set (one glyph, one class, for the single-label demo)."""
    n_colours = num_classes // 10
    colours = np.array(list(COLOURS.values()), dtype=np.float32)
    canvas = rng.uniform(0, 35, size=3).astype(np.float32) + rng.normal(0, 8, size=(size, size, 3)).astype(np.float32)
    k = 1 if single_label else rng.choice([1, 2, 3, 4], p=[0.1, 0.25, 0.35, 0.3])
    labels = set()
    for cls in rng.choice(num_classes, size=k, p=class_probs):
        digit, colour = divmod(int(cls), n_colours)  # class = digit * n_colours + colour
        pool = np.flatnonzero(glyph_labels == digit)
        glyph = glyphs[rng.choice(pool)]
        s = int(rng.integers(size // 4, size // 2 + 1))
        alpha = (
            np.asarray(
                Image.fromarray((glyph * 15.9375).astype(np.uint8)).resize((s, s), Image.BILINEAR), dtype=np.float32
            )[..., None]
            / 255.0
        )
        y0, x0 = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
        region = canvas[y0 : y0 + s, x0 : x0 + s]
        canvas[y0 : y0 + s, x0 : x0 + s] = region * (1 - alpha) + colours[colour] * alpha
        labels.add(int(cls))
    return np.clip(canvas, 0, 255).astype(np.uint8), sorted(labels)


def generate_demo(
    root: str | os.PathLike,
    num_train: int = 4000,
    num_val: int = 1000,
    image_size: int = 64,
    seed: int = 0,
    num_classes: int = 80,
    single_label: bool = False,
) -> Path:
    """Write the demo dataset into ``root`` (atomically: a temporary folder, then a rename).

    Args:
        root: target folder (``data/demo``).
        num_train, num_val: images per split.
        image_size: side of the square images.
        seed: the generator's seed.
        num_classes: 80 (10 digits x 8 colours), or a multiple of 10 up to 80 for sparser or
            denser variants (the first ``num_classes // 10`` colours).
        single_label: one glyph per picture, its class drawn from the same Zipf law (a long tail:
            the commonest of 80 classes about 80 times the rarest), for ``--task single-label``.
    """
    from sklearn.datasets import load_digits

    if num_classes % 10 or not 10 <= num_classes <= 80:
        raise ValueError("num_classes must be a multiple of 10 between 10 and 80")
    root = Path(root)
    check_demo_folder(root, replace=True)  # before any work: a folder that is not the demo is never replaced
    log.info("generating the demo dataset into %s (once, a few seconds)", root)
    n_colours = num_classes // 10
    names = [f"{colour}_{digit}" for digit in range(10) for colour in list(COLOURS)[:n_colours]]
    digits = load_digits()
    rng = np.random.default_rng(seed)
    # Disjoint source glyphs for train and val: val measures generalization to new handwriting.
    perm = rng.permutation(len(digits.images))
    n_src_val = len(perm) // 5
    sources = {"val": perm[:n_src_val], "train": perm[n_src_val:]}
    class_probs = _zipf_probs(num_classes, rng)

    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    except OSError as e:
        raise output_error(root, e) from None
    try:
        rows = []
        for split, count in (("train", num_train), ("val", num_val)):
            (tmp / "images" / split).mkdir(parents=True)
            glyphs, glyph_labels = digits.images[sources[split]], digits.target[sources[split]]
            for i in range(count):
                img, labels = _render(rng, glyphs, glyph_labels, class_probs, num_classes, image_size, single_label)
                rel = f"images/{split}/{i:06d}.png"
                Image.fromarray(img).save(tmp / rel, compress_level=1)
                rows.append((rel, "|".join(names[k] for k in labels), split))
        with open(tmp / "labels.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image", "labels", "split"])
            w.writerows(rows)
        (tmp / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
        files = {rel: _sha256(p) for rel, p in sorted(_tree(tmp).items()) if not rel.endswith("/")}
        meta = dict(
            version=VERSION,
            num_train=num_train,
            num_val=num_val,
            image_size=image_size,
            seed=seed,
            num_classes=num_classes,
            single_label=single_label,
            files=files,
        )
        (tmp / MARKER).write_text(json.dumps(meta, indent=0), encoding="utf-8")
        if root.exists():
            check_demo_folder(root, replace=True)  # again, just before the swap
            shutil.rmtree(root)  # the demo exactly as generated (every file in its manifest), or an empty folder
        os.replace(tmp, root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(root, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def read_marker(root: Path) -> Optional[dict]:
    """The parameters in ``root/demo.json``, or None where there is no readable marker."""
    try:
        meta = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _params(meta: Optional[dict]) -> Optional[dict]:
    # a marker written before single-label demos existed is a multi-label one
    return None if meta is None else {k: meta.get(k, False if k == "single_label" else None) for k in PARAMS}


def _changes(root: Path, meta: dict) -> list:
    """What in ``root`` is not the demo as generated: files added, removed or changed since."""
    files = meta.get("files")
    if not isinstance(files, dict):
        return [f"{MARKER} lists no files (written by an older version)"]
    tree = _tree(root)
    listed = set(files) | {MARKER}
    extra = sorted(
        rel for rel in tree if rel not in listed and not (rel.endswith("/") and any(f.startswith(rel) for f in files))
    )
    changed = sorted(
        rel
        for rel, digest in files.items()
        if rel not in tree or not tree[rel].is_file() or _sha256(tree[rel]) != digest
    )
    return [f"{rel} added" for rel in extra] + [f"{rel} changed or removed" for rel in changed]


def check_demo_folder(root: Path, num_classes: Optional[int] = None, replace: bool = False) -> None:
    """Refuse a folder the demo would write into unless it is missing, empty, or the demo exactly
    as the generator wrote it: every file below it listed in its ``demo.json`` with an unchanged
    SHA-256, nothing added. The demo never deletes or overwrites a user's file.

    Args:
        root: the demo's folder.
        num_classes: the demo asked for: an identical demo (same parameters) is used as it is
            and never rewritten, so only a different one is checked file by file.
        replace: the folder is about to be replaced (check it file by file).
    """
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(f"{root} is a file, not the demo's folder; for your own data pass --dataset tagged")
    if not any(root.iterdir()):
        return
    meta = read_marker(root)
    if meta is None:
        raise DataError(
            f"{root} is not the built-in demo (no {MARKER}) and was left untouched: for your own "
            f"labels.csv pass --dataset tagged (or coco, voc, nuswide)"
        )
    if not replace and (num_classes is None or _params(meta) == dict(DEFAULTS, num_classes=num_classes)):
        return  # used as it is: nothing is written
    changes = _changes(root, meta)
    if changes:
        raise DataError(
            f"{root} holds the demo and other files or changes ({', '.join(changes[:3])}"
            f"{', ...' if len(changes) > 3 else ''}), so it is not regenerated: move them out, or pass "
            f"another --data-root for the demo"
        )


def ensure_demo(root: str | os.PathLike, **params) -> Path:
    """Generate the demo into ``root`` unless an identical one (same parameters) is there.

    ``root`` must be missing, empty or the demo as generated (:func:`check_demo_folder`)."""
    root = Path(root)
    want = dict(DEFAULTS, **params)
    if _params(read_marker(root)) == want and (root / "labels.csv").is_file():
        return root
    return generate_demo(root, **want)


def create_demo(
    root: str = "data/demo",
    split: str = "train",
    transform=None,
    demo_classes: int = 80,
    read: ReadOptions = DEFAULT_READ,
):
    """The demo dataset, read by the tagged loader. Building it reads only: the folder is
    generated by an explicit step, :func:`ensure_demo` (``python -m asl.data.demo``; the training
    and validation commands take that step for the demo themselves).

    Args:
        root: where the demo lives (``data/demo``).
        split: ``train`` or ``val``.
        transform: PIL image -> tensor.
        demo_classes: 80 (the default benchmark) or a multiple of 10 for a denser variant.
        read: how pictures are read (:class:`~asl.data.base.ReadOptions`).

    Raises:
        DataError: ``root`` holds no demo, or one generated with other parameters.
    """
    root_p = Path(root)
    meta = read_marker(root_p)
    if meta is None or not (root_p / "labels.csv").is_file():
        raise DataError(
            f"no demo dataset in {root}: generate it with `python -m asl.data.demo {root}` (train.py does this itself)"
        )
    if meta.get("num_classes") != demo_classes:
        raise DataError(
            f"{root} holds the {meta.get('num_classes')}-class demo, not the {demo_classes}-class one: "
            f"`python -m asl.data.demo {root} --classes {demo_classes}` regenerates it"
        )
    return create_tagged(
        str(root),
        split=split,
        transform=transform,
        read=read,
    )


def main(argv=None) -> int:
    """``python -m asl.data.demo [ROOT] [--classes N]``: generate the demo (once; an identical
    one is kept). ROOT must be missing, empty or an earlier demo."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m asl.data.demo", description=main.__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="data/demo", help="target folder (default: data/demo)")
    ap.add_argument("--classes", type=int, default=80, help="80, or a multiple of 10 in [10, 80]")
    ap.add_argument("--single-label", action="store_true", help="one class per picture, long-tailed")
    args = ap.parse_args(argv)
    if args.classes % 10 or not 10 <= args.classes <= 80:
        raise DataError("--classes must be a multiple of 10 in [10, 80]")
    root = ensure_demo(args.root, num_classes=args.classes, single_label=args.single_label)
    kind = ", single-label" if args.single_label else ""
    print(f"demo dataset ({args.classes} classes{kind}) in {root}")
    return 0


if __name__ == "__main__":
    import sys

    from .. import cli

    cli.setup_logging()
    sys.exit(cli.run(main))
