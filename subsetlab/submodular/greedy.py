"""The greedy optimizers, each written once over a :class:`~subsetlab.submodular.oracles.GainOracle`.

* :func:`naive_greedy`: every step evaluates every available candidate and adds the best.
  With a batched oracle every step adds one candidate per problem.
* :func:`lazy_greedy` (Minoux): keeps stale gains as upper bounds (valid for a submodular
  objective) and re-evaluates only the candidates whose bound could still win; the same choices
  and gains as :func:`naive_greedy` whenever a candidate's gain has the same bits whichever
  other candidates are evaluated with it.
* :func:`stochastic_greedy` (Mirzasoleiman et al., 2015): every step evaluates a random sample
  of the available candidates drawn by a sampler: :class:`SubsetSampler` (facility location)
  or :class:`PoolSampler` (CORDS' draw, used by Glister).

Ties go to the lowest index (among the evaluated candidates, in the order they are evaluated).
The optimizers record nothing themselves: the oracle keeps the choices and their gains.
"""

from __future__ import annotations

import math

import torch

from subsetlab.submodular.oracles import GainOracle

__all__ = [
    "naive_greedy",
    "lazy_greedy",
    "stochastic_greedy",
    "stochastic_sample_size",
    "SubsetSampler",
    "PoolSampler",
]

# Lazy greedy re-evaluates this many of the best stale bounds at once before checking.
_LAZY_BATCH = 16


def naive_greedy(oracle: GainOracle, k: int) -> None:
    """``k`` steps of the naive greedy: the best of all available candidates each step."""
    for t in range(k):
        oracle.begin_step(t)
        g = oracle.all_gains()
        j = torch.argmax(g, dim=-1)  # first maximum: lowest index among ties
        oracle.add(j, g.gather(-1, j.unsqueeze(-1)).squeeze(-1))


def lazy_greedy(oracle: GainOracle, k: int) -> None:
    """``k`` steps of the lazy greedy (one problem; a submodular objective)."""
    if k <= 0:
        return
    # exact gains at step 0, upper bounds later (submodularity); -inf once chosen
    bounds = oracle.all_gains()
    stamp = torch.zeros(bounds.shape[0], dtype=torch.int64, device=bounds.device)  # step of each bound
    left = int(oracle.avail.sum())
    for t in range(k):
        factor = oracle.begin_step(t)
        if factor != 1.0:
            bounds.mul_(factor)
        j, gain = _lazy_step(oracle, bounds, stamp, t, left - t)
        bounds[j] = float("-inf")
        oracle.add(j, gain)


def _lazy_step(
    oracle: GainOracle, bounds: torch.Tensor, stamp: torch.Tensor, t: int, left: int
) -> tuple[int, torch.Tensor]:
    """One step of lazy greedy: the exact argmax of the gains (lowest index among ties).

    ``bounds`` holds exact gains for ``stamp == t`` and upper bounds otherwise (``-inf`` for
    chosen candidates). Re-evaluate the ``_LAZY_BATCH`` largest bounds; if the best fresh gain
    beats every other bound we are done, otherwise re-evaluate every stale candidate whose bound
    reaches it (a better or an equal, lower-index candidate may hide there) and look again.
    """
    if t == 0:  # bounds are exact gains of everyone
        j = int(torch.argmax(bounds))
        return j, bounds[j].clone()
    m = min(_LAZY_BATCH, left)
    top = torch.topk(bounds, m)
    cand = torch.sort(top.indices).values  # so that argmax picks the lowest index among ties
    g = oracle.gains(cand)
    bounds[cand] = g
    stamp[cand] = t
    pos = int(torch.argmax(g))
    # Every bound left out of the top m is <= its smallest value.
    if m == left or bool(g[pos] > top.values[-1]):
        return int(cand[pos]), g[pos]
    neg_inf = torch.tensor(float("-inf"), dtype=bounds.dtype, device=bounds.device)
    while True:
        fresh = stamp == t
        fb = torch.where(fresh, bounds, neg_inf)
        j = int(torch.argmax(fb))
        gain = fb[j]
        need = ~fresh & (bounds >= gain)
        if not bool(need.any()):
            return j, gain
        cand = need.nonzero().squeeze(1)
        bounds[cand] = oracle.gains(cand)
        stamp[cand] = t


def stochastic_sample_size(n: int, k: int, epsilon: float) -> int:
    """Candidates per step of stochastic greedy: ``ceil(n / k * ln(1 / epsilon))``, at least 1."""
    return max(1, math.ceil(n / max(k, 1) * math.log(1.0 / epsilon)))


class SubsetSampler:
    """``size`` of the available candidates without replacement (``torch.randperm`` on
    ``generator``), in increasing order; all of them when there are no more than ``size``."""

    def __init__(self, avail: torch.Tensor, size: int, generator: torch.Generator | None) -> None:
        self.avail, self.size, self.generator = avail, size, generator

    def draw(self) -> torch.Tensor:
        """The candidates to evaluate this step (indices, increasing)."""
        left = self.avail.nonzero().squeeze(1)
        if self.size >= left.shape[0]:
            return left
        gdev = self.generator.device if self.generator is not None else torch.device("cpu")
        perm = torch.randperm(left.shape[0], generator=self.generator, device=gdev)[: self.size]
        return torch.sort(left[perm.to(left.device)]).values

    def taken(self, pos: torch.Tensor, dropped: bool) -> None:
        """The candidate at ``pos`` of the last draw was chosen (the oracle updated ``avail``)."""


class PoolSampler:
    """CORDS' draw: ``size`` draws with replacement (``torch.randint`` on ``generator``, on the
    CPU) from a pool of the available candidates, duplicates dropped; the chosen candidate is
    swap-removed from the pool, which is filtered by ``avail`` when others left it too."""

    def __init__(self, avail: torch.Tensor, size: int, generator: torch.Generator | None) -> None:
        self.avail, self.size, self.generator = avail, size, generator
        self.pool = avail.nonzero().squeeze(1)
        self.m = self.pool.shape[0]
        self.r = self.pool[:0]  # positions in the pool of the last draw

    def draw(self) -> torch.Tensor:
        """The candidates to evaluate this step (in pool order)."""
        dev = self.pool.device
        if self.size < self.m:
            self.r = torch.unique(torch.randint(self.m, (self.size,), generator=self.generator)).to(dev)
        else:
            self.r = torch.arange(self.m, device=dev)
        return self.pool[self.r]

    def taken(self, pos: torch.Tensor, dropped: bool) -> None:
        """The candidate at ``pos`` of the last draw was chosen; ``dropped``: others left too."""
        p = int(self.r[pos])
        self.pool[p] = self.pool[self.m - 1]  # swap-remove the pick from the pool
        self.m -= 1
        if dropped:
            self.pool = self.pool[: self.m][self.avail[self.pool[: self.m]]]
            self.m = self.pool.shape[0]


def stochastic_greedy(oracle: GainOracle, k: int, sampler: SubsetSampler | PoolSampler) -> None:
    """``k`` steps of the stochastic greedy: the best of ``sampler``'s draw each step (one problem)."""
    for t in range(k):
        oracle.begin_step(t)
        cand = sampler.draw()
        g = oracle.gains(cand)
        pos = torch.argmax(g)
        dropped = oracle.add(cand[pos], g[pos])
        sampler.taken(pos, dropped)
