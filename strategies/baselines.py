"""The reference baselines: full-data training and SGD truncated at the budget."""

from __future__ import annotations

from typing import Literal

import torch

from subsetlab.config import StrategyConfig
from subsetlab.protocol import Capabilities, Selection, SelectionStrategy, TrainState

__all__ = ["FullData", "FullDataConfig", "SGDTruncated", "SGDTruncatedConfig"]


class FullDataConfig(StrategyConfig):
    """Config of :class:`FullData` (no parameters)."""

    name: Literal["full"] = "full"


class FullData(SelectionStrategy):
    """Full-data reference run: every example, weight 1, budget fraction taken as 1.

    Relative error and speed-up in reports are measured against this run.
    """

    name = "full"
    Config = FullDataConfig
    capabilities = Capabilities(supports_distributed=True, stochastic=False, budget="full")

    def should_select(self, state: TrainState) -> bool:
        """Never: the whole training set is selected once."""
        return False

    def select(self, state: TrainState) -> Selection:
        """All N examples with weight 1 (the trainer reshuffles them every pass)."""
        return Selection.uniform(torch.arange(self.ctx.budget.n))


class SGDTruncatedConfig(StrategyConfig):
    """Config of :class:`SGDTruncated` (no parameters)."""

    name: Literal["sgd-truncated"] = "sgd-truncated"


class SGDTruncated(FullData):
    """Full-data SGD in the full run's order and LR schedule, stopped when the budget is spent.

    The paper's "SGD" column: the same batches the full run would see first, with the full
    run's (slower-decaying) schedule, for f * N * E backprops.
    """

    name = "sgd-truncated"
    Config = SGDTruncatedConfig
    capabilities = Capabilities(supports_distributed=True, stochastic=False, budget="full_schedule")
