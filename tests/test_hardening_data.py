"""Hardening against odd datasets: each case ends in a specific error before training starts,
or in a documented fallback (see :meth:`subsetlab.trainer.Trainer.fit`) that is tested here.

Every case goes through the layer a user meets it at: the :class:`IndexedDataset` constructor,
:func:`make_splits`, :meth:`Trainer.fit`, :func:`subsetlab.api.run_spec` with a registered
loader, and the suite runner (which records the failure and goes on). ``CASES`` counts the
bad-dataset cases exercised; the last test prints the figure.
"""

from __future__ import annotations

import collections
import re
import warnings
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from subsetlab import registry
from subsetlab.api import run_spec
from subsetlab.bench.runner import run_suite
from subsetlab.bench.store import read_records
from subsetlab.bench.suite import Suite
from subsetlab.config import DataConfig
from subsetlab.data import (
    DataSplits,
    IndexedDataset,
    RawData,
    from_torch_dataset,
    load_data,
    make_splits,
    normalization_stats,
    register_dataset,
    unregister_dataset,
)
from subsetlab.errors import DataError
from subsetlab.testing import tiny_trainer_config
from subsetlab.trainer import Trainer

pytestmark = pytest.mark.timeout(300)

STRATEGIES = sorted(registry.list_strategies())
#: bad-dataset cases exercised (name -> layers it went through)
CASES: collections.Counter[str] = collections.Counter()


@pytest.fixture(autouse=True)
def _quiet_plugins():
    from subsetlab.registry import PluginLoadWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        yield


# ---------------------------------------------------------------------- helpers
def blobs(counts: list[int], dim: int = 6, seed: int = 0, num_classes: int | None = None, name: str = "blobs") -> IndexedDataset:
    """Separable Gaussian blobs with ``counts[c]`` examples of class ``c``."""
    g = torch.Generator().manual_seed(seed)
    c = len(counts)
    centres = torch.randn(c, dim, generator=g) * 3
    y = torch.repeat_interleave(torch.arange(c), torch.tensor(counts, dtype=torch.long))
    y = y[torch.randperm(len(y), generator=g)]
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    return IndexedDataset(x, y, num_classes or c, name)


def model_for(dim: int, classes: int, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, classes))


def record_selections(strategy) -> list:
    """Wrap ``strategy.select`` to keep every Selection it returns."""
    log: list = []
    inner = strategy.select

    def select(state):
        sel = inner(state)
        log.append(sel)
        return sel

    strategy.select = select
    return log


def fit(name: str, data: DataSplits, **trainer):
    strategy = registry.create(name)
    log = record_selections(strategy)
    cfg = tiny_trainer_config(**{"epochs": 2, **trainer})
    result = Trainer(cfg).fit(strategy, model_for(data.train.input_shape[0], data.train.num_classes), data, 0)
    return result, log


def splits(train_counts: list[int], val_counts: list[int] | None = (10, 10, 10, 10), num_classes: int | None = None) -> DataSplits:
    k = num_classes or len(train_counts)
    val = blobs(list(val_counts), seed=1, num_classes=k, name="val") if val_counts is not None else None
    return DataSplits(blobs(train_counts, num_classes=k, name="train"), val, blobs([10] * k, seed=2, name="test"))


# ---------------------------------------------------------------------- malformed tensors
def _x(n=40, d=6):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(3))


def _y(n=40, k=4):
    return torch.arange(n) % k


