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

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .builders import dataset_from_config, loader_for, loss_from_config, prepare_data
from .checkpoint import (
    RunState,
    check_resume,
    load_init_checkpoint,
    load_resume_checkpoint,
    make_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_checkpoint,
)
from .checks import check_training, resolve_device, resolve_training, tensorboard_dir
from .config import Config, dump_config
from .data.base import split_warnings
from .distributed import EpochSampler, ShardSampler, all_true, broadcast_buffers, gather_rows, init_distributed
from .engine import (
    Optimization,
    StepSettings,
    amp_dtype_for,
    build_optimizer,
    build_scheduler,
    evaluate,
    get_rng_state,
    seed_everything,
    set_rng_state,
    train_one_epoch,
)
from .errors import ConfigError, DataError
from .files import atomic_write
from .hooks import CheckpointEvery, GammaTrace, Hook, HtmlReport, StopOnSignal, TensorBoard
from .losses import AdaptiveAsymmetricLoss
from .models import check_batch_trainable, create_model, data_config
from .pretrained import resolve_pretrained
from .process import StopSignal
from .rundir import TRAINING, claim, config_sources, writable_dir

log = logging.getLogger(__name__)

__all__ = ["fit", "RunResult", "Trainer", "Hook", "StopOnSignal", "CheckpointEvery", "GammaTrace", "TensorBoard"]


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


def fit(cfg: Config, hooks: Sequence["Hook"] = ()) -> RunResult:
    """Train, evaluate every epoch, keep the best and the last state.

    Args:
        cfg: a training config (``asl.checks.prepare_training`` builds it from a command line);
            unset fields are resolved (model, input size, output folder) and every value, name
            and file is checked before anything is read or written.
        hooks: :class:`Hook` objects called after every optimizer step and every epoch, after
            the run's own (signals, the adaptive gamma- trace, ``--checkpoint-every``).

    Returns:
        :class:`RunResult`.

    Raises:
        ASLError: bad input (config, data, checkpoint): the command line prints it as one line.
    """
    cfg = check_training(resolve_training(cfg))
    resume_ckpt = None
    if cfg.resume:
        resume_ckpt = load_resume_checkpoint(cfg.resume)
        check_resume(resume_ckpt, cfg.model_name, cfg.image_size, cfg.resume, config=cfg)
    out = Path(cfg.output)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes (and holds the lock)
    with claim(
        out,
        TRAINING,
        overwrite=cfg.overwrite,
        sources=config_sources(cfg),
        resume=cfg.resume,
        is_main=main,
        dry_run=cfg.dry_run,  # a start that fails (or a dry run) leaves no empty folder
    ):
        return _fit(cfg, out, resume_ckpt, hooks, main)


def _fit(
    cfg: Config, out: Path, resume_ckpt: Optional[Dict[str, Any]], hooks: Sequence["Hook"], main: bool
) -> RunResult:
    """Build the run in its claimed folder, train it."""
    benchmark = torch.backends.cudnn.benchmark
    try:
        if main and cfg.log_dir and not cfg.dry_run:
            writable_dir(Path(cfg.log_dir), "--log-dir")
        # the pretrained start, before any data is read: downloaded once, or one error line offline
        source = resolve_pretrained(cfg.model_name) if cfg.pretrained and not cfg.resume else None
        run = Trainer(cfg, out, resume_ckpt, source, hooks)
        if cfg.dry_run:  # everything resolved and checked: say what would run, write nothing
            print(run.plan)
            print(f"dry run: nothing trained or written; without --dry-run the run writes into {out}")
            return RunResult(out, run.state.best, [], is_main=run.main)
        with StopSignal() as stop:  # the previous handlers come back when fit returns
            return run.loop(stop)
    finally:
        torch.backends.cudnn.benchmark = benchmark  # set for this run's fixed-size inputs only


