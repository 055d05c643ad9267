"""The common pipeline from a loader's train/test sets to the :class:`DataSplits` of a run.

Steps, the same for every data set: optional seeded stratified ``n_train`` subsample of the
training set, seeded stratified validation split, standardisation with training-split
statistics, augmentation attached to the training split. The random draws depend only on the
run seed, the data set's name and the sizes involved, never on the strategy, so every method
of a comparison sees the same split.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from subsetlab.config import DataConfig
from subsetlab.data.augment import AugmentPolicy, RandomCropFlip
from subsetlab.data.base import Augment, DataSplits, IndexedDataset
from subsetlab.data.registry import RawData, get_loader
from subsetlab.data.splits import round_half_up, stratified_sizes, stratified_split
from subsetlab.errors import ConfigError, DataError
from subsetlab.seeding import torch_generator

__all__ = ["apply_normalization", "load_data", "make_splits", "normalization_stats"]


def load_data(config: DataConfig, seed: int) -> DataSplits:
    """Load the data set ``config.name`` and split, normalise and augment it for one run.

    Args:
        config: Which data set (``name``, ``root``, ``options``) and how to prepare it
            (``n_train``, ``val_fraction``, ``normalize``, ``augment``).
        seed: Run seed. The test hold-out (where the data set has none), the ``n_train``
            subsample and the validation split derive from it and from the data set's name and
            sizes only.

    Returns:
        The train, validation (None when ``val_fraction`` is 0) and test splits; ``meta``
        records the source paths, sizes, class names, normalisation statistics and
        augmentation.

    Raises:
        ConfigError: for an unknown data set, a bad option, ``n_train`` above the training set
            size, or ``augment=True`` on a data set without an augmentation.
        MissingDataError: when the data files are not found (the message says where we
            looked and how to get them).
        DataError: for corrupt files, non-finite features or invalid labels, an empty test
            split, or a class left without training examples.
    """
    loader = get_loader(config.name)
    raw = loader(config, seed)
    if not isinstance(raw, RawData):
        raise DataError(
            f"The loader of dataset {config.name!r} returned {type(raw).__name__}; a loader must "
            f"return subsetlab.data.RawData(train=..., test=...)."
        )
    augment: AugmentPolicy | None = None
    if config.augment:
        if raw.augment_policy is None:
            raise ConfigError(
                f"DataConfig.augment is true but dataset {config.name!r} defines no augmentation "
                f"(it is not image data, or its loader sets no augment_policy). Set augment=false."
            )
        augment = raw.augment_policy
    return _prepare(
        raw,
        name=config.name,
        seed=seed,
        val_fraction=config.val_fraction,
        n_train=config.n_train,
        normalize=config.normalize,
        augment=augment,
    )


def make_splits(
    train: IndexedDataset,
    test: IndexedDataset,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: bool = True,
    augment: Augment | AugmentPolicy | None = None,
    n_train: int | None = None,
    name: str | None = None,
) -> DataSplits:
    """Build the :class:`DataSplits` of a run from your own train and test datasets.

    Runs the same pipeline as :func:`load_data`: optional stratified ``n_train`` subsample,
    stratified validation split, standardisation with training statistics. Your tensors are
    never modified in place.

    Args:
        train: Training examples (the validation split is carved out of them).
        test: Test examples, same feature shape.
        val_fraction: Share of the training examples held out for validation, in ``[0, 1)``.
        seed: Seed of the subsample and the split.
        normalize: Standardise features (per channel for ``[N, C, H, W]`` images, per feature
            otherwise) with statistics of the final training split.
        augment: A train-time augmentation: your own callable ``(x, generator) -> x``, or an
            :class:`AugmentPolicy` for the built-in crop/flip (image data only), or None.
        n_train: Keep only this many training examples (seeded, stratified).
        name: Name used for the splits and the split seeds; ``train.name`` by default.

    Returns:
        The splits; ``meta`` records sizes and normalisation statistics.

    Raises:
        ConfigError: for out-of-range arguments.
        DataError: when train and test do not match, the test split is empty, or a class has
            no training example (before or after the validation split).
    """
    if not isinstance(train, IndexedDataset) or not isinstance(test, IndexedDataset):
        raise DataError(
            f"make_splits needs IndexedDataset train and test sets. Got {type(train).__name__} "
            f"and {type(test).__name__}; convert a torch Dataset with from_torch_dataset."
        )
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"The 'val_fraction' of make_splits must be in [0, 1). Got {val_fraction} instead.")
    if n_train is not None and int(n_train) < 1:
        raise ConfigError(f"The 'n_train' of make_splits must be >= 1 or None. Got {n_train} instead.")
    if augment is not None and not isinstance(augment, AugmentPolicy) and not callable(augment):
        raise ConfigError(
            f"The 'augment' of make_splits must be a callable (x, generator) -> x, an "
            f"AugmentPolicy or None. Got {type(augment).__name__} instead."
        )
    raw = RawData(train=train, test=test)
    return _prepare(
        raw,
        name=name or train.name,
        seed=seed,
        val_fraction=float(val_fraction),
        n_train=n_train,
        normalize=normalize,
        augment=augment,
    )


def normalization_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Mean and standard deviation of ``x`` per channel (images) or per feature (flat data).

    Images ``[N, C, ...]`` (3 or more dimensions) reduce over every axis but the channel
    axis; flat data ``[N, D]`` reduce over examples. Zero deviations (constant features)
    become 1 so that standardising leaves those features centred instead of dividing by 0.
    Features so large that their squares overflow ``x``'s dtype (beyond about 1e19 in
    float32) are reduced in float64 instead, so they are rescaled rather than zeroed.

    Returns:
        ``(mean, std, axis)``: broadcastable to ``x`` (singleton reduced axes kept), and
        ``"channel"`` or ``"feature"``.
    """
    if x.dim() >= 3:
        dims, axis = (0, *range(2, x.dim())), "channel"
    else:
        dims, axis = (0,), "feature"
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    if not (bool(torch.isfinite(var).all()) and bool(torch.isfinite(mean).all())):
        # an overflow (an infinite deviation would turn every feature into 0): redo in float64
        var, mean = torch.var_mean(x.double(), dim=dims, correction=0, keepdim=True)
    std = var.sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    # the mean lies within the data's range and std <= (max - min) / 2: both fit x's dtype
    return mean.to(x.dtype), std.to(x.dtype), axis


