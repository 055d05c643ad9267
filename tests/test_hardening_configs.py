"""Property-based hardening of every config entry point: strategy, trainer, run spec and suite.

Hypothesis generates near-valid and malformed configs (boundary values, out-of-range numbers,
wrong types, unknown keys, NaN/inf, huge ints, strings, nested junk) from each config's own JSON
schema, so a newly registered strategy is fuzzed without new test code. Every example must
either validate into a config that is itself valid (finite floats, round-trips through
validation), or raise :class:`~subsetlab.errors.ConfigError` with a message naming the
offending field (suite errors also name the file). Any other exception, or a hang past the
deadline, fails the test.

``TRIED`` counts the examples; the last test prints the total and asserts it is >= 1,000.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import string
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subsetlab import registry
from subsetlab.bench.suite import Suite, default_suite_text, load_suite
from subsetlab.config import DataConfig, ModelConfig, RunSpec, TrainerConfig, validate
from subsetlab.errors import ConfigError

pytestmark = pytest.mark.timeout(300)

#: examples tried per test, and outcomes (filled as the tests run; reported by the last test)
TRIED: collections.Counter[str] = collections.Counter()
OUTCOMES: collections.Counter[str] = collections.Counter()

#: SUBSETLAB_FUZZ_SCALE=10 multiplies every example count (a longer local hunt); under CI
#: (``CI`` set) the examples are derandomised so a run is reproducible.
SCALE = float(os.environ.get("SUBSETLAB_FUZZ_SCALE", "1"))
EXAMPLES = {
    "trainer": 250,
    "strategy": 110,  # per registered strategy (7 built-ins -> 770)
    "override": 150,
    "runspec": 150,
    "suite_dict": 200,
    "suite_toml": 200,
    "suite_text_mutation": 200,
    "suite_overrides": 150,
}

EXAMPLES = {k: max(1, int(v * SCALE)) for k, v in EXAMPLES.items()}

FUZZ = settings(
    derandomize=bool(os.environ.get("CI")),
    deadline=timedelta(seconds=3),  # "never a hang": one example must not take seconds
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    database=None,
)

STRATEGY_NAMES = sorted(registry.list_strategies())


@pytest.fixture(scope="module", autouse=True)
def _warm():
    """Load plugins (imports torch) once, outside the per-example deadline."""
    from subsetlab.registry import PluginLoadWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        registry.list_strategies()
        yield


# ---------------------------------------------------------------------- value generators
NAN, INF = float("nan"), float("inf")
SPECIAL_FLOATS = [NAN, INF, -INF, 1e308, -1e308, 5e-324, -0.0, 0.0, 1e-300, 1.7976931348623157e308]
HUGE_INTS = [2**31, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63), 10**400]
ODD_STRINGS = ["", " ", "nan", "NaN", "inf", "-inf", "1e999", "0x10", " 1 ", "true", "None", "null", "é", "\x00", "[1,2]", "{}", "auto"]


def _junk() -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from(HUGE_INTS),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(SPECIAL_FLOATS),
        st.text(max_size=10),
        st.sampled_from(ODD_STRINGS),
    )
    return st.recursive(
        leaf,
        lambda kids: st.one_of(
            st.lists(kids, max_size=3),
            st.tuples(kids, kids),
            st.dictionaries(st.text(string.ascii_letters + "_", max_size=6), kids, max_size=3),
        ),
        max_leaves=6,
    )


_JUNK = st.deferred(_junk)  # deferred: a short repr in hypothesis' reports


def junk() -> st.SearchStrategy[Any]:
    """Values of the wrong type or out of any sensible range, nested junk included."""
    return _JUNK


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        return defs.get(ref.split("/")[-1], {})
    return prop


def _bounds(prop: dict[str, Any], integer: bool) -> tuple[float | None, float | None]:
    step = 1 if integer else 0.0
    lo = prop.get("minimum")
    if "exclusiveMinimum" in prop:
        lo = prop["exclusiveMinimum"] + step if integer else prop["exclusiveMinimum"]
    hi = prop.get("maximum")
    if "exclusiveMaximum" in prop:
        hi = prop["exclusiveMaximum"] - step if integer else prop["exclusiveMaximum"]
    return lo, hi


def near_valid(prop: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values around the schema's rules: inside, on and just outside every bound."""
    prop = _resolve(prop, defs)
    options: list[st.SearchStrategy[Any]] = []
    if "default" in prop:
        options.append(st.just(prop["default"]))
    for sub in prop.get("anyOf", []):
        options.append(near_valid(sub, defs))
    if "enum" in prop or "const" in prop:
        choices = list(prop.get("enum", [])) + ([prop["const"]] if "const" in prop else [])
        options.append(st.sampled_from(choices))
        texts = [c for c in choices if isinstance(c, str)]
        if texts:  # near misses of the allowed words
            options.append(st.sampled_from(texts).map(lambda c: c.upper()))
            options.append(st.sampled_from(texts).map(lambda c: c + " "))
            options.append(st.sampled_from(texts).map(lambda c: c[:-1]))
    t = prop.get("type")
    if t == "integer":
        lo, hi = _bounds(prop, True)
        lo_i = int(lo) if lo is not None else -5
        hi_i = int(hi) if hi is not None else lo_i + 1000
        edges = [lo_i - 1, lo_i, lo_i + 1, hi_i - 1, hi_i, hi_i + 1]
        options += [
            st.integers(min_value=lo_i, max_value=hi_i),
            st.sampled_from(edges),
            st.sampled_from(edges).map(float),  # 3.0 for an int field
            st.sampled_from(edges).map(str),  # "3" for an int field
            st.just(lo_i + 0.5),
        ]
    elif t == "number":
        lo, hi = _bounds(prop, False)
        lo_f = float(lo) if lo is not None else -1e6
        hi_f = float(hi) if hi is not None else 1e6
        edges = [lo_f, math.nextafter(lo_f, -INF), math.nextafter(lo_f, INF), hi_f, math.nextafter(hi_f, -INF), math.nextafter(hi_f, INF)]
        options += [
            st.floats(min_value=lo_f, max_value=hi_f, allow_nan=False),
            st.sampled_from(edges),
            st.sampled_from([NAN, INF, -INF]),
            st.integers(min_value=int(max(lo_f, -1e6)) - 1, max_value=int(min(hi_f, 1e6)) + 1),
            st.sampled_from(edges).map(repr),  # a number as a string
        ]
    elif t == "boolean":
        options += [st.booleans(), st.sampled_from([0, 1, 2, -1, "true", "yes", "off", "maybe", 0.5])]
    elif t == "string":
        options += [st.text(max_size=8), st.sampled_from(ODD_STRINGS)]
        if "pattern" in prop:
            options.append(st.from_regex(prop["pattern"], fullmatch=True).filter(lambda s: len(s) < 40))
    elif t == "array":
        item = prop.get("items", {})
        options.append(st.lists(near_valid(item, defs), max_size=4))
        options.append(st.lists(st.floats(0, 1), max_size=4).map(sorted))
    elif t == "null":
        options.append(st.none())
    elif t == "object":
        options.append(st.dictionaries(st.text(max_size=5), junk(), max_size=3))
    valid = st.one_of(options) if options else junk()
    return st.one_of(valid, valid, valid, junk())  # mostly near-valid, sometimes junk


