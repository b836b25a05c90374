"""Config -> objects: the datasets, loaders and loss a run uses (shared by the scripts)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .config import Config
from .data import build_transform, create_dataset, default_splits
from .errors import ConfigError
from .losses import LOSSES, build_loss
from .runtime import leave_process_group


def dataset_from_config(cfg: Config, train: bool, mean: Sequence[float], std: Sequence[float],
                        split: Optional[str] = None):
    """The training (``train=True``) or evaluation split named by ``cfg``."""
    train_split, eval_split = default_splits(cfg.dataset)
    split = split or ((cfg.train_split or train_split) if train else (cfg.val_split or eval_split))
    transform = build_transform(train, cfg.image_size, mean, std, augment=cfg.augment if train else "none",
                                resize=cfg.resize)
    ds = create_dataset(cfg.dataset, cfg.data_root, split, transform, val_fraction=cfg.val_fraction,
                        seed=0, max_bad_fraction=cfg.max_bad_fraction, max_bad_images=cfg.max_bad_images,
                        ann_file=cfg.ann_file,
                        image_dir=cfg.image_dir, keep_unannotated=cfg.keep_unannotated, voc_year=cfg.voc_year,
                        difficult=cfg.difficult, demo_classes=cfg.demo_classes)
    if train:
        ds.draft_size = cfg.image_size
        if cfg.label_noise:
            flip_positives(ds, cfg.label_noise, cfg.seed)
    if cfg.num_classes is not None and cfg.num_classes != ds.num_classes:
        raise ConfigError(f"--num-classes {cfg.num_classes} but {ds.name} has {ds.num_classes} classes")
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
    """A DataLoader: ``sampler`` orders training batches (``asl.engine.EpochSampler``), pinned
    memory on CUDA, persistent workers in process groups of their own (a signal to the run's group reaches
    the training loop alone)."""
    return torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=train and len(ds) > cfg.batch_size,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.workers > 0,
        worker_init_fn=leave_process_group if cfg.workers > 0 else None,
    )


def loss_from_config(cfg: Config) -> torch.nn.Module:
    """The loss named by ``cfg.loss`` with the config's parameters."""
    common = dict(eps=cfg.eps, reduction=cfg.loss_reduction, label_smoothing=cfg.label_smoothing,
                  disable_torch_grad_focal_loss=cfg.disable_torch_grad_focal_loss)
    name = cfg.loss.lower().replace("-", "_")
    if name in ("asl", "asl_optimized"):
        return build_loss(name, gamma_neg=cfg.gamma_neg, gamma_pos=cfg.gamma_pos, clip=cfg.clip, **common)
    if name == "adaptive_asl":
        return build_loss(name, gamma_neg=cfg.gamma_neg, gamma_pos=cfg.gamma_pos, clip=cfg.clip,
                          delta_p_target=cfg.delta_p_target, lam=cfg.adaptive_lambda, **common)
    if name == "focal":
        return build_loss(name, gamma=cfg.focal_gamma, **common)
    if name == "bce":
        return build_loss(name, **common)
    raise ConfigError(f"unknown loss {cfg.loss!r} for multi-label training; choose from "
                      f"{', '.join(n for n in LOSSES if n != 'asl_single_label')}")
