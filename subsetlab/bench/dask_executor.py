"""Run a suite on a Dask cluster: :class:`DaskExecutor` (optional extra ``subsetlab[cluster]``).

Why Dask (``dask.distributed``) and not Ray:

* it is pure Python and pip-installable as a small optional extra
  (``pip install "subsetlab[cluster]"``); nothing is imported until a :class:`DaskExecutor` is
  made, so ``import subsetlab`` stays light;
* a ``LocalCluster`` gives real worker processes on one machine (tests, a workstation), and a
  cluster is two commands: ``dask scheduler`` on one host and ``dask worker tcp://host:8786``
  on each of the others (or any deployment: dask-jobqueue, Kubernetes, ...);
* its futures API maps one to one onto :meth:`~subsetlab.bench.executors.Executor.run`: submit
  :func:`~subsetlab.bench.execute.execute_run` with
  :func:`~subsetlab.bench.execute.task_payload` per spec, then ``as_completed``;
* resumption is unchanged: workers only compute and return records, the parent alone appends
  them to the results file, so an interrupted suite resumes exactly like a local one.

Ray would do the job too, but it is a much heavier install with its own runtime and object
store, none of which coarse, independent runs (seconds to hours each, a small dict as result)
need.

Requirements on the workers: every worker needs ``subsetlab`` (and the strategies' and
datasets' dependencies) installed, in a version compatible with the parent's. A strategy
registered at runtime (not through an entry point) is found by importing the module that
defines its class (:func:`~subsetlab.bench.execute.task_payload` sends its name), so that
module must be importable on every worker: install it there, put it on the workers'
``PYTHONPATH``, or send it with ``executor.client.upload_file("my_strategy.py", load=False)``.

Usage::

    from subsetlab.bench import run_suite
    from subsetlab.bench.dask_executor import DaskExecutor

    with DaskExecutor("tcp://scheduler-host:8786", threads=4) as ex:  # or DaskExecutor(n_workers=4)
        run_suite(suite, "runs/quick/results.jsonl", executor=ex)

    run_suite(suite, "runs/quick/results.jsonl", cluster="local", workers=4)  # the same, shorter
"""

from __future__ import annotations

import uuid
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from subsetlab.bench.execute import _now, available_cores, execute_run, failure_record, task_payload
from subsetlab.bench.executors import Executor
from subsetlab.bench.progress import Reporter
from subsetlab.config import RunSpec
from subsetlab.errors import ClusterConnectionError, ConfigError, DaskNotInstalledError

__all__ = ["ClusterConnectionError", "DaskExecutor", "DaskNotInstalledError"]

INSTALL_HINT = 'pip install "subsetlab[cluster]"'


