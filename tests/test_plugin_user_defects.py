"""What a plugin author and a new user hit (issue 16): one test (or a few) per defect.

Each test failed before the fix it covers; the items are numbered as in the issue.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

from subsetlab import registry
from subsetlab.bench.store import ResultsStore, ResultsWarning, read_records
from subsetlab.cli import main
from subsetlab.config import RunSpec, StrategyConfig
from subsetlab.errors import ConfigError
from subsetlab.protocol import Budget, Selection, SelectionStrategy

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guides" / "custom-strategy.md"


@pytest.fixture(autouse=True)
def _quiet_plugins():
    from subsetlab.registry import PluginLoadWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        yield


# ----------------------------------------------------------------------------- 1. plugin loading


def _make_dist(root: Path, dist: str, module: str, source: str, entry_points: dict[str, str]) -> None:
    """An installed distribution (dist-info + module) laid out the way pip does."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-2.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 2.0.0\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[subsetlab.strategies]\n{eps}\n")
    (info / "RECORD").write_text("")


# Neither class uses @register: the entry point alone registers it, as the guide shows.
TAKES_BUILTIN = """
from typing import Literal
from subsetlab import SelectionStrategy, StrategyConfig

class MyRandomConfig(StrategyConfig):
    name: Literal["random"] = "random"

class MyRandom(SelectionStrategy):
    '''A plugin that wants the name of a built-in.'''
    name = "random"
    Config = MyRandomConfig
    def should_select(self, state): return False
"""

RENAMED = """
from typing import Literal
from subsetlab import SelectionStrategy, StrategyConfig

class EveryTwoConfig(StrategyConfig):
    name: Literal["every-two"] = "every-two"

class EveryTwo(SelectionStrategy):
    '''Its entry point is called every-2.'''
    name = "every-two"
    Config = EveryTwoConfig
    def should_select(self, state): return False
"""

NOT_A_CLASS = "make = lambda: None\n"

PROBE = """
import json, warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    from subsetlab import registry
    names = registry.list_strategies()
    src = {i.name: [i.distribution, i.cls.__module__] for i in registry.info()}
print(json.dumps({"names": names, "src": src,
                  "warnings": [[x.category.__name__, str(x.message)] for x in w]}))
"""