UNKNOWN_KEYS = st.sampled_from(["tauu", "Tau", "select every", "extra", "", "name ", "__class__", "lr_", "0"])


def config_dicts(model: type, name: str | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings for ``model`` built from its JSON schema: a random subset of fields, each
    near-valid or junk, sometimes an unknown key, and (for strategies) the name mostly right."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    props = {k: v for k, v in schema.get("properties", {}).items() if k != "name" or name is None}
    base = st.fixed_dictionaries({}, optional={k: near_valid(v, defs) for k, v in props.items()})
    extra = st.dictionaries(UNKNOWN_KEYS, junk(), max_size=1)
    maybe_extra = st.one_of(st.just({}), st.just({}), st.just({}), extra)
    several = st.tuples(base, maybe_extra).map(lambda t: {**t[0], **t[1]})
    keys = sorted(props)
    one = (  # one field changed: the precise case, "the message names that field"
        st.sampled_from(keys).flatmap(lambda k: near_valid(props[k], defs).map(lambda v: {k: v}))
        if keys
        else st.just({})
    )
    out = st.one_of(several, one)
    if name is not None:
        names = st.one_of(*[st.just(name)] * 8, st.sampled_from([name.upper(), name + "x", 5, None]))
        out = st.tuples(out, names).map(lambda t: {**t[0], "name": t[1]})
    return out


# ---------------------------------------------------------------------- oracles
def _floats(obj: Any) -> list[float]:
    if isinstance(obj, float):
        return [obj]
    if isinstance(obj, dict):
        return [f for v in obj.values() for f in _floats(v)]
    if isinstance(obj, (list, tuple)):
        return [f for v in obj for f in _floats(v)]
    return []


def assert_sound(cfg: Any, options_free: bool = True) -> None:
    """An accepted config is valid by its own rules: finite floats, validation round trip."""
    dumped = cfg.model_dump()
    if options_free:  # free-form `options` dicts are checked by their data set / model
        for part in (dumped, *(v for v in dumped.values() if isinstance(v, dict))):
            if isinstance(part, dict):
                part.pop("options", None)
        assert all(math.isfinite(f) for f in _floats(dumped)), f"non-finite float accepted: {cfg!r}"
    again = type(cfg).model_validate(cfg.model_dump())
    assert again == cfg
    json.loads(cfg.model_dump_json())  # strict JSON


def assert_names_field(exc: ConfigError, fields: set[str]) -> None:
    """The message names the field (pydantic's loc, or a field named in a cross-field rule)."""
    msg = str(exc)
    assert msg.strip(), "empty ConfigError message"
    if exc.errors:
        for err in exc.errors:
            loc = [str(p) for p in err.get("loc", ())]
            if loc:
                assert loc[0] in msg, f"field {loc[0]!r} not named in: {msg}"
            else:  # a model-level rule: it must name at least one field in its text
                assert any(re.search(rf"\b{re.escape(f)}\b", msg) for f in fields if f), msg
    else:
        assert any(re.search(rf"\b{re.escape(f)}\b", msg) for f in fields if f) or "mapping" in msg, msg


def attempt(kind: str, call, fields: set[str], sound=assert_sound, changed: set[str] | None = None) -> Any:
    """Validate; on ConfigError check the message names the field(s). Count the example.

    ``changed``: when exactly one field was set, the message must name that very field.
    """
    TRIED[kind] += 1
    try:
        cfg = call()
    except ConfigError as exc:
        OUTCOMES["rejected"] += 1
        assert_names_field(exc, fields)
        if changed is not None and len(changed) == 1:
            (field,) = changed
            assert f"'{field}'" in str(exc) or f"{field}" in str(exc), f"{field!r} not named: {exc}"
        return None
    OUTCOMES["accepted"] += 1
    sound(cfg)
    return cfg


# ---------------------------------------------------------------------- trainer
@settings(FUZZ, max_examples=EXAMPLES["trainer"])
@given(config_dicts(TrainerConfig))
def test_trainer_configs_validate_or_name_the_field(data):
    fields = set(data) | set(TrainerConfig.model_fields)
    cfg = attempt("trainer", lambda: validate(TrainerConfig, data), fields, changed=set(data))
    if cfg is not None:  # the cross-field rules hold
        assert cfg.warmup_epochs <= cfg.epochs
        assert not (cfg.nesterov and cfg.momentum == 0.0)
        assert list(cfg.milestones) == sorted(cfg.milestones) and all(0 < m < 1 for m in cfg.milestones)
        if cfg.device != "auto":
            import torch

            torch.device(cfg.device)  # the trainer can build the device it names


# ---------------------------------------------------------------------- strategies
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_strategy_configs_validate_or_name_the_field(name):
    cls = registry.get(name).Config

    @settings(FUZZ, max_examples=EXAMPLES["strategy"])
    @given(config_dicts(cls, name))
    def check(data):
        fields = {str(k) for k in data} | set(cls.model_fields)
        changed = set(data) - {"name"} if data.get("name") == name else None
        cfg = attempt("strategy", lambda: registry.make_config(data), fields | {"name", "strategy"}, changed=changed)
        if cfg is not None:
            assert isinstance(cfg, cls) and cfg.name == name
            # the same mapping inside a run spec gives the same config
            spec = validate(RunSpec, {"strategy": data}, "RunSpec")
            assert spec.strategy == cfg and re.fullmatch(r"[0-9a-f]{16}", spec.key)
        else:
            with pytest.raises(ConfigError, match="strategy"):
                validate(RunSpec, {"strategy": data}, "RunSpec")

    check()


def _bracket(data: dict[str, Any]) -> str:
    name = data.get("name")
    body = ",".join(f"{k}={json.dumps(v, default=str)}" for k, v in data.items() if k != "name")
    return f"{name}[{body}]" if body else str(name)


@settings(FUZZ, max_examples=EXAMPLES["override"])
@given(
    st.one_of(
        st.sampled_from(STRATEGY_NAMES).flatmap(lambda n: config_dicts(registry.get(n).Config, n)).map(_bracket),
        st.text(string.printable, max_size=40),
        st.sampled_from(STRATEGY_NAMES).map(lambda n: n + "[" + "[" * 3000),
        st.sampled_from(STRATEGY_NAMES).map(lambda n: f"{n}[x={'[' * 3000}{']' * 3000}]"),
    )
)
def test_bracket_overrides_validate_or_raise_config_error(text):
    """``crest[tau=0.05]`` strings (the command line's form), well- and ill-formed."""
    fields = set(re.findall(r"[A-Za-z0-9_\-]+", text)) | {"name", "override", "strategy"}
    attempt("override", lambda: registry.make_config(text), fields)


def test_unknown_strategy_name_is_a_config_error_listing_the_registered_names():
    with pytest.raises(ConfigError, match=r"Unknown strategy 'crset'.*Did you mean 'crest'") as exc:
        registry.make_config({"name": "crset", "tau": 0.1})
    assert "random" in str(exc.value)
    assert isinstance(exc.value, KeyError)  # still the registry's UnknownStrategyError


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_nan_and_inf_are_rejected_for_every_float_field(value):
    """Every float field of every config rejects NaN and infinities, naming the field."""
    models: list[tuple[type, dict[str, Any]]] = [(TrainerConfig, {})]
    models += [(registry.get(n).Config, {"name": n}) for n in STRATEGY_NAMES]
    checked = 0
    for model, base in models:
        for field, info in model.model_fields.items():
            if float not in _leaf_types(info.annotation):
                continue
            with pytest.raises(ConfigError) as exc:
                validate(model, {**base, field: value})
            assert f"'{field}'" in str(exc.value)
            checked += 1
    assert checked >= 15  # trainer and strategy floats were found


def _leaf_types(annotation: Any) -> set[Any]:
    import typing

    args = typing.get_args(annotation)
    if not args:
        return {annotation}
    return {t for a in args for t in _leaf_types(a)}


# ---------------------------------------------------------------------- run specs
@settings(FUZZ, max_examples=EXAMPLES["runspec"])
@given(
    st.fixed_dictionaries(
        {"strategy": st.sampled_from(STRATEGY_NAMES)},
        optional={
            "data": config_dicts(DataConfig),
            "model": config_dicts(ModelConfig),
            "trainer": config_dicts(TrainerConfig),
            "seed": st.one_of(st.integers(min_value=-5, max_value=2**64), st.sampled_from(HUGE_INTS), junk()),
            "label": st.one_of(st.none(), st.text(max_size=10), junk()),
        },
    )
)
def test_run_specs_validate_or_name_the_field(data):
    fields = set(data) | set(RunSpec.model_fields)
    spec = attempt("runspec", lambda: validate(RunSpec, data, "RunSpec"), fields, sound=lambda s: s.key)
    if spec is not None:
        assert 0 <= spec.seed < 2**63 and re.fullmatch(r"[0-9a-f]{16}", spec.key)
        assert all(math.isfinite(f) for f in _floats(spec.trainer.model_dump()))


# ---------------------------------------------------------------------- suites
TINY = {
    "name": "tiny",
    "datasets": [{"name": "synthetic", "options": {"n": 160, "n_test": 80, "dim": 6, "classes": 3}}],
    "model": {"name": "mlp", "options": {"hidden": [8]}},
    "trainer": {"epochs": 2, "batch_size": 32, "lr": 0.05},
    "budgets": [0.25],
    "seeds": [0],
    "strategies": ["random", "sgd-truncated"],
}

strategy_entries = st.one_of(
    st.sampled_from(STRATEGY_NAMES + ["*", "nope", "Random", "crest[tau=2]", "crest[tau=nan]", "random[", ""]),
    st.sampled_from(STRATEGY_NAMES).flatmap(lambda n: config_dicts(registry.get(n).Config, n)),
    st.sampled_from(STRATEGY_NAMES).map(lambda n: {"name": n, "label": "x"}),
    st.sampled_from(STRATEGY_NAMES).map(lambda n: {"config": {"name": n}, "label": n.upper()}),
    junk(),
)

suite_dicts = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.just("tiny"), st.sampled_from(["", "a b", "x" * 101, "ok-name.1"]), junk()),
        "description": st.one_of(st.text(max_size=10), junk()),
        "datasets": st.one_of(
            st.just(TINY["datasets"]),
            st.lists(st.one_of(st.sampled_from(["digits", "synthetic"]), config_dicts(DataConfig)), max_size=2),
            junk(),
        ),
        "dataset": st.one_of(st.just("digits"), config_dicts(DataConfig)),
        "model": st.one_of(st.just(TINY["model"]), config_dicts(ModelConfig), junk()),
        "models": st.one_of(st.lists(config_dicts(ModelConfig), max_size=2), junk()),
        "trainer": st.one_of(st.just(TINY["trainer"]), config_dicts(TrainerConfig), junk()),
        "budgets": st.one_of(
            st.lists(st.floats(min_value=-0.5, max_value=1.5), max_size=3),
            st.lists(st.sampled_from([0.1, 0.25, 1.0, 0, 1e-300, NAN, INF]), max_size=3),
            junk(),
        ),
        "seeds": st.one_of(st.lists(st.integers(min_value=-3, max_value=2**64), max_size=3), junk()),
        "strategies": st.one_of(st.lists(strategy_entries, max_size=3), junk()),
        "all": st.one_of(st.booleans(), junk()),
        "include_full": st.one_of(st.booleans(), junk()),
        "threads": st.one_of(st.integers(min_value=-1, max_value=5000), junk()),
        "bogus": junk(),
    },
)


