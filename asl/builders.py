"""Build a run from its config: :func:`build_run` builds everything a training run needs, in the
order torchvision's ``references/classification/train.py`` reads: the device, the loss, the data,
the model with its start, SyncBN and channels-last, the loaders, the optimizer, the schedule, the
EMA, the AMP scaler, DDP and ``torch.compile``. Its parts (datasets, loaders, loss, optimizer,
schedule, the AMP choice) serve validation and the benchmarks too."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .config import Config, check_num_classes
from .data import DATASETS, ReadOptions, build_transform, create_dataset, default_splits
from .distributed import DistInfo, EpochSampler, ShardSampler, all_true, init_distributed
from .engine import Optimization, StepSettings
from .errors import ConfigError, DataError
from .losses import COMMON_LOSS_OPTIONS, LOSS_OPTIONS, PARTIAL_OPTIONS, build_loss

log = logging.getLogger(__name__)


def prepare_data(cfg: Config) -> None:
    """The explicit data step before a dataset is built: the demo is generated into its folder
    (once; an identical one is kept, a folder that is not a demo is refused). Other datasets
    are read where they are."""
    if cfg.dataset == "demo":
        from .data.demo import ensure_demo

        ensure_demo(Path(cfg.data_root), num_classes=cfg.demo_classes, single_label=cfg.task == "single_label")


def dataset_from_config(
    cfg: Config,
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    split: Optional[str] = None,
    class_order: Optional[Sequence[str]] = None,
):
    """The training (``train=True``) or evaluation split named by ``cfg``; ``class_order``: the class
    names of the checkpoint being validated or fine-tuned, for a dataset whose files may not fix its
    class list (Open Images without ``classes-trainable.txt``)."""
    train_split, eval_split = default_splits(cfg.dataset)
    split = split or ((cfg.train_split or train_split) if train else (cfg.val_split or eval_split))
    transform = build_transform(
        train, cfg.image_size, mean, std, augment=cfg.augment if train else "none", resize=cfg.resize
    )
    spec = DATASETS[cfg.dataset]
    options = {o: (0 if o == "seed" else getattr(cfg, o)) for o in spec.options}  # tagged splits with seed 0
    if spec.follows_checkpoint and class_order:
        options["class_order"] = list(class_order)
    if spec.streams:
        options.update(train=train, seed=cfg.seed)
    ds = create_dataset(
        cfg.dataset,
        cfg.data_root,
        split,
        transform,
        read=ReadOptions(cfg.max_bad_fraction, cfg.max_bad_images, draft_size=cfg.image_size if train else None),
        **options,
    )
    if cfg.task == "single_label":
        check_single_label(ds)
    if train and cfg.label_noise:
        flip_positives(ds, cfg.label_noise, cfg.seed)
    check_num_classes(cfg.num_classes, ds.num_classes, ds.name)
    return ds


def check_single_label(ds) -> None:
    """One class per image, none unknown: else one error naming the first image that is not."""
    import numpy as np

    labels = ds.labels
    if not hasattr(labels, "positives_per_image"):  # shards: their counts, checked when written
        return
    per_image = labels.positives_per_image()
    bad = np.flatnonzero(per_image != 1)
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{ds.name}: --task single-label needs one class per image; {ds.paths[i]} has {int(per_image[i])} "
            f"({len(bad)} such images)"
        )
    if labels.unknown():
        raise DataError(f"{ds.name}: --task single-label needs every label known; {labels.unknown()} are unknown")


def flip_positives(ds, fraction: float, seed: int) -> int:
    """Turn a seeded ``fraction`` of the positive labels into negatives (missing labels, as
    in the paper's mislabeled-negatives analysis). Returns how many were flipped."""
    import numpy as np

    from .data.labels import DenseLabels

    if not isinstance(ds.labels, DenseLabels):
        raise ConfigError(f"--label-noise flips labels of a dense label matrix; {ds.name} holds sparse labels")
    matrix = ds.labels.matrix.reshape(-1)
    pos = np.flatnonzero(matrix == 1)
    rng = np.random.default_rng(seed + 7_919)
    flip = rng.choice(pos, size=int(round(fraction * pos.size)), replace=False)
    matrix[flip] = 0.0
    return int(flip.size)


def loader_for(ds, cfg: Config, train: bool, device: torch.device, sampler=None):
    """A DataLoader: ``sampler`` orders training batches (``asl.distributed.EpochSampler``), pinned
    memory on CUDA, persistent workers in process groups of their own (a signal to the run's group reaches
    the training loop alone)."""
    if isinstance(ds, torch.utils.data.IterableDataset):  # shards: the dataset deals batches to workers
        ds.configure(cfg.batch_size, cfg.workers)
        sampler = None
    return torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        # a short last batch is dropped when there are full ones (BatchNorm and a batch of one);
        # counted per process: under torchrun the sampler holds this rank's share
        drop_last=train and len(sampler if sampler is not None else ds) > cfg.batch_size,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.workers > 0,
        worker_init_fn=leave_process_group if cfg.workers > 0 else None,
    )


