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
    check_known_failures,
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
    "check_known_failures",
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
        known_failures: ``check name -> reason``; those checks still run and are strict
            expected failures (``pytest.mark.xfail(strict=True)``): reported as xfailed while
            they fail, and as a failure (XPASS(strict)) once they pass, so that a fixed check's
            declaration is removed. A key that names no check raises ``ValueError`` when the
            class is defined.
        problem: Sizes of the problem the checks train on. The default trains 4 steps per
            pseudo-epoch x 3 pseudo-epochs = 12 steps; a strategy that re-selects less often
            sets a longer one, e.g. ``problem = TinyProblem(epochs=10)`` (40 steps).
    """

    strategy: ClassVar[Any] = None
    known_failures: ClassVar[dict[str, str]] = {}
    problem: ClassVar[TinyProblem] = TinyProblem()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_known_failures(cls.known_failures)
        for check in CHECKS:
            attr = "test_" + check.removeprefix("check_")
            if getattr(getattr(cls, attr, None), "_conformance_check", None) != check:
                continue  # the subclass (or a base between) wrote its own test_<check>
            setattr(cls, attr, _make_test(check, cls.known_failures.get(check)))

    def _run_check(self, check: str) -> None:
        if self.strategy is None:
            import pytest

            pytest.skip("set `strategy` on the StrategyConformance subclass")
        CHECKS[check](self.strategy, problem=self.problem)


def _make_test(check: str, known_failure: str | None = None):
    """The test method of ``check``; a strict xfail when ``known_failure`` gives a reason."""

    def test(self: StrategyConformance) -> None:
        self._run_check(check)

    test.__name__ = test.__qualname__ = "test_" + check.removeprefix("check_")
    test.__doc__ = CHECKS[check].__doc__
    test._conformance_check = check  # type: ignore[attr-defined]
    if known_failure is not None:
        import pytest

        test = pytest.mark.xfail(strict=True, reason=f"known failure: {known_failure}")(test)
    return test


for _check in CHECKS:
    setattr(StrategyConformance, "test_" + _check.removeprefix("check_"), _make_test(_check))
del _check