def _suite_sound(suite: Suite) -> None:
    specs = suite.expand()
    assert len({s.key for s in specs}) == len(specs)
    for s in specs:
        assert all(math.isfinite(f) for f in _floats(s.trainer.model_dump()))
        assert 0.0 < s.trainer.fraction <= 1.0


def _suite_fields(data: Any) -> set[str]:
    keys = set(data) if isinstance(data, dict) else set()
    return {str(k) for k in keys} | set(Suite.model_fields) | {"suite", "strategies", "trainer"}


@settings(FUZZ, max_examples=EXAMPLES["suite_dict"])
@given(suite_dicts)
def test_suite_dicts_validate_or_raise_config_error_naming_the_source(data):
    source = "fuzzed.toml"
    TRIED["suite_dict"] += 1
    try:
        suite = Suite.from_dict(data, source=source)
    except ConfigError as exc:
        OUTCOMES["rejected"] += 1
        msg = str(exc)
        assert source in msg, msg
        assert any(re.search(rf"\b{re.escape(f)}\b", msg) for f in _suite_fields(data)), msg
        return
    OUTCOMES["accepted"] += 1
    _suite_sound(suite)


# --- TOML text
def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_\-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        items = [_toml_value(x) for x in v]
        return "[" + ", ".join(x for x in items if x is not None) + "]"
    if isinstance(v, dict):
        items = [(k, _toml_value(x)) for k, x in v.items()]
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {x}" for k, x in items if x is not None) + " }"
    return json.dumps(str(v))


