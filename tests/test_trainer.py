"""The trainer: budget and loss arithmetic, schedule, failures, resume, determinism."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Literal

import pytest
import torch

from subsetlab import registry
from subsetlab.config import StrategyConfig, TrainerConfig
from subsetlab.errors import DataError
from subsetlab.protocol import Budget, Capabilities, Selection, SelectionStrategy
from subsetlab.schedule import lr_at
from subsetlab.testing import tiny_model, tiny_problem, tiny_trainer_config
from subsetlab.trainer import BatchStream, Trainer, weighted_loss


@pytest.mark.parametrize(
    "n,f,b,e,k,s",
    [
        (1000, 0.1, 32, 5, 100, 4),  # 100/32 -> 4 steps
        (1290, 0.1, 128, 3, 129, 2),  # 0.1*1290 has float noise; must be exactly 129
        (54000, 0.1, 128, 20, 5400, 43),
        (7, 1.0, 2, 1, 7, 4),
        (10, 0.01, 4, 2, 1, 1),  # never less than one example
    ],
)
def test_budget_arithmetic(n, f, b, e, k, s):
    budget = Budget.make(n, f, b, e)
    assert (budget.subset_size, budget.steps_per_epoch, budget.total_steps) == (k, s, e * s)
    assert budget.schedule_steps_per_epoch == s


def test_budget_modes():
    full = Budget.make(1000, 0.1, 32, 5, "full")
    assert (full.fraction, full.steps_per_epoch, full.total_steps) == (1.0, 32, 160)
    trunc = Budget.make(1000, 0.1, 32, 5, "full_schedule")
    assert (trunc.steps_per_epoch, trunc.total_steps, trunc.schedule_steps_per_epoch) == (4, 20, 32)


def test_weighted_loss_exact():
    losses = torch.tensor([1.0, 2.0, 4.0, 8.0])
    weights = torch.tensor([0.5, 1.0, 1.5, 1.0])
    assert float(weighted_loss(losses, weights)) == (0.5 + 2.0 + 6.0 + 8.0) / 4
    assert float(weighted_loss(losses, torch.ones(4))) == 15.0 / 4


def test_lr_schedule_by_hand():
    cfg = TrainerConfig(epochs=10, lr=0.1, warmup_epochs=2, milestones=(0.5, 0.8), gamma=0.1)
    s = 5  # steps per pseudo-epoch, warm-up = 10 steps
    assert lr_at(0, s, cfg) == pytest.approx(0.01)  # never 0 on the first step
    assert lr_at(9, s, cfg) == pytest.approx(0.1)
    assert lr_at(24, s, cfg) == pytest.approx(0.1)  # epoch 4
    assert lr_at(25, s, cfg) == pytest.approx(0.01)  # epoch 5 = 0.5 * 10
    assert lr_at(40, s, cfg) == pytest.approx(0.001)  # epoch 8
    cos = TrainerConfig(epochs=4, lr=1.0, schedule="cosine")
    assert lr_at(0, 10, cos) == pytest.approx(1.0)
    assert lr_at(20, 10, cos) == pytest.approx(0.5)
    assert lr_at(40, 10, cos) == pytest.approx(0.0, abs=1e-12)


def test_batch_stream_serves_exact_batches_and_covers_every_row():
    sel = Selection.uniform(torch.arange(10, 20))
    stream = BatchStream(sel, 4, torch.Generator().manual_seed(0))
    batches = [stream.next() for _ in range(5)]  # 20 rows = two full passes
    assert all(b.numel() == 4 for b in batches)
    counts = torch.bincount(torch.cat(batches), minlength=10)
    assert torch.equal(counts, torch.full((10,), 2))
    plan = Selection(torch.arange(6), torch.ones(6), [torch.tensor([0, 1]), torch.tensor([2, 3, 4, 5])])
    pstream = BatchStream(plan, 4, torch.Generator().manual_seed(0))
    served = sorted(tuple(pstream.next().tolist()) for _ in range(2))
    assert served == [(0, 1), (2, 3, 4, 5)]


def _fit(strategy="random", seed=0, **trainer_overrides):
    cfg = tiny_trainer_config(**trainer_overrides)
    model = tiny_model(seed)
    result = Trainer(cfg).fit(registry.create(strategy), model, tiny_problem(seed), seed)
    return result, model


@pytest.mark.parametrize("strategy", ["full", "random", "sgd-truncated"])
def test_every_strategy_trains_the_budgeted_steps(strategy):
    result, _ = _fit(strategy)
    assert result.ok, result.error
    caps = registry.get(strategy).capabilities
    budget = Budget.make(240, 0.25, 16, 3, caps.budget)
    assert result.work["steps"] == budget.total_steps
    assert result.work["backprop_examples"] == budget.total_steps * 16
    assert len(result.history) == 3
    assert [h["epoch"] for h in result.history] == [0, 1, 2]


def test_sgd_truncated_follows_the_full_run_exactly():
    """Same batches, same schedule: its weights equal the full run's after the same steps."""
    cfg = tiny_trainer_config(warmup_epochs=1.0)
    trunc_model = tiny_model(0)
    trunc = Trainer(cfg).fit(registry.create("sgd-truncated"), trunc_model, tiny_problem(0), 0)
    full_model = tiny_model(0)
    Trainer(cfg).fit(
        registry.create("full"), full_model, tiny_problem(0), 0, stop_after_steps=trunc.work["steps"]
    )
    for a, b in zip(trunc_model.parameters(), full_model.parameters()):
        assert torch.equal(a, b)


