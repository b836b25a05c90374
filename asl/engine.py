"""Training and evaluation steps: ``train_one_epoch`` and ``evaluate``.

Both take explicit objects and return dicts. One AMP code path: the forward
runs under ``torch.autocast(..., enabled=...)`` and the loss is computed on
float32 logits; a GradScaler is used only for fp16.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn

from .checkpoint.resume import set_rng_state
from .distributed import DistInfo, gather_scores
from .errors import ASLError
from .labelled import ScoreCollector
from .metrics import evaluation_result
from .models import unwrap_model

log = logging.getLogger(__name__)

__all__ = [
    "train_one_epoch",
    "Optimization",
    "StepSettings",
    "evaluate",
    "NonFiniteLossError",
]


def _progress(iterable, desc: str, total: Optional[int] = None):
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing in logs and CI.
    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False, dynamic_ncols=True)


class NonFiniteLossError(ASLError):
    """Too many steps in a row had a NaN or infinite loss."""


@dataclasses.dataclass
class Optimization:
    """What optimizes: the loss, the optimizer and what follows each of its steps.

    Args:
        loss_fn: ``(logits (N, C) float32, targets (N, C)) -> scalar``; its ``reduction``
            attribute, where it is ``"sum"``, keeps accumulated micro-batches undivided.
        optimizer: any torch optimizer.
        scheduler: stepped after every optimizer step the optimizer took.
        ema: timm's ``ModelEmaV3`` (or anything with its ``update``), updated after every step.
        scaler: a GradScaler, for fp16 only.
        grad_clip: the gradients' norm bound, or None.
    """

    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    ema: Any = None
    scaler: Optional[torch.amp.GradScaler] = None
    grad_clip: Optional[float] = None


@dataclasses.dataclass
class StepSettings:
    """How a step runs.

    Args:
        amp_dtype: the autocast dtype of the forward, or None (float32).
        channels_last: move each batch to channels-last memory.
        accum_steps: micro-batches per optimizer step (gradient accumulation); the loss of each is
            divided by it unless summed, and a trailing incomplete group is dropped.
        max_nonfinite: this many skipped optimizer steps in a row raise
            :class:`NonFiniteLossError`.
        all_finite: under DDP, agrees across ranks whether every rank's loss is finite, so all
            skip the same steps (a rank alone skipping its backward would hang the others). Takes
            and returns a bool, or with ``defer_sync`` a bool tensor on the device.
        defer_sync: no host synchronization per step (the CUDA path): the loss, its sums and the
            non-finite flags stay on the device, every step runs its backward, and a non-finite
            step is skipped by the optimizer itself (``found_inf``, which torch's fused Adam,
            AdamW and SGD honour: the same skipped steps, moments and step counts as the default
            path). Needs such an optimizer and no GradScaler.
        check_every: with ``defer_sync``, the non-finite streak is read back every this many steps
            and at the end of the epoch.
    """

    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    accum_steps: int = 1
    max_nonfinite: int = 20
    all_finite: Optional[Callable[[Any], Any]] = None
    defer_sync: bool = False
    check_every: int = 25


class _HostCounters:
    """The epoch's loss sum and skipped steps on the host: the loss is read back at every step,
    a non-finite micro-batch skips its backward and its group's optimizer step."""

    def __init__(self, how: StepSettings, loss_sum: float, skipped: int):
        self.how, self.loss_sum, self.skipped = how, float(loss_sum), int(skipped)
        self.group_ok, self.in_a_row, self.last = True, 0, float("nan")

    def backward(self, loss: torch.Tensor, scaled: torch.Tensor, opt: Optimization, where: str) -> None:
        self.last = float(loss.detach())
        finite = math.isfinite(self.last)
        if self.how.all_finite is not None:
            finite = self.how.all_finite(finite)
        if finite:
            (opt.scaler.scale(scaled) if opt.scaler is not None else scaled).backward()
            self.loss_sum += self.last
        else:
            self.group_ok = False
            self.skipped += 1
            log.warning("%s: loss is %s, step skipped", where, self.last)

    def step(self, model: nn.Module, opt: Optimization, where: str) -> bool:
        """The group's optimizer step; returns whether the schedule follows it."""
        took_step = True
        if not self.group_ok:
            self.in_a_row += 1
            if self.in_a_row >= self.how.max_nonfinite:
                raise NonFiniteLossError(
                    f"the loss was not finite for {self.in_a_row} steps in a row ({where}); the last "
                    f"checkpoint is intact: lower --lr or check the data"
                )
        elif opt.scaler is not None:
            self.in_a_row = 0
            if opt.grad_clip:
                opt.scaler.unscale_(opt.optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
            scale = opt.scaler.get_scale()
            opt.scaler.step(opt.optimizer)
            opt.scaler.update()
            took_step = opt.scaler.get_scale() >= scale  # an overflow skips the step and lowers the scale
        else:
            self.in_a_row = 0
            if opt.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
            opt.optimizer.step()
        self.group_ok = True
        return took_step

    def check(self, epoch: int, global_step: int, final: bool = False) -> None:
        pass  # every step was checked as it ran

    def last_loss(self, loss: torch.Tensor) -> float:
        return self.last

    def partial(self, steps: int) -> Dict[str, Any]:
        return {"loss_sum": self.loss_sum, "steps": steps, "skipped": self.skipped}

    def totals(self) -> tuple:
        return self.loss_sum, self.skipped


class _DeviceCounters:
    """The same counters on the device (``defer_sync``): nothing here reads a value back to the
    host except :meth:`check` (every ``check_every`` steps), :meth:`last_loss` (at ``print_freq``)
    and :meth:`totals` (at the end)."""

    def __init__(self, how: StepSettings, loss_sum: float, skipped: int, device: torch.device):
        self.how = how
        self.loss_sum = torch.tensor(float(loss_sum), device=device)
        self.skipped = torch.tensor(float(skipped), device=device)
        self.group_bad = torch.zeros((), dtype=torch.bool, device=device)
        self.streak = torch.zeros((), device=device)  # skipped optimizer steps in a row
        self.worst = torch.zeros((), device=device)  # the longest streak since the last check
        self.reported = int(skipped)

    def backward(self, loss: torch.Tensor, scaled: torch.Tensor, opt: Optimization, where: str) -> None:
        finite = torch.isfinite(loss.detach())
        if self.how.all_finite is not None:
            finite = self.how.all_finite(finite)
        scaled.backward()  # a non-finite one: its step is skipped by the optimizer
        self.loss_sum += torch.where(finite, loss.detach(), torch.zeros_like(loss.detach()))
        self.skipped += (~finite).float()
        self.group_bad |= ~finite

    def step(self, model: nn.Module, opt: Optimization, where: str) -> bool:
        """The optimizer step, skipped on the device when a micro-batch of the group was not finite."""
        if opt.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
        optimizer = opt.optimizer
        optimizer.grad_scale, optimizer.found_inf = None, self.group_bad.float()
        try:
            optimizer.step()
        finally:
            optimizer.found_inf = None
        self.streak = (self.streak + 1) * self.group_bad
        self.worst = torch.maximum(self.worst, self.streak)
        self.group_bad = torch.zeros_like(self.group_bad)
        return True

    def check(self, epoch: int, global_step: int, final: bool = False) -> None:
        if not final and global_step % max(self.how.check_every, 1):
            return
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
        if worst >= self.how.max_nonfinite:
            raise NonFiniteLossError(
                f"the loss was not finite for {worst} steps in a row (epoch {epoch}, by step "
                f"{global_step}); the last checkpoint is intact: lower --lr or check the data"
            )

    def last_loss(self, loss: torch.Tensor) -> float:
        return float(loss.detach())

    def partial(self, steps: int) -> Dict[str, Any]:
        return {"loss_sum": self.loss_sum, "steps": steps, "skipped": self.skipped}

    def totals(self) -> tuple:
        return float(self.loss_sum), int(self.skipped)


def train_one_epoch(
    model: nn.Module,
    loader,
    opt: Optimization,
    device: torch.device,
    how: Optional[StepSettings] = None,
    *,
    epoch: int = 0,
    global_step: int = 0,
    on_step: Optional[Callable[[int, Dict[str, Any]], bool]] = None,
    resume: Optional[Dict[str, Any]] = None,
    print_freq: int = 50,
) -> Dict[str, Any]:
    """One pass over ``loader``: forward under autocast, float32 loss, step, schedule, EMA.

    A step whose loss is not finite is skipped (no update) and counted; ``how.max_nonfinite``
    skipped optimizer steps in a row raise :class:`NonFiniteLossError`, before any further update
    (with ``how.defer_sync``: at the next check, up to ``how.check_every`` steps later). The
    schedule follows the steps the optimizer took where a GradScaler skips them (fp16: the first
    steps, an overflow); a step the non-finite guard skips advances it, as it advances the EMA.
    Steps, the schedule, the EMA and ``on_step`` count optimizer steps; ``steps`` in the stats
    counts batches.

    Args:
        model: the (possibly DDP-wrapped) network; the EMA follows its unwrapped module.
        loader: yields (images (B, 3, H, W), targets (B, C)).
        opt: what optimizes (:class:`Optimization`).
        how: how a step runs (:class:`StepSettings`); its defaults are float32 eager steps.
        on_step: called after every optimizer step with (global_step, partial stats); returning
            True ends the epoch early (a signal asked the run to stop).
        resume: the partial stats and RNG state of a mid-epoch checkpoint; the RNG state is
            restored after the loader's iterator is created, so the remaining batches draw the
            same random numbers as in the interrupted run.
        print_freq: log the loss and throughput every this many steps (0: never).

    Returns:
        dict with ``train_loss`` (mean over steps), ``lr`` (last), ``steps``, ``global_step``,
        ``images_per_s``, ``data_time`` and ``compute_time`` (seconds), ``nonfinite_steps``,
        ``bad_images`` (unreadable images skipped so far, counted across loader workers),
        ``interrupted``.
    """
    how = how or StepSettings()
    optimizer = opt.optimizer
    if how.defer_sync and (opt.scaler is not None or not getattr(optimizer, "_step_supports_amp_scaling", False)):
        raise ValueError(
            "defer_sync needs an optimizer that skips a step on the device (torch's fused Adam, "
            "AdamW or SGD) and no GradScaler"
        )
    model.train()
    part = dict(resume["partial"]) if resume else {"loss_sum": 0.0, "steps": 0, "skipped": 0}
    steps = int(part["steps"])
    counters = (
        _DeviceCounters(how, part["loss_sum"], part["skipped"], device)
        if how.defer_sync
        else _HostCounters(how, part["loss_sum"], part["skipped"])
    )
    images, interrupted = 0, False
    data_time = compute_time = 0.0
    t_start = t_last = time.perf_counter()
    batches = iter(loader)
    if resume and resume.get("rng") is not None:
        set_rng_state(resume["rng"])
    accum_steps = max(int(how.accum_steps), 1)
    # A summed loss (ASL's official reduction) already grows with the batch: accumulating k
    # micro-batches of it gives the gradient of the k-times larger batch as it is. A mean is
    # divided by k for the same result.
    sum_loss = getattr(opt.loss_fn, "reduction", "mean") == "sum"
    in_group = 0
    optimizer.zero_grad(set_to_none=True)
    for images_b, targets in _progress(batches, f"epoch {epoch}", total=len(loader)):
        t_data = time.perf_counter()
        data_time += t_data - t_last
        images_b = images_b.to(device, non_blocking=True)
        if how.channels_last:
            images_b = images_b.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        in_group += 1
        last_of_group = in_group == accum_steps
        # Under DDP, gradients are all-reduced only on the micro-batch that ends a group.
        sync = contextlib.nullcontext() if last_of_group or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=how.amp_dtype or torch.float32, enabled=how.amp_dtype is not None):
                logits = model(images_b)
            loss = opt.loss_fn(logits.float(), targets)
            scaled = loss if sum_loss else loss / accum_steps
            counters.backward(loss, scaled, opt, f"epoch {epoch} step {global_step}")
        steps += 1
        images += images_b.shape[0]
        if not last_of_group:
            continue
        took_step = counters.step(model, opt, f"epoch {epoch}, step {global_step}")
        optimizer.zero_grad(set_to_none=True)
        in_group = 0
        if opt.scheduler is not None and took_step:
            opt.scheduler.step()
        global_step += 1
        if opt.ema is not None:
            # without warm-up the official EMA: the constant decay from the first step (timm's
            # ModelEmaV3 given a step copies the weights at step 1); with it, timm's schedule
            opt.ema.update(unwrap_model(model), step=global_step if getattr(opt.ema, "use_warmup", False) else None)
        counters.check(epoch, global_step)
        t_last = time.perf_counter()
        compute_time += t_last - t_data
        if print_freq and global_step % print_freq == 0:
            log.info(
                "epoch %d step %d/%d loss %.4f lr %.2e %.1f img/s (data %.0f%%)",
                epoch,
                steps,
                len(loader),
                counters.last_loss(loss),
                optimizer.param_groups[0]["lr"],
                images / (t_last - t_start),
                100 * data_time / max(t_last - t_start, 1e-9),
            )
        if on_step is not None and on_step(global_step, counters.partial(steps)):
            interrupted = True
            break
    counters.check(epoch, global_step, final=True)
    total_loss, skipped = counters.totals()
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
    dist: Optional[DistInfo] = None,
    single_label: bool = False,
) -> Dict[str, Any]:
    """Scores of ``model`` on ``loader`` and their mAP (official definition; where targets hold
    -1, those entries are left out of their class's AP, as VOC's difficult protocol and Open Images'
    rule). Past ``asl.labelled.DENSE_LIMIT`` (N x C) entries only the labelled ones are kept.

    Args:
        dist: under DDP, the process group's :class:`asl.distributed.DistInfo`: every rank's shard
            is merged, so the mAP is that of the whole set, equal to a single-process evaluation.
        single_label: softmax scores and the single-label metrics (top-1, top-5, macro-F1, balanced
            accuracy) besides the one-vs-rest mAP.

    Returns:
        ``asl.metrics.evaluation_result``'s dict: ``mAP`` (percent), ``per_class_ap`` (C,) float64
        in [0, 1] (``nan`` for a class without positives), ``labelled`` (the labelled entries),
        ``scores`` (N, C) float32 sigmoid scores and ``targets`` (N, C) (None past the dense limit),
        ``num_images``, ``images_per_s``, ``bad_images``, ...
    """
    was_training = model.training
    model.eval()
    shard = (dist.rank, dist.world_size) if dist is not None and dist.enabled else (0, 1)
    collected = ScoreCollector.for_dataset(
        loader.dataset, rank=shard[0], world_size=shard[1], single_label=single_label
    )
    t0 = time.perf_counter()
    with torch.inference_mode():
        for images_b, targets_b in _progress(loader, desc):
            images_b = images_b.to(device, non_blocking=True)
            if channels_last:
                images_b = images_b.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(images_b)
            probs = torch.softmax(logits.float(), dim=1) if single_label else torch.sigmoid(logits.float())
            collected.add(probs.cpu().numpy(), targets_b.numpy())
    elapsed = time.perf_counter() - t0
    model.train(was_training)
    if dist is not None:
        gather_scores(collected, dist)
    # Unknown labels (-1, e.g. VOC's difficult-only classes) are left out of AP, the usual
    # protocol; without any, this is exactly the official mAP.
    return evaluation_result(collected, elapsed, loader.dataset)
