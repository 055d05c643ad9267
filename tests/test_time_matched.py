"""Time-matched Random runs: suite options, the fraction arithmetic, the runner's scheduling,
resume and failures (with a fake executor whose timings are exact), and the real executors."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import pytest

from subsetlab.bench.runner import Executor, LocalProcessExecutor, Reporter, run_suite
from subsetlab.bench.store import read_records
from subsetlab.bench.suite import FORWARD_COST, Suite, TimeMatch, run_cost
from subsetlab.config import RunSpec
from subsetlab.errors import ConfigError

TINY_DATA = {"name": "synthetic", "options": {"n": 160, "n_test": 80, "dim": 6, "classes": 3}}


@pytest.fixture(autouse=True)
def _quiet_plugins():
    from subsetlab.registry import PluginLoadWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        yield


def suite(strategies=("random", "sgd-truncated"), budgets=(0.25,), seeds=(0,), **options) -> Suite:
    return Suite.from_dict(
        {
            "name": "tm",
            "datasets": [TINY_DATA],
            "model": {"name": "mlp", "options": {"hidden": [8]}},
            "trainer": {"epochs": 2, "batch_size": 32, "lr": 0.05},
            "budgets": list(budgets),
            "seeds": list(seeds),
            "strategies": list(strategies),
            **options,
        }
    )


def error(**options) -> str:
    with pytest.raises(ConfigError) as info:
        suite(**options)
    return str(info.value)


# ---------------------------------------------------------------------- suite options
def test_true_matches_every_strategy_but_random_and_full():
    s = suite(strategies=("random", "sgd-truncated", "craig", "full"), budgets=(0.1, 0.3), seeds=(0, 1),
              time_matched=True)
    matches = s.time_matches()
    assert (s.time_matched, s.time_match, s.forward_cost) == (True, "wall", FORWARD_COST)
    # 2 strategies x 2 budgets x 2 seeds; random and full are not matched
    assert len(matches) == 8
    assert sorted({m.label for m in matches}) == ["random@craig", "random@sgd-truncated"]
    specs = {sp.key: sp for sp in s.expand()}
    for m in matches:
        assert m.strategy.key in specs and m.baseline.key in specs  # both are runs of the suite
        assert m.baseline.display_name == "random" and m.baseline.strategy.name == "random"
        assert (m.baseline.seed, m.baseline.trainer.fraction) == (m.strategy.seed, m.strategy.trainer.fraction)
        assert m.budget == m.strategy.trainer.fraction
    keys = [m.key for m in matches]
    assert len(set(keys)) == len(keys) and not set(keys) & set(specs)
    assert keys == [m.key for m in s.time_matches()]  # stable


def test_listed_labels_and_baseline_added_when_missing():
    s = suite(strategies=("sgd-truncated", {"name": "random", "select_every": 2, "label": "random-R2"}),
              time_matched=["sgd-truncated"])
    labels = [e.display_name for e in s.strategy_entries()]
    assert labels == ["sgd-truncated", "random-R2", "random"]  # the plain Random run is added
    assert [sp.display_name for sp in s.expand()] == ["full", "sgd-truncated", "random-R2", "random"]
    (m,) = s.time_matches()
    assert m.label == "random@sgd-truncated" and m.baseline.strategy.select_every == 1
    assert suite(time_matched=["*"]).time_matched is True
    assert suite(time_matched=[]).time_matches() == [] and suite().time_matches() == []


def test_the_entry_labelled_random_is_the_baseline():
    s = suite(strategies=({"name": "random", "class_balanced": True, "label": "random"}, "sgd-truncated"),
              time_matched=True)
    (m,) = s.time_matches()
    assert m.baseline.strategy.class_balanced is True


def test_key_depends_on_what_is_matched_not_on_labels():
    wall = suite(time_matched=True).time_matches()[0]
    work = suite(time_matched=True, time_match="work").time_matches()[0]
    work2 = suite(time_matched=True, time_match="work", forward_cost=0.5).time_matches()[0]
    wall2 = suite(time_matched=True, forward_cost=0.5).time_matches()[0]  # ignored under wall
    assert len({wall.key, work.key, work2.key}) == 3 and wall2.key == wall.key
    relabelled = suite(strategies=("random", {"name": "sgd-truncated", "label": "trunc"}), time_matched=True)
    (m,) = relabelled.time_matches()
    assert m.key == wall.key and m.label == "random@trunc"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"time_matched": "sgd-truncated"}, ["time_matched: must be true", "list of strategy labels"]),
        ({"time_matched": ["sgd-truncatd"]}, ["no strategy of the suite is labelled 'sgd-truncatd'",
                                              "Did you mean 'sgd-truncated'"]),
        ({"time_matched": ["random"]}, ["'random' is the Random baseline", "Remove it"]),
        ({"time_matched": ["full"], "strategies": ("full", "random")}, ["'full' always trains on the full data"]),
        ({"time_matched": ["a", "a"]}, ["labels must be unique"]),
        ({"time_match": "cpu"}, ["time_match: Input should be 'wall' or 'work'. Got 'cpu'", '"work"']),
        ({"forward_cost": 1.5}, ["forward_cost: Input should be less than 1. Got 1.5", "default 1/3"]),
        ({"forward_cost": 0}, ["forward_cost: Input should be greater than 0"]),
        ({"time_matched": True, "strategies": ("sgd-truncated", {"name": "random", "select_every": 2,
                                                                  "label": "random@sgd-truncated"})},
         ["labelled 'random@sgd-truncated', which a strategy of the suite already uses"]),
        ({"time_matched": True, "strategies": ({"name": "sgd-truncated", "label": "random"}, "craig")},
         ["the strategy labelled 'random' is a 'sgd-truncated' strategy", "another label"]),
    ],
)
def test_bad_options_are_clear_errors(options, expected):
    msg = error(**options)
    for part in expected:
        assert part in msg, msg


def test_toml_and_overrides(tmp_path):
    from subsetlab.bench.suite import load_suite

    p = tmp_path / "s.toml"
    p.write_text(
        'name = "t"\nstrategies = ["random", "sgd-truncated"]\ntime_matched = ["sgd-truncated"]\n'
        'time_match = "work"\nforward_cost = 0.25\n'
    )
    s = load_suite(p)
    assert (s.time_matched, s.time_match, s.forward_cost) == (("sgd-truncated",), "work", 0.25)
    o = s.with_overrides(seeds=[0, 1])  # kept through an unrelated override
    assert (o.time_matched, o.time_match, o.forward_cost) == (("sgd-truncated",), "work", 0.25)
    o = s.with_overrides(time_matched=False, time_match="wall", forward_cost=0.5)
    assert (o.time_matched, o.time_match, o.forward_cost) == (False, "wall", 0.5)
    with pytest.raises(ConfigError, match="time_matched: no strategy of the suite is labelled 'nope'"):
        s.with_overrides(time_matched=["nope"])


# ---------------------------------------------------------------------- arithmetic
def result(total=10.0, eval=1.0, bp=1000, fwd=0, bwd=0, hvp=0, acc=0.5) -> dict:
    return {
        "status": "ok",
        "metrics": {"final_acc": acc},
        "timings": {"total": total, "train": total - eval, "select": 0.0, "eval": eval},
        "work": {"steps": 10, "backprop_examples": bp, "forward_examples": fwd, "backward_examples": bwd,
                 "hvp_examples": hvp},
    }


def ok(**kw) -> dict:
    return {"key": "k", "status": "ok", "error": None, "result": result(**kw)}


def test_run_cost_conventions():
    r = result(total=9.0, eval=1.5, bp=1000, fwd=3000, bwd=600, hvp=300)
    assert run_cost(r, "wall") == 7.5
    assert run_cost(r, "work") == pytest.approx(1000 + 3000 / 3 + (600 + 300) * 2 / 3)  # 2600
    assert run_cost(r, "work", 0.5) == pytest.approx(1000 + 1500 + 450)
    assert run_cost(None, "wall") is None and run_cost({"timings": {}}, "wall") is None
    assert run_cost({"timings": {"total": 4.0}}, "wall") == 4.0  # no eval recorded: nothing to take out


def a_match(mode="wall", forward_cost=FORWARD_COST, budget=0.1) -> TimeMatch:
    base = {"data": TINY_DATA, "trainer": {"fraction": budget, "epochs": 2}, "seed": 3}
    return TimeMatch(
        strategy=RunSpec.model_validate({**base, "strategy": "sgd-truncated"}),
        baseline=RunSpec.model_validate({**base, "strategy": "random"}),
        mode=mode,
        forward_cost=forward_cost,
    )


def test_wall_fraction_excludes_evaluation():
    m = a_match()
    spec, info = m.resolve(ok(total=9.0, eval=1.0), ok(total=3.0, eval=1.0))
    # f' = 0.1 * (9 - 1) / (3 - 1) = 0.4
    assert spec.trainer.fraction == pytest.approx(0.4) and info["fraction"] == spec.trainer.fraction
    assert spec.label == "random@sgd-truncated" and spec.strategy.name == "random" and spec.seed == 3
    assert spec.model_dump(exclude={"trainer", "label"}) == m.baseline.model_dump(exclude={"trainer", "label"})
    assert spec.trainer.model_dump(exclude={"fraction"}) == m.baseline.trainer.model_dump(exclude={"fraction"})
    assert info == {
        "to": "sgd-truncated", "to_key": m.strategy.key, "baseline": "random", "baseline_key": m.baseline.key,
        "mode": "wall", "unit": "seconds without evaluation and set-up", "budget": 0.1, "target": 8.0, "baseline_cost": 2.0,
        "unclamped_fraction": pytest.approx(0.4), "fraction": pytest.approx(0.4), "clamped": False,
    }
    done = m.finish(info, ok(total=9.5, eval=1.5))
    assert done["cost"] == 8.0 and done["achieved_ratio"] == 1.0
    assert m.finish(info, {"status": "failed", "result": None})["achieved_ratio"] is None


def test_fraction_is_clamped_to_one_and_says_so():
    spec, info = a_match().resolve(ok(total=30.0, eval=1.0), ok(total=3.0, eval=1.0))
    assert info["unclamped_fraction"] == pytest.approx(1.45) and info["clamped"] is True
    assert spec.trainer.fraction == 1.0 == info["fraction"]


def test_work_fraction():
    spec, info = a_match("work").resolve(ok(bp=1000, fwd=3000, bwd=600, hvp=300), ok(bp=1000))
    assert info["target"] == pytest.approx(2600.0) and info["baseline_cost"] == 1000.0
    assert spec.trainer.fraction == pytest.approx(0.26) and info["forward_cost"] == FORWARD_COST
    spec, info = a_match("work", 0.5).resolve(ok(bp=1000, fwd=3000, bwd=600, hvp=300), ok(bp=1000))
    assert spec.trainer.fraction == pytest.approx(0.295) and info["unit"] == "backprop-example units"


def test_unavailable_reasons():
    m = a_match()
    failed = {"key": "x", "status": "failed", "result": None,
              "error": {"type": "TrainingDiverged", "message": "diverged: loss is nan\nmore"}}
    spec, info = m.resolve(failed, ok())
    assert spec is None
    assert "'sgd-truncated'" in info["reason"] and "failed (TrainingDiverged: diverged: loss is nan)" in info["reason"]
    spec, info = m.resolve(ok(), None)
    assert spec is None and "'random'" in info["reason"] and "has no record" in info["reason"]
    spec, info = m.resolve(ok(), ok(total=1.0, eval=1.0))
    assert spec is None and "no positive cost" in info["reason"]


# ---------------------------------------------------------------------- the runner (fake timings)
#: Fake seconds without evaluation per unit of fraction; every run also spends 1 s evaluating.
RATE = {"random": 20.0, "sgd-truncated": 60.0, "full": 100.0}


class FakeExecutor(Executor):
    """Returns records with exact timings (``1 + RATE * fraction`` s, 1 s of it evaluation)
    instead of training; ``fail`` names (label, seed) pairs whose runs fail."""

    def __init__(self, fail=()):
        self.calls: list[list[str]] = []
        self.fail = set(fail)

    def run(self, specs, reporter):
        self.calls.append([f"{s.display_name}@{s.trainer.fraction:g}/{s.seed}" for s in specs])
        for s in specs:
            reporter.run_started(s)
            if (s.display_name, s.seed) in self.fail:
                yield s, {"key": s.key, "status": "failed", "result": None,
                          "error": {"type": "StrategyFailure", "message": "boom", "traceback": None, "step": 3}}
                continue
            f = 1.0 if s.strategy.name == "full" else s.trainer.fraction
            cost = RATE[s.strategy.name] * f
            yield s, {"key": s.key, "status": "ok", "error": None, "env": {},
                      "result": result(total=1.0 + cost, eval=1.0, acc=0.5 + s.seed / 100)}


def matched_records(path) -> list[dict]:
    return [r for r in read_records(path) if r.get("match")]


def test_one_matched_run_per_strategy_budget_and_seed_with_the_measured_fraction(tmp_path):
    s = suite(budgets=(0.1, 0.25), seeds=(0, 1), time_matched=True)
    path = tmp_path / "r.jsonl"
    ex = FakeExecutor()
    out = run_suite(s, path, executor=ex, progress="none")
    base = [sp.key for sp in s.expand()]
    # round one: every expanded run; round two: the matched runs only
    assert len(ex.calls) == 2 and len(ex.calls[0]) == len(base) == 2 * (1 + 2 * 2)
    assert sorted(ex.calls[1]) == ["random@sgd-truncated@0.3/0", "random@sgd-truncated@0.3/1",
                                   "random@sgd-truncated@0.75/0", "random@sgd-truncated@0.75/1"]
    recs = matched_records(path)
    assert len(recs) == 4 and out.ok and out.n_ok == len(base) + 4
    assert sorted(r["key"] for r in recs) == sorted(m.key for m in s.time_matches())
    assert out.keys == base + [m.key for m in s.time_matches()]
    for r in recs:
        f = r["match"]["budget"]
        # f' = f * (60 f) / (20 f) = 3 f: the target is the strategy's 60 f seconds without eval
        assert r["spec"]["trainer"]["fraction"] == pytest.approx(3 * f) == r["match"]["fraction"]
        assert r["match"]["target"] == pytest.approx(60 * f) and r["match"]["baseline_cost"] == pytest.approx(20 * f)
        assert r["match"]["achieved_ratio"] == pytest.approx(1.0) and r["match"]["clamped"] is False
        assert r["spec"]["label"] == "random@sgd-truncated" and r["match"]["to"] == "sgd-truncated"
        assert list(r)[:5] == ["key", "suite", "spec", "match", "status"]


def test_clamped_matches_of_equal_specs_are_each_run_and_kept_apart(tmp_path):
    s = suite(budgets=(0.5, 0.6), time_matched=True)  # 3 f > 1: both clamp to the same spec at f' = 1
    path = tmp_path / "r.jsonl"
    ex = FakeExecutor()
    run_suite(s, path, executor=ex, progress="none")
    recs = matched_records(path)
    assert ex.calls[1] == ["random@sgd-truncated@1/0"] * 2
    assert sorted(r["match"]["budget"] for r in recs) == [0.5, 0.6]
    assert len({r["key"] for r in recs}) == 2
    for r in recs:
        f = r["match"]["budget"]
        assert r["match"]["clamped"] is True and r["match"]["fraction"] == 1.0
        assert r["match"]["unclamped_fraction"] == pytest.approx(3 * f)
        assert r["match"]["achieved_ratio"] == pytest.approx(20.0 / (60 * f))


def test_resume_neither_redoes_nor_loses_matched_runs(tmp_path):
    class StopAfter(Reporter):
        def __init__(self, n):
            self.n = n

        def run_finished(self, spec, record):
            self.n -= 1
            if self.n == 0:
                raise KeyboardInterrupt

    s = suite(seeds=(0, 1, 2), time_matched=True)
    path = tmp_path / "r.jsonl"
    n_base = len(s.expand())
    with pytest.raises(KeyboardInterrupt):  # killed after the base runs and one matched run
        run_suite(s, path, executor=FakeExecutor(), progress=StopAfter(n_base + 1))
    first = matched_records(path)
    assert len(first) == 1
    ex = FakeExecutor()
    out = run_suite(s, path, executor=ex, progress="none")
    # the two missing matched runs start at once (their runs are recorded); the done one is skipped
    assert len(ex.calls) == 1 and sorted(ex.calls[0]) == ["random@sgd-truncated@0.75/1", "random@sgd-truncated@0.75/2"]
    assert first[0]["key"] in out.skipped and len(out.ran) == 2 and out.ok
    keys = [r["key"] for r in read_records(path)]
    assert len(keys) == len(set(keys)) == n_base + 3
    again = FakeExecutor()
    assert run_suite(s, path, executor=again, progress="none").ran == [] and again.calls == []


def test_a_failed_strategy_gets_no_matched_run_but_a_reason(tmp_path):
    s = suite(seeds=(0, 1), time_matched=True)
    path = tmp_path / "r.jsonl"
    ex = FakeExecutor(fail={("sgd-truncated", 1)})
    out = run_suite(s, path, executor=ex, progress="none")
    assert ex.calls[1] == ["random@sgd-truncated@0.75/0"]  # nothing is run for seed 1
    by_seed = {r["spec"]["seed"]: r for r in matched_records(path)}
    assert by_seed[0]["status"] == "ok"
    miss = by_seed[1]
    assert miss["status"] == "failed" and miss["result"] is None
    assert miss["error"]["type"] == "MatchUnavailable"
    assert "'sgd-truncated'" in miss["error"]["message"] and "StrategyFailure: boom" in miss["error"]["message"]
    assert miss["match"]["to"] == "sgd-truncated" and "fraction" not in miss["match"]
    assert miss["spec"]["trainer"]["fraction"] == 0.25 and miss["spec"]["label"] == "random@sgd-truncated"
    assert out.n_failed == 2 and miss["key"] in out.ran

    # a plain rerun skips both failures; --retry-failed reruns the strategy, then its match
    idle = FakeExecutor()
    assert run_suite(s, path, executor=idle, progress="none").ran == [] and idle.calls == []
    retry = FakeExecutor()
    out = run_suite(s, path, executor=retry, progress="none", retry_failed=True)
    assert retry.calls == [["sgd-truncated@0.25/1"], ["random@sgd-truncated@0.75/1"]]
    assert out.ok and len(matched_records(path)) == 3  # the failed record, then its retried one


def test_a_failed_baseline_gives_no_matched_run(tmp_path):
    s = suite(time_matched=True)
    path = tmp_path / "r.jsonl"
    ex = FakeExecutor(fail={("random", 0)})
    run_suite(s, path, executor=ex, progress="none")
    assert len(ex.calls) == 1  # no second round: nothing could be matched
    (miss,) = matched_records(path)
    assert miss["error"]["type"] == "MatchUnavailable" and "'random'" in miss["error"]["message"]


def test_line_reporter_shows_the_achieved_ratio(tmp_path, capsys):
    run_suite(suite(time_matched=True), tmp_path / "r.jsonl", executor=FakeExecutor(), progress="lines")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("suite tm: 4 runs, 0 already recorded, 4 to run")
    assert out[-1].startswith("[4/4] ok     random@sgd-truncated synthetic/mlp f=0.75 seed=0")
    assert "cost x1.00 of sgd-truncated's (wall)" in out[-1]


# ---------------------------------------------------------------------- real runs
def check_real(path, s) -> None:
    """Every matched run's fraction is f * cost(strategy) / cost(random) from the records."""
    recs = {r["key"]: r for r in read_records(path)}
    assert len(recs) == len(read_records(path))  # each key once
    matches = s.time_matches()
    assert matches and all(m.key in recs for m in matches)
    for m in matches:
        r = recs[m.key]
        assert r["status"] == "ok", r["error"]
        x, b = recs[m.strategy.key]["result"], recs[m.baseline.key]["result"]
        if s.time_match == "wall":
            def wall(res):  # seconds without evaluation and set-up
                t = res["timings"]
                return t["total"] - t["eval"] - t["setup"]

            target, base, cost = wall(x), wall(b), wall(r["result"])
        else:
            target, base, cost = (run_cost(v, "work") for v in (x, b, r["result"]))
        want = min(1.0, m.budget * target / base)
        assert r["spec"]["trainer"]["fraction"] == r["match"]["fraction"]
        assert math.isclose(r["match"]["fraction"], want, rel_tol=1e-12)
        assert math.isclose(r["match"]["achieved_ratio"], cost / target, rel_tol=1e-12)
        assert r["spec"]["strategy"] == recs[m.baseline.key]["spec"]["strategy"]
        assert r["result"]["budget"]["fraction"] == pytest.approx(r["match"]["fraction"])


