"""The loss-sampling plugin: subsetlab's conformance checks + our own."""

from __future__ import annotations

from subsetlab import Budget, Trainer, registry
from subsetlab.testing import (
    StrategyConformance,
    make_context,
    make_state,
    tiny_model,
    tiny_problem,
    tiny_trainer_config,
)


class TestLossSampling(StrategyConformance):
    """Every conformance check, on the default config."""

    strategy = "loss-sampling"


class TestLossSamplingWithCandidates(StrategyConformance):
    """Every check again, scoring a random half of the data each time."""

    strategy = "loss-sampling[candidates=0.5,select_every=2]"


def test_selects_the_budget_without_repeats() -> None:
    """Each selection holds exactly ceil(f*N) distinct examples."""
    strategy = registry.create("loss-sampling")
    result = Trainer(tiny_trainer_config()).fit(
        strategy, tiny_model(0), tiny_problem(0), seed=0
    )
    assert result.ok, result.error
    k = result.budget["subset_size"]
    for entry in result.selections["log"]:
        assert entry["size"] == k and entry["unique"] == k
    n, count = result.budget["n"], result.selections["count"]
    assert result.work["forward_examples"] == n * count


def test_select_draws_k_candidates_with_bounded_weights() -> None:
    """select() called directly: k distinct candidates, weights <= 1 / smoothing."""
    data, model = tiny_problem(0), tiny_model(0)
    budget = Budget.make(len(data.train), fraction=0.25, batch_size=16, epochs=3)
    ctx = make_context(data, model, budget, seed=0)
    strategy = registry.create("loss-sampling[candidates=0.5]")
    strategy.setup(ctx)
    selection = strategy.select(make_state(ctx, step=0))
    m = selection.diagnostics["candidates"]  # ceil(0.5 * N), at least k
    assert m == 120 and ctx.meters.forward_examples == m
    k = budget.subset_size
    assert len(selection) == k and selection.indices.unique().numel() == k
    assert float(selection.weights.max()) <= 1 / 0.2 + 1e-6  # p_i >= smoothing / m
