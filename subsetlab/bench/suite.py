"""Benchmark suites: a TOML file that expands to the list of runs of a side-by-side comparison.

A suite names the datasets, the model(s), one trainer setting, the budgets, the seeds and the
strategies to compare. :meth:`Suite.expand` turns it into :class:`~subsetlab.config.RunSpec`
objects: the product datasets x models x seeds x budgets x strategies, plus (by default) one
full-data reference run per dataset x model x seed that every budget is compared against.

Example suite file::

    name = "quick"
    budgets = [0.1]
    seeds = [0]
    strategies = ["*"]                      # every registered strategy

    [[datasets]]
    name = "digits"

    [model]
    name = "mlp"

    [trainer]
    epochs = 30
    batch_size = 32

    # A strategy may also be a table with parameters and a display label:
    [[strategies]]
    name = "crest"
    drop = true
    label = "crest+drop"

Every run is identified by :attr:`RunSpec.key <subsetlab.config.RunSpec.key>`, a hash of its
spec that ignores the device and the display label, so the same comparison on another machine
resumes from and appends to the same results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from subsetlab.config import (
    DataConfig,
    FrozenConfig,
    ModelConfig,
    RunSpec,
    StrategyConfig,
    TrainerConfig,
)
from subsetlab.errors import ConfigError, RegistryError

__all__ = [
    "ALL_STRATEGIES",
    "FULL",
    "StrategyEntry",
    "Suite",
    "default_suite_text",
    "load_default_suite",
    "load_suite",
    "parse_list",
]

#: The strategy-list value meaning "every registered strategy".
ALL_STRATEGIES = "*"
#: Name of the full-data reference strategy.
FULL = "full"

_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


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
        from subsetlab import registry

        if isinstance(data, (str, StrategyConfig)):
            return {"config": registry.make_config(data)}
        if isinstance(data, Mapping) and "config" not in data:
            params = dict(data)
            label = params.pop("label", None)
            return {"config": registry.make_config(params), "label": label}
        if isinstance(data, Mapping) and not isinstance(data["config"], StrategyConfig):
            return {**data, "config": registry.make_config(data["config"])}
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


Budget = Annotated[float, Field(gt=0.0, le=1.0)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]


class Suite(FrozenConfig):
    """A side-by-side comparison: what to run, validated; :meth:`expand` lists the runs.

    Attributes:
        name: Suite name (default results go to ``runs/<name>/results.jsonl``).
        description: Free text shown by ``subsetlab run``.
        datasets: Data configs; a string is shorthand for ``{name = "..."}``.
        models: Model configs (the TOML may give one ``[model]`` table instead).
        trainer: The trainer setting shared by every run; its ``fraction`` comes from
            ``budgets``.
        budgets: Budget fractions f in (0, 1].
        seeds: Run seeds (each seed fixes the data split and the initial weights).
        strategies: Strategies to compare (the full-data reference is added separately).
        all: Also run every registered strategy with its default config (the TOML value
            ``strategies = ["*"]`` sets this).
        include_full: Add the full-data reference run per dataset x model x seed.
        threads: Torch threads per process running the suite's runs (an environment setting,
            not part of any run key; ``subsetlab run --threads`` overrides it). Small models
            gain nothing from intra-op threads and lose a lot when the cores are shared, so
            suites of small models may pin it to 1. Default: ``max(1, cores // workers)``.
    """

    name: str = Field(..., pattern=_NAME_RE, max_length=100)
    description: str = ""
    datasets: tuple[DataConfig, ...] = Field((DataConfig(),), min_length=1)
    models: tuple[ModelConfig, ...] = Field((ModelConfig(),), min_length=1)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    budgets: tuple[Budget, ...] = Field((0.1,), min_length=1)
    seeds: tuple[Seed, ...] = Field((0,), min_length=1)
    strategies: tuple[StrategyEntry, ...] = ()
    all: bool = False
    include_full: bool = True
    threads: int | None = Field(None, ge=1, le=4096)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        d = dict(data)
        for one, many in (("model", "models"), ("dataset", "datasets")):
            if one in d:
                if many in d:
                    raise ValueError(f"give either {one!r} or {many!r}, not both")
                v = d.pop(one)
                d[many] = v if isinstance(v, (list, tuple)) else [v]
        for many in ("models", "datasets"):
            if isinstance(d.get(many), (list, tuple)):
                d[many] = [{"name": v} if isinstance(v, str) else v for v in d[many]]
        strategies = d.get("strategies")
        if isinstance(strategies, (list, tuple)) and ALL_STRATEGIES in strategies:
            d["strategies"] = [s for s in strategies if s != ALL_STRATEGIES]
            d["all"] = True
        return d

    @field_validator("budgets", "seeds")
    @classmethod
    def _unique(cls, v: tuple) -> tuple:
        if len(set(v)) != len(v):
            raise ValueError(f"values must be unique, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _has_strategies(self) -> Suite:
        if not self.strategies and not self.all and not self.include_full:
            raise ValueError(
                "the suite runs nothing: list strategies (or '*' for all registered ones) "
                "or set include_full = true"
            )
        return self

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "suite") -> Suite:
        """Validate a suite given as a mapping (a parsed TOML file).

        Args:
            data: The suite's tables and values.
            source: Where it came from (a file name), used in error messages.

        Raises:
            ConfigError: listing every problem as ``source: field.path: message``.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a suite must be a table of settings. Got {type(data).__name__}.")
        d = dict(data)
        problems: list[str] = []
        trainer = d.get("trainer")
        if isinstance(trainer, Mapping) and "fraction" in trainer:
            problems.append(
                f"trainer.fraction: a suite sets the budget fraction with the top-level "
                f"`budgets` list (e.g. budgets = [{trainer['fraction']!r}]); remove "
                f"trainer.fraction."
            )
        strategies = d.get("strategies")
        if isinstance(strategies, (list, tuple)):
            resolved: list[Any] = []
            for i, entry in enumerate(strategies):
                if entry == ALL_STRATEGIES:
                    resolved.append(entry)
                    continue
                try:
                    resolved.append(_parse_entry(entry))
                except (ConfigError, RegistryError) as exc:
                    problems.extend(_strategy_problems(i, entry, exc))
            d["strategies"] = resolved
        elif strategies is not None:
            problems.append(
                f"strategies: must be a list of strategy names, 'name[key=value]' strings or "
                f"tables. Got {type(strategies).__name__} {strategies!r:.60}."
            )
            d.pop("strategies")
        try:
            suite = cls.model_validate(d)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc))
            suite = None
        except (ConfigError, RegistryError) as exc:  # pragma: no cover - defensive
            problems.append(str(exc))
            suite = None
        if problems or suite is None:
            raise ConfigError(_join(source, problems))
        try:
            suite._entries()
        except ConfigError as exc:
            raise ConfigError(_join(source, [str(exc)])) from None
        return suite

    def with_overrides(
        self,
        *,
        strategies: Sequence[str | Mapping[str, Any]] | None = None,
        seeds: Iterable[int] | None = None,
        budgets: Iterable[float] | None = None,
        trainer: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        model: Mapping[str, Any] | None = None,
        include_full: bool | None = None,
        name: str | None = None,
    ) -> Suite:
        """A new, re-validated suite with command-line overrides applied.

        Args:
            strategies: Replaces the suite's strategy list (``"*"`` means all registered).
            seeds: Replaces the seeds.
            budgets: Replaces the budgets.
            trainer: Trainer fields to change, e.g. ``{"epochs": 5}``.
            data: Data fields to change in every dataset, e.g. ``{"n_train": 500}``.
            model: Model fields to change in every model.
            include_full: Replaces ``include_full``.
            name: Replaces the suite name.

        Raises:
            ConfigError: an override is invalid (the message names it).
        """
        d: dict[str, Any] = self.model_dump(mode="python", exclude={"strategies", "trainer", "datasets", "models"})
        d["strategies"] = list(self.strategies)
        d["trainer"] = {**self.trainer.model_dump(exclude={"fraction"}), **dict(trainer or {})}
        d["datasets"] = [{**x.model_dump(), **dict(data or {})} for x in self.datasets]
        d["models"] = [{**x.model_dump(), **dict(model or {})} for x in self.models]
        if strategies is not None:
            d["strategies"] = list(strategies)
            d["all"] = False
        if seeds is not None:
            d["seeds"] = list(seeds)
        if budgets is not None:
            d["budgets"] = list(budgets)
        if include_full is not None:
            d["include_full"] = include_full
        if name is not None:
            d["name"] = name
        return Suite.from_dict(d, source=f"suite {self.name!r} with command-line overrides")

    # ------------------------------------------------------------------ expansion
    def _entries(self) -> list[StrategyEntry]:
        """Strategy entries after adding all registered ones, duplicates removed.

        Raises:
            ConfigError: two different configs share one label.
        """
        from subsetlab import registry

        entries: list[StrategyEntry] = []
        if self.all:
            entries += [StrategyEntry.model_validate(n) for n in registry.list_strategies()]
        entries += list(self.strategies)
        out: list[StrategyEntry] = []
        seen: dict[str, StrategyConfig] = {}
        for e in entries:
            if any(e.config == o.config for o in out):
                continue
            label = e.display_name
            if label in seen:
                raise ConfigError(
                    f"strategies: two different configurations share the label {label!r} "
                    f"({seen[label]!r} and {e.config!r}); give each a distinct `label`."
                )
            seen[label] = e.config
            out.append(e)
        return out

    def strategy_entries(self) -> list[StrategyEntry]:
        """The strategies this suite compares (the full reference not included unless listed)."""
        return self._entries()

    def expand(self) -> list[RunSpec]:
        """All runs of the suite, each once, in a stable order.

        Order: dataset, model, seed, then the full-data reference, then budget x strategy.
        The full-data run has its trainer ``fraction`` normalised to 1.0, so it is one run
        shared by every budget; runs with the same :attr:`RunSpec.key` appear once.
        """
        from subsetlab import registry

        entries = self._entries()
        full_entry = None
        if self.include_full:
            full_entry = StrategyEntry.model_validate(FULL)
        runs: dict[str, RunSpec] = {}
        base = self.trainer.model_dump()
        trainers = {b: TrainerConfig.model_validate({**base, "fraction": b}) for b in self.budgets}
        full_trainer = TrainerConfig.model_validate({**base, "fraction": 1.0})
        for data in self.datasets:
            for model in self.models:
                for seed in self.seeds:
                    todo: list[tuple[TrainerConfig, StrategyEntry]] = []
                    if full_entry is not None:
                        todo.append((full_trainer, full_entry))
                    for b in self.budgets:
                        todo += [(trainers[b], e) for e in entries]
                    for trainer, entry in todo:
                        if registry.get(entry.config.name).capabilities.budget == "full":
                            trainer = full_trainer
                        spec = RunSpec(
                            data=data,
                            model=model,
                            trainer=trainer,
                            strategy=entry.config,
                            seed=seed,
                            label=entry.display_name,
                        )
                        runs.setdefault(spec.key, spec)
        return list(runs.values())


