"""Shared types, constants and argument checks of the selection kernels."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Literal

import torch

from subsetlab.errors import ConfigError, DataError

SimilarityKind = Literal["max_minus_dist", "exp"]
Optimizer = Literal["naive", "lazy", "stochastic"]
Backend = Literal["torch", "apricot"]

#: Default cap on the bytes of similarity a solver materialises at once (256 MiB).
DEFAULT_MAX_BYTES = 256 * 2**20

_KINDS = ("max_minus_dist", "exp")
_OPTIMIZERS = ("naive", "lazy", "stochastic")
_APRICOT_OPTIMIZERS = ("lazy", "stochastic")
_BACKENDS = ("torch", "apricot")


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class FLResult:
    """Result of one facility-location selection.

    Attributes:
        ranking: ``[k]`` int64 indices of the chosen elements, in the order they were chosen.
        gains: ``[k]`` float64 marginal gain of each chosen element when it was added.
        weights: ``[k]`` cluster sizes aligned with ``ranking`` (dtype of the similarity);
            each is >= 1 and they sum to ``n`` (when ``k > 0``).
        objective: ``F(S)`` of the chosen set.
        assignment: ``[n]`` int64, for each ground element the position in ``ranking`` of its
            representative (its most similar chosen element; -1 when ``k = 0``).
    """

    ranking: torch.Tensor
    gains: torch.Tensor
    weights: torch.Tensor
    objective: float
    assignment: torch.Tensor


@dataclass
class FLBatchResult:
    """Result of :func:`facility_location_batched` over ``P`` problems padded to ``K = max k``.

    Attributes:
        ranking: ``[P, K]`` int64 positions (within each problem's padded row) of the chosen
            elements in selection order; ``-1`` past ``n_selected[p]``.
        gains: ``[P, K]`` float64 marginal gains; 0 in padding.
        weights: ``[P, K]`` cluster sizes; 0 in padding. Row ``p`` sums to the problem's number
            of valid elements (0 when ``k_p = 0``).
        objective: ``[P]`` float64 ``F(S_p)``.
        n_selected: ``[P]`` int64 number of elements chosen in each problem
            (``min(k_p, valid_p)``).
        assignment: ``[P, n]`` int64 position in ``ranking[p]`` of each element's
            representative; ``-1`` for padding.
    """

    ranking: torch.Tensor
    gains: torch.Tensor
    weights: torch.Tensor
    objective: torch.Tensor
    n_selected: torch.Tensor
    assignment: torch.Tensor

    def flat(self, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All chosen elements of all problems as flat tensors, problem by problem.

        Args:
            index: Optional ``[P, n]`` int64 map from padded positions to global indices (as
                returned by :func:`pack_groups`); without it positions are returned.

        Returns:
            ``(indices, weights, problem)``: ``[m]`` int64 chosen indices (global when
            ``index`` is given), ``[m]`` their weights and ``[m]`` int64 problem ids, in
            problem order then selection order.
        """
        valid = self.ranking >= 0
        pos = self.ranking.clamp(min=0)
        ids = pos if index is None else index.gather(1, pos)
        problem = torch.arange(self.ranking.shape[0], device=self.ranking.device)
        problem = problem.unsqueeze(1).expand_as(self.ranking)
        return ids[valid], self.weights[valid], problem[valid]


# ----------------------------------------------------------------------------------------------
# validation helpers


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ConfigError(
            f"The similarity kind must be one of {list(_KINDS)}. Got {kind!r} instead. "
            "Use 'max_minus_dist' (CRAIG) or 'exp' (CREST release)."
        )


def _check_optimizer(optimizer: str, allowed: tuple[str, ...] = _OPTIMIZERS) -> None:
    if optimizer not in allowed:
        raise ConfigError(
            f"The facility-location optimizer must be one of {list(allowed)}. "
            f"Got {optimizer!r} instead."
        )


def _check_k(k: int) -> int:
    try:
        value = operator.index(k)  # int, NumPy integer or 0-d integer tensor
    except TypeError:
        value = None
    if isinstance(k, bool) or value is None or value < 0:
        raise ConfigError(f"The budget k must be a non-negative int. Got {k!r} instead.")
    return int(value)


def _check_epsilon(epsilon: float) -> None:
    if not (0.0 < float(epsilon) < 1.0):
        raise ConfigError(
            f"epsilon of stochastic greedy must be in (0, 1). Got {epsilon!r} instead; "
            "0.01 samples ~4.6 n/k candidates per step and is close to lazy greedy."
        )


def _check_max_bytes(max_bytes: int) -> None:
    if int(max_bytes) < 1:
        raise ConfigError(f"max_bytes must be >= 1. Got {max_bytes!r} instead.")


def _as_float(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor. Got {type(x).__name__} instead.")
    if not x.is_floating_point():
        x = x.float()
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # half precision distances lose too much; compute in float32
    return x


def _check_finite(x: torch.Tensor, name: str) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise DataError(
            f"{name} contains NaN or infinite values; facility location on them is meaningless "
            "(a diverged model produces these). Check the model/embeddings before selecting."
        )


def _check_embeddings(x: torch.Tensor, ndim: int, name: str = "embeddings") -> torch.Tensor:
    x = _as_float(x, name)
    if x.ndim != ndim:
        shape = "[n, d]" if ndim == 2 else "[P, n, d]"
        raise DataError(f"{name} must have shape {shape}. Got shape {tuple(x.shape)} instead.")
    _check_finite(x, name)
    return x


def _check_sim(sim: torch.Tensor, ndim: int) -> torch.Tensor:
    sim = _as_float(sim, "sim")
    if sim.ndim != ndim or sim.shape[-1] != sim.shape[-2]:
        shape = "[n, n]" if ndim == 2 else "[P, n, n]"
        raise DataError(f"sim must be a square matrix of shape {shape}. Got {tuple(sim.shape)} instead.")
    _check_finite(sim, "sim")
    if sim.numel() and float(sim.min()) < 0:
        raise DataError(
            f"Facility location needs a non-negative similarity; sim has minimum {float(sim.min()):.4g}. "
            "Shift it (e.g. max_dist - dist) or use similarity(..., kind='exp')."
        )
    return sim


def _candidate_major(sim: torch.Tensor) -> torch.Tensor:
    """``sim`` transposed so that rows are candidates; no copy when ``sim`` is symmetric."""
    t = sim.mT
    if torch.equal(sim, t):
        return sim
    return t.contiguous()



def _need_generator(generator: torch.Generator | None) -> None:
    if generator is None:
        raise ConfigError(
            "optimizer='stochastic' samples candidates and needs generator=torch.Generator() "
            "seeded from the run seed (see subsetlab.seeding.torch_generator)."
        )

