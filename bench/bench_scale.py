"""Open Images at its size: building the training index from a label CSV of Open Images' shape.

Writes a generated ``oidv6-train-annotations-human-imagelabels.csv`` (N images x 9,605 classes,
about 6.5 labelled classes per image, about half of them positive, Open Images' 16-hex-digit image
ids in order), then builds the index (:func:`asl.data.openimages.read_image_labels`) in a fresh
process and prints its peak memory (the process's maximum resident set) and seconds, beside what
the dense (N, C) float32 matrix the index replaces would take.

    python bench/bench_scale.py --images 1000000            # and --images 9000000 for the real size
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 9605


def write_csv(path: Path, images: int, per_image: float = 6.5, seed: int = 0) -> int:
    """The label CSV, written by pyarrow in chunks of 1M images. Returns its rows."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    mids = np.array([f"/m/{k:06x}" for k in range(CLASSES)])
    rows = 0
    with pacsv.CSVWriter(
        str(path),
        pa.schema(
            [("ImageID", pa.string()), ("Source", pa.string()), ("LabelName", pa.string()), ("Confidence", pa.int8())]
        ),
    ) as w:
        for start in range(0, images, 1_000_000):
            n = min(1_000_000, images - start)
            counts = rng.poisson(per_image - 1, n) + 1
            image = np.repeat(np.arange(start, start + n), counts)
            key = np.unique(image * CLASSES + rng.integers(0, CLASSES, len(image)))  # a class once per image
            image, klass = key // CLASSES, key % CLASSES
            ids = np.char.mod("%016x", image * 7919 + 13)
            table = pa.table(
                {
                    "ImageID": ids,
                    "Source": np.full(len(image), "verification"),
                    "LabelName": mids[klass],
                    "Confidence": (rng.random(len(image)) < 0.5).astype(np.int8),
                }
            )
            w.write_table(table)
            rows += len(image)
    return rows


def build(path: str) -> None:
    """In a fresh process: build the index, print its figures as JSON."""
    import resource

    sys.path.insert(0, str(ROOT))
    from asl.data.openimages import read_image_labels

    index = {f"/m/{k:06x}": k for k in range(CLASSES)}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the imports (PyTorch among them)
    t0 = time.perf_counter()
    ids, labels, _ = read_image_labels(Path(path), index)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(
        json.dumps(
            dict(
                images=len(ids),
                seconds=seconds,
                peak=peak,
                before=before,
                index_bytes=labels.nbytes + ids.nbytes,
                entries=int(len(labels.pos_indices) + len(labels.neg_indices)),
            )
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build(args.build)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "oidv6-train-annotations-human-imagelabels.csv"
        t0 = time.perf_counter()
        rows = write_csv(path, args.images)
        size = path.stat().st_size / 2**30
        print(
            f"generated {rows:,} rows for {args.images:,} images ({size:.2f} GiB) in {time.perf_counter() - t0:.0f} s"
        )
        out = subprocess.run(
            [sys.executable, __file__, "--build", str(path)], capture_output=True, text=True, check=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
    dense = args.images * CLASSES * 4
    print(
        f"index of {r['images']:,} images, {r['entries']:,} labels: {r['seconds']:.1f} s, peak memory "
        f"{r['peak'] / 2**30:.2f} GiB ({r['before'] / 2**30:.2f} GiB after the imports; the index itself "
        f"{r['index_bytes'] / 2**20:.0f} MiB); the dense "
        f"(N, C) float32 matrix it replaces: {dense / 2**30:,.0f} GiB"
    )


if __name__ == "__main__":
    main()
