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
from .metrics import evaluation_result
from .models import unwrap_model

log = logging.getLogger(__name__)

__all__ = [
    "amp_dtype_for",
    "build_optimizer",
    "build_scheduler",
    "train_one_epoch",
    "evaluate",
    "seed_everything",
    "get_rng_state",
    "set_rng_state",
    "NonFiniteLossError",
]


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


# timm names whose optimizer is torch's own Adam / AdamW / SGD, which have a fused implementation
# (one kernel for all parameters, and a step skipped on the device: train_one_epoch's defer_sync).
FUSED = ("adam", "adamw", "sgd", "nesterov", "momentum")


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, fused: bool = False
) -> torch.optim.Optimizer:
    """timm's optimizer factory; no weight decay on biases and 1-D parameters (as official).

    Args:
        fused: torch's fused implementation where ``name`` has one (``FUSED``; the trainer asks
            for it on CUDA); other names ignore it.
    """
    from timm.optim import create_optimizer_v2

    extra = {"fused": True} if fused and name.lower() in FUSED else {}
    return create_optimizer_v2(model, opt=name, lr=lr, weight_decay=weight_decay, filter_bias_and_bn=True, **extra)


def build_scheduler(
    optimizer: torch.optim.Optimizer, lr: float, epochs: int, steps_per_epoch: int, pct_start: float = 0.2
):
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
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=max(steps_per_epoch, 1), pct_start=pct_start
    )


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
        "numpy": (
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ),
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


