"""What the ML-Decoder head costs against timm's linear head: parameters and eval forward time,
on this machine's CPU (float32, ``inference_mode``, median of ``--reps`` after warm-up).

Rows: TResNet-M 224 with 80 classes (ML-Decoder COCO: 80 groups, one query per class), the same
with 9,605 classes (ML-Decoder Open Images: 200 groups of 49), TResNet-L (v2) 448 with 80
classes, and resnet50 224 with 80 classes. Each row gives the whole model's time with each head
and the ratio ML-Decoder / linear (the named baseline), then each head alone on the backbone's
features (the linear head: global pooling and the classifier). Weights are random: speed does not depend on them.

    python bench/bench_heads.py [--reps 5] [--batch 8] [--threads N] [--skip-large]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asl.models import create_model  # noqa: E402


def timed(fns, x, reps: int) -> list:
    """Median seconds of each ``fn(x)`` over ``reps`` rounds, after one warm-up round; the
    functions take turns within each round, so drift of the machine hits all alike."""
    times = [[] for _ in fns]
    with torch.inference_mode():
        for fn in fns:
            fn(x)
        for _ in range(reps):
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn(x)
                times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def row(name: str, size: int, classes: int, groups, batch: int, reps: int) -> dict:
    torch.manual_seed(0)
    linear = create_model(name, classes).eval()
    decoder = create_model(name, classes, head="ml_decoder", num_groups=groups).eval()
    x = torch.rand(batch, 3, size, size)
    with torch.inference_mode():
        feats = decoder.forward_features(x)
    t_lin, t_dec = timed([linear, decoder], x, reps)
    # global pooling + the linear classifier, against the decoder, on the same features
    t_linear_head, t_head = timed([linear.forward_head, decoder.head], feats, reps)
    return {
        "model": f"{name} {size}",
        "classes": classes,
        "groups": decoder.head.groups,
        "linear params": params(linear),
        "ml_decoder params": params(decoder),
        "head params": params(decoder.head) - params(linear.get_classifier()),
        "linear ms": 1000 * t_lin / batch,
        "ml_decoder ms": 1000 * t_dec / batch,
        "head ms": 1000 * t_head / batch,
        "linear head ms": 1000 * t_linear_head / batch,
        "ratio": t_dec / t_lin,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--skip-large", action="store_true", help="skip TResNet-L (v2) at 448")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
        f"batch {args.batch}, float32, per-image ms (median of {args.reps})"
    )
    rows = [("tresnet_m", 224, 80, None), ("tresnet_m", 224, 9605, 200), ("resnet50", 224, 80, None)]
    if not args.skip_large:
        rows.insert(2, ("tresnet_v2_l", 448, 80, None))
    header = (
        f"{'model':>16} {'classes':>7} {'G':>4} | {'params linear':>13} {'ML-Decoder':>11} {'(+head)':>10} | "
        f"{'ms linear':>9} {'ML-Decoder':>10} | {'heads alone: linear':>19} {'ML-Decoder':>10} | {'ratio':>5}"
    )
    print(header)
    for name, size, classes, groups in rows:
        r = row(name, size, classes, groups, args.batch, args.reps)
        print(
            f"{r['model']:>16} {r['classes']:>7} {r['groups']:>4} | {r['linear params']:>13,} "
            f"{r['ml_decoder params']:>11,} {r['head params']:>+10,} | {r['linear ms']:>9.1f} "
            f"{r['ml_decoder ms']:>10.1f} | {r['linear head ms']:>19.2f} {r['head ms']:>10.2f} | {r['ratio']:>5.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
