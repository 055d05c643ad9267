"""Distributed training: 2 CPU processes with gloo against single-process runs.

Every test that starts processes bounds them with a timeout (``spawn`` kills every rank when
it expires), so a deadlock fails the test instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from subsetlab import distributed
from subsetlab.errors import DataError, SelectionError
from subsetlab.protocol import DistView
from subsetlab.testing import tiny_model, tiny_problem
from subsetlab.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
import _dist_jobs as jobs  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

TIMEOUT = 180


def _spec(strategy: dict, epochs: int = 6, batch: int = 32, **trainer) -> dict:
    return {
        "strategy": strategy,
        "data": {"name": "digits"},
        "model": {"name": "mlp"},
        "trainer": {"epochs": epochs, "fraction": 0.2, "batch_size": batch, "analytics": "basic", **trainer},
        "seed": 0,
    }


def _single(spec: dict, **kw) -> dict:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return jobs.fit_job(DistView(), spec, **kw)
    finally:
        torch.set_num_threads(n)


# ---------------------------------------------------------------------- no processes needed
def test_trainer_refuses_a_strategy_without_distributed_support():
    from strategies.random import RandomConfig, RandomStrategy
    from subsetlab.protocol import Capabilities

    class SingleConfig(RandomConfig):
        name: str = "single-only"

    class SingleOnly(RandomStrategy):
        name, Config = "single-only", SingleConfig
        capabilities = Capabilities(supports_distributed=False, distributed_note="Needs the whole set in one process.")

    fake = DistView(rank=0, world_size=2)
    data, model = tiny_problem(), tiny_model()
    with pytest.raises(
        SelectionError, match=r"'single-only' does not support distributed training \(world size 2\)\. Needs the whole"
    ):
        Trainer(dist=fake).fit(SingleOnly(), model, data)


def test_trainer_refuses_a_batch_the_ranks_cannot_share():
    from strategies.random import RandomStrategy
    from subsetlab.config import TrainerConfig

    with pytest.raises(DataError, match="not a multiple of 2"):
        Trainer(TrainerConfig(batch_size=33, fraction=0.5), dist=DistView(rank=0, world_size=2)).fit(
            RandomStrategy(), tiny_model(), tiny_problem()
        )


def test_single_process_view_and_helpers_are_identities():
    dv = DistView()
    t = torch.arange(3)
    assert distributed.all_gather_cat(dv, t) is t
    assert distributed.broadcast_object(dv, {"a": 1}) == {"a": 1}
    assert distributed.view().world_size == 1


def test_spawn_reports_a_failing_rank():
    with pytest.raises(distributed.DistributedError, match="'fail_on_rank_one': rank 1 failed: ValueError: boom on rank 1"):
        distributed.spawn(jobs.fail_on_rank_one, 2, timeout_s=TIMEOUT)


def test_spawn_kills_a_deadlock_at_the_timeout():
    with pytest.raises(distributed.DistributedError, match="did not finish within"):
        distributed.spawn(jobs.deadlock, 2, timeout_s=8)


def test_collectives_over_two_ranks():
    out = distributed.spawn(jobs.collectives_job, 2, timeout_s=TIMEOUT)
    for rank, got in enumerate(out):
        assert got["sum"] == [1.0, 3.0] and got["max"] == [1.0, 2.0] and got["mean"] == [0.5, 1.5]
        assert got["gather"] == [0, 10, 11]  # rank 0 sends 1 row, rank 1 two
        assert got["object"] == {"from": 0, "rows": [1, 2]}


# ---------------------------------------------------------------------- training
def test_two_process_random_run_equals_the_single_process_run():
    """A replicated selection: each rank trains half of every global batch, DDP averages, so the
    2-process run takes the single-process steps (to float rounding) and evaluates the same."""
    spec = _spec({"name": "random"}, epochs=4)
    one = _single(spec)
    two = distributed.spawn(jobs.fit_job, 2, (spec,), timeout_s=TIMEOUT)
    for r in two:
        assert torch.allclose(r["params"], one["params"], atol=2e-5), float((r["params"] - one["params"]).abs().max())
        res = r["result"]
        assert res["world_size"] == 2
        assert res["work"]["steps"] == one["result"]["work"]["steps"]
        assert res["work"]["backprop_examples"] == one["result"]["work"]["backprop_examples"]
        assert res["metrics"]["final_acc"] == pytest.approx(one["result"]["metrics"]["final_acc"], abs=1e-9)
    # analytics (of the union of the ranks' selections) are rank 0's job, as is writing results
    summary = two[0]["result"]["analytics"]["summary"]
    assert summary["coverage"] == pytest.approx(one["result"]["analytics"]["summary"]["coverage"])
    assert two[1]["result"]["analytics"] == {}
    assert torch.equal(two[0]["params"], two[1]["params"])


def test_crest_ranks_select_the_coresets_of_a_single_process_drawing_the_same_subsets():
    """Same seed: the ranks draw the same P subsets, rank r keeps p % 2 == r, and together they
    select exactly the coresets a single process selects from those P subsets (same m). The
    release preset: every coreset and the fit at the start of the round."""
    B, P = 16, 6
    rel = {"preset": "release"}
    two = distributed.spawn(jobs.crest_select_job, 2, (B, 5, 0, rel), timeout_s=TIMEOUT)  # p_init 5 -> 6 for 2 ranks
    one = jobs.crest_select_job(DistView(), B // 2, P, 0, rel)  # the same m = B / 2 rows per coreset
    assert [r["P"] for r in two] == [P, P] and one["P"] == P
    assert all(r["rank_local"] for r in two) and not one["rank_local"]
    for rank, r in enumerate(two):
        assert torch.equal(r["indices"], one["indices"][rank::2])  # coreset p went to rank p % 2
        assert torch.allclose(r["weights"], one["weights"][rank::2])
    union2 = torch.cat([r["indices"].reshape(-1) for r in two]).sort().values
    assert torch.equal(union2, one["indices"].reshape(-1).sort().values)
    # the quadratic model is fitted on the union: the all-reduced gradient is the single one
    for r in two:
        assert torch.allclose(r["grad_ema"], one["grad_ema"], atol=1e-6)
        assert torch.allclose(r["hess_ema"], one["hess_ema"], atol=1e-6)


def test_lazy_crest_ranks_build_the_coresets_of_one_slot_of_w_subsets():
    """The lazy build: each coreset slot draws W subsets from the shared generator and rank r
    keeps subset r, exactly the subsets a single process drawing a group of W coresets selects."""
    B = 16
    two = distributed.spawn(jobs.crest_select_job, 2, (B, 5, 0), timeout_s=TIMEOUT)
    one = jobs.crest_select_job(DistView(), B // 2, 6, 0, {"group": 2})
    assert one["indices"].shape == (2, B // 2)
    for rank, r in enumerate(two):
        assert r["indices"].shape == (1, B // 2) and r["rank_local"]
        assert torch.equal(r["indices"][0], one["indices"][rank])
        assert torch.allclose(r["weights"][0] / r["weights"][0].sum(), one["weights"][rank] / one["weights"][rank].sum())


def test_two_process_crest_run_finishes_in_step_and_close_to_one_process():
    spec = _spec({"name": "crest"}, epochs=8)
    one = _single(spec)
    two = distributed.spawn(jobs.fit_job, 2, (spec,), timeout_s=TIMEOUT)
    a, b = (r["result"] for r in two)
    # every rank: the same optimizer steps, selections, checks and decisions
    assert a["work"]["steps"] == b["work"]["steps"] == one["result"]["work"]["steps"]
    assert a["selections"]["count"] == b["selections"]["count"] > 1
    assert [s["step"] for s in a["selections"]["log"]] == [s["step"] for s in b["selections"]["log"]]
    for key in ("rho", "T1", "P", "L0", "L_true"):
        assert a["series"][key] == b["series"][key], key
    assert torch.equal(two[0]["params"], two[1]["params"])
    assert a["metrics"] == b["metrics"]
    first = a["selections"]["log"][0]
    # the first round's coresets (B / 2 = 16 rows each, built lazily per rank), over both ranks
    assert a["selections"]["sizes"][0] == 2 * 16 * first["diagnostics"]["built"] and first["diagnostics"]["built"] >= 1
    acc1, acc2 = one["result"]["metrics"]["final_acc"], a["metrics"]["final_acc"]
    assert acc1 > 0.8 and acc2 > 0.8
    assert abs(acc1 - acc2) < 0.06, (acc1, acc2)


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "crest", "drop": True, "drop_interval": 1.0, "alpha": 0.5, "min_records": 1, "preset": "release",
         "check_set": "fresh", "check_size": 64, "fit_batches": 2, "curvature": "last_layer"},
        {"name": "crest", "drop": True, "drop_interval": 1.0, "alpha": 0.5, "min_records": 1, "group": 2,
         "check_size": 64, "hvp_rows": 8, "curvature": "head"},
    ],
    ids=["release-fresh-lastlayer", "lazy-group-head"],
)
def test_two_process_crest_with_every_option_stays_in_step(strategy):
    two = distributed.spawn(jobs.fit_job, 2, (_spec(strategy, epochs=8),), timeout_s=TIMEOUT)
    a, b = (r["result"] for r in two)
    assert a["status"] == b["status"] == "ok"
    assert a["work"]["steps"] == b["work"]["steps"]
    assert a["series"]["pool_size"] == b["series"]["pool_size"]
    assert a["series"]["pool_size"][-1][1] < 1437  # examples were dropped, identically on both ranks
    assert torch.equal(two[0]["pool"], two[1]["pool"])
    assert [s["step"] for s in a["selections"]["log"]] == [s["step"] for s in b["selections"]["log"]]


GREEDI_CONFIGS = [
    {"name": "craig"},
    {"name": "craig", "variant": "per_batch", "embedding": "bias_weight", "optimizer": "stochastic"},
    {"name": "gradmatch"},
    {"name": "gradmatch", "variant": "per_batch", "target": "val"},
    {"name": "gradmatch", "variant": "per_class", "embedding": "bias", "target": "val"},
    {"name": "glister"},
    {"name": "glister", "embedding": "bias_weight", "per_class": False, "virtual_step": "mean"},
]


def test_greedi_selections_are_the_same_on_both_ranks_with_full_batches_and_shared_work():
    """CRAIG, GradMatch and Glister under 2 gloo ranks: each rank embeds its own shard, and both
    end with the same replicated selection, of the budget's size, with plan batches of B rows."""
    two = distributed.spawn(jobs.greedi_select_job, 2, (GREEDI_CONFIGS,), timeout_s=TIMEOUT)
    n_train, n_val, k, B = 600, 60, 120, 32
    for config, a, b in zip(GREEDI_CONFIGS, *two):
        name = config["name"]
        assert torch.equal(a["indices"], b["indices"]) and torch.equal(a["weights"], b["weights"]), config
        assert not a["rank_local"] and a["diagnostics"]["greedi"]["world_size"] == 2
        if config.get("variant") == "per_batch":
            assert a["batches"].shape == (k // B + (k % B > 0), B) and torch.equal(a["batches"], b["batches"])
            assert len(a["indices"]) == a["batches"].numel()
        else:
            assert a["batches"] is None
            assert len(a["indices"]) == k and a["indices"].unique().numel() == k
        # the selection work is split: each rank embeds about half the training set (per batch:
        # the rows of its half of the mini-batches), plus half the validation set when used
        uses_val = name == "glister" or config.get("target") == "val"
        for r in (a, b):
            assert r["forward"] <= n_train // 2 + B + (n_val // 2 if uses_val else 0), (config, r["forward"])
        assert a["forward"] + b["forward"] >= n_train + (n_val if uses_val else 0)
        # the shared generator is consumed identically on both ranks (later shared draws agree)
        assert torch.equal(a["generator"], b["generator"])
        if name == "craig" and config.get("variant") != "per_batch":
            assert float(a["weights"].sum()) == n_train  # exact cluster sizes over the whole set


def test_two_process_runs_of_the_epochwise_baselines_stay_in_step():
    for strategy in ({"name": "craig", "variant": "per_batch"}, {"name": "gradmatch"}, {"name": "glister"}):
        two = distributed.spawn(jobs.fit_job, 2, (_spec(strategy, epochs=4),), timeout_s=TIMEOUT)
        a, b = (r["result"] for r in two)
        assert a["status"] == b["status"] == "ok", (a.get("error"), b.get("error"))
        assert a["work"]["steps"] == b["work"]["steps"]
        assert a["selections"]["count"] == b["selections"]["count"] == 4  # R = 1 for 4 epochs
        assert torch.equal(two[0]["params"], two[1]["params"])
        assert a["metrics"] == b["metrics"] and a["metrics"]["final_acc"] > 0.6, a["metrics"]


def test_two_process_run_resumes_from_per_rank_checkpoints(tmp_path):
    spec = _spec({"name": "crest"}, epochs=4, checkpoint_every=1)
    whole = distributed.spawn(jobs.fit_job, 2, (spec,), timeout_s=TIMEOUT)
    ckpt = str(tmp_path / "run.pt")
    resumed = distributed.spawn(jobs.fit_job, 2, (spec, 40, ckpt), timeout_s=TIMEOUT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt.rank0-of-2", "run.pt.rank1-of-2"]
    for w, r in zip(whole, resumed):
        assert torch.allclose(w["params"], r["params"], atol=1e-6)
        assert w["result"]["selections"]["count"] == r["result"]["selections"]["count"]


def test_cli_nproc_runs_a_suite_on_two_ranks(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(
        'name = "dist"\nstrategies = ["random", "craig"]\nseeds = [0]\nbudgets = [0.2]\ninclude_full = false\n'
        '[[datasets]]\nname = "digits"\n[model]\nname = "mlp"\n[trainer]\nepochs = 2\nbatch_size = 32\n'
    )
    results = tmp_path / "results.jsonl"
    env = {**os.environ, "SUBSETLAB_DIST_TIMEOUT": "120"}
    proc = subprocess.run(
        [sys.executable, "-m", "subsetlab", "run", str(suite), "--nproc", "2", "--results", str(results),
         "--progress", "lines", "--no-plots"],
        capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 2  # rank 0 wrote each run once
    by = {r["spec"]["strategy"]["name"]: r for r in records}
    assert by["random"]["status"] == "ok" and by["random"]["result"]["world_size"] == 2
    # craig selects by GreeDi across the two ranks
    assert by["craig"]["status"] == "ok" and by["craig"]["result"]["world_size"] == 2
    assert by["craig"]["result"]["selections"]["log"][0]["diagnostics"]["greedi"]["world_size"] == 2
    assert by["random"]["env"]["world_size"] == 2
    # progress and the report come from rank 0 only
    assert proc.stdout.count("[1/2]") == 1 and proc.stdout.count("wrote ") == 1

    # resume: rank 0's results file says everything is recorded, so no rank trains anything
    again = subprocess.run(
        [sys.executable, "-m", "subsetlab", "run", str(suite), "--nproc", "2", "--results", str(results),
         "--progress", "lines", "--no-plots"],
        capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp_path,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(results.read_text().splitlines()) == 2


def test_rank_arguments_cannot_be_mistaken_for_torchrun_options():
    """torchrun's parser sees the ranks' arguments too: it rejects an option that abbreviates
    one of its own (``--nproc`` of ``--nproc-per-node``). The launcher drops ``--nproc`` and
    writes abbreviations out in full; no other ``run`` option is a prefix of a torchrun one."""
    from torch.distributed.run import get_args_parser

    from subsetlab.cli import _run_parser, rank_argv

    assert rank_argv(["s.toml", "--nproc", "2", "--res", "r.jsonl", "--nproc=3", "--no-pl", "-q", "--set", "a=1"]) == [
        "s.toml", "--results", "r.jsonl", "--no-plots", "-q", "--set", "a=1",
    ]
    theirs = [o for o in get_args_parser()._option_string_actions if o.startswith("--") and o != "--help"]
    ours = [o for o in _run_parser()._option_string_actions if o.startswith("--") and o not in ("--help", "--nproc")]
    clashes = [(o, t) for o in ours for t in theirs if t.startswith(o)]
    assert clashes == []
    assert [t for t in theirs if t.startswith("--nproc")]  # the check would catch --nproc itself


def test_a_run_failing_on_one_rank_is_recorded_with_its_cause_and_the_suite_stops(tmp_path):
    """Rank 1 fails mid-run; rank 0, left waiting in a training collective, gives up at the
    group timeout. The ranks compare outcomes on a side channel: the record names rank 1's
    error (not rank 0's timeout), and since the ranks are out of step every rank stops the
    suite with the reason. Rerunning resumes with the remaining run."""
    suite = {
        "name": "onerank", "strategies": ["test-rank-boom", "random"], "seeds": [0], "budgets": [0.2],
        "include_full": False, "datasets": [{"name": "digits"}], "model": {"name": "mlp"},
        "trainer": {"epochs": 2, "batch_size": 32},
    }
    results = tmp_path / "results.jsonl"
    with pytest.raises(distributed.DistributedError) as info:
        distributed.spawn(jobs.suite_job, 2, (suite, str(results)), timeout_s=TIMEOUT, group_timeout_s=10)
    msg = str(info.value)
    assert "rank 0 failed: DistributedError: rank 1 failed run" in msg and "rank 1 failed: DistributedError" in msg
    assert "run the same command again to resume" in msg
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 1  # rank 0 alone wrote
    boom = records[0]
    assert boom["spec"]["strategy"]["name"] == "test-rank-boom" and boom["status"] == "failed"
    assert boom["error"]["message"].startswith("rank 1 failed: ") and "boom on rank 1 only" in boom["error"]["message"]

    out = distributed.spawn(jobs.suite_job, 2, (suite, str(results)), timeout_s=TIMEOUT, group_timeout_s=10)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["spec"]["strategy"]["name"] for r in records] == ["test-rank-boom", "random"]
    assert records[1]["status"] == "ok" and records[1]["result"]["world_size"] == 2
    assert out[0]["statuses"] == out[1]["statuses"] == {r["key"]: r["status"] for r in records}
