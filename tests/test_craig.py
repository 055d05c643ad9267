"""CRAIG: index bookkeeping (permutation), budgets, cluster-size weights, per-batch plans,
apricot cross-check, NaN guard, clipping, warm start, and per-variant conformance."""

from __future__ import annotations

import math

import pytest
import torch

from strategies._common import batch_means, batch_rows, bias_weight, class_members, random_partition
from strategies.craig import CraigConfig, CraigStrategy, craig_selection
from subsetlab import registry
from subsetlab.data.base import DataSplits, IndexedDataset
from subsetlab.embeddings import Embeddings
from subsetlab.errors import ConfigError, SelectionError
from subsetlab.protocol import (
    Budget,
    TrainState,
)
from subsetlab.submodular import facility_location_embeddings
from subsetlab.testing import (
    StrategyConformance,
    TinyProblem,
    make_context,
    tiny_model,
    tiny_problem,
    tiny_trainer_config,
)
from subsetlab.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _emb(x: torch.Tensor, y: torch.Tensor, features: torch.Tensor | None = None) -> Embeddings:
    n = y.shape[0]
    return Embeddings(x, torch.zeros(n), y, y, torch.arange(n), features)


def _random_problem(seed: int, n: int = 240, C: int = 4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, generator=g, dtype=dtype)
    y = torch.randint(0, C, (n,), generator=g)
    return x, y, g


def _ctx(strategy, data: DataSplits, model, seed: int = 0, fraction: float = 0.1, batch_size: int = 16):
    budget = Budget.make(len(data.train), fraction, batch_size, 3)
    ctx = make_context(data, model, budget, seed)
    strategy.setup(ctx)
    return ctx, TrainState(0, 0, budget.steps_per_epoch, budget.total_steps, 0.05, model, 0)


# ------------------------------------------------------------------------ index bookkeeping


def test_shuffled_ground_set_selects_the_same_examples_with_the_same_weights():
    """Rows in another order (each still carrying its dataset index) pick the same examples.

    float64 embeddings with no exact ties at a 10% budget; CORDS' shuffled-row bug would
    match ~10% of them here.
    """
    x, y, g = _random_problem(0)
    perm = torch.randperm(x.shape[0], generator=g)
    a = craig_selection(_emb(x, y), 24, 16, CraigConfig(), g)
    shuffled = Embeddings(x[perm], torch.zeros(240), y[perm], y[perm], perm)  # row i is example perm[i]
    b = craig_selection(shuffled, 24, 16, CraigConfig(), g)
    assert dict(zip(a.indices.tolist(), a.weights.tolist())) == dict(zip(b.indices.tolist(), b.weights.tolist()))


def test_permuted_dataset_end_to_end_selects_the_same_original_examples():
    """The strategy on a permuted copy of the data set, through the real embedder.

    float32 embeddings of a tiny model have near-ties (rounding of the centred distances can
    swap a few equivalent picks), so: the same objective, and nearly all the same examples.
    """
    data = tiny_problem(0)
    model = tiny_model(0)
    with torch.no_grad():
        model[2].weight.mul_(3.0)  # spread the embeddings of the untrained net
    perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1))
    permuted = DataSplits(IndexedDataset(data.train.x[perm], data.train.y[perm], 4), data.val, data.test)
    sels = []
    for d in (data, permuted):
        s = CraigStrategy()
        _, state = _ctx(s, d, model)
        sels.append(s.select(state))
    a, b = sels
    original_b = perm[b.indices]
    overlap = len(set(a.indices.tolist()) & set(original_b.tolist()))
    assert overlap >= 0.9 * len(a), f"only {overlap} of {len(a)} examples match after un-permuting"
    assert a.diagnostics["objective"] == pytest.approx(b.diagnostics["objective"], rel=1e-5)
    assert sorted(a.weights.tolist()) == pytest.approx(sorted(b.weights.tolist()), abs=1.0)


# ------------------------------------------------------------------------ budgets and weights


