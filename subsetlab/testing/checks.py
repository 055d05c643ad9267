"""Named conformance checks every strategy (built-in or third-party) must pass.

Use them as a function::

    from subsetlab.testing import check_strategy
    check_strategy("my-method")               # raises AssertionError naming the failed check

or as a pytest base class (one test per check, readable ids)::

    from subsetlab.testing import StrategyConformance

    class TestMyMethod(StrategyConformance):
        strategy = {"name": "my-method", "k": 3}
        known_failures = {"check_deterministic": "uses wall-clock time on purpose"}

A declared known failure still runs: a strict xfail in pytest (XPASS fails once it is fixed),
and listed in :class:`CheckReport` by :func:`check_strategy`. The last four checks watch the
strategy's hooks in a run (:class:`~subsetlab.testing.watch.HookWatch`): global random state,
model parameters, training mode and the use of the validation split.

The checks train on :func:`tiny_problem` sized by a :class:`TinyProblem`: by default 240
examples, a 25% budget and batches of 16, so 4 steps per pseudo-epoch x 3 pseudo-epochs = 12
training steps. A strategy whose own trigger re-selects less often than that is never
re-selected inside the checks; give them a longer problem, ``problem=TinyProblem(epochs=10)``
(a keyword of every check and of :func:`check_strategy`, a class attribute of
``StrategyConformance``).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from subsetlab import registry
from subsetlab.config import StrategyConfig, TrainerConfig
from subsetlab.data.base import DataSplits, IndexedDataset
from subsetlab.embeddings import GradientEmbedder
from subsetlab.errors import ConfigError
from subsetlab.protocol import (
    Budget,
    DistView,
    Selection,
    SelectionContext,
    SelectionStrategy,
    TrainState,
    WorkMeters,
)
from subsetlab.seeding import torch_generator
from subsetlab.testing.watch import HookWatch

__all__ = [
    "TinyProblem",
    "tiny_problem",
    "tiny_model",
    "CHECKS",
    "iter_checks",
    "check_strategy",
    "CheckReport",
    "check_known_failures",
    "make_context",
    "make_state",
    "describe_problem",
]

StrategySpec = str | dict | StrategyConfig


@dataclass(frozen=True)
class TinyProblem:
    """Sizes of the tiny classification problem the checks run on.

    The defaults train ``epochs`` x ``ceil(fraction * n_train / batch_size)`` = 3 x 4 = 12
    steps. A strategy that needs more steps to show its behaviour (a re-selection trigger with
    a minimum gap, a warm-up) passes a longer one to the checks, e.g.
    ``TinyProblem(epochs=10)`` (40 steps); :func:`describe_problem` states the arithmetic.
    """

    n_train: int = 240
    n_val: int = 60
    n_test: int = 80
    dim: int = 8
    classes: int = 4
    epochs: int = 3
    fraction: float = 0.25
    batch_size: int = 16


def tiny_problem(seed: int = 0, problem: TinyProblem = TinyProblem()) -> DataSplits:
    """Separable Gaussian blobs: a deterministic, fast data set for checks and tests."""
    g = torch_generator(seed, "tiny-problem")
    centers = torch.randn(problem.classes, problem.dim, generator=g) * 2.5

    def make(n: int, name: str) -> IndexedDataset:
        y = torch.arange(n) % problem.classes
        y = y[torch.randperm(n, generator=g)]
        x = centers[y] + torch.randn(n, problem.dim, generator=g)
        return IndexedDataset(x, y, problem.classes, name)

    return DataSplits(make(problem.n_train, "tiny-train"), make(problem.n_val, "tiny-val"), make(problem.n_test, "tiny-test"))


def tiny_model(seed: int = 0, problem: TinyProblem = TinyProblem()) -> nn.Module:
    """A two-layer MLP for :func:`tiny_problem`, initialised from ``seed`` without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(problem.dim, 16), nn.ReLU(), nn.Linear(16, problem.classes))


def tiny_trainer_config(problem: TinyProblem = TinyProblem(), **overrides: Any) -> TrainerConfig:
    """The trainer config of the checks: CPU, a few pseudo-epochs, tiny batches."""
    base = dict(
        epochs=problem.epochs,
        fraction=problem.fraction,
        batch_size=problem.batch_size,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        device="cpu",
        eval_batch_size=256,
    )
    base.update(overrides)
    return TrainerConfig(**base)