def to_toml(data: dict[str, Any]) -> str:
    """A small TOML writer: scalars and lists at the top, tables as [section]."""
    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
            continue
        text = _toml_value(v)
        if text is not None:
            lines.append(f"{_toml_key(str(k))} = {text}")
    for k, v in tables:
        lines.append(f"\n[{_toml_key(str(k))}]")
        for kk, vv in v.items():
            text = _toml_value(vv)
            if text is not None:
                lines.append(f"{_toml_key(str(kk))} = {text}")
    return "\n".join(lines) + "\n"


def _load_text(tmp: Path, text: str) -> tuple[Path, Any]:
    path = tmp / "fuzzed-suite.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        return path, load_suite(path)
    except ConfigError as exc:
        return path, exc


def _check_loaded(kind: str, path: Path, got: Any, data: Any = None) -> None:
    TRIED[kind] += 1
    if isinstance(got, ConfigError):
        OUTCOMES["rejected"] += 1
        msg = str(got)
        assert str(path) in msg, f"the file is not named: {msg}"
        return
    OUTCOMES["accepted"] += 1
    assert isinstance(got, Suite)
    _suite_sound(got)


@settings(FUZZ, max_examples=EXAMPLES["suite_toml"])
@given(suite_dicts)
def test_suite_toml_files_load_or_raise_config_error_naming_the_file(tmp_path_factory, data):
    tmp = tmp_path_factory.getbasetemp()
    path, got = _load_text(tmp, to_toml(data))
    _check_loaded("suite_toml", path, got, data)


