"""The conformance kit itself: each contract check catches a strategy that breaks its rule, a
well-behaved strategy passes them all, and known failures still run (strict xfail, listed in
``CheckReport``)."""

from __future__ import annotations

import random
import textwrap
from typing import Any, Literal

import numpy as np
import pydantic
import pytest
import torch

from subsetlab import registry
from subsetlab.config import StrategyConfig
from subsetlab.protocol import Capabilities, Selection, SelectionStrategy
from subsetlab.testing import CHECKS, StrategyConformance, check_strategy
from subsetlab.testing.checks import (
    check_declares_validation_use,
    check_leaves_global_rng_alone,
    check_leaves_model_unchanged,
    check_restores_training_mode,
)

CONTRACT_CHECKS = (
    check_leaves_global_rng_alone,
    check_leaves_model_unchanged,
    check_restores_training_mode,
    check_declares_validation_use,
)


class Toy(SelectionStrategy):
    """A well-behaved strategy: a uniform subset from ``ctx.generator`` every pseudo-epoch."""

    def should_select(self, state):
        return state.epoch_start

    def select(self, state):
        ctx = self.ctx
        return Selection.uniform(torch.randperm(ctx.budget.n, generator=ctx.generator)[: ctx.budget.subset_size])


def _toy(name: str, base: type = Toy, **members: Any) -> type:
    title = name.title().replace("-", "")
    config = pydantic.create_model(f"{title}Config", __base__=StrategyConfig, name=(Literal[name], name))
    return type(title, (base,), {"name": name, "Config": config, **members})


@pytest.fixture
def register():
    """Register toy strategies for one test, unregistered afterwards."""
    names = []

    def add(name: str, base: type = Toy, **members: Any) -> str:
        registry.register(_toy(name, base, **members))
        names.append(name)
        return name

    yield add
    for name in names:
        registry.unregister(name)


def _uses_val(self, state):
    # a loss-ranked selection on the validation split's class balance: reads ctx.val
    counts = torch.bincount(self.ctx.val.y, minlength=self.ctx.train.num_classes)
    k = self.ctx.budget.subset_size
    order = torch.randperm(self.ctx.budget.n, generator=self.ctx.generator)
    return Selection.uniform(order[:k], val_classes=int((counts > 0).sum()))


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda f: f.__name__)
def test_a_well_behaved_strategy_passes_the_contract_checks(register, check) -> None:
    check(register("toy-good"))


def test_a_strategy_that_uses_and_declares_validation_passes(register) -> None:
    check_declares_validation_use(
        register("toy-val-declared", select=_uses_val, capabilities=Capabilities(needs_validation=True))
    )


# ----------------------------------------------------------------------------- global RNG


def _select_drawing(draw):
    def select(self, state):
        draw()
        return Toy.select(self, state)

    return select


@pytest.mark.parametrize(
    ("draw", "generator"),
    [
        (lambda: torch.randperm(10), "torch"),
        (lambda: torch.manual_seed(123), "torch"),
        (lambda: np.random.permutation(10), "numpy"),
        (lambda: random.random(), "random"),
    ],
    ids=["torch-randperm", "torch-manual_seed", "numpy", "random"],
)
def test_rng_check_catches_a_select_that_uses_the_global_generators(register, draw, generator) -> None:
    name = register("toy-global-rng", select=_select_drawing(draw))
    with pytest.raises(AssertionError, match=rf"global random state: select\(\) at step 0: {generator}"):
        check_leaves_global_rng_alone(name)


def test_rng_check_catches_should_select_and_setup(register) -> None:
    def setup(self, ctx):
        Toy.setup(self, ctx)
        self.noise_ = torch.rand(3)  # the global generator

    name = register("toy-rng-setup", setup=setup)
    with pytest.raises(AssertionError, match=r"setup\(\): torch"):
        check_leaves_global_rng_alone(name)
    name = register("toy-rng-should", should_select=lambda self, state: random.random() < 0.0 or state.epoch_start)
    with pytest.raises(AssertionError, match=r"should_select\(\) at step 1: random"):
        check_leaves_global_rng_alone(name)


