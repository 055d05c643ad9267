"""The Dask cluster executor: same records as in-process runs, resume, failures, interruption,
and a clear error when the ``cluster`` extra is not installed.

One ``LocalCluster`` of two worker processes (one thread each) serves the whole module.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings

import pytest

distributed = pytest.importorskip("distributed")

from subsetlab import registry  # noqa: E402
from subsetlab.bench.dask_executor import DaskExecutor, DaskNotInstalledError  # noqa: E402
from subsetlab.bench.runner import Reporter, make_executor, run_suite  # noqa: E402
from subsetlab.bench.store import read_records  # noqa: E402
from subsetlab.bench.suite import Suite  # noqa: E402

PLUGIN_NAME = "sl_dask_runtime_plugin"
PLUGIN = """
from typing import Literal
from subsetlab import register
from subsetlab.config import StrategyConfig
from subsetlab.protocol import SelectionStrategy


class DaskBoomConfig(StrategyConfig):
    name: Literal["test-dask-boom"] = "test-dask-boom"


@register
class DaskBoom(SelectionStrategy):
    \"\"\"Registered at import time, like a user's own strategy module.\"\"\"

    name = "test-dask-boom"
    Config = DaskBoomConfig

    def should_select(self, state):
        return False

    def select(self, state):
        raise RuntimeError("boom on a dask worker")
"""


def tiny_suite(strategies=("random",), seeds=(0,), budgets=(0.25,), **trainer) -> Suite:
    return Suite.from_dict(
        {
            "name": "tiny",
            "datasets": [{"name": "synthetic", "options": {"n": 160, "n_test": 80, "dim": 6, "classes": 3}}],
            "model": {"name": "mlp", "options": {"hidden": [8]}},
            "trainer": {"epochs": 2, "batch_size": 32, "lr": 0.05, **trainer},
            "budgets": list(budgets),
            "seeds": list(seeds),
            "strategies": list(strategies),
        }
    )


def run(suite, path, **kw):
    """run_suite, silent and with one torch thread."""
    kw.setdefault("progress", "none")
    kw.setdefault("threads", 1)
    return run_suite(suite, path, **kw)


@pytest.fixture(autouse=True)
def _quiet_plugins():
    from subsetlab.registry import PluginLoadWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        yield


@pytest.fixture(scope="module")
def dask_ex():
    """A DaskExecutor owning a LocalCluster of 2 worker processes, 1 thread each."""
    ex = DaskExecutor(n_workers=2, threads=1)
    yield ex
    cluster = ex.cluster
    ex.close()
    assert ex.client is None and cluster.status.name == "closed"


@pytest.fixture(scope="module")
def runtime_plugin(tmp_path_factory, dask_ex):
    """A strategy registered at runtime by importing a user module, shipped to the workers
    the way a user would (the workers were started before the module was on any path)."""
    import importlib

    folder = tmp_path_factory.mktemp("plugin")
    path = folder / f"{PLUGIN_NAME}.py"
    path.write_text(PLUGIN)
    dask_ex.client.upload_file(str(path), load=False)
    sys.path.insert(0, str(folder))
    importlib.import_module(PLUGIN_NAME)
    yield path
    registry.unregister("test-dask-boom")
    sys.modules.pop(PLUGIN_NAME, None)
    sys.path.remove(str(folder))


class Spy(Reporter):
    """Records the reporter hooks; optionally raises Ctrl-C after ``stop_after`` finished runs."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.stop_after = stop_after

    def run_started(self, spec):
        self.started.append(spec.key)

    def run_finished(self, spec, record):
        self.finished.append(spec.key)
        if self.stop_after is not None and len(self.finished) >= self.stop_after:
            raise KeyboardInterrupt


