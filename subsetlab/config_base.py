"""The base of every config and how validation errors read.

:class:`FrozenConfig` (immutable, unknown keys rejected, floats finite; constructing one raises
:class:`~subsetlab.errors.ConfigError`), :class:`StrategyConfig` and :class:`EpochwiseConfig`,
and :func:`validate` / :func:`format_validation_error`, which turn pydantic's errors into
sentences naming the field, the value, the rule and the fix. The registry and the strategy
contract build on this module; :mod:`subsetlab.config` adds the trainer, data, model and run
configs (and re-exports everything here).
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from subsetlab.errors import ConfigError

__all__ = [
    "EpochwiseConfig",
    "FrozenConfig",
    "Problem",
    "StrategyConfig",
    "format_validation_error",
    "validate",
    "validation_problems",
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