def loss_from_config(cfg: Config) -> torch.nn.Module:
    """The loss named by ``cfg.loss`` with the config's settings that loss reads (``LOSS_OPTIONS``);
    with ``--unknown-labels``, the partial-label loss in that mode (:class:`asl.partial.PartialAsymmetricLoss`,
    its prior attached by :func:`attach_prior` once the classes are known)."""
    name = cfg.loss.lower().replace("-", "_")
    if cfg.task == "single_label":
        from .losses import SINGLE_LABEL_LOSSES, build_single_label_loss

        table = SINGLE_LABEL_LOSSES.get("asl_single_label" if name == "asl" else name)
        if table is None:
            raise ConfigError(f"--loss {cfg.loss} is a multi-label loss; --task single-label trains asl, ce or focal")
        return build_single_label_loss(name, **{arg: getattr(cfg, f) for f, arg in table.items()})
    if name in ("asl_single_label", "ce"):
        raise ConfigError(f"--loss {cfg.loss} is a single-label loss: pass --task single-label")
    if name not in LOSS_OPTIONS:
        raise ConfigError(f"unknown loss {cfg.loss!r} for multi-label training; choose from {', '.join(LOSS_OPTIONS)}")
    if cfg.unknown_labels:
        from .partial import PartialAsymmetricLoss

        reads = {f: arg for f, arg in {**LOSS_OPTIONS["asl"], **PARTIAL_OPTIONS}.items() if arg}
        return PartialAsymmetricLoss(cfg.unknown_labels, **{arg: getattr(cfg, f) for f, arg in reads.items()})
    reads = {**COMMON_LOSS_OPTIONS, **LOSS_OPTIONS[name]}
    kwargs = {arg: getattr(cfg, f) for f, arg in reads.items()}
    kwargs["label_smoothing"] = kwargs.get("label_smoothing") or 0.0  # unset: none for multi-label
    return build_loss(name, **kwargs)


def attach_prior(loss_fn: torch.nn.Module, prior_file: Optional[str], class_names: Sequence[str]) -> None:
    """The class prior of ``--prior-file`` (a CSV ``Classes,avg_pred``, as CSL and ``validate.py
    --write-prior`` write it) on the partial-label loss, in the dataset's class order (matched by name).

    Raises:
        DataError: a file of another class list, or values that are not probabilities.
    """
    if not prior_file:
        return
    from .classes import read_prior

    loss_fn.prior = torch.as_tensor(read_prior(prior_file, class_names), dtype=torch.float32)