def _import_distributed() -> Any:
    """Import ``distributed`` or raise :class:`DaskNotInstalledError` saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise DaskNotInstalledError(
            "Running a suite on a Dask cluster needs Dask distributed, which is not installed "
            f"({exc}). Install the cluster extra: {INSTALL_HINT} "
            '(or: pip install "dask[distributed]>=2023.1").'
        ) from exc
    return distributed


def _run_on_worker(payload: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """The task a Dask worker runs: set torch threads, then :func:`execute_run` the payload."""
    import torch

    from subsetlab.registry import PluginLoadWarning

    if threads:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)  # the parent already reported them
        return execute_run(**payload)


def _lost_message(exc: BaseException) -> str | None:
    """A failure message for a run lost with its worker or the cluster (None: keep the error's)."""
    name = type(exc).__name__
    if name == "KilledWorker":
        return (
            "the Dask workers running this run died (killed by the OS, e.g. out of memory, or "
            f"crashed in native code) too often, so the scheduler gave up: {exc}; rerun with "
            "--retry-failed"
        )
    if name in ("CancelledError", "FutureCancelledError"):
        return (
            "the run was cancelled by the Dask cluster (a scheduler restart, or another client "
            f"cancelled it): {exc}; rerun with --retry-failed"
        )
    if name == "CommClosedError" or isinstance(exc, OSError):
        return f"lost contact with the Dask cluster while this run was in flight: {exc}; rerun with --retry-failed"
    return None


class DaskExecutor(Executor):
    """Runs a suite's runs as tasks on a Dask cluster (``pip install "subsetlab[cluster]"``).

    Connects to a running scheduler (``address``), uses a given ``distributed.Client``, or
    (neither given) starts a ``LocalCluster`` of worker processes that it owns and closes.
    Records come back to the calling process, which alone writes the results file, so
    resuming an interrupted suite works as with the local executors.

    At most ``max_inflight`` runs are submitted at a time: an interrupted suite (or a lost
    cluster) loses little work, and the suite's order is kept. A run whose task raised, or
    whose worker died or could not be reached, is recorded as failed and the suite goes on.
    Closing the :meth:`run` generator early (the suite interrupted) cancels the outstanding
    runs; a run already executing on a remote worker finishes there and is discarded.

    A worker process that dies is restarted by its nanny and Dask retries its run elsewhere;
    after ``distributed.scheduler.allowed-failures`` deaths (default 3) the run is recorded
    as failed (``KilledWorker``). As with :class:`~subsetlab.bench.executors.LocalProcessExecutor`,
    a script that starts a ``LocalCluster`` needs the ``if __name__ == "__main__":`` guard
    (workers are started with ``spawn``).

    Args:
        address: Scheduler address, e.g. ``"tcp://host:8786"``.
        client: An existing ``distributed.Client`` to use; it is left open by :meth:`close`
            (its owner closes it).
        threads: Torch threads per run, set on the worker before each run. Default: for a
            ``LocalCluster`` started here ``max(1, cores // n_workers)``; otherwise the
            worker's setting (Dask workers start with ``OMP_NUM_THREADS=1``, so one thread).
        n_workers: Worker processes of the ``LocalCluster`` started when neither ``address``
            nor ``client`` is given (default: one per available core).
        max_inflight: Most runs submitted at once (default: the cluster's worker threads,
            counted again whenever a run finishes, at least 1).
        threads_per_worker: Dask task threads per worker process of that ``LocalCluster``
            (runs executed side by side in one worker); default 1.
        cluster_options: Extra keyword arguments for ``distributed.LocalCluster``. Its HTTP
            server (and dashboard, when ``bokeh`` is installed) listens on a free port, see
            ``executor.cluster.dashboard_link``; ``{"dashboard_address": ":8787"}`` fixes it.

    Raises:
        DaskNotInstalledError: Dask distributed is not installed.
        ValueError: Invalid or conflicting arguments.
        ClusterConnectionError: The scheduler at ``address`` could not be reached (an
            ``OSError``).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        client: Any = None,
        threads: int | None = None,
        n_workers: int | None = None,
        max_inflight: int | None = None,
        threads_per_worker: int = 1,
        cluster_options: Mapping[str, Any] | None = None,
    ) -> None:
        if address is not None and client is not None:
            raise ConfigError("Give DaskExecutor a scheduler address or a client, not both.")
        local = address is None and client is None
        if not local and (n_workers is not None or cluster_options):
            raise ConfigError(
                "n_workers and cluster_options only apply to the LocalCluster DaskExecutor starts "
                "when neither address nor client is given; size a remote cluster with its workers."
            )
        for name, value in (("threads", threads), ("n_workers", n_workers), ("max_inflight", max_inflight)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1. Got {value}.")
        if threads_per_worker < 1:
            raise ConfigError(f"threads_per_worker must be >= 1. Got {threads_per_worker}.")
        distributed = _import_distributed()
        self.max_inflight = max_inflight
        self.cluster: Any = None
        self._own_client = client is None
        if local:
            n_workers = n_workers or available_cores()
            if threads is None:
                threads = max(1, available_cores() // (n_workers * threads_per_worker))
            options = {"dashboard_address": ":0", **(cluster_options or {})}
            self.cluster = distributed.LocalCluster(
                n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, **options
            )
            try:
                client = distributed.Client(self.cluster)
            except BaseException:
                self.cluster.close()
                raise
        elif address is not None:
            try:
                client = distributed.Client(address)
            except OSError as exc:
                raise ClusterConnectionError(
                    f"Could not connect to the Dask scheduler at {address!r}: {exc}. Start one with "
                    f"`dask scheduler` and workers with `dask worker {address}` (each with subsetlab "
                    "installed), or pass cluster='local' for a cluster on this machine."
                ) from exc
        self.threads = threads
        self.client: Any = client

    def _capacity(self) -> int:
        """Runs to keep submitted: ``max_inflight``, else the cluster's worker threads (>= 1)."""
        if self.max_inflight is not None:
            return self.max_inflight
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - a cluster that cannot answer gets one run at a time
            return 1

    def run(self, specs: Sequence[RunSpec], reporter: Reporter) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
        """Submit ``specs`` to the cluster; yield ``(spec, record)`` as runs complete."""
        if self.client is None:
            raise RuntimeError("This DaskExecutor is closed; make a new one.")
        distributed = _import_distributed()
        pending = deque(specs)
        inflight: dict[Any, tuple[RunSpec, str]] = {}
        done_iter = distributed.as_completed()

        def fill() -> None:
            capacity = self._capacity()
            while pending and len(inflight) < capacity:
                spec = pending.popleft()
                fut = self.client.submit(
                    _run_on_worker,
                    task_payload(spec),
                    self.threads,
                    key=f"subsetlab-run-{spec.key}-{uuid.uuid4().hex}",
                    pure=False,
                )
                inflight[fut] = (spec, _now())
                done_iter.add(fut)
                reporter.run_started(spec)

        try:
            fill()
            for fut in done_iter:
                spec, started = inflight.pop(fut)
                record = self._record(fut, spec, started)
                fut.release()
                fill()  # keep the workers busy while the caller writes this record
                yield spec, record
        finally:
            if inflight:  # interrupted: drop what has not finished
                try:
                    self.client.cancel(list(inflight), reason="subsetlab suite interrupted")
                except Exception:  # noqa: BLE001 - a lost cluster has nothing left to cancel
                    pass
                inflight.clear()

    @staticmethod
    def _record(fut: Any, spec: RunSpec, started: str) -> dict[str, Any]:
        """The record of a finished future; a failed record when its task or worker failed."""
        import asyncio
        import concurrent.futures

        try:
            record = fut.result()
        except (Exception, asyncio.CancelledError, concurrent.futures.CancelledError) as exc:  # noqa: BLE001
            return failure_record(spec, exc, started=started, message=_lost_message(exc))
        if not isinstance(record, dict):
            exc = TypeError(f"the worker returned a {type(record).__name__}, not a results record")
            return failure_record(spec, exc, started=started)
        return record

    def close(self) -> None:
        """Close the client (unless it was given) and the ``LocalCluster`` started here."""
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        try:
            if client is not None and self._own_client:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()
