"""A training run as a library call: ``fit(cfg) -> RunResult``.

The shape of torchvision's ``references/classification/train.py`` and DeiT's ``main.py``, with
the epoch loop in a library: ``fit`` checks the config (one ``error:`` line before any work,
see :mod:`asl.checks`), builds the data, model, loss, optimizer, schedule, EMA and AMP scaler
from it, resumes a ``last.pth`` when asked, and then runs the epochs: train
(:func:`asl.engine.train_one_epoch`), evaluate the model and its EMA, append the epoch's record,
keep the better of the two as ``best.pth`` and everything a resume needs as ``last.pth``
(:class:`asl.checkpoint.RunState`). SIGTERM / SIGINT save ``last.pth`` at the next step and end
the run; the previous handlers are back when ``fit`` returns. Under ``torchrun`` every rank
calls ``fit``; rank 0 writes the files.

    from asl.config import load_config
    from asl.trainer import fit

    result = fit(load_config("configs/demo.yaml", {"epochs": 2, "output": "runs/try"}))
    print(result.best["mAP"], result.best_checkpoint)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .builders import RunObjects, build_run
from .checkpoint import (
    RunState,
    check_resume,
    get_rng_state,
    load_resume_checkpoint,
    make_checkpoint,
    restore_training_state,
    save_checkpoint,
    set_rng_state,
    training_checkpoint,
)
from .checks import check_training, resolve_training, tensorboard_dir
from .config import Config, dump_config
from .distributed import all_true, broadcast_buffers
from .engine import evaluate, train_one_epoch
from .errors import Interrupted
from .files import atomic_write, writable_dir
from .hooks import GammaTrace, Hook, HtmlReport, RunView, TensorBoard
from .losses import AdaptiveAsymmetricLoss
from .outputs import TRAINING, read_metrics, write_per_class_ap
from .pretrained import resolve_pretrained
from .rundir import claim, config_sources

log = logging.getLogger(__name__)

__all__ = ["fit", "RunResult", "Trainer", "Hook", "RunView", "GammaTrace", "TensorBoard", "HtmlReport"]


@dataclass
class RunResult:
    """What a finished (or stopped) run leaves.

    Attributes:
        output: the run's folder.
        best: ``{"mAP": ..., "epoch": ..., "selected": "model" | "ema"}`` (``mAP`` -1 when no
            epoch finished).
        history: one record per finished epoch, as in ``metrics.jsonl``.
        stopped_by: the signal's name when SIGTERM / SIGINT ended the run early (``last.pth``
            holds its state), else None.
        signum: that signal's number (0 when none).
        early_stopped: ``patience`` epochs passed without a better mAP.
        is_main: this process wrote the files (rank 0 under torchrun; always in a single process).
    """

    output: Path
    best: Dict[str, Any]
    history: List[Dict[str, Any]] = field(default_factory=list)
    stopped_by: Optional[str] = None
    signum: int = 0
    early_stopped: bool = False
    is_main: bool = True

    @property
    def exit_code(self) -> int:
        """0, or 128 + the signal's number (the shell's convention for a signal-ended process)."""
        return 128 + self.signum if self.signum else 0

    @property
    def best_checkpoint(self) -> Optional[Path]:
        return self.output / "best.pth" if self.best.get("mAP", -1.0) >= 0 else None

    @property
    def last_checkpoint(self) -> Path:
        return self.output / "last.pth"


def fit(cfg: Config, hooks: Sequence[Hook] = (), checked: bool = False) -> RunResult:
    """Train, evaluate every epoch, keep the best and the last state.

    Args:
        cfg: a training config; unset fields are resolved (model, input size, output folder) and
            every value, name and file is checked before anything is read or written
            (:func:`asl.checks.check_training`), unless ``checked``.
        hooks: :class:`Hook` objects called after every optimizer step and every epoch, after the
            run's own (the adaptive gamma- trace, TensorBoard, the report).
        checked: ``cfg`` comes from :func:`asl.checks.prepare_training` (the command line): the
            checks are not run twice.

    Returns:
        :class:`RunResult`.

    Raises:
        ASLError: bad input (config, data, checkpoint): the command line prints it as one line.
    """
    if not checked:
        cfg = check_training(resolve_training(cfg))
    resume_ckpt = None
    if cfg.resume:
        resume_ckpt = load_resume_checkpoint(cfg.resume)
        check_resume(resume_ckpt, cfg.model_name, cfg.image_size, cfg.resume, config=cfg)
    out = Path(cfg.output)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes (and holds the lock)
    benchmark = torch.backends.cudnn.benchmark
    # a start that fails (or a dry run) leaves no empty folder
    with claim(
        out,
        TRAINING,
        overwrite=cfg.overwrite,
        sources=config_sources(cfg),
        resume=cfg.resume,
        is_main=main,
        dry_run=cfg.dry_run,
    ):
        try:
            if main and cfg.log_dir and not cfg.dry_run:
                writable_dir(Path(cfg.log_dir), "--log-dir")
            # the pretrained start, before any data is read: downloaded once, or one error line offline
            source = resolve_pretrained(cfg.model_name) if cfg.pretrained and not cfg.resume else None
            run = build_run(cfg, resume_ckpt, source)
            trainer = Trainer(run, out, resume_ckpt, hooks)
            if cfg.dry_run:  # everything resolved and checked: say what would run, write nothing
                print(run.plan)
                print(f"dry run: nothing trained or written; without --dry-run the run writes into {out}")
                return RunResult(out, trainer.state.best, [], is_main=trainer.main)
            with StopSignal() as stop:  # the previous handlers come back when fit returns
                return trainer.loop(stop)
        finally:
            torch.backends.cudnn.benchmark = benchmark  # set for this run's fixed-size inputs only


class StopSignal:
    """SIGTERM / SIGINT set a flag; the loop saves last.pth at the next step and exits.

    The previous handlers come back with :meth:`restore` (or at the end of a ``with`` block).
    Loader workers live in process groups of their own (:func:`asl.builders.leave_process_group`), so a signal
    sent to the run's process group (``timeout``, Ctrl-C) reaches the loop, not the workers."""

    def __init__(self):
        self.signum, self.name = 0, ""
        self._saving, self._pending = 0, False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        if self.signum:  # a second signal: stop now, but never in the middle of writing a file
            if self._saving:
                self._pending = True
                return
            raise Interrupted(self.signum)
        self.signum, self.name = signum, signal.Signals(signum).name

    @contextlib.contextmanager
    def saving(self):
        """A second signal inside this block waits for its end (a checkpoint is written whole)."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1
            if not self._saving and self._pending:
                self._pending = False
                raise Interrupted(self.signum)

    @property
    def received(self) -> bool:
        return bool(self.signum)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> "StopSignal":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def run_hooks(cfg: Config, loss_fn) -> List[Hook]:
    """The run's own hooks: adaptive ASL's gamma- trace, TensorBoard when asked, the report."""
    events = tensorboard_dir(cfg)  # TensorBoard's folder, or None
    return [
        *([GammaTrace()] if isinstance(loss_fn, AdaptiveAsymmetricLoss) else []),
        *([TensorBoard(events)] if events else []),
        HtmlReport(),
    ]


def finished_records(out: Path, cfg: Config, state: RunState) -> List[Dict[str, Any]]:
    """A resumed run's records of the epochs its state has finished (a record written after the
    last state was saved belongs to an epoch that is trained again); none for a new run."""
    if not cfg.resume or not (out / "metrics.jsonl").exists():
        return []
    return [r for r in read_metrics(out / "metrics.jsonl") if r["epoch"] < state.next_epoch]


@dataclass(frozen=True)
class EpochPosition:
    """Where the loop is inside an epoch: the epoch, and the steps it had done before this
    process started it (a mid-epoch resume), which a step's count within the epoch adds to."""

    epoch: int
    done_before: int = 0