def amp_dtype_for(device: torch.device, enabled: bool) -> Optional[torch.dtype]:
    """Autocast dtype: bf16 on CUDA where supported, else fp16; None (off) on the CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# timm names whose optimizer is torch's own Adam / AdamW / SGD, which have a fused implementation
# (one kernel for all parameters, and a step skipped on the device: StepSettings.defer_sync).
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


@dataclass(frozen=True)
class RunObjects:
    """Everything a training run needs, built by :func:`build_run`.

    Attributes:
        cfg: the config as it runs (``channels_last`` resolved: what ``config.yaml`` records).
        device: where it trains.
        dist: the process group (one process: rank 0 of 1).
        model: the bare model: what EMA, evaluation and checkpoints use.
        net: what the steps run: ``model`` under DDP (torchrun) and ``torch.compile`` (``--compile``).
        train_ds, val_ds: the datasets.
        train_loader, val_loader: their loaders.
        sampler: the training sampler (seeded per epoch, resumable mid-epoch).
        optimization: the loss, optimizer, schedule, EMA, scaler and grad clip.
        steps: how a step runs (:class:`asl.engine.StepSettings`).
        mean, std: the input normalisation (the model's timm config).
        plan: the recipe block the run logs and ``--dry-run`` prints.
    """

    cfg: Config
    device: torch.device
    dist: DistInfo
    model: nn.Module
    net: nn.Module
    train_ds: Any
    val_ds: Any
    train_loader: Any
    val_loader: Any
    sampler: EpochSampler
    optimization: Optimization
    steps: StepSettings
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    plan: str

    def checkpoint_meta(self) -> Dict[str, Any]:
        """What every checkpoint of the run carries besides its weights (``make_checkpoint``'s keywords)."""
        return dict(
            model_name=self.cfg.model_name,
            class_names=self.train_ds.class_names,
            image_size=self.cfg.image_size,
            mean=self.mean,
            std=self.std,
            config=self.cfg.to_dict(),
            head=self.cfg.head,
            task=self.cfg.task or "multi_label",
        )


def build_run(cfg: Config, resume_ckpt: Optional[Dict[str, Any]] = None, source=None) -> RunObjects:
    """Build a run from its checked config (:func:`asl.checks.check_training`).

    Args:
        cfg: the training config.
        resume_ckpt: the ``last.pth`` dict it resumes (its classes are checked once the data is read).
        source: the pretrained start (:class:`asl.pretrained.PretrainedSource`), or None.

    Returns:
        :class:`RunObjects`. On CUDA, cuDNN's autotuner is switched on (the caller restores it).
    """
    from .checkpoint import check_resume, load_init_checkpoint, seed_everything
    from .checks import resolve_device
    from .models import data_config

    dist, device = init_distributed(resolve_device(cfg.device))
    cuda = device.type == "cuda"
    # CUDA: channels_last unless --no-channels-last (NHWC convolutions, measured faster: docs/performance.md);
    # cuDNN picks its fastest kernels for the fixed input size; fused optimizer steps that skip on the device.
    cfg = replace(cfg, channels_last=cfg.channels_last if cfg.channels_last is not None else cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)
    amp_dtype = amp_dtype_for(device, cfg.amp)
    loss_fn = loss_from_config(cfg).to(device)  # a bad loss setting fails before any data is read
    # Data first: the class count sizes the head; mean/std come from the model's timm config.
    mean, std = data_config(cfg.model_name)
    train_ds, val_ds = _datasets(cfg, mean, std)
    attach_prior(loss_fn, cfg.prior_file, train_ds.class_names)
    if resume_ckpt is not None:
        check_resume(resume_ckpt, cfg.model_name, cfg.image_size, cfg.resume, train_ds.class_names)
    model = _model(cfg, train_ds, dist, source)
    init = cfg.init_checkpoint or cfg.model_path
    if init:
        load_init_checkpoint(model, init)
    if cfg.sync_bn and dist.enabled:
        if not cuda:
            raise ConfigError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU implementation)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    plan = recipe(cfg, source, mean, std, train_ds, val_ds)
    log.info("%s", plan)
    streams = isinstance(train_ds, torch.utils.data.IterableDataset)  # shards: it orders itself (set_epoch)
    sampler = train_ds if streams else EpochSampler(len(train_ds), cfg.seed, dist.rank, dist.world_size)
    train_loader = loader_for(train_ds, cfg, train=True, device=device, sampler=sampler)
    val_sampler = ShardSampler(len(val_ds), dist.rank, dist.world_size) if dist.enabled else None
    val_loader = loader_for(val_ds, cfg, train=False, device=device, sampler=val_sampler)
    optimization = _optimization(cfg, model, loss_fn, len(train_loader), amp_dtype, cuda)
    steps = StepSettings(
        amp_dtype=amp_dtype,
        channels_last=cfg.channels_last,
        accum_steps=cfg.accum_steps,
        max_nonfinite=cfg.max_nonfinite,
        all_finite=(lambda ok: all_true(ok, dist)) if dist.enabled else None,
        # no host synchronization per step where the optimizer can skip a step on the device
        defer_sync=cuda
        and optimization.scaler is None
        and getattr(optimization.optimizer, "_step_supports_amp_scaling", False),
    )
    net = model  # what the steps run: DDP under torchrun; EMA and checkpoints use the bare model
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if cfg.compile:
        net = torch.compile(net)
    return RunObjects(
        cfg,
        device,
        dist,
        model,
        net,
        train_ds,
        val_ds,
        train_loader,
        val_loader,
        sampler,
        optimization,
        steps,
        tuple(mean),
        tuple(std),
        plan,
    )


def _init_class_order(cfg: Config) -> Optional[List[str]]:
    """The class names of the checkpoint a run starts from, for a dataset that may take its class list
    from it (Open Images without ``classes-trainable.txt``); else None."""
    from .checkpoint import load_checkpoint
    from .data import DATASETS

    init = cfg.init_checkpoint or cfg.model_path
    if not init or cfg.dataset not in DATASETS or not DATASETS[cfg.dataset].follows_checkpoint:
        return None
    idx = load_checkpoint(init, require_model=False).get("idx_to_class")
    if not isinstance(idx, dict) or not idx:
        return None
    return [str(idx[k]) for k in sorted(idx, key=int)]


def _datasets(cfg: Config, mean, std):
    """The training and evaluation datasets (after the explicit demo step), summarised and warned about."""
    from .data.base import split_warnings

    prepare_data(cfg)
    follow = _init_class_order(cfg)
    train_ds = dataset_from_config(cfg, train=True, mean=mean, std=std, class_order=follow)
    val_ds = dataset_from_config(cfg, train=False, mean=mean, std=std, class_order=follow)
    log.info("%s\n%s", train_ds.summary(), val_ds.summary())
    for warning in split_warnings(train_ds, val_ds) + count_warnings(cfg, train_ds, val_ds):
        log.warning("warning: %s", warning)
    return train_ds, val_ds


def _model(cfg: Config, train_ds, dist: DistInfo, source) -> nn.Module:
    """The model with its pretrained start, sized for the data's classes; a batch BatchNorm
    cannot normalize is refused first."""
    from .models import check_batch_trainable, create_model

    per_rank = -(-len(train_ds) // dist.world_size)
    smallest = cfg.batch_size if per_rank > cfg.batch_size else per_rank  # later batches of one are dropped
    if smallest == 1 or cfg.batch_size == 1:
        check_batch_trainable(cfg.model_name, cfg.image_size, 1)
    model = create_model(
        cfg.model_name,
        train_ds.num_classes,
        head=cfg.head,
        pretrained_file=str(source.file) if source is not None else None,
        num_groups=cfg.num_of_groups,
        decoder_embedding=cfg.decoder_embedding,
    )
    if source is not None:
        log.info("pretrained start: %s", source.describe())
    return model


def _optimization(cfg: Config, model: nn.Module, loss_fn, batches: int, amp_dtype, cuda: bool) -> Optimization:
    """The optimizer, its OneCycle schedule, the EMA and (fp16) the gradient scaler."""
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, fused=cuda)
    scheduler = build_scheduler(optimizer, cfg.lr, cfg.epochs, max(batches // cfg.accum_steps, 1), cfg.pct_start)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return Optimization(loss_fn, optimizer, scheduler, ema, scaler, cfg.grad_clip)


def leave_process_group(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker moves to a process group of its own.

    A signal sent to the run's process group (``timeout``, ``kill -TERM -PGID``, Ctrl-C in a
    terminal) then reaches the training loop only, which saves ``last.pth`` and shuts its workers
    down; a worker killed by it would end the run with PyTorch's "DataLoader worker is killed by
    signal" error instead. The worker keeps SIGTERM's default action, so PyTorch can still stop a
    stuck worker with it, and it exits on its own when the main process is gone (PyTorch's
    watchdog). SIGINT is ignored as well, for a terminal that signals more than its foreground group.
    """
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)
        except OSError:  # a session leader cannot move; nothing else to do then
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
