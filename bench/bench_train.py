"""Training throughput: ``asl.engine.train_one_epoch`` against a minimal hand-written loop.

Same model, loss (ASL 4/0/0.05, sum), optimizer (Adam) and DataLoader for both; the engine
adds autocast (off on the CPU), the non-finite check, the OneCycle step and the per-step
bookkeeping (and, in a second row, the EMA update). Runs alternate A/B and the median
images/s of the repetitions is reported, with the engine's data-wait share of step time.

    python bench/bench_train.py [--steps 20] [--reps 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asl.builders import build_optimizer, build_scheduler  # noqa: E402
from asl.data import ReadOptions, build_transform, create_dataset  # noqa: E402
from asl.data.demo import ensure_demo  # noqa: E402
from asl.engine import Optimization, train_one_epoch  # noqa: E402
from asl.losses import AsymmetricLoss  # noqa: E402
from asl.models import create_model, data_config  # noqa: E402


class Limited:
    """The first ``n`` batches of a loader, with ``len`` and ``dataset`` as the engine expects."""

    def __init__(self, loader, n):
        self.loader, self.n, self.dataset = loader, n, loader.dataset

    def __iter__(self):
        return islice(iter(self.loader), self.n)

    def __len__(self):
        return self.n


def minimal_loop(model, loader, loss_fn, opt):
    model.train()
    n = 0
    t0 = time.perf_counter()
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        n += x.shape[0]
    return n / (time.perf_counter() - t0), None


def engine_loop(model, loader, loss_fn, opt, ema=None):
    sched = build_scheduler(opt, 1e-4, 1, len(loader))
    t0 = time.perf_counter()
    stats = train_one_epoch(model, loader, Optimization(loss_fn, opt, sched, ema), torch.device("cpu"), print_freq=0)
    elapsed = time.perf_counter() - t0
    n = stats["steps"] * loader.loader.batch_size
    return n / elapsed, stats["data_time"] / elapsed


def bench(name, model_name, ds, batch, steps, reps, workers):
    model = create_model(model_name, ds.num_classes)
    opt = build_optimizer(model, "adam", 1e-4, 1e-4)
    loss_fn = AsymmetricLoss(4, 0, 0.05)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0
    )
    lim = Limited(loader, steps)
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=0.9997)
    runs = {
        "minimal": lambda: minimal_loop(model, lim, loss_fn, opt),
        "engine": lambda: engine_loop(model, lim, loss_fn, opt),
        "engine+EMA": lambda: engine_loop(model, lim, loss_fn, opt, ema),
    }
    for f in runs.values():  # warm-up: workers, allocator, first-step costs
        f()
    res = {k: [] for k in runs}
    for _ in range(reps):
        for k, f in runs.items():
            res[k].append(f())
    med = {k: statistics.median(v[0] for v in vals) for k, vals in res.items()}
    data_share = statistics.median(v[1] for v in res["engine"])
    print(
        f"{name:>28} | {med['minimal']:>9.1f} | {med['engine']:>9.1f} | {med['engine+EMA']:>10.1f} | "
        f"{med['engine'] / med['minimal']:>14.2f} | {med['engine+EMA'] / med['minimal']:>18.2f} | "
        f"{100 * data_share:>9.1f}%"
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--coco-root", default="/tmp/asl_bench_coco")
    ap.add_argument("--skip-tresnet", action="store_true")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, workers={args.workers}, "
        f"{args.steps} steps x {args.reps} reps, CPU"
    )
    print(
        f"{'run':>28} | {'minimal':>9} | {'engine':>9} | {'engine+EMA':>10} | {'engine/minimal':>14} | "
        f"{'engine+EMA/minimal':>18} | {'data wait':>10}"
    )
    mean, std = data_config("resnet10t")
    ensure_demo("data/demo")  # the explicit generation step (once)
    demo = create_dataset(
        "demo", "data/demo", "train", build_transform(True, 64, mean, std), ReadOptions(draft_size=64)
    )
    bench("demo resnet10t 64px b64", "resnet10t", demo, 64, args.steps, args.reps, args.workers)
    if not args.skip_tresnet:
        from bench_data import make_coco_layout

        root = make_coco_layout(Path(args.coco_root), 2000)
        ds = create_dataset(
            "coco",
            str(root),
            "val2014",
            build_transform(True, 224, augment="cutout_randaugment"),
            ReadOptions(draft_size=224),
        )
        bench("tresnet_m 224px b16", "tresnet_m", ds, 16, max(args.steps // 4, 3), args.reps, args.workers)


if __name__ == "__main__":
    main()