class Trainer:
    """The objects of one run, built in torchvision's ``main()`` order (device, data, model,
    optimizer, schedule, EMA, scaler, resume), and its epoch loop with explicit state
    (:class:`asl.checkpoint.RunState`) and hooks. :func:`fit` builds and runs one.

    Args:
        cfg: the checked training config.
        out: the run's output folder (claimed by :func:`fit`).
        resume_ckpt: the ``last.pth`` dict to resume from, or None.
        source: the pretrained start (:class:`asl.pretrained.PretrainedSource`), or None.
        hooks: extra :class:`Hook` objects, called after the run's own.
    """

    def __init__(
        self, cfg: Config, out: Path, resume_ckpt: Optional[Dict[str, Any]], source=None, hooks: Sequence[Hook] = ()
    ):
        self.cfg, self.out = cfg, out
        self.dist, device = init_distributed(resolve_device(cfg.device))
        self.device = device
        cuda = device.type == "cuda"
        # CUDA: channels_last unless --no-channels-last (NHWC convolutions; measured on an H100, torch 2.11:
        # 374 vs 312 img/s for TResNet-L 448, 3118 vs 2136 for TResNet-M 224); cuDNN picks its
        # fastest kernels for the fixed input size; fused optimizer steps that skip on the device.
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else cuda
        cfg = self.cfg = dataclasses.replace(cfg, channels_last=self.channels_last)  # what ran, in config.yaml
        if cuda:
            torch.backends.cudnn.benchmark = True
        self.main = self.dist.is_main  # only it writes files (logging is already rank 0 only)
        if self.main and (out / "metrics.jsonl").exists() and not cfg.resume and not cfg.dry_run:
            (out / "metrics.jsonl").unlink()  # an --overwrite run replaces the earlier one's record
        seed_everything(cfg.seed)
        self.amp_dtype = amp_dtype_for(device, cfg.amp)

        self.loss_fn = loss_from_config(cfg).to(device)  # a bad loss setting fails before any data is read
        # Data first: the class count sizes the head; mean/std come from the model's timm config.
        mean, std = data_config(cfg.model_name)
        prepare_data(cfg)
        self.train_ds = dataset_from_config(cfg, train=True, mean=mean, std=std)
        self.val_ds = dataset_from_config(cfg, train=False, mean=mean, std=std)
        log.info("%s\n%s", self.train_ds.summary(), self.val_ds.summary())
        for warning in split_warnings(self.train_ds, self.val_ds) + count_warnings(cfg, self.train_ds, self.val_ds):
            log.warning("warning: %s", warning)
        if resume_ckpt is not None:
            check_resume(resume_ckpt, cfg.model_name, cfg.image_size, cfg.resume, self.train_ds.class_names)
        per_rank = -(-len(self.train_ds) // self.dist.world_size)
        smallest = cfg.batch_size if per_rank > cfg.batch_size else per_rank  # later batches of one are dropped
        if smallest == 1 or cfg.batch_size == 1:
            check_batch_trainable(cfg.model_name, cfg.image_size, 1)
        model = create_model(
            cfg.model_name,
            self.train_ds.num_classes,
            head=cfg.head,
            pretrained_file=str(source.file) if source is not None else None,
            num_groups=cfg.num_of_groups,
            decoder_embedding=cfg.decoder_embedding,
        )
        if source is not None:
            log.info("pretrained start: %s", source.describe())
        init = cfg.init_checkpoint or cfg.model_path
        if init:
            load_init_checkpoint(model, init)
        if cfg.sync_bn and self.dist.enabled:
            if device.type != "cuda":
                raise ConfigError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU implementation)")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.plan = recipe(cfg, source, mean, std, self.train_ds, self.val_ds)
        log.info("%s", self.plan)

        self.sampler = EpochSampler(len(self.train_ds), cfg.seed, self.dist.rank, self.dist.world_size)
        self.train_loader = loader_for(self.train_ds, cfg, train=True, device=device, sampler=self.sampler)
        val_sampler = (
            ShardSampler(len(self.val_ds), self.dist.rank, self.dist.world_size) if self.dist.enabled else None
        )
        self.val_loader = loader_for(self.val_ds, cfg, train=False, device=device, sampler=val_sampler)
        self.optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, fused=cuda)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.lr, cfg.epochs, max(len(self.train_loader) // cfg.accum_steps, 1), cfg.pct_start
        )
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        # no host synchronization per step where the optimizer can skip a step on the device
        self.defer_sync = cuda and self.scaler is None and getattr(self.optimizer, "_step_supports_amp_scaling", False)
        self.optimization = Optimization(
            self.loss_fn, self.optimizer, self.scheduler, self.ema, self.scaler, cfg.grad_clip
        )
        self.step_settings = StepSettings(
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
            accum_steps=cfg.accum_steps,
            max_nonfinite=cfg.max_nonfinite,
            all_finite=(lambda ok: all_true(ok, self.dist)) if self.dist.enabled else None,
            defer_sync=self.defer_sync,
        )
        net = model  # what the steps run: DDP under torchrun; EMA and checkpoints use the bare model
        if self.dist.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if cfg.compile:
            net = torch.compile(net)
        self.net = net

        self.state = RunState()
        if resume_ckpt is not None:
            self.state = restore_training_state(
                resume_ckpt, model, self.optimizer, self.scheduler, self.ema, self.scaler, self.loss_fn
            )
            log.info(
                "resumed from %s at epoch %d%s",
                cfg.resume,
                self.state.next_epoch,
                f", step {self.state.step_in_epoch}" if self.state.mid_epoch else "",
            )
            if not self.state.mid_epoch and self.state.rng is not None:
                set_rng_state(self.state.rng)  # mid-epoch: train_one_epoch restores them once its iterator exists
        if self.main and not cfg.dry_run:
            dump_config(cfg, out / "config.yaml")
        self.meta = dict(
            model_name=cfg.model_name,
            class_names=self.train_ds.class_names,
            image_size=cfg.image_size,
            mean=mean,
            std=std,
            config=cfg.to_dict(),
            head=cfg.head,
        )
        self.adaptive = isinstance(self.loss_fn, AdaptiveAsymmetricLoss)
        events = tensorboard_dir(cfg)  # TensorBoard's folder, or None
        self.hooks: List[Hook] = [
            StopOnSignal(),
            *([GammaTrace()] if self.adaptive else []),
            CheckpointEvery(cfg.checkpoint_every),
            *([TensorBoard(events)] if events else []),
            HtmlReport(),
            *hooks,
        ]
        self.last_evaluation: Optional[tuple] = None  # (model's, EMA's) of the latest epoch
        self.best_evaluation: Optional[Dict[str, Any]] = None  # the evaluation best.pth was chosen by
        self.result: Optional[RunResult] = None  # set when the loop returns (not when it raises)
        self.stop_requested = False
        self.history: List[Dict[str, Any]] = []
        if cfg.resume and (out / "metrics.jsonl").exists():
            # records of epochs the resumed state has finished (a record written after the last
            # state was saved belongs to an epoch that is trained again)
            self.history = [r for r in read_metrics(out / "metrics.jsonl") if r["epoch"] < self.state.next_epoch]

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
                training_checkpoint(
                    self.state,
                    self.model,
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                    ema=self.ema,
                    scaler=self.scaler,
                    loss_fn=self.loss_fn,
                    **self.meta,
                ),
                self.out / "last.pth",
            )

    # ------------------------------------------------------------------ the loop

    def loop(self, stop: StopSignal) -> RunResult:
        try:
            self.result = self._loop(stop)
            return self.result
        finally:
            for hook in self.hooks:
                hook.after_run(self)

    def _loop(self, stop: StopSignal) -> RunResult:
        cfg, state = self.cfg, self.state
        self.stop = stop
        start = state.next_epoch
        end = min(cfg.stop_epoch or cfg.epochs, cfg.epochs)
        log.info(
            "training %s on %s for %d epochs (schedule %d), %s, loss %s, %d steps/epoch",
            cfg.model_name,
            self.device,
            end - start,
            cfg.epochs,
            "AMP " + str(self.amp_dtype) if self.amp_dtype else "fp32",
            self.loss_fn.__class__.__name__,
            len(self.train_loader),
        )
        result = RunResult(self.out, state.best, self.history, is_main=self.main)
        for epoch in range(start, end):
            t0 = time.perf_counter()
            resume = state.epoch_resume() if epoch == start else None
            done_before = resume["step"] if resume else 0
            self.sampler.set_epoch(epoch, done_before * cfg.batch_size)
            self.epoch, self.done_before = epoch, done_before
            stats = train_one_epoch(
                self.net,
                self.train_loader,
                self.optimization,
                self.device,
                self.step_settings,
                epoch=epoch,
                global_step=state.global_step,
                on_step=self.on_step,
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
        if self.dist.enabled:
            torch.distributed.destroy_process_group()
        result.best = state.best
        return result

    def on_step(self, step: int, partial: Dict[str, Any]) -> bool:
        """After every optimizer step: the hooks, in order; True ends the epoch."""
        self.state.global_step = step
        stop = False
        for hook in self.hooks:
            stop = bool(hook.after_step(self, step, partial)) or stop
        if stop and not self.stop_requested:  # a hook of the caller's ended the run: saved as a signal's stop is
            self.stop_requested = True
            self.save_last(self.epoch, self.done_before + partial["steps"], partial)
        return stop

    def evaluate_epoch(self, epoch: int, stats: Dict[str, Any], t0: float) -> Dict:
        """Evaluate the model and its EMA, write the epoch's record, keep the better one as best.pth."""
        state, ema = self.state, self.ema
        gather = (lambda rows: gather_rows(rows, len(self.val_ds), self.dist)) if self.dist.enabled else None
        for m in (self.model, ema.module if ema else None):
            if m is not None:
                broadcast_buffers(m, self.dist)  # ranks evaluate (and rank 0 saves) one model
        ev = evaluate(self.model, self.val_loader, self.device, amp_dtype=self.amp_dtype, desc="val", gather=gather)
        ev_ema = (
            evaluate(ema.module, self.val_loader, self.device, amp_dtype=self.amp_dtype, desc="val ema", gather=gather)
            if ema
            else None
        )
        pos, neg = ev["targets"] == 1, ev["targets"] == 0
        rec = {
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
            "p_pos": float(ev["scores"][pos].mean()) if pos.any() else None,
            "p_neg": float(ev["scores"][neg].mean()) if neg.any() else None,
        }
        self.last_evaluation = (ev, ev_ema)
        for hook in self.hooks:  # may add fields to the record before it is written
            hook.after_epoch(self, rec)
        if self.main:
            atomic_write(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in [*self.history, rec]))
            write_per_class_ap(self.out / "per_class_ap.json", epoch, self.train_ds.class_names, ev, ev_ema)
        log.info(
            "epoch %d: loss %.4f  mAP %.2f  mAP(EMA) %s  %.0fs%s",
            epoch,
            rec["train_loss"],
            rec["mAP"],
            f"{rec['mAP_ema']:.2f}" if ev_ema else "-",
            rec["seconds"],
            f"  ({rec['bad_images']} unreadable images skipped)" if rec["bad_images"] else "",
        )

        use_ema = ev_ema is not None and ev_ema["mAP"] > ev["mAP"]
        current = max(ev["mAP"], ev_ema["mAP"] if ev_ema else -1.0)
        if current > state.best["mAP"]:
            state.best = {"mAP": current, "epoch": epoch, "selected": "ema" if use_ema else "model"}
            self.best_evaluation = ev_ema if use_ema else ev
            if self.main:
                with self.stop.saving():
                    save_checkpoint(
                        make_checkpoint(
                            ema.module if use_ema else self.model,
                            epoch=epoch,
                            selected=state.best["selected"],
                            mAP=current,
                            **self.meta,
                        ),
                        self.out / "best.pth",
                    )
        if self.main:
            from .plots import plot_training_curves

            plot_training_curves([*self.history, rec], self.out / "curves.png")
        return rec


