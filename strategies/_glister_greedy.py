"""Glister's greedy: Taylor gains of the validation loss and exact look-ahead logit updates.

The math is described in :mod:`strategies.glister`. The greedy runs on the shared optimizers of
:mod:`subsetlab.submodular.greedy` over a Taylor-gain oracle (:class:`_TaylorOracle`); CORDS'
``r_round`` is a small loop over the same oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from subsetlab.submodular.greedy import PoolSampler, naive_greedy, stochastic_greedy, stochastic_sample_size

__all__ = ["GlisterResult", "glister_greedy", "validation_gradient", "taylor_gains", "step_logits"]


# ----------------------------------------------------------------------------------------------
# the pieces of the greedy (also used by the tests against autograd)


def validation_gradient(
    z_val: torch.Tensor, y_val: torch.Tensor, h_val: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradient of the mean validation cross-entropy w.r.t. the last layer's bias and weight.

    Args:
        z_val: ``[n_val, C]`` logits.
        y_val: ``[n_val]`` labels.
        h_val: ``[n_val, D]`` features; None for the bias gradient only.

    Returns:
        ``(g_val [C], G_val [C, D] or None)``.
    """
    zt = z_val.T.contiguous()
    return _val_grad_t(zt, _onehot_t(y_val, zt), h_val)


def taylor_gains(
    g: torch.Tensor, h: torch.Tensor | None, g_val: torch.Tensor, G_val: torch.Tensor | None
) -> torch.Tensor:
    """First-order decrease of the validation loss per unit step size, for each candidate.

    ``g @ g_val``, plus ``sum_cd g[i, c] G_val[c, d] h[i, d]`` when ``G_val`` is given.
    """
    gains = g @ g_val
    if G_val is not None:
        gains = gains + ((g @ G_val) * h).sum(1)
    return gains


def step_logits(
    z_val: torch.Tensor,
    h_val: torch.Tensor | None,
    g_sel: torch.Tensor,
    h_sel: torch.Tensor | None,
    eta: float,
) -> torch.Tensor:
    """Validation logits after one last-layer SGD step of size ``eta`` on the summed loss of
    the selected rows: ``z_v - eta * sum_j g_j (h_j . h_v + 1)`` (``- eta * sum_j g_j`` for the
    bias only, when ``h_val`` is None)."""
    return _step_t(z_val.T.contiguous(), h_val, g_sel, h_sel, eta).T


# The greedy keeps the validation logits class-major, [C, n_val]: softmax over a short last
# dimension (C = 10) is ~15x slower on CPU than over the long one.


