"""GPU training and loss speed, in one run on one GPU: the engine against the official-style loop, and the loss.

Training (images/s after warm-up, peak memory), for TResNet-M 224 (batch 128) and TResNet-L 448
(batch 32), on synthetic batches already on the GPU and on generated COCO-layout JPEGs through
the real loader (data-wait share):

- the official-style loop: fp16 autocast + GradScaler, torch Adam with the official weight-decay
  groups, the official AsymmetricLoss operations (bench/official.py), the official per-tensor EMA;
- ``asl.engine.train_one_epoch`` as the trainer runs it on CUDA (bf16 where supported, fused Adam
  with the step skipped on the device, timm's ModelEmaV3), without and with channels_last, and
  with channels_last + ``torch.compile`` (its warm-up time printed).

Loss forward + backward (ms, peak extra memory in (N, C) float32 units, host synchronizations)
at (1024, 9605), (4096, 9605) and (128, 80), float32 and bf16 logits: the official formula,
timm's AsymmetricLossMultiLabel, ours, ``torch.compile`` of the official formula, and eager
``binary_cross_entropy_with_logits(reduction="sum")``; ratios to BCE.

    python bench/bench_gpu.py                       # on CUDA; --budget-s 480 (the default) bounds the run
    python bench/bench_gpu.py --device cpu --tiny   # every code path on tiny shapes (a smoke test, no figures)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asl import functional as AF  # noqa: E402
from asl.builders import amp_dtype_for, build_optimizer, build_scheduler  # noqa: E402
from asl.data import ReadOptions, build_transform, create_dataset  # noqa: E402
from asl.engine import Optimization, StepSettings, train_one_epoch  # noqa: E402
from asl.losses import AsymmetricLoss  # noqa: E402
from asl.models import create_model  # noqa: E402
from asl.options import ASLOptions  # noqa: E402
from bench.bench_train import Limited  # noqa: E402
from bench.official import official_asymmetric_loss  # noqa: E402

LOSS = dict(gamma_neg=4.0, gamma_pos=0.0, clip=0.05)


class Clock:
    """The run's time budget: each row checks it before it starts."""

    def __init__(self, budget_s: float):
        self.end = time.perf_counter() + budget_s

    def left(self) -> float:
        return self.end - time.perf_counter()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return 0


