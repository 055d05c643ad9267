"""Selection analytics: the arithmetic on hand-made cases, the recorder in the trainer, the report."""

from __future__ import annotations

import json
import math
from typing import Literal

import pytest
import torch

from subsetlab import registry
from subsetlab.analytics import (
    ForgettingCounter,
    SelectionAnalytics,
    class_balance,
    count_forgetting,
    coverage,
    effective_sample_size,
    jaccard,
    quarter_means,
    weight_stats,
)
from subsetlab.bench.analytics_report import (
    ANALYTICS_FILES,
    aggregate_analytics,
    write_analytics,
)
from subsetlab.bench.plots import PLOT_FILES, make_plots
from subsetlab.bench.report import write_report
from subsetlab.bench.store import read_records
from subsetlab.config import EpochwiseConfig, RunSpec
from subsetlab.data.base import IndexedDataset
from subsetlab.protocol import Budget, EpochwiseStrategy, Selection, StepInfo
from subsetlab.testing import tiny_model, tiny_problem, tiny_trainer_config
from subsetlab.trainer import Trainer

T, F = True, False


# ----------------------------------------------------------------------------- forgetting


@pytest.mark.parametrize(
    "seq, events",
    [
        ([T, F, T, F], 2),
        ([F, F, F], 0),  # never correct
        ([F, T, T], 0),  # first seen wrong, then learned
        ([T, T, T], 0),
        ([T, F, F, T, F], 2),
        ([T], 0),
        ([F, T, F, T, F, T], 2),
    ],
)
def test_count_forgetting_on_hand_made_sequences(seq, events):
    assert count_forgetting(torch.tensor(seq)[:, None]).tolist() == [events]


def test_counter_matches_whole_histories_under_random_batches():
    """Incremental updates over random batches (with repeats in a batch) equal the counts from
    each example's full correctness history; learned = ever correct; seen = ever presented."""
    g = torch.Generator().manual_seed(0)
    n = 12
    counter = ForgettingCounter(n)
    history: dict[int, list[bool]] = {i: [] for i in range(n)}
    for _ in range(60):
        idx = torch.randint(0, n, (5,), generator=g)
        correct = torch.rand(5, generator=g) < 0.6
        # the copies of a repeated index see the same model: give them the same correctness
        first = {int(i): bool(c) for i, c in reversed(list(zip(idx, correct)))}
        correct = torch.tensor([first[int(i)] for i in idx])
        before = counter.forgets.index_select(0, idx).clone()
        assert torch.equal(counter.update(idx, correct), before)
        for i, c in first.items():
            history[i].append(c)
    expected = [int(count_forgetting(torch.tensor(history[i])[:, None])[0]) if len(history[i]) > 1 else 0 for i in range(n)]
    assert counter.forgets.tolist() == expected
    assert counter.learned.tolist() == [any(history[i]) for i in range(n)]
    assert counter.seen.tolist() == [bool(history[i]) for i in range(n)]
    assert counter.last_correct.tolist() == [history[i][-1] if history[i] else False for i in range(n)]
    assert sum(expected) > 0  # the case is not trivial


# ----------------------------------------------------------------------------- set and weight arithmetic


def test_jaccard_of_distinct_indices():
    assert jaccard(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3])) == 0.5
    assert jaccard(torch.tensor([0, 0, 1, 2]), torch.tensor([2, 1, 3, 3])) == 0.5  # duplicates ignored
    assert jaccard(torch.tensor([0, 1]), torch.tensor([2, 3])) == 0.0
    assert jaccard(torch.tensor([4, 5]), torch.tensor([5, 4])) == 1.0
    assert jaccard(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)) == 1.0
    assert jaccard(torch.arange(10), torch.arange(5)) == 0.5


def test_coverage_is_the_share_seen():
    assert coverage(torch.tensor([T, F, T, F])) == 0.5
    assert coverage(torch.tensor([F, F, F])) == 0.0
    assert coverage(torch.ones(7, dtype=torch.bool)) == 1.0


def test_effective_sample_size_and_weight_stats():
    assert effective_sample_size(torch.ones(4)) == pytest.approx(4.0)
    assert effective_sample_size(torch.tensor([1.0, 3.0])) == pytest.approx(16 / 10)
    assert effective_sample_size(torch.tensor([1e-9, 1e-9, 1.0])) == pytest.approx(1.0, rel=1e-6)
    s = weight_stats(torch.tensor([1.0, 3.0]))
    assert s == pytest.approx({"w_min": 1.0, "w_max": 3.0, "w_mean": 2.0, "ess": 1.6, "ess_ratio": 0.8})
    assert weight_stats(torch.tensor([2.0, 2.0, 2.0]))["ess_ratio"] == pytest.approx(1.0)


