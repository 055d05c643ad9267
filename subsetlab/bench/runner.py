"""Run a suite: every run once, in sequence or over worker processes, appended to a results file.

:func:`run_suite` skips runs whose key already has a record (resume), hands the rest to an
:class:`Executor`, and appends one record per finished run to the
:class:`~subsetlab.bench.store.ResultsStore`. Only the calling (parent) process writes.

A run is executed by :func:`execute_run`, a pure function of the spec that never raises for a
failing run: an exception anywhere (data loading, model building, a strategy bug) and a failed
:class:`~subsetlab.trainer.RunResult` (divergence, invalid selection, timeout) both come back as
a record with ``status="failed"`` and the error, and the suite goes on.

With the suite option ``time_matched``, a suite also has time-matched Random runs
(:class:`~subsetlab.bench.matching.TimeMatch`), whose fraction comes from the records of two
other runs; :func:`run_suite` runs them in a second round on the same executor (see there).

Executors are small and pluggable: :class:`SequentialExecutor` runs in this process (with a
per-run progress bar), :class:`LocalProcessExecutor` fans out over ``spawn`` worker processes,
and :class:`~subsetlab.bench.dask_executor.DaskExecutor` (optional extra
``subsetlab[cluster]``, imported only when used) runs on a Dask cluster or a local Dask
cluster. Each implements :meth:`Executor.run` the same way: submit :func:`execute_run` with
:func:`task_payload` for each spec, yield ``(spec, record)`` as each completes.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from subsetlab.bench.store import ResultsStore
from subsetlab.bench.matching import TimeMatch
from subsetlab.config import RunSpec
from subsetlab.errors import ConfigError

from subsetlab.bench.execute import (  # noqa: F401 - _warmed, available_cores: re-exported
    _RECORD_ORDER,
    _failure_type,
    _now,
    _warmed,
    available_cores,
    environment,
    execute_run,
    failure_record,
    task_payload,
    warm_up,
)
from subsetlab.bench.executors import Executor, LocalProcessExecutor, SequentialExecutor
from subsetlab.bench.progress import LineReporter, Reporter, TqdmReporter, _summary, make_reporter, run_title  # noqa: F401

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
        subsetlab.errors.DaskNotInstalledError: ``cluster`` given but Dask
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


@dataclass
class _Plan:
    """What a suite call runs: its runs and time-matched runs, and those still to make."""

    name: str
    specs: list[RunSpec]
    matches: list[TimeMatch]
    todo: list[RunSpec]
    pending: list[TimeMatch]
    latest: dict[str, Any]

    @property
    def by_key(self) -> dict[str, RunSpec]:
        return {s.key: s for s in self.specs}

    @property
    def by_match(self) -> dict[str, TimeMatch]:
        return {m.key: m for m in self.matches}

    @classmethod
    def make(cls, suite: Any, store: ResultsStore, retry_failed: bool, dist: Any, main: bool) -> _Plan:
        """The runs without a record (or failed ones, with ``retry_failed``); rank 0's file decides."""
        if hasattr(suite, "expand"):
            name, specs = suite.name, suite.expand()
            matches: list[TimeMatch] = suite.time_matches() if hasattr(suite, "time_matches") else []
        else:
            name, specs, matches = "runs", list(suite), []
        latest = store.latest() if main else {}
        skip_status = {"ok"} if retry_failed else {"ok", "failed"}
        todo = [s for s in specs if (latest.get(s.key) or {}).get("status") not in skip_status]
        pending = [m for m in matches if (latest.get(m.key) or {}).get("status") not in skip_status]
        plan = cls(name, specs, matches, todo, pending, latest)
        if getattr(dist, "world_size", 1) > 1:  # every rank runs the same runs in the same order
            from subsetlab.distributed import broadcast_object, open_side_channel

            open_side_channel()

            keys, match_keys = broadcast_object(dist, [[s.key for s in todo], [m.key for m in pending]])
            by_key, by_match = plan.by_key, plan.by_match
            missing = [k for k in keys if k not in by_key] + [k for k in match_keys if k not in by_match]
            if missing:
                raise ConfigError(f"Rank {dist.rank} expanded a different suite than rank 0 (no run {missing[0]}).")
            plan.todo = [by_key[k] for k in keys]
            plan.pending = [by_match[k] for k in match_keys]
        return plan

    def round_tasks(
        self, first: bool, store: ResultsStore, main: bool
    ) -> tuple[list[_Task], list[tuple[TimeMatch, dict[str, Any]]]]:
        """Round one: the runs to make, and the matched runs whose two runs have records.
        Round two: the other matched runs (their records written by round one). Matched runs
        that cannot be made come back in the second list with the reason."""
        tasks: list[_Task] = [(s, None, None) for s in self.todo] if first else []
        unavailable: list[tuple[TimeMatch, dict[str, Any]]] = []
        if main and self.pending:
            latest = self.latest if first else store.latest()
            busy = {s.key for s in self.todo} if first else set()
            for m in list(self.pending):
                if m.strategy.key in busy or m.baseline.key in busy:
                    continue
                self.pending.remove(m)
                spec, info = m.resolve(latest.get(m.strategy.key), latest.get(m.baseline.key))
                if spec is None:
                    unavailable.append((m, info))
                else:
                    tasks.append((spec, m, info))
        return tasks, unavailable


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
    fractions computed (:meth:`~subsetlab.bench.matching.TimeMatch.resolve`, on rank 0 in a
    distributed suite) from the records round one wrote. A matched run whose strategy or
    baseline run failed is not run: it gets a ``failed`` record (error type
    ``MatchUnavailable``) giving the reason, and is made again with ``retry_failed`` once
    the run it depends on succeeds. Matched runs are keyed by
    :attr:`~subsetlab.bench.matching.TimeMatch.key` (what they are matched to), so a resumed
    suite neither redoes nor loses them.

    Before any run starts, the data set of every run to make is checked
    (:func:`check_data`): a data set whose files are missing raises
    :class:`~subsetlab.errors.MissingDataError` and nothing is run or recorded.

    A ``KeyboardInterrupt`` stops the suite; finished runs stay recorded (the next call resumes).
    """
    t0 = time.perf_counter()
    world = getattr(dist, "world_size", 1)
    main = world == 1 or dist.is_main
    if world > 1 and (workers > 1 or cluster or executor is not None):
        raise ConfigError(
            "A distributed suite trains each run on all ranks in turn: it takes no workers, cluster or executor."
        )
    store = ResultsStore(results_path)
    plan = _Plan.make(suite, store, retry_failed, dist, main)
    name = plan.name
    check_data([*plan.todo, *(m.baseline for m in plan.pending)], name)
    outcome = SuiteOutcome(name, store.path, [s.key for s in plan.specs] + [m.key for m in plan.matches])
    todo_keys = {s.key for s in plan.todo} | {m.key for m in plan.pending}
    outcome.skipped = [k for k in outcome.keys if k not in todo_keys]
    failed_skipped = [k for k in outcome.skipped if (plan.latest.get(k) or {}).get("status") == "failed"]
    reporter = make_reporter(progress if main else "none")
    if threads is None:
        threads = getattr(suite, "threads", None)
    own_executor = executor is None
    n_todo = len(plan.todo) + len(plan.pending)
    executor = executor or make_executor(workers, threads, cluster)
    try:
        reporter.suite_started(name, len(outcome.keys), len(outcome.keys) - n_todo, n_todo, store.path)
        if failed_skipped:
            reporter.suite_notice(failed_notice(len(failed_skipped)))
        for first in (True, False):  # matched runs depend only on expanded runs: two rounds suffice
            tasks, unavailable = plan.round_tasks(first, store, main)
            if world > 1:
                tasks = _broadcast_tasks(dist, tasks, plan.by_key, plan.by_match)
            for m, info in unavailable:  # rank 0 only: nothing is run, so no rank waits for it
                record = _unavailable_record(m, info, name)
                store.append(record)
                outcome.ran.append(m.key)
                reporter.run_finished(m.placeholder(), record)
            if tasks:
                _run_round(tasks, executor, reporter, store, outcome, name, dist, main, world)
        outcome.statuses = _final_statuses(store, outcome.keys, dist, main)
        outcome.seconds = time.perf_counter() - t0
        reporter.suite_finished(outcome)
    finally:
        reporter.close()
        if own_executor:
            executor.close()
    return outcome


def _final_statuses(store: ResultsStore, keys: list[str], dist: Any, main: bool) -> dict[str, str]:
    """The latest status of every key (rank 0's file; every rank returns rank 0's answer)."""
    latest = store.latest() if main else {}
    statuses = {k: latest[k]["status"] for k in keys if k in latest}
    if getattr(dist, "world_size", 1) > 1:
        from subsetlab.distributed import broadcast_object

        statuses = broadcast_object(dist, statuses)
    return statuses


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