def _mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    for pos, cut, insert in edits:
        p = pos % (len(text) + 1)
        text = text[:p] + insert + text[p + cut :]
    return text


@settings(FUZZ, max_examples=EXAMPLES["suite_text_mutation"])
@given(
    st.sampled_from([default_suite_text(), to_toml(TINY)]),
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=4000),
            st.integers(min_value=0, max_value=6),
            st.one_of(
                st.text(max_size=6),
                st.sampled_from(["nan", "inf", "1e999", "-1", "[", "]", "{", "=", '"', "\n[trainer]\n", "\n[[strategies]]\nname = 'x'\n", "99999999999999999999999"]),
            ),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_suite_files_load_or_raise_config_error_naming_the_file(tmp_path_factory, text, edits):
    tmp = tmp_path_factory.getbasetemp()
    path, got = _load_text(tmp, _mutate(text, edits))
    _check_loaded("suite_text_mutation", path, got)


@pytest.mark.parametrize(
    "text",
    [
        "name = 'deep'\nbudgets = " + "[" * 3000 + "]" * 3000 + "\n",
        "name = 'deep'\ntrainer = " + "{a = " * 2000 + "1" + "}" * 2000 + "\n",
        "name = 'x'\nbudgets = [nan]\n",
        "name = 'x'\nbudgets = [1e999]\n",
        "name = 'x'\n[trainer]\nlr = inf\n",
        "\x00\x01",
    ],
    ids=["deep-array", "deep-table", "nan-budget", "overflow-budget", "inf-lr", "binary"],
)
def test_pathological_suite_files_raise_config_error_naming_the_file(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_suite(path)
    assert str(path) in str(exc.value)
    TRIED["suite_pathological"] += 1
    OUTCOMES["rejected"] += 1


def test_non_utf8_suite_file_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.toml"):
        load_suite(path)


BASE_SUITE = None


def _base_suite() -> Suite:
    global BASE_SUITE
    if BASE_SUITE is None:
        BASE_SUITE = Suite.from_dict(TINY, source="tiny")
    return BASE_SUITE


@settings(FUZZ, max_examples=EXAMPLES["suite_overrides"])
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "trainer": config_dicts(TrainerConfig).map(lambda d: {k: v for k, v in d.items() if k != "fraction"}),
            "data": config_dicts(DataConfig),
            "model": config_dicts(ModelConfig),
            "seeds": st.lists(st.integers(min_value=-2, max_value=2**64), min_size=1, max_size=3),
            "budgets": st.lists(st.one_of(st.floats(-1, 2), st.sampled_from([NAN, INF])), min_size=1, max_size=3),
            "strategies": st.lists(st.one_of(st.sampled_from(STRATEGY_NAMES + ["*", "nope"]), st.text(max_size=12)), max_size=3),
        },
    )
)
def test_command_line_overrides_validate_or_raise_config_error(overrides):
    """``subsetlab run --set ... --seeds ... --budgets ... --strategy ...`` (Suite.with_overrides)."""
    TRIED["suite_overrides"] += 1
    try:
        suite = _base_suite().with_overrides(**overrides)
    except ConfigError as exc:
        OUTCOMES["rejected"] += 1
        msg = str(exc)
        assert "with command-line overrides" in msg, msg
        return
    OUTCOMES["accepted"] += 1
    _suite_sound(suite)


