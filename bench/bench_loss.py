"""Loss forward+backward time and bytes saved for backward, float32 on the CPU.

Compares ``asl.AsymmetricLoss`` (fused analytic backward) with
  (a) a plain transcription of the official ``AsymmetricLossOptimized`` formula,
  (b) ``timm.loss.AsymmetricLossMultiLabel(reduction="sum")``,
  (c) ``F.binary_cross_entropy_with_logits`` as the floor,
at the official training recipe's setting (gamma_neg=4, gamma_pos=0, clip=0.05,
focusing weights detached). Repetitions are interleaved A/B/C/D, the median is
reported, and every ratio is to (a) measured in the same run.

    python bench/bench_loss.py [--threads 1] [--reps 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asl.losses import AsymmetricLoss  # noqa: E402
from bench.official import official_asymmetric_loss_optimized as official_optimized  # noqa: E402

SHAPES = [(128, 80), (128, 1000), (64, 9605), (1024, 9605)]
PARAMS = dict(gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8)


def saved_bytes(fn, x, y) -> int:
    """Bytes of distinct tensors autograd keeps for backward of fn(x, y)."""
    seen = {}

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    x = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x, y)
    out.backward()
    # The inputs themselves count too when saved (they are kept alive by the graph).
    return sum(seen.values())


def time_step(fn, x, y) -> float:
    x = x.detach().requires_grad_()
    t0 = time.perf_counter()
    fn(x, y).backward()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours = AsymmetricLoss(disable_torch_grad_focal_loss=True, reduction="sum", **PARAMS)
    try:
        from timm.loss import AsymmetricLossMultiLabel

        timm_loss = AsymmetricLossMultiLabel(disable_torch_grad_focal_loss=True, reduction="sum", **PARAMS)
    except ImportError:
        timm_loss = None

    impls = {
        "official": lambda x, y: official_optimized(x, y),
        "ours": ours,
        "timm": timm_loss,
        "bce": lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="sum"),
    }
    impls = {k: v for k, v in impls.items() if v is not None}

    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, reps={args.reps}, "
        f"ASL gamma_neg=4 gamma_pos=0 clip=0.05 detached, float32 CPU"
    )
    header = (
        f"{'shape':>12} | "
        + " | ".join(f"{k:>9} ms" for k in impls)
        + " | ours/official | timm/official | bce/official"
    )
    print(header)
    print("-" * len(header))
    mem_rows = []
    for n, c in SHAPES:
        x = torch.randn(n, c) * 3
        y = (torch.rand(n, c) < 0.034).float()
        for fn in impls.values():  # warm-up
            time_step(fn, x, y)
        times = {k: [] for k in impls}
        for _ in range(args.reps):
            for k, fn in impls.items():
                times[k].append(time_step(fn, x, y))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        ratios = " | ".join(
            f"{med[k] / med['official']:>13.2f}" if k in med else f"{'n/a':>13}" for k in ("ours", "timm", "bce")
        )
        print(f"{str((n, c)):>12} | " + " | ".join(f"{med[k]:>12.3f}" for k in impls) + f" | {ratios}")
        nbytes = {k: saved_bytes(fn, x, y) for k, fn in impls.items()}
        mem_rows.append(((n, c), nbytes, n * c * 4))
    print()
    print("bytes saved for backward, in (N, C) float32 tensors")
    print(f"{'shape':>12} | " + " | ".join(f"{k:>9}" for k in impls))
    for shape, nbytes, unit in mem_rows:
        print(f"{str(shape):>12} | " + " | ".join(f"{nbytes[k] / unit:>9.2f}" for k in impls))


if __name__ == "__main__":
    main()
