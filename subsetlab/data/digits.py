"""The scikit-learn digits (1,797 images 8x8, shipped inside the scikit-learn wheel).

There is no official test set, so a seeded, stratified share (20 % by default) is held out
as the test split. Pixel values 0..16 become float32 ``[N, 1, 8, 8]`` in ``[0, 1]``.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from pydantic import Field

from subsetlab.config import DataConfig, FrozenConfig
from subsetlab.data.augment import AugmentPolicy
from subsetlab.data.base import IndexedDataset
from subsetlab.data.registry import RawData, parse_options, register_dataset
from subsetlab.data.splits import round_half_up, stratified_sizes, stratified_split
from subsetlab.seeding import torch_generator

__all__ = ["DigitsOptions", "load_digits"]


class DigitsOptions(FrozenConfig):
    """Options of the ``digits`` data set."""

    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of the 1,797 images held out as the test split."
    )


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, str]:
    """The digits once per process, as read-only arrays: float32 pixels, int64 labels, source."""
    import sklearn.datasets

    bunch = sklearn.datasets.load_digits()
    data = np.asarray(bunch.data, dtype=np.float32)
    target = np.asarray(bunch.target, dtype=np.int64)
    data.flags.writeable = False
    target.flags.writeable = False
    csv = os.path.join(os.path.dirname(sklearn.datasets.__file__), "data", "digits.csv.gz")
    return data, target, csv if os.path.isfile(csv) else "sklearn.datasets.load_digits"


@register_dataset("digits")
def load_digits(config: DataConfig, seed: int) -> RawData:
    """scikit-learn's digits: 10 classes, 8x8 grey images; the embedded default data set.

    The test split is a stratified ``test_fraction`` (option, default 0.2) of the images drawn
    with a generator derived from ``seed``, so it is the same for every strategy of a seed.
    """
    import sklearn

    opts = parse_options(DigitsOptions, config)
    data, target, csv = _digits_arrays()
    x = torch.from_numpy(data.reshape(-1, 1, 8, 8) / np.float32(16.0))  # a new array, not the cache
    y = torch.from_numpy(target.copy())
    n = int(y.shape[0])
    counts = torch.bincount(y, minlength=10)
    n_test = round_half_up(opts.test_fraction * n)
    sizes = stratified_sizes(counts, n_test, upper=(counts - 1).clamp(min=0))
    test_idx, train_idx = stratified_split(y, sizes, torch_generator(seed, "split", "digits", "test", n, n_test))
    full = IndexedDataset(x, y, 10, "digits")
    return RawData(
        train=full.subset(train_idx, "digits-train"),
        test=full.subset(test_idx, "digits-test"),
        source_paths=[csv],
        augment_policy=AugmentPolicy(padding=1, flip=False),
        class_names=[str(i) for i in range(10)],
        meta={"sklearn_version": sklearn.__version__, "test_fraction": opts.test_fraction},
    )