def apply_normalization(ds: IndexedDataset, mean: torch.Tensor, std: torch.Tensor) -> IndexedDataset:
    """A new dataset with features ``(x - mean) / std`` (``ds`` itself is left unchanged)."""
    x = (ds.x - mean.to(ds.x.device)) / std.to(ds.x.device)
    return IndexedDataset(x, ds.y, ds.num_classes, ds.name, ds.augment)


def _class_label(c: int, class_names: list[str] | None) -> str:
    if class_names and c < len(class_names):
        return f"{c} ({class_names[c]!r})"
    return str(c)


def _check_classes(ds: IndexedDataset, class_names: list[str] | None, cause: str, fix: str) -> None:
    empty = torch.nonzero(ds.class_counts() == 0).flatten().tolist()
    if empty:
        shown = ", ".join(_class_label(c, class_names) for c in empty[:10])
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        raise DataError(
            f"Dataset {ds.name!r}: class(es) {shown}{more} of {ds.num_classes} have no training "
            f"examples {cause}. {fix}"
        )


def _subsample_train(train: IndexedDataset, name: str, seed: int, n_train: int | None) -> IndexedDataset:
    """``n_train`` stratified training examples (at least one per class present), or all."""
    n_avail = len(train)
    if n_train is not None and int(n_train) < n_avail:
        n_train = int(n_train)
        counts = train.class_counts()
        present = int((counts > 0).sum())
        if n_train < present:
            raise DataError(
                f"Dataset {name!r}: n_train={n_train} cannot keep one training example of each of "
                f"its {present} classes (a class would have no training examples). Raise n_train "
                f"to at least {present}."
            )
        sizes = stratified_sizes(counts, n_train, lower=counts.clamp(max=1))
        keep, _ = stratified_split(train.y, sizes, torch_generator(seed, "split", name, "n_train", n_avail, n_train))
        train = train.subset(keep)
    elif n_train is not None and int(n_train) > n_avail:
        raise ConfigError(
            f"The 'n_train' parameter of DataConfig is {n_train} but dataset {name!r} has only "
            f"{n_avail} training examples. Lower n_train or remove it to use them all."
        )

    return train