def test_class_budgets_are_proportional_and_sum_to_k_and_weights_are_cluster_sizes():
    g = torch.Generator().manual_seed(3)
    counts = [97, 13, 50, 40]  # imbalanced
    y = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    y = y[torch.randperm(y.shape[0], generator=g)]
    x = torch.randn(y.shape[0], 4, generator=g, dtype=torch.float64)
    k = 37
    sel = craig_selection(_emb(x, y), k, 16, CraigConfig(), g)
    budgets = sel.diagnostics["budgets"]
    assert sum(budgets) == k == len(sel) == sel.indices.unique().numel()
    for c, n_c in enumerate(counts):  # largest remainder: within 1 of the exact share
        assert abs(budgets[c] - n_c * k / sum(counts)) < 1.0
        in_c = y[sel.indices] == c
        assert int(in_c.sum()) == budgets[c]
        assert float(sel.weights[in_c].sum()) == n_c  # cluster sizes cover the class
    assert bool((sel.weights >= 1).all())
    # the same as facility location on each class by itself
    members = class_members(y, 4)[2]
    ref = facility_location_embeddings(x[members], budgets[2])
    ours = {int(i): float(w) for i, w in zip(sel.indices, sel.weights) if int(y[i]) == 2}
    assert ours == {int(members[r]): float(w) for r, w in zip(ref.ranking, ref.weights)}


def test_bias_weight_embedding_uses_features():
    x, y, g = _random_problem(1, n=120)
    h = torch.rand(120, 5, generator=g, dtype=torch.float64)
    cfg = CraigConfig(embedding="bias_weight")
    sel = craig_selection(_emb(x, y, h), 12, 16, cfg, g)
    members = class_members(y, 4)[0]
    ref = facility_location_embeddings(bias_weight(x[members], h[members]), sel.diagnostics["budgets"][0])
    assert set(sel.indices.tolist()) >= {int(members[r]) for r in ref.ranking}


def test_max_weight_caps_weights_relative_to_their_mean():
    x, y, g = _random_problem(2)
    members = class_members(y, 4)[0]
    x[members[6:]] *= 1e-3  # a tight cluster and 6 outliers: one representative takes the cluster
    raw = craig_selection(_emb(x, y), 24, 16, CraigConfig(), g)
    capped = craig_selection(_emb(x, y), 24, 16, CraigConfig(max_weight=2.0), g)
    assert torch.equal(raw.indices, capped.indices)
    cap = 2.0 * float(raw.weights.mean())
    assert float(capped.weights.max()) == pytest.approx(cap)
    assert capped.diagnostics["clipped"] == int((raw.weights > cap).sum()) > 0
    assert raw.diagnostics["max_weight_ratio"] == pytest.approx(float(raw.weights.max() / raw.weights.mean()))


# ------------------------------------------------------------------------ per batch


def test_per_batch_returns_a_valid_batch_plan_of_whole_minibatches():
    x, y, g = _random_problem(4, n=250)
    B, k = 16, 40
    order = random_partition(250, g)
    sel = craig_selection(_emb(x, y), k, B, CraigConfig(variant="per_batch"), g, order)
    nb = math.ceil(250 / B)
    assert len(sel.batches) == math.ceil(k / B) == sel.diagnostics["batches"]
    assert len(sel) == math.ceil(k / B) * B  # every batch holds B rows
    # the partition's batches; the last one (250 % 16 = 10 rows) is completed with the first
    # 6 rows of the order
    chunks = [order[i * B : (i + 1) * B].tolist() for i in range(nb - 1)]
    chunks.append(order[(nb - 1) * B :].tolist() + order[: B - 250 % B].tolist())
    assert sel.diagnostics["completed_rows"] == B - 250 % B == 6 and sel.diagnostics["batch_rows"] == B
    batch_weights = []
    for plan in sel.batches:
        assert plan.numel() == B
        assert sel.indices[plan].tolist() in chunks  # one whole mini-batch of the partition
        w = sel.weights[plan]
        assert bool((w == w[0]).all())
        batch_weights.append(float(w[0]))
    assert sum(batch_weights) == nb  # cluster sizes in batches
    sel.validate(250, "craig", batch_size=B)
    # FL over the batch means, mapped back through the partition
    rows = batch_rows(order, B)
    assert rows.tolist() == chunks
    ref = facility_location_embeddings(batch_means(x, None, rows), math.ceil(k / B))
    assert [sel.indices[p].tolist() for p in sel.batches] == [chunks[int(b)] for b in ref.ranking]


