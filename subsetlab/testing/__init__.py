"""Conformance checks for strategies, as functions and as a pytest base class.

A third-party author gets the same checks the built-ins pass in one import::

    from subsetlab.testing import StrategyConformance

    class TestMyStrategy(StrategyConformance):
        strategy = "my-strategy"

To unit-test a strategy's hooks without a training loop, :func:`make_context` builds the
context ``setup`` receives and :func:`make_state` the state ``select`` receives::

    from subsetlab import registry
    from subsetlab.protocol import Budget
    from subsetlab.testing import make_context, make_state, tiny_model, tiny_problem

    data, model = tiny_problem(0), tiny_model(0)
    ctx = make_context(data, model, Budget.make(len(data.train), 0.25, 16, 3))
    strategy = registry.create("my-strategy")
    strategy.setup(ctx)
    selection = strategy.select(make_state(ctx, step=0))
"""

from __future__ import annotations

from typing import Any, ClassVar

from subsetlab.testing.checks import (
    CHECKS,
    CheckReport,
    TinyProblem,
    check_strategy,
    describe_problem,
    iter_checks,
    make_context,
    make_state,
    tiny_model,
    tiny_problem,
    tiny_trainer_config,
)

__all__ = [
    "CHECKS",
    "CheckReport",
    "StrategyConformance",
    "TinyProblem",
    "check_strategy",
    "describe_problem",
    "iter_checks",
    "make_context",
    "make_state",
    "tiny_model",
    "tiny_problem",
    "tiny_trainer_config",
]


class StrategyConformance:
    """Pytest base class: one ``test_<check>`` per conformance check.

    Attributes:
        strategy: Name, ``"name[k=v]"`` or config mapping of the strategy under test.
        known_failures: ``check name -> reason``; those checks are reported as expected
            failures (xfail) instead of being skipped silently.
        problem: Sizes of the problem the checks train on. The default trains 4 steps per
            pseudo-epoch x 3 pseudo-epochs = 12 steps; a strategy that re-selects less often
            sets a longer one, e.g. ``problem = TinyProblem(epochs=10)`` (40 steps).
    """

    strategy: ClassVar[Any] = None
    known_failures: ClassVar[dict[str, str]] = {}
    problem: ClassVar[TinyProblem] = TinyProblem()

    def _run_check(self, check: str) -> None:
        import pytest

        if self.strategy is None:
            pytest.skip("set `strategy` on the StrategyConformance subclass")
        if check in self.known_failures:
            pytest.xfail(self.known_failures[check])
        CHECKS[check](self.strategy, problem=self.problem)


def _make_test(check: str):
    def test(self: StrategyConformance) -> None:
        self._run_check(check)

    test.__name__ = "test_" + check.removeprefix("check_")
    test.__doc__ = CHECKS[check].__doc__
    return test


for _check in CHECKS:
    setattr(StrategyConformance, "test_" + _check.removeprefix("check_"), _make_test(_check))
del _check
