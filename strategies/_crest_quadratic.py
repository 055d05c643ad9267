"""CREST's local quadratic loss model: gradient and Hutchinson Hessian diagonal, smoothed.

``F(delta) = L0 + g.delta + 1/2 delta.diag(H).delta`` around the parameters at the fit, with
``g`` and ``diag(H)`` estimated on the weighted coreset and smoothed across fits by
bias-corrected exponential moving averages (AdaHessian style).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "CurvatureTracker",
    "QuadraticModel",
    "flat_params",
    "gradient_and_hessian_diagonal",
    "head_hessian_diagonal",
    "rademacher",
]

Smoothing = Literal["ema", "rms"]


def flat_params(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """A detached flat copy of ``params`` (concatenated in order)."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def rademacher(n: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` independent +-1 values drawn on the CPU with ``generator``, then moved to ``device``."""
    z = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8)
    return z.to(device=device, dtype=dtype).mul_(2).sub_(1)


def gradient_and_hessian_diagonal(
    params: Sequence[nn.Parameter],
    chunks: Sequence[Callable[[], torch.Tensor]],
    probes: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient and Hutchinson estimate of the Hessian diagonal of a loss given in chunks.

    The loss is ``sum_c chunks[c]()`` (each chunk a scalar, e.g. a slice of a weighted mean).
    Per chunk: one forward, ``autograd.grad(create_graph=True)``, then for each probe ``z``
    ``H z = d(g.z)/dw`` by a second backward. ``diag(H) ~ mean_z z * (H z)``; the same probes
    are used for every chunk, so the result is exactly the estimate on the whole loss.

    Args:
        params: The parameters to differentiate (unused ones get zeros).
        chunks: Closures computing the chunks' scalar losses.
        probes: Flat Rademacher vectors (length = the parameters' total size).

    Returns:
        ``(g, d)``: flat gradient and flat diagonal estimate (detached).
    """
    n = sum(p.numel() for p in params)
    dev = params[0].device
    g = torch.zeros(n, device=dev)
    hz = [torch.zeros(n, device=dev) for _ in probes]
    for chunk in chunks:
        loss = chunk()
        grads = torch.autograd.grad(loss, params, create_graph=bool(probes), allow_unused=True)
        grads = [gr if gr is not None else torch.zeros_like(p) for gr, p in zip(grads, params)]
        flat = torch.cat([gr.reshape(-1) for gr in grads])
        g += flat.detach()
        for s, z in enumerate(probes):
            if not flat.requires_grad:  # the loss is linear in params: H = 0
                continue
            out = torch.autograd.grad(
                flat, params, grad_outputs=z, retain_graph=s + 1 < len(probes), allow_unused=True
            )
            hz[s] += torch.cat(
                [(o if o is not None else torch.zeros_like(p)).reshape(-1) for o, p in zip(out, params)]
            )
    d = torch.stack([z * h for z, h in zip(probes, hz)]).mean(0) if probes else torch.zeros(n, device=dev)
    return g, d


class QuadraticModel:
    """Bias-corrected exponential averages of the gradient and Hessian diagonal, and ``F``.

    After ``t`` updates with gradients ``g_i`` and diagonal estimates ``D_i``:

    * ``g_hat = EMA_beta1(g) / (1 - beta1^t)``;
    * ``"ema"``: ``h_hat = EMA_beta2(D) / (1 - beta2^t) + eps`` (an unbiased, signed average of
      Hutchinson's estimates, the curvature a Taylor model needs);
    * ``"rms"``: ``h_hat = sqrt(EMA_beta2(D^2) / (1 - beta2^t)) + eps`` (AdaHessian and the
      CREST release: always positive, but it averages the squared probe noise into the
      curvature, so it overestimates ``|diag(H)|``);

    and ``F(delta) = L0 + g_hat.delta + 1/2 sum(h_hat * delta^2)``.

    Args:
        size: Number of parameters modelled.
        device: Where the state lives.
        betas: ``(beta1, beta2)``.
        eps: Added to the curvature.
        smoothing: ``"ema"`` or ``"rms"``.
    """

    def __init__(
        self,
        size: int,
        device: torch.device | str = "cpu",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        smoothing: Smoothing = "ema",
    ) -> None:
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.smoothing = smoothing
        self.m = torch.zeros(size, device=device)
        self.v = torch.zeros(size, device=device)
        self.t = 0
        self.loss0 = float("nan")

    def update(self, grad: torch.Tensor, diag: torch.Tensor, loss0: float) -> None:
        """Fold one fit's gradient and diagonal estimate into the averages; set ``L0``."""
        b1, b2 = self.betas
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1.0 - b1)
        d = diag * diag if self.smoothing == "rms" else diag
        self.v.mul_(b2).add_(d, alpha=1.0 - b2)
        self.loss0 = float(loss0)

    @property
    def grad(self) -> torch.Tensor:
        """Bias-corrected smoothed gradient ``g_hat``."""
        return self.m / (1.0 - self.betas[0] ** max(self.t, 1))

    @property
    def curvature(self) -> torch.Tensor:
        """Bias-corrected smoothed Hessian diagonal ``h_hat`` (eps included)."""
        v = self.v / (1.0 - self.betas[1] ** max(self.t, 1))
        return (v.clamp(min=0.0).sqrt() if self.smoothing == "rms" else v) + self.eps

    def predict(self, delta: torch.Tensor) -> float:
        """``F(delta)``, the modelled loss after the parameters moved by ``delta``."""
        if self.t == 0:
            return float("nan")
        lin = torch.dot(self.grad, delta)
        quad = torch.dot(self.curvature * delta, delta)
        return self.loss0 + float(lin + 0.5 * quad)

    def hessian_norm(self) -> float:
        """Euclidean norm of ``h_hat`` (the ``||H_l||`` of the ``T1`` rule)."""
        return float(torch.linalg.vector_norm(self.curvature)) if self.t else float("nan")

    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only."""
        return {"m": self.m, "v": self.v, "t": self.t, "loss0": self.loss0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (tensors are moved to this model's device)."""
        self.m = state["m"].to(self.m.device, torch.float32).clone()
        self.v = state["v"].to(self.v.device, torch.float32).clone()
        self.t = int(state["t"])
        self.loss0 = float(state["loss0"])


def head_hessian_diagonal(
    probs: torch.Tensor, features: torch.Tensor, weights: torch.Tensor, total: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Hessian diagonal of a weighted softmax cross-entropy w.r.t. the output layer.

    For logits ``z = W h + b`` and ``l = CE(softmax(z), y)`` the Hessian w.r.t. ``z`` is
    ``diag(p) - p p^T``, so the diagonal entries of the Hessian w.r.t. ``W[c, d]`` and
    ``b[c]`` are ``p_c (1 - p_c) h_d^2`` and ``p_c (1 - p_c)``; they do not depend on the label.
    The loss is ``sum_i w_i l_i / total``.

    Args:
        probs: ``[n, C]`` softmax probabilities.
        features: ``[n, D]`` inputs of the output layer.
        weights: ``[n]`` example weights.
        total: The normaliser of the loss (the number of rows of the whole loss).

    Returns:
        ``(diag_W, diag_b)`` of shapes ``[C, D]`` and ``[C]``.
    """
    a = weights.float().unsqueeze(1) * probs.float() * (1.0 - probs.float())  # [n, C]
    return (a.t() @ features.float().square()) / total, a.sum(0) / total


class CurvatureTracker:
    """The curvature norm ``||H_l||`` of the T1 rule, over a short horizon.

    ``||H_l|| = sqrt(EMA_beta(||D_l||^2) / (1 - beta^l))``, with ``D_l`` the raw diagonal
    estimate of fit ``l``. The mean square of an unbiased estimate does not shrink as estimates
    accumulate (the norm of their *average* does, because Hutchinson's probe noise cancels), so
    this norm follows the current curvature: ``T1 = ceil(h ||H_0|| / ||H_l||)`` then grows as the
    curvature relaxes, not as fits accumulate.

    Args:
        beta: EMA decay (0.9 averages over about 10 fits).
    """

    def __init__(self, beta: float = 0.9) -> None:
        self.beta = float(beta)
        self.ema = 0.0
        self.t = 0

    def update(self, diag: torch.Tensor) -> float:
        """Fold in one fit's raw diagonal estimate; return the current norm."""
        self.t += 1
        self.ema = self.beta * self.ema + (1.0 - self.beta) * float(torch.dot(diag, diag))
        return self.norm()

    def norm(self) -> float:
        """The current ``||H_l||`` (NaN before the first fit)."""
        if self.t == 0:
            return float("nan")
        return (self.ema / (1.0 - self.beta**self.t)) ** 0.5

    def state_dict(self) -> dict[str, Any]:
        """Primitives only."""
        return {"beta": self.beta, "ema": self.ema, "t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.ema, self.t = float(state["ema"]), int(state["t"])