BAD_TENSORS: dict[str, tuple[Callable[[], tuple], str]] = {
    "nan-features": (lambda: (_x().index_put_((torch.tensor([3]), torch.tensor([2])), torch.tensor(float("nan"))), _y()), r"1 example\(s\) have NaN or infinite features"),
    "inf-features": (lambda: (torch.where(torch.arange(40)[:, None] < 5, float("inf"), _x()), _y()), r"5 example\(s\) have NaN or infinite"),
    "neg-inf-features": (lambda: (_x().index_fill_(0, torch.tensor([0, 1]), float("-inf")), _y()), r"2 example\(s\) have NaN"),
    "labels-above-range": (lambda: (_x(), _y().index_fill_(0, torch.tensor([7]), 9), 4), r"labels must lie in \[0, 4\)\. Got labels in \[0, 9\]"),
    "negative-labels": (lambda: (_x(), _y() - 1), r"labels must lie in \[0, \d+\)\. Got labels in \[-1,"),
    "float-labels": (lambda: (_x(), _y().float()), r"labels must be an integer tensor\. Got dtype torch\.float32"),
    "bool-labels": (lambda: (_x(), _y() > 1), r"labels must be an integer tensor\. Got dtype torch\.bool"),
    "complex-labels": (lambda: (_x(), _y().to(torch.complex64)), r"labels must be an integer tensor"),
    "one-hot-labels": (lambda: (_x(), nn.functional.one_hot(_y())), r"expected x of shape \[N, \.\.\.\] and y of shape \[N\]"),
    "length-mismatch": (lambda: (_x(41), _y()), r"Got x \(41, 6\) and y \(40,\)"),
    "numpy-input": (lambda: (_x().numpy(), _y()), r"must be torch tensors"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_malformed_tensors_are_refused_with_a_specific_message(case):
    make, pattern = BAD_TENSORS[case]
    with pytest.raises(DataError, match=pattern):
        IndexedDataset(*make(), name="bad")
    CASES[case] += 1


class _Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize(
    "case,items,pattern",
    [
        ("torch-float-label", [(torch.zeros(3), 1.0)] * 4, r"y of item 0 is float"),
        ("torch-bool-label", [(torch.zeros(3), torch.tensor(True))] * 4, r"y of item 0 is Tensor"),
        ("torch-nan-feature", [(torch.zeros(3), 0)] * 3 + [(torch.tensor([0.0, float("nan"), 0.0]), 1)], r"NaN or infinite"),
        ("torch-ragged", [(torch.zeros(3), 0), (torch.zeros(4), 1)], r"item 1 has shape \(4,\)"),
        ("torch-empty", [], r"is empty"),
        ("torch-string-feature", [("abc", 0)] * 2, r"non-numeric dtype"),
    ],
)
def test_torch_datasets_with_bad_items_are_refused(case, items, pattern):
    with pytest.raises(DataError, match=pattern):
        from_torch_dataset(_Items(items), name="user-ds")
    CASES[case] += 1


# ---------------------------------------------------------------------- the split pipeline
def test_a_class_without_training_examples_is_refused_by_the_pipeline():
    train = blobs([30, 30, 0, 30], num_classes=4)
    with pytest.raises(DataError, match=r"class\(es\) 2 of 4 have no training examples in the training set"):
        make_splits(train, blobs([5, 5, 5, 5], seed=2), val_fraction=0.1)
    CASES["empty-class-pipeline"] += 1


def test_a_validation_split_that_would_empty_a_class_is_refused():
    train = blobs([30, 1, 30, 30])  # class 1 has a single example: it cannot also give one to val
    with pytest.raises(DataError, match="would leave a class with no training examples"):
        make_splits(train, blobs([5, 5, 5, 5], seed=2), val_fraction=0.97)  # 88 > 29 + 0 + 29 + 29
    CASES["val-split-empties-class"] += 1
    ok = make_splits(train, blobs([5, 5, 5, 5], seed=2), val_fraction=0.2)  # the single example stays in train
    assert int(ok.train.class_counts()[1]) == 1 and int(ok.val.class_counts()[1]) == 0


def test_n_train_below_the_number_of_classes_is_refused():
    with pytest.raises(DataError, match=r"n_train=3 cannot keep one training example of each of its 4 classes"):
        make_splits(blobs([30] * 4), blobs([5] * 4, seed=2), n_train=3)
    CASES["n-train-below-classes"] += 1


def test_an_empty_test_split_is_refused():
    empty = IndexedDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long), 4, "test")
    with pytest.raises(DataError, match="test split is empty"):
        make_splits(blobs([30] * 4), empty)
    with pytest.raises(DataError, match="test split 'test' is empty"):
        Trainer(tiny_trainer_config()).fit(registry.create("random"), model_for(6, 4), DataSplits(blobs([30] * 4), None, empty), 0)
    CASES["empty-test-split"] += 1


