"""The training state: ``last.pth`` (the inference checkpoint plus what a resume needs),
:class:`RunState`, the settings a resume may not change, and the RNG states a bit-identical resume
restores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..classes import class_names_of
from ..errors import CheckpointError
from ..models import unwrap_model
from .io import load_checkpoint, make_checkpoint


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


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


@dataclass
class RunState:
    """Where a training run stands: the counters a ``last.pth`` holds beside the objects' states.

    Attributes:
        epoch: the epoch this state belongs to: finished (``step_in_epoch == 0``) or in progress.
        global_step: optimizer steps taken since the start of the run.
        best: the best validation result so far, ``{"mAP": -1.0}`` before any (else with
            ``epoch`` and ``selected``: ``model`` or ``ema``).
        step_in_epoch: batches of ``epoch`` already trained (a mid-epoch checkpoint), else 0.
        partial: the running loss sums of that epoch (``train_one_epoch``'s resume stats).
        rng: Python, numpy and torch RNG states (:func:`get_rng_state`), taken last.
    """

    epoch: int = -1
    global_step: int = 0
    best: Dict[str, Any] = field(default_factory=lambda: {"mAP": -1.0})
    step_in_epoch: int = 0
    partial: Optional[Dict[str, Any]] = None
    rng: Optional[Dict[str, Any]] = None

    @property
    def mid_epoch(self) -> bool:
        return bool(self.step_in_epoch)

    @property
    def next_epoch(self) -> int:
        """The epoch to train next: the one in progress, else the one after the last finished."""
        return self.epoch if self.mid_epoch else self.epoch + 1

    def epoch_resume(self) -> Optional[Dict[str, Any]]:
        """``train_one_epoch``'s ``resume`` argument for a mid-epoch state, else None."""
        if not self.mid_epoch:
            return None
        return {"partial": self.partial, "rng": self.rng, "step": self.step_in_epoch}


def training_checkpoint(state: RunState, model: nn.Module, optimization: Any, **meta: Any) -> Dict[str, Any]:
    """The ``last.pth`` dict: the inference checkpoint of ``model`` plus everything a resume needs.

    Args:
        state: the run's counters.
        model: the bare model (unwrapped).
        optimization: the run's :class:`asl.engine.Optimization`: the ``state_dict()`` of its
            optimizer, scheduler, EMA (its module's), scaler, and of its loss when the loss has
            state (adaptive gamma-).
        **meta: :func:`asl.checkpoint.make_checkpoint`'s keyword arguments (model name, classes, size, ...).
    """
    opt = optimization
    loss_state = dict(opt.loss_fn.state_dict()) if isinstance(opt.loss_fn, nn.Module) else None
    return make_checkpoint(
        model,
        epoch=state.epoch,
        global_step=state.global_step,
        best=state.best,
        optimizer=opt.optimizer.state_dict(),
        scheduler=opt.scheduler.state_dict(),
        ema=opt.ema.module.state_dict() if opt.ema is not None else None,
        scaler=opt.scaler.state_dict() if opt.scaler is not None else None,
        loss_state=loss_state or None,
        step_in_epoch=state.step_in_epoch,
        partial=state.partial,
        rng=state.rng,
        **meta,
    )


def restore_training_state(ckpt: Dict[str, Any], model: nn.Module, optimization: Any) -> RunState:
    """Load a ``last.pth`` into the run's objects (``model`` and ``optimization``'s optimizer,
    scheduler, EMA, scaler, loss) and return its :class:`RunState`.

    RNG states are not applied here: at an epoch boundary the trainer restores ``state.rng``
    before the next epoch; mid-epoch, ``train_one_epoch`` restores them once the loader's
    iterator exists (``state.epoch_resume()``).
    """
    opt = optimization
    try:
        unwrap_model(model).load_state_dict(ckpt["model"])
    except RuntimeError as e:  # what check_resume cannot see (e.g. a different head)
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise CheckpointError(f"the resume checkpoint does not fit this model: {first[:200]}") from None
    opt.optimizer.load_state_dict(ckpt["optimizer"])
    opt.scheduler.load_state_dict(ckpt["scheduler"])
    if opt.ema is not None and ckpt.get("ema") is not None:
        opt.ema.module.load_state_dict(ckpt["ema"])
    if opt.scaler is not None and ckpt.get("scaler"):
        opt.scaler.load_state_dict(ckpt["scaler"])
    loss_state = ckpt.get("loss_state")
    if loss_state and isinstance(opt.loss_fn, nn.Module):
        if "_extra_state" not in loss_state and "gamma_neg" in loss_state:
            loss_state = {"_extra_state": dict(loss_state)}  # a last.pth written before losses kept their state
        opt.loss_fn.load_state_dict(loss_state)
    return RunState(
        epoch=int(ckpt["epoch"]),
        global_step=int(ckpt.get("global_step", 0)),
        best=ckpt.get("best") or {"mAP": -1.0},
        step_in_epoch=int(ckpt.get("step_in_epoch") or 0),
        partial=ckpt.get("partial"),
        rng=ckpt.get("rng"),
    )


def load_resume_checkpoint(path: str) -> dict:
    """A ``last.pth`` to resume from; anything else is refused before any work starts."""
    ckpt = load_checkpoint(path)
    missing = [k for k in ("optimizer", "scheduler", "epoch") if ckpt.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: cannot resume from it, it lacks {', '.join(missing)} (resume from a last.pth)")
    return ckpt


# Settings the optimizer, schedule, EMA and loss states of a last.pth were built with: a resume
# with another value would crash (the schedule's step count, the optimizer's state keys) or
# silently keep the old one (the learning rate lives in the optimizer's state).
RESUME_FIXED = (
    "epochs",
    "batch_size",
    "accum_steps",
    "optimizer",
    "lr",
    "weight_decay",
    "pct_start",
    "ema",
    "ema_decay",
    "ema_warmup",
    "loss",
    "unknown_labels",
    "head",
    "num_of_groups",
    "decoder_embedding",
)


def check_resume(
    ckpt: Dict[str, Any],
    model_name: str,
    image_size: int,
    path: str,
    class_names: Optional[Sequence[str]] = None,
    config: Any = None,
) -> None:
    """Refuse a resume checkpoint that does not describe this run, naming what differs:
    the model, the image size, the settings of ``RESUME_FIXED`` (with ``config``, the run's
    resolved config) and (once the data is read) the classes."""
    diffs = []
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    if config is not None:
        for name in RESUME_FIXED:
            if name in saved:
                old, new = saved[name], getattr(config, name)
                if (str(old).lower() if isinstance(old, str) else old) != (
                    str(new).lower() if isinstance(new, str) else new
                ):
                    diffs.append(f"--{name.replace('_', '-')} {old!r} vs {new!r}")
    if ckpt.get("model_name") and ckpt["model_name"] != model_name:
        diffs.append(f"model {ckpt['model_name']} vs {model_name}")
    if ckpt.get("image_size") and int(ckpt["image_size"]) != image_size:
        diffs.append(f"image size {ckpt['image_size']} vs {image_size}")
    if class_names is not None:
        have = class_names_of(ckpt, int(ckpt.get("num_classes") or 0))
        if have != list(class_names):
            diffs.append(
                f"{len(have)} classes vs {len(class_names)}"
                if len(have) != len(class_names)
                else "the class names or their order"
            )
    if diffs:
        raise CheckpointError(
            f"--resume {path} was saved by another run ({'; '.join(diffs)}, "
            f"checkpoint vs this run); resume with the settings it was trained with, or start "
            f"a new --output"
        )