def test_sequential_real_runs(tmp_path):
    s = suite(time_matched=True, time_match="work")
    path = tmp_path / "r.jsonl"
    out = run_suite(s, path, progress="none", threads=1)
    assert out.ok and len(read_records(path)) == 4
    check_real(path, s)
    assert run_suite(s, path, progress="none", threads=1).ran == []


def test_process_pool_real_runs(tmp_path):
    s = suite(seeds=(0, 1), time_matched=True)
    path = tmp_path / "r.jsonl"
    with LocalProcessExecutor(workers=2, threads=1) as ex:
        out = run_suite(s, path, executor=ex, progress="none")
    assert out.ok and len(read_records(path)) == 3 * 2 + 2
    check_real(path, s)


def test_dask_real_runs(tmp_path):
    pytest.importorskip("distributed")
    from subsetlab.bench.dask_executor import DaskExecutor

    s = suite(time_matched=True)
    path = tmp_path / "r.jsonl"
    with DaskExecutor(n_workers=1, threads=1) as ex:
        out = run_suite(s, path, executor=ex, progress="none")
        assert out.ok and len(read_records(path)) == 4
        assert run_suite(s, path, executor=ex, progress="none").ran == []
    check_real(path, s)


def dist_suite_job(dv, suite_dict, results):
    """Every rank runs the same time-matched suite (rank 0 decides and writes)."""
    out = run_suite(Suite.from_dict(suite_dict), results, progress="none", dist=dv)
    return {"statuses": out.statuses, "ran": out.ran}


def test_distributed_suite_rank_zero_decides_the_fraction(tmp_path):
    import torch

    from subsetlab import distributed

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed unavailable")
    sys.path.insert(0, str(Path(__file__).parent))  # the ranks import this module to find the job
    # batch 8: every fraction the match can give leaves whole batches the 2 ranks can split
    s = suite(time_matched=True).with_overrides(include_full=False, trainer={"batch_size": 8})
    path = tmp_path / "r.jsonl"
    d = json.loads(s.model_dump_json())
    d["trainer"].pop("fraction", None)  # a suite gives the fraction through `budgets`
    out = distributed.spawn(dist_suite_job, 2, (d, str(path)), timeout_s=180)
    recs = read_records(path)
    assert all(r["status"] == "ok" for r in recs), [r["error"] for r in recs]
    assert len(recs) == 3 and all(r["result"]["world_size"] == 2 for r in recs)
    check_real(path, s)
    assert out[0] == out[1] and out[0]["ran"] == [r["key"] for r in recs]
    again = distributed.spawn(dist_suite_job, 2, (d, str(path)), timeout_s=180)
    assert again[0]["ran"] == again[1]["ran"] == [] and len(read_records(path)) == 3
