"""torchrun support: process-group set-up from the environment, sharded samplers, gathers.

``torchrun --nproc_per_node N train.py ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; the
backend is NCCL on CUDA and gloo on the CPU. A plain ``python train.py`` is a world of one
and none of this does anything.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, List, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from .labelled import ScoreCollector

__all__ = [
    "DistInfo",
    "init_distributed",
    "EpochSampler",
    "ShardSampler",
    "gather_rows",
    "gather_scores",
    "all_true",
    "broadcast_buffers",
]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes; returns (info, this process's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), device


class EpochSampler(DistributedSampler):
    """torch's ``DistributedSampler`` (shuffled, padded so every rank takes as many steps) whose
    order depends only on (seed, epoch) and which can start part-way through an epoch.

    It draws nothing from the global RNG, so a resumed run sees the same order as an
    uninterrupted one; ``set_epoch(epoch, start)`` skips the first ``start`` samples of this
    rank's share (the batches a mid-epoch checkpoint has already seen). A world of one is the
    same sampler with ``rank=0, world_size=1``.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        # DistributedSampler seeds its generator with seed + epoch: seed x 100003 keeps the
        # orders of neighbouring seeds apart (seed 1 epoch 0 is not seed 0 epoch 1).
        super().__init__(
            range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed * 100_003, drop_last=False
        )
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """``start``: samples of this rank's share already seen."""
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(DistributedSampler):
    """Every ``world_size``-th index from ``rank``, in order, padded by repeating the first
    indices so every rank has the same count (``DistributedSampler`` without shuffling): for
    evaluation. :func:`gather_rows` undoes it."""

    def __init__(self, n: int, rank: int, world_size: int):
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)


def _comm_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(local: np.ndarray, n: int, info: DistInfo) -> np.ndarray:
    """All ranks' (per_rank, C) rows from :class:`ShardSampler` back in dataset order, padding
    dropped, on every rank."""
    if not info.enabled:
        return local
    t = torch.from_numpy(np.ascontiguousarray(local)).to(_comm_device())
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t)
    # Row i of rank r is sample i * world + r.
    return torch.stack(parts, dim=1).reshape(-1, *t.shape[1:])[:n].cpu().numpy()


def gather_scores(collected: ScoreCollector, info: DistInfo) -> None:
    """Merge every rank's :class:`asl.labelled.ScoreCollector` into each rank's: the dense rows
    through :func:`gather_rows`, the labelled entries and the per-class sums as objects."""
    if not info.enabled:
        return
    scores, targets = collected.dense()
    if scores is not None:
        scores, targets = (gather_rows(a, collected.num_images, info) for a in (scores, targets))
    states: List[Any] = [None] * info.world_size
    dist.all_gather_object(states, collected.shared_state())
    collected.absorb(states, scores, targets)


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts them at the start of each forward, but each rank then updates its copy with
    its own batch, so after training they differ; evaluation and the checkpoint must agree.
    """
    if not info.enabled:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def all_true(flag, info: DistInfo):
    """True on every rank iff ``flag`` is True on every rank (so all take the same branch).

    ``flag``: a bool (returns a bool), or a bool tensor on the device, reduced there without a
    read-back (returns a bool tensor: the engine's ``defer_sync`` path)."""
    if not info.enabled:
        return flag
    if torch.is_tensor(flag):
        t = flag.to(device=_comm_device(), dtype=torch.int32).reshape(1)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t.reshape(()).to(flag.device).bool()
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