def test_the_short_last_batch_can_be_chosen_and_still_holds_b_rows():
    """With one far-away example in the short last batch, facility location must pick that
    batch first; it trains B rows like every other batch (CORDS would train 250 % B rows)."""
    x, y, g = _random_problem(6, n=250)
    B = 16
    order = random_partition(250, g)
    x[order[-1]] = 50.0  # the last batch's mean moves far from every other batch's
    sel = craig_selection(_emb(x, y), 3 * B, B, CraigConfig(variant="per_batch"), g, order)
    last = order[(250 // B) * B :]
    firsts = [set(sel.indices[p].tolist()) for p in sel.batches]
    assert any(set(last.tolist()) <= f for f in firsts)
    assert all(p.numel() == B for p in sel.batches)
    sel.validate(250, "craig", batch_size=B)


def test_validate_rejects_a_plan_batch_of_the_wrong_size():
    from subsetlab.protocol import Selection

    sel = Selection(torch.arange(10), torch.ones(10), [torch.arange(8), torch.arange(8, 10)])
    sel.validate(10, "x")  # no batch size: not checked
    with pytest.raises(SelectionError, match=r"a batch of 2 rows \(batch 1 of 2\); every planned batch must hold exactly 8"):
        sel.validate(10, "x", batch_size=8)
    Selection(torch.arange(16), torch.ones(16), [torch.arange(8), torch.arange(8, 16)]).validate(16, "x", batch_size=8)


def test_per_batch_partition_is_kept_checkpointed_and_redrawn_on_request():
    data, model = tiny_problem(0), tiny_model(0)
    s = CraigStrategy(variant="per_batch")
    _, state = _ctx(s, data, model)
    s.select(state)
    first = s.state_dict()["partition"].clone()
    s.select(state)
    assert torch.equal(s.state_dict()["partition"], first)
    fresh = CraigStrategy(variant="per_batch")
    _ctx(fresh, data, model, seed=5)
    fresh.load_state_dict(s.state_dict())
    assert torch.equal(fresh.partition_, first)
    r = CraigStrategy(variant="per_batch", repartition=True)
    _, state = _ctx(r, data, model)
    r.select(state)
    p1 = r.state_dict()["partition"].clone()
    r.select(state)
    assert not torch.equal(r.state_dict()["partition"], p1)
    assert CraigStrategy().state_dict() == {}


# ------------------------------------------------------------------------ solvers


def test_apricot_backend_agrees_with_torch_on_the_objective():
    """One apricot fit (per-batch: one facility-location problem)."""
    pytest.importorskip("apricot")
    x, y, g = _random_problem(5, n=400, dtype=torch.float32)
    order = random_partition(400, g)
    ours = craig_selection(_emb(x, y), 80, 8, CraigConfig(variant="per_batch"), g, order)
    theirs = craig_selection(_emb(x, y), 80, 8, CraigConfig(variant="per_batch", backend="apricot"), g, order)
    assert theirs.diagnostics["objective"] == pytest.approx(ours.diagnostics["objective"], rel=1e-6)


def test_optimizers_lazy_naive_agree_and_stochastic_is_close():
    x, y, g = _random_problem(6)
    lazy = craig_selection(_emb(x, y), 24, 16, CraigConfig(), g)
    naive = craig_selection(_emb(x, y), 24, 16, CraigConfig(optimizer="naive"), g)
    sto = craig_selection(_emb(x, y), 24, 16, CraigConfig(optimizer="stochastic"), torch.Generator().manual_seed(0))
    assert torch.equal(lazy.indices, naive.indices) and torch.equal(lazy.weights, naive.weights)
    assert sto.diagnostics["objective"] >= 0.97 * lazy.diagnostics["objective"]
    assert sum(sto.diagnostics["budgets"]) == 24


def test_config_rejects_apricot_naive_and_bad_values():
    with pytest.raises(ConfigError, match="apricot"):
        registry.make_config({"name": "craig", "backend": "apricot", "optimizer": "naive"})
    with pytest.raises(ConfigError, match="max_weight"):
        registry.make_config({"name": "craig", "max_weight": 0.5})
    with pytest.raises(ConfigError, match="epsilon"):
        registry.make_config({"name": "craig", "epsilon": 1.5})


# ------------------------------------------------------------------------ failures and schedule


def test_nan_model_raises_a_selection_error():
    """A diverged model must not reach the solvers (apricot's lazy greedy loops forever on NaN)."""
    data, model = tiny_problem(0), tiny_model(0)
    s = CraigStrategy()
    _, state = _ctx(s, data, model)
    s.select(state)  # the embedder checks the model's output layer once, on finite logits
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(SelectionError, match="NaN or infinite.*diverged"):
        s.select(state)


def test_schedule_with_warm_start_and_select_every():
    problem = TinyProblem()
    cfg = tiny_trainer_config(problem, epochs=6)
    result = Trainer(cfg).fit(
        CraigStrategy(warm_start=2, select_every=3), tiny_model(0), tiny_problem(0), 0
    )
    assert result.ok, result.error
    log = result.selections["log"]
    assert [s["epoch"] for s in log] == [0, 2, 5]
    assert log[0]["size"] == problem.n_train and log[0]["diagnostics"] == {"warm_start": True}
    k = Budget.make(problem.n_train, problem.fraction, problem.batch_size, 6).subset_size
    assert [s["size"] for s in log[1:]] == [k, k]
    assert result.work["backprop_examples"] <= 6 * math.ceil(k / problem.batch_size) * problem.batch_size
    assert result.work["forward_examples"] == 2 * problem.n_train
    assert result.timings["strategy"]["embedding"] > 0 and result.timings["strategy"]["selection"] > 0


def test_reselection_interval_follows_the_run_length_by_default():
    cfg = CraigConfig()
    assert cfg.select_every is None and cfg.select_every_fraction is None
    assert [cfg.interval(e) for e in (1, 5, 14, 15, 20, 30, 200, 300)] == [1, 1, 1, 2, 2, 3, 20, 30]
    assert CraigConfig(variant="per_batch").interval(20) == 2  # measured: R = 1 did no better
    assert CraigConfig(select_every=4).interval(200) == 4  # absolute R overrides the fraction
    assert CraigConfig(select_every_fraction=0.05).interval(20) == 1
    assert CraigConfig(warm_start=10).interval(30) == 2  # 10% of the 20 selecting epochs
    assert CraigConfig.model_validate_json(CraigConfig(select_every=3).model_dump_json()).interval(100) == 3
    props = CraigConfig.model_json_schema()["properties"]
    assert "select_every" in props and "select_every_fraction" in props
    with pytest.raises(ConfigError, match="select_every_fraction"):
        registry.make_config({"name": "craig", "select_every_fraction": 0.0})


def test_relative_schedule_reselects_through_the_run_not_only_at_step_0():
    problem = TinyProblem()
    result = Trainer(tiny_trainer_config(problem, epochs=16)).fit(
        CraigStrategy(variant="per_batch"), tiny_model(0), tiny_problem(0), 0
    )
    assert result.ok, result.error
    assert [s["epoch"] for s in result.selections["log"]] == list(range(0, 16, 2))  # R = 2
    B = min(problem.batch_size, Budget.make(problem.n_train, problem.fraction, problem.batch_size, 16).subset_size)
    assert all(s["diagnostics"]["batch_rows"] == B for s in result.selections["log"])
    # full batches: exactly steps * B examples back-propagated
    assert result.work["backprop_examples"] == result.work["steps"] * B


# ------------------------------------------------------------------------ conformance of variants


class TestCraigPerBatchConformance(StrategyConformance):
    strategy = {"name": "craig", "variant": "per_batch", "select_every": 1}


class TestCraigBiasWeightConformance(StrategyConformance):
    strategy = {"name": "craig", "embedding": "bias_weight", "optimizer": "stochastic", "max_weight": 5.0}
