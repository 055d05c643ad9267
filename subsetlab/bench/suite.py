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

**Time-matched Random.** ``time_matched = ["crest", ...]`` (or ``true``: every strategy but
Random and the full-data reference) adds, per matched strategy X, dataset, model, budget f and
seed, one Random run whose budget gives it X's cost (:class:`TimeMatch`, listed by
:meth:`Suite.time_matches`). Its fraction is known only once X's run and the plain Random run
at f have finished::

    f' = min(1, f * cost(X) / cost(Random at f))

with ``time_match = "wall"`` (default) cost = wall seconds without evaluation and set-up
(``timings.total - timings.eval - timings.setup``: evaluation takes the same time at every
budget, and the first run of a process pays about 2 s of one-off set-up, so both are left out
of the match), and with ``time_match = "work"`` cost = the forward+backward work in
backprop-example units: ``backprop + forward_cost * forward + (1 - forward_cost) * (backward +
hvp)`` (a training example costs a forward and a backward pass, 1 unit; ``forward_cost``,
default 1/3, is the forward's share, so an extra backward or HVP example costs 2/3). A matched
run is identified by what it is matched to (:attr:`TimeMatch.key`), not by its measured
fraction, so a suite resumes without redoing or losing it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
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

from subsetlab.bench.entries import (
    _RUNS_NOTHING,
    StrategyEntry,
    _join,
    _parse_entry,
    _pydantic_problems,
    _strategy_problems,
)
from subsetlab.bench.matching import FORWARD_COST, TimeMatch, run_cost

__all__ = [
    "ALL_STRATEGIES",
    "BASELINE",
    "FORWARD_COST",
    "FULL",
    "StrategyEntry",
    "Suite",
    "TimeMatch",
    "default_suite_text",
    "load_default_suite",
    "load_suite",
    "parse_list",
    "run_cost",
]

#: The strategy-list value meaning "every registered strategy".
ALL_STRATEGIES = "*"
#: Name of the full-data reference strategy.
FULL = "full"
#: Strategy name (and default label) of the baseline that time-matched runs use.
BASELINE = "random"
#: Default cost of one extra forward example in ``time_match = "work"``, in training-backprop

_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


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
        time_matched: Strategies (by label) that each get a time-matched Random run per
            dataset, model, budget and seed; ``True`` matches every strategy except Random
            and full-data ones; ``False`` (default) none. The TOML value is ``true``, ``false``
            or a list of labels (``"*"`` in the list means ``true``). The Random baseline is
            the entry labelled ``random`` (else one with Random's default config), added to
            the suite's runs when missing.
        time_match: What the matched Random run gets as much of as the strategy: ``"wall"``
            (default), wall seconds without evaluation; ``"work"``, forward+backward work
            (see the module docstring).
        forward_cost: Cost of one extra forward example relative to one training backprop
            example under ``time_match = "work"`` (an extra backward or HVP example costs
            ``1 - forward_cost``); default 1/3. Ignored under ``"wall"``.
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
    time_matched: bool | tuple[str, ...] = False
    time_match: Literal["wall", "work"] = "wall"
    forward_cost: float = Field(FORWARD_COST, gt=0.0, lt=1.0)

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

    @field_validator("time_matched", mode="before")
    @classmethod
    def _time_matched(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return v
        if isinstance(v, (list, tuple)) and all(isinstance(x, str) and x.strip() for x in v):
            if ALL_STRATEGIES in v:
                return True
            if len(set(v)) != len(v):
                raise ValueError(f"labels must be unique, got {list(v)}")
            return bool(v) and tuple(v)
        raise ValueError(
            "must be true (every strategy but Random and full data), false, or a list of strategy "
            'labels such as ["crest", "gradmatch"]'
        )

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
                f"{_RUNS_NOTHING}: list strategies (or '*' for all registered ones) "
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
        bad_strategies = False
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
                    bad_strategies = True
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
            # a list emptied by its own bad entries does not also "run nothing": those are reported
            problems.extend(p for p in _pydantic_problems(exc, cls) if not (bad_strategies and _RUNS_NOTHING in p))
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
        time_matched: bool | Sequence[str] | None = None,
        time_match: str | None = None,
        forward_cost: float | None = None,
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
            time_matched: Replaces ``time_matched`` (``True``, ``False`` or labels).
            time_match: Replaces ``time_match`` (``"wall"`` or ``"work"``).
            forward_cost: Replaces ``forward_cost``.

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
        for key, value in (("time_matched", time_matched), ("time_match", time_match), ("forward_cost", forward_cost)):
            if value is not None:
                d[key] = list(value) if isinstance(value, (list, tuple)) else value
        return Suite.from_dict(d, source=f"{self.name!r} with command-line overrides")

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
        if self.time_matched:
            out = self._with_baseline(out)
        return out

    def _with_baseline(self, entries: list[StrategyEntry]) -> list[StrategyEntry]:
        """``entries`` with the Random baseline added if missing; checks ``time_matched``.

        Raises:
            ConfigError: a listed label is unknown, is the baseline, is a full-data strategy,
                or a matched run's label would clash with a strategy's.
        """
        import difflib

        baseline = self._baseline(entries)
        if baseline is None:
            baseline = StrategyEntry.model_validate(BASELINE)
            entries = [*entries, baseline]
        labels = [e.display_name for e in entries]
        for e in self._matched_entries(entries):
            clash = f"{baseline.display_name}@{e.display_name}"
            if clash in labels:
                raise ConfigError(
                    f"time_matched: the time-matched Random run of {e.display_name!r} is labelled "
                    f"{clash!r}, which a strategy of the suite already uses; rename that strategy's "
                    "`label`."
                )
        if isinstance(self.time_matched, tuple):
            by_label = {e.display_name: e for e in entries}
            for label in self.time_matched:
                entry = by_label.get(label)
                if entry is None:
                    close = difflib.get_close_matches(label, labels, n=1, cutoff=0.5)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise ConfigError(
                        f"time_matched: no strategy of the suite is labelled {label!r}.{hint} The suite's "
                        f"labels: {', '.join(labels)} (a table's `label`, else name[param=value])."
                    )
                if entry is baseline:
                    raise ConfigError(
                        f"time_matched: {label!r} is the Random baseline the matched runs are made "
                        "of; it cannot be matched to itself. Remove it from time_matched."
                    )
                if self._full_budget(entry):
                    raise ConfigError(
                        f"time_matched: {label!r} always trains on the full data (its budget does not "
                        "depend on the suite's budgets), so there is nothing to match at a budget. "
                        "Remove it from time_matched."
                    )
        return entries

    @staticmethod
    def _full_budget(entry: StrategyEntry) -> bool:
        from subsetlab import registry

        return registry.get(entry.config.name).capabilities_for(entry.config).budget == "full"

    @staticmethod
    def _baseline(entries: Sequence[StrategyEntry]) -> StrategyEntry | None:
        """The entry labelled ``random``, else the one with Random's default config, else None.

        Raises:
            ConfigError: the entry labelled ``random`` is not a Random strategy.
        """
        from subsetlab import registry

        for e in entries:
            if e.display_name == BASELINE:
                if e.config.name != BASELINE:
                    raise ConfigError(
                        f"time_matched: the strategy labelled {BASELINE!r} is a {e.config.name!r} "
                        "strategy, but time-matched runs are Random runs and use the entry labelled "
                        f"{BASELINE!r} as their baseline; give it another label."
                    )
                return e
        default = registry.make_config(BASELINE)
        return next((e for e in entries if e.config == default), None)

    def _matched_entries(self, entries: Sequence[StrategyEntry]) -> list[StrategyEntry]:
        if not self.time_matched:
            return []
        if isinstance(self.time_matched, tuple):
            return [e for e in entries if e.display_name in self.time_matched]
        return [e for e in entries if e.config.name not in (BASELINE, FULL) and not self._full_budget(e)]

    def strategy_entries(self) -> list[StrategyEntry]:
        """The strategies this suite compares (the full reference not included unless listed).

        With ``time_matched`` set, the Random baseline is among them (added when not listed).
        """
        return self._entries()

    def time_matches(self) -> list[TimeMatch]:
        """The time-matched Random runs of the suite, one per matched strategy, dataset, model,
        budget and seed (empty unless ``time_matched`` is set).

        Each is known by its :attr:`TimeMatch.key`; its fraction is computed from the records
        of the two runs it depends on (:meth:`TimeMatch.resolve`).
        """
        if not self.time_matched:
            return []
        entries = self._entries()
        baseline = self._baseline(entries)
        assert baseline is not None  # _entries added it
        by_key = {s.key: s for s in self.expand()}
        base = self.trainer.model_dump()
        out: list[TimeMatch] = []
        for data in self.datasets:
            for model in self.models:
                for seed in self.seeds:
                    for b in self.budgets:
                        trainer = TrainerConfig.model_validate({**base, "fraction": b})

                        def spec(entry: StrategyEntry) -> RunSpec:
                            s = RunSpec(data=data, model=model, trainer=trainer, strategy=entry.config,
                                        seed=seed, label=entry.display_name)
                            return by_key.get(s.key, s)

                        ref = spec(baseline)
                        for e in self._matched_entries(entries):
                            out.append(TimeMatch(
                                strategy=spec(e), baseline=ref, mode=self.time_match,
                                forward_cost=self.forward_cost,
                            ))
        return out

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
                        if registry.get(entry.config.name).capabilities_for(entry.config).budget == "full":
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