def test_rng_check_accepts_a_draw_inside_fork_rng(register) -> None:
    def draw():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            torch.randperm(10)

    check_leaves_global_rng_alone(register("toy-forked", select=_select_drawing(draw)))


# ----------------------------------------------------------------------------- the model


def test_model_check_catches_a_select_that_changes_a_parameter(register) -> None:
    def nudge(self, state):
        with torch.no_grad():
            next(self.ctx.model.parameters()).mul_(1.0 + 1e-7)  # one ulp-scale change is enough
        return Toy.select(self, state)

    name = register("toy-nudge", select=nudge)
    with pytest.raises(AssertionError, match=r"changed the model: select\(\) at step 0: parameter 0.weight"):
        check_leaves_model_unchanged(name)


def test_model_check_catches_a_replaced_parameter(register) -> None:
    def replace(self, state):
        layer = self.ctx.model[0]
        layer.bias = torch.nn.Parameter(layer.bias.detach().clone())  # same values, another object
        return Toy.select(self, state)

    name = register("toy-replace", select=replace)
    with pytest.raises(AssertionError, match=r"parameter 0.bias \(replaced by another tensor object\)"):
        check_leaves_model_unchanged(name)


def test_model_check_catches_gradients_changed_after_backward(register) -> None:
    def clip(self, state):
        for p in self.ctx.model.parameters():
            p.grad.mul_(0.5)

    name = register("toy-grad", on_after_backward=clip)
    with pytest.raises(AssertionError, match=r"on_after_backward\(\) at step 0: gradient of 0.weight"):
        check_leaves_model_unchanged(name)


def test_model_check_catches_a_training_forward_that_updates_batchnorm() -> None:
    from subsetlab.testing.watch import HookWatch

    class Strategy:
        def select(self, state):
            model.train()
            model(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))

    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3))
    strategy = Strategy()
    watch = HookWatch(strategy, model)
    strategy.select(None)
    assert watch.model_changes == ["select(): buffer 0.running_mean, buffer 0.running_var, buffer 0.num_batches_tracked"]


# ----------------------------------------------------------------------------- training mode


def test_mode_check_catches_a_select_that_leaves_eval_mode(register) -> None:
    def select(self, state):
        self.ctx.model.eval()
        return Toy.select(self, state)

    name = register("toy-eval", select=select)
    with pytest.raises(AssertionError, match=r"select\(\) at step \d+: found the model in train mode and left it in eval mode"):
        check_restores_training_mode(name)


def test_mode_check_catches_a_closing_train_call(register) -> None:
    def select(self, state):
        self.ctx.model.eval()
        try:
            return Toy.select(self, state)
        finally:
            self.ctx.model.train()  # assumes the model was training

    name = register("toy-train", select=select)
    with pytest.raises(AssertionError, match=r"select\(\) at step 0: found the model in eval mode and left it in train mode"):
        check_restores_training_mode(name)


def test_mode_check_catches_a_step_hook(register) -> None:
    def on_step_end(self, state, info):
        self.ctx.model.eval()

    name = register("toy-step-eval", on_step_end=on_step_end)
    with pytest.raises(AssertionError, match=r"on_step_end\(\) at step 1: found the model in train mode"):
        check_restores_training_mode(name)


# ----------------------------------------------------------------------------- needs_validation


def test_validation_check_catches_an_undeclared_read(register) -> None:
    name = register("toy-val-undeclared", select=_uses_val)  # Capabilities() default: False
    with pytest.raises(AssertionError, match=r"needs_validation is False but a hook read the validation split: select\(\) at step 0 read ctx.val.y"):
        check_declares_validation_use(name)


def test_validation_check_catches_a_declaration_without_use(register) -> None:
    name = register("toy-val-unused", capabilities=Capabilities(needs_validation=True))
    with pytest.raises(AssertionError, match=r"needs_validation is True but no hook read ctx.val"):
        check_declares_validation_use(name)


