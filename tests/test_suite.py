"""Suites: TOML parsing and validation, expansion into runs, run keys, overrides."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

from subsetlab import registry
from subsetlab.bench.suite import (
    Suite,
    default_suite_text,
    load_default_suite,
    load_suite,
    parse_list,
)
from subsetlab.config import RunSpec
from subsetlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

TINY = """
name = "tiny"
budgets = [0.1, 0.3]
seeds = [0, 1]
strategies = [
  "random",
  "sgd-truncated",
  { name = "random", select_every = 2, label = "random-R2" },
]

[[datasets]]
name = "synthetic"
options = { n = 200, n_test = 100, dim = 8 }

[model]
name = "mlp"
options = { hidden = [16] }

[trainer]
epochs = 2
batch_size = 32
"""


@pytest.fixture(autouse=True)
def _quiet_plugins():
    from subsetlab.registry import PluginLoadWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        yield


def write(tmp_path: Path, text: str, name: str = "suite.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path: Path, text: str, name: str = "bad.toml") -> str:
    with pytest.raises(ConfigError) as info:
        load_suite(write(tmp_path, text, name))
    return str(info.value)


# ---------------------------------------------------------------------- parsing
def test_good_file_parses(tmp_path):
    suite = load_suite(write(tmp_path, TINY))
    assert suite.name == "tiny"
    assert suite.budgets == (0.1, 0.3)
    assert suite.seeds == (0, 1)
    assert [d.name for d in suite.datasets] == ["synthetic"]
    assert suite.datasets[0].options == {"n": 200, "n_test": 100, "dim": 8}
    assert [m.name for m in suite.models] == ["mlp"]
    assert suite.trainer.epochs == 2 and suite.trainer.batch_size == 32
    assert suite.include_full is True and suite.all is False
    labels = [e.display_name for e in suite.strategy_entries()]
    assert labels == ["random", "sgd-truncated", "random-R2"]
    assert suite.strategies[2].config.select_every == 2


def test_name_defaults_to_file_stem(tmp_path):
    text = TINY.replace('name = "tiny"\n', "", 1)
    assert load_suite(write(tmp_path, text, "my_suite.toml")).name == "my_suite"


def test_default_label_lists_changed_parameters(tmp_path):
    suite = load_suite(write(tmp_path, TINY.replace('"sgd-truncated",', '"random[select_every=3]",')))
    assert [e.display_name for e in suite.strategy_entries()][1] == "random[select_every=3]"


def test_star_means_every_registered_strategy(tmp_path):
    suite = load_suite(write(tmp_path, TINY.replace('  "random",\n', '  "*",\n', 1)))
    assert suite.all is True
    names = [e.config.name for e in suite.strategy_entries()]
    # "*" adds all registered defaults; the explicit default "random" is not duplicated
    assert sorted(set(names)) == registry.list_strategies()
    assert names.count("random") == 2  # default random and random-R2
    labels = [e.display_name for e in suite.strategy_entries()]
    assert len(labels) == len(set(labels))


# ---------------------------------------------------------------------- expansion
def test_expansion_count_and_full_run_shared_across_budgets(tmp_path):
    suite = load_suite(write(tmp_path, TINY))
    specs = suite.expand()
    # per seed: 1 full + 2 budgets x 3 strategies
    assert len(specs) == 2 * (1 + 2 * 3)
    assert len({s.key for s in specs}) == len(specs)
    full = [s for s in specs if s.strategy.name == "full"]
    assert len(full) == 2 and all(s.trainer.fraction == 1.0 for s in full)
    assert sorted(s.seed for s in full) == [0, 1]
    assert {s.trainer.fraction for s in specs if s.strategy.name != "full"} == {0.1, 0.3}
    assert specs[0].strategy.name == "full"  # the reference runs first


def test_explicit_full_is_deduplicated(tmp_path):
    suite = load_suite(write(tmp_path, TINY.replace('"sgd-truncated",', '"full",')))
    specs = suite.expand()
    assert len(specs) == 2 * (1 + 2 * 2)
    assert sum(s.strategy.name == "full" for s in specs) == 2


def test_include_full_false(tmp_path):
    suite = load_suite(write(tmp_path, TINY.replace("[[datasets]]", "include_full = false\n\n[[datasets]]")))
    assert all(s.strategy.name != "full" for s in suite.expand())
    assert len(suite.expand()) == 2 * 2 * 3


def test_several_datasets_and_models(tmp_path):
    text = TINY.replace(
        "[model]",
        '[[datasets]]\nname = "synthetic"\noptions = { n = 300 }\n\n[model]',
    )
    suite = load_suite(write(tmp_path, text)).with_overrides(budgets=[0.2], seeds=[0])
    assert len(suite.expand()) == 2 * (1 + 3)


# ---------------------------------------------------------------------- keys
def _spec(**trainer):
    return RunSpec.model_validate(
        {
            "data": {"name": "synthetic", "options": {"n": 200}},
            "model": {"name": "mlp"},
            "trainer": {"epochs": 2, **trainer},
            "strategy": "random[select_every=2]",
            "seed": 3,
        }
    )


def test_same_spec_same_key_device_and_label_do_not_change_it():
    a = _spec()
    assert a.key == _spec().key
    assert len(a.key) == 16
    assert _spec(device="cpu").key == a.key
    assert RunSpec.model_validate({**a.model_dump(), "label": "other"}).key == a.key
    assert _spec(lr=0.05).key != a.key
    assert _spec(fraction=0.3).key != a.key


def test_key_is_stable_in_a_fresh_process():
    a = _spec()
    code = (
        "import json, sys, warnings; warnings.simplefilter('ignore');"
        "from subsetlab.config import RunSpec;"
        "print(RunSpec.model_validate(json.loads(sys.argv[1])).key)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(a.model_dump(mode="json"))],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == a.key


def test_suite_expansion_keys_are_stable(tmp_path):
    p = write(tmp_path, TINY)
    assert [s.key for s in load_suite(p).expand()] == [s.key for s in load_suite(p).expand()]


# ---------------------------------------------------------------------- bad files
def test_unknown_top_level_key(tmp_path):
    msg = error_of(tmp_path, "budget = [0.1]\n" + TINY)
    assert "bad.toml" in msg
    assert "budget: unknown key" in msg and "budgets" in msg


def test_unknown_trainer_key_names_the_path(tmp_path):
    msg = error_of(tmp_path, TINY.replace("epochs = 2", "epoch = 2"))
    assert "bad.toml" in msg and "trainer.epoch: unknown key" in msg


def test_bad_budget(tmp_path):
    msg = error_of(tmp_path, TINY.replace("budgets = [0.1, 0.3]", "budgets = [0.1, 1.5]"))
    assert "budgets[1]" in msg and "1.5" in msg and "(0, 1]" in msg


def test_duplicate_seeds(tmp_path):
    msg = error_of(tmp_path, TINY.replace("seeds = [0, 1]", "seeds = [1, 1]"))
    assert "seeds" in msg and "unique" in msg


def test_unknown_strategy_suggests_the_closest(tmp_path):
    msg = error_of(tmp_path, TINY.replace('"sgd-truncated",', '"randm",'))
    assert "strategies[1]" in msg and "Did you mean 'random'" in msg


def test_strategy_parameter_out_of_range_names_the_field(tmp_path):
    msg = error_of(tmp_path, TINY.replace("select_every = 2", "select_every = 0"))
    assert "bad.toml" in msg
    assert "strategies[2].select_every" in msg
    assert "RandomConfig" in msg  # the message of the strategy config's own validation


def test_unknown_strategy_parameter(tmp_path):
    msg = error_of(tmp_path, TINY.replace('"sgd-truncated",', '"random[tau=0.05]",'))
    assert "strategies[1].tau" in msg and "unknown parameter" in msg


def test_trainer_fraction_is_rejected(tmp_path):
    msg = error_of(tmp_path, TINY.replace("epochs = 2", "epochs = 2\nfraction = 0.2"))
    assert "trainer.fraction" in msg and "budgets" in msg


def test_same_label_for_two_configs(tmp_path):
    text = TINY.replace('"sgd-truncated",', '{ name = "random", select_every = 3, label = "random-R2" },')
    msg = error_of(tmp_path, text)
    assert "random-R2" in msg and "distinct" in msg


def test_toml_syntax_error_gives_line_and_column(tmp_path):
    msg = error_of(tmp_path, 'name = "x"\nbudgets = [0.1\nseeds = [0]\n')
    assert "bad.toml" in msg and "TOML" in msg and "line" in msg and "column" in msg


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_suite("/nonexistent/suite.toml")


def test_several_problems_reported_together(tmp_path):
    text = TINY.replace("budgets = [0.1, 0.3]", "budgets = [0]").replace('"sgd-truncated",', '"nope",')
    msg = error_of(tmp_path, text)
    assert "budgets[0]" in msg and "strategies[1]" in msg


# ---------------------------------------------------------------------- overrides
def test_overrides_replace_and_revalidate(tmp_path):
    suite = load_suite(write(tmp_path, TINY))
    o = suite.with_overrides(
        strategies=["random[select_every=3]"], seeds=[5], budgets=[0.2], trainer={"epochs": 3}, data={"n_train": 150}
    )
    assert [e.display_name for e in o.strategy_entries()] == ["random[select_every=3]"]
    assert o.seeds == (5,) and o.budgets == (0.2,) and o.trainer.epochs == 3
    assert o.trainer.batch_size == 32 and o.datasets[0].n_train == 150
    assert len(o.expand()) == 2
    assert suite.seeds == (0, 1)  # the original is unchanged (frozen)
    with pytest.raises(ConfigError, match=r"trainer\.epochs"):
        suite.with_overrides(trainer={"epochs": 0})
    with pytest.raises(ConfigError, match=r"strategies\[0\]\.select_every"):
        suite.with_overrides(strategies=["random[select_every=-1]"])
    assert suite.with_overrides(strategies=["*"]).all is True


def test_parse_list():
    assert parse_list("0.1, 0.3", float) == [0.1, 0.3]
    assert parse_list("0,1,2", int) == [0, 1, 2]
    with pytest.raises(ConfigError, match="'x'"):
        parse_list("0,x", int, "seed")


# ---------------------------------------------------------------------- packaged suites
def test_packaged_default_suite_is_quick_toml():
    assert default_suite_text() == (REPO / "benchmarks" / "suites" / "quick.toml").read_text()
    suite = load_default_suite()
    assert suite.name == "quick" and suite.all and suite.include_full
    assert [d.name for d in suite.datasets] == ["digits"]


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "suites").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_suites_validate(path):
    import tomllib

    raw = tomllib.loads(path.read_text())
    names = {s if isinstance(s, str) else s["name"] for s in raw.get("strategies", [])}
    missing = sorted(registry.parse_override(n)["name"] for n in names if n != "*")
    missing = [n for n in missing if n not in registry.list_strategies()]
    if missing:
        pytest.skip(f"{path.name} uses strategies not registered here: {missing}")
    suite = load_suite(path)
    assert suite.expand()


def test_suite_is_frozen(tmp_path):
    suite = load_suite(write(tmp_path, TINY))
    with pytest.raises(ValidationError, match="frozen"):
        suite.seeds = (3,)
    assert isinstance(Suite.model_json_schema(), dict)