def describe_problem(problem: TinyProblem = TinyProblem(), strategy: SelectionStrategy | None = None) -> str:
    """The budget arithmetic of the checks' problem in one sentence (the checks add it to
    their failure messages).

    Args:
        problem: The problem's sizes.
        strategy: When given, its ``capabilities_for(config).budget`` mode is used (the full-data
            reference trains on every example).
    """
    mode = strategy.capabilities_for(strategy.config).budget if strategy is not None else "fraction"
    b = Budget.make(problem.n_train, problem.fraction, problem.batch_size, problem.epochs, mode)
    return (
        f"The check problem: {problem.n_train} training examples, a {b.fraction:g} budget "
        f"({b.subset_size} per selection) and batches of {problem.batch_size}, so "
        f"{b.steps_per_epoch} steps per pseudo-epoch x {problem.epochs} pseudo-epochs = "
        f"{b.total_steps} steps. A strategy that needs more steps to re-select passes a longer "
        f"problem, problem=TinyProblem(epochs=...)."
    )


def _explained(check: Callable[..., None]) -> Callable[..., None]:
    """Add :func:`describe_problem` to the ``AssertionError`` of a failing check."""

    @functools.wraps(check)
    def run(spec: StrategySpec, *, problem: TinyProblem = TinyProblem()) -> None:
        __tracebackhide__ = True
        try:
            check(spec, problem=problem)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{describe_problem(problem)}") from exc

    return run


def _config(spec: StrategySpec) -> StrategyConfig:
    return registry.make_config(spec)


def _fit(spec: StrategySpec, seed: int = 0, problem: TinyProblem = TinyProblem(), **kw: Any):
    from subsetlab.trainer import Trainer

    trainer = Trainer(tiny_trainer_config(problem), **kw.pop("trainer_kw", {}))
    strategy = registry.create(_config(spec))
    return trainer.fit(strategy, tiny_model(seed, problem), tiny_problem(seed, problem), seed, **kw), strategy


# ----------------------------------------------------------------------------- checks


def check_config_json_roundtrip(spec: StrategySpec, *, problem: TinyProblem = TinyProblem()) -> None:
    """The config survives JSON serialisation unchanged and validates through the registry.

    (``problem`` is accepted like every check's, and unused.)
    """
    cfg = _config(spec)
    again = type(cfg).model_validate_json(cfg.model_dump_json())
    assert again == cfg, f"config changed in a JSON round trip: {cfg!r} -> {again!r}"
    via_registry = registry.make_config(cfg.model_dump(mode="json"))
    assert via_registry == cfg, "registry.make_config(dict) does not reproduce the config"


def check_config_rejects_unknown_keys(spec: StrategySpec, *, problem: TinyProblem = TinyProblem()) -> None:
    """An unknown key raises ConfigError naming it; the config is frozen."""
    cfg = _config(spec)
    bad = {**cfg.model_dump(), "definitely_not_a_parameter": 1}
    try:
        registry.make_config(bad)
    except ConfigError as exc:
        assert "definitely_not_a_parameter" in str(exc), f"the error does not name the key: {exc}"
    else:
        raise AssertionError("an unknown config key was accepted")
    try:
        cfg.name = "other"
    except ValueError:  # pydantic's ValidationError for frozen instances
        pass
    else:
        raise AssertionError("the config is not frozen")


def make_context(
    data: DataSplits, model: nn.Module, budget: Budget, seed: int = 0, dist: DistView | None = None
) -> SelectionContext:
    """A CPU :class:`~subsetlab.protocol.SelectionContext` built the way the trainer builds one.

    For unit tests that call a strategy's hooks directly (``setup``, ``select``...) without a
    training loop: cross-entropy loss, a fresh embedder and meters, the strategy generator
    derived from ``seed`` exactly as in :class:`~subsetlab.trainer.Trainer`. ``dist`` is the
    distributed view (default: single process), e.g. from :func:`subsetlab.distributed.spawn`.
    """
    return SelectionContext(
        train=data.train,
        val=data.val,
        model=model,
        loss_fn=lambda z, y: nn.functional.cross_entropy(z, y, reduction="none"),
        embedder=GradientEmbedder(model, "cpu"),
        device=torch.device("cpu"),
        generator=torch_generator(seed, "strategy"),
        seed=seed,
        budget=budget,
        dist=dist or DistView(),
        meters=WorkMeters(),
    )


