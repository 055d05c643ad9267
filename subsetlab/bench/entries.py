"""A suite's strategy entries (:class:`StrategyEntry`) and how a bad suite is explained.

Every problem of a suite file is collected and reported at once, each as ``path: what is wrong.
Got value. hint``; :func:`suite_problems` renders pydantic's errors that way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    model_validator,
)

from subsetlab.config import (
    validation_problems,
    DataConfig,
    FrozenConfig,
    ModelConfig,
    StrategyConfig,
    TrainerConfig,
)
from subsetlab.errors import ConfigError

__all__ = ["StrategyEntry"]

_RUNS_NOTHING = "the suite runs nothing"


def _fmt_value(v: Any) -> str:
    if isinstance(v, str):
        return v if re.fullmatch(r"[A-Za-z0-9_.\-]+", v) else json.dumps(v)
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


class StrategyEntry(FrozenConfig):
    """One strategy of a suite: its validated config and the label shown in reports.

    Built from ``"crest[tau=0.05]"``, from a table ``{name = "crest", tau = 0.05, label =
    "CREST 0.05"}``, or from ``{config = {...}, label = ...}`` (the dumped form).

    Attributes:
        config: The strategy's validated config (a subclass of
            :class:`~subsetlab.config.StrategyConfig`).
        label: Display name; defaults to the strategy name followed by the parameters that
            differ from the defaults, e.g. ``crest[tau=0.05]``.
    """

    config: SerializeAsAny[StrategyConfig]
    label: str | None = Field(None, min_length=1, max_length=80)

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("config"), StrategyConfig):
            return data  # already resolved (by _entry_fields): no second registry lookup
        if isinstance(data, (str, StrategyConfig, Mapping)):
            return _entry_fields(data)
        return data

    @property
    def display_name(self) -> str:
        """The label, or ``name[param=value,...]`` with the non-default parameters."""
        if self.label:
            return self.label
        changed = self.config.model_dump(mode="json", exclude_defaults=True)
        changed.pop("name", None)
        if not changed:
            return self.config.name
        inner = ",".join(f"{k}={_fmt_value(v)}" for k, v in sorted(changed.items()))
        return f"{self.config.name}[{inner}]"


def _entry_fields(entry: Any) -> dict[str, Any]:
    """The fields of a :class:`StrategyEntry` from ``name``, ``name[k=v]``, a config or a table.

    The one reading of a suite's strategy shorthands, used by the entry's own validation and by
    :meth:`Suite.from_dict <subsetlab.bench.suite.Suite.from_dict>` (which reports each bad
    entry with its position). Raises ConfigError / RegistryError.
    """
    from subsetlab import registry

    if isinstance(entry, (str, StrategyConfig)):
        return {"config": registry.make_config(entry)}
    if isinstance(entry, Mapping):
        params = dict(entry)
        if "config" in params:
            cfg, label = params.pop("config"), params.pop("label", None)
            if params:
                raise ConfigError(f"unknown keys {sorted(params)} next to 'config'; remove them.")
        else:
            label = params.pop("label", None)
            cfg = params
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise ConfigError(f"label must be a non-empty string. Got {label!r}.", [{"loc": ("label",)}])
        return {"config": registry.make_config(cfg), "label": label}
    raise ConfigError(
        f"a strategy must be a name, 'name[key=value]' or a table with a 'name' key. Got "
        f"{type(entry).__name__} {entry!r:.60}."
    )


def _parse_entry(entry: Any) -> StrategyEntry:
    """Build a :class:`StrategyEntry`, raising ConfigError / RegistryError unwrapped."""
    if isinstance(entry, StrategyEntry):
        return entry
    return StrategyEntry(**_entry_fields(entry))


def _strategy_problems(i: int, entry: Any, exc: Exception) -> list[str]:
    where = f"strategies[{i}]"
    errors = getattr(exc, "errors", None) or []
    lines = str(exc).splitlines()
    if errors and len(errors) == len(lines):
        out = []
        for err, line in zip(errors, lines):
            loc = ".".join(str(p) for p in err.get("loc", ()))
            out.append(f"{where}.{loc}: {line}" if loc else f"{where}: {line}")
        return out
    return [f"{where}: {msg}" for msg in [str(exc)]]


_HINTS = {
    "budgets": "Budgets are fractions of the training set in (0, 1], e.g. budgets = [0.1, 0.3].",
    "seeds": "Seeds are distinct non-negative integers, e.g. seeds = [0, 1, 2].",
    "name": "Use letters, digits, '.', '_' and '-' (it names the results folder).",
    "time_match": 'Use "wall" (wall seconds without evaluation) or "work" (forward+backward work).',
    "forward_cost": "The cost of a forward example relative to a training backprop example, in (0, 1); "
    "default 1/3.",
}

_SECTION_MODELS = {"datasets": DataConfig, "models": ModelConfig, "trainer": TrainerConfig}


def _path(loc: tuple) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out or "(suite)"


def _pydantic_problems(exc: ValidationError, top: type) -> list[str]:
    """Pydantic's errors as ``path: problem`` lines; ``top`` is the model validated (the suite)."""
    lines = []
    # pydantic puts union/validator branches in the loc as strings like 'function-after[...]'
    locs = [tuple(p for p in e.get("loc", ()) if not (isinstance(p, str) and "[" in p)) for e in exc.errors(include_url=False)]
    for prob in validation_problems(exc, width=60, locs=locs):
        loc = prob.loc
        if prob.kind == "too_short" and any(o[: len(loc)] == loc and len(o) > len(loc) for o in locs):
            continue  # a list emptied by its own failing items: those are reported instead
        path = _path(loc)
        if prob.kind == "extra_forbidden":
            parent = loc[0] if len(loc) > 1 else None
            model = _SECTION_MODELS.get(parent, top) if parent is not None else top
            allowed = ", ".join(f for f in model.model_fields if not (model is TrainerConfig and f == "fraction"))
            lines.append(f"{path}: unknown key (value {prob.shown}). Check its spelling; allowed keys here: {allowed}.")
        elif prob.kind == "missing":
            lines.append(f"{path}: required; add it.")
        else:
            hint = _HINTS.get(str(loc[0]) if loc else "", "")
            lines.append(f"{path}: {prob.msg}. Got {prob.shown}.{' ' + hint if hint else ''}")
    return lines


def _join(source: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"Invalid suite {source}: {problems[0]}"
    return f"Invalid suite {source}:\n" + "\n".join(f"  {p}" for p in problems)
