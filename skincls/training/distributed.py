"""Distributed training: one process per device under `torchrun`, gradients through DistributedDataParallel.

skincls adds no launcher and no gradient exchange of its own: `torchrun` starts the processes and sets
RANK/WORLD_SIZE/LOCAL_RANK, `torch.distributed` connects them (NCCL on GPUs, gloo on CPUs) and
`DistributedDataParallel` averages the gradients. This module holds what the trainer needs on top:
which slice of each global batch a rank takes, sums of metrics over ranks, and one copy of the
frozen features for every rank.

The global batch is the configured `batch_size`, whatever the number of processes: every rank draws
the same batch order from the same seeded generator and takes its contiguous share of each batch
(sizes differ by at most one). Each rank scales its summed loss by `world_size / global batch
denominator`, so DDP's gradient average equals the one-process gradient of the whole batch, class
weights included. With dropout the masks come from per-rank random streams, so results match a
one-process run in distribution only; without dropout they match to floating-point tolerance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError, opt

__all__ = [
    "Dist",
    "close_distributed",
    "distributed_ready",
    "init_distributed",
    "shard_bounds",
]

DEFAULT_TIMEOUT_S = 600.0


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s contiguous share of `n` items; shares differ by at most one item."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@dataclass(frozen=True)
class Dist:
    """This process's place in a distributed run; the default is a plain one-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    def shard(self, items: Sequence[int]) -> list[int]:
        """This rank's contiguous share of a global batch (or of a dataset's indices)."""
        start, stop = shard_bounds(len(items), self.rank, self.world_size)
        return list(items[start:stop])

    def share(self, dataset: Dataset) -> Dataset:
        """This rank's contiguous share of `dataset` (the whole of it in one process)."""
        if not self.enabled:
            return dataset
        return Subset(dataset, range(*shard_bounds(len(dataset), self.rank, self.world_size)))

    def check_last_batch(self, n: int, batch_size: int) -> None:
        """Images through a DataLoader: every rank needs at least one image of every batch."""
        last = n % batch_size
        if self.enabled and 0 < last < self.world_size:
            raise ConfigError(
                f"the last batch of {n} training images has {last} image(s) for "
                f"{self.world_size} processes; choose a {opt('train.batch_size')} that leaves at "
                "least one per process, or use fewer processes"
            )

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` in DistributedDataParallel when distributed (it must have trainable parameters)."""
        if not self.enabled:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sums over all ranks (float64), e.g. an epoch's loss, hits and image counts."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, value: object) -> object:
        """Rank 0's `value` on every rank (a decision made once)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_rows(self, local: np.ndarray, n: int, device: torch.device) -> np.ndarray:
        """The (n, ...) array whose contiguous rank shares the ranks hold, in order, on every rank."""
        if not self.enabled:
            return local
        rows = [shard_bounds(n, r, self.world_size) for r in range(self.world_size)]
        width = max(b - a for a, b in rows)
        # gloo and NCCL gather equal shapes: pad each share to the largest, then cut.
        t = torch.zeros((width, *local.shape[1:]), dtype=torch.from_numpy(local).dtype)
        t[: len(local)] = torch.from_numpy(np.ascontiguousarray(local))
        t = t.to(device)
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t)
        return np.concatenate(
            [p[: b - a].cpu().numpy() for p, (a, b) in zip(parts, rows, strict=True)]
        )

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: str = "auto") -> tuple[Dist, str]:
    """Join the process group `torchrun` describes (if any); return it and this rank's device name.

    Outside torchrun (no WORLD_SIZE, or 1) nothing happens. On CUDA each rank takes GPU LOCAL_RANK and
    the NCCL backend; otherwise gloo. A collective that waits longer than SKINCLS_DIST_TIMEOUT seconds
    (default 600) fails instead of hanging; torchrun then stops the other ranks.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    name = (device or "auto").lower()
    cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise ConfigError(
                f"rank {rank} needs GPU {local}, but this PyTorch sees "
                f"{torch.cuda.device_count()}; use fewer processes per node or "
                f"{opt('train.device', value='cpu')}"
            )
        torch.cuda.set_device(local)
        name = f"cuda:{local}"
    elif name == "auto":
        name = "cpu"
    timeout = float(os.environ.get("SKINCLS_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
    return Dist(rank, world, local), name


def distributed_ready() -> bool:
    """Whether a process group is already set up (by us or by the caller)."""
    return dist.is_available() and dist.is_initialized()


def close_distributed() -> None:
    """Leave the process group (at the end of a run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