class Trainer:
    """The epoch loop of one run over its built objects (:class:`asl.builders.RunObjects`), with
    explicit state (:class:`asl.checkpoint.RunState`) and hooks. :func:`fit` builds and runs one.

    Args:
        run: the run's objects (:func:`asl.builders.build_run`).
        out: the run's output folder (claimed by :func:`fit`).
        resume_ckpt: the ``last.pth`` dict to resume from, or None.
        hooks: extra :class:`Hook` objects, called after the run's own.
    """

    def __init__(self, run: RunObjects, out: Path, resume_ckpt: Optional[Dict[str, Any]], hooks: Sequence[Hook] = ()):
        self.run, self.cfg, self.out = run, run.cfg, out
        self.main = run.dist.is_main  # only it writes files (logging is already rank 0 only)
        writes = self.main and not self.cfg.dry_run
        if writes and (out / "metrics.jsonl").exists() and not self.cfg.resume:
            (out / "metrics.jsonl").unlink()  # an --overwrite run replaces the earlier one's record
        self.state = self._restore(resume_ckpt) if resume_ckpt is not None else RunState()
        if writes:
            dump_config(self.cfg, out / "config.yaml")
        self.meta = run.checkpoint_meta()
        self.hooks: List[Hook] = [*run_hooks(self.cfg, run.optimization.loss_fn), *hooks]
        self.view = _View(self)
        self.last_evaluation: Optional[tuple] = None  # (model's, EMA's) of the latest epoch
        self.best_evaluation: Optional[Dict[str, Any]] = None  # the evaluation best.pth was chosen by
        self.finished = False  # the loop returned (it did not raise)
        self.history = finished_records(out, self.cfg, self.state)

    def _restore(self, ckpt: Dict[str, Any]) -> RunState:
        state = restore_training_state(ckpt, self.run.model, self.run.optimization)
        log.info(
            "resumed from %s at epoch %d%s",
            self.cfg.resume,
            state.next_epoch,
            f", step {state.step_in_epoch}" if state.mid_epoch else "",
        )
        if not state.mid_epoch and state.rng is not None:
            set_rng_state(state.rng)  # mid-epoch: train_one_epoch restores them once its iterator exists
        return state

    # ------------------------------------------------------------------ checkpoints

    def save_last(self, epoch: int, step_in_epoch: int = 0, partial: Optional[Dict[str, Any]] = None) -> None:
        """Everything a resume needs, RNG states last (nothing may draw after them)."""
        if not self.main:
            return
        if partial is not None:  # device counters (defer_sync) become plain numbers here, and only here
            partial = {k: (v.item() if torch.is_tensor(v) else v) for k, v in partial.items()}
            partial["skipped"] = int(partial["skipped"])
        self.state.epoch, self.state.step_in_epoch, self.state.partial = epoch, step_in_epoch, partial
        self.state.rng = get_rng_state()
        with self.stop.saving():  # a second Ctrl-C waits for the file to be whole
            save_checkpoint(
                training_checkpoint(self.state, self.run.model, self.run.optimization, **self.meta),
                self.out / "last.pth",
            )

    # ------------------------------------------------------------------ the loop

    def loop(self, stop: StopSignal) -> RunResult:
        try:
            result = self._loop(stop)
            self.finished = True
            return result
        finally:
            for hook in self.hooks:
                hook.after_run(self.view)

    def _loop(self, stop: StopSignal) -> RunResult:
        cfg, state, run = self.cfg, self.state, self.run
        self.stop = stop
        start = state.next_epoch
        end = min(cfg.stop_epoch or cfg.epochs, cfg.epochs)
        log.info(
            "training %s on %s for %d epochs (schedule %d), %s, loss %s, %d steps/epoch",
            cfg.model_name,
            run.device,
            end - start,
            cfg.epochs,
            "AMP " + str(run.steps.amp_dtype) if run.steps.amp_dtype else "fp32",
            run.optimization.loss_fn.__class__.__name__,
            len(run.train_loader),
        )
        result = RunResult(self.out, state.best, self.history, is_main=self.main)
        for epoch in range(start, end):
            t0 = time.perf_counter()
            resume = state.epoch_resume() if epoch == start else None
            at = EpochPosition(epoch, resume["step"] if resume else 0)
            run.sampler.set_epoch(epoch, at.done_before * cfg.batch_size)
            stats = train_one_epoch(
                run.net,
                run.train_loader,
                run.optimization,
                run.device,
                run.steps,
                epoch=epoch,
                global_step=state.global_step,
                on_step=lambda step, partial, at=at: self.after_step(at, step, partial),
                resume=resume,
                print_freq=cfg.print_freq,
            )
            state.global_step = stats["global_step"]
            if stats["interrupted"]:
                log.warning(
                    "stopped by %s; state saved: resume with --resume %s",
                    stop.name or "a hook",
                    self.out / "last.pth",
                )
                result.stopped_by, result.signum, result.best = stop.name or "hook", stop.signum, state.best
                return result
            rec = self.evaluate_epoch(epoch, stats, t0)
            self.history.append(rec)
            self.save_last(epoch)
            if cfg.patience and epoch - state.best.get("epoch", epoch) >= cfg.patience:
                log.info(
                    "early stop: no better mAP for %d epochs (best %.2f at epoch %d)",
                    cfg.patience,
                    state.best["mAP"],
                    state.best["epoch"],
                )
                result.early_stopped = True
                break
            if stop.received:
                log.warning(
                    "stopped by %s after epoch %d; resume with --resume %s", stop.name, epoch, self.out / "last.pth"
                )
                result.stopped_by, result.signum, result.best = stop.name, stop.signum, state.best
                return result
        if run.dist.enabled:
            torch.distributed.destroy_process_group()
        result.best = state.best
        return result

    def after_step(self, at: EpochPosition, step: int, partial: Dict[str, Any]) -> bool:
        """After every optimizer step: a signal (SIGTERM / SIGINT, on every rank at the same step)
        or ``--checkpoint-every`` saves ``last.pth``; then the hooks, in order. True ends the epoch:
        a signal, or a hook that asked (its state saved as a signal's stop is)."""
        self.state.global_step = step
        signal = self.stop.received
        if self.run.dist.enabled:  # every rank stops at the same step, or the others would hang
            signal = not all_true(not signal, self.run.dist)
        in_epoch = at.done_before + partial["steps"]
        every = self.cfg.checkpoint_every
        due = every and step % every == 0 and in_epoch < len(self.run.train_loader) + at.done_before
        if signal or due:
            self.save_last(at.epoch, in_epoch, partial)
        self.view.stop_asked = False
        asked = False
        for hook in self.hooks:
            asked = bool(hook.after_step(self.view, step, partial)) or asked
        asked = asked or self.view.stop_asked
        if asked and not signal:  # a hook of the caller's ended the run: saved as a signal's stop is
            self.save_last(at.epoch, in_epoch, partial)
        return signal or asked

    def evaluate_epoch(self, epoch: int, stats: Dict[str, Any], t0: float) -> Dict:
        """Evaluate the model and its EMA, write the epoch's record, keep the better one as best.pth."""
        run = self.run
        ema = run.optimization.ema
        for m in (run.model, ema.module if ema else None):
            if m is not None:
                broadcast_buffers(m, run.dist)  # ranks evaluate (and rank 0 saves) one model
        amp = run.steps.amp_dtype
        single = run.cfg.task == "single_label"
        ev = evaluate(
            run.model, run.val_loader, run.device, amp_dtype=amp, desc="val", dist=run.dist, single_label=single
        )
        ev_ema = (
            evaluate(
                ema.module,
                run.val_loader,
                run.device,
                amp_dtype=amp,
                desc="val ema",
                dist=run.dist,
                single_label=single,
            )
            if ema
            else None
        )
        rec = epoch_record(epoch, stats, ev, ev_ema, t0)
        self.last_evaluation = (ev, ev_ema)
        for hook in self.hooks:  # may add fields to the record before it is written
            hook.after_epoch(self.view, rec)
        if self.main:
            atomic_write(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in [*self.history, rec]))
            write_per_class_ap(self.out / "per_class_ap.json", epoch, run.train_ds.class_names, ev, ev_ema)
        log.info(
            "epoch %d: loss %.4f  mAP %.2f  mAP(EMA) %s  %.0fs%s",
            epoch,
            rec["train_loss"],
            rec["mAP"],
            f"{rec['mAP_ema']:.2f}" if ev_ema else "-",
            rec["seconds"],
            (f"  top-1 {rec['top1']:.2f}  macro-F1 {rec['macro_f1']:.2f}" if "top1" in rec else "")
            + (f"  ({rec['bad_images']} unreadable images skipped)" if rec["bad_images"] else ""),
        )
        self.keep_best(epoch, ev, ev_ema)
        if self.main:
            from .plots import plot_training_curves

            plot_training_curves([*self.history, rec], self.out / "curves.png")
        return rec

    def keep_best(self, epoch: int, ev: Dict[str, Any], ev_ema: Optional[Dict[str, Any]]) -> None:
        """The better of the model and its EMA, when better than the best so far, as ``best.pth``."""
        state, ema = self.state, self.run.optimization.ema
        use_ema = ev_ema is not None and ev_ema["mAP"] > ev["mAP"]
        current = max(ev["mAP"], ev_ema["mAP"] if ev_ema else -1.0)
        if current <= state.best["mAP"]:
            return
        state.best = {"mAP": current, "epoch": epoch, "selected": "ema" if use_ema else "model"}
        self.best_evaluation = ev_ema if use_ema else ev
        if self.main:
            with self.stop.saving():
                save_checkpoint(
                    make_checkpoint(
                        ema.module if use_ema else self.run.model,
                        epoch=epoch,
                        selected=state.best["selected"],
                        mAP=current,
                        **self.meta,
                    ),
                    self.out / "best.pth",
                )