def make_state(
    ctx: SelectionContext,
    step: int = 0,
    *,
    lr: float = 0.05,
    selections: int = 0,
    model: nn.Module | None = None,
) -> TrainState:
    """The :class:`~subsetlab.protocol.TrainState` the trainer would pass before ``step``.

    For unit tests of ``should_select`` and ``select`` without a training loop, next to
    :func:`make_context`: the pseudo-epoch and the step counts come from ``ctx.budget``.

    Args:
        ctx: The context the strategy was set up with (:func:`make_context`).
        step: The global step about to be taken (0: the first selection).
        lr: The learning rate of that step.
        selections: Selections made so far.
        model: The model being trained (default ``ctx.model``).

    Example:
        >>> from subsetlab import registry
        >>> from subsetlab.protocol import Budget
        >>> from subsetlab.testing import make_context, make_state, tiny_model, tiny_problem
        >>> data, model = tiny_problem(0), tiny_model(0)
        >>> ctx = make_context(data, model, Budget.make(len(data.train), 0.25, 16, 3))
        >>> strategy = registry.create("random")
        >>> strategy.setup(ctx)
        >>> len(strategy.select(make_state(ctx)))
        60
        >>> make_state(ctx, step=5).epoch
        1
    """
    b = ctx.budget
    if not 0 <= step < b.total_steps:
        raise ValueError(f"step must lie in [0, {b.total_steps}) for this budget. Got {step} instead.")
    return TrainState(
        step=step,
        epoch=step // b.steps_per_epoch,
        steps_per_epoch=b.steps_per_epoch,
        total_steps=b.total_steps,
        lr=lr,
        model=ctx.model if model is None else model,
        selections=selections,
    )


def _setup(spec: StrategySpec, seed: int, problem: TinyProblem) -> SelectionStrategy:
    """A strategy set up on the check problem the way the trainer sets it up."""
    data = tiny_problem(seed, problem)
    model = tiny_model(seed, problem)
    strategy = registry.create(_config(spec))
    budget = Budget.make(problem.n_train, problem.fraction, problem.batch_size, problem.epochs, strategy.capabilities_for(strategy.config).budget)
    strategy.setup(make_context(data, model, budget, seed))
    return strategy


def _first_selection(spec: StrategySpec, seed: int, problem: TinyProblem = TinyProblem()) -> Selection:
    strategy = _setup(spec, seed, problem)
    return strategy.select(make_state(strategy.ctx))


@_explained
def check_selection_valid(spec: StrategySpec, *, problem: TinyProblem = TinyProblem()) -> None:
    """``select`` returns int64 in-range indices and finite positive weights of equal length."""
    sel = _first_selection(spec, 0, problem)
    assert isinstance(sel, Selection), f"select() returned {type(sel).__name__}, not Selection"
    assert sel.indices.dtype == torch.int64, f"indices dtype {sel.indices.dtype} is not int64"
    assert sel.indices.dim() == 1 and sel.indices.shape == sel.weights.shape, "indices/weights shapes differ"
    n = problem.n_train
    assert len(sel) > 0 and int(sel.indices.min()) >= 0 and int(sel.indices.max()) < n, "indices out of range"
    assert bool(torch.isfinite(sel.weights).all()) and bool((sel.weights > 0).all()), "weights not finite and > 0"
    sel.validate(n, "check")
    if sel.batches is not None:
        covered = torch.cat(sel.batches)
        assert int(covered.min()) >= 0 and int(covered.max()) < len(sel), "batch plan positions out of range"


