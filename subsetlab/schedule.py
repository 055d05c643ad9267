"""The learning-rate schedule, identical for every strategy of a comparison."""

from __future__ import annotations

import math

from subsetlab.config import TrainerConfig

__all__ = ["lr_at"]


def lr_at(step: int, steps_per_epoch: int, config: TrainerConfig) -> float:
    """Learning rate of global ``step`` (0-based).

    Linear warm-up over ``warmup_epochs`` pseudo-epochs, step-wise, from ``lr / W`` (never 0)
    up to ``lr`` at step ``W - 1``; then either step decays by ``gamma`` at the pseudo-epoch
    boundaries ``round(m * epochs)`` for each milestone fraction ``m``, a cosine decay to 0
    over the remaining steps, or a constant rate.

    Args:
        step: Global step index.
        steps_per_epoch: Pseudo-epoch length the schedule is defined on.
        config: The trainer config (``lr``, ``warmup_epochs``, ``schedule``, ``milestones``,
            ``gamma``, ``epochs``).
    """
    base = config.lr
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warm:
        return base * (step + 1) / warm
    if config.schedule == "constant":
        return base
    if config.schedule == "cosine":
        total = config.epochs * steps_per_epoch
        span = max(1, total - warm)
        t = min(1.0, (step - warm) / span)
        return base * 0.5 * (1.0 + math.cos(math.pi * t))
    epoch = step // steps_per_epoch
    decays = sum(1 for m in config.milestones if epoch >= int(round(m * config.epochs)))
    return base * config.gamma**decays