def test_diverging_run_is_recorded_as_failed():
    data = tiny_problem(0)
    data.train.x = data.train.x * 1e37  # finite inputs whose logits overflow to inf
    result = Trainer(tiny_trainer_config()).fit(registry.create("random"), tiny_model(0), data, 0)
    assert not result.ok
    assert result.error.startswith("diverged") and result.failed_step is not None


class _BoomConfig(StrategyConfig):
    name: Literal["boom"] = "boom"
    when: Literal["select", "should_select", "bad_indices", "bad_weights"] = "select"


class _Boom(SelectionStrategy):
    name = "boom"
    Config = _BoomConfig

    def should_select(self, state):
        if self.config.when == "should_select" and state.step == 3:
            raise RuntimeError("kaput")
        return False

    def select(self, state):
        n = self.ctx.budget.n
        if self.config.when == "select":
            raise ValueError("nope")
        if self.config.when == "bad_indices":
            return Selection(torch.tensor([0, n]), torch.ones(2))
        if self.config.when == "should_select":
            return Selection.uniform(torch.arange(32))
        return Selection(torch.tensor([0, 1]), torch.tensor([1.0, float("nan")]))


@pytest.fixture
def boom():
    registry.register(_Boom)
    yield
    registry.unregister("boom")


@pytest.mark.parametrize(
    "when,expected",
    [
        ("select", "Strategy 'boom' raised ValueError in select()"),
        ("should_select", "Strategy 'boom' raised RuntimeError in should_select()"),
        ("bad_indices", "outside [0, 240)"),
        ("bad_weights", "NaN or infinite"),
    ],
)
def test_strategy_failures_name_the_strategy(boom, when, expected):
    result = Trainer(tiny_trainer_config()).fit(
        registry.create({"name": "boom", "when": when}), tiny_model(0), tiny_problem(0), 0
    )
    assert result.status == "failed"
    assert expected in result.error
    assert "boom" in result.error


def test_validation_split_required_when_declared():
    class NeedsVal(_Boom):
        capabilities = Capabilities(needs_validation=True)

    data = tiny_problem(0)
    data.val = None
    with pytest.raises(DataError, match="needs a validation split"):
        Trainer(tiny_trainer_config()).fit(NeedsVal(), tiny_model(0), data, 0)


