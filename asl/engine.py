"""Training and evaluation steps: ``train_one_epoch`` and ``evaluate``.

Both take explicit objects and return dicts. One AMP code path: the forward
runs under ``torch.autocast(..., enabled=...)`` and the loss is computed on
float32 logits; a GradScaler is used only for fp16.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from .distributed import EpochSampler  # noqa: F401  (its former home)
from .errors import ASLError
from .metrics import map_and_ap
from .models import unwrap_model

log = logging.getLogger(__name__)

__all__ = ["amp_dtype_for", "build_optimizer", "build_scheduler", "train_one_epoch", "evaluate", "seed_everything",
           "get_rng_state", "set_rng_state", "NonFiniteLossError"]


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def amp_dtype_for(device: torch.device, enabled: bool) -> Optional[torch.dtype]:
    """Autocast dtype: bf16 on CUDA where supported, else fp16; None (off) on the CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """timm's optimizer factory; no weight decay on biases and 1-D parameters (as official)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt=name, lr=lr, weight_decay=weight_decay, filter_bias_and_bn=True)


def build_scheduler(optimizer: torch.optim.Optimizer, lr: float, epochs: int, steps_per_epoch: int,
                    pct_start: float = 0.2):
    """OneCycle over the planned ``epochs`` (the official recipe plans 80, stops at 40).

    OneCycle divides by its warm-up length in steps, so a tiny run (a handful of steps) gets
    at least two warm-up steps, and one of fewer than four steps a constant rate.
    """
    total = max(epochs * steps_per_epoch, 1)
    if total < 4:
        for g in optimizer.param_groups:
            g["lr"] = lr
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    pct_start = min(max(pct_start, 2.0 / total), 1.0 - 2.0 / total)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs,
                                               steps_per_epoch=max(steps_per_epoch, 1), pct_start=pct_start)


def _progress(iterable, desc: str, total: Optional[int] = None):
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing in logs and CI.
    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False, dynamic_ncols=True)


def get_rng_state() -> Dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain values (weights_only-safe)."""
    import random

    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    import random

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class NonFiniteLossError(ASLError):
    """Too many steps in a row had a NaN or infinite loss."""


