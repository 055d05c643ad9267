"""CREST: coresets for stochastic gradient descent (Yang, Kang, Mirzasoleiman, ICML 2023).

One selection round (:meth:`CrestStrategy.select`):

1. draw ``P`` class-stratified random subsets ``V_p`` of size ``r`` from the active pool
   (:func:`~strategies._crest_subsets.draw_subsets`, one CPU generator, ``O(P r)`` work);
2. embed their union once (``softmax - onehot``, eval mode, no grad); the same pass gives
   each example's loss, hence ``L0``;
3. in each ``V_p`` keep exactly ``m = B`` examples by per-class facility location, all
   ``P x C`` problems in one batched call; weights are cluster sizes, rescaled to mean 1;
4. fit the quadratic model ``F(delta) = L0 + g.delta + 1/2 delta.diag(H).delta`` on the
   weighted coreset (gradient and Hutchinson diagonal by double backprop, eval mode, smoothed
   by bias-corrected EMAs) and keep a copy of the parameters;
5. after every fit that follows the reference fit (whose curvature norm is ``||H_0||``):
   ``T1 = ceil(h ||H_0|| / ||H_l||)``, ``P = min(b T1, S)``.

Between rounds (:meth:`CrestStrategy.should_select`), every ``T1`` steps: ``delta`` is the
exact parameter displacement since the fit, ``L_true`` the eval-mode, unweighted mean loss on
the check set measured exactly like ``L0``, and ``rho = |L_true - F(delta)| / L_true``;
``rho > tau`` triggers a new round. Optionally, learned examples leave the pool
(:mod:`strategies._crest_drop`).

Defects of the release code that this implementation avoids: no double backprop per training
step (the trainer owns training); checks forward the ``P r`` union (or ``check_size`` of it),
never the whole training set; ``delta`` is the true displacement, not a reconstruction from a
stale learning rate; ``L0`` and ``L_true`` are measured the same way (eval mode, no grad,
unweighted mean over the same set); scarce classes never crash selection; all randomness comes
from ``ctx.generator``; ``||H_0||`` is taken after the warm-up and a first pseudo-epoch of
training (configurable), not on the untrained network where it pins ``T1`` at 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch.nn import functional as F

from strategies._crest_drop import LossRecords, drop_mask
from strategies._crest_quadratic import (
    QuadraticModel,
    flat_params,
    gradient_and_hessian_diagonal,
    rademacher,
)
from strategies._crest_subsets import (
    ClassPool,
    Coresets,
    draw_subsets,
    minibatch_coresets,
)
from subsetlab.config import StrategyConfig
from subsetlab.embeddings import Embeddings, find_last_linear
from subsetlab.errors import SelectionError
from subsetlab.protocol import (
    Capabilities,
    Selection,
    SelectionStrategy,
    StepInfo,
    TrainState,
)
from subsetlab.registry import register
from subsetlab.seeding import torch_generator

__all__ = ["CrestConfig", "CrestStrategy", "next_t1_and_p"]

_STATE_VERSION = 1


class CrestConfig(StrategyConfig):
    """Config of :class:`CrestStrategy`. Defaults follow the paper's release unless noted."""

    name: Literal["crest"] = Field("crest", description="Registered name of the strategy.")

    # --- mini-batch coresets
    r_fraction: float = Field(
        0.01,
        gt=0.0,
        le=1.0,
        description="Size r of each random subset as a fraction of N (release: 0.01). Floored at "
        "max(B, C) so every subset can yield a full mini-batch and hold every class, and capped "
        "at the pool size.",
    )
    p_init: int = Field(5, ge=1, le=100_000, description="Number P of random subsets before the first T1/P update (release: 5).")
    batch_mode: Literal["coreset", "shuffle"] = Field(
        "coreset",
        description="'coreset': each mini-batch coreset is one training batch (a batch plan); "
        "'shuffle' (release): the union of the coresets is shuffled into batches of B.",
    )
    similarity: Literal["exp", "max_minus_dist"] = Field(
        "exp", description="Facility-location similarity: exp(-dist/d) (release) or max_dist - dist (CRAIG)."
    )

    # --- update trigger
    tau: float = Field(0.1, gt=0.0, description="Re-select when rho = |L_true - F(delta)| / L_true exceeds tau.")
    t1_init: int = Field(1, ge=1, description="Steps between checks before the first T1 update (release: 1).")
    t1_max: int | None = Field(
        None, ge=1, description="Upper bound on T1; None means S, the steps of one pseudo-epoch."
    )
    h: float = Field(1.0, gt=0.0, description="Multiplier h of T1 = ceil(h * ||H_0|| / ||H_l||).")
    b: int = Field(5, ge=1, le=100_000, description="Multiplier b of P = min(b * T1, S).")
    h0_reference: Literal["first", "warmup_end"] = Field(
        "warmup_end",
        description="Which fit's curvature norm is ||H_0||: 'first', the first eligible fit "
        "(release), or 'warmup_end', the first eligible fit at which the learning rate no longer "
        "increases (after the LR warm-up). Eligible: see h0_after_epochs.",
    )
    h0_after_epochs: float = Field(
        1.0,
        ge=0.0,
        description="Fits before this many pseudo-epochs cannot be the ||H_0|| reference "
        "(T1 and P keep their initial values until it is set). The untrained network is the "
        "flattest point of a run, so a reference taken there keeps T1 at 1; 0 with "
        "h0_reference='first' reproduces the release.",
    )
    check_set: Literal["fixed", "fresh"] = Field(
        "fixed",
        description="Where L_true is measured. 'fixed': the union drawn at the last fit (L0 and "
        "L_true paired on the same examples, low noise). 'fresh': a new draw of P subsets per "
        "check, whose forward pass is reused by the selection it triggers.",
    )
    check_size: int | None = Field(
        None,
        ge=1,
        description="Forward only this many random examples of the union per check (None: the "
        "whole union). With 'fixed', L0 is taken over the same examples.",
    )

    # --- quadratic loss model
    hessian_smoothing: Literal["ema", "rms"] = Field(
        "ema",
        description="'ema': EMA(D) + eps, the unbiased signed Hutchinson average (a faithful "
        "Taylor model); 'rms': sqrt(EMA(D^2)) + eps (AdaHessian / release; inflated by probe "
        "noise).",
    )
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="EMA decay of the gradient.")
    beta2: float = Field(0.999, ge=0.0, lt=1.0, description="EMA decay of the Hessian diagonal.")
    eps: float = Field(1e-4, ge=0.0, description="Added to the smoothed Hessian diagonal.")
    hutchinson_samples: int = Field(1, ge=1, le=10_000, description="Rademacher probes per fit.")
    fit_batches: int | None = Field(
        None, ge=1, description="Mini-batch coresets the fit uses (None: all P)."
    )
    curvature: Literal["all", "last_layer"] = Field(
        "all",
        description="Parameters the quadratic model covers: all, or only the last nn.Linear "
        "(much cheaper: no backprop through the body).",
    )

    # --- dropping learned examples
    drop: bool = Field(False, description="Drop learned examples from the pool (release default: off).")
    alpha: float = Field(0.1, gt=0.0, description="Examples whose recorded losses all stay below alpha are learned.")
    loss_window: int = Field(5, ge=1, le=1000, description="Recorded losses kept per example.")
    min_records: int = Field(
        3, ge=1, description="Recorded losses an example needs before it can be dropped (<= loss_window)."
    )
    drop_interval: float | None = Field(
        None,
        gt=0.0,
        description="Pseudo-epochs between drop decisions (T2); None means max(1, E/10), the "
        "release's 20 of 200. A decision is taken at the first step of that pseudo-epoch.",
    )
    floor_fraction: float = Field(
        0.8, gt=0.0, le=1.0, description="The pool never shrinks below ceil(floor_fraction * N) (release: 0.8)."
    )

    @model_validator(mode="after")
    def _check(self) -> CrestConfig:
        if self.min_records > self.loss_window:
            raise ValueError(
                f"min_records ({self.min_records}) must not exceed loss_window ({self.loss_window}); "
                f"lower min_records or widen the window"
            )
        if self.t1_max is not None and self.t1_init > self.t1_max:
            raise ValueError(f"t1_init ({self.t1_init}) must not exceed t1_max ({self.t1_max})")
        return self


