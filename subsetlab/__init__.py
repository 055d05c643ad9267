"""subsetlab: train on adaptively selected, weighted subsets and compare the methods side by side.

``import subsetlab`` is cheap: the public names below are imported on first access, and
strategy plugins load only when the registry is first asked for a strategy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from subsetlab._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # contract
    "SelectionStrategy": "subsetlab.protocol",
    "EpochwiseStrategy": "subsetlab.protocol",
    "Selection": "subsetlab.protocol",
    "SelectionContext": "subsetlab.protocol",
    "TrainState": "subsetlab.protocol",
    "StepInfo": "subsetlab.protocol",
    "Capabilities": "subsetlab.protocol",
    "Budget": "subsetlab.protocol",
    "WorkMeters": "subsetlab.protocol",
    "DistView": "subsetlab.protocol",
    # configs
    "StrategyConfig": "subsetlab.config",
    "EpochwiseConfig": "subsetlab.config",
    "TrainerConfig": "subsetlab.config",
    "DataConfig": "subsetlab.config",
    "ModelConfig": "subsetlab.config",
    "RunSpec": "subsetlab.config",
    # registry
    "register": "subsetlab.registry",
    "get": "subsetlab.registry",
    "create": "subsetlab.registry",
    "list_strategies": "subsetlab.registry",
    # pieces
    "GradientEmbedder": "subsetlab.embeddings",
    "Trainer": "subsetlab.trainer",
    "RunResult": "subsetlab.trainer",
    "IndexedDataset": "subsetlab.data.base",
    "DataSplits": "subsetlab.data.base",
    "run_spec": "subsetlab.api",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), __all__)


if TYPE_CHECKING:  # pragma: no cover
    from subsetlab.api import run_spec
    from subsetlab.config import (
        DataConfig,
        EpochwiseConfig,
        ModelConfig,
        RunSpec,
        StrategyConfig,
        TrainerConfig,
    )
    from subsetlab.data.base import DataSplits, IndexedDataset
    from subsetlab.embeddings import GradientEmbedder
    from subsetlab.protocol import (
        Budget,
        Capabilities,
        DistView,
        EpochwiseStrategy,
        Selection,
        SelectionContext,
        SelectionStrategy,
        StepInfo,
        TrainState,
        WorkMeters,
    )
    from subsetlab.registry import create, get, list_strategies, register
    from subsetlab.trainer import RunResult, Trainer