# ---------------------------------------------------------------------- loading
def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite TOML file.

    The suite's ``name`` defaults to the file's stem.

    Raises:
        ConfigError: the file is missing, is not valid TOML (the message gives line and
            column) or does not validate (the message names each field path).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Suite file {str(path)!r} does not exist. Check the path.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read suite file {str(path)!r}: {exc}") from None
    return _loads(text, str(path), default_name=path.stem)


def default_suite_text() -> str:
    """The text of the packaged default suite (the same as ``benchmarks/suites/quick.toml``)."""
    from importlib import resources

    return resources.files("subsetlab.bench").joinpath("default_suite.toml").read_text(encoding="utf-8")


def load_default_suite() -> Suite:
    """The packaged default suite: digits, all registered strategies, a 10% budget, seed 0."""
    return _loads(default_suite_text(), "default_suite.toml (packaged)", default_name="quick")


def _loads(text: str, source: str, default_name: str) -> Suite:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: TOML syntax error: {exc}.") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(
            f"{source}: arrays or tables are nested too deeply to read; a suite needs at most a "
            f"few levels (e.g. model.options.hidden = [64])."
        ) from None
    data.setdefault("name", re.sub(r"[^A-Za-z0-9_.\-]", "-", default_name) or "suite")
    try:
        return Suite.from_dict(data, source=source)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a suite file must fail as a ConfigError naming it
        raise ConfigError(
            f"Invalid suite {source}: {type(exc).__name__}: {exc}"
        ) from exc