def next_t1_and_p(h0_norm: float, h_norm: float, h: float, b: int, steps_per_epoch: int, t1_max: int) -> tuple[int, int]:
    """The T1 and P rule: ``T1 = ceil(h ||H_0|| / ||H_l||)`` in ``[1, t1_max]``, ``P = min(b T1, S)`` >= 1.

    A zero or non-finite ``||H_l||`` gives ``T1 = t1_max``.
    """
    ratio = h * h0_norm / h_norm if h_norm > 0 and math.isfinite(h_norm) else math.inf
    t1 = t1_max if not math.isfinite(ratio) else min(t1_max, max(1, math.ceil(ratio - 1e-9)))
    p = max(1, min(b * t1, int(steps_per_epoch)))
    return int(t1), int(p)


@dataclass
class _Round:
    """The random subsets of one draw and what one forward pass told about them.

    ``grads`` and ``losses`` are aligned with ``union``; rows not forwarded yet (a fresh check
    that forwarded only ``check_pos``) have NaN losses and ``complete`` False.
    """

    subsets: torch.Tensor  # [P, r] dataset indices (device)
    union: torch.Tensor  # [U] sorted unique dataset indices (device)
    inverse: torch.Tensor  # [P, r] positions into union
    grads: torch.Tensor  # [U, C]
    losses: torch.Tensor  # [U]
    labels: torch.Tensor  # [U]
    check_pos: torch.Tensor  # positions into union of the check examples
    complete: bool
    features: torch.Tensor | None = None  # [U, D] inputs of the last layer (last-layer fits)


