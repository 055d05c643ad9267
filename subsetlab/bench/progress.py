"""Progress of a suite: the :class:`Reporter` hooks, a line reporter and a tqdm bar reporter."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from subsetlab.errors import ConfigError
from subsetlab.config import RunSpec

if TYPE_CHECKING:  # type-only: the runner imports this module
    from subsetlab.bench.runner import SuiteOutcome

__all__ = ["LineReporter", "Reporter", "TqdmReporter", "make_reporter", "run_title"]

def run_title(spec: RunSpec) -> str:
    """Short name of a run: ``label dataset/model f=0.1 seed=0``."""
    return (
        f"{spec.display_name} {spec.data.name}/{spec.model.name} "
        f"f={spec.trainer.fraction:g} seed={spec.seed}"
    )


def _summary(record: dict[str, Any]) -> str:
    if record["status"] == "ok":
        res = record.get("result") or {}
        acc = (res.get("metrics") or {}).get("final_acc")
        wall = (res.get("timings") or {}).get("total")
        acc_s = f"acc {100 * acc:6.2f}%" if isinstance(acc, (int, float)) and math.isfinite(acc) else "acc   n/a"
        wall_s = f"wall {wall:7.1f}s" if isinstance(wall, (int, float)) else ""
        match = record.get("match") or {}
        ratio = match.get("achieved_ratio")
        if isinstance(ratio, (int, float)):
            capped = ", capped at f=1" if match.get("clamped") else ""
            wall_s += f"  cost x{ratio:.2f} of {match.get('to')}'s ({match.get('mode')}{capped})"
        return f"{acc_s}  {wall_s}"
    err = record.get("error") or {}
    msg = str(err.get("message", "")).strip().splitlines()
    first = msg[0] if msg else ""
    if len(first) > _SUMMARY_LIMIT:  # the whole first line (paths included), unless absurdly long
        first = first[: _SUMMARY_LIMIT - 3] + "..."
    return f"{err.get('type', 'error')}: {first}"


_SUMMARY_LIMIT = 2000


class Reporter:
    """Progress hooks of a suite; the base class does nothing (every hook is optional)."""

    def suite_started(self, name: str, total: int, skipped: int, todo: int, results: Path) -> None:
        """Before the first run: ``total`` runs, ``skipped`` already recorded, ``todo`` to run."""

    def suite_notice(self, message: str) -> None:
        """A line about the suite as a whole, e.g. that failed runs were skipped and how to
        retry them (after :meth:`suite_started`)."""

    def run_started(self, spec: RunSpec) -> None:
        """A run was started (or handed to a worker)."""

    def run_progress(self, spec: RunSpec, done: int, total: int, info: dict[str, Any]) -> None:
        """A training step of ``spec`` finished (in-process executors only)."""

    def run_finished(self, spec: RunSpec, record: dict[str, Any]) -> None:
        """A run's record was written."""

    def suite_finished(self, outcome: SuiteOutcome) -> None:
        """After the last run."""

    def close(self) -> None:
        """Release terminals/bars; called once, also after an interruption."""


class LineReporter(Reporter):
    """One short line per finished run (for logs and non-terminal output).

    Args:
        stream: Where to write (default ``sys.stdout``).
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self.done = 0
        self.todo = 0

    def _print(self, text: str) -> None:
        out = self.stream or sys.stdout
        print(text, file=out, flush=True)

    def suite_started(self, name: str, total: int, skipped: int, todo: int, results: Path) -> None:
        """Print the plan of the suite."""
        self.todo = todo
        self._print(f"suite {name}: {total} runs, {skipped} already recorded, {todo} to run -> {results}")

    def suite_notice(self, message: str) -> None:
        """Print the message."""
        self._print(message)

    def run_finished(self, spec: RunSpec, record: dict[str, Any]) -> None:
        """Print ``[i/n] status title  summary``."""
        self.done += 1
        status = "ok" if record["status"] == "ok" else "FAILED"
        width = len(str(self.todo))
        self._print(f"[{self.done:>{width}}/{self.todo}] {status:<6} {run_title(spec)}  {_summary(record)}")


class TqdmReporter(Reporter):
    """tqdm bars: one for the suite (runs done / total, current run) and one per run (steps).

    Args:
        per_run: Show a bar per run (only in-process executors report steps).
    """

    def __init__(self, per_run: bool = True) -> None:
        self.per_run = per_run
        self.suite_bar: Any = None
        self.run_bar: Any = None
        self.running: dict[str, str] = {}

    def suite_started(self, name: str, total: int, skipped: int, todo: int, results: Path) -> None:
        """Open the suite bar."""
        from tqdm.auto import tqdm

        self.suite_bar = tqdm(total=todo, desc=f"suite {name}", unit="run", position=0, dynamic_ncols=True)
        if skipped:
            self.suite_bar.write(f"suite {name}: {skipped} of {total} runs already recorded in {results}; skipped")

    def suite_notice(self, message: str) -> None:
        """Write the message above the bars."""
        if self.suite_bar is not None:
            self.suite_bar.write(message)

    def _current(self) -> None:
        if self.suite_bar is not None:
            names = list(self.running.values())
            text = names[0] if len(names) == 1 else f"{len(names)} running" if names else ""
            self.suite_bar.set_postfix_str(text, refresh=True)

    def run_started(self, spec: RunSpec) -> None:
        """Show the run as current."""
        self.running[spec.key] = run_title(spec)
        self._current()

    def run_progress(self, spec: RunSpec, done: int, total: int, info: dict[str, Any]) -> None:
        """Advance the run bar; loss and test accuracy in its postfix."""
        if not self.per_run:
            return
        from tqdm.auto import tqdm

        if self.run_bar is None:
            self.run_bar = tqdm(
                total=total, desc=spec.display_name, unit="step", position=1, leave=False, dynamic_ncols=True
            )
            self._acc = None
        if "test_acc" in info:
            self._acc = info["test_acc"]
        post = {"loss": f"{info.get('loss', float('nan')):.3f}"}
        if self._acc is not None:
            post["test_acc"] = f"{100 * self._acc:.1f}%"
        self.run_bar.set_postfix(post, refresh=False)
        self.run_bar.update(done - self.run_bar.n)

    def run_finished(self, spec: RunSpec, record: dict[str, Any]) -> None:
        """Close the run bar, advance the suite bar; print failures."""
        if self.run_bar is not None:
            self.run_bar.close()
            self.run_bar = None
        self.running.pop(spec.key, None)
        if self.suite_bar is not None:
            if record["status"] != "ok":
                self.suite_bar.write(f"FAILED {run_title(spec)}  {_summary(record)}")
            self.suite_bar.update(1)
            self._current()

    def close(self) -> None:
        """Close the bars."""
        for bar in (self.run_bar, self.suite_bar):
            if bar is not None:
                bar.close()
        self.run_bar = self.suite_bar = None


def make_reporter(progress: bool | str | Reporter | None = None) -> Reporter:
    """The reporter for ``progress``.

    Args:
        progress: ``None``/``"auto"``: bars when stderr is a terminal (where tqdm draws), else
            one line per finished run; ``True``/``"bar"``: bars; ``"lines"``: lines;
            ``False``/``"none"``: nothing; or a :class:`Reporter` instance.
    """
    if isinstance(progress, Reporter):
        return progress
    if progress is None or progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "lines"
    if progress is True or progress == "bar":
        return TqdmReporter()
    if progress == "lines":
        return LineReporter()
    if progress is False or progress == "none":
        return Reporter()
    raise ConfigError(f"progress must be 'auto', 'bar', 'lines', 'none', a bool or a Reporter. Got {progress!r}.")


