"""mAP time: ``asl.metrics.mAP`` against the official per-class loop and scikit-learn.

Shapes are the evaluation sets of the paper's datasets (COCO val2014, VOC 2007
test, NUS-WIDE val) and a 1000-class case, with COCO-like sparsity (about 3% of
labels positive; NUS-WIDE about 2.4%). Scores are random floats (tie-free), so
the official value is defined and ours must equal it to 1e-6. Repetitions are
interleaved, medians reported, ratios relative to the official loop measured in
the same run.

    python bench/bench_map.py [--reps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.official import official_map  # noqa: E402

SHAPES = [((40137, 80), 0.036), ((4952, 20), 0.07), ((83898, 81), 0.024), ((20000, 1000), 0.01)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads for asl.metrics (the official loop and sklearn are single-threaded)",
    )
    ap.add_argument(
        "--scores",
        choices=("random", "model"),
        default="random",
        help="random: uniform scores (the worst case); model: positives mostly ranked above",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from sklearn.metrics import average_precision_score

    from asl import metrics

    metrics_threads = args.threads
    orig = os.cpu_count
    os.cpu_count = lambda: metrics_threads  # asl.metrics sizes its pool from cpu_count

    impls = {
        "official": official_map,
        "ours": metrics.mAP,
        "sklearn": lambda t, p: 100 * average_precision_score(t, p, average="macro"),
    }
    print(f"numpy {np.__version__}, asl.metrics threads={metrics_threads}, reps={args.reps}, scores={args.scores}")
    print(
        f"{'shape':>14} | {'official s':>10} | {'ours s':>8} | {'sklearn s':>9} | "
        f"{'speed-up vs official':>20} | {'vs sklearn':>10} | {'|ours - official|':>17}"
    )
    try:
        for (n, c), frac in SHAPES:
            rng = np.random.default_rng(0)
            targs = (rng.random((n, c)) < frac).astype(np.float32)
            targs[0] = 1  # every class has a positive, so sklearn's macro AP is defined
            # Tie-free within each class: a random permutation of 0..N-1 per column,
            # exact in float32 (N < 2**24); random float32 draws would tie.
            if args.scores == "random":
                preds = (rng.permuted(np.tile(np.arange(n), (c, 1)), axis=1).T / n).astype(np.float32)
            else:  # a trained model's shape: positives mostly above negatives; ranks keep it tie-free
                raw = targs * 2.0 + rng.normal(size=(n, c))
                preds = (np.argsort(np.argsort(raw, axis=0), axis=0) / n).astype(np.float32)
            times = {k: [] for k in impls}
            values = {}
            for _ in range(args.reps):
                for k, fn in impls.items():
                    t0 = time.perf_counter()
                    values[k] = fn(targs, preds)
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            diff = abs(values["ours"] - values["official"])
            print(
                f"{str((n, c)):>14} | {med['official']:>10.4f} | {med['ours']:>8.4f} | {med['sklearn']:>9.4f} | "
                f"{med['official'] / med['ours']:>19.2f}x | {med['sklearn'] / med['ours']:>9.2f}x | {diff:>17.2e}"
            )
    finally:
        os.cpu_count = orig


if __name__ == "__main__":
    main()