@register
class CrestStrategy(SelectionStrategy):
    """CREST: mini-batch coresets from random subsets, re-selected when a quadratic loss model fails.

    Config: :class:`CrestConfig`. Hooks: :meth:`select` (a round), :meth:`should_select` (the
    rho check every ``T1`` steps and, with ``drop``, the drop decisions), :meth:`on_step_end`
    (loss records). Work reported in ``ctx.meters``: forward examples (embeddings, checks),
    backward and HVP examples (fits); seconds under ``selection``, ``loss_approx``,
    ``checking``, ``dropping``; series ``rho``, ``L_true``, ``F_delta`` per check and ``T1``,
    ``P``, ``pool_size``, ``L0``, ``H_norm`` (``||H_l||``) per selection.

    Defaults, and why (measured on Fashion-MNIST with the small CNN, 10% budget, batch 128;
    rho compared at every check with the ground truth on the whole training set, 20,000
    examples, 64 steps):

    * ``check_set="fixed"``: ``L0`` and ``L_true`` are paired measurements on the same
      examples. Its rho was the closest to the truth (mean error 0.013-0.020, same decision
      as the truth at 90-95% of checks), against 0.033-0.052 and 70-81% for ``"fresh"``,
      which compares two unrelated samples. ``"fresh"`` is cheaper, since a triggered
      selection reuses the check's forward pass (0.77x the forward examples of ``"fixed"``
      at ~30% triggers, about 20% less wall time), so it is the option when cost matters
      more than the accuracy of the trigger.
    * ``check_size=None`` (the whole union): a 256-example subsample makes a check ~10x
      cheaper but doubled the error of rho (0.024-0.038; decision agreement 73-90%). It is
      the first option to set when wall time matters.
    * ``hessian_smoothing="ema"``: the signed average of Hutchinson's estimates is unbiased
      for ``diag(H)``; the RMS form adds the probe noise (the off-diagonal mass) to the
      curvature. On the same trajectories the true relative error of ``F`` averaged 0.11
      with ``"ema"`` against 0.16 with ``"rms"``.
    * ``h0_after_epochs=1``: the Hessian-norm of the first fits is the smallest of the run
      (7.6, rising to ~40 in the first pseudo-epoch, then decaying to ~14 by the fourth),
      so a reference taken there keeps ``T1 = 1`` for good, as in the release. Taken after
      one pseudo-epoch, T1 grows as the curvature relaxes.
    * The quadratic model is fitted in eval mode, as ``L0`` and ``L_true`` are measured, so
      batch-norm models are modelled and measured as the same function and the fit does not
      touch the running statistics.

    Cost: a check forwards the check set (``P r`` examples by default) every ``T1`` steps and
    a round forwards ``P r`` examples and back-propagates twice through ``P B`` (the fit), so
    the extra work per training step is about ``|check set| / T1 + trigger_rate * b * r``
    forward examples (``P = b T1``) plus the fit. ``check_size``, ``curvature="last_layer"``
    (the fit then reuses the round's forward pass and costs almost nothing) and
    ``fit_batches`` bound the parts that are not part of the method's definition.

    Distributed (``W`` ranks): every rank draws the same ``P`` subsets from the shared
    generator (``P`` rounded up to a multiple of ``W``), keeps those with ``p % W == rank``,
    forwards only their union and selects their mini-batch coresets of ``B / W`` rows (its
    share of the global batch), so a training step combines ``W`` coresets of ``W`` different
    subsets and DDP averages their gradients. ``L0`` and ``L_true`` are all-reduced (sum and
    count), the fit's gradient and Hutchinson products are all-reduced (same probes on every
    rank), dropping uses the all-reduced loss records (count summed, largest loss), and the
    decision is all-reduced too, so every rank sees the same ``rho``, ``T1``, ``P`` and pool and
    takes the same branch at the same step. ``check_size`` and ``fit_batches`` are global
    figures, split over the ranks.
    """

    name = "crest"
    Config = CrestConfig
    capabilities = Capabilities(
        supports_distributed=True,
        distributed_note="Ranks split the P random subsets (p % W == rank) and all-reduce every decision.",
        stochastic=True,
    )
    config: CrestConfig

    # ------------------------------------------------------------------ setup
    def setup(self, ctx) -> None:
        """Size the rounds, pick the modelled parameters and allocate the state."""
        super().setup(ctx)
        cfg = self.config
        n = len(ctx.train)
        self.world_, self.rank_ = int(ctx.dist.world_size), int(ctx.dist.rank)
        # rank-local draws (the check subsample) must not advance the shared generator, which
        # every rank has to keep in step; a single process keeps using the shared one
        self.rank_gen_ = (
            ctx.generator if self.world_ == 1 else torch_generator(ctx.seed, "crest-rank", self.rank_)
        )
        self.n_ = n
        self.num_classes_ = int(ctx.train.num_classes)
        self.labels_cpu_ = ctx.train.labels.cpu()
        self.pool_ = torch.ones(n, dtype=torch.bool)
        self.class_pool_ = ClassPool(self.labels_cpu_, self.pool_, self.num_classes_)
        self.steps_per_epoch_ = int(ctx.budget.steps_per_epoch)
        self.r_ = min(n, max(math.ceil(round(cfg.r_fraction * n, 6)), ctx.batch_size, self.num_classes_))
        self.t1_max_ = int(cfg.t1_max or self.steps_per_epoch_)
        self.T1_ = min(cfg.t1_init, self.t1_max_)
        self.P_ = self._ranks_multiple(int(cfg.p_init))
        if cfg.curvature == "last_layer":
            self.last_ = find_last_linear(ctx.model)
            params = [p for p in self.last_.parameters() if p.requires_grad]
        else:
            self.last_ = None
            params = [p for p in ctx.model.parameters() if p.requires_grad]
        if not params:
            raise SelectionError("CREST found no trainable parameters to model; the model has none with requires_grad.")
        self.params_ = params
        size = sum(p.numel() for p in params)
        self.quad_ = QuadraticModel(size, ctx.device, (cfg.beta1, cfg.beta2), cfg.eps, cfg.hessian_smoothing)
        self.anchor_: torch.Tensor | None = None
        self.check_idx_: torch.Tensor | None = None
        self.ref_step_ = 0
        self.fits_ = 0
        self.checks_ = 0
        self.h0_norm_ = math.nan
        self.prev_lr_ = math.nan
        self.pending_: _Round | None = None
        self.floor_ = min(n, math.ceil(round(cfg.floor_fraction * n, 6)))
        self.drop_every_ = float(cfg.drop_interval or max(1.0, ctx.budget.epochs / 10.0))
        self.next_drop_epoch_ = self.drop_every_
        self.dropped_ = 0
        self.records_ = LossRecords(n, cfg.loss_window, ctx.device) if cfg.drop else None

    def _ranks_multiple(self, p: int) -> int:
        """``p`` rounded up to a multiple of the world size (every rank gets as many subsets)."""
        w = self.world_
        return -(-int(p) // w) * w

    def _global_mean(self, values: torch.Tensor) -> float:
        """Mean of ``values`` over every rank's examples (this rank's alone in one process)."""
        if self.world_ == 1:
            return float(values.mean())
        tot = self.ctx.dist.all_reduce(
            torch.stack([values.double().sum().cpu(), torch.tensor(float(values.numel()), dtype=torch.float64)]), "sum"
        )
        return float(tot[0] / tot[1].clamp(min=1))

    @property
    def T1(self) -> int:
        """Current steps between checks."""
        return self.T1_

    @property
    def P(self) -> int:
        """Current number of random subsets per round."""
        return self.P_

    @property
    def pool_size(self) -> int:
        """Examples in the active pool."""
        return len(self.class_pool_)

    # ------------------------------------------------------------------ the round
    def _forward(self, indices: torch.Tensor, features: bool = False) -> Embeddings:
        """One eval-mode, no-grad pass over ``indices`` (counted as forward examples)."""
        self.ctx.meters.add_forward(int(indices.shape[0]))
        return self.ctx.embedder.embed(self.ctx.train, indices, return_features=features)

    def draw_round(self, P: int, forward_all: bool = True) -> _Round:
        """Draw ``P`` random subsets and forward their union once.

        With ``forward_all=False`` and a ``check_size`` smaller than the union, only a random
        ``check_size`` of the union is forwarded (a fresh check); :meth:`complete_round`
        forwards the rest if the check triggers. In distributed training every rank draws the
        same subsets from the shared generator.
        """
        ctx, cfg = self.ctx, self.config
        dev = ctx.device
        subsets_cpu, _ = draw_subsets(self.class_pool_, P, self.r_, ctx.generator)
        if self.world_ > 1:  # this rank's subsets: p % W == rank
            subsets_cpu = subsets_cpu[self.rank_ :: self.world_]
        union_cpu, inverse_cpu = torch.unique(subsets_cpu, return_inverse=True)
        U = int(union_cpu.shape[0])
        check_size = None if cfg.check_size is None else -(-cfg.check_size // self.world_)
        if check_size is not None and check_size < U:
            check_pos = torch.sort(torch.randperm(U, generator=self.rank_gen_)[:check_size]).values.to(dev)
        else:
            check_pos = torch.arange(U, device=dev)
        union = union_cpu.to(dev)
        rnd = _Round(
            subsets_cpu.to(dev),
            union,
            inverse_cpu.to(dev),
            torch.empty(U, self.num_classes_, device=dev),
            torch.full((U,), float("nan"), device=dev),
            torch.empty(U, dtype=torch.long, device=dev),
            check_pos,
            False,
            torch.empty(U, ctx.embedder.feature_dim, device=dev) if self.last_ is not None else None,
        )
        first = check_pos if not forward_all else torch.arange(U, device=dev)
        self._fill(rnd, first)
        rnd.complete = int(first.shape[0]) == U
        return rnd

    def _fill(self, rnd: _Round, pos: torch.Tensor) -> None:
        e = self._forward(rnd.union[pos], features=rnd.features is not None)
        if rnd.features is not None:
            rnd.features[pos] = e.features
        rnd.grads[pos] = e.grads.float()
        rnd.losses[pos] = e.losses
        rnd.labels[pos] = e.labels
        if self.records_ is not None:
            self.records_.record(e.indices, e.losses)

    def complete_round(self, rnd: _Round) -> None:
        """Forward the union members a fresh check left out."""
        if rnd.complete:
            return
        todo = torch.ones(rnd.union.shape[0], dtype=torch.bool, device=rnd.union.device)
        todo[rnd.check_pos] = False
        self._fill(rnd, torch.nonzero(todo).squeeze(1))
        rnd.complete = True

    def select_coresets(self, rnd: _Round) -> Coresets:
        """Mini-batch coresets of this rank's subsets (all of them in a single process).

        Each keeps ``ctx.batch_size`` examples: ``B``, or ``B / W`` in a distributed run.
        """
        emb = rnd.grads[rnd.inverse]  # [P, r, C]
        labels = rnd.labels[rnd.inverse]
        return minibatch_coresets(rnd.subsets, labels, emb, self.ctx.batch_size, self.num_classes_, self.config.similarity)

    # ------------------------------------------------------------------ the quadratic model
    def _fit(self, idx: torch.Tensor, w: torch.Tensor, m: int, loss0: float, feats: torch.Tensor | None) -> None:
        """Fit g and diag(H) on the first ``fit_batches`` mini-batch coresets (eval mode).

        With ``curvature="last_layer"`` the penultimate features of the coreset come from the
        selection's own forward pass (``feats``, same parameters, eval mode), so the fit runs
        no forward pass of its own.
        """
        ctx, cfg = self.ctx, self.config
        dev = ctx.device
        P = idx.shape[0] // m
        per_rank = None if cfg.fit_batches is None else -(-cfg.fit_batches // self.world_)
        rows = min(P, per_rank or P) * m
        # the model's loss is the weighted mean over every rank's fit rows
        total = rows if self.world_ == 1 else int(ctx.dist.all_reduce(torch.tensor([rows], dtype=torch.long), "sum"))
        idx, w = idx[:rows], w[:rows].to(dev)
        if feats is not None:
            feats = feats[:rows]
        probes = [rademacher(self.quad_.m.numel(), ctx.generator, dev) for _ in range(cfg.hutchinson_samples)]
        model = ctx.model
        last = self.last_
        ys = ctx.train.labels.to(dev)[idx.to(dev)] if feats is not None else None
        step = rows if feats is not None else m  # no activations to bound without a forward

        def chunk(s: int, e: int):
            def loss() -> torch.Tensor:
                if feats is not None:
                    y = ys[s:e]
                    z = F.linear(feats[s:e], last.weight, last.bias)
                else:
                    x, y = ctx.train.get(idx[s:e])
                    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                    z = model(x)
                return (w[s:e] * ctx.loss_fn(z.float(), y)).sum() / total

            return loss

        was = model.training
        model.eval()
        try:
            g, d = gradient_and_hessian_diagonal(
                self.params_, [chunk(s, min(rows, s + step)) for s in range(0, rows, step)], probes
            )
        finally:
            model.train(was)
        if self.world_ > 1:  # the same probes on every rank: sums of z*(H_r z) give z*(H z)
            g, d = ctx.dist.all_reduce(g, "sum"), ctx.dist.all_reduce(d, "sum")
        ctx.meters.add_backward(rows)
        ctx.meters.add_hvp(rows * len(probes))
        self.quad_.update(g, d, loss0)
        self.anchor_ = flat_params(self.params_)

    def _update_schedule(self, step: int, lr: float) -> None:
        """After a fit: set ``||H_0||`` at the reference fit, else apply the T1/P rule."""
        cfg = self.config
        hn = self.quad_.hessian_norm()
        if math.isnan(self.h0_norm_):
            late_enough = step >= cfg.h0_after_epochs * self.steps_per_epoch_
            warm_done = math.isfinite(self.prev_lr_) and lr <= self.prev_lr_ * (1 + 1e-12)
            if late_enough and (cfg.h0_reference == "first" or warm_done):
                self.h0_norm_ = hn
            return
        self.T1_, p = next_t1_and_p(self.h0_norm_, hn, cfg.h, cfg.b, self.steps_per_epoch_, self.t1_max_)
        self.P_ = self._ranks_multiple(p)

    def predict_loss(self) -> float:
        """``F(delta)`` for the current parameters (``delta`` = displacement since the fit)."""
        if self.anchor_ is None:
            return math.nan
        return self.quad_.predict(flat_params(self.params_) - self.anchor_)

    # ------------------------------------------------------------------ hooks
    def select(self, state: TrainState) -> Selection:
        """One CREST round: subsets, coresets, quadratic fit, T1/P update."""
        ctx, cfg = self.ctx, self.config
        meters = ctx.meters
        with meters.timer("selection"):
            rnd = self.pending_ if self.pending_ is not None else self.draw_round(self.P_)
            self.pending_ = None
            self.complete_round(rnd)
            cs = self.select_coresets(rnd)
            P, m = cs.indices.shape
            idx = cs.indices.reshape(-1)
            w = cs.weights.reshape(-1)
            w = w * (w.numel() / w.sum())
            feats = None
            if rnd.features is not None:
                feats = rnd.features[rnd.inverse.gather(1, cs.positions).reshape(-1)]
        if cfg.check_set == "fixed":
            self.check_idx_ = rnd.union[rnd.check_pos]
            loss0 = self._global_mean(rnd.losses[rnd.check_pos])
        else:
            self.check_idx_ = None
            loss0 = self._global_mean(rnd.losses)
        with meters.timer("loss_approx"):
            self._fit(idx, w, m, loss0, feats)
        self.fits_ += 1
        self._update_schedule(state.step, state.lr)
        self.ref_step_ = state.step
        series = (("T1", self.T1_), ("P", self.P_), ("pool_size", self.pool_size), ("L0", loss0),
                  ("H_norm", self.quad_.hessian_norm()))
        for key, val in series:
            meters.record(key, state.step, val)
        batches = None
        if cfg.batch_mode == "coreset":
            batches = list(torch.arange(P * m).view(P, m).unbind(0))
        diagnostics = {
            "P": int(P),
            "r": int(rnd.subsets.shape[1]),
            "T1": self.T1_,
            "union": int(rnd.union.shape[0]),
            "pool": self.pool_size,
            "fit": self.fits_,
        }
        return Selection(idx.cpu(), w.detach().cpu(), batches, diagnostics, rank_local=self.world_ > 1)

    def should_select(self, state: TrainState) -> bool:
        """Every ``T1`` steps: measure ``rho``; True when ``rho > tau``. Drop decisions too."""
        if self.records_ is not None and state.epoch >= self.next_drop_epoch_:
            with self.ctx.meters.timer("dropping"):
                self._drop(state)
        if state.step - self.ref_step_ < self.T1_:
            return False
        with self.ctx.meters.timer("checking"):
            rho, l_true, f_delta, rnd = self.measure_rho()
        decision = self.decide(rho)
        self.checks_ += 1
        self.ref_step_ = state.step
        meters = self.ctx.meters
        meters.record("rho", state.step, rho)
        meters.record("L_true", state.step, l_true)
        meters.record("F_delta", state.step, f_delta)
        if decision and rnd is not None:
            with meters.timer("selection"):
                self.complete_round(rnd)
            self.pending_ = rnd
        return decision

    def measure_rho(self) -> tuple[float, float, float, _Round | None]:
        """``(rho, L_true, F(delta), fresh round or None)`` at the current parameters."""
        f_delta = self.predict_loss()
        rnd = None
        if self.config.check_set == "fixed":
            l_true = self._global_mean(self._forward(self.check_idx_).losses)
        else:
            rnd = self.draw_round(self.P_, forward_all=False)
            l_true = self._global_mean(rnd.losses[rnd.check_pos])
        rho = abs(l_true - f_delta) / max(abs(l_true), 1e-12)
        if not math.isfinite(rho):
            rho = math.inf
        return rho, l_true, f_delta, rnd

    def decide(self, rho: float) -> bool:
        """The re-selection decision, all-reduced: every rank re-selects if any rank would.

        ``rho`` is computed from all-reduced figures and is the same everywhere; the reduction
        guards against a floating-point difference splitting the ranks (a hang).
        """
        flag = rho > self.config.tau
        if self.world_ > 1:
            flag = bool(self.ctx.dist.all_reduce(torch.tensor([float(flag)]), "max") > 0)
        return flag

    def on_step_end(self, state: TrainState, info: StepInfo) -> None:
        """Record the batch's per-example losses (with ``drop``) and the step's learning rate."""
        self.prev_lr_ = float(state.lr)
        if self.records_ is not None:
            self.records_.record(info.indices, info.losses)

    def _drop(self, state: TrainState) -> None:
        cfg = self.config
        while self.next_drop_epoch_ <= state.epoch:
            self.next_drop_epoch_ += self.drop_every_
        pool_dev = self.pool_.to(self.records_.values.device)
        held, mx = self.records_.summary()
        if self.world_ > 1:  # every rank's records: counts add up, the largest loss wins
            held = self.ctx.dist.all_reduce(held, "sum")
            mx = self.ctx.dist.all_reduce(mx, "max")
        out = drop_mask(held, mx, pool_dev, cfg.alpha, cfg.min_records, self.floor_).cpu()
        k = int(out.sum())
        if k:
            self.pool_ &= ~out
            self.dropped_ += k
            self.class_pool_ = ClassPool(self.labels_cpu_, self.pool_, self.num_classes_)
        self.ctx.meters.record("pool_size", state.step, self.pool_size)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (tensors and primitives; loads with ``weights_only``)."""
        if self.ctx is None:
            return {"version": _STATE_VERSION, "initialized": False}
        return {
            "version": _STATE_VERSION,
            "initialized": True,
            "T1": self.T1_,
            "P": self.P_,
            "ref_step": self.ref_step_,
            "fits": self.fits_,
            "checks": self.checks_,
            "h0_norm": self.h0_norm_,
            "prev_lr": self.prev_lr_,
            "next_drop_epoch": self.next_drop_epoch_,
            "dropped": self.dropped_,
            "quad": self.quad_.state_dict(),
            "anchor": self.anchor_,
            "check_idx": self.check_idx_,
            "pool": self.pool_,
            "records": self.records_.state_dict() if self.records_ is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after :meth:`setup`)."""
        if not state.get("initialized", False):
            return
        if self.ctx is None:
            raise SelectionError("CrestStrategy.load_state_dict needs setup(ctx) first (the trainer calls it).")
        dev = self.ctx.device
        self.T1_, self.P_ = int(state["T1"]), int(state["P"])
        self.ref_step_, self.fits_, self.checks_ = int(state["ref_step"]), int(state["fits"]), int(state["checks"])
        self.h0_norm_, self.prev_lr_ = float(state["h0_norm"]), float(state["prev_lr"])
        self.next_drop_epoch_, self.dropped_ = float(state["next_drop_epoch"]), int(state["dropped"])
        self.quad_.load_state_dict(state["quad"])
        self.anchor_ = None if state["anchor"] is None else state["anchor"].to(dev).clone()
        self.check_idx_ = None if state["check_idx"] is None else state["check_idx"].to(dev).clone()
        self.pool_ = state["pool"].cpu().bool().clone()
        self.class_pool_ = ClassPool(self.labels_cpu_, self.pool_, self.num_classes_)
        if self.records_ is not None and state["records"] is not None:
            self.records_.load_state_dict(state["records"])
        self.pending_ = None