@pytest.fixture(scope="module")
def plugin_probe(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("site")
    _make_dist(root, "takes-builtin", "takes_builtin", TAKES_BUILTIN, {"random": "takes_builtin:MyRandom"})
    _make_dist(root, "renamed-plugin", "renamed_plugin", RENAMED, {"every-2": "renamed_plugin:EveryTwo"})
    _make_dist(root, "not-a-class", "not_a_class", NOT_A_CLASS, {"lam": "not_a_class:make"})
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop(registry.AUTOLOAD_ENV, None)
    out = subprocess.check_output([sys.executable, "-c", PROBE], env=env, text=True, timeout=300)
    return json.loads(out.strip().splitlines()[-1])


def _warnings_naming(probe: dict, dist: str) -> list[str]:
    return [msg for cat, msg in probe["warnings"] if cat == "PluginLoadWarning" and dist in msg]


def test_plugin_taking_a_builtin_name_is_a_warning_naming_its_distribution(plugin_probe):
    (msg,) = _warnings_naming(plugin_probe, "takes-builtin")
    assert "'random'" in msg and "already registered" in msg and "subsetlab" in msg
    assert plugin_probe["src"]["random"] == ["subsetlab", "strategies.random"]  # the built-in stays


def test_entry_point_name_differing_from_the_class_name_is_a_warning_not_a_silent_rename(plugin_probe):
    (msg,) = _warnings_naming(plugin_probe, "renamed-plugin")
    assert "'every-2'" in msg and "'every-two'" in msg and "rename" in msg.lower()
    # not registered under a name nobody asked for
    assert "every-two" not in plugin_probe["names"] and "every-2" not in plugin_probe["names"]


def test_entry_point_that_is_not_a_class_is_a_warning(plugin_probe):
    (msg,) = _warnings_naming(plugin_probe, "not-a-class")
    assert "'lam'" in msg and "SelectionStrategy" in msg


def test_guide_and_load_plugins_docstring_say_the_entry_point_name_is_the_registered_name():
    guide = " ".join(GUIDE.read_text(encoding="utf-8").split())
    assert "entry point's name is the name the strategy is registered under" in guide
    doc = " ".join((registry.load_plugins.__doc__ or "").split())
    assert "entry point's name is the registered name" in doc


# ----------------------------------------------------------------------------- 2. missing data

MISSING_DATA_SUITE = """
name = "fm"
budgets = [0.1]
seeds = [0, 1]
strategies = ["random"]

[[datasets]]
name = "fashion_mnist"
root = "{root}"

[model]
name = "lenet"

[trainer]
epochs = 1
"""


def test_missing_data_stops_the_suite_before_any_run_with_exit_2(tmp_path, capsys):
    root = tmp_path / "a-rather-long-directory-name-for-the-data" / "that-does-not-exist" / "fashion-mnist"
    suite = tmp_path / "fm.toml"
    suite.write_text(MISSING_DATA_SUITE.format(root=root))
    results = tmp_path / "r.jsonl"
    code = main(["run", str(suite), "--results", str(results), "--quiet", "--no-plots"])
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    err = captured.err
    assert str(root) in err and "fashion_mnist" in err
    assert "apt-get install dataset-fashion-mnist" in err and "root" in err  # the fix
    assert "Traceback" not in err
    assert not results.exists()  # nothing ran, nothing recorded as failed


def test_failure_line_keeps_the_whole_path():
    from subsetlab.bench.runner import _summary

    path = "/very/long/" + "/".join(f"directory-{i:02d}" for i in range(20)) + "/train-images-idx3-ubyte"
    record = {"status": "failed", "error": {"type": "MissingDataError", "message": f"missing {path} here\nmore"}}
    line = _summary(record)
    assert path in line and "more" not in line


TINY_SUITE = """
name = "s"
budgets = [0.25]
strategies = ["random"]
include_full = false
[[datasets]]
name = "synthetic"
options = { n = 160, n_test = 80, dim = 6, classes = 3 }
[model]
name = "mlp"
options = { hidden = [8] }
[trainer]
epochs = 1
batch_size = 32
"""


def _failed_record(suite_file: Path, results: Path) -> None:
    """A failed record of the suite's one run (so a rerun skips it)."""
    from subsetlab.bench.suite import load_suite

    (spec,) = load_suite(suite_file).expand()
    ResultsStore(results).append({"key": spec.key, "status": "failed", "spec": spec.model_dump(mode="json"),
                                  "error": {"type": "RuntimeError", "message": "it broke"}, "result": None})


def test_skipped_failed_runs_say_how_to_retry_them(tmp_path, capsys):
    suite_file = tmp_path / "s.toml"
    suite_file.write_text(TINY_SUITE)
    results = tmp_path / "r.jsonl"
    _failed_record(suite_file, results)
    assert main(["run", str(suite_file), "--results", str(results), "--quiet", "--no-plots"]) == 1
    out = capsys.readouterr().out
    assert "1 already recorded" in out and "--retry-failed" in out


# ----------------------------------------------------------------------------- 3./4. the kit


class _PoolConfig(StrategyConfig):
    name: Literal["test-pool"] = "test-pool"


class _Pool(SelectionStrategy):
    """Allocates its state in setup, as the guide says; re-selects every 20 steps."""

    name = "test-pool"
    Config = _PoolConfig
    max_step = -1

    def setup(self, ctx):
        super().setup(ctx)
        self.seen_ = torch.zeros(ctx.budget.n)

    def should_select(self, state):
        type(self).max_step = max(type(self).max_step, state.step)
        return state.step % 20 == 0

    def select(self, state):
        k = self.ctx.budget.subset_size
        idx = torch.randperm(self.ctx.budget.n, generator=self.ctx.generator)[:k]
        self.seen_[idx] += 1
        return Selection.uniform(idx)

    def state_dict(self):
        return {"seen": self.seen_.clone()}

    def load_state_dict(self, state):
        self.seen_ = state["seen"].clone()


@pytest.fixture
def pool():
    registry.register(_Pool)
    _Pool.max_step = -1
    yield
    registry.unregister("test-pool")


def test_state_dict_check_sets_the_strategy_up_before_calling_state_dict(pool):
    from subsetlab.testing.checks import check_state_dict_roundtrip

    check_state_dict_roundtrip("test-pool")  # AttributeError: no seen_ before the fix


def test_checks_take_a_longer_problem(pool):
    from subsetlab.testing import TinyProblem
    from subsetlab.testing.checks import check_respects_budget

    check_respects_budget("test-pool", problem=TinyProblem(epochs=6))  # 6 x 4 = 24 steps
    assert _Pool.max_step == 23  # the step-20 re-selection happened inside the check


def test_conformance_class_takes_a_longer_problem(pool):
    from subsetlab.testing import StrategyConformance, TinyProblem

    class TestPool(StrategyConformance):
        strategy = "test-pool"
        problem = TinyProblem(epochs=6)

    TestPool().test_respects_budget()
    assert _Pool.max_step == 23


def test_check_failure_says_how_long_the_check_problem_is():
    from subsetlab.testing import check_strategy

    class FloatCfg(StrategyConfig):
        name: Literal["test-float-idx"] = "test-float-idx"

    class FloatIdx(SelectionStrategy):
        name = "test-float-idx"
        Config = FloatCfg

        def should_select(self, state):
            return False

        def select(self, state):
            return Selection(torch.arange(10).float(), torch.ones(10))

    registry.register(FloatIdx)
    try:
        report = check_strategy("test-float-idx", raise_on_failure=False)
    finally:
        registry.unregister("test-float-idx")
    msg = report.failed["check_selection_valid"]
    assert "12 steps" in msg and "4 steps per pseudo-epoch" in msg and "problem=" in msg


def test_guide_says_how_long_the_check_problem_is():
    guide = " ".join(GUIDE.read_text(encoding="utf-8").split())
    assert "12 training steps" in guide and "problem = TinyProblem(epochs=" in guide


# ----------------------------------------------------------------------------- 5. RunSpec errors


def test_runspec_constructor_raises_config_error():
    with pytest.raises(ConfigError, match=r"'trainer.epochs' parameter of RunSpec.*Got 0"):
        RunSpec(strategy="random", trainer={"epochs": 0})
    with pytest.raises(ConfigError):
        RunSpec(strategy="random", seed=-1)
    from pydantic import ValidationError

    # assignment to a frozen config is still pydantic's error (a ValueError)
    spec = RunSpec(strategy="random")
    with pytest.raises(ValidationError):
        spec.seed = 3


def test_run_spec_unknown_trainer_key_names_the_accepted_trainer_keys():
    from subsetlab.api import build_run

    with pytest.raises(ConfigError) as exc:
        build_run({"strategy": "random", "trainer": {"epoch": 3}})
    msg = str(exc.value)
    assert "'trainer.epoch'" in msg and "epochs" in msg and "batch_size" in msg
    assert "subsetlab schema" not in msg
    with pytest.raises(ConfigError) as exc:
        registry.make_config({"name": "random", "selectevery": 2})
    assert "subsetlab schema random" in str(exc.value)


# ----------------------------------------------------------------------------- 6. models


def _softmax_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Softmax(dim=1))