def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path):
    cfg = tiny_trainer_config(checkpoint_every=1)
    ref_model = tiny_model(0)
    ref = Trainer(cfg).fit(registry.create("random"), ref_model, tiny_problem(0), 0)
    path = tmp_path / "ckpt.pt"
    m1 = tiny_model(0)
    part = Trainer(cfg, checkpoint_path=path).fit(
        registry.create("random"), m1, tiny_problem(0), 0, run_key="r", stop_after_steps=6
    )
    assert path.exists() and part.work["steps"] == 6
    m2 = tiny_model(0)
    resumed = Trainer(cfg, checkpoint_path=path).fit(registry.create("random"), m2, tiny_problem(0), 0, run_key="r")
    assert resumed.ok and resumed.work["steps"] == ref.work["steps"]
    for a, b in zip(ref_model.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert [h["test_acc"] for h in resumed.history] == [h["test_acc"] for h in ref.history]
    # a checkpoint of another run is ignored (starts from scratch)
    m3 = tiny_model(0)
    other = Trainer(cfg, checkpoint_path=path).fit(registry.create("random"), m3, tiny_problem(0), 0, run_key="other")
    assert other.work["steps"] == ref.work["steps"]


_FRESH = """
import hashlib, json, torch
from subsetlab import registry
from subsetlab.testing import tiny_model, tiny_problem, tiny_trainer_config
from subsetlab.trainer import Trainer
m = tiny_model(5)
r = Trainer(tiny_trainer_config()).fit(registry.create("{s}"), m, tiny_problem(5), 5)
h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.parameters())).hexdigest()
print(json.dumps({{"h": h, "acc": r.metrics["final_acc"], "sizes": r.selections["sizes"]}}))
"""


@pytest.mark.parametrize("strategy", ["random", "full"])
def test_same_seed_same_result_in_a_fresh_process(strategy):
    outs = [
        json.loads(subprocess.check_output([sys.executable, "-c", _FRESH.format(s=strategy)], text=True).strip().splitlines()[-1])
        for _ in range(2)
    ]
    assert outs[0] == outs[1]
    assert math.isfinite(outs[0]["acc"])


def test_training_leaves_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _fit("random")
    assert torch.equal(before, torch.get_rng_state())


# ------------------------------------------------------------------------------ growing selections


class _GrowConfig(StrategyConfig):
    name: Literal["grow-test"] = "grow-test"
    plan: bool = True


class _Grow(SelectionStrategy):
    """Starts with two batches of 4 rows, then adds one batch at steps 1 and 3 (extends=True)."""

    name, Config = "grow-test", _GrowConfig

    def setup(self, ctx):
        super().setup(ctx)
        self.next_row = 0
        self.grads = {}

    def _rows(self, k):
        idx = torch.arange(self.next_row, self.next_row + k)
        self.next_row += k
        return idx

    def should_select(self, state):
        return state.step in (1, 3)

    def select(self, state):
        if state.step == 0:
            idx = self._rows(8)
            return Selection(idx, torch.ones(8), [torch.arange(4), torch.arange(4, 8)])
        idx = self._rows(4)
        batches = [torch.arange(4)] if self.config.plan else None
        return Selection(idx, torch.full((4,), 2.0), batches, {"added": int(state.step)}, extends=True)

    def on_after_backward(self, state):
        if state.step == 0:
            self.grads[0] = [p.grad.detach().clone() for p in self.ctx.model.parameters()]


def test_extending_selections_train_the_added_batches_next_and_log_one_selection():
    problem_cfg = tiny_trainer_config(epochs=2, batch_size=4)
    seen = []
    strategy = _Grow()
    strategy.on_step_end = lambda state, info: seen.append(sorted(info.indices.tolist()))
    result = Trainer(problem_cfg).fit(strategy, tiny_model(0), tiny_problem(0), 0)
    assert result.ok, result.error
    assert seen[1] == [8, 9, 10, 11] and seen[3] == [12, 13, 14, 15]  # the added batch comes next
    assert all(len(b) == 4 for b in seen) and set(sum(seen, [])) == set(range(16))
    log = result.selections["log"]
    assert result.selections["count"] == 1 and log[0]["size"] == 16 and log[0]["unique"] == 16
    assert log[0]["extensions"] == 2 and log[0]["diagnostics"]["added"] == 3
    rows = result.analytics["selections"]
    assert len(rows) == 1 and rows[0]["size"] == 16 and rows[0]["unique"] == 16  # analytics see the grown selection
    # on_after_backward sees the step's gradient before the optimiser step: that of the weighted
    # batch loss at the initial weights
    x, y = tiny_problem(0).train.get(torch.tensor(seen[0]))
    ref = tiny_model(0)
    loss = torch.nn.functional.cross_entropy(ref(x), y)
    for got, want in zip(strategy.grads[0], torch.autograd.grad(loss, list(ref.parameters()))):
        assert torch.allclose(got, want, atol=1e-6)


def test_extending_without_a_batch_plan_fails_the_run_with_the_reason():
    result = Trainer(tiny_trainer_config(epochs=1, batch_size=4)).fit(_Grow(plan=False), tiny_model(0), tiny_problem(0), 0)
    assert not result.ok and "extends=True needs a batch plan" in result.error


def test_batch_stream_extend_serves_added_batches_in_order_then_random_passes():
    sel = Selection(torch.arange(6), torch.ones(6), [torch.arange(0, 2), torch.arange(2, 4), torch.arange(4, 6)])
    stream = BatchStream(sel, 2, torch.Generator().manual_seed(0))
    stream.next()
    grown = Selection(torch.arange(10), torch.ones(10), sel.batches + [torch.arange(6, 8), torch.arange(8, 10)])
    stream.extend(grown, 2)
    assert stream.next().tolist() == [6, 7] and stream.next().tolist() == [8, 9]
    state = stream.state_dict()
    assert state["queue"] == []
    nxt = [tuple(stream.next().tolist()) for _ in range(5)]
    assert sorted(nxt) == sorted(tuple(b.tolist()) for b in grown.batches)  # a fresh pass over all 5
