"""Conformance checks for strategies, as functions and as a pytest base class.

A third-party author gets the same checks the built-ins pass in one import::

    from subsetlab.testing import StrategyConformance

    class TestMyStrategy(StrategyConformance):
        strategy = "my-strategy"
"""

from __future__ import annotations

from typing import Any, ClassVar

from subsetlab.testing.checks import (
    CHECKS,
    CheckReport,
    TinyProblem,
    check_strategy,
    iter_checks,
    make_context,
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
    "iter_checks",
    "make_context",
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
    """

    strategy: ClassVar[Any] = None
    known_failures: ClassVar[dict[str, str]] = {}

    def _run_check(self, check: str) -> None:
        import pytest

        if self.strategy is None:
            pytest.skip("set `strategy` on the StrategyConformance subclass")
        if check in self.known_failures:
            pytest.xfail(self.known_failures[check])
        CHECKS[check](self.strategy)


def _make_test(check: str):
    def test(self: StrategyConformance) -> None:
        self._run_check(check)

    test.__name__ = "test_" + check.removeprefix("check_")
    test.__doc__ = CHECKS[check].__doc__
    return test


for _check in CHECKS:
    setattr(StrategyConformance, "test_" + _check.removeprefix("check_"), _make_test(_check))
del _check
