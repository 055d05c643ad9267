"""The loss-sampling plugin: subsetlab's conformance checks + our own."""

from __future__ import annotations

from subsetlab import Trainer, registry
from subsetlab.testing import (
    StrategyConformance,
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
