"""subsetlab-loss-sampling: a worked example of a strategy plugin."""

from subsetlab_loss_sampling.strategy import (
    LossSampling,
    LossSamplingConfig,
)

__all__ = ["LossSampling", "LossSamplingConfig"]
