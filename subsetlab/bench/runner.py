"""Run a suite: every run once, in sequence or over worker processes, appended to a results file.

:func:`run_suite` skips runs whose key already has a record (resume), hands the rest to an
:class:`Executor`, and appends one record per finished run to the
:class:`~subsetlab.bench.store.ResultsStore`. Only the calling (parent) process writes.

A run is executed by :func:`execute_run`, a pure function of the spec that never raises for a
failing run: an exception anywhere (data loading, model building, a strategy bug) and a failed
:class:`~subsetlab.trainer.RunResult` (divergence, invalid selection, timeout) both come back as
a record with ``status="failed"`` and the error, and the suite goes on.

With the suite option ``time_matched``, a suite also has time-matched Random runs
(:class:`~subsetlab.bench.suite.TimeMatch`), whose fraction comes from the records of two
other runs; :func:`run_suite` runs them in a second round on the same executor (see there).

Executors are small and pluggable: :class:`SequentialExecutor` runs in this process (with a
per-run progress bar), :class:`LocalProcessExecutor` fans out over ``spawn`` worker processes,
and :class:`~subsetlab.bench.dask_executor.DaskExecutor` (optional extra
``subsetlab[cluster]``, imported only when used) runs on a Dask cluster or a local Dask
cluster. Each implements :meth:`Executor.run` the same way: submit :func:`execute_run` with
:func:`task_payload` for each spec, yield ``(spec, record)`` as each completes.
"""

from __future__ import annotations

import abc
import datetime as _dt
import json
import math
import os
import platform
import re
import socket
import sys
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from subsetlab.bench.store import ResultsStore
from subsetlab.bench.suite import TimeMatch
from subsetlab.config import RunSpec
from subsetlab.errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "Executor",
    "LineReporter",
    "LocalProcessExecutor",
    "Reporter",
    "SequentialExecutor",
    "SuiteOutcome",
    "TqdmReporter",
    "check_data",
    "environment",
    "execute_run",
    "failed_notice",
    "failure_record",
    "make_executor",
    "make_reporter",
    "match_title",
    "run_suite",
    "run_title",
    "task_payload",
    "warm_up",
]

_RECORD_ORDER = ("key", "suite", "spec", "match", "status", "error", "result", "env", "started", "finished")

StepCallback = Callable[[int, int, dict[str, Any]], None]


# ---------------------------------------------------------------------- one run
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def environment(device: str = "cpu") -> dict[str, Any]:
    """Where a run executed: versions, platform, device, threads, host (not part of the key)."""
    import numpy
    import torch

    import subsetlab

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "subsetlab": subsetlab.__version__,
        "platform": platform.platform(),
        "device": device,
        "threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
    }
    from subsetlab.distributed import view

    world = view().world_size
    if world > 1:
        env["world_size"] = world
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _failure_type(message: str) -> str:
    if message.startswith("diverged:"):
        return "TrainingDiverged"
    if message.startswith("timeout:"):
        return "RunTimeout"
    head = message.split(":", 1)[0].strip()
    return head if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", head) else "RunFailed"


def _spec_dump(spec: RunSpec | dict[str, Any]) -> dict[str, Any]:
    return spec.model_dump(mode="json") if isinstance(spec, RunSpec) else dict(spec)


def failure_record(
    spec: RunSpec | dict[str, Any],
    exc: BaseException,
    *,
    started: str | None = None,
    message: str | None = None,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``failed`` record for a run that raised ``exc`` (type, message and traceback kept)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "key": spec.key if isinstance(spec, RunSpec) else spec.get("key"),
        "spec": _spec_dump(spec),
        "status": "failed",
        "error": {"type": type(exc).__name__, "message": message or str(exc), "traceback": tb, "step": None},
        "result": None,
        "env": env or {},
        "started": started or _now(),
        "finished": _now(),
    }


_warmed: set[str] = set()