def test_class_balance_against_the_training_distribution():
    same = class_balance(torch.tensor([2, 2]), torch.tensor([50, 50]))
    assert same == pytest.approx({"class_entropy": 1.0, "class_tv": 0.0, "class_ratio": 1.0})
    skew = class_balance(torch.tensor([3, 1]), torch.tensor([1, 1]))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert skew == pytest.approx({"class_entropy": h, "class_tv": 0.25, "class_ratio": 1 / 3})
    missing = class_balance(torch.tensor([4, 0, 0]), torch.tensor([1, 1, 2]))
    assert missing == pytest.approx({"class_entropy": 0.0, "class_tv": 0.75, "class_ratio": 0.0})
    # proportional to an imbalanced training set: TV 0 and ratio 1, entropy below 1
    prop = class_balance(torch.tensor([10, 30]), torch.tensor([100, 300]))
    assert prop["class_tv"] == pytest.approx(0.0) and prop["class_ratio"] == pytest.approx(1.0)
    assert prop["class_entropy"] < 1.0
    # a class absent from the training set does not count
    assert class_balance(torch.tensor([1, 1, 0]), torch.tensor([5, 5, 0]))["class_entropy"] == pytest.approx(1.0)


def test_quarter_means():
    rows = [{"step": 0, "v": 1.0}, {"step": 10, "v": 3.0}, {"step": 24, "v": None}, {"step": 50, "v": 9.0},
            {"step": 75, "v": 4.0}, {"step": 99, "v": 6.0}]
    assert quarter_means(rows, "v", 100) == (2.0, 5.0)
    assert quarter_means(rows[:2], "v", 100) == (2.0, None)


# ----------------------------------------------------------------------------- the recorder by hand


def test_recorder_on_a_hand_made_run():
    """N = 6 (classes 0,0,0,1,1,1), S = 2 steps per pseudo-epoch, 4 steps, two selections."""
    train = IndexedDataset(torch.zeros(6, 2), torch.tensor([0, 0, 0, 1, 1, 1]), 2)
    budget = Budget.make(6, 0.5, 2, 2)
    assert (budget.steps_per_epoch, budget.total_steps) == (2, 4)
    rec = SelectionAnalytics(train, budget)

    def step(s, idx, correct, losses):
        idx = torch.tensor(idx)
        rec.on_step(s, StepInfo(idx, torch.ones(len(idx)), torch.tensor(losses), torch.tensor(correct), 0.0))

    rec.on_selection(0, Selection(torch.tensor([0, 1, 3]), torch.tensor([1.0, 1.0, 2.0])))
    step(0, [0, 1], [T, F], [0.5, 1.5])
    step(1, [3, 0], [T, F], [0.25, 1.75])  # example 0 forgotten
    rec.on_selection(2, Selection(torch.tensor([0, 1, 2]), torch.ones(3)))
    step(2, [0, 2], [T, T], [0.1, 0.3])
    step(3, [1], [F], [2.0])
    out = rec.summary()
    json.dumps(out, allow_nan=False)
    s0, s1 = out["selections"]
    assert s0["step"] == 0 and s0["epoch"] == 0 and s0["size"] == 3 and s0["unique"] == 3
    assert s0["jaccard"] is None
    assert s0["ess"] == pytest.approx(16 / 6) and s0["ess_ratio"] == pytest.approx(16 / 18)
    assert s0["w_max"] == 2.0 and s0["class_counts"] == [2, 1]
    assert s0["class_tv"] == pytest.approx(1 / 6)
    assert (s0["forget"], s0["learned"], s0["unseen"]) == (0.0, 0.0, 1.0)
    assert s0["loss"] == pytest.approx(1.0)  # the first batch after the selection
    assert s1["step"] == 2 and s1["epoch"] == 1 and s1["jaccard"] == 0.5
    assert s1["forget"] == pytest.approx(1 / 3)  # example 0 was forgotten once
    assert s1["learned"] == pytest.approx(1 / 3) and s1["unseen"] == pytest.approx(1 / 3)
    assert s1["loss"] == pytest.approx(0.2)
    assert s1["class_counts"] == [3, 0] and s1["class_ratio"] == 0.0
    e0, e1 = out["epochs"]
    assert e0["epoch"] == 0 and e0["step"] == 2 and e0["coverage"] == pytest.approx(0.5)
    assert e0["learned"] == pytest.approx(2 / 6) and e0["forgetting_events"] == 1
    assert e0["loss"] == pytest.approx(1.0) and e0["forget"] == 0.0
    assert e1["step"] == 4 and e1["coverage"] == pytest.approx(4 / 6)
    assert e1["forget"] == pytest.approx(1 / 3)  # scores before each step: example 0 had 1, 2 and 1 had 0
    assert e1["loss"] == pytest.approx(0.8)
    sm = out["summary"]
    assert sm["selections"] == 2 and sm["jaccard"] == 0.5 and sm["forgetting_events"] == 1
    assert sm["coverage"] == pytest.approx(4 / 6) and sm["learned"] == pytest.approx(3 / 6)
    assert sm["ess_ratio"] == pytest.approx((16 / 18 + 1) / 2)
    assert sm["forget_q1"] == 0.0 and sm["forget_q4"] is None  # steps < 1 and >= 3
    assert sm["loss_q1"] == pytest.approx(1.0) and sm["loss_q4"] is None
    assert out["mode"] == "basic" and out["n"] == 6 and out["total_steps"] == 4


