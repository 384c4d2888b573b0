"""Mixup: each training batch mixed with a shuffled copy of itself (Zhang et al., 2018).

For a batch (x, y), a coefficient λ ~ Beta(α, α) and a permutation π of the batch, the step trains on
x' = λ·x + (1 − λ)·x[π] with the loss λ·L(x', y) + (1 − λ)·L(x', y[π]), L being the run's own training
loss (class weights and label smoothing included). With a frozen backbone and cached features, x are
the cached feature vectors: mixup in feature space. Validation and evaluation never mix.

λ and π are drawn per global batch, before the batch is split between processes, from a generator the
trainer seeds from the run's seed and stores in its checkpoints: runs are reproducible, a resumed run
equals an uninterrupted one, and every rank of a distributed run draws the same values. A rank whose
share's partners lie in other ranks' shares loads those partners too, so a distributed run mixes the
same pairs as one process does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .distributed import shard_bounds

__all__ = ["Mix", "draw_mixup", "mix_batch", "mixed_shares", "rank_rows"]


@dataclass(frozen=True)
class Mix:
    """One global batch's mixing: coefficient `lam` and each position's partner position `perm`."""

    lam: float
    perm: torch.Tensor  # int64, a permutation of range(len(global batch))


def draw_mixup(alpha: float, sizes: Sequence[int], generator: torch.Generator) -> list[Mix]:
    """λ ~ Beta(alpha, alpha) and a permutation for each of an epoch's global batches (`sizes`).

    One number is drawn from `generator` per epoch; it seeds the NumPy generator that draws the rest
    (torch has no seeded Beta sampler).
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    return [Mix(float(rng.beta(alpha, alpha)), torch.from_numpy(rng.permutation(n))) for n in sizes]


def rank_rows(
    batch: Sequence[int], mix: Mix, start: int, stop: int
) -> tuple[list[int], torch.Tensor]:
    """The items a process loads for its share [start, stop) of global `batch`, and where each of its
    own items' partner lies among those rows.

    The whole batch (one process) already holds every partner: its rows, partners at `perm`. A share
    of it loads its own items, then their partners: partners at rows n..2n-1 (n = stop - start).
    """
    if start == 0 and stop == len(batch):
        return list(batch), mix.perm
    n = stop - start
    partners = [batch[p] for p in mix.perm[start:stop].tolist()]
    return [*batch[start:stop], *partners], torch.arange(n, 2 * n)


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, lam: float, partner: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x', y, y[π]) for rows `x`, `y` whose first len(partner) rows are the batch's own items.

    x' = lam·x + (1 − lam)·x[π] is computed in float32 and returned in x's dtype.
    """
    n = len(partner)
    partner = partner.to(x.device)
    x_a, x_b = x[:n], x[partner]
    mixed = (lam * x_a.float() + (1.0 - lam) * x_b.float()).to(x.dtype)
    return mixed, y[:n], y[partner.to(y.device)]


def mixed_shares(
    alpha: float,
    global_batches: Sequence[torch.Tensor],
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[list[list[int]], list[tuple[float, torch.Tensor]]]:
    """One epoch's mixing for process `rank`: the rows it loads per global batch (`rank_rows`) and,
    per batch, (λ, where its own items' partners lie among those rows)."""
    draws = draw_mixup(alpha, [len(b) for b in global_batches], generator)
    rows, mixes = [], []
    for batch, mix in zip(global_batches, draws, strict=True):
        start, stop = shard_bounds(len(batch), rank, world_size)
        items, partner = rank_rows(batch.tolist(), mix, start, stop)
        rows.append(items)
        mixes.append((mix.lam, partner))
    return rows, mixes
