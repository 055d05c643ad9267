"""Random: a fresh uniform random subset of the budget's size every pseudo-epoch."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from subsetlab.config import EpochwiseConfig
from subsetlab.protocol import Capabilities, EpochwiseStrategy, Selection, TrainState
from subsetlab.quotas import stratified_quotas

__all__ = ["RandomConfig", "RandomStrategy", "stratified_quotas"]


class RandomConfig(EpochwiseConfig):
    """Config of :class:`RandomStrategy`."""

    name: Literal["random"] = "random"
    class_balanced: bool = Field(
        False,
        description="Draw per-class quotas proportional to class sizes (largest-remainder "
        "rounding, summing exactly to the budget) instead of one uniform draw.",
    )


class RandomStrategy(EpochwiseStrategy):
    """Adaptive random baseline ("random online"): a new uniform f*N subset every R pseudo-epochs.

    Hard to beat once selection time is counted; every comparison includes it.
    """

    name = "random"
    Config = RandomConfig
    capabilities = Capabilities(
        supports_distributed=True,
        distributed_note="Replicated: every rank draws the same subset from the shared seed; the trainer gives each rank its share of every batch.",
        stochastic=True,
    )

    def select(self, state: TrainState) -> Selection:
        """A uniform (or class-stratified) random subset of ``ctx.budget.subset_size`` examples."""
        ctx = self.ctx
        n, k, g = ctx.budget.n, ctx.budget.subset_size, ctx.generator
        if not self.config.class_balanced:
            idx = torch.randperm(n, generator=g)[:k]
        else:
            labels = ctx.train.labels.cpu()
            quotas = stratified_quotas(torch.bincount(labels, minlength=ctx.train.num_classes), k)
            order = torch.randperm(n, generator=g)
            parts = []
            shuffled = labels[order]
            for c in range(len(quotas)):
                if quotas[c] > 0:
                    parts.append(order[shuffled == c][: int(quotas[c])])
            idx = torch.cat(parts)
        return Selection.uniform(idx)