def test_mismatched_splits_are_refused_before_training():
    data = splits([30] * 4)
    bad_shape = DataSplits(data.train, data.val, blobs([5] * 4, dim=7, seed=2, name="test"))
    with pytest.raises(DataError, match=r"test split 'test' has examples of shape \(7,\)"):
        Trainer(tiny_trainer_config()).fit(registry.create("random"), model_for(6, 4), bad_shape, 0)
    bad_labels = DataSplits(data.train, blobs([5] * 6, seed=1, name="val"), data.test)
    with pytest.raises(DataError, match=r"validation split 'val' has label 5 but the training split has 4 classes"):
        Trainer(tiny_trainer_config()).fit(registry.create("random"), model_for(6, 4), bad_labels, 0)
    empty_train = DataSplits(IndexedDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long), 4, "train"), None, data.test)
    with pytest.raises(DataError, match="training split 'train' is empty"):
        Trainer(tiny_trainer_config()).fit(registry.create("random"), model_for(6, 4), empty_train, 0)
    CASES["mismatched-test-shape"] += 1
    CASES["val-labels-past-classes"] += 1
    CASES["empty-train-split"] += 1


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e37])
def test_huge_finite_features_are_standardised_not_zeroed(scale):
    """float32 variances overflow past ~1e19; the statistics fall back to float64, so the run
    sees the same standardised data (and reaches the same accuracy) as unscaled features."""
    train, test = blobs([40] * 4), blobs([10] * 4, seed=2)
    ref = make_splits(train, test, val_fraction=0.1, name="blobs")
    big = make_splits(
        IndexedDataset(train.x * scale, train.y, 4), IndexedDataset(test.x * scale, test.y, 4), val_fraction=0.1, name="blobs"
    )
    std = big.train.x.std(0, correction=0)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3), std  # not zeroed
    assert torch.allclose(big.train.x, ref.train.x, atol=1e-3) and torch.allclose(big.test.x, ref.test.x, atol=1e-3)
    got, _ = fit("random", big, epochs=3)
    want, _ = fit("random", ref, epochs=3)
    assert got.ok and abs(got.metrics["final_acc"] - want.metrics["final_acc"]) <= 0.05
    CASES[f"huge-features-{scale:g}"] += 1


def test_statistics_of_extreme_features_stay_finite():
    """Near the top of float32 and float16, the statistics are computed in float64 and fit."""
    x = torch.tensor([[-3.0e38], [3.0e38], [3.0e38], [-3.0e38]])
    mean, std, _ = normalization_stats(x)
    assert float(mean) == 0.0 and float(std) == pytest.approx(3.0e38, rel=1e-6)
    half = torch.tensor([[-65000.0], [65000.0], [65000.0]], dtype=torch.float16)  # variance overflows float16
    mean, std, _ = normalization_stats(half)
    assert std.dtype == torch.float16 and float(std) == pytest.approx(61283.0, rel=1e-3)
    CASES["stats-overflow"] += 1


# ---------------------------------------------------------------------- fallbacks, every strategy
def _sel_stats(name, log, n):
    for sel in log:
        assert sel.indices.dtype == torch.int64 and int(sel.indices.min()) >= 0 and int(sel.indices.max()) < n
        assert bool((sel.weights > 0).all()) and bool(torch.isfinite(sel.weights).all())


#: strategies whose selections may repeat rows (overlapping mini-batch coresets)
REPEATS = {"crest"}


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_class_with_no_training_examples_is_skipped(name):
    """Hand-built splits may leave a class empty (the pipeline refuses it): training works and
    nothing is selected from the empty class."""
    data = splits([50, 50, 0, 50], val_counts=(10, 10, 0, 10), num_classes=4)
    result, log = fit(name, data)
    assert result.ok, result.error
    _sel_stats(name, log, len(data.train))
    assert log and all(not bool((data.train.y[s.indices] == 2).any()) for s in log)
    CASES["empty-class-fit"] += 1


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_class_smaller_than_its_quota_keeps_all_its_examples(name):
    """f = 0.9: a 1-example class cannot fill a proportional share; it gives what it has."""
    data = splits([60, 1, 40, 49])
    result, log = fit(name, data, fraction=0.9, batch_size=32)
    assert result.ok, result.error
    _sel_stats(name, log, len(data.train))
    if name not in REPEATS and registry.get(name).capabilities.budget == "fraction":
        k = result.budget["subset_size"]
        for sel in log:
            assert len(sel) == k and torch.unique(sel.indices).numel() == k  # no row taken twice
    CASES["class-below-quota"] += 1


