"""Build the objects of a run from its config: the datasets (after the explicit demo step), the
loaders, the loss (the optimizer, schedule and EMA are built in :mod:`asl.engine` and the trainer)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from .config import Config, check_num_classes
from .data import DATASETS, build_transform, create_dataset, default_splits
from .errors import ConfigError
from .losses import COMMON_LOSS_OPTIONS, LOSS_OPTIONS, build_loss
from .process import leave_process_group


def prepare_data(cfg: Config) -> None:
    """The explicit data step before a dataset is built: the demo is generated into its folder
    (once; an identical one is kept, a folder that is not a demo is refused). Other datasets
    are read where they are."""
    if cfg.dataset == "demo":
        from .data.demo import ensure_demo

        ensure_demo(Path(cfg.data_root), num_classes=cfg.demo_classes)


def dataset_from_config(
    cfg: Config, train: bool, mean: Sequence[float], std: Sequence[float], split: Optional[str] = None
):
    """The training (``train=True``) or evaluation split named by ``cfg``."""
    train_split, eval_split = default_splits(cfg.dataset)
    split = split or ((cfg.train_split or train_split) if train else (cfg.val_split or eval_split))
    transform = build_transform(
        train, cfg.image_size, mean, std, augment=cfg.augment if train else "none", resize=cfg.resize
    )
    spec = DATASETS[cfg.dataset]
    options = {o: (0 if o == "seed" else getattr(cfg, o)) for o in spec.options}  # tagged splits with seed 0
    ds = create_dataset(
        cfg.dataset,
        cfg.data_root,
        split,
        transform,
        max_bad_fraction=cfg.max_bad_fraction,
        max_bad_images=cfg.max_bad_images,
        draft_size=cfg.image_size if train else None,
        **options,
    )
    if train and cfg.label_noise:
        flip_positives(ds, cfg.label_noise, cfg.seed)
    check_num_classes(cfg.num_classes, ds.num_classes, ds.name)
    return ds


def flip_positives(ds, fraction: float, seed: int) -> int:
    """Turn a seeded ``fraction`` of the positive labels into negatives (missing labels, as
    in the paper's mislabeled-negatives analysis). Returns how many were flipped."""
    import numpy as np

    pos = np.flatnonzero(ds.targets.reshape(-1) == 1)
    rng = np.random.default_rng(seed + 7_919)
    flip = rng.choice(pos, size=int(round(fraction * pos.size)), replace=False)
    ds.targets.reshape(-1)[flip] = 0.0
    return int(flip.size)


def loader_for(ds, cfg: Config, train: bool, device: torch.device, sampler=None):
    """A DataLoader: ``sampler`` orders training batches (``asl.distributed.EpochSampler``), pinned
    memory on CUDA, persistent workers in process groups of their own (a signal to the run's group reaches
    the training loop alone)."""
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
    """The loss named by ``cfg.loss`` with the config's settings that loss reads (``LOSS_OPTIONS``)."""
    name = cfg.loss.lower().replace("-", "_")
    if name not in LOSS_OPTIONS:
        raise ConfigError(f"unknown loss {cfg.loss!r} for multi-label training; choose from {', '.join(LOSS_OPTIONS)}")
    reads = {**COMMON_LOSS_OPTIONS, **LOSS_OPTIONS[name]}
    return build_loss(name, **{arg: getattr(cfg, f) for f, arg in reads.items()})