# ----------------------------------------------------------------------------- in the trainer


class _RecordingConfig(EpochwiseConfig):
    """Config of :class:`_Recording`."""

    name: Literal["test-recording"] = "test-recording"


class _Recording(EpochwiseStrategy):
    """Random subsets every pseudo-epoch; keeps every StepInfo (the brute-force reference)."""

    name = "test-recording"
    Config = _RecordingConfig

    def setup(self, ctx):
        super().setup(ctx)
        self.seen_steps = []

    def select(self, state):
        ctx = self.ctx
        idx = torch.randperm(ctx.budget.n, generator=ctx.generator)[: ctx.budget.subset_size]
        return Selection(idx, 0.5 + torch.rand(len(idx), generator=ctx.generator))

    def on_step_end(self, state, info):
        self.seen_steps.append((info.indices.clone(), info.correct.clone()))


def _fit(mode, strategy=None, **over):
    strategy = strategy or registry.create("random")
    result = Trainer(tiny_trainer_config(analytics=mode, **over)).fit(strategy, tiny_model(0), tiny_problem(0), 0)
    assert result.ok, result.error
    return result


def test_trainer_records_analytics_that_match_a_brute_force_count():
    strat = _Recording()
    r = _fit("basic", strat)
    a = r.analytics
    assert set(a) == {"mode", "n", "steps_per_epoch", "total_steps", "selections", "epochs", "summary"}
    log = r.selections["log"]
    assert [row["step"] for row in a["selections"]] == [e["step"] for e in log]
    assert [row["unique"] for row in a["selections"]] == [e["unique"] for e in log]
    assert len(a["epochs"]) == 3 and a["epochs"][-1]["step"] == r.work["steps"]
    # brute force from the per-step (indices, correct) the strategy saw
    n = a["n"]
    hist: dict[int, list[bool]] = {}
    for idx, corr in strat.seen_steps:
        for i, c in zip(idx.tolist(), corr.tolist()):
            hist.setdefault(i, []).append(c)
    events = sum(int(count_forgetting(torch.tensor(h)[:, None])[0]) if len(h) > 1 else 0 for h in hist.values())
    sm = a["summary"]
    assert sm["forgetting_events"] == events
    assert sm["coverage"] == pytest.approx(len(hist) / n)
    assert sm["learned"] == pytest.approx(sum(any(h) for h in hist.values()) / n)
    assert a["epochs"][-1]["coverage"] == pytest.approx(sm["coverage"])
    assert 0.0 < sm["ess_ratio"] < 1.0  # non-uniform weights
    assert a["selections"][0]["unseen"] == 1.0 and a["selections"][0]["forget"] == 0.0
    assert "analytics" in r.timings and r.timings["analytics"] >= 0.0
    json.dumps(r.to_dict(), allow_nan=False)


def test_off_records_nothing_and_no_mode_changes_training():
    off, basic, full = _fit("off"), _fit("basic"), _fit("full")
    assert off.analytics == {} and "analytics" not in off.timings
    assert "analytics_forward_examples" not in off.work and "analytics_forward_examples" not in basic.work
    for r in (basic, full):
        assert r.metrics == off.metrics
        assert r.history == [] or [h["test_acc"] for h in r.history] == [h["test_acc"] for h in off.history]
        assert r.selections["sizes"] == off.selections["sizes"]
    # full: the selected examples forwarded once per selection, counted apart from the strategy's work
    assert full.work["analytics_forward_examples"] == sum(e["unique"] for e in full.selections["log"])
    assert full.work["forward_examples"] == off.work["forward_examples"]
    assert all(isinstance(row["loss_full"], float) for row in full.analytics["selections"])
    assert "loss_full_q1" in full.analytics["summary"] and "loss_full" not in basic.analytics["selections"][0]