class _Deferred:
    """``train_one_epoch``'s counters on the device (``defer_sync``): nothing here reads a value
    back to the host except :meth:`check` and :meth:`partial`'s caller."""

    def __init__(self, device: torch.device, loss_sum: float, skipped: int):
        self.loss_sum = torch.tensor(float(loss_sum), device=device)
        self.skipped = torch.tensor(float(skipped), device=device)
        self.group_bad = torch.zeros((), dtype=torch.bool, device=device)
        self.streak = torch.zeros((), device=device)  # skipped optimizer steps in a row
        self.worst = torch.zeros((), device=device)  # the longest streak since the last check
        self.reported = int(skipped)

    def add(self, loss: torch.Tensor, finite: torch.Tensor) -> None:
        self.loss_sum += torch.where(finite, loss, torch.zeros_like(loss))
        self.skipped += (~finite).float()
        self.group_bad |= ~finite

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step, skipped on the device when a micro-batch of the group was not finite."""
        optimizer.grad_scale, optimizer.found_inf = None, self.group_bad.float()
        try:
            optimizer.step()
        finally:
            optimizer.found_inf = None
        self.streak = (self.streak + 1) * self.group_bad
        self.worst = torch.maximum(self.worst, self.streak)
        self.group_bad = torch.zeros_like(self.group_bad)

    def check(self, max_nonfinite: int, epoch: int, global_step: int) -> None:
        worst, skipped = int(self.worst), int(self.skipped)  # the one read-back, every check_every steps
        self.worst = self.streak.clone()
        if skipped > self.reported:
            log.warning(
                "epoch %d: %d steps skipped up to step %d (the loss was not finite)",
                epoch,
                skipped - self.reported,
                global_step,
            )
            self.reported = skipped
        if worst >= max_nonfinite:
            raise NonFiniteLossError(
                f"the loss was not finite for {worst} steps in a row (epoch {epoch}, by step "
                f"{global_step}); the last checkpoint is intact: lower --lr or check the data"
            )

    def partial(self, steps: int) -> Dict[str, Any]:
        return {"loss_sum": self.loss_sum, "steps": steps, "skipped": self.skipped}


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
    all_finite: Optional[Callable[[Any], Any]] = None,
    accum_steps: int = 1,
    defer_sync: bool = False,
    check_every: int = 25,
) -> Dict[str, Any]:
    """One pass over ``loader``: forward under autocast, float32 loss, step, schedule, EMA.

    A step whose loss is not finite is skipped (no update) and counted; ``max_nonfinite``
    skipped optimizer steps in a row raise :class:`NonFiniteLossError`, before any further update
    (with ``defer_sync``: at the next check, up to ``check_every`` steps later). The schedule
    follows the steps the optimizer took where a GradScaler skips them (fp16: the first steps,
    an overflow); a step the non-finite guard skips advances it, as it advances the EMA.

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
            skip the same steps (a rank alone skipping its backward would hang the others). Takes
            and returns a bool, or with ``defer_sync`` a bool tensor on the device.
        defer_sync: no host synchronization per step (the CUDA path): the loss, its sums and the
            non-finite flags stay on the device, every step runs its backward, and a non-finite
            step is skipped by the optimizer itself (``found_inf``, which torch's fused Adam,
            AdamW and SGD honour: the same skipped steps, moments and step counts as the default
            path). Needs such an optimizer and no GradScaler. The loss is read at ``print_freq``
            and the non-finite streak every ``check_every`` steps and at the end.

    Returns:
        dict with ``train_loss`` (mean over steps), ``lr`` (last), ``steps``, ``global_step``,
        ``images_per_s``, ``data_time`` and ``compute_time`` (seconds), ``nonfinite_steps``,
        ``bad_images`` (unreadable images skipped so far, counted across loader workers),
        ``interrupted``.
    """
    model.train()
    if defer_sync and (scaler is not None or not getattr(optimizer, "_step_supports_amp_scaling", False)):
        raise ValueError(
            "defer_sync needs an optimizer that skips a step on the device (torch's fused Adam, "
            "AdamW or SGD) and no GradScaler"
        )
    part = dict(resume["partial"]) if resume else {"loss_sum": 0.0, "steps": 0, "skipped": 0}
    total_loss, steps, skipped = float(part["loss_sum"]), int(part["steps"]), int(part["skipped"])
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
    if defer_sync:  # the same counters, kept on the device
        dev = _Deferred(device, total_loss, skipped)
    loss_value = float("nan")
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
            if defer_sync:
                finite_t = torch.isfinite(loss.detach())
                if all_finite is not None:
                    finite_t = all_finite(finite_t)
                (loss if sum_loss else loss / accum_steps).backward()  # non-finite: skipped by the optimizer
                dev.add(loss.detach(), finite_t)
            else:
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
        took_step = True  # whether the schedule follows this step
        if defer_sync:
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            dev.step(optimizer)
        elif group_ok:
            in_a_row = 0
            if scaler is not None:
                if grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scale = scaler.get_scale()
                scaler.step(optimizer)
                scaler.update()
                took_step = scaler.get_scale() >= scale  # an overflow skips the step and lowers the scale
            else:
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
        else:
            in_a_row += 1
            if in_a_row >= max_nonfinite:
                raise NonFiniteLossError(
                    f"the loss was not finite for {in_a_row} steps in a row (epoch {epoch}, "
                    f"step {global_step}); the last checkpoint is intact: lower --lr or "
                    f"check the data"
                )
        optimizer.zero_grad(set_to_none=True)
        group_ok, in_group = True, 0
        if scheduler is not None and took_step:
            scheduler.step()
        global_step += 1
        if ema is not None:
            # without warm-up the official EMA: the constant decay from the first step (timm's
            # ModelEmaV3 given a step copies the weights at step 1); with it, timm's schedule
            ema.update(unwrap_model(model), step=global_step if getattr(ema, "use_warmup", False) else None)
        if defer_sync and global_step % max(check_every, 1) == 0:
            dev.check(max_nonfinite, epoch, global_step)
        t_last = time.perf_counter()
        compute_time += t_last - t_data
        if print_freq and global_step % print_freq == 0:
            if defer_sync:
                loss_value = float(loss.detach())
            log.info(
                "epoch %d step %d/%d loss %.4f lr %.2e %.1f img/s (data %.0f%%)",
                epoch,
                steps,
                len(loader),
                loss_value,
                optimizer.param_groups[0]["lr"],
                images / (t_last - t_start),
                100 * data_time / max(t_last - t_start, 1e-9),
            )
        if on_step is not None:
            partial = dev.partial(steps) if defer_sync else {"loss_sum": total_loss, "steps": steps, "skipped": skipped}
            if on_step(global_step, partial):
                interrupted = True
                break
    if defer_sync:
        dev.check(max_nonfinite, epoch, global_step)
        total_loss, skipped = float(dev.loss_sum), int(dev.skipped)
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
    return evaluation_result(s, t, elapsed, loader.dataset)