def test_validation_check_reads_the_config_dependent_capabilities(register) -> None:
    """A configuration-dependent declaration (GradMatch's ``target``) comes from
    ``capabilities_for(config)``, which the trainer, the suite and the kit all read."""

    def capabilities_for(cls, config):
        return Capabilities(needs_validation=True)

    check_declares_validation_use(
        register("toy-val-config", select=_uses_val, capabilities_for=classmethod(capabilities_for))
    )


# ----------------------------------------------------------------------------- known failures


def test_check_strategy_runs_known_failures_and_lists_them(register) -> None:
    name = register("toy-known", select=_select_drawing(lambda: torch.rand(1)))
    report = check_strategy(
        name,
        known_failures={
            "check_leaves_global_rng_alone": "draws from torch's global generator",
            "check_config_json_roundtrip": "stale: fixed long ago",
        },
        raise_on_failure=False,
    )
    assert list(report.expected_failures) == ["check_leaves_global_rng_alone"]
    assert "global random state" in report.expected_failures["check_leaves_global_rng_alone"]
    assert report.unexpected_passes == {"check_config_json_roundtrip": "stale: fixed long ago"}
    assert not report.failed and not report.ok
    assert "check_leaves_global_rng_alone" not in report.passed and "check_config_json_roundtrip" not in report.passed
    assert set(report.passed) | set(report.expected_failures) | set(report.unexpected_passes) == set(CHECKS)


def test_check_strategy_raises_on_a_stale_known_failure() -> None:
    with pytest.raises(AssertionError, match=r"check_config_json_roundtrip: passed, but is declared a known failure"):
        check_strategy("random", known_failures={"check_config_json_roundtrip": "stale"})


def test_check_strategy_passes_with_only_expected_failures(register) -> None:
    name = register("toy-known-only", select=_select_drawing(lambda: torch.rand(1)))
    report = check_strategy(name, known_failures={"check_leaves_global_rng_alone": "on purpose"})
    assert report.ok and list(report.expected_failures) == ["check_leaves_global_rng_alone"]


def test_a_misspelt_known_failure_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'check_determinstic'"):
        check_strategy("random", known_failures={"check_determinstic": "typo"})
    with pytest.raises(ValueError, match=r"'deterministic'"):

        class TestTypo(StrategyConformance):
            strategy = "random"
            known_failures = {"deterministic": "not a check name"}


def test_base_class_marks_known_failures_as_strict_xfail() -> None:
    class TestBroken(StrategyConformance):
        strategy = "random"
        known_failures = {"check_deterministic": "why"}

    class TestFixed(TestBroken):
        known_failures = {}

    (mark,) = TestBroken.test_deterministic.pytestmark
    assert mark.name == "xfail" and mark.kwargs == {"strict": True, "reason": "known failure: why"}
    assert not hasattr(TestFixed.test_deterministic, "pytestmark")
    assert not hasattr(TestBroken.test_selection_valid, "pytestmark")


def test_base_class_known_failures_run_and_xpass_fails(tmp_path) -> None:
    """In a pytest run, a declared failure that fails is xfailed and one that passes is a failure
    (XPASS(strict)): the check ran."""
    test_file = tmp_path / "test_plugin_kit.py"
    test_file.write_text(
        textwrap.dedent(
            '''
            from subsetlab.testing import StrategyConformance


            class TestStale(StrategyConformance):
                strategy = "random"
                known_failures = {"check_config_json_roundtrip": "said to fail, passes"}


            class TestBroken(StrategyConformance):
                strategy = "random[select_every=1]"
                known_failures = {"check_config_rejects_unknown_keys": "fails, as declared"}

                def _run_check(self, check):
                    super()._run_check(check)
                    raise AssertionError("broken on purpose")
            '''
        )
    )
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rxX", str(test_file),
         "-k", "config_json_roundtrip or config_rejects_unknown_keys"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    out = proc.stdout
    assert "XPASS(strict)" in out and "said to fail, passes" in out, out
    assert "XFAIL" in out and "fails, as declared" in out, out
    summary = out.strip().splitlines()[-1]
    # TestStale: roundtrip XPASS(strict) = failed, rejects passed; TestBroken: rejects xfailed,
    # roundtrip failed (not declared)
    assert "2 failed" in summary and "1 passed" in summary and "1 xfailed" in summary, out