def peak_gib(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


class Synthetic:
    """``n`` steps of one batch already on the device (what the step costs without the loader)."""

    def __init__(self, x, y, n):
        self.x, self.y, self.n = x, y, n
        self.dataset = self

    bad_count = 0

    def __iter__(self):
        return iter([(self.x, self.y)] * self.n)

    def __len__(self):
        return self.n


class OfficialEma:
    """The official ModelEma: a deep copy updated tensor by tensor."""

    def __init__(self, model, decay=0.9997):
        self.module, self.decay = copy.deepcopy(model).eval(), decay

    @torch.no_grad()
    def update(self, model):
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            e.copy_(self.decay * e + (1.0 - self.decay) * m)


def official_param_groups(model, weight_decay=1e-4):
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def official_loop(model, batches, device, steps):
    """img/s of the official training step over ``batches`` (fp16 + GradScaler on CUDA)."""
    opt = torch.optim.Adam(official_param_groups(model), lr=1e-4)
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    ema = OfficialEma(model)
    model.train()
    n, t0 = 0, None
    for i, (x, y) in enumerate(batches):
        if i == steps // 4:  # the first quarter is warm-up
            sync(device)
            n, t0 = 0, time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            logits = model(x)
        loss = official_asymmetric_loss(logits.float(), y, **LOSS)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        ema.update(model)
        n += x.shape[0]
    sync(device)
    return n / (time.perf_counter() - t0)


def engine_loop(model, loader, device, steps, channels_last):
    """(img/s, data-wait share) of ``train_one_epoch`` as the trainer runs it on this device."""
    from timm.utils import ModelEmaV3

    cuda = device.type == "cuda"
    opt = build_optimizer(model, "adam", 1e-4, 1e-4, fused=cuda)
    sched = build_scheduler(opt, 1e-4, 2, steps)
    ema = ModelEmaV3(model, decay=0.9997)
    how = StepSettings(amp_dtype=amp_dtype_for(device, True), channels_last=channels_last, defer_sync=cuda)
    step = Optimization(AsymmetricLoss(**LOSS), opt, sched, ema)
    train_one_epoch(model, Limited(loader, max(steps // 4, 1)), step, device, how, print_freq=0)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    stats = train_one_epoch(model, Limited(loader, steps), step, device, how, print_freq=0)
    sync(device)
    wall = time.perf_counter() - t0
    return stats["steps"] * loader_batch(loader) / wall, stats["data_time"] / wall


def loader_batch(loader):
    return loader.x.shape[0] if isinstance(loader, Synthetic) else loader.batch_size


def training_table(args, device, clock):
    rows = [("tresnet_m", 224, 128), ("tresnet_l", 448, 32)] if not args.tiny else [("test_resnet", 32, 8)]
    print(
        f"\n{'model':>12} {'size':>4} {'batch':>5} | {'run':<32} | {'img/s':>7} | {'vs official':>11} | "
        f"{'data wait':>9} | {'peak GiB':>8}"
    )
    for name, size, batch in rows:
        torch.manual_seed(0)
        x = torch.randn(batch, 3, size, size, device=device)
        y = (torch.rand(batch, 80, device=device) < 0.05).float()
        base = synthetic = None
        variants = [("official-style loop", None), ("engine (default)", False), ("engine + channels_last", True)]
        if args.compile:
            variants.append(("engine + channels_last + compile", "compile"))
        for label, mode in variants:
            if clock.left() < 30:
                print(f"{name:>12} {size:>4} {batch:>5} | {label:<32} | skipped: the time budget is spent")
                continue
            model = create_model(name, 80).to(device)
            peak_reset(device)
            t0 = time.perf_counter()
            if mode is None:
                speed, wait = official_loop(model, [(x, y)] * (args.steps + args.steps // 4), device, args.steps), None
                base = speed
            else:
                cl = mode is not False
                if cl:
                    model = model.to(memory_format=torch.channels_last)
                net = torch.compile(model) if mode == "compile" else model
                speed, wait = engine_loop(net, Synthetic(x, y, args.steps), device, args.steps, cl)
                if mode is True:
                    synthetic = speed
                if mode == "compile":
                    label += f" ({time.perf_counter() - t0:.0f} s incl. compile)"
            ratio = f"{speed / base:.2f}" if base else "-"
            print(
                f"{name:>12} {size:>4} {batch:>5} | {label:<32} | {speed:>7.1f} | {ratio:>11} | "
                f"{'-' if wait is None else f'{100 * wait:.1f}%':>9} | {peak_gib(device):>8.2f}"
            )
            del model
        if args.jpeg_images and clock.left() > 60:
            from bench_data import make_coco_layout

            root = make_coco_layout(Path(args.coco_root), args.jpeg_images)
            ds = create_dataset(
                "coco",
                str(root),
                "val2014",
                build_transform(True, size, augment="cutout_randaugment"),
                ReadOptions(draft_size=size),
            )
            loader = torch.utils.data.DataLoader(
                ds,
                batch_size=batch,
                shuffle=True,
                drop_last=True,
                num_workers=args.workers,
                pin_memory=device.type == "cuda",
                persistent_workers=args.workers > 0,
            )
            steps = min(args.jpeg_steps, len(loader))
            model = create_model(name, len(ds.class_names)).to(device).to(memory_format=torch.channels_last)
            speed, wait = engine_loop(model, _Repeat(loader, steps + steps // 4), device, steps, True)
            print(
                f"{name:>12} {size:>4} {batch:>5} | {'engine + channels_last, JPEGs':<32} | {speed:>7.1f} | "
                f"{'-':>11} | {100 * wait:>8.1f}% | {peak_gib(device):>8.2f}   ({args.workers} workers, "
                f"{steps} steps; {speed / synthetic:.2f} of the synthetic-batch rate)"
                if synthetic
                else ")"
            )


class _Repeat:
    """A loader re-iterated until ``n`` batches have been drawn (a short data set, many steps)."""

    def __init__(self, loader, n):
        self.loader, self.n, self.dataset, self.batch_size = loader, n, loader.dataset, loader.batch_size

    def __iter__(self):
        def gen():
            left = self.n
            while left > 0:
                for b in self.loader:
                    yield b
                    left -= 1
                    if left == 0:
                        return

        return gen()

    def __len__(self):
        return self.n


def time_loss(fn, x, y, device, reps):
    """(median ms of forward + backward, peak extra memory in (N, C) float32 units, host syncs)."""
    for _ in range(2):
        fn(x, y).backward()
        x.grad = None
    sync(device)
    times = []
    for _ in range(reps):
        base = peak_reset(device)
        t0 = time.perf_counter()
        fn(x, y).backward()
        sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
        extra = (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else float("nan")
        x.grad = None
    syncs = float("nan")
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn(x, y).backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
        x.grad = None
    return statistics.median(times), extra / (x.numel() * 4), syncs


def loss_table(args, device, clock):
    from timm.loss import AsymmetricLossMultiLabel

    shapes = [
        (1024, 9605, torch.float32),
        (4096, 9605, torch.float32),
        (128, 80, torch.float32),
        (1024, 9605, torch.bfloat16),
        (128, 80, torch.bfloat16),
    ]
    if args.tiny:
        shapes = [(64, 80, torch.float32), (64, 80, torch.bfloat16)]
    ours = AsymmetricLoss(**LOSS)
    timm_loss = AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=0, clip=0.05)
    fns = {
        "official": lambda x, y: official_asymmetric_loss(x.float(), y, **LOSS),
        "timm": lambda x, y: timm_loss(x.float(), y),
        "ours": lambda x, y: ours(x, y),
        # the fused value-and-gradient kernel the CPU takes, forced here: what the tensor-only path
        # (no host synchronization) costs or saves on this device
        "ours, fused path": lambda x, y: AF._FusedASL.apply(
            x, y, AF._Opts(ASLOptions(gamma_neg=4.0, gamma_pos=0.0, clip=0.05), None, None)
        ),
        "bce": lambda x, y: F.binary_cross_entropy_with_logits(x.float(), y, reduction="sum"),
    }
    if args.compile:
        fns["compiled official"] = torch.compile(fns["official"])
    print(f"\n{'shape':>14} {'dtype':>8} | " + " | ".join(f"{k:>22}" for k in fns) + " | ours/bce")
    for n, c, dtype in shapes:
        if clock.left() < 20:
            print(f"({n}, {c}) {dtype}: skipped, the time budget is spent")
            continue
        torch.manual_seed(0)
        x = (3 * torch.randn(n, c, device=device)).to(dtype).requires_grad_()
        y = (torch.rand(n, c, device=device) < 0.05).float()
        res = {k: time_loss(f, x, y, device, args.reps) for k, f in fns.items()}
        cells = [
            f"{ms:7.3f} ms {mem:4.1f}x {s:>2} sync".replace("nanx", "  -x").replace("nan sync", " - sync")
            for ms, mem, s in res.values()
        ]
        print(
            f"{str((n, c)):>14} {str(dtype).split('.')[-1]:>8} | "
            + " | ".join(f"{cl:>22}" for cl in cells)
            + f" | {res['ours'][0] / res['bce'][0]:8.2f}"
        )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke test of every code path")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per training row (after a quarter warm-up)")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions per loss cell")
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the torch.compile rows (their warm-up is part of the budget)",
    )
    ap.add_argument("--jpeg-images", type=int, default=1200, help="generated COCO-layout JPEGs (0: no JPEG rows)")
    ap.add_argument("--jpeg-steps", type=int, default=200)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--coco-root", default="/tmp/asl_bench_coco")
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting rows after this many seconds")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-loss", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    clock = Clock(args.budget_s)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {card}, budget {args.budget_s:.0f} s")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as asl.trainer.fit sets it on CUDA
    if not args.skip_training:
        training_table(args, device, clock)
    if not args.skip_loss:
        loss_table(args, device, clock)
    print(f"\ntotal {args.budget_s - clock.left():.0f} s")


if __name__ == "__main__":
    main()