# ---------------------------------------------------------------------- running
def test_dask_records_match_sequential_and_resume_skips_all(tmp_path, dask_ex):
    suite = tiny_suite(seeds=(0, 1))
    specs = suite.expand()
    seq, par = tmp_path / "seq.jsonl", tmp_path / "dask.jsonl"
    run(suite, seq)
    spy = Spy()
    out = run(suite, par, executor=dask_ex, progress=spy)
    assert out.ok and out.n_ok == len(specs) == 4 and out.skipped == []
    assert sorted(out.ran) == sorted(s.key for s in specs)
    assert sorted(spy.started) == sorted(spy.finished) == sorted(out.ran)
    a = {r["key"]: r for r in read_records(seq)}
    b = {r["key"]: r for r in read_records(par)}
    assert len(read_records(par)) == len(b) == len(specs) and set(a) == set(b)
    for key, rec in b.items():
        assert rec["status"] == "ok" and rec["error"] is None and rec["suite"] == "tiny"
        assert rec["env"]["threads"] == 1  # set on the worker before the run
        # a run is a pure function of its spec, wherever it runs
        assert rec["result"]["metrics"]["final_acc"] == pytest.approx(a[key]["result"]["metrics"]["final_acc"], abs=1e-6)
        assert rec["result"]["metrics"] == a[key]["result"]["metrics"]

    # resume: nothing left to run, nothing submitted, nothing appended
    spy = Spy()
    again = run(suite, par, executor=dask_ex, progress=spy)
    assert again.ran == [] and sorted(again.skipped) == sorted(s.key for s in specs) and again.ok
    assert spy.started == [] and len(read_records(par)) == len(specs)


def test_failed_run_is_recorded_and_the_others_finish(tmp_path, dask_ex, runtime_plugin):
    """A runtime-registered strategy that raises, and a run that fails before training."""
    suite = tiny_suite(strategies=("test-dask-boom", "random"))
    # more training examples than the data set has: found when the worker loads the data
    broken = tiny_suite(strategies=("random",)).with_overrides(data={"n_train": 100_000}, include_full=False)
    specs = suite.expand() + broken.expand()
    path = tmp_path / "results.jsonl"
    # through run_suite(cluster=<scheduler address>): a second client, closed at the end
    out = run(specs, path, cluster=dask_ex.cluster.scheduler_address)
    by_label = {(r["spec"]["label"], r["spec"]["data"]["n_train"]): r for r in read_records(path)}
    assert len(by_label) == len(specs) == 4 and out.n_ok == 2 and out.n_failed == 2
    assert by_label[("full", None)]["status"] == "ok"
    assert by_label[("random", None)]["status"] == "ok"
    boom = by_label[("test-dask-boom", None)]  # the worker imported the uploaded module
    assert boom["status"] == "failed" and boom["error"]["type"] == "StrategyFailure"
    assert "boom on a dask worker" in boom["error"]["message"]
    bad = by_label[("random", 100_000)]
    assert bad["status"] == "failed" and bad["error"]["type"] == "ConfigError"
    assert "n_train" in bad["error"]["message"]
    assert dask_ex.client.status == "running"  # the suite's own client went, the cluster stays


def _raise_on_worker() -> None:
    raise ValueError("task blew up on the worker")


