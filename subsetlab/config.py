"""Pydantic configurations: strategies, trainer, data, model and the run spec.

Every config is frozen and rejects unknown keys. Validation failures surface as
:class:`subsetlab.errors.ConfigError` with a message naming the field, the value received, the
rule and the fix (see :func:`validate`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, NamedTuple, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from subsetlab.errors import ConfigError

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
]

C = TypeVar("C", bound=BaseModel)


class _ConfigMeta(type(BaseModel)):  # pydantic's model metaclass
    """Constructing a config (``RunSpec(...)``) raises :class:`~subsetlab.errors.ConfigError`.

    Only the direct call is wrapped: ``model_validate`` and pydantic's validation of nested
    configs do not go through it, so they keep pydantic's ``ValidationError`` (which
    :func:`validate` and the suite loader turn into messages) and pydantic's own error
    collection is left as it is.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise ConfigError(
                format_validation_error(exc, cls.__name__, cls), exc.errors(include_url=False)
            ) from None


class FrozenConfig(BaseModel, metaclass=_ConfigMeta):
    """Base of every subsetlab config: immutable, unknown keys rejected, floats finite.

    NaN and infinities are rejected in every float field (``allow_inf_nan=False``): pydantic
    accepts them by default, and a bound such as ``gt=0`` lets ``inf`` through. A missing
    limit is spelled ``None`` where a field allows it, never ``inf``.

    Constructing one with invalid values (``TrainerConfig(epochs=0)``, ``RunSpec(...)``) raises
    :class:`~subsetlab.errors.ConfigError`, a ``ValueError``, like :func:`validate` does.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)


class StrategyConfig(FrozenConfig):
    """Base of a strategy's config. Subclasses narrow ``name`` to a ``Literal``.

    ``name`` is the discriminator: a dict with ``"name": "crest"`` validates against the
    config class registered under ``crest``.
    """

    name: str = Field(description="Registered name of the strategy (the discriminator).")


class EpochwiseConfig(StrategyConfig):
    """Base config of strategies that re-select at pseudo-epoch boundaries.

    ``select_every`` is an absolute interval R in pseudo-epochs, 1 by default: Random draws a
    fresh subset every pseudo-epoch. CRAIG, GradMatch and Glister (their shared
    ``strategies._common.BaselineConfig``) make R relative to the run's length by default
    (``select_every=None`` with ``select_every_fraction``, about 10 to 20 selections per run) and
    keep ``select_every`` as the absolute option.
    """

    select_every: int = Field(
        1,
        ge=1,
        description="Re-select every this many pseudo-epochs (R); the first selection is at "
        "step 0. 1 (default): every pseudo-epoch.",
    )


def _fmt_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) if loc else "(root)"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class inside a field annotation (``X``, ``X | None``, ``tuple[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _holder(model: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    """The model class whose key is the last part of ``loc`` (None when it cannot be told)."""
    for part in loc[:-1]:
        if model is None:
            return None
        if isinstance(part, int):  # an item of a tuple of models
            continue
        field = model.model_fields.get(str(part))
        model = _model_in(field.annotation) if field is not None else None
    return model


def _unknown_key_hint(model: type[BaseModel] | None, loc: tuple) -> str:
    """What to do about the unknown key at ``loc`` of ``model``: the accepted keys, and for a
    strategy the ``subsetlab schema`` command that describes them."""
    if model is None:
        return "Check the documentation of the section it is in."
    keys = ", ".join(model.model_fields)
    where = f" in {_fmt_loc(loc[:-1])!r}" if len(loc) > 1 else ""
    name = model.model_fields["name"].default if issubclass(model, StrategyConfig) else None
    if isinstance(name, str) and name:
        return f"Accepted{where}: {keys} (`subsetlab schema {name}` describes each)."
    return f"Accepted{where}: {keys}."


class Problem(NamedTuple):
    """One pydantic error, normalised: where, pydantic's error type, the message without
    pydantic's ``"Value error, "`` prefix, and the offending value's repr cut to a width."""

    loc: tuple
    kind: str
    msg: str
    shown: str


def validation_problems(exc: ValidationError, width: int = 80, locs: list[tuple] | None = None) -> list[Problem]:
    """The errors of ``exc`` as :class:`Problem` s, the one reading of pydantic's errors that
    :func:`format_validation_error` and the suite's messages share (``locs`` overrides each loc)."""
    out = []
    for i, err in enumerate(exc.errors(include_url=False)):
        shown = repr(err.get("input", None))
        if len(shown) > width:
            shown = shown[: width - 3] + "..."
        loc = locs[i] if locs is not None else tuple(err.get("loc", ()))
        out.append(Problem(loc, err.get("type", ""), err.get("msg", "").removeprefix("Value error, "), shown))
    return out


def format_validation_error(
    exc: ValidationError, title: str | None = None, model: type[BaseModel] | None = None
) -> str:
    """Render a pydantic ``ValidationError`` as sentences naming field, value, rule and fix.

    Args:
        exc: The error.
        title: What was validated, as the user knows it (``"RunSpec"``, ``"strategy 'crest'
            (CrestConfig)"``); default: pydantic's title.
        model: The model class that was validated; an unknown key's message then lists the keys
            accepted where it was found (the trainer's for ``trainer.epoch``).
    """
    title = title or exc.title
    lines = []
    for prob in validation_problems(exc, width=80):
        loc = _fmt_loc(prob.loc)
        if prob.kind == "extra_forbidden":
            lines.append(
                f"{title} got an unknown parameter {loc!r} (value {prob.shown}). Remove it or "
                f"check its spelling. {_unknown_key_hint(_holder(model, prob.loc), prob.loc)}"
            )
        elif prob.kind == "missing":
            lines.append(f"The {loc!r} parameter of {title} is required. Add it.")
        else:
            msg = prob.msg.removeprefix("Assertion failed, ").rstrip(".")
            lines.append(f"The {loc!r} parameter of {title}: {msg}. Got {prob.shown} instead.")
    return "\n".join(lines) if lines else str(exc)


def validate(cls: type[C], data: Any, title: str | None = None) -> C:
    """Validate ``data`` (a mapping or an instance) as ``cls``, raising :class:`ConfigError`."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(
            f"{title or cls.__name__} must be given as a mapping of parameters. Got "
            f"{type(data).__name__} {data!r:.80} instead."
        )
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, title or cls.__name__, cls), exc.errors(include_url=False)
        ) from None


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
        from subsetlab import registry

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
