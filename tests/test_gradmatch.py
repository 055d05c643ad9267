"""GradMatch: target reconstruction against random subsets, random fill, the per-class
per-gradient slice against the embedder, validation targets, per-batch plans, conformance."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from strategies._common import (
    batch_means,
    batch_rows,
    class_gradient_slice,
    class_members,
    random_partition,
)
from strategies.gradmatch import GradMatchConfig, GradMatchStrategy, gradmatch_selection
from subsetlab import registry
from subsetlab.embeddings import Embeddings, GradientEmbedder
from subsetlab.errors import ConfigError, DataError
from subsetlab.protocol import (
    Budget,
    TrainState,
)
from subsetlab.submodular import nn_omp
from subsetlab.testing import (
    StrategyConformance,
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


def _softmax_grads(n: int, C: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Realistic bias gradients: softmax of random logits minus the one-hot label."""
    y = torch.randint(0, C, (n,), generator=g)
    p = torch.softmax(2.0 * torch.randn(n, C, generator=g, dtype=torch.float64), 1)
    return p - F.one_hot(y, C).double(), y


def _ctx(strategy, seed: int = 0):
    data, model = tiny_problem(seed), tiny_model(seed)
    budget = Budget.make(len(data.train), 0.25, 16, 3)
    ctx = make_context(data, model, budget, seed)
    strategy.setup(ctx)
    return ctx, TrainState(0, 0, budget.steps_per_epoch, budget.total_steps, 0.05, model, 0)


def _class_residuals(sel, x, y, C):
    """Relative residual of each class: ||sum_S w_i x_i - sum_class x_i|| / ||sum_class x_i||."""
    out = []
    for c in range(C):
        in_c = y[sel.indices] == c
        approx = sel.weights[in_c].double() @ x[sel.indices[in_c]]
        target = x[y == c].sum(0)
        out.append(float(torch.linalg.vector_norm(approx - target) / torch.linalg.vector_norm(target)))
    return out


# ------------------------------------------------------------------------ matching quality


def test_omp_matches_the_class_gradient_sum_better_than_random_subsets():
    g = torch.Generator().manual_seed(0)
    x, y = _softmax_grads(400, 5, g)
    k = 40
    sel = gradmatch_selection(_emb(x, y), k, 16, GradMatchConfig(variant="per_class", embedding="bias"), g)
    assert len(sel) == k == sel.indices.unique().numel()
    ours = torch.tensor(_class_residuals(sel, x, y, 5))
    # random subsets of the same per-class sizes, each weighted n_c / k_c (unbiased sum)
    random_res = []
    for trial in range(20):
        parts, ws = [], []
        for c, members in enumerate(class_members(y, 5)):
            kc = sel.diagnostics["budgets"][c]
            pick = members[torch.randperm(members.numel(), generator=g)[:kc]]
            parts.append(pick)
            ws.append(torch.full((kc,), members.numel() / kc))
        random_res.append(_class_residuals(type(sel)(torch.cat(parts), torch.cat(ws)), x, y, 5))
    random_res = torch.tensor(random_res)  # [trials, classes]
    assert bool((ours < random_res.mean(0) / 2).all()), (ours, random_res.mean(0))
    assert float(ours.norm()) < float(random_res.norm(dim=1).min())
    assert sel.diagnostics["residual"] < 0.05


def test_per_class_per_gradient_slice_equals_the_embedders_bias_weight_columns():
    data, model = tiny_problem(0), tiny_model(0)
    emb_bw = GradientEmbedder(model, "cpu").embed(data.train, kind="bias_weight", return_features=True)
    C, D = 4, 16
    for c in range(C):
        hand = torch.cat([emb_bw.grads[:, c : c + 1], emb_bw.grads[:, C + c * D : C + (c + 1) * D]], dim=1)
        ours = class_gradient_slice(emb_bw.grads[:, :C], emb_bw.features, c)
        assert torch.allclose(ours, hand, atol=1e-7, rtol=1e-6)


def test_per_class_per_gradient_solves_omp_on_the_class_slice():
    g = torch.Generator().manual_seed(1)
    x, y = _softmax_grads(300, 3, g)
    h = torch.relu(torch.randn(300, 6, generator=g, dtype=torch.float64))
    sel = gradmatch_selection(_emb(x, y, h), 30, 16, GradMatchConfig(), g)
    for c, members in enumerate(class_members(y, 3)):
        A = torch.cat([x[members, c : c + 1], x[members, c : c + 1] * h[members]], dim=1)  # by hand
        idx, w = nn_omp(A, A.sum(0), sel.diagnostics["budgets"][c], lam=0.5, eps=1e-100)
        got = {int(i): float(v) for i, v in zip(sel.indices, sel.weights) if int(y[i]) == c}
        want = {int(members[i]): float(v) for i, v in zip(idx, w)}
        assert set(want) <= set(got)
        for i, v in want.items():
            assert got[i] == pytest.approx(v, rel=1e-5)


# ------------------------------------------------------------------------ random fill


