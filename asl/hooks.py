"""What a run does after a step, an epoch and its end, beyond training: the :class:`Hook`
protocol, the :class:`RunView` a hook sees of the run, and the run's own hooks (the adaptive-gamma
trace, TensorBoard, ``report.html``). A new logger or metric is a new hook, not an edit of the loop.

A hook sees a :class:`RunView`, not the trainer: the config, the output folder, the rank, the
run's state (epoch, steps, best mAP), the loss, the learning rate, the latest evaluation, and
:meth:`RunView.request_stop`. Stopping on a signal and ``--checkpoint-every`` are the loop's own.

    from asl.trainer import Hook, fit

    class PrintLr(Hook):
        def after_step(self, run, step, partial):
            if step % 100 == 0 and run.is_main:
                print(step, run.lr)

    fit(cfg, hooks=[PrintLr()])
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Tuple

import numpy as np

from .files import output_error

__all__ = ["Hook", "RunView", "GammaTrace", "TensorBoard", "HtmlReport"]


class RunView(Protocol):
    """What a hook sees of a run (read-only, but for :meth:`request_stop`).

    Attributes:
        cfg: the run's resolved config (:class:`asl.config.Config`).
        out: the run's output folder.
        rank: this process's rank (0 in a single process).
        is_main: this process writes the run's files (rank 0).
        state: where the run stands (:class:`asl.checkpoint.RunState`: ``epoch``, ``global_step``,
            ``best``).
        loss_fn: the loss module (adaptive ASL's ``gamma_neg`` and ``delta_p`` live there).
        lr: the learning rate now.
        last_evaluation: (the model's, the EMA's or None) evaluation of the latest epoch
            (:func:`asl.metrics.evaluation_result`'s dicts), None before the first.
        best_evaluation: the evaluation ``best.pth`` was chosen by, or None.
        val_dataset: the evaluation dataset (``class_names``, ``paths``, ``name``).
        finished: the loop returned (it did not raise).
    """

    cfg: Any
    out: Path
    rank: int
    is_main: bool
    state: Any
    loss_fn: Any
    lr: float
    last_evaluation: Optional[Tuple[Dict[str, Any], Optional[Dict[str, Any]]]]
    best_evaluation: Optional[Dict[str, Any]]
    val_dataset: Any
    finished: bool

    def request_stop(self) -> None:
        """End the epoch after this step, and the run with it: its state is saved in ``last.pth``
        as a signal's stop is (under torchrun every rank must ask at the same step)."""


class Hook:
    """Something that happens after a step, an epoch or the run of :func:`asl.trainer.fit`:
    subclass and override.

    ``after_step(run, step, partial)`` runs after every optimizer step (``step``: steps since
    the run began; ``partial``: the epoch's running sums so far); returning True (or calling
    ``run.request_stop()``) ends the epoch early and the run with it. ``after_epoch(run, record)``
    runs once the epoch's record (``metrics.jsonl``'s line) is made and before it is written: a
    hook may add fields to it; ``run.last_evaluation`` then holds that epoch's evaluation.
    ``after_run(run)`` runs once when the loop ends. Every rank calls them under torchrun;
    ``run.is_main`` is True on the one that writes files.
    """

    def after_step(self, run: RunView, step: int, partial: Dict[str, Any]) -> bool:
        return False

    def after_epoch(self, run: RunView, record: Dict[str, Any]) -> None:
        pass

    def after_run(self, run: RunView) -> None:
        """Once, when the run's loop ends (finished, stopped early or by a signal)."""


class GammaTrace(Hook):
    """Adaptive ASL: gamma- after every step, and the epoch's gamma- and delta_p in its record."""

    def __init__(self):
        self.trace: List[float] = []  # this epoch's (emptied when its record is made)

    def after_step(self, run: RunView, step: int, partial: Dict[str, Any]) -> bool:
        self.trace.append(round(run.loss_fn.gamma_neg, 4))
        return False

    def after_epoch(self, run: RunView, record: Dict[str, Any]) -> None:
        record.update(gamma_neg=run.loss_fn.gamma_neg, delta_p=run.loss_fn.delta_p, gamma_neg_steps=list(self.trace))
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

    def _open(self, run: RunView):
        if self.writer is None and run.is_main:
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

    def after_step(self, run: RunView, step: int, partial: Dict[str, Any]) -> bool:
        w = self._open(run)
        if w is None:
            return False
        with self._writing():
            self._step(w, run, step, partial)
        return False

    def _step(self, w, run: RunView, step: int, partial: Dict[str, Any]) -> None:
        loss_sum, batches = float(partial["loss_sum"]), int(partial["steps"]) - int(float(partial["skipped"]))
        prev_sum, prev_batches = self.last if batches >= self.last[1] else (0.0, 0)  # a new epoch starts at 0
        if batches > prev_batches:
            w.add_scalar("train/loss", (loss_sum - prev_sum) / (batches - prev_batches), step)
        self.last = (loss_sum, batches)
        w.add_scalar("train/lr", run.lr, step)
        if hasattr(run.loss_fn, "delta_p"):  # adaptive ASL: its gamma- moves
            w.add_scalar("train/gamma_neg", run.loss_fn.gamma_neg, step)

    def after_epoch(self, run: RunView, record: Dict[str, Any]) -> None:
        w = self._open(run)
        self.last = (0.0, 0)
        if w is None:
            return
        with self._writing():
            self._epoch(w, run, record)

    def _epoch(self, w, run: RunView, record: Dict[str, Any]) -> None:
        epoch = record["epoch"]
        scalars = ("mAP", "mAP_ema", "train_loss", "p_pos", "p_neg", "images_per_s", "gamma_neg", "delta_p")
        for key in (*scalars, "top1", "top5", "macro_f1", "balanced_accuracy"):
            if record.get(key) is not None:
                w.add_scalar(f"epoch/{key}", record[key], epoch)
        ev, _ = run.last_evaluation
        labelled = ev["labelled"]
        if labelled is None:  # single-label: accuracy figures are in the epoch's scalars
            w.flush()
            return
        names = run.val_dataset.class_names
        order = np.argsort(-labelled.positives(), kind="stable")[: self.max_pr_classes]
        for k in order:
            _, scores, positive = labelled.segment(k)
            if scores.size:
                w.add_pr_curve(f"pr/{names[k]}", positive, scores, epoch)
        w.flush()

    def after_run(self, run: RunView) -> None:
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

    def after_run(self, run: RunView) -> None:
        ev = run.best_evaluation
        if not run.is_main or not run.finished or ev is None:
            return
        from .report import write_report, write_single_label_report

        best = run.state.best
        title = (
            f"{run.cfg.model_name} on {run.val_dataset.name}: best.pth (epoch {best['epoch']}, "
            f"{best['selected']} weights)"
        )
        if ev.get("truth") is not None:  # single-label
            write_single_label_report(
                run.out / "report.html",
                truth=ev["truth"],
                top=ev["top"],
                top_scores=ev["top_scores"],
                class_names=run.val_dataset.class_names,
                image_paths=run.val_dataset.paths,
                title=title,
                headline={k: ev[k] for k in ("top1", "top5", "macro_f1", "balanced_accuracy")},
            )
            return
        write_report(
            run.out / "report.html",
            labelled=ev["labelled"],
            class_names=run.val_dataset.class_names,
            image_paths=run.val_dataset.paths,
            per_class_ap=ev["per_class_ap"],
            title=title,
            headline={"mAP": float(ev["mAP"]), "epoch": best["epoch"], "images": int(ev["num_images"])},
        )
