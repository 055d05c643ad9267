"""One call from a :class:`~subsetlab.config.RunSpec` to a :class:`~subsetlab.trainer.RunResult`."""

from __future__ import annotations

import os
from typing import Any

from subsetlab.config import RunSpec, validate
from subsetlab.protocol import DistView
from subsetlab.trainer import Progress, RunResult, Trainer

__all__ = ["run_spec", "build_run"]


def build_run(spec: RunSpec | dict[str, Any]):
    """Build ``(spec, strategy, model, data)`` for a spec, without training.

    The data split and the initial weights depend only on the spec's data/model configs and
    seed, never on the strategy, so every strategy of a comparison starts from the same point.
    """
    from subsetlab import registry
    from subsetlab.data import load_data
    from subsetlab.models import build_model

    spec = validate(RunSpec, spec, "RunSpec")
    data = load_data(spec.data, spec.seed)
    model = build_model(spec.model, data.train.input_shape, data.train.num_classes, spec.seed)
    strategy = registry.create(spec.strategy)
    return spec, strategy, model, data


def run_spec(
    spec: RunSpec | dict[str, Any],
    *,
    checkpoint_path: str | os.PathLike | None = None,
    progress: Progress | None = None,
    resume: bool = True,
    dist: DistView | None = None,
) -> RunResult:
    """Build data, model and strategy from ``spec`` and train; return the run's result.

    ``dist`` defaults to the view of the current ``torch.distributed`` process group (a
    process started by ``torchrun`` after :func:`subsetlab.distributed.init`), which is the
    single-process view when there is none.
    """
    from subsetlab import distributed

    spec, strategy, model, data = build_run(spec)
    trainer = Trainer(
        spec.trainer, checkpoint_path=checkpoint_path, progress=progress, dist=dist or distributed.view()
    )
    return trainer.fit(strategy, model, data, spec.seed, run_key=spec.key, resume=resume)
