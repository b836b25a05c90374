"""Open Images at its size: the training index, the evaluation, one partial-label training step.

``--images N`` (the index): writes a generated ``oidv6-train-annotations-human-imagelabels.csv``
(N images x 9,605 classes, about 6.5 labelled classes per image, about half of them positive,
Open Images' 16-hex-digit image ids in order), then builds the index
(:func:`asl.data.openimages.read_image_labels`) in a fresh process and prints its peak memory (the
process's maximum resident set) and seconds, beside what the dense (N, C) float32 matrix the index
replaces would take.

``--evaluate N`` (the evaluation): N test images x 9,605 classes with the same label density are
scored in batches of 256 (random scores) and evaluated twice, each in a fresh numpy-only process:
keeping only the labelled entries (``asl.labelled``: what validate.py does past 10^8 entries) and
keeping the dense (N, C) scores and targets (the masked dense mAP); prints each one's seconds and
peak memory above the process's start, and whether their mAPs agree bit for bit. ``--dense-cap``
bounds the dense process's address space (GiB): past it, the dense evaluation is reported as not
fitting rather than taking the machine down.

``--step`` (the loss): one forward and backward of ``asl.PartialAsymmetricLoss`` at (32, 9,605) in
each unknown-label mode, in a fresh process each: the growth of the process's peak memory, in MiB
and in (32, 9,605) float32 tensors.

    python bench/bench_scale.py --images 1000000            # and --images 9000000 for the real size
    python bench/bench_scale.py --evaluate 125436           # Open Images' test split
    python bench/bench_scale.py --step
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
    sys.path.insert(0, str(ROOT))
    from asl.data.openimages import read_image_labels

    index = {f"/m/{k:06x}": k for k in range(CLASSES)}
    before = _peak()  # the imports (PyTorch among them)
    t0 = time.perf_counter()
    ids, labels, _ = read_image_labels(Path(path), index)
    seconds = time.perf_counter() - t0
    peak = _peak()
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


def _peak() -> int:
    """This process's peak resident memory in bytes: VmHWM, which starts afresh with the process's
    program (``ru_maxrss`` carries over the parent's peak through fork and exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def evaluate_in_process(images: int, dense: bool, per_image: float = 6.5, seed: int = 0, batch: int = 256) -> None:
    """In a fresh process: score ``images`` x 9,605 in batches, evaluate, print the figures as JSON."""
    sys.path.insert(0, str(ROOT))
    from asl.labelled import ScoreCollector
    from asl.metrics import evaluation_result

    rng = np.random.default_rng(seed)
    counts = rng.poisson(per_image - 1, images) + 1
    indptr = np.zeros(images + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    klass = rng.integers(0, CLASSES, int(indptr[-1])).astype(np.int32)  # a repeat overwrites: fine here
    value = (rng.random(len(klass)) < 0.5).astype(np.float32)
    collected = ScoreCollector(images, CLASSES, dense_limit=images * CLASSES if dense else 0)
    before, busy = _peak(), 0.0
    for a in range(0, images, batch):
        b = min(a + batch, images)
        scores = rng.random((b - a, CLASSES), dtype=np.float32)  # the model's output: not timed
        targets = np.full((b - a, CLASSES), -1.0, dtype=np.float32)
        rows = np.repeat(np.arange(b - a), counts[a:b])
        targets[rows, klass[indptr[a] : indptr[b]]] = value[indptr[a] : indptr[b]]
        t0 = time.perf_counter()
        collected.add(scores, targets)
        busy += time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = evaluation_result(collected, busy)
    busy += time.perf_counter() - t0
    print(json.dumps(dict(seconds=busy, peak=_peak() - before, mAP=ev["mAP"], entries=len(ev["labelled"]))))


def step_in_process(mode: str, batch: int = 32) -> None:
    """In a fresh process: one forward and backward of the partial-label loss; prints the peak's growth."""
    sys.path.insert(0, str(ROOT))
    import torch

    from asl import PartialAsymmetricLoss

    torch.manual_seed(0)
    prior = torch.rand(CLASSES) if mode == "selective" else None
    loss = PartialAsymmetricLoss(
        partial_loss_mode=mode, prior=prior, prior_threshold=0.5 if prior is not None else None
    )
    logits = torch.randn(batch, CLASSES, requires_grad=True)
    targets = torch.full((batch, CLASSES), -1.0)
    targets[torch.rand(batch, CLASSES) < 7 / CLASSES] = 1.0
    targets[torch.rand(batch, CLASSES) < 7 / CLASSES] = 0.0
    warm = PartialAsymmetricLoss(partial_loss_mode="negative")(torch.randn(2, 3, requires_grad=True), torch.zeros(2, 3))
    warm.backward()  # the allocator and autograd's first-call costs, outside the measure
    before = _peak()
    loss(logits, targets).backward()
    print(json.dumps(dict(peak=_peak() - before, tensor=batch * CLASSES * 4)))


def _child(*argv: str, cap_gib: float = 0) -> dict:
    """Run this script with ``argv`` in a fresh process (its address space capped at ``cap_gib``);
    its JSON line, or None when it ran out of memory."""
    pre = None
    if cap_gib:
        import resource

        cap = int(cap_gib * 2**30)
        pre = lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # noqa: E731
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, preexec_fn=pre)
    if out.returncode != 0:
        if "MemoryError" in out.stderr or "Unable to allocate" in out.stderr:
            return None
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_evaluations(images: int, cap_gib: float) -> None:
    sparse = _child("--evaluate-in", str(images), "--labelled")
    print(
        f"evaluation of {images:,} images x {CLASSES:,} classes ({sparse['entries']:,} labelled entries): labelled "
        f"entries only {sparse['seconds']:.1f} s, peak +{sparse['peak'] / 2**30:.2f} GiB, mAP {sparse['mAP']:.4f}"
    )
    dense = _child("--evaluate-in", str(images), cap_gib=cap_gib)
    if dense is None:
        print(f"  dense (N, C) scores and targets: did not fit in {cap_gib:g} GiB of address space")
        return
    print(
        f"  dense (N, C) scores and targets: {dense['seconds']:.1f} s, peak +{dense['peak'] / 2**30:.2f} GiB, "
        f"mAP {dense['mAP']:.4f} (labelled-only: {dense['seconds'] / sparse['seconds']:.1f}x faster, "
        f"{dense['peak'] / max(sparse['peak'], 1):.0f}x less memory; the same mAP bit for bit: "
        f"{dense['mAP'] == sparse['mAP']})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=None, help="build the training index of this many images")
    ap.add_argument("--evaluate", type=int, default=None, help="evaluate this many test images, two ways")
    ap.add_argument("--dense-cap", type=float, default=20.0, help="the dense evaluation's address space, GiB")
    ap.add_argument("--step", action="store_true", help="one partial-label loss step per unknown-label mode")
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--evaluate-in", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--labelled", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--step-in", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build(args.build)
        return
    if args.evaluate_in:
        evaluate_in_process(args.evaluate_in, dense=not args.labelled)
        return
    if args.step_in:
        step_in_process(args.step_in)
        return
    if args.evaluate:
        compare_evaluations(args.evaluate, args.dense_cap)
    if args.step:
        for mode in ("negative", "ignore", "ignore_normalize_classes", "selective"):
            r = _child("--step-in", mode)
            print(
                f"loss step at (32, {CLASSES:,}), {mode}: peak +{r['peak'] / 2**20:.1f} MiB "
                f"({r['peak'] / r['tensor']:.1f} (32, {CLASSES:,}) float32 tensors)"
            )
    if args.images is None:
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