def parse_list(text: str, kind: type = float, what: str = "value") -> list:
    """Parse a comma-separated command-line list such as ``"0.1,0.3"``.

    Raises:
        ConfigError: an item is not a ``kind``.
    """
    out = []
    for part in text.split(","):
        p = part.strip()
        if not p:
            continue
        try:
            out.append(kind(p))
        except ValueError:
            raise ConfigError(
                f"Cannot read {p!r} in {text!r} as a {what}: give a comma-separated list such as "
                f"{'0,1,2' if kind is int else '0.1,0.3'}."
            ) from None
    if not out:
        raise ConfigError(f"The {what} list {text!r} is empty.")
    return out


# ---------------------------------------------------------------------- errors
def _parse_entry(entry: Any) -> StrategyEntry:
    """Build a :class:`StrategyEntry`, raising ConfigError / RegistryError unwrapped."""
    from subsetlab import registry

    if isinstance(entry, StrategyEntry):
        return entry
    if isinstance(entry, (str, StrategyConfig)):
        return StrategyEntry(config=registry.make_config(entry))
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
        return StrategyEntry(config=registry.make_config(cfg), label=label)
    raise ConfigError(
        f"a strategy must be a name, 'name[key=value]' or a table with a 'name' key. Got "
        f"{type(entry).__name__} {entry!r:.60}."
    )


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


