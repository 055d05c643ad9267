"""The ``subsetlab`` command: list, schema, run, report, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest

from subsetlab.bench.store import read_records
from subsetlab.cli import main

SUITE = """
name = "cli-tiny"
budgets = [0.25]
seeds = [0]
strategies = ["random", "sgd-truncated"]

[[datasets]]
name = "synthetic"
options = { n = 160, n_test = 80, dim = 6, classes = 3 }

[model]
name = "mlp"
options = { hidden = [8] }

[trainer]
epochs = 2
batch_size = 32
lr = 0.05
"""


@pytest.fixture(autouse=True)
def _quiet_plugins():
    from subsetlab.registry import PluginLoadWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        yield


@pytest.fixture
def suite_file(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(textwrap.dedent(SUITE))
    return p


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "Strategies:" in out and "Datasets:" in out and "Models:" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("random "))
    assert "[subsetlab 0.1.0]" in line and "random" in line.lower()
    assert any(ln.strip().startswith("digits ") for ln in out.splitlines())
    assert any(ln.strip().startswith("mlp ") for ln in out.splitlines())


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rnd = next(s for s in data["strategies"] if s["name"] == "random")
    assert rnd["distribution"] == "subsetlab" and rnd["version"] == "0.1.0" and rnd["summary"]
    assert "synthetic" in [d["name"] for d in data["datasets"]]
    assert "mlp" in [m["name"] for m in data["models"]]


def test_schema(capsys):
    assert main(["schema", "random"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "RandomConfig"
    assert schema["properties"]["select_every"]["minimum"] == 1
    assert schema["additionalProperties"] is False


def test_schema_unknown_is_a_usage_error(capsys):
    assert main(["schema", "randm"]) == 2
    err = capsys.readouterr().err
    assert "Unknown strategy 'randm'" in err and "Did you mean 'random'" in err and "Traceback" not in err


def test_run_then_resume_then_report(suite_file, tmp_path, capsys):
    results = tmp_path / "res" / "results.jsonl"
    args = ["run", str(suite_file), "--results", str(results), "--quiet", "--threads", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "suite cli-tiny: 3 runs, 0 already recorded, 3 to run" in out
    assert "| dataset | model | budget | strategy |" in out
    assert "| synthetic | mlp | 1 | full |" in out and "| synthetic | mlp | 0.25 | random |" in out
    assert len(read_records(results)) == 3
    res_dir = results.parent
    for name in ("report.md", "report.csv", "accuracy_vs_epoch.png", "accuracy_vs_time.png", "time_breakdown.png"):
        assert (res_dir / name).stat().st_size > 0, name

    assert main(args) == 0  # resume: nothing left to run
    assert "3 already recorded, 0 to run" in capsys.readouterr().out
    assert len(read_records(results)) == 3

    out_dir = tmp_path / "rep"
    assert main(["report", str(results), "--out", str(out_dir), "--format", "csv", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| synthetic | mlp | 0.25 | sgd-truncated |" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["analytics.csv", "report.csv"]  # csv only, no plots


def test_run_overrides_and_default_results_path(suite_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(
        ["run", str(suite_file), "--strategy", "random[select_every=2]", "--seeds", "3", "--epochs", "1",
         "--no-full", "--quiet", "--no-plots", "--threads", "1", "--set", "data.n_train=100"]
    )
    assert code == 0
    (rec,) = read_records(tmp_path / "runs" / "cli-tiny" / "results.jsonl")
    spec = rec["spec"]
    assert spec["strategy"] == {"name": "random", "select_every": 2, "class_balanced": False}
    assert spec["seed"] == 3 and spec["trainer"]["epochs"] == 1 and spec["data"]["n_train"] == 100
    assert spec["label"] == "random[select_every=2]"


def test_dry_run_lists_runs(suite_file, tmp_path, capsys):
    assert main(["run", str(suite_file), "--results", str(tmp_path / "r.jsonl"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "suite cli-tiny: 3 runs" in out and out.count("to run") == 3
    assert not (tmp_path / "r.jsonl").exists()


def test_failed_runs_exit_1(suite_file, tmp_path, capsys):
    code = main(
        ["run", str(suite_file), "--results", str(tmp_path / "r.jsonl"), "--quiet", "--no-plots",
         "--set", "model.name=no-such-model", "--threads", "1"]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "no-such-model" in out and "3 failed" in out


def test_unknown_dataset_stops_the_suite_before_any_run(suite_file, tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    code = main(["run", str(suite_file), "--results", str(results), "--quiet", "--no-plots",
                 "--set", "data.name=no-such-data"])
    assert code == 2 and not results.exists()  # checked before any run: nothing recorded as failed
    assert "Unknown dataset 'no-such-data'" in capsys.readouterr().err


def test_config_errors_exit_2_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(textwrap.dedent(SUITE).replace("budgets = [0.25]", "budgets = [2.0]"))
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "budgets[0]" in err and "Traceback" not in err

    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", str(bad), "--strategy", "nope"]) == 2  # the suite is validated first
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", "--seeds", "a,b"]) == 2  # argparse usage error
    assert main(["run", "--workers", "0"]) == 2
    assert main(["report", str(bad), "--format", "html"]) == 2


def test_strategy_override_error_names_the_field(suite_file, capsys):
    assert main(["run", str(suite_file), "--strategy", "random[select_every=0]", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "strategies[0].select_every" in err and "RandomConfig" in err


def test_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "subsetlab.cli", "run", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0
    assert "--retry-failed" in out.stdout and "--strategy" in out.stdout and "resume" in out.stdout