def test_analytics_mode_is_not_part_of_the_run_key():
    base = {"strategy": {"name": "random"}, "trainer": {"epochs": 2}}
    keys = {RunSpec.model_validate({**base, "trainer": {"epochs": 2, "analytics": m}}).key for m in ("off", "basic", "full")}
    assert len(keys) == 1


def test_analytics_survive_checkpoint_and_resume(tmp_path):
    cfg = {"checkpoint_every": 1}
    ref = _fit("basic", **cfg)
    path = tmp_path / "ckpt.pt"
    trainer_cfg = tiny_trainer_config(analytics="basic", **cfg)
    Trainer(trainer_cfg, checkpoint_path=path).fit(
        registry.create("random"), tiny_model(0), tiny_problem(0), 0, run_key="r", stop_after_steps=6
    )
    resumed = Trainer(trainer_cfg, checkpoint_path=path).fit(
        registry.create("random"), tiny_model(0), tiny_problem(0), 0, run_key="r"
    )
    assert resumed.analytics == ref.analytics


# ----------------------------------------------------------------------------- in the report


@pytest.fixture(scope="module")
def suite_results(tmp_path_factory):
    """Two tiny runs through the real suite runner (random and sgd-truncated), with analytics."""
    from subsetlab.bench.runner import run_suite
    from subsetlab.bench.suite import Suite

    suite = Suite.from_dict(
        {
            "name": "tiny-analytics",
            "datasets": [{"name": "synthetic", "options": {"n": 160, "n_test": 80, "dim": 6, "classes": 3}}],
            "model": {"name": "mlp", "options": {"hidden": [8]}},
            "trainer": {"epochs": 4, "batch_size": 16, "lr": 0.05},
            "budgets": [0.25],
            "seeds": [0],
            "strategies": ["random", "sgd-truncated"],
            "include_full": False,
        }
    )
    path = tmp_path_factory.mktemp("analytics") / "results.jsonl"
    out = run_suite(suite, path, progress="none", threads=1)
    assert out.ok and out.n_ok == 2
    return path


def test_report_writes_the_analytics_table_and_plots(suite_results, tmp_path):
    records = read_records(suite_results)
    assert all(r["result"]["analytics"]["summary"]["selections"] >= 1 for r in records)
    written = write_report(suite_results, tmp_path, ("md", "csv"))
    assert {"analytics_md", "analytics_csv"} <= set(written)
    md = (tmp_path / "analytics.md").read_text()
    assert "| random |" in md and "| sgd-truncated |" in md and "forget Q1" in md
    csv_text = (tmp_path / "analytics.csv").read_text().splitlines()
    assert csv_text[0].startswith("dataset,model,setting,budget,strategy,seeds,selections_mean")
    assert len(csv_text) == 3
    rows = {r.strategy: r for r in aggregate_analytics(records)}
    by_name = {r["spec"]["strategy"]["name"]: r["result"]["analytics"]["summary"] for r in records}
    assert rows["random"].stats["selections"].mean == by_name["random"]["selections"] == 4
    assert rows["random"].stats["coverage"].mean == pytest.approx(100 * by_name["random"]["coverage"])
    assert rows["sgd-truncated"].stats["jaccard"].mean is None  # one selection: no consecutive pair
    plots = {p.name for p in make_plots(suite_results, tmp_path)}
    assert set(ANALYTICS_FILES) <= plots
    for name in ANALYTICS_FILES:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_without_analytics_still_report(suite_results, tmp_path):
    """Records written before analytics existed: the report skips them, nothing fails."""
    old = read_records(suite_results)
    for r in old:
        del r["result"]["analytics"]
    written = write_report(old, tmp_path, ("md", "csv"))
    assert set(written) == {"md", "csv"} and not (tmp_path / "analytics.md").exists()
    assert {p.name for p in make_plots(old, tmp_path)} <= set(PLOT_FILES)
    assert write_analytics(old, tmp_path) == {} and aggregate_analytics(old) == []
    # mixed: only the runs with analytics are aggregated
    new = read_records(suite_results)
    mixed = [old[0], new[1]]
    assert [r.strategy for r in aggregate_analytics(mixed)] == [new[1]["spec"]["strategy"]["name"]]