class _LostFuture:
    """Stands in for a future whose worker died (KilledWorker) or whose link broke."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def result(self):
        raise self.exc


def test_task_errors_and_lost_workers_become_failed_records(dask_ex):
    from distributed.comm import CommClosedError

    spec = tiny_suite().expand()[0]
    fut = dask_ex.client.submit(_raise_on_worker, pure=False)
    distributed.wait(fut)
    rec = DaskExecutor._record(fut, spec, "t0")
    assert rec["status"] == "failed" and rec["key"] == spec.key and rec["started"] == "t0"
    assert rec["error"]["type"] == "ValueError" and rec["error"]["message"] == "task blew up on the worker"

    from types import SimpleNamespace

    killed = distributed.KilledWorker("subsetlab-run-x", SimpleNamespace(address="tcp://10.0.0.1:1234"), 3)
    rec = DaskExecutor._record(_LostFuture(killed), spec, "t0")
    assert rec["error"]["type"] == "KilledWorker" and "out of memory" in rec["error"]["message"]
    assert "--retry-failed" in rec["error"]["message"]
    rec = DaskExecutor._record(_LostFuture(CommClosedError("gone")), spec, "t0")
    assert rec["error"]["type"] == "CommClosedError" and "lost contact" in rec["error"]["message"]
    from distributed.client import FutureCancelledError

    rec = DaskExecutor._record(_LostFuture(FutureCancelledError("k", "restart")), spec, "t0")
    assert rec["status"] == "failed" and "cancelled" in rec["error"]["message"]


def _subsetlab_tasks(dask_scheduler) -> list[str]:
    return [str(k) for k in dask_scheduler.tasks if str(k).startswith("subsetlab-run-")]


def test_interruption_cancels_outstanding_runs_and_resume_finishes(tmp_path, dask_ex):
    suite = tiny_suite(seeds=(0, 1, 2))
    specs = suite.expand()
    path = tmp_path / "results.jsonl"
    assert dask_ex._capacity() == 2  # default: one run per worker thread
    spy = Spy(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        run(suite, path, executor=dask_ex, progress=spy)
    assert len(read_records(path)) == 1
    assert len(spy.started) <= 3  # never more than max_inflight (2) submitted at once
    deadline = time.monotonic() + 10
    while dask_ex.client.run_on_scheduler(_subsetlab_tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dask_ex.client.run_on_scheduler(_subsetlab_tasks) == []  # cancelled, released
    out = run(suite, path, executor=dask_ex)
    assert len(out.skipped) == 1 and len(out.ran) == len(specs) - 1 and out.ok
    keys = [r["key"] for r in read_records(path)]
    assert sorted(keys) == sorted(s.key for s in specs)


def test_max_inflight_limits_submissions(tmp_path, dask_ex):
    class Count(Reporter):
        def __init__(self):
            self.running = self.peak = 0

        def run_started(self, spec):
            self.running += 1
            self.peak = max(self.peak, self.running)

        def run_finished(self, spec, record):
            self.running -= 1

    ex = DaskExecutor(client=dask_ex.client, threads=1, max_inflight=1)
    count = Count()
    with ex:
        out = run(tiny_suite(seeds=(0, 1)), tmp_path / "r.jsonl", executor=ex, progress=count)
    assert out.ok and len(out.ran) == 4
    # a record is yielded after the next run is submitted, so at most max_inflight + 1 overlap
    assert count.peak <= 2
    assert dask_ex.client.status == "running"  # a given client is left to its owner


# ---------------------------------------------------------------------- set-up
def test_invalid_arguments_are_rejected_before_connecting():
    with pytest.raises(ValueError, match="not both"):
        DaskExecutor("tcp://127.0.0.1:1", client=object())
    with pytest.raises(ValueError, match="LocalCluster"):
        DaskExecutor("tcp://127.0.0.1:1", n_workers=2)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        DaskExecutor(threads=0)
    with pytest.raises(ValueError, match="max_inflight must be >= 1"):
        DaskExecutor(client=object(), max_inflight=0)


def test_missing_dask_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    with pytest.raises(DaskNotInstalledError, match=r'pip install "subsetlab\[cluster\]"') as info:
        DaskExecutor()
    assert isinstance(info.value, ImportError)
    with pytest.raises(ImportError, match=r"subsetlab\[cluster\]"):
        make_executor(2, cluster="local")
    with pytest.raises(ImportError, match=r"subsetlab\[cluster\]"):
        run(tiny_suite(), tmp_path / "r.jsonl", cluster="tcp://127.0.0.1:8786")
    assert not (tmp_path / "r.jsonl").exists()


def test_importing_subsetlab_does_not_import_dask():
    code = (
        "import sys, subsetlab, subsetlab.bench, subsetlab.bench.runner, subsetlab.bench.dask_executor\n"
        "from subsetlab.bench import DaskExecutor\n"
        "bad = sorted(m for m in ('dask', 'distributed') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cli_cluster_local_runs_and_resumes(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(
        'name = "tiny"\nstrategies = ["random"]\nseeds = [0, 1]\nbudgets = [0.25]\ninclude_full = false\n'
        '[[datasets]]\nname = "synthetic"\noptions = { n = 160, n_test = 80, dim = 6, classes = 3 }\n'
        '[model]\nname = "mlp"\noptions = { hidden = [8] }\n[trainer]\nepochs = 2\nbatch_size = 32\n'
    )
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "subsetlab", "run", str(suite), "--cluster", "local", "--workers", "2",
           "--threads", "1", "--results", str(results), "--progress", "lines", "--no-plots"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = read_records(results)
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0 and "2 already recorded" in again.stdout, again.stdout + again.stderr
    assert len(read_records(results)) == 2

    refused = subprocess.run([*cmd, "--nproc", "2"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert refused.returncode == 2 and "--nproc cannot be combined with --workers or --cluster" in refused.stderr