def _split_validation(
    train: IndexedDataset, name: str, seed: int, val_fraction: float
) -> tuple[IndexedDataset, IndexedDataset | None]:
    """A stratified validation split of ``val_fraction`` of ``train`` (every class keeps one)."""
    val = None
    pool = len(train)
    if val_fraction > 0.0:
        n_val = max(1, round_half_up(val_fraction * pool))
        counts = train.class_counts()
        try:
            sizes = stratified_sizes(counts, n_val, upper=(counts - 1).clamp(min=0))
        except DataError:
            raise DataError(
                f"Dataset {name!r}: a validation split of {n_val} of the {pool} training examples "
                f"(val_fraction={val_fraction}) would leave a class with no training examples. "
                f"Lower val_fraction or raise n_train."
            ) from None
        val_idx, train_idx = stratified_split(
            train.y, sizes, torch_generator(seed, "split", name, "val", pool, n_val)
        )
        val = train.subset(val_idx, f"{name}-val")
        train = train.subset(train_idx)
    return train, val


def _prepare(
    raw: RawData,
    *,
    name: str,
    seed: int,
    val_fraction: float,
    n_train: int | None,
    normalize: bool,
    augment: Augment | AugmentPolicy | None,
) -> DataSplits:
    train, test = raw.train, raw.test
    if len(test) == 0:
        raise DataError(
            f"Dataset {name!r}: the test split is empty; every run is evaluated on it. Give at "
            f"least one test example."
        )
    if train.input_shape != test.input_shape:
        raise DataError(
            f"Dataset {name!r}: train examples have shape {train.input_shape} but test examples "
            f"{test.input_shape}; both splits must have the same feature shape."
        )
    k = max(train.num_classes, test.num_classes)
    if train.num_classes != k:
        train = IndexedDataset(train.x, train.y, k, train.name, train.augment)
    if test.num_classes != k:
        test = IndexedDataset(test.x, test.y, k, test.name, test.augment)
    train, test = copy.copy(train), copy.copy(test)  # renamed / augmented below, never the caller's
    names = raw.class_names
    _check_classes(train, names, "in the training set", "Every class needs training examples; "
                   "remap the labels to the classes present.")
    n_avail = len(train)

    train = _subsample_train(train, name, seed, n_train)
    train, val = _split_validation(train, name, seed, val_fraction)
    train.name, test.name = f"{name}-train", f"{name}-test"
    _check_classes(train, names, "after the validation split", "Lower val_fraction or raise n_train.")

    norm: dict[str, Any] | None = None
    fill: list[float] | float = 0.0
    if normalize:
        mean, std, axis = normalization_stats(train.x)
        train = apply_normalization(train, mean, std)
        test = apply_normalization(test, mean, std)
        val = apply_normalization(val, mean, std) if val is not None else None
        norm = {"axis": axis, "mean": mean.flatten().tolist(), "std": std.flatten().tolist()}
        if axis == "channel":
            fill = (-mean / std).flatten().tolist()  # a black pixel of the raw images

    test.augment = None  # augmentation belongs to the training split only
    if val is not None:
        val.augment = None
    aug_meta: dict[str, Any] | None = None
    if isinstance(augment, AugmentPolicy):
        if len(train.input_shape) != 3:
            raise ConfigError(
                f"Augmentation (random crop/flip) needs image data of shape [C, H, W]; dataset "
                f"{name!r} has examples of shape {train.input_shape}. Set augment=false."
            )
        train.augment = RandomCropFlip(augment.padding, augment.flip, fill)
        aug_meta = {"padding": augment.padding, "flip": augment.flip}
    elif augment is not None:
        train.augment = augment
        aug_meta = {"custom": repr(augment)}

    meta = {
        "dataset": name,
        "source_paths": [str(p) for p in raw.source_paths],
        "class_names": names,
        "num_classes": k,
        "input_shape": list(train.input_shape),
        "sizes": {
            "available_train": n_avail,
            "train": len(train),
            "val": 0 if val is None else len(val),
            "test": len(test),
        },
        "split_seed": int(seed),
        "normalization": norm,
        "augment": aug_meta,
        **({"loader": raw.meta} if raw.meta else {}),
    }
    return DataSplits(train=train, val=val, test=test, meta=meta)
