"""CREST's cheap faithful path (the default): lazy coresets, checks drawn ahead and reused, the
fit from the training step, T1 on the current curvature, batch-norm statistics, the head-only
curvature, and the release preset against the decisions of the old defaults."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from strategies._crest_quadratic import CurvatureTracker, QuadraticModel, head_hessian_diagonal
from strategies.crest import PRESETS, CrestConfig, CrestStrategy
from subsetlab import registry
from subsetlab.errors import ConfigError
from subsetlab.protocol import Budget, TrainState
from subsetlab.testing import TinyProblem, make_context, tiny_model, tiny_problem, tiny_trainer_config
from subsetlab.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).parent / "data" / "crest_release_decisions.json"
PROBLEM = TinyProblem(n_train=1200, epochs=6, fraction=0.1)  # S = 8 steps, r = 60 with r_fraction 0.05


def _fit(spec, seed: int = 0, problem: TinyProblem = PROBLEM, model: nn.Module | None = None, **trainer):
    strategy = registry.create(spec)
    model = model if model is not None else tiny_model(seed, problem)
    result = Trainer(tiny_trainer_config(problem, **trainer)).fit(strategy, model, tiny_problem(seed, problem), seed)
    assert result.ok, result.error
    return result, strategy


class _Spy:
    """Wraps ``strategy._forward`` to record the examples of every forward pass, with its caller."""

    def __init__(self, strategy: CrestStrategy) -> None:
        self.calls: list[tuple[str, torch.Tensor]] = []
        orig = strategy._forward

        def forward(indices, features=False):
            import inspect

            caller = inspect.stack()[2].function  # _forward <- _fill <- caller
            self.calls.append((caller, indices.detach().cpu().clone()))
            return orig(indices, features)

        strategy._forward = forward


# ------------------------------------------------------------------------------ config and presets


def test_presets_fill_only_what_is_not_given_and_combinations_are_checked() -> None:
    cfg = CrestConfig()
    for k, v in PRESETS["default"].items():
        assert getattr(cfg, k) == v, k
    rel = CrestConfig(preset="release", tau=0.2, check_size=64)
    assert rel.build == "eager" and rel.fit == "coresets" and rel.check_set == "fixed" and rel.h0_after_epochs == 1.0
    assert rel.tau == 0.2 and rel.check_size == 64  # explicit values win over the preset
    assert registry.make_config("crest[preset=release]").build == "eager"
    for bad, match in (
        ({"build": "lazy", "check_set": "fixed"}, "check_set='ahead'"),
        ({"preset": "release", "check_set": "ahead"}, "needs build='lazy'"),
        ({"batch_mode": "shuffle"}, "needs build='eager'"),
        ({"preset": "release", "fit": "step"}, "fit='step'"),
        ({"preset": "release", "curvature": "head"}, "curvature='head'"),
    ):
        with pytest.raises(ConfigError, match=match):
            registry.make_config({"name": "crest", **bad})


def test_release_preset_reproduces_the_old_defaults_decisions() -> None:
    """Recorded with the defaults of commit a8db7b0 (before the redesign) on the same seeds."""
    fixture = json.loads(FIXTURE.read_text())
    assert len(fixture["cases"]) == 4
    for case in fixture["cases"]:
        problem = TinyProblem(**case["problem"])
        result, _ = _fit({**case["spec"], "preset": "release"}, case["seed"], problem)
        assert [s["step"] for s in result.selections["log"]] == case["selection_steps"]
        for key, old in case["series"].items():
            new = result.series[key]
            assert [s for s, _ in new] == [s for s, _ in old], key
            assert [v for _, v in new] == pytest.approx([v for _, v in old], rel=1e-5, abs=1e-7), key
        assert result.metrics["final_acc"] == pytest.approx(case["final_acc"])


# ------------------------------------------------------------------------------ lazy coresets


def test_a_round_starts_with_one_coreset_and_extends_one_batch_at_a_time() -> None:
    problem = PROBLEM
    strategy = registry.create({"name": "crest", "r_fraction": 0.05, "tau": 100.0})  # never triggers
    data, model = tiny_problem(0, problem), tiny_model(0, problem)
    budget = Budget.make(problem.n_train, problem.fraction, problem.batch_size, problem.epochs)
    strategy.setup(make_context(data, model, budget, 0))
    st = TrainState(0, 0, budget.steps_per_epoch, budget.total_steps, 0.05, model, 0)
    sel = strategy.select(st)
    assert len(sel) == 16 and len(sel.batches) == 1 and not sel.extends
    assert sel.diagnostics["built"] == 1 and strategy.built_ == 1
    assert strategy.ahead_ is not None and strategy.ahead_.check_pos.numel() == 60  # check_size 64 > r: the whole subset
    # the trainer has not trained batch 1 yet: nothing to build
    assert not strategy.should_select(TrainState(0, 0, 8, 48, 0.05, model, 1))
    assert strategy.pending_fit_ is not None and strategy.quad_.t == 0  # g comes with the first step
    strategy.on_after_backward(TrainState(5, 0, 8, 48, 0.05, model, 1))  # another step's gradient: ignored
    assert strategy.pending_fit_ is not None
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    strategy.on_after_backward(st)
    assert strategy.pending_fit_ is None and strategy.quad_.t == 1
    st1 = TrainState(1, 0, 8, 48, 0.05, model, 1)
    assert strategy.should_select(st1)  # T1 = 1: a check (no trigger), then batch 1 is needed
    ext = strategy.select(st1)
    assert ext.extends and len(ext) == 16 and len(ext.batches) == 1 and strategy.built_ == 2


def test_a_run_that_triggers_before_batch_p_never_builds_coreset_p() -> None:
    result, strategy = _fit({"name": "crest", "r_fraction": 0.05, "tau": 1e-9})  # every check triggers
    log = result.selections["log"]
    steps = [e["step"] for e in log] + [result.work["steps"]]
    for e, end in zip(log, steps[1:]):
        length = end - e["step"]
        # a round of L steps built min(L, P) coresets: never the P the eager build makes
        assert e["diagnostics"]["built"] == min(length, e["diagnostics"]["P"]), e
        assert e["size"] == 16 * e["diagnostics"]["built"]
        assert e.get("extensions", 0) == e["diagnostics"]["built"] - 1
    assert all(e["diagnostics"]["P"] >= 5 for e in log)
    assert strategy.coresets_built_ == result.work["steps"]  # T1 = 1 while every check triggers


def test_checks_are_paired_with_l0_and_reused_by_the_round_they_trigger() -> None:
    spec = {"name": "crest", "r_fraction": 0.05, "check_size": 24, "hvp_rows": 8}
    strategy = registry.create(spec)
    spy = _Spy(strategy)
    result = Trainer(tiny_trainer_config(PROBLEM)).fit(strategy, tiny_model(0, PROBLEM), tiny_problem(0, PROBLEM), 0)
    assert result.ok, result.error
    r, q = strategy.r_, 24
    assert r == 60
    log = result.selections["log"]
    rounds, checks = len(log), len(result.series["rho"])
    built = sum(e["diagnostics"]["built"] for e in log)
    # every forward is counted: r per coreset, less the check rows a triggered round reuses,
    # q per check and per round (L0), and the fit's hvp_rows forward per round
    assert result.work["forward_examples"] == built * r - (rounds - 1) * q + checks * q + rounds * q + rounds * 8
    assert result.work["backward_examples"] == rounds * 8 == result.work["hvp_examples"]
    # the check set of a round is measured for L0 at the fit, at every check of the round, and
    # the next round completes exactly the rest of its subset
    calls = spy.calls
    assert [c for c, _ in calls].count("_select_lazy") == rounds
    n_rounds_seen = n_checks_seen = 0
    for j, (caller, l0) in enumerate(calls):
        if caller != "_select_lazy":  # the L0 forward of the next round's check set, at the fit
            continue
        assert l0.numel() == q
        k = j + 1
        while k < len(calls) and calls[k][0] not in ("complete_round", "_select_lazy"):
            if calls[k][0] == "_check":  # every check of the round measures the same examples
                assert torch.equal(calls[k][1], l0)
                n_checks_seen += 1
            else:  # lazily built coresets of the round: fresh subsets
                assert calls[k][0] == "draw_round" and calls[k][1].numel() == r
            k += 1
        if k < len(calls) and calls[k][0] == "complete_round":
            rest = calls[k][1]  # the triggered round forwards only the rest of that subset
            assert rest.numel() == r - q and not bool(torch.isin(rest, l0).any())
            n_rounds_seen += 1
    assert n_rounds_seen == rounds - 1 and n_checks_seen == checks


# ------------------------------------------------------------------------------ the fit


def test_fit_from_the_step_matches_the_double_backprop_fit() -> None:
    """g from the training step equals g by double backprop on the same coreset (atol 1e-6), and
    with hvp_rows covering the coreset the Hutchinson estimate is the same: identical runs."""
    step, s1 = _fit({"name": "crest", "r_fraction": 0.05, "hvp_rows": None})
    full, s2 = _fit({"name": "crest", "r_fraction": 0.05, "fit": "coresets"})
    assert torch.allclose(s1.quad_.m, s2.quad_.m, atol=1e-6, rtol=1e-5)
    assert torch.allclose(s1.quad_.v, s2.quad_.v, atol=1e-6, rtol=1e-5)
    assert [e["step"] for e in step.selections["log"]] == [e["step"] for e in full.selections["log"]]
    assert [v for _, v in step.series["rho"]] == pytest.approx([v for _, v in full.series["rho"]], rel=1e-4, abs=1e-6)
    # the step's gradient is free: the double-backprop fit back-propagates the rows once more
    assert step.work["backward_examples"] == full.work["backward_examples"]


def test_first_step_gradient_is_the_weighted_coreset_gradient() -> None:
    strategy = registry.create({"name": "crest", "r_fraction": 0.05})
    captured = {}
    orig = strategy.on_after_backward

    def spy(state):
        if strategy.pending_fit_ is not None and state.step == strategy.pending_fit_.step and "g" not in captured:
            captured["g"] = torch.cat([p.grad.detach().reshape(-1).clone() for p in strategy.params_])
            captured["params"] = [p.detach().clone() for p in strategy.params_]
            captured["sel"] = strategy_last["sel"]
        orig(state)

    strategy_last = {}
    sel_orig = strategy.select

    def sel_spy(state):
        s = sel_orig(state)
        strategy_last["sel"] = s
        return s

    strategy.on_after_backward, strategy.select = spy, sel_spy
    model = tiny_model(0, PROBLEM)
    data = tiny_problem(0, PROBLEM)
    Trainer(tiny_trainer_config(PROBLEM, epochs=1)).fit(strategy, model, data, 0)
    sel = captured["sel"]
    ref = tiny_model(0, PROBLEM)
    with torch.no_grad():
        for p, v in zip(ref.parameters(), captured["params"]):
            p.copy_(v)
    x, y = data.train.get(sel.indices)
    loss = (sel.weights * F.cross_entropy(ref(x), y, reduction="none")).mean()
    g = torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(loss, list(ref.parameters()))])
    assert torch.allclose(captured["g"], g, atol=1e-6)


def test_head_hessian_diagonal_is_exact() -> None:
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(5, 3)
    h, y = torch.randn(7, 5, generator=g), torch.randint(0, 3, (7,), generator=g)
    w = torch.rand(7, generator=g) + 0.5
    params = [head.weight, head.bias]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        W, b = flat[:15].view(3, 5), flat[15:]
        return (w * F.cross_entropy(F.linear(h, W, b), y, reduction="none")).sum() / 7

    flat0 = torch.cat([p.detach().reshape(-1) for p in params])
    exact = torch.autograd.functional.hessian(loss_of, flat0).diagonal()
    probs = torch.softmax(head(h), 1).detach()
    dw, db = head_hessian_diagonal(probs, h, w, 7.0)
    assert torch.allclose(torch.cat([dw.reshape(-1), db]), exact, atol=1e-6)


def test_head_curvature_models_every_parameter_with_output_layer_curvature() -> None:
    result, strategy = _fit({"name": "crest", "r_fraction": 0.05, "curvature": "head"})
    n = sum(p.numel() for p in tiny_model(0, PROBLEM).parameters())
    assert strategy.quad_.m.numel() == n  # g and delta over every parameter
    head = strategy.head_slices_
    curv = strategy.quad_.curvature - strategy.config.eps
    body = torch.ones(n, dtype=torch.bool)
    body[head["weight"]] = body[head["bias"]] = False
    assert bool((curv[body].abs() < 1e-12).all()) and bool((curv[~body] > 0).all())
    assert result.work["backward_examples"] == 0 and result.work["hvp_examples"] == 0  # no Hessian pass


# ------------------------------------------------------------------------------ T1 and the curvature norm


def test_t1_adapts_within_one_pseudo_epoch() -> None:
    problem = TinyProblem(n_train=1200, epochs=1, fraction=0.5)  # one pseudo-epoch of 38 steps
    result, strategy = _fit({"name": "crest", "r_fraction": 0.05}, problem=problem)
    t1 = [v for _, v in result.series["T1"]]
    assert result.work["steps"] == 38 and max(t1) > 1, t1
    # the release preset takes ||H_0|| after one pseudo-epoch: T1 never moves in this run
    rel, _ = _fit({"name": "crest", "r_fraction": 0.05, "preset": "release"}, problem=problem)
    assert {v for _, v in rel.series["T1"]} == {1.0}


def test_curvature_tracker_follows_the_curvature_not_the_number_of_fits() -> None:
    g = torch.Generator().manual_seed(0)
    diag = torch.rand(500, generator=g)
    quad = QuadraticModel(500, betas=(0.9, 0.999), eps=0.0)
    tracker = CurvatureTracker(0.9)
    norms_q, norms_t = [], []
    for i in range(300):
        scale = 1.0 if i < 200 else 0.25  # the curvature relaxes 4x at fit 200
        noisy = scale * (diag + 10.0 * torch.randn(500, generator=g))  # Hutchinson-like probe noise
        quad.update(torch.zeros(500), noisy, 0.0)
        norms_q.append(quad.hessian_norm())
        norms_t.append(tracker.update(noisy))
    # at constant curvature the smoothed model's norm falls ~3.5x as probe noise averages out...
    assert norms_q[199] < norms_q[9] / 3
    # ...the tracker's does not (within 25%), and it drops 4x when the curvature does
    assert norms_t[199] == pytest.approx(norms_t[19], rel=0.25)
    assert norms_t[299] == pytest.approx(norms_t[199] / 4, rel=0.25)


def test_max_reference_sets_t1_from_the_peak_curvature(monkeypatch) -> None:
    strategy = registry.create({"name": "crest", "r_fraction": 0.05, "h": 1.0, "b": 2, "t1_curvature": "smoothed"})
    data, model = tiny_problem(0, PROBLEM), tiny_model(0, PROBLEM)
    budget = Budget.make(PROBLEM.n_train, PROBLEM.fraction, PROBLEM.batch_size, PROBLEM.epochs)
    strategy.setup(make_context(data, model, budget, 0))
    S = budget.steps_per_epoch  # 8
    seen = []
    for hn in (2.0, 8.0, 4.0, 1.0, 16.0, 3.0):
        monkeypatch.setattr(strategy.quad_, "hessian_norm", lambda hn=hn: hn)
        strategy._update_schedule(step=0, lr=0.1)
        seen.append((strategy.h0_norm_, strategy.T1, strategy.P))
    peaks = [2.0, 8.0, 8.0, 8.0, 16.0, 16.0]
    for (h0, t1, p), peak, hn in zip(seen, peaks, (2.0, 8.0, 4.0, 1.0, 16.0, 3.0)):
        assert h0 == peak and t1 == min(S, math.ceil(peak / hn)) and p == min(2 * t1, S)


# ------------------------------------------------------------------------------ batch norm


def _bn_model() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("stats", ["anchor", "current"])
def test_checks_use_the_fit_batchnorm_statistics(stats: str) -> None:
    """Running statistics move (a train-mode forward), the parameters do not (delta = 0): with
    'anchor' the check measures exactly L0, with 'current' the statistics' drift shows up in rho."""
    problem = PROBLEM
    model = _bn_model()
    strategy = registry.create({"name": "crest", "r_fraction": 0.05, "bn_stats": stats, "check_size": 40})
    data = tiny_problem(0, problem)
    budget = Budget.make(problem.n_train, problem.fraction, problem.batch_size, problem.epochs)
    strategy.setup(make_context(data, model, budget, 0))
    st = TrainState(0, 0, budget.steps_per_epoch, budget.total_steps, 0.05, model, 0)
    strategy.select(st)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    strategy.on_after_backward(st)
    l0 = strategy.quad_.loss0
    model.train()
    with torch.no_grad():
        for _ in range(20):  # skewed batches: the running statistics drift far
            model(data.train.x[:64] * 3.0 + 2.0)
    before = [b.clone() for b in model.buffers()]
    rho, l_true, f_delta, _ = strategy.measure_rho()
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))  # statistics restored
    assert f_delta == pytest.approx(l0, abs=1e-6)
    if stats == "anchor":
        assert l_true == pytest.approx(l0, abs=1e-6) and rho == pytest.approx(0.0, abs=1e-5)
    else:
        assert rho > 0.05


# ------------------------------------------------------------------------------ runs


def test_lazy_defaults_cost_less_than_the_release_preset_and_learn() -> None:
    lazy, _ = _fit({"name": "crest", "r_fraction": 0.05})
    rel, _ = _fit({"name": "crest", "r_fraction": 0.05, "preset": "release"})
    assert lazy.work["steps"] == rel.work["steps"] == 48
    assert lazy.work["forward_examples"] < rel.work["forward_examples"] / 2
    assert lazy.work["backward_examples"] < rel.work["backward_examples"] / 4
    assert lazy.metrics["final_acc"] > 0.9


def test_group_builds_several_coresets_per_extension() -> None:
    result, strategy = _fit({"name": "crest", "r_fraction": 0.05, "group": 3, "tau": 100.0, "t1_init": 8})
    e = result.selections["log"][0]
    P = e["diagnostics"]["P"]
    assert e["diagnostics"]["built"] == P and e["size"] == 16 * P
    assert e.get("extensions", 0) == math.ceil((P - 3) / 3)  # 3 at the start, then 3 at a time