# The official annotated-image counts (images with at least one annotation: what the official
# loader keeps). Another count means another split, and a number that cannot be compared.
COCO_COUNTS = {"train2014": 82_081, "val2014": 40_137, "train2017": 117_266, "val2017": 4_952}


def count_warnings(cfg: Config, train_ds, val_ds) -> List[str]:
    """A COCO split of the standard layout whose image count is not the official one."""
    out = []
    if cfg.dataset != "coco" or cfg.ann_file or cfg.keep_unannotated:
        return out
    for ds in (train_ds, val_ds):
        split = ds.name.split()[-1]
        want = COCO_COUNTS.get(split)
        if want is not None and len(ds) != want:
            out.append(
                f"{ds.name} has {len(ds):,} annotated images, the official split {want:,}: its mAP is not "
                f"comparable with the published numbers (a partial download, or another split)"
            )
    return out


def recipe(cfg: Config, source, mean, std, train_ds, val_ds) -> str:
    """The resolved recipe in one block: what a run will train from, on what, how."""
    start = (
        source.describe()
        if source is not None
        else (
            f"weights file {cfg.init_checkpoint or cfg.model_path}"
            if (cfg.init_checkpoint or cfg.model_path)
            else f"--resume {cfg.resume}"
            if cfg.resume
            else "random weights (no --pretrained)"
        )
    )
    stop = f", stopped after {cfg.stop_epoch}" if cfg.stop_epoch and cfg.stop_epoch < cfg.epochs else ""
    loss = cfg.loss + (
        f" (gamma- {cfg.gamma_neg:g}, gamma+ {cfg.gamma_pos:g}, clip {cfg.clip:g})"
        if cfg.loss in ("asl", "asl_optimized", "adaptive_asl")
        else ""
    )
    return "\n".join(
        [
            "recipe:",
            f"  model       {cfg.model_name}, start: {start}",
            f"  input       {cfg.image_size} px ({cfg.resize}), mean {tuple(round(m, 4) for m in mean)}, "
            f"std {tuple(round(s, 4) for s in std)}, augment {cfg.augment}",
            f"  data        {cfg.dataset} {cfg.data_root}: train {len(train_ds):,} images, val {len(val_ds):,}, "
            f"{train_ds.num_classes} classes",
            f"  optimizer   {cfg.optimizer} lr {cfg.lr:g} wd {cfg.weight_decay:g}, OneCycle over {cfg.epochs} epochs"
            f"{stop}, batch {cfg.batch_size}"
            + (f" x {cfg.accum_steps} accumulated" if cfg.accum_steps > 1 else "")
            + (f", EMA {cfg.ema_decay:g}" if cfg.ema else ""),
            f"  loss        {loss}",
        ]
    )


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The epoch records of a run's ``metrics.jsonl``; a damaged file is one :class:`DataError` line."""
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(
            f"{path} is damaged ({type(e).__name__}: {e}); move it away to resume without the earlier epochs' records"
        ) from None
    if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in records):
        raise DataError(
            f"{path} holds a line that is not an epoch record; move it away to resume without the "
            f"earlier epochs' records"
        )
    return records


def write_per_class_ap(path: Path, epoch: int, class_names, ev: Dict[str, Any], ev_ema: Optional[Dict]) -> None:
    """The latest epoch's AP per class, plain and EMA (read by the study's frequency analysis)."""

    def ap(e):
        return None if e is None else [None if v != v else round(float(v), 5) for v in e["per_class_ap"]]

    atomic_write(
        path, json.dumps({"epoch": epoch, "class_names": list(class_names), "ap": ap(ev), "ap_ema": ap(ev_ema)})
    )
