"""Pydantic configurations: strategies, trainer, data, model and the run spec.

Every config is frozen and rejects unknown keys. Validation failures surface as
:class:`subsetlab.errors.ConfigError` with a message naming the field, the value received, the
rule and the fix (see :func:`validate`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import (
    Field,
    SerializeAsAny,
    field_validator,
    model_validator,
)

from subsetlab import registry
from subsetlab.config_base import (
    EpochwiseConfig,
    FrozenConfig,
    StrategyConfig,
    format_validation_error,
    validate,
    validation_problems,
)

__all__ = [
    "FrozenConfig",
    "StrategyConfig",
    "EpochwiseConfig",
    "TrainerConfig",
    "DataConfig",
    "ModelConfig",
    "RunSpec",
    "validate",
    "format_validation_error",
    "validation_problems",
]

class TrainerConfig(FrozenConfig):
    """How every strategy of a comparison is trained: budget, optimiser, schedule, evaluation.

    The budget is ``fraction`` of ``epochs`` full-data epochs: ``epochs`` pseudo-epochs of
    ``ceil(fraction * N / batch_size)`` steps each, identical for every strategy.
    """

    epochs: int = Field(20, ge=1, le=100_000, description="E, reference epochs = pseudo-epochs.")
    fraction: float = Field(0.1, gt=0.0, le=1.0, description="f, budget fraction of N per pseudo-epoch.")
    batch_size: int = Field(128, ge=1, le=1_000_000, description="B, training mini-batch size.")
    lr: float = Field(0.1, gt=0.0, le=100.0, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    nesterov: bool = Field(False, description="Use Nesterov momentum (needs momentum > 0).")
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0, description="L2 weight decay.")
    warmup_epochs: float = Field(
        0.0, ge=0.0, description="Linear warm-up length in pseudo-epochs (step-wise, starts at lr/warm-up steps, never 0)."
    )
    schedule: Literal["step", "cosine", "constant"] = Field(
        "step", description="LR decay after warm-up: step decays, cosine to 0, or constant."
    )
    milestones: tuple[float, ...] = Field(
        (0.5, 0.75),
        description="Step schedule: decay points as fractions of the pseudo-epochs, applied "
        "at pseudo-epoch boundaries (0.5 of 200 epochs = epoch 100).",
    )
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="Step schedule: decay factor.")
    eval_every: int = Field(1, ge=1, description="Evaluate on the test split every this many pseudo-epochs (and at the end).")
    eval_batch_size: int = Field(1024, ge=1, description="Batch size of evaluation passes.")
    embed_batch_size: int = Field(
        256, ge=1, description="Batch size of the gradient embedder (256: about 2x faster than 1024 for the small CNN on CPU)."
    )
    embed_dtype: Literal["float32", "float16"] = Field(
        "float32", description="Storage dtype of embeddings; float16 is used on CUDA only."
    )
    normalize_weights: bool = Field(
        True, description="Rescale each selection's weights to mean 1 before training on it."
    )
    device: str = Field(
        "auto",
        # an index torch can parse: ASCII digits (pydantic's \d also matches other scripts' digits),
        # no leading zeros, at most 4 digits (torch.device rejects the rest)
        pattern=r"^(auto|cpu|cuda(:(0|[1-9][0-9]{0,3}))?|mps)$",
        description="'auto' picks CUDA when present.",
    )
    checkpoint_every: int | None = Field(
        None, ge=1, description="Write a checkpoint every this many pseudo-epochs (needs a checkpoint path)."
    )
    max_seconds: float | None = Field(None, gt=0, description="Abort a run that takes longer than this (recorded as failed).")
    cpu_allocator: Literal["tuned", "system"] = Field(
        "tuned",
        description="CPU runs: 'tuned' fixes glibc's mmap/trim thresholds for the process "
        "(subsetlab.allocator), so training steps beside a strategy's larger no-grad forwards do "
        "not keep faulting in fresh pages (measured: 2-10x slower steps without); 'system' "
        "leaves the C library's defaults. A no-op off glibc. Does not change what is computed, "
        "so it is not part of the run key.",
    )
    analytics: Literal["off", "basic", "full"] = Field(
        "basic",
        description="Selection analytics recorded in the run result (subsetlab.analytics): 'off' "
        "records nothing; 'basic' uses only the selections and the trained batches (no extra "
        "passes); 'full' also forwards the selected examples at each selection for their exact "
        "loss (counted as analytics forward work, apart from the strategy's). Does not change "
        "training, so it is not part of the run key.",
    )

    @field_validator("milestones")
    @classmethod
    def _check_milestones(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not (0.0 < m < 1.0) for m in v) or list(v) != sorted(v):
            raise ValueError("milestones must be increasing fractions in (0, 1), e.g. [0.5, 0.75]")
        return v

    @model_validator(mode="after")
    def _check_nesterov(self) -> TrainerConfig:
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0; set momentum (e.g. 0.9) or nesterov=false")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs})")
        return self


class DataConfig(FrozenConfig):
    """Which data set to load and how to split and preprocess it."""

    name: str = Field("digits", min_length=1, description="Dataset name (see `subsetlab list`).")
    root: str | None = Field(None, description="Directory of the data files (dataset-specific default).")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of the training data held out as a seeded validation split."
    )
    n_train: int | None = Field(None, ge=1, description="Keep only this many training examples (seeded, stratified).")
    normalize: bool = Field(True, description="Standardise features with training-split statistics.")
    augment: bool = Field(False, description="Random crop and flip of training batches (image data).")
    options: dict[str, Any] = Field(default_factory=dict, description="Dataset-specific options.")


class ModelConfig(FrozenConfig):
    """Which network to build. Its last module must be an ``nn.Linear``."""

    name: str = Field("mlp", min_length=1, description="Model name (see `subsetlab list`).")
    options: dict[str, Any] = Field(default_factory=dict, description="Model-specific options (widths...).")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


class RunSpec(FrozenConfig):
    """Everything that defines one run. A run is a pure function of its spec.

    ``key`` is a hash of the spec's canonical JSON; environment details (device, threads,
    versions) are not part of it.
    """

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    strategy: SerializeAsAny[StrategyConfig]
    seed: int = Field(0, ge=0, lt=2**63)
    label: str | None = Field(None, description="Display name in reports (defaults to the strategy name).")

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_config(cls, v: Any) -> Any:
        if isinstance(v, StrategyConfig):
            return v
        return registry.make_config(v)

    @property
    def key(self) -> str:
        """Stable 16-hex-digit hash of the spec (ignores ``label`` and the device)."""
        d = self.model_dump(mode="json", exclude={"label"})
        d["trainer"].pop("device", None)
        d["trainer"].pop("max_seconds", None)
        d["trainer"].pop("checkpoint_every", None)
        d["trainer"].pop("analytics", None)
        d["trainer"].pop("cpu_allocator", None)
        return hashlib.sha256(_canonical(d).encode()).hexdigest()[:16]

    @property
    def display_name(self) -> str:
        """Label shown in reports."""
        return self.label or self.strategy.name
