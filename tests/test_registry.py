"""The registry: decorator, errors, create(), and discovery through real entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest

from subsetlab import registry
from subsetlab.config import StrategyConfig
from subsetlab.errors import ConfigError, DuplicateStrategyError, RegistryError, UnknownStrategyError
from subsetlab.protocol import Selection, SelectionStrategy


class _Cfg(StrategyConfig):
    name: Literal["toy"] = "toy"
    k: int = 3


class _Toy(SelectionStrategy):
    name = "toy"
    Config = _Cfg

    def should_select(self, state):
        return False

    def select(self, state):
        return Selection.uniform(list(range(self.config.k)))


@pytest.fixture
def toy():
    registry.register(_Toy)
    yield _Toy
    registry.unregister("toy")


def test_register_twice_is_idempotent_but_duplicates_raise(toy):
    assert registry.register(_Toy) is _Toy

    class Other(_Toy):
        pass

    with pytest.raises(DuplicateStrategyError, match="already registered"):
        registry.register(Other)


def test_unknown_name_lists_registered_and_suggests(toy):
    with pytest.raises(UnknownStrategyError) as exc:
        registry.get("rnadom")
    msg = str(exc.value)
    assert "Did you mean 'random'?" in msg and "toy" in msg and "full" in msg
    assert isinstance(exc.value, KeyError) and isinstance(exc.value, ValueError)


def test_create_validates_kwargs_dicts_and_brackets(toy):
    assert registry.create("toy", k=5).config.k == 5
    assert registry.create({"name": "toy", "k": 7}).config.k == 7
    assert registry.create("toy[k=9]").config.k == 9
    with pytest.raises(ConfigError, match=r"The 'k' parameter of strategy 'toy' \(_Cfg\).*Got 'x'"):
        registry.create("toy", k="x")
    with pytest.raises(ConfigError, match="unknown parameter 'q'"):
        registry.create({"name": "toy", "q": 1})
    with pytest.raises(ConfigError, match="needs a 'name'"):
        registry.make_config({"k": 1})


def test_parse_override_values():
    got = registry.parse_override("crest[tau=0.05, b=3,drop=true,mode=coreset,xs=[1,2],v=none]")
    assert got == {"name": "crest", "tau": 0.05, "b": 3, "drop": True, "mode": "coreset", "xs": [1, 2], "v": None}
    with pytest.raises(ConfigError):
        registry.parse_override("crest[tau]")
    with pytest.raises(ConfigError):
        registry.parse_override("cr est")


def test_registration_requires_a_proper_config():
    class Loose(StrategyConfig):
        name: Literal["loose"] = "loose"

    class Bad(SelectionStrategy):
        name = "bad"
        Config = Loose

    with pytest.raises(RegistryError, match="must default to 'bad'"):
        registry.register(Bad)
    with pytest.raises(RegistryError, match="must subclass"):
        registry.register(object, name="obj")


def test_configs_are_frozen(toy):
    cfg = registry.make_config("toy")
    with pytest.raises(ValueError):
        cfg.k = 4


def test_builtins_come_from_the_subsetlab_distribution():
    info = registry.info("random")
    assert info.distribution == "subsetlab" and info.entry_point == "strategies.random:RandomStrategy"


# ----------------------------------------------------------- real entry points, fresh process


def _make_dist(root: Path, dist: str, module: str, source: str, entry_points: dict[str, str]) -> None:
    """Write an installed distribution (dist-info + module) the way pip lays one out."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[subsetlab.strategies]\n{eps}\n")
    (info / "RECORD").write_text("")


GOOD = """
from typing import Literal
import torch
from subsetlab import SelectionStrategy, StrategyConfig, Selection, register

class EveryOtherConfig(StrategyConfig):
    name: Literal["every-other"] = "every-other"

@register
class EveryOther(SelectionStrategy):
    '''Every second example.'''
    name = "every-other"
    Config = EveryOtherConfig
    def should_select(self, state): return False
    def select(self, state): return Selection.uniform(torch.arange(0, self.ctx.budget.n, 2))
"""

BROKEN = "raise ImportError('this plugin is broken on purpose')\n"

TWO_IN_ONE = """
from typing import Literal
from subsetlab import SelectionStrategy, StrategyConfig, register

class MainOneConfig(StrategyConfig):
    name: Literal["main-one"] = "main-one"

class MainOne(SelectionStrategy):
    name = "main-one"
    Config = MainOneConfig

class ExtraOneConfig(StrategyConfig):
    name: Literal["extra-one"] = "extra-one"

@register
class ExtraOne(SelectionStrategy):
    name = "extra-one"
    Config = ExtraOneConfig
"""