@pytest.mark.parametrize("strategy", ["random", "craig"])
def test_trainer_refuses_a_model_ending_in_softmax(strategy):
    from subsetlab.testing import tiny_problem, tiny_trainer_config
    from subsetlab.trainer import Trainer

    with pytest.raises(ConfigError) as exc:
        Trainer(tiny_trainer_config()).fit(registry.create(strategy), _softmax_model(), tiny_problem(0), 0)
    msg = str(exc.value)
    assert "softmax" in msg and "logits" in msg and "last_layer=" not in msg


def test_embedder_hint_says_where_last_layer_goes():
    from subsetlab.embeddings import GradientEmbedder
    from subsetlab.testing import tiny_problem

    with pytest.raises(ConfigError) as exc:
        GradientEmbedder(_softmax_model(), "cpu").embed(tiny_problem(0).train, torch.arange(4))
    assert "GradientEmbedder(" in str(exc.value) and "last_layer=" in str(exc.value)


# ----------------------------------------------------------------------------- 7. make_state


def test_make_state_builds_a_train_state_from_a_context():
    from subsetlab.testing import make_context, make_state, tiny_model, tiny_problem

    data, model = tiny_problem(0), tiny_model(0)
    budget = Budget.make(len(data.train), 0.25, 16, 3)
    ctx = make_context(data, model, budget)
    state = make_state(ctx, step=5, lr=0.01)
    assert (state.step, state.epoch, state.steps_per_epoch, state.total_steps) == (5, 1, 4, 12)
    assert state.lr == 0.01 and state.model is model and state.selections == 0 and not state.epoch_start
    strategy = registry.create("random")
    strategy.setup(ctx)
    sel = strategy.select(make_state(ctx))
    assert len(sel) == budget.subset_size