@_explained
def check_deterministic(spec: StrategySpec, *, problem: TinyProblem = TinyProblem()) -> None:
    """The same seed gives identical selections and final weights; a fit is reproducible."""
    a, b = _first_selection(spec, 3, problem), _first_selection(spec, 3, problem)
    assert torch.equal(a.indices, b.indices), "the same seed selected different indices"
    assert torch.equal(a.weights, b.weights), "the same seed gave different weights"
    r1, _ = _fit(spec, seed=1, problem=problem)
    r2, _ = _fit(spec, seed=1, problem=problem)
    assert r1.ok and r2.ok, f"run failed: {r1.error or r2.error}"
    assert r1.metrics == r2.metrics, f"same seed, different metrics: {r1.metrics} vs {r2.metrics}"
    assert [s["size"] for s in r1.selections["log"]] == [s["size"] for s in r2.selections["log"]]


@_explained
def check_respects_budget(spec: StrategySpec, *, problem: TinyProblem = TinyProblem()) -> None:
    """Every run trains exactly E*S steps of the shared schedule and backprops what it reports."""
    result, strategy = _fit(spec, problem=problem)
    assert result.ok, f"run failed: {result.error}"
    budget = Budget.make(problem.n_train, problem.fraction, problem.batch_size, problem.epochs, strategy.capabilities_for(strategy.config).budget)
    assert result.work["steps"] == budget.total_steps, (
        f"trained {result.work['steps']} steps, budget is {budget.total_steps}"
    )
    assert result.work["backprop_examples"] <= budget.total_steps * problem.batch_size, (
        f"backpropagated {result.work['backprop_examples']} examples, more than "
        f"{budget.total_steps} steps x batch {problem.batch_size}"
    )
    assert result.selections["count"] >= 1
    assert len(result.history) == problem.epochs, "one evaluation per pseudo-epoch expected"


@_explained
def check_state_dict_roundtrip(spec: StrategySpec, *, problem: TinyProblem = TinyProblem()) -> None:
    """After ``setup`` and a first ``select``, ``state_dict`` saves with ``torch.save`` and loads
    with ``weights_only=True`` into a freshly set-up strategy; a resumed run ends with the same
    weights as an uninterrupted one."""
    import tempfile
    from pathlib import Path

    from subsetlab.trainer import Trainer

    # as in the trainer: state is allocated in setup, saved at checkpoints after selections,
    # and loaded into a strategy that was set up again
    sel_strategy = _setup(spec, 0, problem)
    sel_strategy.select(make_state(sel_strategy.ctx))
    buf = io.BytesIO()
    torch.save(sel_strategy.state_dict(), buf)
    buf.seek(0)
    _setup(spec, 0, problem).load_state_dict(torch.load(buf, weights_only=True))

    cfg = tiny_trainer_config(problem, checkpoint_every=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.ckpt"
        full_model = tiny_model(0, problem)
        full = Trainer(cfg).fit(registry.create(_config(spec)), full_model, tiny_problem(0, problem), 0)
        S = Budget.make(problem.n_train, problem.fraction, problem.batch_size, problem.epochs, sel_strategy.capabilities_for(sel_strategy.config).budget).steps_per_epoch
        part_model = tiny_model(0, problem)
        Trainer(cfg, checkpoint_path=path).fit(
            registry.create(_config(spec)), part_model, tiny_problem(0, problem), 0, run_key="k", stop_after_steps=S + 1
        )
        assert path.exists(), "no checkpoint was written"
        resumed_model = tiny_model(0, problem)
        resumed = Trainer(cfg, checkpoint_path=path).fit(
            registry.create(_config(spec)), resumed_model, tiny_problem(0, problem), 0, run_key="k"
        )
    assert full.ok and resumed.ok, f"run failed: {full.error or resumed.error}"
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), f"resumed run ended with different weights in {k}"
    assert full.selections["count"] == resumed.selections["count"], "resumed run made a different number of selections"


def _watched_fit(spec: StrategySpec, problem: TinyProblem, mode_phase: int | None = None) -> tuple[HookWatch, SelectionStrategy]:
    """A run of the trainer on the check problem with the strategy's hooks watched
    (:class:`~subsetlab.testing.watch.HookWatch`) and its validation split watched too."""
    from subsetlab.trainer import Trainer

    strategy = registry.create(_config(spec))
    model, data = tiny_model(0, problem), tiny_problem(0, problem)
    watch = HookWatch(strategy, model, mode_phase)
    data = DataSplits(data.train, watch.watch_split(data.val), data.test)
    result = Trainer(tiny_trainer_config(problem)).fit(strategy, model, data, 0)
    assert result.ok, f"run failed: {result.error}"
    assert watch.calls["setup"] == 1 and watch.calls["select"] >= 1, (
        f"the watch did not see the trainer call setup() and select() (calls seen: {dict(watch.calls)})"
    )
    return watch, strategy


