"""Glister: Taylor gains and logit updates against autograd on a tiny linear model, the greedy
against a brute-force autograd greedy, quotas, validation requirement, conformance."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from strategies.glister import (
    GlisterConfig,
    GlisterStrategy,
    glister_greedy,
    glister_selection,
    step_logits,
    taylor_gains,
    validation_gradient,
    virtual_step_size,
)
from subsetlab.embeddings import Embeddings
from subsetlab.errors import DataError
from subsetlab.protocol import (
    Budget,
    TrainState,
)
from subsetlab.testing import (
    StrategyConformance,
    make_context,
    tiny_model,
    tiny_problem,
    tiny_trainer_config,
)
from subsetlab.trainer import Trainer

C, D = 3, 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _linear_problem(seed: int = 0, n: int = 12, n_val: int = 15):
    """A float64 linear model (its input is the last layer's feature) and its closed-form data."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(D, C).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(C, D, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(C, generator=g, dtype=torch.float64))
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    xv = torch.randn(n_val, D, generator=g, dtype=torch.float64)
    yv = torch.randint(0, C, (n_val,), generator=g)
    with torch.no_grad():
        gtr = torch.softmax(model(x), 1) - F.one_hot(y, C).double()
        zv = model(xv)
    return model, x, y, xv, yv, gtr, zv


def _stepped(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, eta: float, weight: bool) -> nn.Linear:
    """The model after one real SGD step on the summed loss of (x, y) (bias only unless weight)."""
    loss = F.cross_entropy(model(x), y, reduction="sum")
    gw, gb = torch.autograd.grad(loss, [model.weight, model.bias])
    new = nn.Linear(D, C).double()
    with torch.no_grad():
        new.weight.copy_(model.weight - eta * gw if weight else model.weight)
        new.bias.copy_(model.bias - eta * gb)
    return new


def _val_loss(model: nn.Linear, xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(xv), yv)


def _val_loss_value(model: nn.Linear, xv: torch.Tensor, yv: torch.Tensor) -> float:
    with torch.no_grad():
        return float(_val_loss(model, xv, yv))


# ------------------------------------------------------------------------ the pieces vs autograd


def test_validation_gradient_matches_autograd():
    model, _, _, xv, yv, _, zv = _linear_problem()
    gw, gb = torch.autograd.grad(_val_loss(model, xv, yv), [model.weight, model.bias])
    g_val, G_val = validation_gradient(zv, yv, xv)
    assert torch.allclose(g_val, gb, atol=1e-14) and torch.allclose(G_val, gw, atol=1e-14)


@pytest.mark.parametrize("weight", [False, True], ids=["bias", "bias_weight"])
def test_gain_is_the_first_order_decrease_of_the_validation_loss(weight: bool):
    model, x, y, xv, yv, gtr, zv = _linear_problem()
    g_val, G_val = validation_gradient(zv, yv, xv if weight else None)
    gains = taylor_gains(gtr, x if weight else None, g_val, G_val)
    with torch.no_grad():
        before = float(_val_loss(model, xv, yv))
    for eta in (1e-4, 1e-6):
        finite = torch.tensor(dtype=torch.float64, data=[
            (before - _val_loss_value(_stepped(model, x[i : i + 1], y[i : i + 1], eta, weight), xv, yv)) / eta
            for i in range(x.shape[0])
        ])
        # the second-order remainder shrinks with eta
        tol = 50 * eta * float(gains.abs().max())
        assert torch.allclose(finite, gains, atol=tol, rtol=0), (eta, (finite - gains).abs().max())


@pytest.mark.parametrize("weight", [False, True], ids=["bias", "bias_weight"])
def test_logit_update_equals_the_model_after_one_real_step(weight: bool):
    model, x, y, xv, _, gtr, zv = _linear_problem(1)
    chosen = torch.tensor([3, 0, 7, 5])
    eta = 0.37
    ours = step_logits(zv, xv if weight else None, gtr[chosen], x[chosen] if weight else None, eta)
    real = _stepped(model, x[chosen], y[chosen], eta, weight)
    with torch.no_grad():
        real = real(xv)
    assert torch.allclose(ours, real, atol=1e-12, rtol=0)


@pytest.mark.parametrize("optimizer", ["naive", "stochastic", "r_round"])
@pytest.mark.parametrize("weight", [False, True], ids=["bias", "bias_weight"])
def test_greedy_final_logits_equal_one_real_step_on_the_chosen_set(optimizer: str, weight: bool):
    model, x, y, xv, yv, gtr, zv = _linear_problem(2, n=40)
    eta = 0.2
    res = glister_greedy(
        gtr, zv, yv, 9, eta, h=x if weight else None, h_val=xv if weight else None,
        optimizer=optimizer, rounds=3, generator=torch.Generator().manual_seed(0),
    )
    assert res.ranking.unique().numel() == 9
    real = _stepped(model, x[res.ranking], y[res.ranking], eta, weight)
    with torch.no_grad():
        assert torch.allclose(res.z_val, real(xv), atol=1e-11, rtol=0)
        assert res.val_loss_after == pytest.approx(_val_loss_value(real, xv, yv), rel=1e-12)
    assert res.val_loss == pytest.approx(float(F.cross_entropy(zv, yv)), rel=1e-12)


@pytest.mark.parametrize("weight", [False, True], ids=["bias", "bias_weight"])
def test_naive_greedy_equals_a_brute_force_autograd_greedy(weight: bool):
    """Each pick maximises grad L_i(theta) . grad L_V(theta_S), theta_S = theta after a real
    step on the picks so far (autograd for everything)."""
    model, x, y, xv, yv, gtr, zv = _linear_problem(3)
    eta, k = 0.5, 5
    params = [model.weight, model.bias] if weight else [model.bias]
    cand_grads = [torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum"), params)
                  for i in range(x.shape[0])]
    picked: list[int] = []
    for _ in range(k):
        cur = _stepped(model, x[picked], y[picked], eta, weight) if picked else model
        vparams = [cur.weight, cur.bias] if weight else [cur.bias]
        gv = torch.autograd.grad(_val_loss(cur, xv, yv), vparams)
        gains = torch.tensor([sum(float((a * b).sum()) for a, b in zip(cg, gv)) for cg in cand_grads])
        gains[picked] = float("-inf")
        picked.append(int(torch.argmax(gains)))
    res = glister_greedy(gtr, zv, yv, k, eta, h=x if weight else None, h_val=xv if weight else None, optimizer="naive")
    assert res.ranking.tolist() == picked


@pytest.mark.parametrize("weight", [False, True], ids=["bias", "bias_weight"])
def test_running_mean_greedy_equals_a_brute_force_greedy_on_the_mean_loss_look_ahead(weight: bool):
    """virtual_step="running_mean": each pick maximises grad L_i(theta) . grad L_V(theta_S),
    theta_S = theta after one real step of eta on the *mean* loss of the picks so far; the
    final logits are that step on the chosen set (autograd for everything)."""
    model, x, y, xv, yv, gtr, zv = _linear_problem(7, n=14)
    eta, k = 0.9, 5
    params = [model.weight, model.bias] if weight else [model.bias]
    cand_grads = [torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum"), params)
                  for i in range(x.shape[0])]
    picked: list[int] = []
    for _ in range(k):
        # a step of eta on the mean loss = a step of eta / |S| on the summed loss
        cur = _stepped(model, x[picked], y[picked], eta / len(picked), weight) if picked else model
        vparams = [cur.weight, cur.bias] if weight else [cur.bias]
        gv = torch.autograd.grad(_val_loss(cur, xv, yv), vparams)
        gains = torch.tensor([sum(float((a * b).sum()) for a, b in zip(cg, gv)) for cg in cand_grads])
        gains[picked] = float("-inf")
        picked.append(int(torch.argmax(gains)))
    res = glister_greedy(
        gtr, zv, yv, k, eta, h=x if weight else None, h_val=xv if weight else None, optimizer="naive", running=True
    )
    assert res.ranking.tolist() == picked
    real = _stepped(model, x[res.ranking], y[res.ranking], eta / k, weight)
    with torch.no_grad():
        assert torch.allclose(res.z_val, real(xv), atol=1e-11, rtol=0)


def test_virtual_step_sizes_per_pick():
    assert virtual_step_size("sum", 0.1, 50, 16) == 0.1
    assert virtual_step_size("running_mean", 0.1, 50, 16) == 0.1
    assert virtual_step_size("mean", 0.1, 50, 16) == pytest.approx(0.1 / 50)
    assert virtual_step_size("epoch", 0.1, 50, 16) == pytest.approx(0.1 / 16)
    assert virtual_step_size("epoch", 0.1, 50) == pytest.approx(0.1 / 50)


def test_r_round_with_one_pick_per_round_is_the_naive_greedy_and_one_round_is_top_k():
    _, x, _, xv, yv, gtr, zv = _linear_problem(4, n=30)
    naive = glister_greedy(gtr, zv, yv, 8, 0.3, h=x, h_val=xv, optimizer="naive")
    rr = glister_greedy(gtr, zv, yv, 8, 0.3, h=x, h_val=xv, optimizer="r_round", rounds=8)
    assert rr.ranking.tolist() == naive.ranking.tolist()
    one = glister_greedy(gtr, zv, yv, 8, 0.3, h=x, h_val=xv, optimizer="r_round", rounds=1)
    g_val, G_val = validation_gradient(zv, yv, xv)
    top = torch.topk(taylor_gains(gtr, x, g_val, G_val), 8).indices
    assert sorted(one.ranking.tolist()) == sorted(top.tolist())


# ------------------------------------------------------------------------ quotas and selections


@pytest.mark.parametrize("optimizer", ["naive", "stochastic", "r_round"])
def test_class_quotas_are_met_exactly_and_weights_are_one(optimizer: str):
    g = torch.Generator().manual_seed(5)
    n, k = 200, 30
    y = torch.randint(0, C, (n,), generator=g)
    y[:3] = torch.arange(C)
    gtr = torch.softmax(torch.randn(n, C, generator=g), 1) - F.one_hot(y, C).float()
    yv = torch.randint(0, C, (40,), generator=g)
    emb = Embeddings(gtr, torch.zeros(n), y, y, torch.arange(n) + 1000)
    val = Embeddings(torch.zeros(40, C), torch.zeros(40), yv, yv, torch.arange(40),
                     logits=torch.randn(40, C, generator=g))
    cfg = GlisterConfig(optimizer=optimizer, rounds=4)
    sel = glister_selection(emb, val, k, 0.1, cfg, g)
    counts = torch.bincount(y[sel.indices - 1000], minlength=C)
    assert counts.tolist() == sel.diagnostics["budgets"] == sel.diagnostics["class_counts"]
    assert sum(sel.diagnostics["budgets"]) == k == len(sel) == sel.indices.unique().numel()
    assert bool((sel.weights == 1).all()) and sel.batches is None
    whole = glister_selection(emb, val, k, 0.1, GlisterConfig(optimizer=optimizer, per_class=False, rounds=4), g)
    assert len(whole) == k == whole.indices.unique().numel() and "budgets" not in whole.diagnostics


def test_stochastic_greedy_is_reproducible_from_the_generator():
    *_, yv, gtr, zv = _linear_problem(6, n=60)
    runs = [glister_greedy(gtr, zv, yv, 6, 0.1, optimizer="stochastic", generator=torch.Generator().manual_seed(s))
            for s in (0, 0, 1)]
    assert torch.equal(runs[0].ranking, runs[1].ranking)


# ------------------------------------------------------------------------ the strategy


def test_needs_validation_and_the_trainer_refuses_a_run_without_it():
    assert GlisterStrategy.capabilities.needs_validation
    data = tiny_problem(0)
    data.val = None
    with pytest.raises(DataError, match="validation split"):
        Trainer(tiny_trainer_config()).fit(GlisterStrategy(), tiny_model(0), data, 0)


def test_strategy_steps_at_the_current_learning_rate_and_counts_forwards():
    data, model = tiny_problem(0), tiny_model(0)
    budget = Budget.make(len(data.train), 0.25, 16, 3)
    ctx = make_context(data, model, budget, 0)
    s = GlisterStrategy(embedding="bias_weight")
    s.setup(ctx)
    sel = s.select(TrainState(0, 0, budget.steps_per_epoch, budget.total_steps, 0.0123, model, 0))
    assert sel.diagnostics["eta"] == 0.0123
    assert sel.diagnostics["val_loss_after"] < sel.diagnostics["val_loss"]
    assert ctx.meters.forward_examples == len(data.train) + len(data.val)
    assert len(sel) == budget.subset_size and bool((sel.weights == 1).all())
    m = GlisterStrategy(virtual_step="mean")
    m.setup(ctx)
    sel = m.select(TrainState(0, 0, budget.steps_per_epoch, budget.total_steps, 0.0123, model, 0))
    assert sel.diagnostics["eta"] == pytest.approx(0.0123 / budget.subset_size)
    e = GlisterStrategy(virtual_step="epoch")
    e.setup(ctx)
    sel = e.select(TrainState(0, 0, budget.steps_per_epoch, budget.total_steps, 0.0123, model, 0))
    assert sel.diagnostics["eta"] == pytest.approx(0.0123 / 16)  # lr / B


def test_default_interval_is_about_twenty_selections_per_run():
    assert GlisterConfig().select_every is None
    assert [GlisterConfig().interval(e) for e in (10, 20, 30, 200)] == [1, 1, 2, 10]
    assert GlisterConfig(select_every_fraction=0.1).interval(20) == 2
    assert GlisterConfig(select_every=4).interval(20) == 4


# ------------------------------------------------------------------------ conformance of variants


class TestGlisterBiasWeightNaiveConformance(StrategyConformance):
    strategy = {"name": "glister", "embedding": "bias_weight", "optimizer": "naive", "select_every": 1}


class TestGlisterWholeSetRRoundConformance(StrategyConformance):
    strategy = {"name": "glister", "optimizer": "r_round", "per_class": False}
