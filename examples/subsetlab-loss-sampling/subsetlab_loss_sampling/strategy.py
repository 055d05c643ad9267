"""Loss-proportional sampling: train on what the model gets most wrong."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from subsetlab import (
    Capabilities,
    EpochwiseConfig,
    EpochwiseStrategy,
    Selection,
    TrainState,
)


class LossSamplingConfig(EpochwiseConfig):
    """Config of :class:`LossSampling` (``select_every`` is inherited)."""

    name: Literal["loss-sampling"] = "loss-sampling"
    candidates: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Fraction of the training set scored per selection: "
        "a uniform random sample of it (never fewer than the budget); "
        "1.0 scores every example.",
    )
    smoothing: float = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description="Share of the uniform distribution mixed into the "
        "loss-proportional one, so every candidate keeps a probability of "
        "at least smoothing / candidates.",
    )


class LossSampling(EpochwiseStrategy):
    """Sample the budget in proportion to each example's loss, reweighted.

    Every ``select_every`` pseudo-epochs: forward a random candidate set
    once (no backward), mix the loss distribution with the uniform one,
    draw ``budget.subset_size`` distinct examples, and weight each by
    ``1 / (m * p_i)`` so that often-drawn, high-loss examples count less
    per example. The trainer rescales the weights to mean 1.
    """

    name = "loss-sampling"
    Config = LossSamplingConfig
    capabilities = Capabilities(
        needs_validation=False, supports_distributed=False, stochastic=True
    )
    config: LossSamplingConfig

    def select(self, state: TrainState) -> Selection:
        """Score the candidates by loss and draw the subset."""
        ctx, cfg = self.ctx, self.config
        n, k, gen = ctx.budget.n, ctx.budget.subset_size, ctx.generator
        m = min(n, max(k, math.ceil(cfg.candidates * n)))
        if m < n:
            candidates = torch.randperm(n, generator=gen)[:m]
        else:
            candidates = torch.arange(n)

        # one no-grad forward pass, timed as this strategy's own seconds
        with ctx.meters.timer("scoring"):
            emb = ctx.embedder.embed(ctx.train, candidates)
        ctx.meters.add_forward(m)  # extra work: m forward examples

        loss = emb.losses.detach().double().cpu().clamp_min(0.0)
        total = float(loss.sum())
        if total > 0:
            loss_part = loss / total
        else:
            loss_part = torch.full_like(loss, 1.0 / m)
        p = (1.0 - cfg.smoothing) * loss_part + cfg.smoothing / m
        picked = torch.multinomial(p, k, replacement=False, generator=gen)
        weights = (1.0 / (m * p[picked])).float()
        return Selection(
            candidates[picked],
            weights,
            diagnostics={"candidates": m, "mean_loss": float(loss.mean())},
        )