DUPLICATE = """
from typing import Literal
from subsetlab import SelectionStrategy, StrategyConfig, register

class RandomAgainConfig(StrategyConfig):
    name: Literal["random"] = "random"

@register
class RandomAgain(SelectionStrategy):
    name = "random"
    Config = RandomAgainConfig
"""

PROBE = """
import json, warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    from subsetlab import registry
    names = registry.list_strategies()
    src = {i.name: [i.distribution, i.version] for i in registry.info()}
print(json.dumps({"names": names, "src": src, "warnings": [str(x.message) for x in w]}))
"""


def _probe(path: Path, **env: str) -> dict:
    full_env = {**os.environ, "PYTHONPATH": str(path), **env}
    out = subprocess.check_output([sys.executable, "-c", PROBE], env=full_env, text=True)
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    _make_dist(root, "subsetlab-every-other", "every_other_plugin", GOOD, {"every-other": "every_other_plugin:EveryOther"})
    _make_dist(root, "broken-plugin", "broken_plugin", BROKEN, {"broken": "broken_plugin:Nothing"})
    _make_dist(root, "dup-plugin", "dup_plugin", DUPLICATE, {"random-again": "dup_plugin:RandomAgain"})
    _make_dist(root, "two-in-one", "two_in_one_plugin", TWO_IN_ONE, {"main-one": "two_in_one_plugin:MainOne"})
    return root


def test_entry_point_plugin_is_discovered_with_its_distribution(plugin_path):
    got = _probe(plugin_path)
    assert "every-other" in got["names"]
    assert got["src"]["every-other"] == ["subsetlab-every-other", "1.2.3"]
    assert got["src"]["random"][0] == "subsetlab"  # the built-ins come through the same door


def test_a_class_a_plugin_registers_itself_while_it_loads_is_attributed_to_its_distribution(plugin_path):
    got = _probe(plugin_path)
    assert got["src"]["main-one"] == ["two-in-one", "1.2.3"]
    assert got["src"]["extra-one"] == ["two-in-one", "1.2.3"]


def test_broken_and_duplicate_plugins_become_warnings_naming_the_distribution(plugin_path):
    got = _probe(plugin_path)
    broken = [w for w in got["warnings"] if "broken-plugin" in w]
    assert broken and "failed to load" in broken[0] and "broken on purpose" in broken[0]
    dup = [w for w in got["warnings"] if "dup-plugin" in w]
    assert dup and "already registered" in dup[0]
    assert "random" in got["names"] and got["src"]["random"][0] == "subsetlab"


def test_autoload_switch_turns_discovery_off(plugin_path):
    got = _probe(plugin_path, SUBSETLAB_DISABLE_PLUGIN_AUTOLOAD="1")
    assert got["names"] == [] and got["warnings"] == []


def test_import_subsetlab_is_cheap():
    code = "import sys, subsetlab; print(json.dumps(sorted(m for m in ('torch','strategies','sklearn','apricot','matplotlib') if m in sys.modules)))"
    out = subprocess.check_output([sys.executable, "-c", "import json;" + code], text=True)
    assert json.loads(out) == []


# ----------------------------------------------------------- one registry, one unknown-name error


def test_strategies_datasets_and_models_raise_the_same_unknown_name_error():
    from subsetlab.data import get_loader
    from subsetlab.errors import UnknownNameError
    from subsetlab.models import model_info

    for lookup, typo, close in ((registry.get, "rnadom", "random"), (get_loader, "digitz", "digits"), (model_info, "mlpp", "mlp")):
        with pytest.raises(UnknownNameError) as exc:
            lookup(typo)
        assert isinstance(exc.value, (ConfigError, KeyError, RegistryError))
        assert f"Did you mean {close!r}?" in str(exc.value) and "Registered " in str(exc.value)
    assert UnknownStrategyError is UnknownNameError


def test_importing_a_builtin_module_registers_nothing():
    code = (
        "import json, strategies.random, strategies.crest; from subsetlab import registry; "
        "print(json.dumps(registry.list_strategies()))"
    )
    env = {**os.environ, "SUBSETLAB_DISABLE_PLUGIN_AUTOLOAD": "1"}
    out = subprocess.check_output([sys.executable, "-c", code], env=env, text=True)
    assert json.loads(out.strip().splitlines()[-1]) == []  # the entry points are the only door


def test_capabilities_come_from_the_config_for_the_suite_and_the_instance():
    cls = registry.get("gradmatch")
    val = registry.make_config("gradmatch[target=val]")
    assert cls.capabilities_for(val).needs_validation and not cls.capabilities.needs_validation
    assert registry.create(val).capabilities == cls.capabilities_for(val)
    assert registry.create("gradmatch").capabilities == cls.capabilities_for(registry.make_config("gradmatch"))
    assert _Toy.capabilities_for(_Cfg()) is _Toy.capabilities  # the class attribute by default
