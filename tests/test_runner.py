"""The suite runner and the results store: records, resume, failures, partial lines, workers."""

from __future__ import annotations

import json
import warnings
from typing import Literal

import pytest
import torch

from subsetlab import registry
from subsetlab.bench.runner import (
    LocalProcessExecutor,
    Reporter,
    SequentialExecutor,
    execute_run,
    run_suite,
)
from subsetlab.bench.store import ResultsStore, ResultsWarning, read_records
from subsetlab.bench.suite import Suite
from subsetlab.config import StrategyConfig
from subsetlab.protocol import Selection, SelectionStrategy

ENV_KEYS = {"python", "torch", "numpy", "subsetlab", "platform", "device", "threads", "hostname"}
RECORD_KEYS = {"key", "suite", "spec", "status", "error", "result", "env", "started", "finished"}


class BoomConfig(StrategyConfig):
    """Config of :class:`Boom`."""

    name: Literal["test-boom"] = "test-boom"


class Boom(SelectionStrategy):
    """Test strategy whose select() raises."""

    name = "test-boom"
    Config = BoomConfig

    def should_select(self, state):
        return False

    def select(self, state) -> Selection:
        raise RuntimeError("boom in select")


class BadInitConfig(StrategyConfig):
    """Config of :class:`BadInit`."""

    name: Literal["test-badinit"] = "test-badinit"


class BadInit(SelectionStrategy):
    """Test strategy that cannot even be built (an exception outside the trainer)."""

    name = "test-badinit"
    Config = BadInitConfig

    def __init__(self, config=None, **kw):
        raise ValueError("cannot build this strategy")


@pytest.fixture(autouse=True)
def _quiet_plugins():
    from subsetlab.registry import PluginLoadWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        yield


@pytest.fixture
def test_strategies():
    registry.register(Boom)
    registry.register(BadInit)
    yield
    registry.unregister("test-boom")
    registry.unregister("test-badinit")


def tiny_suite(strategies=("random", "sgd-truncated"), seeds=(0,), budgets=(0.25,), **trainer) -> Suite:
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
    """run_suite, silent and with one torch thread (fast and steady on a shared, loaded CPU)."""
    kw.setdefault("progress", "none")
    kw.setdefault("threads", 1)
    return run_suite(suite, path, **kw)


def keys_in(path) -> list[str]:
    return [r["key"] for r in read_records(path)]


# ---------------------------------------------------------------------- running
def test_sequential_suite_writes_one_record_per_run(tmp_path):
    suite = tiny_suite(seeds=(0, 1))
    path = tmp_path / "r" / "results.jsonl"
    out = run(suite, path)
    specs = suite.expand()
    assert out.ok and out.n_ok == len(specs) == 6 and out.n_failed == 0
    assert sorted(out.ran) == sorted(s.key for s in specs) and out.skipped == []
    records = read_records(path)
    assert [r["key"] for r in records] == [s.key for s in specs]  # in expansion order
    for rec, spec in zip(records, specs):
        assert set(rec) == RECORD_KEYS
        assert rec["status"] == "ok" and rec["error"] is None and rec["suite"] == "tiny"
        assert rec["spec"] == json.loads(json.dumps(spec.model_dump(mode="json")))
        assert set(rec["env"]) >= ENV_KEYS and rec["env"]["device"] == "cpu"
        assert rec["result"]["status"] == "ok" and 0.0 <= rec["result"]["metrics"]["final_acc"] <= 1.0
        assert rec["result"]["work"]["steps"] == rec["result"]["budget"]["total_steps"]
        assert rec["started"] <= rec["finished"]
    # every line is strict JSON, written whole
    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_rerun_skips_everything(tmp_path):
    suite = tiny_suite()
    path = tmp_path / "results.jsonl"
    run(suite, path)
    again = run(suite, path)
    assert again.ran == [] and len(again.skipped) == len(suite.expand()) and again.ok
    assert len(read_records(path)) == len(suite.expand())