def _pydantic_problems(exc: ValidationError) -> list[str]:
    lines = []
    errors = exc.errors(include_url=False)
    # pydantic puts union/validator branches in the loc as strings like 'function-after[...]'
    locs = [tuple(p for p in e.get("loc", ()) if not (isinstance(p, str) and "[" in p)) for e in errors]
    for err, loc in zip(errors, locs):
        if err.get("type") == "too_short" and any(o[: len(loc)] == loc and len(o) > len(loc) for o in locs):
            continue  # a list emptied by its own failing items: those are reported instead
        path = _path(loc)
        kind, msg = err.get("type", ""), err.get("msg", "")
        shown = repr(err.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        if kind == "extra_forbidden":
            parent = loc[0] if len(loc) > 1 else None
            model = _SECTION_MODELS.get(parent, Suite) if parent is not None else Suite
            allowed = ", ".join(f for f in model.model_fields if not (model is TrainerConfig and f == "fraction"))
            lines.append(f"{path}: unknown key (value {shown}). Check its spelling; allowed keys here: {allowed}.")
        elif kind == "missing":
            lines.append(f"{path}: required; add it.")
        else:
            msg = msg.removeprefix("Value error, ")
            hint = _HINTS.get(str(loc[0]) if loc else "", "")
            lines.append(f"{path}: {msg}. Got {shown}.{' ' + hint if hint else ''}")
    return lines


def _join(source: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"Invalid suite {source}: {problems[0]}"
    return f"Invalid suite {source}:\n" + "\n".join(f"  {p}" for p in problems)