@given(
    counts=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=12),
    k=st.integers(min_value=0, max_value=700),
)
@settings(max_examples=300, deadline=None, database=None)
def test_stratified_quotas_never_exceed_a_class(counts, k):
    from strategies.random import stratified_quotas

    c = torch.tensor(counts)
    q = stratified_quotas(c, k)
    assert bool((q >= 0).all()) and bool((q <= c).all())
    assert int(q.sum()) == min(k, int(c.sum()))
    total = int(c.sum())
    if total:  # within one of the proportional share, unless capped by the class size
        share = c.double() * min(k, total) / total
        assert bool(((q.double() - share).abs() < 1 + 1e-9).all() | (q == c).all())


#: batch-plan strategies that build B-row mini-batches even when the budget k < B (bugs in
#: files this test does not own; reported): they back-propagate 48 examples instead of 15


@pytest.mark.parametrize("name", STRATEGIES + ["craig[variant=per_batch]", "gradmatch[variant=per_batch]", "crest[preset=release,batch_mode=shuffle]"])
def test_a_budget_smaller_than_one_batch_trains_min_b_k_per_step(name):
    """ceil(f*N) = 5 < B = 16: one step per pseudo-epoch on 5 examples, for every method."""
    data = splits([60, 60, 60, 60])
    result, log = fit(name, data, fraction=0.02, batch_size=16, epochs=3)
    assert result.ok, result.error
    b = result.budget  # the full-data reference trains B per step; every budgeted method min(B, k)
    per_step = 16 if registry.get(name.split("[")[0]).capabilities.budget == "full" else min(16, b["subset_size"])
    assert result.work["steps"] == b["total_steps"]
    assert result.work["backprop_examples"] == b["total_steps"] * per_step
    CASES["budget-below-batch"] += 1


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_budget_smaller_than_the_number_of_classes(name):
    """k = 4 examples for 10 classes: valid selections of exactly k rows, some classes unselected."""
    data = splits([20] * 10, val_counts=[4] * 10)
    result, log = fit(name, data, fraction=0.02, batch_size=4)
    assert result.ok, result.error
    _sel_stats(name, log, len(data.train))
    if registry.get(name).capabilities.budget == "fraction" and name not in REPEATS:
        assert all(len(s) == result.budget["subset_size"] == 4 for s in log)
        assert all(torch.unique(data.train.y[s.indices]).numel() <= 4 for s in log)
    CASES["budget-below-classes"] += 1


NEEDS_VAL = [n for n in STRATEGIES if registry.get(n).capabilities.needs_validation]


@pytest.mark.parametrize("name", NEEDS_VAL)
@pytest.mark.parametrize("val", ["none", "empty"])
def test_missing_or_empty_validation_split_fails_before_training(name, val):
    data = splits([30] * 4)
    data.val = None if val == "none" else IndexedDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long), 4, "val")
    strategy = registry.create(name)
    log = record_selections(strategy)
    with pytest.raises(DataError, match=rf"Strategy {name!r} needs a validation split.*val_fraction > 0"):
        Trainer(tiny_trainer_config()).fit(strategy, model_for(6, 4), data, 0)
    assert log == []  # nothing was selected: it failed before training
    CASES[f"{val}-val-split"] += 1


@pytest.mark.parametrize("name", NEEDS_VAL)
def test_a_validation_split_missing_classes_still_runs(name):
    data = splits([40] * 4, val_counts=(1, 0, 0, 0), num_classes=4)
    result, log = fit(name, data)
    assert result.ok, result.error and log
    CASES["val-missing-classes"] += 1


def test_glister_without_validation_split_through_run_spec():
    spec = {
        "data": {"name": "synthetic", "val_fraction": 0.0, "options": {"n": 120, "n_test": 40, "dim": 5, "classes": 3}},
        "model": {"name": "mlp", "options": {"hidden": [8]}},
        "trainer": {"epochs": 1, "batch_size": 16, "device": "cpu"},
        "strategy": {"name": "glister"},
    }
    with pytest.raises(DataError, match="'glister' needs a validation split"):
        run_spec(spec)
    CASES["no-val-run-spec"] += 1


# ---------------------------------------------------------------------- loaders, run_spec, suites
def _raw(train: IndexedDataset) -> RawData:
    return RawData(train=train, test=blobs([5, 5, 5, 5], seed=2, name="t"))