class StopAfter(Reporter):
    """Simulates Ctrl-C after ``n`` finished runs."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False

    def run_finished(self, spec, record):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt

    def close(self):
        self.closed = True


def test_resume_after_interruption_runs_only_the_missing(tmp_path):
    suite = tiny_suite(seeds=(0, 1))
    specs = suite.expand()
    path = tmp_path / "results.jsonl"
    stopper = StopAfter(2)
    with pytest.raises(KeyboardInterrupt):
        run(suite, path, progress=stopper)
    assert stopper.closed
    first = keys_in(path)
    assert first == [s.key for s in specs[:2]]
    out = run(suite, path)
    assert out.skipped == first
    assert out.ran == [s.key for s in specs[2:]]
    keys = keys_in(path)
    assert sorted(keys) == sorted(s.key for s in specs)
    assert len(keys) == len(set(keys))  # each key exactly once


def test_failures_are_recorded_and_the_suite_goes_on(tmp_path, test_strategies):
    suite = tiny_suite(strategies=("test-boom", "test-badinit", "random"))
    path = tmp_path / "results.jsonl"
    out = run(suite, path)
    by_label = {r["spec"]["label"]: r for r in read_records(path)}
    assert set(by_label) == {"full", "test-boom", "test-badinit", "random"}
    assert by_label["random"]["status"] == "ok" and by_label["full"]["status"] == "ok"
    boom = by_label["test-boom"]  # raised inside the trainer: a failed RunResult
    assert boom["status"] == "failed"
    assert boom["error"]["type"] == "StrategyFailure" and "boom in select" in boom["error"]["message"]
    assert boom["result"]["status"] == "failed"
    bad = by_label["test-badinit"]  # raised outside the trainer: the exception is recorded
    assert bad["status"] == "failed" and bad["result"] is None
    assert bad["error"]["type"] == "ValueError" and bad["error"]["message"] == "cannot build this strategy"
    assert "Traceback" in bad["error"]["traceback"] and "in __init__" in bad["error"]["traceback"]
    assert out.n_failed == 2 and out.n_ok == 2 and not out.ok

    # failed runs are skipped on a rerun, retried with retry_failed (appended; latest wins)
    assert run(suite, path).ran == []
    again = run(suite, path, retry_failed=True)
    assert sorted(again.ran) == sorted([boom["key"], bad["key"]])
    assert len(read_records(path)) == 6 and again.n_failed == 2


def test_diverging_run_is_recorded_as_failed(tmp_path):
    suite = Suite.from_dict(
        {
            "name": "diverge",
            "datasets": [
                {
                    "name": "synthetic",
                    "normalize": False,
                    "options": {"n": 200, "n_test": 100, "dim": 8, "separation": 1e6},
                }
            ],
            "model": {"name": "mlp", "options": {"hidden": [16]}},
            "trainer": {"epochs": 3, "batch_size": 32, "lr": 100.0, "weight_decay": 0.0},
            "budgets": [0.5],
            "strategies": ["random"],
            "include_full": False,
        }
    )
    path = tmp_path / "results.jsonl"
    out = run(suite, path)
    (rec,) = read_records(path)
    assert rec["status"] == "failed" and out.n_failed == 1
    assert rec["error"]["type"] == "TrainingDiverged"
    assert "lower the learning rate" in rec["error"]["message"]
    assert isinstance(rec["error"]["step"], int)


def test_data_error_is_recorded(tmp_path):
    suite = tiny_suite().with_overrides(data={"n_train": 100_000})  # found only when loading
    path = tmp_path / "results.jsonl"
    out = run(suite, path)
    recs = read_records(path)
    assert out.n_failed == len(recs) == 3
    assert all(r["error"]["type"] == "ConfigError" and "n_train" in r["error"]["message"] for r in recs)


def test_unknown_dataset_is_refused_before_any_run(tmp_path):
    from subsetlab.errors import ConfigError

    suite = tiny_suite().with_overrides(data={"name": "no-such-dataset"})
    path = tmp_path / "results.jsonl"
    with pytest.raises(ConfigError, match="no-such-dataset.*cannot start|cannot start.*no-such-dataset"):
        run(suite, path)
    assert not path.exists()


def test_execute_run_never_raises_for_a_bad_spec():
    rec = execute_run({"strategy": {"name": "random"}, "trainer": {"epochs": 0}})
    assert rec["status"] == "failed" and rec["error"]["type"] == "ConfigError"


def test_per_run_progress_reaches_the_reporter(tmp_path):
    class Spy(Reporter):
        def __init__(self):
            self.events = []

        def suite_started(self, name, total, skipped, todo, results):
            self.events.append(("suite", total, skipped, todo))

        def run_started(self, spec):
            self.events.append(("start", spec.key))

        def run_progress(self, spec, done, total, info):
            self.events.append(("step", done, total, "loss" in info))

        def run_finished(self, spec, record):
            self.events.append(("end", record["status"]))

    spy = Spy()
    suite = tiny_suite(strategies=("random",)).with_overrides(include_full=False)
    run(suite, tmp_path / "r.jsonl", progress=spy, executor=SequentialExecutor(threads=1))
    kinds = [e[0] for e in spy.events]
    assert kinds[0] == "suite" and kinds[1] == "start" and kinds[-1] == "end"
    steps = [e for e in spy.events if e[0] == "step"]
    assert steps and steps[-1][1] == steps[-1][2] and all(e[3] for e in steps)


def test_line_reporter_prints_one_line_per_run(tmp_path, capsys):
    suite = tiny_suite(strategies=("random",))
    run(suite, tmp_path / "r.jsonl", progress="lines")
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("suite tiny: 2 runs")
    assert len(out) == 3 and all(" ok " in line for line in out[1:])


PLUGIN = """
from typing import Literal
from subsetlab import register
from subsetlab.config import StrategyConfig
from subsetlab.protocol import SelectionStrategy


class WorkerBoomConfig(StrategyConfig):
    name: Literal["test-worker-boom"] = "test-worker-boom"


@register
class WorkerBoom(SelectionStrategy):
    \"\"\"Registered at import time, like a user's own strategy module.\"\"\"

    name = "test-worker-boom"
    Config = WorkerBoomConfig

    def should_select(self, state):
        return False

    def select(self, state):
        raise RuntimeError("boom in a worker")