def test_random_fill_only_when_omp_stops_short_with_weight_one_and_no_duplicates():
    g = torch.Generator().manual_seed(2)
    # every member of a class has the same gradient: without ridge one atom matches the sum and
    # the rest are dependent on it, so OMP returns 1 atom per class and the fill completes k
    y = torch.arange(60) % 3
    x = F.one_hot(y, 3).double() * -0.5 + 0.2
    k = 12
    cfg = GradMatchConfig(variant="per_class", embedding="bias", lam=0.0)
    sel = gradmatch_selection(_emb(x, y), k, 16, cfg, g)
    d = sel.diagnostics
    assert d["omp_selected"] == 3 and d["random_fill"] == k - 3
    assert len(sel) == k == sel.indices.unique().numel()
    for c in range(3):
        in_c = y[sel.indices] == c
        assert int(in_c.sum()) == d["budgets"][c]
        w = sel.weights[in_c]
        assert int((w == 1.0).sum()) == d["budgets"][c] - 1  # the fill, same class, weight 1
        assert float(w.max()) > 1.0  # the OMP atom carries (nearly) the class sum
    # generic data: OMP fills the budget itself
    x2, y2 = _softmax_grads(300, 3, g)
    sel2 = gradmatch_selection(_emb(x2, y2), 30, 16, GradMatchConfig(variant="per_class", embedding="bias"), g)
    assert sel2.diagnostics["random_fill"] == 0 and sel2.diagnostics["omp_selected"] == 30


# ------------------------------------------------------------------------ targets and variants


def test_validation_target_is_rescaled_to_the_training_sum():
    """With validation embeddings equal to the training ones, both targets coincide."""
    g = torch.Generator().manual_seed(3)
    x, y = _softmax_grads(200, 4, g)
    h = torch.rand(200, 5, generator=g, dtype=torch.float64)
    for cfg in (GradMatchConfig(), GradMatchConfig(variant="per_class", embedding="bias")):
        a = gradmatch_selection(_emb(x, y, h), 20, 16, cfg, g)
        b = gradmatch_selection(_emb(x, y, h), 20, 16, cfg.model_validate({**cfg.model_dump(), "target": "val"}), g,
                                val=_emb(x, y, h))
        assert torch.equal(a.indices, b.indices)
        assert torch.allclose(a.weights, b.weights, rtol=1e-5)
        assert b.diagnostics["val_fallback"] == 0


def test_validation_target_needs_a_validation_split():
    s = GradMatchStrategy(target="val")
    assert s.capabilities.needs_validation and not GradMatchStrategy().capabilities.needs_validation
    data = tiny_problem(0)
    data.val = None
    with pytest.raises(DataError, match="validation split"):
        Trainer(tiny_trainer_config()).fit(s, tiny_model(0), data, 0)


def test_per_batch_plan_of_full_batches_and_default_select_every():
    assert GradMatchConfig(variant="per_batch").select_every is None
    # per batch: about 20 selections per run (every epoch of 20, CORDS' R = 1), else about 10
    assert GradMatchConfig(variant="per_batch").interval(20) == 1
    assert GradMatchConfig(variant="per_batch").interval(200) == 10
    assert GradMatchConfig().interval(20) == 2
    assert GradMatchConfig(variant="per_batch", select_every=4).interval(20) == 4
    cfg = GradMatchConfig(variant="per_batch")
    assert type(cfg).model_validate_json(cfg.model_dump_json()) == cfg
    g = torch.Generator().manual_seed(4)
    x, y = _softmax_grads(250, 4, g)
    h = torch.rand(250, 3, generator=g, dtype=torch.float64)
    order = random_partition(250, g)
    B, k = 16, 50
    sel = gradmatch_selection(_emb(x, y, h), k, B, cfg, g, order=order)
    m = math.ceil(k / B)
    assert len(sel.batches) == m and len(sel) == m * B
    rows = batch_rows(order, B)
    chunks = rows.tolist()
    for plan in sel.batches:
        assert sel.indices[plan].tolist() in chunks
        assert bool((sel.weights[plan] == sel.weights[plan][0]).all())
    sel.validate(250, "gradmatch", batch_size=B)
    means = batch_means(x, h, rows, "bias_weight")
    idx, w = nn_omp(means, means.sum(0), m, lam=0.5, eps=1e-100)
    firsts = [float(sel.weights[p][0]) for p in sel.batches[: idx.numel()]]
    assert firsts == pytest.approx(w.tolist(), rel=1e-5)


def test_batch_means_of_full_batches_equal_the_means_of_their_rows():
    g = torch.Generator().manual_seed(1)
    x, _ = _softmax_grads(21, 3, g)
    h = torch.rand(21, 2, generator=g, dtype=torch.float64)
    rows = batch_rows(torch.randperm(21, generator=g), 8)
    assert rows.shape == (3, 8) and rows[2, 5:].tolist() == rows[0, :3].tolist()
    got = batch_means(x, h, rows, "bias_weight")
    for b in range(3):
        r = rows[b]
        ref = torch.cat([x[r].mean(0), (x[r].unsqueeze(2) * h[r].unsqueeze(1)).flatten(1).mean(0)])
        assert torch.allclose(got[b], ref)


def test_config_rejects_slice_without_weight_gradient():
    with pytest.raises(ConfigError, match="bias_weight"):
        registry.make_config({"name": "gradmatch", "embedding": "bias"})
    with pytest.raises(ConfigError, match="lam"):
        registry.make_config({"name": "gradmatch", "lam": -1})


def test_strategy_counts_forwards_and_reports_diagnostics():
    s = GradMatchStrategy(target="val")
    ctx, state = _ctx(s)
    sel = s.select(state)
    assert ctx.meters.forward_examples == len(ctx.train) + len(ctx.val)
    assert sum(sel.diagnostics["budgets"]) == len(sel) == ctx.budget.subset_size
    assert set(sel.diagnostics) >= {"omp_selected", "random_fill", "residual", "max_weight_ratio", "clipped"}


# ------------------------------------------------------------------------ conformance of variants


class TestGradMatchPerBatchConformance(StrategyConformance):
    strategy = {"name": "gradmatch", "variant": "per_batch"}


class TestGradMatchPerClassValConformance(StrategyConformance):
    strategy = {"name": "gradmatch", "variant": "per_class", "target": "val", "max_weight": 5.0}
