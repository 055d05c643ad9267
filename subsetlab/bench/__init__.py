"""Side-by-side benchmarking: suites (TOML), the runner, the results store, reports and plots.

Typical use::

    from subsetlab.bench import load_suite, run_suite, write_report, make_plots

    suite = load_suite("benchmarks/suites/quick.toml").with_overrides(seeds=[0, 1])
    outcome = run_suite(suite, "runs/quick/results.jsonl", workers=2)
    write_report("runs/quick/results.jsonl", "runs/quick")
    make_plots("runs/quick/results.jsonl", "runs/quick")

The names below are imported on first access, so ``import subsetlab.bench`` stays cheap (and
``DaskExecutor`` needs Dask only when it is used: ``pip install "subsetlab[cluster]"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from subsetlab._lazy import lazy_exports

_EXPORTS = {
    "Suite": "subsetlab.bench.suite",
    "StrategyEntry": "subsetlab.bench.entries",
    "load_suite": "subsetlab.bench.suite",
    "load_default_suite": "subsetlab.bench.suite",
    "run_suite": "subsetlab.bench.runner",
    "execute_run": "subsetlab.bench.execute",
    "SuiteOutcome": "subsetlab.bench.runner",
    "Executor": "subsetlab.bench.executors",
    "SequentialExecutor": "subsetlab.bench.executors",
    "LocalProcessExecutor": "subsetlab.bench.executors",
    "DaskExecutor": "subsetlab.bench.dask_executor",
    "Reporter": "subsetlab.bench.progress",
    "ResultsStore": "subsetlab.bench.store",
    "ResultsWarning": "subsetlab.bench.store",
    "read_records": "subsetlab.bench.store",
    "aggregate": "subsetlab.bench.report",
    "write_report": "subsetlab.bench.report",
    "to_markdown": "subsetlab.bench.report",
    "make_plots": "subsetlab.bench.plots",
}

__all__ = [
    "DaskExecutor",
    "Executor",
    "LocalProcessExecutor",
    "Reporter",
    "ResultsStore",
    "ResultsWarning",
    "SequentialExecutor",
    "StrategyEntry",
    "Suite",
    "SuiteOutcome",
    "aggregate",
    "execute_run",
    "load_default_suite",
    "load_suite",
    "make_plots",
    "read_records",
    "run_suite",
    "to_markdown",
    "write_report",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), __all__)


if TYPE_CHECKING:  # pragma: no cover
    from subsetlab.bench.dask_executor import DaskExecutor
    from subsetlab.bench.plots import make_plots
    from subsetlab.bench.report import aggregate, to_markdown, write_report
    from subsetlab.bench.entries import StrategyEntry
    from subsetlab.bench.execute import execute_run
    from subsetlab.bench.executors import Executor, LocalProcessExecutor, SequentialExecutor
    from subsetlab.bench.progress import Reporter
    from subsetlab.bench.runner import SuiteOutcome, run_suite
    from subsetlab.bench.store import ResultsStore, ResultsWarning, read_records
    from subsetlab.bench.suite import (
        Suite,
        load_default_suite,
        load_suite,
    )