def epoch_record(epoch: int, stats: Dict[str, Any], ev: Dict[str, Any], ev_ema: Optional[Dict[str, Any]], t0: float):
    """The epoch's line of ``metrics.jsonl``."""
    return {
        "epoch": epoch,
        "train_loss": stats["train_loss"],
        "mAP": ev["mAP"],
        "mAP_ema": ev_ema["mAP"] if ev_ema else None,
        "lr": stats["lr"],
        "seconds": time.perf_counter() - t0,
        "images_per_s": stats["images_per_s"],
        "data_time": stats["data_time"],
        "nonfinite_steps": stats["nonfinite_steps"],
        "bad_images": stats["bad_images"] + ev["bad_images"],
        # mean validation probability of positive and of negative labels (paper Sec. 2.6)
        "p_pos": ev["p_pos"],
        "p_neg": ev["p_neg"],
        **{k: ev[k] for k in ("top1", "top5", "macro_f1", "balanced_accuracy") if k in ev},
    }


class _View(RunView):
    """The :class:`asl.hooks.RunView` of a :class:`Trainer`: what its hooks see."""

    def __init__(self, trainer: Trainer):
        self._t = trainer
        self.stop_asked = False

    cfg = property(lambda self: self._t.cfg)
    out = property(lambda self: self._t.out)
    rank = property(lambda self: self._t.run.dist.rank)
    is_main = property(lambda self: self._t.main)
    state = property(lambda self: self._t.state)
    loss_fn = property(lambda self: self._t.run.optimization.loss_fn)
    lr = property(lambda self: self._t.run.optimization.optimizer.param_groups[0]["lr"])
    last_evaluation = property(lambda self: self._t.last_evaluation)
    best_evaluation = property(lambda self: self._t.best_evaluation)
    val_dataset = property(lambda self: self._t.run.val_ds)
    finished = property(lambda self: self._t.finished)

    def request_stop(self) -> None:
        self.stop_asked = True