def _none_found(found: list[str], what: str, fix: str) -> None:
    """Fail with ``what: <each finding>. <fix>`` when a watch found anything."""
    __tracebackhide__ = True
    assert not found, f"{what}: {'; '.join(found)}. {fix}"


@_explained
def check_leaves_global_rng_alone(spec: StrategySpec, *, problem: TinyProblem = TinyProblem()) -> None:
    """In a run, every hook (``setup``, ``should_select``, ``select``, ``on_after_backward``,
    ``on_step_end``) leaves the global random state as it found it: torch's CPU generator,
    Python's ``random`` and numpy's global state. Randomness comes from ``ctx.generator`` (or
    generators derived from ``ctx.seed``) only."""
    watch, _ = _watched_fit(spec, problem)
    _none_found(
        watch.rng,
        "a hook changed the global random state",
        "Draw from ctx.generator (torch.randperm(n, generator=ctx.generator)), or run a library call "
        "that draws from the global generators inside torch.random.fork_rng() / with its own seeded generator.",
    )


@_explained
def check_leaves_model_unchanged(spec: StrategySpec, *, problem: TinyProblem = TinyProblem()) -> None:
    """In a run, every hook leaves the model's parameters and buffers bitwise unchanged and keeps
    the parameter objects (the optimiser holds them); ``on_after_backward`` leaves the gradients
    unchanged too. Only the trainer's optimiser step changes the model."""
    watch, _ = _watched_fit(spec, problem)
    _none_found(
        watch.model_changes,
        "a hook changed the model",
        "Compute on copies (torch.no_grad(), .detach().clone()); a forward pass for embeddings runs "
        "in eval mode (BatchNorm statistics are buffers), as ctx.embedder's does.",
    )


@_explained
def check_restores_training_mode(spec: StrategySpec, *, problem: TinyProblem = TinyProblem()) -> None:
    """Every hook returns the model in the training mode it found it in. Two runs: in one the
    first call of each hook finds the model in eval mode, in the other in train mode (later calls
    alternate), so that neither a missing restore after ``eval()`` nor a closing ``train()`` goes
    unseen."""
    changes = []
    for phase in (0, 1):
        watch, _ = _watched_fit(spec, problem, mode_phase=phase)
        changes += watch.mode_changes
    _none_found(
        changes,
        "a hook left the model in another training mode",
        "Save was = model.training and end with model.train(was) (in a finally block).",
    )


@_explained
def check_declares_validation_use(spec: StrategySpec, *, problem: TinyProblem = TinyProblem()) -> None:
    """``capabilities.needs_validation`` says whether the hooks use ``ctx.val``: a strategy that
    declares False never reads it (a run without a validation split is allowed, and a strategy's
    selections must not depend on whether there is one); one that declares True reads it in a run
    (the trainer refuses runs without one for it)."""
    watch, strategy = _watched_fit(spec, problem)
    if strategy.capabilities_for(strategy.config).needs_validation:
        assert watch.val_reads, (
            "capabilities.needs_validation is True but no hook read ctx.val in the run; the "
            "trainer refuses a run without a validation split for this strategy. Declare "
            "needs_validation=False (for this configuration) if it does not use it."
        )
    else:
        _none_found(
            watch.val_reads,
            "capabilities.needs_validation is False but a hook read the validation split",
            "Declare needs_validation=True (for the configurations that use it), so that the "
            "trainer refuses a run without one.",
        )


@_explained
def check_works_on_cpu_tiny_model(spec: StrategySpec, *, problem: TinyProblem = TinyProblem()) -> None:
    """A full run on CPU with a tiny model finishes with finite metrics better than chance."""
    result, _ = _fit(spec, problem=problem)
    assert result.ok, f"run failed: {result.error}"
    acc = result.metrics["final_acc"]
    assert math.isfinite(acc) and acc > 1.0 / problem.classes, f"final accuracy {acc} not above chance"
    for key in ("total", "train", "select", "eval"):
        assert result.timings[key] >= 0.0


