"""Run-level helpers of train.py: the output folder guard, signal handling, resume state."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .checkpoint import load_checkpoint
from .engine import set_rng_state
from .errors import CheckpointError, ConfigError
from .models import unwrap_model


def check_output_dir(out: Path, overwrite: bool, resume) -> None:
    """Refuse a folder that already holds a run, unless resuming or told to overwrite."""
    if out.exists() and any((out / f).exists() for f in ("last.pth", "metrics.jsonl")) and not (overwrite or resume):
        raise ConfigError(f"{out} already holds a run; pass --resume {out / 'last.pth'} or --overwrite")
    out.mkdir(parents=True, exist_ok=True)


class StopSignal:
    """SIGTERM / SIGINT set a flag; the loop saves last.pth at the next step and exits."""

    def __init__(self):
        self.signum, self.name = 0, ""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum, self.name = signum, signal.Signals(signum).name

    @property
    def received(self) -> bool:
        return bool(self.signum)


def load_resume_checkpoint(path: str) -> dict:
    """A ``last.pth`` to resume from; anything else is refused before any work starts."""
    ckpt = load_checkpoint(path)
    missing = [k for k in ("optimizer", "scheduler", "epoch") if ckpt.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: cannot resume from it, it lacks {', '.join(missing)} (resume from a last.pth)")
    return ckpt


def restore_training_state(ckpt: Dict[str, Any], model, optimizer, scheduler, ema=None, scaler=None,
                           loss_fn=None) -> Tuple[int, int, Dict[str, Any], Optional[Dict[str, Any]]]:
    """Load a ``last.pth`` into the run's objects.

    Returns:
        (epoch to start at, global step, best record, the mid-epoch resume dict for
        ``train_one_epoch`` or None). At an epoch boundary the RNG states are restored here; a
        mid-epoch resume restores them once the loader's iterator exists.
    """
    unwrap_model(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ema is not None and ckpt.get("ema") is not None:
        ema.module.load_state_dict(ckpt["ema"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    for k, v in (ckpt.get("loss_state") or {}).items():
        setattr(loss_fn, k, v)
    global_step, best = ckpt.get("global_step", 0), ckpt.get("best") or {"mAP": -1.0}
    if ckpt.get("step_in_epoch"):  # a mid-epoch checkpoint: finish that epoch first
        return ckpt["epoch"], global_step, best, {"partial": ckpt["partial"], "rng": ckpt.get("rng"),
                                                  "step": ckpt["step_in_epoch"]}
    if ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    return ckpt["epoch"] + 1, global_step, best, None
