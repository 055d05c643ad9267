"""Training failures end to end: through the suite runner, the results file, the CLI and report.

A diverging run, an exception in any hook of a (third-party style) strategy, a strategy that
calls ``sys.exit()``, every kind of invalid selection, and a worker process killed mid-run are
each recorded as one ``failed`` record with the reason, the step and the strategy's name, and
the suite goes on to the runs after them.

The faulty strategy lives in a module written at test time and imported (as a user's own
strategy module would be), so spawn workers can import it too.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import warnings
from pathlib import Path

import pytest
from subsetlab import cli, registry
from subsetlab.bench.runner import LocalProcessExecutor, run_suite
from subsetlab.bench.store import read_records
from subsetlab.bench.suite import Suite
from subsetlab.testing import tiny_model, tiny_problem, tiny_trainer_config
from subsetlab.trainer import Trainer

pytestmark = pytest.mark.timeout(180)

FAULTY = '''
"""A random strategy with one injected fault (subsetlab's hardening tests)."""
import os
import signal
import sys
from typing import Literal

import torch

from subsetlab import Selection, SelectionStrategy, StrategyConfig, register


class FaultyConfig(StrategyConfig):
    """Config of :class:`Faulty`."""

    name: Literal["hardening-faulty"] = "hardening-faulty"
    fault: str = "none"
    at_step: int = 0


@register
class Faulty(SelectionStrategy):
    """Uniform random subsets every pseudo-epoch, and one fault from ``at_step`` on."""

    name = "hardening-faulty"
    Config = FaultyConfig

    def _on(self, where, state=None):
        return self.config.fault == where and (state is None or state.step >= self.config.at_step)

    def setup(self, ctx):
        super().setup(ctx)
        if self._on("setup"):
            raise RuntimeError("fault injected in setup")

    def should_select(self, state):
        if self._on("should_select", state):
            raise KeyError("fault injected in should_select")
        return state.epoch_start

    def on_step_end(self, state, info):
        if self._on("on_step_end", state):
            raise ZeroDivisionError("fault injected in on_step_end")

    def state_dict(self):
        if self._on("state_dict"):
            raise RuntimeError("fault injected in state_dict")
        return {}

    def select(self, state):
        b, f = self.ctx.budget, self.config.fault
        idx = torch.randperm(b.n, generator=self.ctx.generator)[: b.subset_size]
        w = torch.ones(len(idx))
        if state.step < self.config.at_step:
            return Selection(idx, w)
        if f == "select":
            raise ValueError("fault injected in select")
        if f == "exit":
            sys.exit(3)
        if f == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if f == "out_of_range":
            idx[0] = b.n
        elif f == "negative_index":
            idx[-1] = -1
        elif f == "negative_weight":
            w[1] = -0.5
        elif f == "zero_weight":
            w[2] = 0.0
        elif f == "nan_weight":
            w[0] = float("nan")
        elif f == "inf_weight":
            w[0] = float("inf")
        elif f == "over_budget":
            big = max(b.n, b.total_steps * b.batch_size) + 1
            idx, w = torch.arange(big) % b.n, torch.ones(big)
        elif f == "int32_indices":
            idx = idx.to(torch.int32)
        elif f == "float_indices":
            idx = idx.double()
        elif f == "length_mismatch":
            w = w[:-1]
        elif f == "empty":
            idx, w = idx[:0], w[:0]
        elif f == "two_d":
            idx, w = idx[:4].reshape(2, 2), w[:4].reshape(2, 2)
        elif f == "list_weights":
            w = [1.0] * len(idx)
        elif f == "bad_plan":
            return Selection(idx, w, [torch.tensor([0, len(idx)])])
        elif f == "empty_plan":
            return Selection(idx, w, [])
        elif f == "not_a_selection":
            return idx, w
        return Selection(idx, w)
'''

#: fault -> (error type recorded, message fragment); all at step S (the second pseudo-epoch)
FAULTS = {
    "select": ("StrategyFailure", r"raised ValueError in select\(\): fault injected in select"),
    "should_select": ("StrategyFailure", r"raised KeyError in should_select\(\)"),
    "on_step_end": ("StrategyFailure", r"raised ZeroDivisionError in on_step_end\(\)"),
    "exit": ("StrategyFailure", r"raised SystemExit in select\(\): 3"),
    "out_of_range": ("SelectionError", r"indices span \[\d+, 144\], outside \[0, 144\)"),
    "negative_index": ("SelectionError", r"indices span \[-1, \d+\]"),
    "negative_weight": ("SelectionError", r"weights include values <= 0 \(min -0\.5\)"),
    "zero_weight": ("SelectionError", r"weights include values <= 0 \(min 0\.0\)"),
    "nan_weight": ("SelectionError", r"weights contain NaN or infinite values"),
    "inf_weight": ("SelectionError", r"weights contain NaN or infinite values"),
    "over_budget": ("SelectionError", r"size \d+ exceeds the budget of \d+ rows"),
    "int32_indices": ("SelectionError", r"indices have dtype torch\.int32; they must be int64"),
    "float_indices": ("SelectionError", r"indices have dtype torch\.float64"),
    "length_mismatch": ("SelectionError", r"are not two 1-D tensors of the same length"),
    "empty": ("SelectionError", r"size is 0"),
    "two_d": ("SelectionError", r"are not two 1-D tensors"),
    "list_weights": ("SelectionError", r"indices/weights are not torch tensors"),
    "bad_plan": ("SelectionError", r"batch plan has an empty batch or positions outside"),
    "empty_plan": ("SelectionError", r"batch plan is empty"),
    "not_a_selection": ("SelectionError", r"returned tuple from select\(\); it must return a subsetlab\.Selection"),
}


@pytest.fixture(autouse=True)
def _quiet_plugins():
    from subsetlab.registry import PluginLoadWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        yield


@pytest.fixture
def faulty(tmp_path, monkeypatch):
    """The faulty strategy, registered by importing a user module (spawn workers import it too)."""
    (tmp_path / "sl_hardening_faulty.py").write_text(FAULTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("sl_hardening_faulty")
    yield
    registry.unregister("hardening-faulty")
    sys.modules.pop("sl_hardening_faulty", None)


DATA = {"name": "synthetic", "options": {"n": 160, "n_test": 80, "dim": 6, "classes": 3}}
TRAINER = {"epochs": 3, "batch_size": 16, "lr": 0.05, "device": "cpu"}
S = 3  # ceil(0.25 * 144 / 16): steps per pseudo-epoch; the faults fire at the second one


def _suite(strategies, name="faults", **extra) -> Suite:
    return Suite.from_dict(
        {
            "name": name,
            "datasets": [DATA],
            "model": {"name": "mlp", "options": {"hidden": [8]}},
            "trainer": TRAINER,
            "budgets": [0.25],
            "strategies": strategies,
            "include_full": False,
            **extra,
        }
    )


def _faulty(fault: str) -> dict:
    return {"name": "hardening-faulty", "fault": fault, "at_step": S, "label": f"faulty-{fault}"}


def test_every_fault_is_recorded_with_step_reason_and_strategy_and_the_suite_goes_on(tmp_path, faulty):
    entries = [_faulty(f) for f in FAULTS] + [_faulty("setup"), "random"]
    suite = _suite(entries)
    path = tmp_path / "results.jsonl"
    out = run_suite(suite, path, progress="none", threads=1)
    recs = {r["spec"]["label"]: r for r in read_records(path)}
    assert len(recs) == len(entries) == len(out.ran)
    assert recs["random"]["status"] == "ok"  # the last run still ran, after all the failures
    for fault, (kind, pattern) in FAULTS.items():
        rec = recs[f"faulty-{fault}"]
        err = rec["error"]
        assert rec["status"] == "failed" and rec["result"]["status"] == "failed", fault
        assert err["type"] == kind, (fault, err)
        assert re.search(pattern, err["message"]), (fault, err["message"])
        assert "Strategy 'hardening-faulty'" in err["message"]  # names the strategy
        assert err["step"] == S == rec["result"]["failed_step"]  # the step it failed at
        res = rec["result"]  # what ran before the failure is kept
        assert res["history"] and res["history"][0]["epoch"] == 0
        assert res["work"]["steps"] == (S if fault != "on_step_end" else S + 1)
    setup = recs["faulty-setup"]
    assert setup["error"]["type"] == "StrategyFailure" and "in setup()" in setup["error"]["message"]
    assert setup["error"]["step"] == 0 and setup["result"]["work"]["steps"] == 0
    assert out.n_failed == len(FAULTS) + 1 and out.n_ok == 1
    for line in path.read_text().splitlines():  # strict JSON throughout
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_a_diverging_run_is_recorded_with_its_step_and_the_suite_goes_on(tmp_path):
    diverge = {"name": "synthetic", "normalize": False, "options": {"n": 200, "n_test": 80, "dim": 8, "separation": 1e6}}
    suite = Suite.from_dict(
        {
            "name": "diverge",
            "datasets": [diverge, DATA],
            "model": {"name": "mlp", "options": {"hidden": [16]}},
            "trainer": {**TRAINER, "lr": 100.0, "weight_decay": 0.0},
            "budgets": [0.5],
            "strategies": ["random"],
            "include_full": False,
        }
    )
    path = tmp_path / "results.jsonl"
    out = run_suite(suite, path, progress="none", threads=1)
    bad, good = read_records(path)
    assert bad["status"] == "failed" and bad["error"]["type"] == "TrainingDiverged"
    step = bad["error"]["step"]
    assert isinstance(step, int) and step == bad["result"]["failed_step"]
    assert re.search(rf"Training loss became (nan|inf|-inf) at step {step} \(pseudo-epoch \d+, lr 100\)", bad["error"]["message"])
    assert "lower the learning rate" in bad["error"]["message"]
    assert bad["result"]["work"]["steps"] == step  # no step after the divergence was taken
    assert good["status"] == "ok"  # the next run went on (lr 100 on standardised data is survivable)
    assert out.n_failed == 1 and out.n_ok == 1


def test_cli_exit_code_and_report_with_failed_runs(tmp_path, faulty, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text(
        'name = "cli-faults"\nbudgets = [0.25]\ninclude_full = false\n'
        'strategies = ["random", "hardening-faulty[fault=nan_weight,at_step=3]"]\n'
        '[[datasets]]\nname = "synthetic"\noptions = { n = 160, n_test = 80, dim = 6, classes = 3 }\n'
        '[model]\nname = "mlp"\noptions = { hidden = [8] }\n'
        '[trainer]\nepochs = 3\nbatch_size = 16\ndevice = "cpu"\n'
    )
    results = tmp_path / "r.jsonl"
    code = cli.main(["run", str(suite), "--results", str(results), "--progress", "lines", "--no-plots", "--format", "md"])
    out = capsys.readouterr().out
    assert code == cli.EXIT_FAILED_RUNS
    assert "FAILED" in out and "SelectionError" in out and "1 ok, 1 failed" in out
    assert cli.main(["report", str(results), "--no-plots", "--format", "md", "--out", str(tmp_path)]) == cli.EXIT_OK
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if "hardening-faulty" in line)
    assert row.rstrip(" |").endswith("| 0 | 1")  # seeds 0 ok, failed 1


def test_a_worker_killed_mid_run_fails_only_its_run(tmp_path, faulty):
    """A strategy that SIGKILLs its own worker process: that run is recorded as failed, a fresh
    pool takes the rest."""
    suite = _suite([_faulty("die"), "random", _faulty("select")], name="pool")
    path = tmp_path / "results.jsonl"
    with LocalProcessExecutor(workers=1, threads=1) as ex:
        out = run_suite(suite, path, progress="none", executor=ex)
    recs = {r["spec"]["label"]: r for r in read_records(path)}
    died = recs["faulty-die"]
    assert died["status"] == "failed" and died["error"]["type"] == "BrokenProcessPool"
    assert "worker process running this run died" in died["error"]["message"]
    assert recs["random"]["status"] == "ok"
    sel = recs["faulty-select"]
    assert sel["error"]["type"] == "StrategyFailure" and "hardening-faulty" in sel["error"]["message"]
    assert out.n_ok == 1 and out.n_failed == 2


def test_a_failing_state_dict_fails_the_run_naming_the_strategy(tmp_path, faulty):
    strategy = registry.create({"name": "hardening-faulty", "fault": "state_dict"})
    trainer = Trainer(tiny_trainer_config(checkpoint_every=1), checkpoint_path=tmp_path / "ckpt.pt")
    result = trainer.fit(strategy, tiny_model(0), tiny_problem(0), 0, run_key="r")
    assert result.status == "failed" and result.error.startswith("StrategyFailure")
    assert "Strategy 'hardening-faulty' raised RuntimeError in state_dict()" in result.error
    assert not (tmp_path / "ckpt.pt").exists()


# ---------------------------------------------------------------------- installed plugins
def _make_dist(root: Path, dist: str, module: str, source: str, entry_points: dict[str, str]) -> None:
    """Write an installed distribution (dist-info + module) the way pip lays one out."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[subsetlab.strategies]\n{eps}\n")
    (info / "RECORD").write_text("")


LOOSE = '''
from typing import Literal
from pydantic import ConfigDict
from subsetlab import SelectionStrategy, StrategyConfig

class LooseConfig(StrategyConfig):
    model_config = ConfigDict(frozen=False, extra="allow")
    name: Literal["loose"] = "loose"

class Loose(SelectionStrategy):
    name = "loose"
    Config = LooseConfig
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    _make_dist(root, "hardening-faulty-plugin", "hardening_faulty_plugin", FAULTY, {"hardening-faulty": "hardening_faulty_plugin:Faulty"})
    _make_dist(root, "import-error-plugin", "import_error_plugin", "raise ImportError('no such native lib')\n", {"ie": "import_error_plugin:X"})
    _make_dist(root, "crashing-plugin", "crashing_plugin", "x = 1 / 0\n", {"crash": "crashing_plugin:X"})
    _make_dist(root, "syntax-plugin", "syntax_plugin", "def broken(:\n", {"syntax": "syntax_plugin:X"})
    _make_dist(root, "missing-attr-plugin", "missing_attr_plugin", "y = 1\n", {"missing": "missing_attr_plugin:Nope"})
    _make_dist(root, "loose-plugin", "loose_plugin", LOOSE, {"loose": "loose_plugin:Loose"})
    _make_dist(root, "dup-random-plugin", "dup_random_plugin", FAULTY.replace('"hardening-faulty"', '"random"'), {"random2": "dup_random_plugin:Faulty"})
    _make_dist(root, "dup-faulty-plugin", "dup_faulty_plugin", FAULTY.replace("class Faulty(", "class FaultyCopy("), {"zz-copy": "dup_faulty_plugin:FaultyCopy"})
    return root


def _subsetlab(site: Path, *args: str, cwd: Path) -> tuple[int, str, str]:
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "subsetlab.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_broken_plugins_are_warnings_naming_their_distribution(plugin_site, tmp_path):
    code, out, err = _subsetlab(plugin_site, "list", "--json", cwd=tmp_path)
    assert code == 0, err
    listed = {s["name"]: s["distribution"] for s in json.loads(out)["strategies"]}
    assert listed["hardening-faulty"] == "hardening-faulty-plugin"
    assert listed["random"] == "subsetlab"  # a plugin never shadows a built-in
    expect = {
        "import-error-plugin": "ImportError: no such native lib",
        "crashing-plugin": "ZeroDivisionError",
        "syntax-plugin": "SyntaxError",
        "missing-attr-plugin": "AttributeError",
        "loose-plugin": "must be frozen with extra='forbid'",
        "dup-random-plugin": "already registered",
        "dup-faulty-plugin": "already registered",
    }
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    for dist, why in expect.items():
        hit = [w for w in warned if f"distribution {dist!r}" in w]
        assert len(hit) == 1 and why in hit[0] and "1.2.3" in hit[0], (dist, warned)
    assert "loose" not in listed and "ie" not in listed


def test_a_plugin_returning_invalid_selections_fails_its_runs_naming_it(plugin_site, tmp_path):
    suite = tmp_path / "plugins.toml"
    faults = ["out_of_range", "nan_weight", "over_budget", "int32_indices", "exit", "select"]
    lines = ", ".join(f'"hardening-faulty[fault={f},at_step=3]"' for f in faults)
    suite.write_text(
        f'name = "plugins"\nbudgets = [0.25]\ninclude_full = false\nstrategies = ["random", {lines}]\n'
        '[[datasets]]\nname = "synthetic"\noptions = { n = 160, n_test = 80, dim = 6, classes = 3 }\n'
        '[model]\nname = "mlp"\noptions = { hidden = [8] }\n'
        '[trainer]\nepochs = 2\nbatch_size = 16\ndevice = "cpu"\n'
    )
    results = tmp_path / "r.jsonl"
    code, out, err = _subsetlab(plugin_site, "run", str(suite), "--results", str(results), "--progress", "lines", "--no-plots", "--format", "md", cwd=tmp_path)
    assert code == cli.EXIT_FAILED_RUNS, out + err
    recs = {r["spec"]["strategy"].get("fault", "random"): r for r in read_records(results)}
    assert recs["random"]["status"] == "ok"
    for f in faults:
        rec = recs[f]
        assert rec["status"] == "failed" and re.search(FAULTS[f][1], rec["error"]["message"]), (f, rec["error"])
        assert "'hardening-faulty'" in rec["error"]["message"] and rec["error"]["step"] == 3
    assert f"1 ok, {len(faults)} failed" in out


def test_a_suite_naming_a_plugin_that_failed_to_load_is_a_usage_error(plugin_site, tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('name = "x"\nstrategies = ["ie"]\n')
    code, out, err = _subsetlab(plugin_site, "run", str(suite), "--dry-run", cwd=tmp_path)
    assert code == cli.EXIT_USAGE
    assert "Unknown strategy 'ie'" in err and str(suite) in err
    assert "distribution 'import-error-plugin'" in err  # the reason is on screen too