def test_guide_unit_tests_select_with_make_state():
    guide = GUIDE.read_text(encoding="utf-8")
    assert "make_state(" in guide
    example_test = (ROOT / "examples" / "subsetlab-loss-sampling" / "tests" / "test_loss_sampling.py").read_text()
    assert "make_state(" in example_test


# ----------------------------------------------------------------------------- 8. default suite


class _LocalConfig(StrategyConfig):
    name: Literal["test-plugin-like"] = "test-plugin-like"


class _Local(SelectionStrategy):
    """A strategy that is not a built-in."""

    name = "test-plugin-like"
    Config = _LocalConfig

    def should_select(self, state):
        return False

    def select(self, state):
        return Selection.uniform(torch.arange(self.ctx.budget.subset_size))


@pytest.fixture
def local_strategy():
    registry.register(_Local)
    yield
    registry.unregister("test-plugin-like")


def test_default_suite_runs_the_builtins_only_and_says_so(local_strategy, tmp_path, capsys):
    assert main(["run", "--dry-run", "--results", str(tmp_path / "r.jsonl")]) == 0
    out = capsys.readouterr().out
    runs = [ln for ln in out.splitlines() if ln.startswith("  ") and "digits/mlp" in ln]
    assert runs and not any("test-plugin-like" in ln for ln in runs)
    assert any(" random digits/mlp" in ln for ln in runs)
    banner = out.split("\nsuite quick:")[0]
    assert "built-in" in banner and "test-plugin-like" in banner and "--all-strategies" in banner

    for extra in (["--all-strategies"], ["--strategy", "*"]):
        assert main(["run", "--dry-run", "--results", str(tmp_path / "r.jsonl"), *extra]) == 0
        assert " test-plugin-like digits/mlp" in capsys.readouterr().out, extra


# ----------------------------------------------------------------------------- 9. messages


def test_unknown_strategy_message_spells_strategies():
    with pytest.raises(ConfigError) as exc:
        registry.get("nope")
    assert "Registered strategies:" in str(exc.value) and "strategys" not in str(exc.value)