def _set_train(x=None, y=None, k=4) -> Callable:
    """A loader whose training set is the blobs with ``x``/``y`` transformed (made bad)."""

    def loader(config, seed):
        base = blobs([30, 30, 30, 30])
        x_ = base.x if x is None else x(base.x)
        y_ = base.y if y is None else y(base.y)
        return _raw(IndexedDataset(x_, y_, k, "loaded"))  # raises where a user's loader would

    return loader


LOADERS = {
    "hard-nan": (_set_train(x=lambda x: x.index_fill(0, torch.tensor([4]), float("nan"))), "NaN or infinite features"),
    "hard-labels": (_set_train(y=lambda y: y.index_fill(0, torch.tensor([0]), 7)), r"labels must lie in \[0, 4\)"),
    "hard-float-labels": (_set_train(y=lambda y: y.float()), "labels must be an integer tensor"),
    "hard-empty-class": (lambda config, seed: _raw(blobs([30, 0, 30, 30], num_classes=4)), r"class\(es\) 1 of 4 have no training"),
    "hard-not-raw": (lambda config, seed: {"train": None}, "a loader must return subsetlab.data.RawData"),
}


@pytest.fixture
def bad_loaders():
    for name, (fn, _) in LOADERS.items():
        register_dataset(name)(fn)
    yield LOADERS
    for name in LOADERS:
        unregister_dataset(name)


def test_bad_loaders_fail_in_load_data_and_run_spec(bad_loaders):
    for name, (_, pattern) in bad_loaders.items():
        with pytest.raises(DataError, match=pattern):
            load_data(DataConfig(name=name), 0)
        with pytest.raises(DataError, match=pattern):
            run_spec({"data": {"name": name}, "trainer": {"epochs": 1, "device": "cpu"}, "strategy": "random"})
        CASES[f"loader-{name}"] += 1


def test_suite_runner_records_every_bad_dataset_and_goes_on(tmp_path, bad_loaders):
    good = {"name": "synthetic", "options": {"n": 120, "n_test": 40, "dim": 5, "classes": 3}}
    suite = Suite.from_dict(
        {
            "name": "bad-data",
            "datasets": [{"name": n} for n in bad_loaders] + [good, {**good, "val_fraction": 0.0}],
            "model": {"name": "mlp", "options": {"hidden": [8]}},
            "trainer": {"epochs": 1, "batch_size": 16, "device": "cpu"},
            "budgets": [0.25],
            "strategies": ["random", "glister"],
            "include_full": False,
        }
    )
    path = tmp_path / "results.jsonl"
    out = run_suite(suite, path, progress="none", threads=1)
    recs = {(r["spec"]["data"]["name"], r["spec"]["data"]["val_fraction"], r["spec"]["strategy"]["name"]): r for r in read_records(path)}
    assert len(recs) == len(suite.expand()) == 2 * (len(bad_loaders) + 2)
    for name, (_, pattern) in bad_loaders.items():
        for strat in ("random", "glister"):
            rec = recs[(name, 0.1, strat)]
            assert rec["status"] == "failed" and rec["error"]["type"] == "DataError", rec["error"]
            assert re.search(pattern, rec["error"]["message"])
            assert rec["result"] is None  # failed before training
    assert recs[("synthetic", 0.1, "random")]["status"] == "ok"
    assert recs[("synthetic", 0.1, "glister")]["status"] == "ok"
    assert recs[("synthetic", 0.0, "random")]["status"] == "ok"  # random needs no validation split
    no_val = recs[("synthetic", 0.0, "glister")]
    assert no_val["status"] == "failed" and no_val["error"]["type"] == "DataError"
    assert "needs a validation split" in no_val["error"]["message"]
    assert out.n_ok == 3 and out.n_failed == 2 * len(bad_loaders) + 1
    CASES["suite-runner-bad-data"] += 1


# ---------------------------------------------------------------------- the count
def test_zz_bad_dataset_case_count(capsys):
    if len(CASES) < 20:
        pytest.skip("run the whole module to count the bad-dataset cases")
    with capsys.disabled():
        print(f"\n[hardening] bad-dataset cases: {len(CASES)} distinct, {sum(CASES.values())} runs through the layers: {', '.join(sorted(CASES))}")
    assert len(CASES) >= 20