def train_one_epoch(
    model: nn.Module,
    loader,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    scheduler=None,
    ema=None,
    scaler: Optional[torch.amp.GradScaler] = None,
    amp_dtype: Optional[torch.dtype] = None,
    grad_clip: Optional[float] = None,
    epoch: int = 0,
    global_step: int = 0,
    print_freq: int = 50,
    channels_last: bool = False,
    max_nonfinite: int = 20,
    on_step: Optional[Callable[[int, Dict[str, Any]], bool]] = None,
    resume: Optional[Dict[str, Any]] = None,
    all_finite: Optional[Callable[[bool], bool]] = None,
    accum_steps: int = 1,
) -> Dict[str, Any]:
    """One pass over ``loader``: forward under autocast, float32 loss, step, schedule, EMA.

    A step whose loss is not finite is skipped (no update) and counted; ``max_nonfinite``
    skipped optimizer steps in a row raise :class:`NonFiniteLossError`, before any further update.

    Args:
        on_step: called after every step with (global_step, partial stats); returning True
            ends the epoch early (a signal asked the run to stop).
        resume: the partial stats and RNG state of a mid-epoch checkpoint; the RNG state is
            restored after the loader's iterator is created, so the remaining batches draw the
            same random numbers as in the interrupted run.
        accum_steps: micro-batches per optimizer step (gradient accumulation); the loss of each is
            divided by it, and a trailing incomplete group is dropped. Steps, the schedule, the
            EMA and ``on_step`` count optimizer steps; ``steps`` in the stats counts batches.
        all_finite: under DDP, agrees across ranks whether every rank's loss is finite, so all
            skip the same steps (a rank alone skipping its backward would hang the others).

    Returns:
        dict with ``train_loss`` (mean over steps), ``lr`` (last), ``steps``, ``global_step``,
        ``images_per_s``, ``data_time`` and ``compute_time`` (seconds), ``nonfinite_steps``,
        ``bad_images`` (unreadable images skipped so far, counted across loader workers),
        ``interrupted``.
    """
    model.train()
    part = dict(resume["partial"]) if resume else {"loss_sum": 0.0, "steps": 0, "skipped": 0}
    total_loss, steps, skipped = part["loss_sum"], part["steps"], part["skipped"]
    images, in_a_row, interrupted = 0, 0, False
    data_time = compute_time = 0.0
    t_start = t_last = time.perf_counter()
    batches = iter(loader)
    if resume and resume.get("rng") is not None:
        set_rng_state(resume["rng"])
    accum_steps = max(int(accum_steps), 1)
    # A summed loss (ASL's official reduction) already grows with the batch: accumulating k
    # micro-batches of it gives the gradient of the k-times larger batch as it is. A mean is
    # divided by k for the same result.
    sum_loss = getattr(loss_fn, "reduction", "mean") == "sum"
    group_ok, in_group = True, 0
    optimizer.zero_grad(set_to_none=True)
    for images_b, targets in _progress(batches, f"epoch {epoch}", total=len(loader)):
        t_data = time.perf_counter()
        data_time += t_data - t_last
        images_b = images_b.to(device, non_blocking=True)
        if channels_last:
            images_b = images_b.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        in_group += 1
        last_of_group = in_group == accum_steps
        # Under DDP, gradients are all-reduced only on the micro-batch that ends a group.
        sync = contextlib.nullcontext() if last_of_group or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(images_b)
            loss = loss_fn(logits.float(), targets)
            loss_value = float(loss.detach())
            finite = math.isfinite(loss_value)
            if all_finite is not None:
                finite = all_finite(finite)
            if finite:
                scaled = loss if sum_loss else loss / accum_steps
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                total_loss += loss_value
            else:
                group_ok = False
                skipped += 1
                log.warning("epoch %d step %d: loss is %s, step skipped", epoch, global_step, loss_value)
        steps += 1
        images += images_b.shape[0]
        if not last_of_group:
            continue
        if group_ok:
            in_a_row = 0
            if scaler is not None:
                if grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
        else:
            in_a_row += 1
            if in_a_row >= max_nonfinite:
                raise NonFiniteLossError(f"the loss was not finite for {in_a_row} steps in a row (epoch {epoch}, "
                                         f"step {global_step}); the last checkpoint is intact: lower --lr or "
                                         f"check the data")
        optimizer.zero_grad(set_to_none=True)
        group_ok, in_group = True, 0
        if scheduler is not None:
            scheduler.step()
        global_step += 1
        if ema is not None:
            ema.update(unwrap_model(model), step=global_step)
        t_last = time.perf_counter()
        compute_time += t_last - t_data
        if print_freq and global_step % print_freq == 0:
            log.info("epoch %d step %d/%d loss %.4f lr %.2e %.1f img/s (data %.0f%%)", epoch, steps,
                     len(loader), loss_value, optimizer.param_groups[0]["lr"],
                     images / (t_last - t_start), 100 * data_time / max(t_last - t_start, 1e-9))
        if on_step is not None and on_step(global_step, {"loss_sum": total_loss, "steps": steps,
                                                         "skipped": skipped}):
            interrupted = True
            break
    elapsed = time.perf_counter() - t_start
    return {
        "train_loss": total_loss / max(steps - skipped, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "steps": steps,
        "global_step": global_step,
        "images_per_s": images / max(elapsed, 1e-9),
        "data_time": data_time,
        "compute_time": compute_time,
        "nonfinite_steps": skipped,
        "bad_images": getattr(loader.dataset, "bad_count", 0),
        "interrupted": interrupted,
    }


def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    *,
    amp_dtype: Optional[torch.dtype] = None,
    desc: str = "eval",
    channels_last: bool = False,
    gather: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> Dict[str, Any]:
    """Scores of ``model`` on ``loader`` and their mAP (official definition; where targets hold
    -1, those entries are left out of their class's AP, as VOC's difficult protocol).

    Args:
        gather: under DDP, reassembles all ranks' rows (``asl.distributed.gather_rows``), so the
            mAP is that of the whole set, equal to a single-process evaluation.

    Returns:
        dict with ``mAP`` (percent), ``per_class_ap`` (C,) float64 in [0, 1] (``nan`` for a class
        without positives), ``scores`` (N, C) float32 sigmoid scores, ``targets`` (N, C),
        ``num_images``, ``images_per_s``, ``bad_images``.
    """
    was_training = model.training
    model.eval()
    scores, targets = [], []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for images_b, targets_b in _progress(loader, desc):
            images_b = images_b.to(device, non_blocking=True)
            if channels_last:
                images_b = images_b.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(images_b)
            scores.append(torch.sigmoid(logits.float()).cpu())
            targets.append(targets_b.cpu())
    elapsed = time.perf_counter() - t0
    model.train(was_training)
    s = torch.cat(scores).numpy() if scores else np.zeros((0, 0), np.float32)
    t = torch.cat(targets).numpy() if targets else np.zeros((0, 0), np.float32)
    if gather is not None:  # under DDP: every rank's shard, in dataset order, padding dropped
        s, t = gather(s), gather(t)
    # Unknown labels (-1, e.g. VOC's difficult-only classes) are left out of AP, the usual
    # protocol; without any, this is exactly the official mAP.
    m, ap = map_and_ap(t, s)
    return {
        "mAP": m,
        "per_class_ap": ap,
        "scores": s,
        "targets": t,
        "num_images": int(len(s)),
        "images_per_s": len(s) / max(elapsed, 1e-9),
        "bad_images": getattr(loader.dataset, "bad_count", 0),
    }