#: Every conformance check by function name, in the order they run; each takes a strategy spec
#: (name, ``"name[k=v]"``, mapping or config) and raises ``AssertionError`` naming what failed.
CHECKS: dict[str, Callable[[StrategySpec], None]] = {
    f.__name__: f
    for f in (
        check_config_json_roundtrip,
        check_config_rejects_unknown_keys,
        check_selection_valid,
        check_deterministic,
        check_respects_budget,
        check_state_dict_roundtrip,
        check_works_on_cpu_tiny_model,
        check_leaves_global_rng_alone,
        check_leaves_model_unchanged,
        check_restores_training_mode,
        check_declares_validation_use,
    )
}


def iter_checks(spec: StrategySpec, problem: TinyProblem = TinyProblem()) -> Iterator[tuple[str, Callable[[], None]]]:
    """Yield ``(check_name, thunk)`` for every check, bound to ``spec`` and ``problem``."""
    for name, fn in CHECKS.items():
        yield name, (lambda fn=fn: fn(spec, problem=problem))


@dataclass
class CheckReport:
    """Outcome of :func:`check_strategy`.

    Attributes:
        passed: Checks that passed (and were not declared known failures).
        failed: ``check name -> message`` of the checks that failed unexpectedly.
        expected_failures: ``check name -> message`` of the known failures that failed, as
            declared (pytest's xfail).
        unexpected_passes: ``check name -> declared reason`` of the known failures that passed:
            the failure is fixed and its declaration is stale (pytest's strict XPASS, a failure).
    """

    passed: list[str]
    failed: dict[str, str]
    expected_failures: dict[str, str] = field(default_factory=dict)
    unexpected_passes: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no check failed unexpectedly and no known failure passed."""
        return not self.failed and not self.unexpected_passes


def check_known_failures(known_failures: dict[str, str]) -> None:
    """Raise ``ValueError`` when a key of ``known_failures`` names no check (a misspelt name
    would otherwise declare nothing)."""
    unknown = sorted(set(known_failures) - set(CHECKS))
    if unknown:
        raise ValueError(
            f"known_failures names no conformance check: {', '.join(map(repr, unknown))}. Use the "
            f"check function names: {', '.join(CHECKS)}."
        )


def check_strategy(
    spec: StrategySpec | type[SelectionStrategy],
    *,
    known_failures: dict[str, str] | None = None,
    raise_on_failure: bool = True,
    problem: TinyProblem = TinyProblem(),
) -> CheckReport:
    """Run every conformance check on a registered strategy.

    Every check runs, the known failures too: one that fails is listed in
    ``expected_failures``, one that passes in ``unexpected_passes`` (its declaration is stale).

    Args:
        spec: Name, ``"name[k=v]"``, config mapping, config, or the strategy class itself.
        known_failures: ``check name -> reason`` for checks expected to fail.
        raise_on_failure: Raise ``AssertionError`` listing the unexpected failures and passes
            (default).
        problem: Sizes of the problem the checks train on; by default 12 steps (see
            :class:`TinyProblem`), e.g. ``TinyProblem(epochs=10)`` for 40.

    Raises:
        ValueError: when ``known_failures`` names no check.
    """
    if isinstance(spec, type):
        spec = spec.name
    known = dict(known_failures or {})
    check_known_failures(known)
    report = CheckReport([], {})
    for name, thunk in iter_checks(spec, problem):
        try:
            thunk()
        except Exception as exc:  # noqa: BLE001 - report every failing check
            failures = report.expected_failures if name in known else report.failed
            failures[name] = f"{type(exc).__name__}: {exc}"
        else:
            if name in known:
                report.unexpected_passes[name] = known[name]
            else:
                report.passed.append(name)
    if raise_on_failure and not report.ok:
        lines = [f"  {k}: {v}" for k, v in report.failed.items()]
        lines += [f"  {k}: passed, but is declared a known failure ({v!r}); remove it from known_failures" for k, v in report.unexpected_passes.items()]
        stale = f" and passed {len(report.unexpected_passes)} declared known failure(s)" if report.unexpected_passes else ""
        raise AssertionError(
            f"Strategy {spec!r} failed {len(report.failed)} conformance check(s){stale}:\n" + "\n".join(lines)
        )
    return report
