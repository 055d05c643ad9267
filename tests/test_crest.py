"""CREST: quotas, subset draws, coresets against brute force, the quadratic model, the trigger,
T1/P, dropping, accounting and conformance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from strategies._crest_drop import LossRecords, examples_to_drop
from strategies._crest_quadratic import (
    QuadraticModel,
    gradient_and_hessian_diagonal,
    rademacher,
)
from strategies._crest_subsets import (
    ClassPool,
    allocate_quotas,
    draw_subsets,
    minibatch_coresets,
    subset_quotas,
)
from strategies.crest import CrestConfig, CrestStrategy, next_t1_and_p
from strategies.random import stratified_quotas
from subsetlab import registry
from subsetlab.errors import ConfigError
from subsetlab.protocol import (
    Budget,
    TrainState,
)
from subsetlab.submodular import facility_location
from subsetlab.submodular import similarity as fl_similarity
from subsetlab.testing import (
    TinyProblem,
    check_strategy,
    make_context,
    tiny_model,
    tiny_problem,
    tiny_trainer_config,
)
from subsetlab.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _ctx(strategy: CrestStrategy, problem: TinyProblem | None = None, seed: int = 0, model: nn.Module | None = None):
    """Set ``strategy`` up on the tiny problem outside the trainer (as the conformance checks do)."""
    problem = problem or TinyProblem()
    data = tiny_problem(seed, problem)
    model = model if model is not None else tiny_model(seed, problem)
    budget = Budget.make(problem.n_train, problem.fraction, problem.batch_size, problem.epochs)
    ctx = make_context(data, model, budget, seed)
    strategy.setup(ctx)
    state = TrainState(0, 0, budget.steps_per_epoch, budget.total_steps, 0.05, model, 0)
    return ctx, state


def _fit(spec, seed: int = 0, problem: TinyProblem | None = None, **trainer_overrides):
    problem = problem or TinyProblem()
    strategy = registry.create(spec)
    trainer = Trainer(tiny_trainer_config(problem, **trainer_overrides))
    result = trainer.fit(strategy, tiny_model(seed, problem), tiny_problem(seed, problem), seed)
    assert result.ok, result.error
    return result, strategy


# ------------------------------------------------------------------------------ quotas


def test_quotas_sum_to_m_with_scarce_and_empty_classes() -> None:
    counts = torch.tensor([[0, 1, 10, 5], [3, 0, 0, 13], [2, 2, 2, 2], [0, 0, 0, 7]])
    q = allocate_quotas(counts, 8)
    assert q.sum(1).tolist() == [8, 8, 8, 7]  # the last row holds only 7
    assert bool((q <= counts).all()) and bool((q[counts == 0] == 0).all())
    # Proportional where nothing binds: row 0 -> 1/16*8 = 0.5, 5, 2.5 -> largest remainder.
    assert q[0].tolist() == [0, 1, 5, 2] or q[0].sum() == 8
    # Proportions that ask more of a class than it holds: the shortfall goes elsewhere.
    prop = torch.tensor([0.7, 0.1, 0.1, 0.1])
    q2 = allocate_quotas(torch.tensor([1, 4, 4, 4]), 10, prop)
    assert int(q2[0]) == 1 and int(q2.sum()) == 10 and bool((q2 <= torch.tensor([1, 4, 4, 4])).all())
    # No proportion left among the classes with room: spread evenly instead of failing.
    q3 = allocate_quotas(torch.tensor([2, 5, 5]), 6, torch.tensor([1.0, 0.0, 0.0]))
    assert q3.tolist() == [2, 2, 2]


def _reference_quotas(counts: list[int], m: int) -> list[int]:
    """Plain-loop largest remainder in exact integers (ties to the lower class id)."""
    total = sum(counts)
    m = min(m, total)
    q = [c * m // total for c in counts]
    rem = [c * m - qc * total for c, qc in zip(counts, q)]
    for c in sorted(range(len(counts)), key=lambda c: (-rem[c], c))[: m - sum(q)]:
        q[c] += 1
    return q


def test_quotas_match_the_plain_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 30, (200, 7), generator=g)
    for m in (1, 5, 16, 40):
        q = allocate_quotas(counts, m)
        for p in range(counts.shape[0]):
            assert q[p].tolist() == _reference_quotas(counts[p].tolist(), m), (m, counts[p])


def test_subset_quotas_keep_every_present_class() -> None:
    q = subset_quotas(torch.tensor([1000, 2, 0, 1]), 10)
    assert q.tolist()[1:] == [1, 0, 1] and int(q.sum()) == 10
    assert int(subset_quotas(torch.tensor([3, 2]), 50).sum()) == 5  # clamped to the pool


# ------------------------------------------------------------------------------ subset draw


def test_draw_subsets_is_stratified_distinct_in_pool_and_uniform() -> None:
    labels = torch.arange(300) % 3
    mask = torch.ones(300, dtype=torch.bool)
    mask[:60] = False
    pool = ClassPool(labels, mask, 3)
    g = torch.Generator().manual_seed(1)
    subsets, col_cls = draw_subsets(pool, 4000, 30, g)
    assert subsets.shape == (4000, 30)
    assert bool(mask[subsets].all())
    assert torch.equal(labels[subsets], col_cls.expand_as(subsets))
    assert all(len(set(row)) == 30 for row in subsets[:200].tolist())
    freq = torch.bincount(subsets.flatten(), minlength=300)[60:].double() / 4000
    assert abs(float(freq.mean()) - 30 / 240) < 1e-9
    assert float((freq - 30 / 240).abs().max()) < 0.03  # binomial sd ~0.005


def test_draw_subsets_dense_classes_and_determinism() -> None:
    labels = torch.tensor([0] * 3 + [1] * 50)
    pool = ClassPool(labels, torch.ones(53, dtype=torch.bool), 2)
    a, _ = draw_subsets(pool, 6, 40, torch.Generator().manual_seed(5))
    b, _ = draw_subsets(pool, 6, 40, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    for row in a.tolist():
        assert len(set(row)) == 40 and {0, 1, 2} <= set(row)  # the dense class is taken whole


# ------------------------------------------------------------------------------ coresets


def test_minibatch_coresets_handle_empty_and_scarce_classes() -> None:
    # Subset 0 has no member of class 2; subset 1 has a single member of class 0.
    labels = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 2, 2, 2, 2, 2]])
    subsets = torch.arange(16).view(2, 8)
    emb = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(0))
    cs = minibatch_coresets(subsets, labels, emb, 5, 3)
    assert cs.indices.shape == (2, 5) and cs.weights.shape == (2, 5)
    assert torch.allclose(cs.weights.sum(1), torch.tensor([8.0, 8.0]))  # cluster sizes cover V_p
    for p in range(2):
        assert len(set(cs.indices[p].tolist())) == 5
        chosen_labels = labels[p, cs.positions[p]]
        expect = stratified_quotas(torch.bincount(labels[p], minlength=3), 5)
        assert torch.equal(torch.bincount(chosen_labels, minlength=3), expect)


@pytest.mark.parametrize("similarity", ["exp", "max_minus_dist"])
def test_coresets_equal_brute_force_per_subset_per_class(similarity: str) -> None:
    """The union of coresets is what plain loops over subsets and classes pick, with the same weights."""
    strategy = registry.create({"name": "crest", "r_fraction": 0.25, "p_init": 4, "similarity": similarity})
    ctx, _ = _ctx(strategy)
    rnd = strategy.draw_round(strategy.P)
    cs = strategy.select_coresets(rnd)
    emb = ctx.embedder.embed(ctx.train, rnd.subsets.flatten())
    E, Y = emb.grads.view(*rnd.subsets.shape, -1), emb.labels.view(rnd.subsets.shape)
    m = ctx.batch_size
    for p in range(rnd.subsets.shape[0]):
        quotas = stratified_quotas(torch.bincount(Y[p], minlength=4), m)
        expect: dict[int, float] = {}
        for c in range(4):
            cols = torch.nonzero(Y[p] == c).squeeze(1)
            if int(quotas[c]) == 0:
                continue
            res = facility_location(fl_similarity(E[p, cols], similarity), int(quotas[c]), optimizer="naive")
            for j, w in zip(res.ranking.tolist(), res.weights.tolist()):
                expect[int(rnd.subsets[p, cols[j]])] = w
        got = dict(zip(cs.indices[p].tolist(), cs.weights[p].tolist()))
        assert got.keys() == expect.keys(), p
        for i, w in got.items():
            assert w == pytest.approx(expect[i]), (p, i)


def test_selection_weights_plan_and_diagnostics() -> None:
    strategy = registry.create({"name": "crest", "r_fraction": 0.25, "preset": "release"})
    ctx, state = _ctx(strategy)
    sel = strategy.select(state)
    P, m = strategy.config.p_init, ctx.batch_size
    assert len(sel) == P * m and len(sel.batches) == P
    assert torch.equal(torch.cat(sel.batches), torch.arange(P * m))
    assert float(sel.weights.mean()) == pytest.approx(1.0)
    assert sel.diagnostics["P"] == P and sel.diagnostics["r"] == 60 and sel.diagnostics["pool"] == 240
    assert sel.diagnostics["union"] <= P * 60
    shuffle = registry.create({"name": "crest", "r_fraction": 0.25, "batch_mode": "shuffle", "preset": "release"})
    _, state2 = _ctx(shuffle)
    assert shuffle.select(state2).batches is None


# ------------------------------------------------------------------------------ quadratic model


def test_hutchinson_converges_to_the_exact_hessian_diagonal() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(12, 3, generator=g), torch.randint(0, 3, (12,), generator=g)
    params = list(model.parameters())
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        ws, s = [], 0
        for shp in shapes:
            n = math.prod(shp)
            ws.append(flat[s : s + n].view(shp))
            s += n
        h = torch.tanh(F.linear(x, ws[0], ws[1]))
        return F.cross_entropy(F.linear(h, ws[2], ws[3]), y)

    exact = torch.autograd.functional.hessian(loss_of, flat0).diagonal()
    probes = [rademacher(flat0.numel(), g, torch.device("cpu")) for _ in range(1000)]
    errs = {}
    for k in (10, 100, 1000):
        _, d = gradient_and_hessian_diagonal(params, [lambda: F.cross_entropy(model(x), y)], probes[:k])
        errs[k] = float((d - exact).norm() / exact.norm())
    # The error shrinks like 1/sqrt(k) (off-diagonal mass is 2.3x the diagonal here).
    assert errs[1000] < errs[100] < errs[10]
    assert errs[1000] < 0.1 and errs[10] > 3 * errs[1000]
    # Chunking the loss with the same probes gives the same estimate (and the same gradient).
    full_g, full_d = gradient_and_hessian_diagonal(params, [lambda: F.cross_entropy(model(x), y)], probes[:5])
    halves = [lambda s=s: F.cross_entropy(model(x[s : s + 6]), y[s : s + 6], reduction="sum") / 12 for s in (0, 6)]
    ch_g, ch_d = gradient_and_hessian_diagonal(params, halves, probes[:5])
    assert torch.allclose(full_g, ch_g, atol=1e-6) and torch.allclose(full_d, ch_d, atol=1e-6)


def test_quadratic_model_hand_computed_values_and_bias_correction() -> None:
    eps = 1e-4
    delta = torch.tensor([0.1, 0.2])
    ema = QuadraticModel(2, betas=(0.9, 0.999), eps=eps, smoothing="ema")
    rms = QuadraticModel(2, betas=(0.9, 0.999), eps=eps, smoothing="rms")
    for q in (ema, rms):
        q.update(torch.tensor([1.0, 2.0]), torch.tensor([3.0, -4.0]), 5.0)
    # One update: the bias correction recovers g and D exactly.
    assert ema.predict(delta) == pytest.approx(5.0 + 0.1 + 0.4 + 0.5 * ((3 + eps) * 0.01 + (-4 + eps) * 0.04), abs=1e-6)
    assert rms.predict(delta) == pytest.approx(5.0 + 0.5 + 0.5 * ((3 + eps) * 0.01 + (4 + eps) * 0.04), abs=1e-6)
    for q in (ema, rms):
        q.update(torch.tensor([3.0, 0.0]), torch.tensor([1.0, 1.0]), 2.0)
    g_hat = [(0.9 * 0.1 * 1 + 0.1 * 3) / 0.19, (0.9 * 0.1 * 2 + 0.1 * 0) / 0.19]
    c = 1 - 0.999**2
    h_ema = [(0.999 * 0.001 * 3 + 0.001 * 1) / c + eps, (0.999 * 0.001 * -4 + 0.001 * 1) / c + eps]
    h_rms = [math.sqrt((0.999 * 0.001 * 9 + 0.001 * 1) / c) + eps, math.sqrt((0.999 * 0.001 * 16 + 0.001) / c) + eps]
    lin = g_hat[0] * 0.1 + g_hat[1] * 0.2
    assert ema.predict(delta) == pytest.approx(2.0 + lin + 0.5 * (h_ema[0] * 0.01 + h_ema[1] * 0.04), abs=1e-6)
    assert rms.predict(delta) == pytest.approx(2.0 + lin + 0.5 * (h_rms[0] * 0.01 + h_rms[1] * 0.04), abs=1e-6)
    assert ema.hessian_norm() == pytest.approx(math.hypot(*h_ema), rel=1e-6)


def test_quadratic_model_is_exact_on_a_quadratic_loss() -> None:
    """A separable quadratic loss: Hutchinson is exact, so F(delta) = L(w0 + delta) up to eps."""
    a = torch.tensor([2.0, 0.5, 3.0, 1.0])
    c = torch.tensor([1.0, -1.0, 0.5, 0.0])
    w = nn.Parameter(torch.tensor([0.3, -0.2, 0.1, 0.4]))

    def loss() -> torch.Tensor:
        return 0.5 * (a * w * w).sum() + (c * w).sum() + 1.5

    g = torch.Generator().manual_seed(0)
    grad, diag = gradient_and_hessian_diagonal([w], [loss], [rademacher(4, g, torch.device("cpu"))])
    assert torch.allclose(diag, a) and torch.allclose(grad, a * w.detach() + c)
    q = QuadraticModel(4, eps=0.0)
    q.update(grad, diag, float(loss()))
    delta = torch.tensor([0.5, -1.0, 0.25, 2.0])
    with torch.no_grad():
        w0 = w.detach().clone()
        w.add_(delta)
        truth = float(loss())
        w.copy_(w0)
    assert q.predict(delta) == pytest.approx(truth, abs=1e-5)


def test_fit_uses_eval_mode_and_leaves_batchnorm_statistics_alone() -> None:
    problem = TinyProblem()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    strategy = registry.create({"name": "crest", "r_fraction": 0.25, "preset": "release"})
    _, state = _ctx(strategy, problem, model=model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    strategy.select(state)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # Right after the fit delta = 0, so F(0) = L0 and the check reproduces L0 exactly.
    rho, _, f_delta, _ = strategy.measure_rho()
    assert f_delta == pytest.approx(strategy.quad_.loss0) and rho == pytest.approx(0.0, abs=1e-6)


def test_last_layer_curvature_models_only_the_output_layer() -> None:
    full = registry.create({"name": "crest", "r_fraction": 0.25, "preset": "release"})
    last = registry.create({"name": "crest", "r_fraction": 0.25, "curvature": "last_layer", "preset": "release"})
    _, s1 = _ctx(full)
    _, s2 = _ctx(last)
    full.select(s1)
    last.select(s2)
    n_last = 16 * 4 + 4
    assert last.quad_.m.numel() == n_last
    assert torch.allclose(full.quad_.m[-n_last:], last.quad_.m, atol=1e-6)  # same g on the last layer
    # The last-layer fit reuses the selection's forward pass: no forward of its own (the full
    # fit forwards its P * m rows once more).
    assert last.ctx.meters.forward_examples + 5 * 16 == full.ctx.meters.forward_examples


# ------------------------------------------------------------------------------ trigger, T1, P


def test_t1_and_p_rule() -> None:
    assert next_t1_and_p(10.0, 10.0, 1.0, 5, 40, 40) == (1, 5)
    assert next_t1_and_p(10.0, 4.0, 1.0, 5, 40, 40) == (3, 15)  # ceil(2.5)
    assert next_t1_and_p(10.0, 2.0, 2.0, 5, 40, 40) == (10, 40)  # P capped at S
    assert next_t1_and_p(10.0, 40.0, 1.0, 5, 40, 40) == (1, 5)  # T1 >= 1
    assert next_t1_and_p(10.0, 0.01, 1.0, 5, 40, 25) == (25, 40)  # T1 <= t1_max
    assert next_t1_and_p(10.0, 0.0, 1.0, 5, 3, 7) == (7, 3)
    assert next_t1_and_p(1.0, 1.0, 1.0, 1, 0, 5)[1] == 1  # P >= 1


@pytest.mark.parametrize("reference", ["first", "warmup_end"])
def test_t1_and_p_follow_known_hessian_norms(reference: str, monkeypatch) -> None:
    spec = {"name": "crest", "r_fraction": 0.25, "h": 1.5, "b": 2, "h0_reference": reference, "h0_after_epochs": 0.5}
    strategy = registry.create(spec)
    ctx, _ = _ctx(strategy)
    S = ctx.budget.steps_per_epoch  # 4
    norms = iter([1.0, 8.0, 8.0, 4.0, 2.0, 16.0])
    monkeypatch.setattr(strategy.quad_, "hessian_norm", lambda: next(norms))
    strategy._update_schedule(step=0, lr=0.1)  # before h0_after_epochs * S = 2 steps: not eligible
    assert math.isnan(strategy.h0_norm_)
    strategy._update_schedule(step=2, lr=0.1)  # eligible; no previous lr known yet
    if reference == "first":
        assert strategy.h0_norm_ == 8.0
    else:
        assert math.isnan(strategy.h0_norm_)
        strategy.prev_lr_ = 0.05
        strategy._update_schedule(step=3, lr=0.1)  # lr still rising: warm-up not over
        assert math.isnan(strategy.h0_norm_)
        strategy.prev_lr_ = 0.1
        strategy._update_schedule(step=4, lr=0.1)  # flat: the reference fit
        assert strategy.h0_norm_ == 4.0
        norms = iter([4.0, 2.0, 16.0])
        monkeypatch.setattr(strategy.quad_, "hessian_norm", lambda: next(norms))
    assert (strategy.T1, strategy.P) == (1, 5)  # the reference fit does not move them
    h0 = strategy.h0_norm_
    for hn in ([8.0, 4.0, 2.0, 16.0] if reference == "first" else [4.0, 2.0, 16.0]):
        strategy._update_schedule(step=5, lr=0.1)
        t1 = min(S, max(1, math.ceil(1.5 * h0 / hn)))
        assert (strategy.T1, strategy.P) == (t1, min(2 * t1, S))


def test_larger_tau_never_selects_more() -> None:
    counts = [_fit({"name": "crest", "tau": tau})[0].selections["count"] for tau in (0.01, 0.1, 1.0)]
    assert counts == sorted(counts, reverse=True), counts
    assert counts[0] > counts[-1]


def test_checks_forward_only_the_union() -> None:
    problem = TinyProblem(n_train=2000, epochs=2, fraction=0.05)
    for spec in (
        {"name": "crest", "preset": "release"},
        {"name": "crest", "preset": "release", "check_size": 30},
        {"name": "crest", "preset": "release", "check_set": "fresh"},
        {"name": "crest", "preset": "release", "check_set": "fresh", "check_size": 30},
    ):
        result, strategy = _fit(spec, problem=problem)
        r = strategy.r_
        assert r == 20  # max(1% of 2000, B = 16, C = 4)
        n_checks = len(result.series["rho"])
        unions = [s["diagnostics"]["union"] for s in result.selections["log"]]
        assert n_checks > 0
        assert all(s["diagnostics"]["union"] <= s["diagnostics"]["P"] * r for s in result.selections["log"])
        # the fits forward their rows once (every coreset: fit_batches is None)
        fwd = result.work["forward_examples"] - result.work["backward_examples"]
        per_check_max = min(spec.get("check_size", 10**9), max(unions))
        if spec.get("check_set", "fixed") == "fixed":
            # selections forward their union once; each check at most the check set
            assert sum(unions) < fwd <= sum(unions) + n_checks * per_check_max
        else:
            # a fresh check forwards a new union (or check_size of it); the selection it
            # triggers completes that same union, never forwards a second one
            assert fwd <= unions[0] + n_checks * strategy.t1_max_ * strategy.config.b * r
            assert fwd >= unions[0] + n_checks * min(per_check_max, min(unions))
        assert fwd / (n_checks + len(unions)) < problem.n_train / 10


# ------------------------------------------------------------------------------ dropping


def test_dropping_respects_alpha_and_the_floor() -> None:
    rec = LossRecords(8, window=3)
    for losses in ([0.01, 0.02, 0.5, 0.03, 0.05, 0.04, 0.09, 0.06], [0.02, 0.01, 0.01, 0.2, 0.03, 0.01, 0.08, 0.05]):
        rec.record(torch.arange(8), torch.tensor(losses))
    rec.record(torch.tensor([0, 1, 4, 4]), torch.tensor([0.03, 0.01, 0.02, 0.07]))  # 4 twice: keeps 0.07
    pool = torch.ones(8, dtype=torch.bool)
    pool[7] = False
    # Example 2 and 3 went above alpha once: never dropped; 7 is out of the pool already.
    all_ok = examples_to_drop(rec, pool, alpha=0.1, min_records=2, floor=0)
    assert all_ok.nonzero().squeeze(1).tolist() == [0, 1, 4, 5, 6]
    # Floor 5 of a pool of 7: only 2 go, the lowest max-recorded losses (1: 0.02, 0: 0.03).
    clamp = examples_to_drop(rec, pool, alpha=0.1, min_records=2, floor=5)
    assert clamp.nonzero().squeeze(1).tolist() == [0, 1]
    assert examples_to_drop(rec, pool, alpha=0.1, min_records=3, floor=0).nonzero().squeeze(1).tolist() == [0, 1, 4]
    assert not bool(examples_to_drop(rec, pool, alpha=0.1, min_records=2, floor=7).any())
    # The window forgets: three more low losses for example 2 make it eligible.
    for _ in range(3):
        rec.record(torch.tensor([2]), torch.tensor([0.01]))
    assert bool(examples_to_drop(rec, pool, alpha=0.1, min_records=2, floor=0)[2])


def test_dropping_in_a_run_stops_at_the_floor_and_draws_from_the_pool() -> None:
    spec = {"name": "crest", "drop": True, "alpha": 100.0, "min_records": 1, "drop_interval": 1, "floor_fraction": 0.5}
    result, strategy = _fit(spec)
    assert strategy.pool_size == 120 and int(strategy.pool_.sum()) == 120
    pool = strategy.pool_
    # Decisions at the start of pseudo-epochs 1 and 2: only examples with a record can go.
    pools = [int(v) for _, v in result.series["pool_size"]]
    assert pools == sorted(pools, reverse=True) and min(pools) == 120 and pools[0] == 240
    assert 120 < pools[pools.index(min(pools)) - 1] < 240 or pools.count(120) == len(pools) - 2
    # A selection after the drop holds pool members only.
    sel = strategy.select(TrainState(99, 2, 4, 12, 0.05, strategy.ctx.model, 0))
    assert bool(pool[sel.indices].all())
    assert "dropping" in result.timings["strategy"]


# ------------------------------------------------------------------------------ contract


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="min_records"):
        registry.make_config({"name": "crest", "min_records": 6, "loss_window": 5})
    with pytest.raises(ConfigError, match="tau"):
        registry.make_config("crest[tau=0]")
    for name, field in CrestConfig.model_fields.items():
        assert field.description, name


def test_meters_series_and_timers() -> None:
    result, strategy = _fit({"name": "crest", "r_fraction": 0.25, "preset": "release"})
    for key in ("rho", "L_true", "F_delta", "T1", "P", "pool_size", "H_norm"):
        assert key in result.series, key
    for key in ("selection", "loss_approx", "checking"):
        assert result.timings["strategy"][key] > 0, key
    n_sel = result.selections["count"]
    assert len(result.series["T1"]) == n_sel and len(result.series["rho"]) >= n_sel - 1
    # every check either ends or keeps the coreset; selections after step 0 follow a check with rho > tau
    rho = {int(s): v for s, v in result.series["rho"]}
    for s in result.selections["log"][1:]:
        assert rho[s["step"]] > strategy.config.tau
    rows = sum(min(strategy.config.fit_batches or s["diagnostics"]["P"], s["diagnostics"]["P"]) * 16 for s in result.selections["log"])
    assert result.work["backward_examples"] == rows and result.work["hvp_examples"] == rows


@pytest.mark.parametrize(
    "spec",
    [
        "crest",
        {"name": "crest", "curvature": "head", "group": 2, "drop": True, "drop_interval": 1},
        {"name": "crest", "curvature": "last_layer", "fit": "coresets", "check_size": 8},
        "crest[preset=release]",
        {"name": "crest", "preset": "release", "drop": True, "batch_mode": "shuffle"},
        {"name": "crest", "preset": "release", "check_set": "fresh", "check_size": 20, "curvature": "last_layer", "drop": True, "drop_interval": 1},
    ],
    ids=["defaults", "head-group-drop", "lastlayer-coresetfit", "release", "release-drop-shuffle", "release-fresh-lastlayer-drop"],
)
def test_conformance(spec) -> None:
    check_strategy(spec)


def test_same_seed_same_run_different_seed_different_subsets() -> None:
    a, _ = _fit({"name": "crest", "drop": True, "drop_interval": 1})
    b, _ = _fit({"name": "crest", "drop": True, "drop_interval": 1})
    assert a.series == b.series and a.metrics == b.metrics
    s1, s2 = registry.create("crest"), registry.create("crest")
    _, st1 = _ctx(s1, seed=0)
    _, st2 = _ctx(s2, seed=1)
    assert not torch.equal(s1.select(st1).indices, s2.select(st2).indices)