def warm_up(device: str = "cpu") -> None:
    """Pay torch's one-time costs (lazy imports, kernel and allocator set-up) once per process.

    The first optimiser step of a process costs about a second on a CPU; without this the
    first run of a suite (the full-data reference) would carry it and every speed-up would be
    inflated. Uses a forked RNG, so the global torch RNG is left as it was.
    """
    if device in _warmed:
        return
    import torch
    from torch.nn import functional as F

    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(0)
        layer = torch.nn.Linear(8, 4).to(dev)
        opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        x, y = torch.randn(16, 8, device=dev), torch.randint(0, 4, (16,), device=dev)
        for _ in range(2):
            loss = F.cross_entropy(layer(x), y, reduction="none").mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            layer(x).argmax(1)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    _warmed.add(device)


def execute_run(
    spec: RunSpec | dict[str, Any],
    progress: StepCallback | None = None,
    strategy_module: str | None = None,
) -> dict[str, Any]:
    """Run one spec and return its results record; never raises for a failing run.

    Args:
        spec: The run (a :class:`~subsetlab.config.RunSpec` or its JSON dump).
        progress: Optional per-step callback ``(step_done, total_steps, info)``.
        strategy_module: Module to import first if the strategy is not registered in this
            process (a strategy of user code registered with ``@register``, run in a fresh
            worker process; see :func:`subsetlab.registry.defining_module`).

    Returns:
        A record: ``key``, ``spec``, ``status``, ``error``, ``result``, ``env``, ``started``,
        ``finished`` (see :mod:`subsetlab.bench.store`).
    """
    started = _now()
    env: dict[str, Any] = {}
    raw = spec
    try:
        from subsetlab.config import validate

        if not isinstance(spec, RunSpec):
            name = spec.get("strategy", {}).get("name") if isinstance(spec.get("strategy"), dict) else None
            from subsetlab import registry

            registry.ensure_registered(str(name), strategy_module)
        spec = validate(RunSpec, spec, "RunSpec")
        device = spec.trainer.device
        try:
            from subsetlab.trainer import resolve_device

            device = str(resolve_device(spec.trainer.device))
        finally:
            env = environment(device)
        from subsetlab.api import run_spec

        warm_up(device)
        result = run_spec(spec, progress=progress, resume=False)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of one run (a plugin's
        # sys.exit() included) is recorded, the suite goes on; Ctrl-C still stops the suite
        return failure_record(raw, exc, started=started, env=env)
    record: dict[str, Any] = {
        "key": spec.key,
        "spec": spec.model_dump(mode="json"),
        "status": "ok" if result.ok else "failed",
        "error": None,
        "result": result.to_dict(),
        "env": env,
        "started": started,
        "finished": _now(),
    }
    if not result.ok:
        msg = result.error or "failed"
        record["error"] = {"type": _failure_type(msg), "message": msg, "traceback": None, "step": result.failed_step}
    return record


def task_payload(spec: RunSpec) -> dict[str, Any]:
    """Keyword arguments of :func:`execute_run` for running ``spec`` in another process.

    The spec travels as JSON (re-validated there); a strategy of user code (registered with
    ``@register``, not through an entry point) is found by importing the module that defines
    its class.
    """
    from subsetlab import registry

    module = registry.defining_module(spec.strategy.name)
    return {"spec": spec.model_dump(mode="json"), "strategy_module": module}


# ---------------------------------------------------------------------- reporters
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
    raise ValueError(f"progress must be 'auto', 'bar', 'lines', 'none', a bool or a Reporter. Got {progress!r}.")


# ---------------------------------------------------------------------- executors
class Executor(abc.ABC):
    """Runs specs and yields ``(spec, record)`` as each run finishes, in any order.

    Implementations call :func:`execute_run` (locally or remotely), call
    ``reporter.run_started`` when a run starts and may forward per-step progress with
    ``reporter.run_progress``. They never write results: the caller does. Use as a context
    manager; :meth:`close` releases workers.
    """

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def run(self, specs: Sequence[RunSpec], reporter: Reporter) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
        """Execute ``specs``; yield ``(spec, record)`` per finished run."""

    def close(self) -> None:
        """Release resources (no-op by default)."""


class SequentialExecutor(Executor):
    """Runs every spec in this process, one after the other, with per-step progress.

    Args:
        threads: Torch threads to use while running (restored afterwards); default: leave
            torch's setting as it is.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def run(self, specs: Sequence[RunSpec], reporter: Reporter) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
        """Execute ``specs`` in order."""
        import torch

        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            yield from self._run(specs, reporter)
        finally:
            torch.set_num_threads(before)

    def _run(self, specs: Sequence[RunSpec], reporter: Reporter) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
        for spec in specs:
            reporter.run_started(spec)

            def step(done: int, total: int, info: dict[str, Any], _spec: RunSpec = spec) -> None:
                reporter.run_progress(_spec, done, total, info)

            yield spec, execute_run(spec, progress=step)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from subsetlab.registry import PluginLoadWarning

    warnings.simplefilter("ignore", PluginLoadWarning)  # the parent already reported them


class LocalProcessExecutor(Executor):
    """Fans runs out over ``workers`` local processes (``spawn`` start method).

    Each worker uses ``max(1, cores // workers)`` torch threads. At most ``workers`` runs are
    in flight, so a worker that dies (killed for memory, a crash in native code) fails only
    the runs it held: they are recorded as failed and a fresh pool takes the rest.

    Args:
        workers: Number of worker processes (>= 1).
        threads: Torch threads per worker (default ``max(1, cores // workers)``).
    """

    def __init__(self, workers: int, threads: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1. Got {workers}.")
        self.workers = workers
        self.threads = threads or max(1, available_cores() // workers)
        self._pool: Any = None

    def _new_pool(self) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads,),
        )

    def run(self, specs: Sequence[RunSpec], reporter: Reporter) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
        """Execute ``specs`` on the pool; yield as runs complete."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        pending = deque(specs)
        inflight: dict[Any, tuple[RunSpec, str]] = {}
        if self._pool is None:
            self._pool = self._new_pool()
        while pending or inflight:
            while pending and len(inflight) < self.workers:
                spec = pending.popleft()
                fut = self._pool.submit(execute_run, **task_payload(spec))
                inflight[fut] = (spec, _now())
                reporter.run_started(spec)
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                spec, started = inflight.pop(fut)
                try:
                    record = fut.result()
                except BrokenProcessPool as exc:
                    broken = True
                    record = failure_record(
                        spec,
                        exc,
                        started=started,
                        message="the worker process running this run died (killed by the OS, "
                        "e.g. out of memory, or crashed in native code); rerun with --retry-failed",
                    )
                except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
                    record = failure_record(spec, exc, started=started)
                yield spec, record
            if broken:
                for fut in list(inflight):  # every in-flight run shares the broken pool's fate
                    spec, started = inflight.pop(fut)
                    try:
                        record = fut.result()
                    except Exception as exc:  # noqa: BLE001
                        record = failure_record(spec, exc, started=started, message=f"worker pool broke: {exc}")
                    yield spec, record
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()

    def close(self) -> None:
        """Shut the pool down, cancelling queued work."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def make_executor(workers: int = 1, threads: int | None = None, cluster: str | None = None) -> Executor:
    """The executor for ``workers`` and ``cluster``.

    Without ``cluster``: :class:`SequentialExecutor` for one worker, else
    :class:`LocalProcessExecutor`. With ``cluster``: a
    :class:`~subsetlab.bench.dask_executor.DaskExecutor` (needs ``pip install
    "subsetlab[cluster]"``).

    Args:
        workers: Number of processes running runs (with ``cluster="local"``: worker processes
            of the local Dask cluster; ignored for a remote scheduler, whose workers decide).
        threads: Torch threads per process (default: torch's setting for one worker,
            ``max(1, cores // workers)`` for several or for a local Dask cluster, the workers'
            setting for a remote one).
        cluster: ``"local"`` starts a Dask ``LocalCluster`` of ``workers`` processes; any other
            string is the address of a running Dask scheduler (``"tcp://host:8786"``).

    Raises:
        subsetlab.bench.dask_executor.DaskNotInstalledError: ``cluster`` given but Dask
            distributed is not installed.
    """
    if cluster:
        from subsetlab.bench.dask_executor import DaskExecutor

        if cluster.strip().lower() == "local":
            return DaskExecutor(n_workers=max(1, workers), threads=threads)
        return DaskExecutor(cluster.strip(), threads=threads)
    return SequentialExecutor(threads) if workers <= 1 else LocalProcessExecutor(workers, threads)


# ---------------------------------------------------------------------- the suite
@dataclass
class SuiteOutcome:
    """What :func:`run_suite` did.

    Attributes:
        suite: Suite name.
        results_path: The results file.
        keys: Keys of every run of the suite, in expansion order.
        ran: Keys run by this call.
        skipped: Keys skipped because a record already existed.
        statuses: Latest status of every key of the suite (``ok``/``failed``).
        seconds: Wall seconds of this call.
    """

    suite: str
    results_path: Path
    keys: list[str]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_ok(self) -> int:
        """Runs of the suite whose latest record is ok."""
        return sum(1 for k in self.keys if self.statuses.get(k) == "ok")

    @property
    def n_failed(self) -> int:
        """Runs of the suite whose latest record is failed."""
        return sum(1 for k in self.keys if self.statuses.get(k) == "failed")

    @property
    def ok(self) -> bool:
        """True when every run of the suite has an ok record."""
        return self.n_ok == len(self.keys)


def _merge_rank_outcomes(record: dict[str, Any], dist: Any) -> tuple[dict[str, Any], str | None]:
    """Rank 0's record of a distributed run, failed when any rank's run failed, and whether
    the process group survived it.

    The error named is the root cause: a rank's own failure before the broken-collective or
    timeout errors the other ranks saw because of it. The second value is None when every
    rank finished the run alike (all ok, or all failed the same way before breaking step,
    such as a strategy refused up front); else it says why the group cannot go on (after a
    timeout gloo closes its connections and NCCL aborts).
    """
    from subsetlab.distributed import gather_outcomes, is_peer_error

    own = (record.get("error") or {}).get("message")
    outcomes = gather_outcomes(dist, record.get("status") == "ok", own)
    failing = [r for r, (ok, _) in enumerate(outcomes) if not ok]
    if not failing:
        return record, None
    root = min(failing, key=lambda r: (is_peer_error(outcomes[r][1]), r))
    broken = None
    if len(failing) < len(outcomes) or any(is_peer_error(outcomes[r][1]) for r in failing):
        broken = (
            f"rank {root} failed run {record.get('key')} while other ranks "
            f"{'finished it' if len(failing) < len(outcomes) else 'waited for it'}; the ranks are out of "
            "step, so the suite stops here. Finished runs are recorded: run the same command again to resume"
        )
    if root == dist.rank:
        return record, broken
    message = f"rank {root} failed: {outcomes[root][1]}"
    if own:
        message += f" (rank {dist.rank}: {own})"
    error = {"type": _failure_type(outcomes[root][1] or ""), "message": message, "traceback": None,
             "step": (record.get("error") or {}).get("step")}
    return {**record, "status": "failed", "error": error}, broken


def _unavailable_record(match: TimeMatch, info: dict[str, Any], suite: str) -> dict[str, Any]:
    """The ``failed`` record of a time-matched run that cannot be made (``info["reason"]``)."""
    now = _now()
    return {
        "key": match.key,
        "suite": suite,
        "spec": match.placeholder().model_dump(mode="json"),
        "match": {k: v for k, v in info.items() if k != "reason"},
        "status": "failed",
        "error": {"type": "MatchUnavailable", "message": info["reason"], "traceback": None, "step": None},
        "result": None,
        "env": {},
        "started": now,
        "finished": now,
    }


def match_title(match: TimeMatch) -> str:
    """Short name of a time-matched run before its fraction is known:
    ``random@crest digits/mlp f=? (matched to f=0.1, wall) seed=0``."""
    spec = match.baseline
    return (
        f"{match.label} {spec.data.name}/{spec.model.name} f=? (matched to f={match.budget:g}, "
        f"{match.mode}) seed={spec.seed}"
    )


_Task = tuple[RunSpec, "TimeMatch | None", "dict[str, Any] | None"]


def _broadcast_tasks(
    dist: Any, tasks: list[_Task], by_key: dict[str, RunSpec], by_match: dict[str, TimeMatch]
) -> list[_Task]:
    """Rank 0's tasks of a round on every rank: base runs by key, time-matched runs with the
    spec and match record rank 0 computed from its results file."""
    from subsetlab.distributed import broadcast_object

    wire = [
        [spec.key, None, None] if m is None else [m.key, spec.model_dump_json(), json.dumps(info)]
        for spec, m, info in tasks
    ]
    wire = broadcast_object(dist, wire)
    out: list[_Task] = []
    for key, spec_json, info_json in wire:
        if spec_json is None:
            if key not in by_key:
                raise ConfigError(f"Rank {dist.rank} expanded a different suite than rank 0 (no run {key}).")
            out.append((by_key[key], None, None))
        else:
            if key not in by_match:
                raise ConfigError(
                    f"Rank {dist.rank} expanded a different suite than rank 0 (no time-matched run {key})."
                )
            out.append((RunSpec.model_validate_json(spec_json), by_match[key], json.loads(info_json)))
    return out


def failed_notice(n: int) -> str:
    """The line saying that ``n`` runs recorded as failed were skipped, and how to retry them."""
    runs = "run is" if n == 1 else "runs are"
    return (
        f"{n} {runs} recorded as failed and not run again; add --retry-failed "
        f"(retry_failed=True in Python) to retry {'it' if n == 1 else 'them'}."
    )


def check_data(specs: Sequence[RunSpec], suite: str = "runs") -> None:
    """Check that the data set of every spec can be loaded, before any run starts.

    Each distinct data config is checked once with
    :func:`subsetlab.data.check_available` (names registered, files present; nothing is read).

    Raises:
        ConfigError: a data set name is not registered.
        MissingDataError: a data set's files are missing: the message names the data set, the
            runs that need it, the full paths looked at, how to get the files and where to set
            the data root. Nothing has run.
    """
    from subsetlab.data import check_available
    from subsetlab.errors import MissingDataError

    by_data: dict[str, tuple[Any, int]] = {}
    for spec in specs:
        k = spec.data.model_dump_json()
        cfg, n = by_data.get(k, (spec.data, 0))
        by_data[k] = (cfg, n + 1)
    for cfg, n in by_data.values():
        runs = "1 run needs" if n == 1 else f"{n} runs need"
        where = f"Suite {suite!r} cannot start, nothing was run: {runs} data set {cfg.name!r}."
        try:
            check_available(cfg)
        except MissingDataError as exc:
            raise MissingDataError(
                f"{where}\n{exc}\nSet the data root in the suite file ([[datasets]] name = "
                f"{json.dumps(cfg.name)}, root = \"DIR\") or on the command line "
                f"(--set data.root=DIR), then run the same command again."
            ) from None
        except ConfigError as exc:
            raise ConfigError(f"{where} {exc}") from None


def run_suite(
    suite: Any,
    results_path: str | os.PathLike,
    *,
    workers: int = 1,
    progress: bool | str | Reporter | None = None,
    retry_failed: bool = False,
    executor: Executor | None = None,
    threads: int | None = None,
    cluster: str | None = None,
    dist: Any = None,
) -> SuiteOutcome:
    """Run every run of ``suite`` that has no record yet and append the records.

    Args:
        suite: A :class:`~subsetlab.bench.suite.Suite` or a sequence of
            :class:`~subsetlab.config.RunSpec` (named ``"runs"``).
        results_path: The JSON Lines results file (created if missing, appended to).
        workers: 1 runs in this process; more fan out over spawn worker processes.
        progress: See :func:`make_reporter`.
        retry_failed: Also rerun runs whose latest record is ``failed`` (the new record is
            appended; reports use the latest record of a key).
        executor: Use this executor instead of one made from ``workers``.
        threads: Torch threads per process running runs (see :func:`make_executor`);
            default: the suite's ``threads`` setting, if any.
        cluster: Run on Dask (``pip install "subsetlab[cluster]"``): ``"local"`` for a local
            cluster of ``workers`` processes, else a scheduler address such as
            ``"tcp://host:8786"`` (see :func:`make_executor`). Ignored when ``executor`` is
            given. Only this process writes ``results_path``, so resuming works the same.
        dist: The :class:`~subsetlab.protocol.DistView` of a ``torchrun`` process group
            (:func:`subsetlab.distributed.init`) to train every run on all its ranks (DDP).
            Every rank calls ``run_suite`` with the same arguments; rank 0 decides what is
            left to run (from its results file) and alone writes records and shows
            progress. Needs ``workers=1`` and no ``cluster``.

    Returns:
        A :class:`SuiteOutcome` (its ``ok`` is False when any run's latest record failed).

    A suite with ``time_matched`` set runs in two rounds on the same executor. Round one:
    every run of :meth:`~subsetlab.bench.suite.Suite.expand` without a record, plus the
    time-matched runs whose two runs (the strategy's and the plain baseline's at the same
    budget and seed) already have records. Round two: the other time-matched runs, their
    fractions computed (:meth:`~subsetlab.bench.suite.TimeMatch.resolve`, on rank 0 in a
    distributed suite) from the records round one wrote. A matched run whose strategy or
    baseline run failed is not run: it gets a ``failed`` record (error type
    ``MatchUnavailable``) giving the reason, and is made again with ``retry_failed`` once
    the run it depends on succeeds. Matched runs are keyed by
    :attr:`~subsetlab.bench.suite.TimeMatch.key` (what they are matched to), so a resumed
    suite neither redoes nor loses them.

    Before any run starts, the data set of every run to make is checked
    (:func:`check_data`): a data set whose files are missing raises
    :class:`~subsetlab.errors.MissingDataError` and nothing is run or recorded.

    A ``KeyboardInterrupt`` stops the suite; finished runs stay recorded and the next call
    resumes with the missing ones.
    """
    t0 = time.perf_counter()
    world = getattr(dist, "world_size", 1)
    main = world == 1 or dist.is_main
    if world > 1 and (workers > 1 or cluster or executor is not None):
        raise ConfigError(
            "A distributed suite trains each run on all ranks in turn: it takes no workers, cluster or executor."
        )
    if hasattr(suite, "expand"):
        name, specs = suite.name, suite.expand()
        matches: list[TimeMatch] = suite.time_matches() if hasattr(suite, "time_matches") else []
    else:
        name, specs, matches = "runs", list(suite), []
    store = ResultsStore(results_path)
    latest = store.latest() if main else {}
    skip_status = {"ok"} if retry_failed else {"ok", "failed"}
    todo = [s for s in specs if (latest.get(s.key) or {}).get("status") not in skip_status]
    pending = [m for m in matches if (latest.get(m.key) or {}).get("status") not in skip_status]
    by_key = {s.key: s for s in specs}
    by_match = {m.key: m for m in matches}
    if world > 1:  # rank 0's results file decides: every rank runs the same runs in the same order
        from subsetlab.distributed import broadcast_object, open_side_channel

        open_side_channel()

        keys, match_keys = broadcast_object(dist, [[s.key for s in todo], [m.key for m in pending]])
        missing = [k for k in keys if k not in by_key] + [k for k in match_keys if k not in by_match]
        if missing:
            raise ConfigError(f"Rank {dist.rank} expanded a different suite than rank 0 (no run {missing[0]}).")
        todo = [by_key[k] for k in keys]
        pending = [by_match[k] for k in match_keys]
    check_data([*todo, *(m.baseline for m in pending)], name)
    outcome = SuiteOutcome(name, store.path, [s.key for s in specs] + [m.key for m in matches])
    todo_keys = {s.key for s in todo} | {m.key for m in pending}
    outcome.skipped = [k for k in outcome.keys if k not in todo_keys]
    failed_skipped = [k for k in outcome.skipped if (latest.get(k) or {}).get("status") == "failed"]
    reporter = make_reporter(progress if main else "none")
    if threads is None:
        threads = getattr(suite, "threads", None)
    own_executor = executor is None
    n_todo = len(todo) + len(pending)
    executor = executor or make_executor(workers, threads, cluster)
    try:
        reporter.suite_started(name, len(outcome.keys), len(outcome.keys) - n_todo, n_todo, store.path)
        if failed_skipped:
            reporter.suite_notice(failed_notice(len(failed_skipped)))
        for first in (True, False):  # matched runs depend only on expanded runs: two rounds suffice
            tasks: list[_Task] = [(s, None, None) for s in todo] if first else []
            unavailable: list[tuple[TimeMatch, dict[str, Any]]] = []
            if main and pending:
                if not first:
                    latest = store.latest()
                busy = {s.key for s in todo} if first else set()
                for m in list(pending):
                    if m.strategy.key in busy or m.baseline.key in busy:
                        continue
                    pending.remove(m)
                    spec, info = m.resolve(latest.get(m.strategy.key), latest.get(m.baseline.key))
                    if spec is None:
                        unavailable.append((m, info))
                    else:
                        tasks.append((spec, m, info))
            if world > 1:
                tasks = _broadcast_tasks(dist, tasks, by_key, by_match)
            for m, info in unavailable:  # rank 0 only: nothing is run, so no rank waits for it
                record = _unavailable_record(m, info, name)
                store.append(record)
                outcome.ran.append(m.key)
                reporter.run_finished(m.placeholder(), record)
            if tasks:
                _run_round(tasks, executor, reporter, store, outcome, name, dist, main, world)
        latest = store.latest() if main else {}
        outcome.statuses = {k: latest[k]["status"] for k in outcome.keys if k in latest}
        if world > 1:  # every rank returns rank 0's outcome
            from subsetlab.distributed import broadcast_object

            outcome.statuses = broadcast_object(dist, outcome.statuses)
        outcome.seconds = time.perf_counter() - t0
        reporter.suite_finished(outcome)
    finally:
        reporter.close()
        if own_executor:
            executor.close()
    return outcome


def _run_round(
    tasks: list[_Task],
    executor: Executor,
    reporter: Reporter,
    store: ResultsStore,
    outcome: SuiteOutcome,
    name: str,
    dist: Any,
    main: bool,
    world: int,
) -> None:
    """Execute one round of runs and append their records (rank 0 / the parent only)."""
    waiting: dict[tuple[str, str | None], deque[tuple[TimeMatch, dict[str, Any]]]] = {}
    for spec, m, info in tasks:
        if m is not None and info is not None:
            # equal specs (two matched runs clamped to f' = 1) are interchangeable runs
            waiting.setdefault((spec.key, spec.label), deque()).append((m, info))
    runs = executor.run([spec for spec, _, _ in tasks], reporter)
    try:
        for spec, record in runs:
            queue = waiting.get((spec.key, spec.label))
            match, info = queue.popleft() if queue else (None, None)
            key = spec.key if match is None else match.key
            record = {**record, "key": key, "suite": name, "spec": spec.model_dump(mode="json")}
            if match is not None and info is not None:
                record["match"] = match.finish(info, record)
            record = {k: record[k] for k in _RECORD_ORDER if k in record} | record
            broken = None
            if world > 1:
                record, broken = _merge_rank_outcomes(record, dist)
            if main:
                store.append(record)
            outcome.ran.append(key)
            reporter.run_finished(spec, record)
            if broken:
                from subsetlab.distributed import DistributedError

                raise DistributedError(broken)
    finally:
        close = getattr(runs, "close", None)
        if close is not None:
            close()  # run the executor's clean-up now, also after an interruption