@pytest.mark.parametrize(
    "args,field",
    [
        (["--lr", "nan"], "lr"),
        (["--set", "trainer.lr=inf"], "lr"),
        (["--set", "trainer.max_seconds=1e999"], "max_seconds"),
        (["--set", "trainer.device=cuda:007"], "device"),
        (["--budgets", "0.1,nan"], "budgets"),
        (["--set", "data.val_fraction=NaN"], "val_fraction"),
        (["--strategy", "crest[tau=inf]"], "tau"),
        (["--strategy", "crset"], "crest"),
    ],
)
def test_cli_rejects_non_finite_and_bad_overrides_with_usage_error(tmp_path, capsys, args, field):
    from subsetlab import cli

    suite = tmp_path / "tiny.toml"
    suite.write_text(to_toml({k: v for k, v in TINY.items() if k not in ("model", "trainer")}) + "[model]\nname = 'mlp'\n")
    code = cli.main(["run", str(suite), "--dry-run", *args])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE, err
    assert field in err and "error:" in err
    TRIED["cli_override"] += 1
    OUTCOMES["rejected"] += 1


# ---------------------------------------------------------------------- the count
def test_zz_generated_config_count(capsys):
    """Runs last in this module: print how many configs were tried and require >= 1,000."""
    expected = sum(EXAMPLES.values()) + EXAMPLES["strategy"] * (len(STRATEGY_NAMES) - 1)
    if sum(TRIED.values()) < 0.5 * expected:
        pytest.skip("run the whole module to count the generated configs")
    total = sum(TRIED.values())
    with capsys.disabled():
        print(
            f"\n[hardening] generated configs tried: {total} "
            f"({', '.join(f'{k}={v}' for k, v in sorted(TRIED.items()))}); "
            f"accepted {OUTCOMES['accepted']}, rejected with ConfigError {OUTCOMES['rejected']}, "
            f"other exceptions 0"
        )
    assert total >= 1000
    assert OUTCOMES["accepted"] > 50 and OUTCOMES["rejected"] > 50  # both sides were exercised