def test_unknown_strategy_on_the_command_line_is_one_error(capsys):
    assert main(["run", "--strategy", "nope", "--no-full", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "Unknown strategy 'nope'" in err
    assert "suite suite" not in err and "runs nothing" not in err


def test_banner_follows_the_epochs_override(tmp_path, capsys):
    assert main(["run", "--epochs", "3", "--dry-run", "--results", str(tmp_path / "r.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "3 pseudo-epochs" in out and "30 pseudo-epochs" not in out


def test_list_pads_the_distribution_column(local_strategy, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    block = out.split("Strategies:\n")[1].split("Datasets:")[0]
    lines = [ln for ln in block.splitlines() if ln.strip()]
    local = next(ln for ln in lines if "test-plugin-like" in ln)
    builtin = next(ln for ln in lines if ln.strip().startswith("random "))
    summary = _Local.__doc__.splitlines()[0]
    assert local.index(summary) == builtin.index(registry.info("random").summary)


def _corrupt(path: Path) -> None:
    store = ResultsStore(path)
    store.append({"key": "a", "status": "ok", "spec": {}})
    with open(path, "ab") as f:
        f.write(b"{this is not json\n")
    store.append({"key": "b", "status": "ok", "spec": {}})


def test_a_corrupt_results_line_is_warned_about_once_per_command_and_names_the_repair(tmp_path, capsys):
    suite_file = tmp_path / "s.toml"
    suite_file.write_text(TINY_SUITE)
    results = tmp_path / "r.jsonl"
    _failed_record(suite_file, results)
    with open(results, "ab") as f:
        f.write(b"{this is not json")  # a partial last line, then (after it) "not valid JSON"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["run", str(suite_file), "--results", str(results), "--quiet", "--no-plots"]) == 1
    err = capsys.readouterr().err
    shown = [ln for ln in err.splitlines() if "line 2 is" in ln]
    assert len(shown) == 1 and "subsetlab repair" in shown[0], err


def test_repair_rewrites_the_results_file_without_bad_lines_keeping_a_backup(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    _corrupt(path)
    before = path.read_bytes()
    assert main(["repair", str(path)]) == 0
    out = capsys.readouterr().out
    assert "line 2" in out
    backup = Path(re.search(r"backup (?:at|in) (\S+?)[;,)]?$", out, re.M).group(1))
    assert backup.read_bytes() == before
    lines = path.read_bytes().split(b"\n")
    assert lines[:2] == [before.split(b"\n")[0], before.split(b"\n")[2]] and lines[2:] == [b""]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResultsWarning)
        assert [r["key"] for r in read_records(path)] == ["a", "b"]
    assert main(["repair", str(path)]) == 0  # nothing left to repair: no second backup
    assert "nothing to repair" in capsys.readouterr().out
    assert main(["repair", str(tmp_path / "missing.jsonl")]) == 2


def test_config_error_names_the_strategy_the_user_typed(capsys):
    with pytest.raises(ConfigError) as exc:
        registry.make_config("random[select_every=0]")
    assert "strategy 'random'" in str(exc.value)
    assert main(["run", "--strategy", "random[select_every=0]", "--dry-run"]) == 2
    assert "strategy 'random'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 10. docs from source


def _inline_python_blocks(markdown: str) -> list[str]:
    blocks = re.findall(r"```python[^\n]*\n(.*?)```", markdown, re.S)
    return [b for b in blocks if "--8<--" not in b]


def _check_contract_example(code: str, name: str) -> None:
    from subsetlab.testing.checks import check_selection_valid

    namespace: dict = {}
    exec(compile(code, f"<{name}>", "exec", dont_inherit=True), namespace)  # noqa: S102 - our own docs
    classes = [v for v in namespace.values() if isinstance(v, type) and issubclass(v, SelectionStrategy)
               and v.__module__ != "subsetlab.protocol"]
    assert classes, f"no strategy class in the {name} example"
    cls = classes[-1]
    was_registered = cls.name in registry.list_strategies()
    if not was_registered:
        registry.register(cls)
    try:
        check_selection_valid(cls.name)
    finally:
        registry.unregister(cls.name)


def test_guide_shows_the_contract_inline_and_it_works():
    blocks = [b for b in _inline_python_blocks(GUIDE.read_text(encoding="utf-8")) if "def select(self" in b]
    assert blocks, "the guide has no inline strategy example"
    _check_contract_example(blocks[0], "guide")


def test_protocol_docstring_shows_the_contract_and_it_works():
    import subsetlab.protocol as protocol

    doc = protocol.__doc__ or ""
    m = re.search(r"::\n\n((?:    .*\n|\n)+)", doc)
    assert m and "def select(self" in m.group(1), "protocol.py's docstring has no strategy example"
    _check_contract_example(textwrap.dedent(m.group(1)), "protocol")
