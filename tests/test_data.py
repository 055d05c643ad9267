"""Tests of subsetlab.data: loaders, splits, normalisation, augmentation, safety of pickles."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from subsetlab.config import DataConfig
from subsetlab.data import (
    AugmentPolicy,
    IndexedDataset,
    RandomCropFlip,
    RawData,
    from_torch_dataset,
    list_datasets,
    load_data,
    make_splits,
    read_idx,
    register_dataset,
    safe_load,
    stratified_sizes,
    stratified_split,
    unregister_dataset,
)
from subsetlab.errors import ConfigError, DataError, MissingDataError, RegistryError

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def digits0():
    return load_data(DataConfig(name="digits"), seed=0)


# --------------------------------------------------------------------------- registry


def test_builtin_datasets_are_registered():
    assert {"digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "synthetic"} <= set(list_datasets())


def test_unknown_dataset_lists_names_and_closest_match():
    with pytest.raises(ConfigError) as err:
        load_data(DataConfig(name="fashion-mnist"), 0)
    msg = str(err.value)
    assert "Unknown dataset 'fashion-mnist'" in msg
    assert "Did you mean 'fashion_mnist'?" in msg
    assert "digits" in msg and "cifar10" in msg


def test_register_custom_loader_and_duplicate_name():
    def loader(config, seed):
        x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
        y = torch.arange(20) % 2
        return RawData(train=IndexedDataset(x, y), test=IndexedDataset(x[:4], y[:4]), source_paths=["mem"])

    register_dataset("tiny_custom")(loader)
    try:
        register_dataset("tiny_custom")(loader)  # same function again: no-op
        with pytest.raises(RegistryError, match="already registered"):
            register_dataset("tiny_custom")(lambda c, s: None)
        splits = load_data(DataConfig(name="tiny_custom", val_fraction=0.2), 3)
        assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 4)
        assert splits.meta["source_paths"] == ["mem"]
    finally:
        unregister_dataset("tiny_custom")
    assert "tiny_custom" not in list_datasets()


def test_invalid_dataset_name_rejected():
    with pytest.raises(RegistryError, match="invalid"):
        register_dataset("Bad Name")


def test_loader_returning_wrong_type_is_reported():
    register_dataset("broken_loader")(lambda config, seed: (1, 2))
    try:
        with pytest.raises(DataError, match=r"must return subsetlab\.data\.RawData"):
            load_data(DataConfig(name="broken_loader"), 0)
    finally:
        unregister_dataset("broken_loader")


# --------------------------------------------------------------------------- stratified splits


def test_stratified_sizes_hand_checked():
    # ideal shares 2.5, 1.5, 1.0 -> floors 2, 1, 1 -> one more to the first of the largest gaps
    assert stratified_sizes([5, 3, 2], 5).tolist() == [3, 1, 1]
    # bounds: the last class may give nothing (upper 0), so the rest absorb it
    assert stratified_sizes([4, 4, 2], 5, upper=[3, 3, 0]).tolist() == [3, 2, 0]
    # lower bound 1 keeps the rare class
    assert stratified_sizes([98, 1, 1], 3, lower=1).tolist() == [1, 1, 1]
    assert stratified_sizes([10, 10], 20).tolist() == [10, 10]
    with pytest.raises(DataError, match="must lie in"):
        stratified_sizes([1, 1], 2, upper=[0, 0])


def test_stratified_split_partitions_with_exact_class_sizes():
    y = torch.tensor([0] * 7 + [1] * 5 + [2] * 3)[torch.randperm(15, generator=torch.Generator().manual_seed(1))]
    sizes = torch.tensor([3, 2, 1])
    picked, rest = stratified_split(y, sizes, torch.Generator().manual_seed(5))
    assert sorted(torch.cat([picked, rest]).tolist()) == list(range(15))
    assert torch.bincount(y[picked], minlength=3).tolist() == [3, 2, 1]
    again, _ = stratified_split(y, sizes, torch.Generator().manual_seed(5))
    assert torch.equal(picked, again)
    other = [stratified_split(y, sizes, torch.Generator().manual_seed(s))[0] for s in range(6, 12)]
    assert any(not torch.equal(picked, o) for o in other)


# --------------------------------------------------------------------------- digits


def test_digits_sizes_shapes_and_dtypes(digits0):
    s = digits0
    assert (len(s.train), len(s.val), len(s.test)) == (1294, 144, 359)
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert s.num_classes == 10 and s.train.input_shape == (1, 8, 8)
    for ds in (s.train, s.val, s.test):
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        assert ds.class_counts().min() > 0
    assert s.meta["sizes"] == {"available_train": 1438, "train": 1294, "val": 144, "test": 359}
    assert s.meta["source_paths"] and s.meta["class_names"] == [str(i) for i in range(10)]


def _fingerprint(splits) -> list:
    return [
        [round(float(d.x.double().sum()), 3) for d in (splits.train, splits.val, splits.test)],
        [int((d.y * torch.arange(len(d))).sum()) for d in (splits.train, splits.val, splits.test)],
    ]


def test_digits_split_deterministic_in_process_and_differs_across_seeds(digits0):
    again = load_data(DataConfig(name="digits"), seed=0)
    for a, b in ((digits0.train, again.train), (digits0.val, again.val), (digits0.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    other = load_data(DataConfig(name="digits"), seed=1)
    assert not torch.equal(digits0.test.x, other.test.x)
    assert not torch.equal(digits0.val.y, other.val.y)


def test_fresh_process_split_identical_and_import_cheap(digits0):
    code = (
        "import json, sys, subsetlab; assert 'subsetlab.data' not in sys.modules, 'data';"
        "import subsetlab.data, subsetlab.models; assert 'sklearn' not in sys.modules, 'sklearn';"
        "from subsetlab.config import DataConfig; from subsetlab.data import load_data;"
        "import torch; s = load_data(DataConfig(name='digits'), seed=0);"
        "print(json.dumps([[round(float(d.x.double().sum()), 3) for d in (s.train, s.val, s.test)],"
        "[int((d.y * torch.arange(len(d))).sum()) for d in (s.train, s.val, s.test)]]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == _fingerprint(digits0)


def test_digits_splits_are_stratified(digits0):
    raw = load_data(DataConfig(name="digits", val_fraction=0.0, normalize=False), seed=0)
    total = raw.train.class_counts() + raw.test.class_counts()
    for ds in (digits0.train, digits0.val, digits0.test):
        expected = total.double() * len(ds) / 1797
        assert (ds.class_counts().double() - expected).abs().max() <= 1.5


def test_split_independent_of_normalize_and_augment(digits0):
    plain = load_data(DataConfig(name="digits", normalize=False), seed=0)
    aug = load_data(DataConfig(name="digits", augment=True), seed=0)
    assert torch.equal(plain.train.y, digits0.train.y) and torch.equal(aug.val.y, digits0.val.y)
    mean = torch.tensor(digits0.meta["normalization"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(digits0.meta["normalization"]["std"]).view(1, -1, 1, 1)
    torch.testing.assert_close((plain.val.x - mean) / std, digits0.val.x)
    torch.testing.assert_close((plain.test.x - mean) / std, digits0.test.x)


def test_normalization_uses_training_statistics_only(digits0):
    x = digits0.train.x
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(1), atol=1e-4, rtol=0)
    plain = load_data(DataConfig(name="digits", normalize=False), seed=0)
    assert plain.meta["normalization"] is None
    norm = digits0.meta["normalization"]
    assert norm["axis"] == "channel"
    assert norm["mean"][0] == pytest.approx(float(plain.train.x.double().mean()), rel=1e-5)
    assert norm["std"][0] == pytest.approx(float(plain.train.x.double().std(unbiased=False)), rel=1e-5)
    assert 0.0 <= float(plain.train.x.min()) and float(plain.train.x.max()) <= 1.0
    # the validation and test splits are not standardised on their own statistics
    assert abs(float(digits0.test.x.mean())) > 1e-4


def test_n_train_subsample_is_stratified_and_checked():
    s = load_data(DataConfig(name="digits", n_train=200, val_fraction=0.25), seed=0)
    assert (len(s.train), len(s.val)) == (150, 50)
    counts = s.train.class_counts() + s.val.class_counts()
    assert counts.min() >= 19 and counts.max() <= 21
    with pytest.raises(ConfigError, match="has only 1438 training examples"):
        load_data(DataConfig(name="digits", n_train=5000), seed=0)
    with pytest.raises(DataError, match="at least 10"):
        load_data(DataConfig(name="digits", n_train=5), seed=0)


def test_val_fraction_zero_gives_no_val_split():
    s = load_data(DataConfig(name="digits", val_fraction=0.0), seed=0)
    assert s.val is None and len(s.train) == 1438 and s.meta["sizes"]["val"] == 0


def test_digits_options_validated():
    with pytest.raises(ConfigError, match="test_fraction"):
        load_data(DataConfig(name="digits", options={"test_fraction": 1.5}), 0)
    with pytest.raises(ConfigError, match="'holdout'"):
        load_data(DataConfig(name="digits", options={"holdout": 0.1}), 0)


def test_loading_leaves_global_rng_untouched():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    load_data(DataConfig(name="digits", n_train=300, augment=True), seed=4)
    load_data(DataConfig(name="synthetic"), seed=4)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert np.array_equal(after[1], np_state[1]) and after[2] == np_state[2]


# --------------------------------------------------------------------------- class checks


def test_class_without_training_examples_is_named():
    train = IndexedDataset(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 3, 3]))
    test = IndexedDataset(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(DataError, match=r"class\(es\) 2 of 4 have no training examples"):
        make_splits(train, test, val_fraction=0.0)


def test_val_split_that_would_empty_a_class_is_refused():
    train = IndexedDataset(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(DataError, match="would leave a class with no training examples"):
        make_splits(train, train, val_fraction=0.5)


def test_val_split_never_takes_the_last_example_of_a_class():
    y = torch.tensor([0] * 20 + [1] * 20 + [2])
    train = IndexedDataset(torch.randn(41, 2), y)
    s = make_splits(train, train, val_fraction=0.3, seed=1)
    assert s.train.class_counts().tolist()[2] == 1 and s.val.class_counts().tolist()[2] == 0
    assert len(s.val) == 12


# --------------------------------------------------------------------------- synthetic


def test_synthetic_blobs_shapes_imbalance_and_separation():
    cfg = DataConfig(
        name="synthetic",
        val_fraction=0.0,
        normalize=False,
        options={"n": 2000, "n_test": 400, "dim": 5, "classes": 4, "separation": 6.0, "imbalance": 8.0},
    )
    s = load_data(cfg, seed=2)
    assert s.train.input_shape == (5,) and s.num_classes == 4 and len(s.test) == 400
    counts = s.train.class_counts()
    assert counts.sum() == 2000 and counts[0] / counts[3] == pytest.approx(8.0, rel=0.05)
    assert s.test.class_counts().tolist() == [100, 100, 100, 100]
    means = torch.stack([s.train.x[s.train.y == c].mean(0) for c in range(4)])
    dists = torch.cdist(means, means)[~torch.eye(4, dtype=torch.bool)]
    assert dists.min() > 5.0 and dists.max() < 7.0
    again = load_data(cfg, seed=2)
    assert torch.equal(again.train.x, s.train.x)
    assert not torch.equal(load_data(cfg, seed=3).train.x, s.train.x)


def test_synthetic_options_named_in_errors():
    with pytest.raises(ConfigError, match="'bogus'"):
        load_data(DataConfig(name="synthetic", options={"bogus": 1}), 0)
    with pytest.raises(ConfigError, match="'classes'"):
        load_data(DataConfig(name="synthetic", options={"classes": 1}), 0)
    with pytest.raises(ConfigError, match="at least classes"):
        load_data(DataConfig(name="synthetic", options={"n": 3, "classes": 5}), 0)


def test_synthetic_normalization_is_per_feature():
    s = load_data(DataConfig(name="synthetic", options={"dim": 3}), seed=0)
    assert s.meta["normalization"]["axis"] == "feature" and len(s.meta["normalization"]["mean"]) == 3
    torch.testing.assert_close(s.train.x.mean(0), torch.zeros(3), atol=1e-5, rtol=0)


def test_augment_on_flat_data_is_a_config_error():
    with pytest.raises(ConfigError, match="defines no augmentation"):
        load_data(DataConfig(name="synthetic", augment=True), 0)


# --------------------------------------------------------------------------- IDX / MNIST-type


def _idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_plain_and_gzip(tmp_path, compress):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = _idx_bytes(arr)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    out = read_idx(path, ndim=3)
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_read_idx_big_endian_int32(tmp_path):
    arr = np.array([1, -2, 70000], dtype=np.int32)
    (tmp_path / "i").write_bytes(_idx_bytes(arr, 0x0C))
    assert read_idx(tmp_path / "i").tolist() == [1, -2, 70000]


def test_read_idx_rejects_corrupt_files(tmp_path):
    good = _idx_bytes(np.zeros((2, 2, 2), np.uint8))
    (tmp_path / "magic").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DataError, match="magic number is 1234"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")
    (tmp_path / "dims").write_bytes(good)
    with pytest.raises(DataError, match="3 dimensions where 1 were expected"):
        read_idx(tmp_path / "dims", ndim=1)
    (tmp_path / "badgz").write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(DataError, match="cannot be decompressed"):
        read_idx(tmp_path / "badgz")


def _write_fake_mnist(root, n_train=30, n_test=10, gz=True, labels=None):
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    files = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        lab = (np.arange(n) % 10).astype(np.uint8) if labels is None else labels
        for kind, arr in (("images-idx3", images), ("labels-idx1", lab)):
            name = f"{part}-{kind}-ubyte"
            raw = _idx_bytes(arr)
            path = os.path.join(root, name + (".gz" if gz else ""))
            with open(path, "wb") as f:
                f.write(gzip.compress(raw) if gz else raw)
            files[(part, kind)] = arr
    return files


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_fake_idx_files(tmp_path, gz):
    files = _write_fake_mnist(tmp_path, gz=gz)
    cfg = DataConfig(name="mnist", root=str(tmp_path), val_fraction=0.0, normalize=False, augment=True)
    s = load_data(cfg, 0)
    assert s.train.x.shape == (30, 1, 28, 28) and s.test.x.shape == (10, 1, 28, 28)
    torch.testing.assert_close(s.train.x[:, 0], torch.from_numpy(files[("train", "images-idx3")] / 255.0).float())
    assert s.test.y.tolist() == list(range(10))
    assert isinstance(s.train.augment, RandomCropFlip) and s.train.augment.padding == 2
    assert not s.train.augment.flip
    assert all(p.startswith(str(tmp_path)) for p in s.meta["source_paths"])


def test_mnist_label_count_mismatch(tmp_path):
    _write_fake_mnist(tmp_path, labels=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="do not belong together"):
        load_data(DataConfig(name="mnist", root=str(tmp_path)), 0)


def test_missing_idx_files_message(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_data(DataConfig(name="fashion_mnist", root=str(tmp_path)), 0)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert os.path.join(str(tmp_path), "train-images-idx3-ubyte.gz") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "zalandoresearch" in msg
    with pytest.raises(MissingDataError, match="ossci-datasets") as err:
        load_data(DataConfig(name="mnist", root=str(tmp_path / "nowhere")), 0)
    assert "t10k-labels-idx1-ubyte" in str(err.value)


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_ROOT, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian_package():
    s = load_data(DataConfig(name="fashion_mnist"), seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)
    assert s.train.input_shape == (1, 28, 28)
    assert (s.train.class_counts() + s.val.class_counts()).tolist() == [6000] * 10
    assert s.test.class_counts().tolist() == [1000] * 10
    assert s.meta["class_names"][9] == "Ankle boot"
    assert s.meta["normalization"]["mean"][0] == pytest.approx(0.286, abs=2e-3)


# --------------------------------------------------------------------------- CIFAR


def _py2_batch(data: np.ndarray, labels: list[int], label_key: str) -> bytes:
    """A pickle laid out like the original Python 2 CIFAR files (str keys, numpy.core globals)."""

    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    dtype = (
        b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
        + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    )
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
        + b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86" + dtype + b"\x89" + s(data.tobytes()) + b"tb"
    )
    labs = b"](" + b"".join(i(v) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(label_key.encode()) + labs + b"u."


def _write_cifar10(root, per_batch=4, n_test=6, style="py2"):
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d)
    rng = np.random.default_rng(1)
    batches = {}
    for k, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [(k * per_batch + j) % 10 for j in range(n)]
        batches[name] = (data, labels)
        with open(os.path.join(d, name), "wb") as f:
            if style == "py2":
                f.write(_py2_batch(data, labels, "labels"))
            else:
                pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f, protocol=style)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(os.path.join(d, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, f, protocol=4)
    return d, batches


@pytest.mark.parametrize("style", ["py2", 4, 5])
def test_cifar10_from_fake_batches(tmp_path, style):
    d, batches = _write_cifar10(tmp_path, style=style)
    cfg = DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.0, normalize=False, augment=True)
    s = load_data(cfg, 0)
    assert s.train.x.shape == (20, 3, 32, 32) and s.test.x.shape == (6, 3, 32, 32)
    data, labels = batches["data_batch_2"]
    torch.testing.assert_close(s.train.x[4:8], torch.from_numpy(data.reshape(4, 3, 32, 32) / 255.0).float())
    assert s.train.y[4:8].tolist() == labels
    assert s.test.y.tolist() == batches["test_batch"][1]
    assert s.meta["class_names"][3] == "cat"
    assert isinstance(s.train.augment, RandomCropFlip) and s.train.augment.padding == 4 and s.train.augment.flip
    # the batch directory itself is accepted as the root too
    s2 = load_data(cfg.model_validate({**cfg.model_dump(), "root": d}), 0)
    assert torch.equal(s2.train.x, s.train.x)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(2)
    for name, n in (("train", 200), ("test", 5)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [(7 * j) % 100 for j in range(n)]
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": fine, b"coarse_labels": [v % 20 for v in fine]}, f)
    s = load_data(DataConfig(name="cifar100", root=str(tmp_path), val_fraction=0.0), 0)
    assert s.num_classes == 100 and s.train.x.shape == (200, 3, 32, 32)
    assert s.train.y.tolist() == [(7 * j) % 100 for j in range(200)]
    c = load_data(DataConfig(name="cifar100", root=str(tmp_path), val_fraction=0.0, options={"labels": "coarse"}), 0)
    assert c.num_classes == 20 and c.meta["loader"] == {"labels": "coarse"}


def test_cifar_missing_files_message(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), 0)
    msg = str(err.value)
    assert "data_batch_1" in msg and "cs.toronto.edu" in msg and str(tmp_path) in msg


class _RunsCommand:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_malicious_pickle_is_refused_without_running(tmp_path, kind):
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = _RunsCommand(os.system, f"touch {marker}")
    else:
        payload = _RunsCommand(exec, f"open({str(marker)!r}, 'w').close()")
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": payload, b"labels": [0]}, f)
    with pytest.raises(DataError, match="Refused to load"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), 0)
    assert not marker.exists()
    with pytest.raises(DataError, match="Refused"):
        safe_load(d / "test_batch")
    assert not marker.exists()


def test_safe_load_roundtrip_and_garbage(tmp_path):
    obj = {b"a": np.arange(6, dtype=np.int32).reshape(2, 3), "b": [1, 2.5, b"x"], "c": np.float32(2.0)}
    (tmp_path / "ok").write_bytes(pickle.dumps(obj, protocol=5))
    out = safe_load(tmp_path / "ok")
    assert np.array_equal(out[b"a"], obj[b"a"]) and out["b"] == [1, 2.5, b"x"] and out["c"] == 2.0
    (tmp_path / "garbage").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DataError, match="Cannot read"):
        safe_load(tmp_path / "garbage")


def test_cifar_batch_with_wrong_shape(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"must be uint8 of shape \[N, 3072\]"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), 0)


# --------------------------------------------------------------------------- augmentation


def _reference_crop_flip(x: np.ndarray, dy, dx, flip, pad: int, fill) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        img = np.stack([np.pad(x[i, c], pad, constant_values=fill[c]) for c in range(x.shape[1])])
        crop = img[:, dy[i] : dy[i] + x.shape[2], dx[i] : dx[i] + x.shape[3]]
        out[i] = crop[:, :, ::-1] if flip[i] else crop
    return out


@pytest.mark.parametrize("pad,flip,hw", [(1, False, 8), (2, False, 28), (4, True, 32), (2, True, 6)])
def test_crop_flip_matches_brute_force_reference(pad, flip, hw):
    x = torch.randn(16, 3, hw, hw, generator=torch.Generator().manual_seed(0))
    aug = RandomCropFlip(pad, flip=flip, fill=[-1.0, 0.5, 2.0])
    dy, dx, fl = aug.sample(16, torch.Generator().manual_seed(7))
    out = aug(x, torch.Generator().manual_seed(7))
    ref = _reference_crop_flip(x.numpy(), dy.numpy(), dx.numpy(), fl.numpy(), pad, aug.fill)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(out.numpy(), ref)
    assert fl.any() == flip and (not flip or not fl.all())
    assert int(dy.min()) >= 0 and int(dy.max()) <= 2 * pad and (dy != pad).any()


def test_crop_flip_deterministic_per_generator():
    x = torch.randn(128, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    aug = RandomCropFlip(4, flip=True)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(3)
    first, second = aug(x, g), aug(x, g)
    assert torch.equal(first, a) and not torch.equal(first, second)


def test_crop_flip_zero_offset_is_identity_and_flip_mirrors():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    aug = RandomCropFlip(2, flip=True)
    centre = torch.tensor([2, 2])
    out = aug.apply(x, centre, centre, torch.tensor([False, True]))
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))


def test_augment_fill_is_a_black_pixel_after_normalization(digits0):
    s = load_data(DataConfig(name="digits", augment=True), seed=0)
    aug = s.train.augment
    norm = s.meta["normalization"]
    assert aug.padding == 1 and not aug.flip
    assert aug.fill[0] == pytest.approx(-norm["mean"][0] / norm["std"][0])
    assert s.meta["augment"] == {"padding": 1, "flip": False}


def test_crop_flip_rejects_non_image_batches():
    with pytest.raises(DataError, match=r"\[B, C, H, W\]"):
        RandomCropFlip(1)(torch.zeros(4, 10), torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_crop_flip_on_cuda_with_cpu_generator():
    x = torch.randn(8, 3, 32, 32)
    aug = RandomCropFlip(4, flip=True)
    out = aug(x.cuda(), torch.Generator().manual_seed(0))
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), aug(x, torch.Generator().manual_seed(0)))


# --------------------------------------------------------------------------- torch datasets


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_from_torch_dataset_tensor_and_numpy_items():
    x = torch.randn(10, 2, 3, generator=torch.Generator().manual_seed(0))
    y = torch.arange(10) % 3
    ds = from_torch_dataset(torch.utils.data.TensorDataset(x, y), name="td", batch_size=3)
    assert torch.equal(ds.x, x) and torch.equal(ds.y, y) and ds.num_classes == 3 and ds.name == "td"
    items = [(np.full((2,), i, dtype=np.uint8), np.int64(i % 2)) for i in range(5)]
    nd = from_torch_dataset(_PairDataset(items), num_classes=4)
    assert nd.x.dtype == torch.float32 and nd.x[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert nd.y.tolist() == [0, 1, 0, 1, 0] and nd.num_classes == 4


def test_from_torch_dataset_leaves_global_rng_alone():
    state = torch.get_rng_state()
    from_torch_dataset(_PairDataset([(torch.zeros(2), 1), (torch.ones(2), 0)]))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "items,match",
    [
        ([(torch.zeros(2), 1, "extra")], "3-tuple; expected an"),
        ([torch.zeros(2)], "Tensor; expected an"),
        ([(torch.zeros(2), 1.5)], "labels must be integer class ids"),
        ([(torch.zeros(2), torch.tensor([0, 1]))], "not one-hot"),
        ([(torch.zeros(2), 0), (torch.zeros(3), 1)], r"item 1 has shape \(3,\) but item 0 had \(2,\)"),
        ([("text", 0)], "non-numeric dtype"),
        ([], "is empty"),
    ],
)
def test_from_torch_dataset_bad_items(items, match):
    with pytest.raises(DataError, match=match):
        from_torch_dataset(_PairDataset(items), name="mine")


def test_make_splits_from_user_datasets_does_not_modify_them():
    g = torch.Generator().manual_seed(0)
    train = IndexedDataset(torch.randn(100, 4, generator=g) * 3 + 1, torch.arange(100) % 4, name="mine")
    test = IndexedDataset(torch.randn(20, 4, generator=g), torch.arange(20) % 4, name="mine")
    x_before = train.x.clone()
    s = make_splits(train, test, val_fraction=0.2, seed=5)
    assert torch.equal(train.x, x_before) and train.name == "mine" and test.name == "mine"
    assert (len(s.train), len(s.val), len(s.test)) == (80, 20, 20)
    assert s.val.class_counts().tolist() == [5, 5, 5, 5]
    torch.testing.assert_close(s.train.x.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    again = make_splits(train, test, val_fraction=0.2, seed=5)
    assert torch.equal(again.val.x, s.val.x)
    custom = make_splits(train, test, 0.0, 0, normalize=False, augment=lambda x, g: x + 1)
    with pytest.raises(ConfigError, match="needs image data"):
        make_splits(train, test, augment=AugmentPolicy(padding=1))
    assert custom.val is None and torch.equal(custom.train.augment(train.x, g), train.x + 1)
    with pytest.raises(ConfigError, match="val_fraction"):
        make_splits(train, test, val_fraction=1.0)


def test_make_splits_with_builtin_augmentation_policy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 6, 6, generator=g)
    train = IndexedDataset(x, torch.arange(40) % 2, name="imgs")
    s = make_splits(train, train, val_fraction=0.25, seed=0, augment=AugmentPolicy(padding=2, flip=True))
    aug = s.train.augment
    assert isinstance(aug, RandomCropFlip) and (aug.padding, aug.flip) == (2, True)
    mean, std = s.meta["normalization"]["mean"], s.meta["normalization"]["std"]
    assert aug.fill == pytest.approx([-m / d for m, d in zip(mean, std, strict=True)])
    assert s.meta["augment"] == {"padding": 2, "flip": True} and train.augment is None