"""


@pytest.fixture
def runtime_plugin(tmp_path, monkeypatch):
    """A strategy registered at runtime by importing a user module (not an entry point)."""
    import importlib
    import sys

    (tmp_path / "sl_runtime_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("sl_runtime_plugin")
    yield
    registry.unregister("test-worker-boom")
    sys.modules.pop("sl_runtime_plugin", None)


def test_process_pool_matches_sequential(tmp_path, runtime_plugin):
    suite = tiny_suite(strategies=("random", "test-worker-boom"))
    seq, par = tmp_path / "seq.jsonl", tmp_path / "par.jsonl"
    run(suite, seq)
    with LocalProcessExecutor(workers=2, threads=1) as ex:
        out = run(suite, par, executor=ex)
    assert out.n_ok == 2 and out.n_failed == 1
    a = {r["key"]: r for r in read_records(seq)}
    b = {r["key"]: r for r in read_records(par)}
    assert list(b) != [] and set(a) == set(b)
    for k in a:
        assert a[k]["status"] == b[k]["status"]
        if a[k]["status"] == "ok":  # a run is a pure function of its spec
            assert a[k]["result"]["metrics"] == b[k]["result"]["metrics"]
            assert a[k]["result"]["history"] == [
                {**h, "wall": a[k]["result"]["history"][i]["wall"]} for i, h in enumerate(b[k]["result"]["history"])
            ]
            assert b[k]["env"]["threads"] == 1
        else:  # the worker imported the module that registered the strategy, then recorded its failure
            assert b[k]["error"]["type"] == "StrategyFailure"
            assert "boom in a worker" in b[k]["error"]["message"]


# ---------------------------------------------------------------------- the store
def _rec(key: str, status: str = "ok", **extra) -> dict:
    return {"key": key, "status": status, "spec": {}, **extra}


def test_partial_last_line_is_skipped_and_the_next_append_starts_fresh(tmp_path):
    path = tmp_path / "results.jsonl"
    store = ResultsStore(path)
    store.append(_rec("a"))
    store.append(_rec("b"))
    with open(path, "ab") as f:  # a writer killed mid-line
        f.write(b'{"key": "c", "status": "o')
    with pytest.warns(ResultsWarning, match="partial last line"):
        assert [r["key"] for r in read_records(path)] == ["a", "b"]
    store.append(_rec("d", value=float("nan")))
    lines = path.read_bytes().split(b"\n")
    assert lines[2] == b'{"key": "c", "status": "o' and lines[-1] == b""
    with pytest.warns(ResultsWarning, match="line 3 is not valid JSON"):
        recs = read_records(path)
    assert [r["key"] for r in recs] == ["a", "b", "d"]
    assert recs[-1]["value"] is None  # non-finite floats are stored as null (strict JSON)


def test_store_latest_and_missing_file(tmp_path):
    store = ResultsStore(tmp_path / "none" / "results.jsonl")
    assert store.records() == [] and store.latest() == {}
    store.append(_rec("a", "failed"))
    store.append(_rec("b"))
    store.append(_rec("a", "ok"))
    assert {k: r["status"] for k, r in store.latest().items()} == {"b": "ok", "a": "ok"}
    with open(store.path, "a") as f:
        f.write('["not a record"]\n')
    with pytest.warns(ResultsWarning, match="not a run record"):
        assert len(store.records()) == 3


def test_env_records_torch_threads(tmp_path):
    before = torch.get_num_threads()
    suite = tiny_suite(strategies=("random",)).with_overrides(include_full=False)
    run_suite(suite, tmp_path / "r.jsonl", progress="none", threads=1)
    (rec,) = read_records(tmp_path / "r.jsonl")
    assert rec["env"]["threads"] == 1
    assert torch.get_num_threads() == before  # restored


def test_bar_reporter_draws_suite_and_run_bars(tmp_path, capsys):
    suite = tiny_suite(strategies=("random",))
    run(suite, tmp_path / "r.jsonl", progress="bar")
    err = capsys.readouterr().err
    assert "suite tiny" in err and "run" in err and "step" in err


def test_warm_up_leaves_the_global_rng_alone():
    from subsetlab.bench import runner

    runner._warmed.discard("cpu")
    state = torch.get_rng_state()
    runner.warm_up("cpu")
    assert torch.equal(state, torch.get_rng_state()) and "cpu" in runner._warmed


def test_interruption_restores_torch_threads(tmp_path):
    before = torch.get_num_threads()
    with pytest.raises(KeyboardInterrupt):
        run(tiny_suite(), tmp_path / "r.jsonl", progress=StopAfter(1), threads=1)
    assert torch.get_num_threads() == before


def test_suite_threads_setting_is_used(tmp_path):
    suite = tiny_suite(strategies=("random",)).with_overrides(include_full=False)
    suite = Suite.from_dict({**suite.model_dump(exclude={"trainer"}), "trainer": {"epochs": 2}, "threads": 1})
    run_suite(suite, tmp_path / "r.jsonl", progress="none")
    (rec,) = read_records(tmp_path / "r.jsonl")
    assert rec["env"]["threads"] == 1
