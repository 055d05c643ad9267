"""Executors: how a suite's runs are executed (in this process or over local worker processes).

Each implements :meth:`Executor.run` the same way: submit :func:`~subsetlab.bench.execute.execute_run`
with :func:`~subsetlab.bench.execute.task_payload` for each spec, yield ``(spec, record)`` as
each completes. :class:`~subsetlab.bench.dask_executor.DaskExecutor` is the third.
"""

from __future__ import annotations

import abc
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from subsetlab.errors import ConfigError
from subsetlab.bench.execute import _now, available_cores, execute_run, failure_record, task_payload
from subsetlab.bench.progress import Reporter
from subsetlab.config import RunSpec

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Executor", "LocalProcessExecutor", "SequentialExecutor"]

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
            raise ConfigError(f"workers must be >= 1. Got {workers}.")
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