def _onehot_t(y_val: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
    """``onehot(y_val).T``, ``[C, n_val]`` in ``zt``'s dtype."""
    return F.one_hot(y_val, zt.shape[0]).T.to(zt.dtype)


def _val_grad_t(
    zt: torch.Tensor, onehot_t: torch.Tensor, h_val: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    n = zt.shape[1]
    r = torch.softmax(zt, dim=0).sub_(onehot_t)  # [C, n_val]: per-example gradients
    return r.sum(1).div_(n), (r @ h_val).div_(n) if h_val is not None else None


def _dz_t(h_val: torch.Tensor | None, g_sel: torch.Tensor, h_sel: torch.Tensor | None) -> torch.Tensor:
    """``[C, n_val]`` (``[C, 1]`` for the bias only): logit change per unit step on the rows."""
    dz = g_sel.sum(0).unsqueeze(1)  # bias part, the same for every validation example
    if h_val is not None:
        dz = dz + g_sel.T @ (h_sel @ h_val.T)  # weight part: sum_j g_j (h_j . h_v)
    return dz


def _step_t(
    zt: torch.Tensor, h_val: torch.Tensor | None, g_sel: torch.Tensor, h_sel: torch.Tensor | None, eta: float
) -> torch.Tensor:
    return zt - eta * _dz_t(h_val, g_sel, h_sel)


# ----------------------------------------------------------------------------------------------
# the greedy


@dataclass
class GlisterResult:
    """Result of :func:`glister_greedy`.

    Attributes:
        ranking: ``[k]`` chosen rows, in the order they were chosen.
        gains: ``[k]`` each pick's Taylor gain when it was chosen.
        z_val: Validation logits after the virtual step on the whole chosen set.
        val_loss: Mean validation loss before the step.
        val_loss_after: Mean validation loss at ``z_val``.
    """

    ranking: torch.Tensor
    gains: torch.Tensor
    z_val: torch.Tensor
    val_loss: float
    val_loss_after: float


def _round_sizes(k: int, rounds: int) -> list[int]:
    r = max(1, min(rounds, k))
    return [k // r + (1 if i < k % r else 0) for i in range(r)]


class _TaylorOracle:
    """Glister's Taylor gains as a :class:`~subsetlab.submodular.oracles.GainOracle`.

    Holds the look-ahead validation logits (class-major, see :func:`_onehot_t`), their
    gradients, the class quotas left and the picks; :meth:`take` steps the logits on picks.
    See :func:`glister_greedy` for the arguments.
    """

    def __init__(
        self,
        g: torch.Tensor,
        z_val: torch.Tensor,
        y_val: torch.Tensor,
        k: int,
        eta: float,
        h: torch.Tensor | None,
        h_val: torch.Tensor | None,
        labels: torch.Tensor | None,
        quotas: torch.Tensor | None,
        running: bool,
    ) -> None:
        weight = h is not None and h_val is not None
        self.g, self.h, self.h_val = g, h if weight else None, h_val if weight else None
        self.labels, self.eta, self.running = labels, eta, running
        n, dev = g.shape[0], g.device
        self.avail = torch.ones(n, dtype=torch.bool, device=dev)
        self.left = None if quotas is None else [int(q) for q in quotas.tolist()]
        if self.left is not None:
            k = min(int(k), sum(self.left))
            for c, q in enumerate(self.left):
                if q == 0:
                    self.avail &= labels != c
        else:
            k = min(int(k), n)
        self.k = k
        self.z = z_val.T.contiguous()
        self.z0, self.acc, self.picked = self.z, None, 0  # running: z = z0 - eta / picked * acc
        self.onehot_t = _onehot_t(y_val, self.z)
        self.val_loss = float(F.cross_entropy(z_val, y_val))
        self.g_val, self.G_val = _val_grad_t(self.z, self.onehot_t, self.h_val)
        self.ranking = torch.empty(k, dtype=torch.int64, device=dev)
        self.chosen_gains = torch.empty(k, dtype=g.dtype, device=dev)
        self.t = 0

    def begin_step(self, t: int) -> float:
        """Nothing to do: 1.0 (Taylor gains are not submodular; no lazy greedy here)."""
        return 1.0

    def all_gains(self) -> torch.Tensor:
        """Taylor gains of every candidate at the current look-ahead; ``-inf`` if unavailable."""
        return taylor_gains(self.g, self.h, self.g_val, self.G_val).masked_fill_(~self.avail, float("-inf"))

    def gains(self, idx: torch.Tensor) -> torch.Tensor:
        """Taylor gains of the candidates ``idx``."""
        return taylor_gains(self.g[idx], self.h[idx] if self.h is not None else None, self.g_val, self.G_val)

    def add(self, j: torch.Tensor, gain: torch.Tensor) -> bool:
        """Record pick ``j`` (a 0-d tensor) and step the logits on it (see :meth:`take`)."""
        self.ranking[self.t], self.chosen_gains[self.t] = j, gain
        self.t += 1
        return self.take(j.view(1))

    def take(self, picks: torch.Tensor) -> bool:
        """Step the logits on ``picks``; True when a class's quota just filled up."""
        h_sel = self.h[picks] if self.h is not None else None
        if self.running:
            dz = _dz_t(self.h_val, self.g[picks], h_sel)
            self.acc = dz if self.acc is None else self.acc + dz
            self.picked += int(picks.numel())
            self.z = self.z0 - (self.eta / self.picked) * self.acc
        else:
            self.z = _step_t(self.z, self.h_val, self.g[picks], h_sel, self.eta)
        self.g_val, self.G_val = _val_grad_t(self.z, self.onehot_t, self.h_val)
        self.avail[picks] = False
        closed = False
        if self.left is not None:
            for c in self.labels[picks].tolist():
                self.left[c] -= 1
                if self.left[c] == 0:
                    self.avail.logical_and_(self.labels != c)
                    closed = True
        return closed

    def result(self, y_val: torch.Tensor) -> GlisterResult:
        """The :class:`GlisterResult` of the picks so far."""
        z = self.z.T
        return GlisterResult(self.ranking, self.chosen_gains, z, self.val_loss, float(F.cross_entropy(z, y_val)))


def _r_round(oracle: _TaylorOracle, rounds: int) -> None:
    """CORDS' RGreedy: ``rounds`` rounds, each taking the top gains of its share of ``k``."""
    t, left = 0, oracle.left
    for size in _round_sizes(oracle.k, rounds):
        cand = oracle.avail.nonzero().squeeze(1)
        gs = oracle.gains(cand)
        o = torch.argsort(gs, descending=True, stable=True)
        cand, gs = cand[o], gs[o]
        if left is not None:  # keep the best candidates that fit their class's quota
            lab = oracle.labels[cand]
            rank = torch.cumsum(F.one_hot(lab, len(left)), 0).gather(1, lab.unsqueeze(1)).squeeze(1) - 1
            ok = rank < torch.tensor(left, device=cand.device)[lab]
            cand, gs = cand[ok], gs[ok]
        picks = cand[:size]
        oracle.ranking[t : t + size], oracle.chosen_gains[t : t + size] = picks, gs[:size]
        oracle.take(picks)
        t += size


def glister_greedy(
    g: torch.Tensor,
    z_val: torch.Tensor,
    y_val: torch.Tensor,
    k: int,
    eta: float,
    h: torch.Tensor | None = None,
    h_val: torch.Tensor | None = None,
    optimizer: str = "stochastic",
    epsilon: float = 0.01,
    rounds: int = 15,
    generator: torch.Generator | None = None,
    labels: torch.Tensor | None = None,
    quotas: torch.Tensor | None = None,
    running: bool = False,
) -> GlisterResult:
    """Greedy Glister selection of ``k`` rows with Taylor gains and exact logit updates.

    Args:
        g: ``[n, C]`` bias gradients of the candidates.
        z_val: ``[n_val, C]`` validation logits (not modified).
        y_val: ``[n_val]`` validation labels.
        k: Number of rows to choose (clipped to n, or to ``quotas.sum()``).
        eta: Step size of the virtual SGD step.
        h: ``[n, D]`` candidate features; with ``h_val``, the weight is stepped too.
        h_val: ``[n_val, D]`` validation features.
        optimizer: ``"stochastic"``, ``"naive"`` or ``"r_round"``.
        epsilon: Stochastic greedy's accuracy parameter.
        rounds: Rounds of ``"r_round"``.
        generator: CPU generator (required for ``"stochastic"``).
        labels: ``[n]`` candidate classes (required with ``quotas``).
        quotas: ``[C]`` per-class numbers of picks (CPU int); a class leaves the pool when
            its quota is filled.
        running: False: every pick steps the logits by ``eta`` on its own loss (the look-ahead
            is a step of ``eta`` on the summed loss). True: after ``t`` picks the look-ahead
            is one step of ``eta`` on the *mean* loss of the ``t`` rows
            (``virtual_step="running_mean"``).

    Returns:
        :class:`GlisterResult`.
    """
    oracle = _TaylorOracle(g, z_val, y_val, k, eta, h, h_val, labels, quotas, running)
    if optimizer == "r_round":
        _r_round(oracle, rounds)
    elif optimizer == "naive":
        naive_greedy(oracle, oracle.k)
    else:
        if generator is None:
            raise ValueError("optimizer='stochastic' needs a generator")
        size = stochastic_sample_size(g.shape[0], oracle.k, epsilon)
        stochastic_greedy(oracle, oracle.k, PoolSampler(oracle.avail, size, generator))
    return oracle.result(y_val)
