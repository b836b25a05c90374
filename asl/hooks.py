"""What happens after a step, an epoch and a run of :func:`asl.trainer.fit`: the :class:`Hook`
interface and the run's own hooks (stop on a signal, ``last.pth`` every N steps, the adaptive-gamma
trace, TensorBoard). A new logger or metric is a new hook, not an edit of the loop."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, List

import numpy as np

from .distributed import all_true
from .files import output_error

# The hooks receive the asl.trainer.Trainer that calls them (not imported: the trainer imports this).
Trainer = Any

__all__ = ["Hook", "StopOnSignal", "CheckpointEvery", "GammaTrace", "TensorBoard", "HtmlReport"]


class Hook:
    """Something that happens after a step or an epoch of :func:`fit`: subclass and override.

    ``after_step(trainer, step, partial)`` runs after every optimizer step (``step``: steps since
    the run began; ``partial``: the epoch's running sums so far); returning True ends the epoch
    early and the run with it, its state saved in ``last.pth`` as a signal's stop is (under torchrun
    every rank must return the same). ``after_epoch(trainer, record)`` runs once the epoch's record
    (``metrics.jsonl``'s line) is made and before it is written: a hook may add fields to it;
    ``trainer.last_evaluation`` then holds that epoch's evaluation (model, EMA). ``after_run(trainer)``
    runs once when the loop ends.
    Every rank calls them under torchrun; ``trainer.main`` is True on the one that writes files.
    """

    def after_step(self, trainer: Trainer, step: int, partial: Dict[str, Any]) -> bool:
        return False

    def after_epoch(self, trainer: Trainer, record: Dict[str, Any]) -> None:
        pass

    def after_run(self, trainer: Trainer) -> None:
        """Once, when the run's loop ends (finished, stopped early or by a signal)."""


class StopOnSignal(Hook):
    """SIGTERM / SIGINT end the epoch at the next step, on every rank at the same step."""

    def after_step(self, trainer: Trainer, step: int, partial: Dict[str, Any]) -> bool:
        stop_now = trainer.stop.received
        if trainer.dist.enabled:  # every rank stops at the same step, or the others would hang
            stop_now = not all_true(not stop_now, trainer.dist)
        trainer.stop_requested = stop_now
        return stop_now


class CheckpointEvery(Hook):
    """``last.pth`` every ``every`` optimizer steps (0: never mid-epoch), and at a signal's stop."""

    def __init__(self, every: int):
        self.every = every

    def after_step(self, trainer: Trainer, step: int, partial: Dict[str, Any]) -> bool:
        in_epoch = trainer.done_before + partial["steps"]
        if trainer.stop_requested or (
            self.every and step % self.every == 0 and in_epoch < len(trainer.train_loader) + trainer.done_before
        ):
            trainer.save_last(trainer.epoch, in_epoch, partial)
        return False


class GammaTrace(Hook):
    """Adaptive ASL: gamma- after every step, and the epoch's gamma- and delta_p in its record."""

    def __init__(self):
        self.trace: List[float] = []  # this epoch's (emptied when its record is made)

    def after_step(self, trainer: Trainer, step: int, partial: Dict[str, Any]) -> bool:
        self.trace.append(round(trainer.loss_fn.gamma_neg, 4))
        return False

    def after_epoch(self, trainer: Trainer, record: Dict[str, Any]) -> None:
        record.update(
            gamma_neg=trainer.loss_fn.gamma_neg, delta_p=trainer.loss_fn.delta_p, gamma_neg_steps=list(self.trace)
        )
        self.trace = []


class TensorBoard(Hook):
    """``--tensorboard`` / ``--log-dir``: TensorBoard event files, written by rank 0 with
    ``torch.utils.tensorboard``: per step the training loss and learning rate (and adaptive ASL's
    gamma-), per epoch the metrics of the model and its EMA, and a precision-recall curve per class.

    The per-step loss is read back from the device each step: on a GPU that is a host
    synchronization per step, the price of a per-step curve.

    Args:
        log_dir: the folder of the event files.
        max_pr_classes: PR curves for at most this many classes (the most frequent in the
            validation split), so that 9,605 classes do not make a gigabyte of events.
    """

    def __init__(self, log_dir: str, max_pr_classes: int = 100):
        self.log_dir, self.max_pr_classes = str(log_dir), int(max_pr_classes)
        self.writer = None
        self.last = (0.0, 0)
        self._excepthook = None

    def _open(self, trainer: Trainer):
        if self.writer is None and trainer.main:
            from torch.utils.tensorboard import SummaryWriter

            # The writer's thread raises a failed write (a full disk) again in the run's thread,
            # where it becomes one error line; its own traceback is not printed. Restored in after_run.
            previous = self._excepthook = threading.excepthook

            def quiet(args, previous=previous):
                if type(args.thread).__name__ != "_AsyncWriterThread":
                    previous(args)

            threading.excepthook = quiet
            with self._writing():
                self.writer = SummaryWriter(self.log_dir)
        return self.writer

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except OSError as e:
            raise output_error(self.log_dir, e) from None

    def after_step(self, trainer: Trainer, step: int, partial: Dict[str, Any]) -> bool:
        w = self._open(trainer)
        if w is None:
            return False
        with self._writing():
            self._step(w, trainer, step, partial)
        return False

    def _step(self, w, trainer: Trainer, step: int, partial: Dict[str, Any]) -> None:
        loss_sum, batches = float(partial["loss_sum"]), int(partial["steps"]) - int(float(partial["skipped"]))
        prev_sum, prev_batches = self.last if batches >= self.last[1] else (0.0, 0)  # a new epoch starts at 0
        if batches > prev_batches:
            w.add_scalar("train/loss", (loss_sum - prev_sum) / (batches - prev_batches), step)
        self.last = (loss_sum, batches)
        w.add_scalar("train/lr", trainer.optimizer.param_groups[0]["lr"], step)
        if trainer.adaptive:
            w.add_scalar("train/gamma_neg", trainer.loss_fn.gamma_neg, step)

    def after_epoch(self, trainer: Trainer, record: Dict[str, Any]) -> None:
        w = self._open(trainer)
        self.last = (0.0, 0)
        if w is None:
            return
        with self._writing():
            self._epoch(w, trainer, record)

    def _epoch(self, w, trainer: Trainer, record: Dict[str, Any]) -> None:
        epoch = record["epoch"]
        for key in ("mAP", "mAP_ema", "train_loss", "p_pos", "p_neg", "images_per_s", "gamma_neg", "delta_p"):
            if record.get(key) is not None:
                w.add_scalar(f"epoch/{key}", record[key], epoch)
        ev, _ = trainer.last_evaluation
        targets, scores = ev["targets"], ev["scores"]
        names = trainer.train_ds.class_names
        order = np.argsort(-(targets == 1).sum(0), kind="stable")[: self.max_pr_classes]
        for k in order:
            known = targets[:, k] >= 0
            if known.any():
                w.add_pr_curve(f"pr/{names[k]}", targets[known, k] == 1, scores[known, k], epoch)
        w.flush()

    def after_run(self, trainer: Trainer) -> None:
        if self.writer is not None:
            try:
                with self._writing():
                    self.writer.close()
            finally:
                self.writer = None
                threading.excepthook = self._excepthook


class HtmlReport(Hook):
    """``report.html`` in the run's folder when the run ends (finished, or stopped by a signal),
    from the evaluation ``best.pth`` was chosen by (:mod:`asl.report`)."""

    def after_run(self, trainer: Trainer) -> None:
        ev = trainer.best_evaluation
        if not trainer.main or trainer.result is None or ev is None or trainer.cfg.dry_run:
            return
        from .report import write_report

        best = trainer.state.best
        write_report(
            trainer.out / "report.html",
            scores=ev["scores"],
            targets=ev["targets"],
            class_names=trainer.val_ds.class_names,
            image_paths=trainer.val_ds.paths,
            per_class_ap=ev["per_class_ap"],
            title=f"{trainer.cfg.model_name} on {trainer.val_ds.name}: best.pth (epoch {best['epoch']}, "
            f"{best['selected']} weights)",
            headline={"mAP": float(ev["mAP"]), "epoch": best["epoch"], "images": int(ev["num_images"])},
        )
