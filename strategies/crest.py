"""CREST: coresets for stochastic gradient descent (Yang, Kang, Mirzasoleiman, ICML 2023).

The method: every selection round ``l`` draws class-stratified random subsets ``V_p`` of size
``r`` from the active pool, keeps ``m = B`` examples of each by per-class facility location on
the last-layer gradients (weights: cluster sizes), and fits a local quadratic model
``F(delta) = L0 + g.delta + 1/2 delta.diag(H).delta`` around the parameters ``w_l`` of the fit
(``g`` and ``diag(H)``, by Hutchinson, smoothed by bias-corrected EMAs). The model trains on
the mini-batch coresets; every ``T1`` steps it measures ``rho = |L_true - F(delta)| / L_true``
(``delta`` the exact displacement since the fit, ``L_true`` the loss on random examples) and
selects again when ``rho > tau``. After each fit ``T1 = ceil(h ||H_0|| / ||H_l||)`` and
``P = min(b T1, S)``. Optionally, learned examples leave the pool
(:mod:`strategies._crest_drop`).

Two cost structures implement it (``build``):

* ``"lazy"`` (default): a round's coresets are built when the trainer reaches them (in groups
  of ``group``), through :attr:`subsetlab.protocol.Selection.extends`, so a round that ends
  after ``k`` steps builds ``k`` coresets, not ``P``. The check set is drawn *ahead*: at the fit,
  the first random subset of the *next* round is drawn and ``check_size`` of its members are
  forwarded for ``L0``; each check forwards the same examples for ``L_true`` (a paired
  measurement on examples the model has not trained on), and the round a check triggers starts
  from that subset, reusing the check's forward pass. ``g`` comes from the gradient of the
  round's first training step (its batch is the first coreset, at ``w_l``: exactly the
  coreset's weighted mean gradient, for free), ``diag(H)`` from Hutchinson on ``hvp_rows``
  rows of that coreset (``curvature="head"``: in closed form on the output layer, no pass at
  all). ``T1`` follows a short-horizon curvature norm against the peak curvature so far.
* ``"eager"`` (``preset="release"``): the release's structure, all ``P`` coresets selected
  and fitted up front, checks on the union of the round's subsets: subsetlab's defaults before
  the redesign (commit a8db7b0), with the release's defects fixed.

Defects of the release code avoided in both: no double backprop per training step (the
trainer owns training); checks forward the check set, never the whole training set; ``delta``
is the true displacement; ``L0`` and ``L_true`` are measured the same way (eval mode, no grad,
unweighted mean over the same examples; with ``bn_stats="anchor"`` also with the same
batch-norm statistics); scarce classes never crash selection; all randomness comes from
``ctx.generator``; ``||H_0||`` is not pinned to the untrained network.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from strategies._crest_config import PRESETS, CrestConfig, next_t1_and_p
from strategies._crest_drop import LossRecords, drop_mask
from strategies._crest_quadratic import (
    CurvatureTracker,
    QuadraticModel,
    flat_params,
    gradient_and_hessian_diagonal,
    head_hessian_diagonal,
    rademacher,
)
from strategies._crest_subsets import (
    ClassPool,
    Coresets,
    draw_subsets,
    minibatch_coresets,
)
from subsetlab.embeddings import Embeddings, find_last_linear
from subsetlab.errors import SelectionError
from subsetlab.protocol import (
    Capabilities,
    Selection,
    SelectionStrategy,
    StepInfo,
    TrainState,
)
from subsetlab.seeding import torch_generator

__all__ = ["PRESETS", "CrestConfig", "CrestStrategy", "next_t1_and_p"]

_STATE_VERSION = 2


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


@dataclass
class _PendingFit:
    """A lazy round's fit waiting for the gradient of its first training step."""

    diag: torch.Tensor
    loss0: float
    step: int
    lr: float


class CrestStrategy(SelectionStrategy):
    """CREST: mini-batch coresets from random subsets, re-selected when a quadratic loss model fails.

    Config: :class:`CrestConfig`. Hooks: :meth:`select` (a round, or, with the lazy build, the
    next coresets of the current round as a :attr:`~subsetlab.protocol.Selection.extends`
    selection), :meth:`should_select` (the rho check every ``T1`` steps, the lazy build's
    "next coreset needed", and, with ``drop``, the drop decisions), :meth:`on_after_backward`
    (the lazy fit's ``g``), :meth:`on_step_end` (loss records). Work reported in
    ``ctx.meters``: forward examples (embeddings, checks, ``L0``, the fits' forwards), backward
    and HVP examples (fits); seconds under ``selection``, ``loss_approx``, ``checking``,
    ``dropping``; series ``rho``, ``L_true``, ``F_delta`` per check and ``T1``, ``P``,
    ``pool_size``, ``L0``, ``H_norm`` (the ``||H_l||`` of the T1 rule) per round.

    Cost of the lazy build per training step, in forward examples: ``r`` for each coreset
    built (one per step while rounds are shorter than ``P`` steps, fewer when the quadratic
    model holds longer), ``check_size / T1`` for the checks, and per round ``check_size`` for
    ``L0`` (the check's forward is reused by the round it triggers) plus the Hutchinson fit on
    ``hvp_rows`` rows (a forward, a backward with ``create_graph`` and one product per probe;
    nothing with ``curvature="head"``). The eager build pays ``P r`` forwards and a fit over
    ``P B`` rows per round, and ``|union| / T1`` per step for checks.

    Distributed (``W`` ranks): every rank draws the same subsets from the shared generator
    (``W`` per coreset slot, or ``P`` rounded up to a multiple of ``W`` per eager round) and keeps
    those with ``p % W == rank``; it forwards only its own subsets and selects coresets of
    ``B / W`` rows (its share of the global batch), so a training step combines ``W`` coresets
    of ``W`` different subsets and DDP averages their gradients. ``L0`` and ``L_true`` are
    all-reduced (sum and count), the fit's Hutchinson products are all-reduced (same probes on
    every rank; the lazy fit's ``g`` is the DDP-averaged gradient), dropping uses the
    all-reduced loss records, and every decision is all-reduced, so every rank sees the same
    ``rho``, ``T1``, ``P`` and pool and takes the same branch at the same step.
    ``check_size``, ``hvp_rows`` and ``fit_batches`` are global figures, split over the ranks.
    """

    name = "crest"
    Config = CrestConfig
    capabilities = Capabilities(
        supports_distributed=True,
        distributed_note="Ranks split the random subsets (p % W == rank) and all-reduce every decision.",
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
        self.head_ = find_last_linear(ctx.model)
        if cfg.curvature == "last_layer":
            self.last_ = self.head_
            params = [p for p in self.last_.parameters() if p.requires_grad]
        else:
            self.last_ = None
            params = [p for p in ctx.model.parameters() if p.requires_grad]
        if not params:
            raise SelectionError("CREST found no trainable parameters to model; the model has none with requires_grad.")
        self.params_ = params
        # offsets of the output layer's weight and bias in the flat parameter vector
        self.head_slices_: dict[str, slice] = {}
        off = 0
        for p in params:
            for key in ("weight", "bias"):
                if getattr(self.head_, key, None) is p:
                    self.head_slices_[key] = slice(off, off + p.numel())
            off += p.numel()
        if cfg.curvature == "head" and "weight" not in self.head_slices_:
            raise SelectionError(
                "CREST curvature='head' needs the output nn.Linear's weight among the trainable "
                "parameters; use curvature='all'."
            )
        size = off
        self.quad_ = QuadraticModel(size, ctx.device, (cfg.beta1, cfg.beta2), cfg.eps, cfg.hessian_smoothing)
        self.tracker_ = CurvatureTracker(cfg.t1_beta)
        self.bn_ = [m for m in ctx.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self.anchor_: torch.Tensor | None = None
        self.anchor_stats_: list[torch.Tensor] | None = None
        self.check_idx_: torch.Tensor | None = None
        self.ref_step_ = 0
        self.fits_ = 0
        self.checks_ = 0
        self.h0_norm_ = math.nan
        self.prev_lr_ = math.nan
        self.pending_: _Round | None = None
        # lazy build
        self.ahead_: _Round | None = None  # the next round's first subset (this rank's), drawn at the fit
        self.round_step_ = 0
        self.built_ = 0  # coresets this rank built in the current round
        self.want_ = "round"  # what the next select() makes: a new "round" or an "extend"
        self.pending_fit_: _PendingFit | None = None
        self.checked_at_ = -1  # step of the last check (its forward of the check set is current)
        self.coresets_built_ = 0
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

    def _global_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.world_ == 1 else self.ctx.dist.all_reduce(t, "sum")

    def _share(self, total: int | None) -> int | None:
        """This rank's share of a global row count (rounded up)."""
        return None if total is None else -(-int(total) // self.world_)

    @property
    def T1(self) -> int:
        """Current steps between checks."""
        return self.T1_

    @property
    def P(self) -> int:
        """Current number of random subsets (mini-batch coresets) per round."""
        return self.P_

    @property
    def pool_size(self) -> int:
        """Examples in the active pool."""
        return len(self.class_pool_)

    # ------------------------------------------------------------------ forward passes
    def _forward(self, indices: torch.Tensor, features: bool = False) -> Embeddings:
        """One eval-mode, no-grad pass over ``indices`` (counted as forward examples)."""
        self.ctx.meters.add_forward(int(indices.shape[0]))
        return self.ctx.embedder.embed(self.ctx.train, indices, return_features=features)

    def _wants_features(self) -> bool:
        return self.last_ is not None or self.config.curvature == "head"

    def draw_round(self, P: int, forward_all: bool = True, with_check: bool = True) -> _Round:
        """Draw ``P`` random subsets (this rank's share) and forward their union once.

        ``check_pos`` is a random ``check_size`` of the union (all of it when ``check_size`` is
        None or ``with_check`` is False). With ``forward_all=False`` nothing is forwarded yet;
        :meth:`complete_round` forwards what is left when it is needed. In distributed
        training every rank draws the same subsets from the shared generator and keeps those
        with ``p % W == rank``.
        """
        ctx, cfg = self.ctx, self.config
        dev = ctx.device
        subsets_cpu, _ = draw_subsets(self.class_pool_, P, self.r_, ctx.generator)
        if self.world_ > 1:  # this rank's subsets: p % W == rank
            subsets_cpu = subsets_cpu[self.rank_ :: self.world_]
        union_cpu, inverse_cpu = torch.unique(subsets_cpu, return_inverse=True)
        U = int(union_cpu.shape[0])
        size = self._share(cfg.check_size) if with_check else None
        if size is not None and size < U:
            check_pos = torch.sort(torch.randperm(U, generator=self.rank_gen_)[:size]).values.to(dev)
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
            torch.empty(U, ctx.embedder.feature_dim, device=dev) if self._wants_features() else None,
        )
        if forward_all:
            self._fill(rnd, torch.arange(U, device=dev))
            rnd.complete = True
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

    def complete_round(self, rnd: _Round, fresh: bool = False) -> None:
        """Forward the union members not forwarded yet (all of them with ``fresh``)."""
        if fresh:
            self._fill(rnd, torch.arange(rnd.union.shape[0], device=rnd.union.device))
            rnd.complete = True
            return
        if rnd.complete:
            return
        todo = torch.ones(rnd.union.shape[0], dtype=torch.bool, device=rnd.union.device)
        todo[rnd.check_pos] = False
        if bool(todo.any()):
            self._fill(rnd, torch.nonzero(todo).squeeze(1))
        rnd.complete = True

    def select_coresets(self, rnd: _Round) -> Coresets:
        """Mini-batch coresets of this rank's subsets (all of them in a single process).

        Each keeps ``ctx.batch_size`` examples: ``B``, or ``B / W`` in a distributed run.
        """
        emb = rnd.grads[rnd.inverse]  # [P, r, C]
        labels = rnd.labels[rnd.inverse]
        return minibatch_coresets(rnd.subsets, labels, emb, self.ctx.batch_size, self.num_classes_, self.config.similarity)

    @contextlib.contextmanager
    def _anchor_statistics(self) -> Iterator[None]:
        """Evaluate with the batch-norm running statistics of the fit (``bn_stats="anchor"``)."""
        if self.anchor_stats_ is None or not self.bn_:
            yield
            return
        bufs = [b for m in self.bn_ for b in (m.running_mean, m.running_var) if b is not None]
        now = [b.detach().clone() for b in bufs]
        with torch.no_grad():
            for b, a in zip(bufs, self.anchor_stats_):
                b.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for b, c in zip(bufs, now):
                    b.copy_(c)

    def _snapshot_statistics(self) -> None:
        if self.config.bn_stats == "anchor" and self.bn_:
            self.anchor_stats_ = [
                b.detach().clone() for m in self.bn_ for b in (m.running_mean, m.running_var) if b is not None
            ]

    # ------------------------------------------------------------------ the quadratic model
    def _probes(self) -> list[torch.Tensor]:
        return [rademacher(self.quad_.m.numel(), self.ctx.generator, self.ctx.device) for _ in range(self.config.hutchinson_samples)]

    def _double_backprop(
        self, idx: torch.Tensor, w: torch.Tensor, total: int, feats: torch.Tensor | None, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient and Hutchinson diagonal of ``sum_i w_i l_i / total`` over ``idx`` (eval mode)."""
        ctx = self.ctx
        dev = ctx.device
        rows = int(idx.shape[0])
        probes = self._probes()
        model, last = ctx.model, self.last_
        ys = ctx.train.labels.to(dev)[idx.to(dev)] if feats is not None else None
        w = w.to(dev)

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
            g, d = self._global_sum(g), self._global_sum(d)
        if feats is None:
            ctx.meters.add_forward(rows)
        ctx.meters.add_backward(rows)
        ctx.meters.add_hvp(rows * len(probes))
        return g, d

    def _fit(self, idx: torch.Tensor, w: torch.Tensor, m: int, loss0: float, feats: torch.Tensor | None) -> torch.Tensor:
        """Fit g and diag(H) on the first ``fit_batches`` mini-batch coresets (eval mode); return the raw diagonal."""
        cfg = self.config
        P = idx.shape[0] // m
        per_rank = self._share(cfg.fit_batches)
        rows = min(P, per_rank or P) * m
        # the model's loss is the weighted mean over every rank's fit rows
        total = rows if self.world_ == 1 else int(self.ctx.dist.all_reduce(torch.tensor([rows], dtype=torch.long), "sum"))
        idx, w = idx[:rows], w[:rows]
        if feats is not None:
            feats = feats[:rows]
        step = rows if feats is not None else m  # no activations to bound without a forward
        g, d = self._double_backprop(idx, w, total, feats, step)
        self.quad_.update(g, d, loss0)
        self.anchor_ = flat_params(self.params_)
        return d

    def _update_schedule(self, step: int, lr: float, raw_diag: torch.Tensor | None = None) -> None:
        """After a fit: update ``||H_0||`` and apply the T1/P rule."""
        cfg = self.config
        if cfg.t1_curvature == "recent" and raw_diag is not None:
            hn = self.tracker_.update(raw_diag)
        else:
            hn = self.quad_.hessian_norm()
        self.h_norm_ = hn
        late_enough = step >= cfg.h0_after_epochs * self.steps_per_epoch_
        if cfg.h0_reference == "max":
            if not late_enough:
                return
            self.h0_norm_ = hn if math.isnan(self.h0_norm_) else max(self.h0_norm_, hn)
        elif math.isnan(self.h0_norm_):
            warm_done = math.isfinite(self.prev_lr_) and lr <= self.prev_lr_ * (1 + 1e-12)
            if late_enough and (cfg.h0_reference == "first" or warm_done):
                self.h0_norm_ = hn
            return
        self.T1_, p = next_t1_and_p(self.h0_norm_, hn, cfg.h, cfg.b, self.steps_per_epoch_, self.t1_max_)
        self.P_ = self._ranks_multiple(p)

    def predict_loss(self) -> float:
        """``F(delta)`` for the current parameters (``delta`` = displacement since the fit)."""
        if self.anchor_ is None or self.quad_.t == 0:
            return math.nan
        return self.quad_.predict(flat_params(self.params_) - self.anchor_)

    def _record_round(self, step: int, loss0: float) -> None:
        meters = self.ctx.meters
        hn = getattr(self, "h_norm_", self.quad_.hessian_norm())
        for key, val in (("T1", self.T1_), ("P", self.P_), ("pool_size", self.pool_size), ("L0", loss0), ("H_norm", hn)):
            meters.record(key, step, val)

    # ------------------------------------------------------------------ hooks
    def select(self, state: TrainState) -> Selection:
        """A new round, or (lazy build, after :meth:`should_select` asked for it) the round's next coresets."""
        if self.config.build == "eager":
            return self._select_eager(state)
        want, self.want_ = self.want_, "round"
        if want == "extend":
            return self._extend(state)
        return self._select_lazy(state)

    def should_select(self, state: TrainState) -> bool:
        """Every ``T1`` steps: measure ``rho``; True when ``rho > tau`` (a new round). With the
        lazy build also True when the trainer is about to need a coreset not built yet. Drop
        decisions too."""
        if self.records_ is not None and state.epoch >= self.next_drop_epoch_:
            with self.ctx.meters.timer("dropping"):
                self._drop(state)
        if self.config.build == "eager":
            return self._should_select_eager(state)
        if state.step - self.ref_step_ >= self.T1_ and self._check(state):
            self.want_ = "round"
            return True
        limit = self.config.max_round_epochs
        if limit is not None and state.step - self.round_step_ >= limit * self.steps_per_epoch_:
            self.ctx.meters.record("forced", state.step, 1.0)
            self.want_ = "round"
            return True
        if state.step - self.round_step_ >= self.built_ and self.built_ < self.P_ // self.world_:
            self.want_ = "extend"
            return True
        return False

    def on_after_backward(self, state: TrainState) -> None:
        """Lazy fit: ``g`` is the gradient of the round's first step (its batch: the first coreset)."""
        pend = self.pending_fit_
        if pend is None or state.step != pend.step:
            return
        self.pending_fit_ = None
        with self.ctx.meters.timer("loss_approx"):
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params_]
            g = torch.cat([gr.detach().reshape(-1) for gr in grads]).float()
            self.quad_.update(g, pend.diag, pend.loss0)
        self.fits_ += 1
        self._update_schedule(pend.step, pend.lr, pend.diag)
        self._record_round(pend.step, pend.loss0)

    def on_step_end(self, state: TrainState, info: StepInfo) -> None:
        """Record the batch's per-example losses (with ``drop``) and the step's learning rate."""
        self.prev_lr_ = float(state.lr)
        if self.records_ is not None:
            self.records_.record(info.indices, info.losses)

    # ------------------------------------------------------------------ the lazy build
    def _coreset_selection(self, rnd: _Round, extends: bool, diagnostics: dict[str, Any]) -> tuple[Selection, Coresets]:
        cs = self.select_coresets(rnd)
        G, m = cs.indices.shape
        idx = cs.indices.reshape(-1)
        w = cs.weights.reshape(-1)
        w = w * (w.numel() / w.sum())
        self.built_ += G
        self.coresets_built_ += G
        batches = list(torch.arange(G * m).view(G, m).unbind(0))
        sel = Selection(idx.cpu(), w.detach().cpu(), batches, diagnostics, rank_local=self.world_ > 1, extends=extends)
        return sel, cs

    def _draw_slot(self, G: int = 1, ahead: bool = False) -> _Round:
        """``G`` coreset slots: ``W G`` subsets from the shared generator, this rank's ``G`` kept.

        ``ahead``: the next round's first subset, with a check set and nothing forwarded yet.
        """
        return self.draw_round(G * self.world_, forward_all=not ahead, with_check=ahead)

    def _extend(self, state: TrainState) -> Selection:
        cfg = self.config
        with self.ctx.meters.timer("selection"):
            G = max(1, min(cfg.group, self.P_ // self.world_ - self.built_))
            rnd = self._draw_slot(G)
            sel, _ = self._coreset_selection(rnd, True, {"built": self.built_ + G})
        return sel

    def _select_lazy(self, state: TrainState) -> Selection:
        ctx, cfg = self.ctx, self.config
        meters = ctx.meters
        with meters.timer("selection"):
            G = max(1, min(cfg.group, self.P_ // self.world_))
            if self.ahead_ is not None and G == 1:
                rnd = self.ahead_  # forwarded in part by the check that triggered this round
                self.complete_round(rnd, fresh=self.checked_at_ != state.step)
            else:
                rnd = self._draw_slot(G)
            self.ahead_ = None
            self.built_ = 0
            sel, cs = self._coreset_selection(rnd, False, {})
            m = cs.indices.shape[1]
        with meters.timer("loss_approx"):
            diag, g = self._lazy_curvature(rnd, cs, m)
        self.anchor_ = flat_params(self.params_)
        self._snapshot_statistics()
        with meters.timer("checking"):  # the next round's first subset and L0 on its check set
            self.ahead_ = self._draw_slot(1, ahead=True)
            self._fill(self.ahead_, self.ahead_.check_pos)
            loss0 = self._global_mean(self.ahead_.losses[self.ahead_.check_pos])
        self.round_step_ = self.ref_step_ = state.step
        if g is None:  # fit="step": g arrives with the round's first training step
            self.pending_fit_ = _PendingFit(diag, loss0, state.step, float(state.lr))
        else:
            self.quad_.update(g, diag, loss0)
            self.fits_ += 1
            self._update_schedule(state.step, float(state.lr), diag)
            self._record_round(state.step, loss0)
        sel.diagnostics.update(
            {"P": int(self.P_), "r": int(rnd.subsets.shape[1]), "T1": self.T1_, "pool": self.pool_size,
             "fit": self.fits_ + (self.pending_fit_ is not None), "built": self.built_}
        )
        return sel

    def _lazy_curvature(self, rnd: _Round, cs: Coresets, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The round's raw ``diag(H)`` estimate (and ``g`` unless it comes from the training step)."""
        ctx, cfg = self.ctx, self.config
        dev = ctx.device
        idx = cs.indices.reshape(-1)
        w = cs.weights.reshape(-1).float()
        w = w * (w.numel() / w.sum())
        pos = rnd.inverse.gather(1, cs.positions).reshape(-1)  # positions into the union
        if cfg.fit == "coresets":
            rows = min(int(idx.shape[0]), (self._share(cfg.fit_batches) or cs.indices.shape[0]) * m)
            total = rows if self.world_ == 1 else int(self._global_sum(torch.tensor([rows], dtype=torch.long)))
            feats = rnd.features[pos[:rows]] if self.last_ is not None else None
            g, d = self._double_backprop(idx[:rows], w[:rows], total, feats, rows if feats is not None else m)
            if cfg.curvature == "head":
                d = self._head_diag(rnd, pos[:rows], w[:rows], total)
            return d, g
        if cfg.curvature == "head":
            rows = int(idx.shape[0])
            total = rows if self.world_ == 1 else int(self._global_sum(torch.tensor([rows], dtype=torch.long)))
            return self._head_diag(rnd, pos, w, total), None
        first = cs.indices[0].shape[0]  # the first coreset: the round's first training batch
        share = self._share(cfg.hvp_rows)
        k = first if share is None else min(first, share)
        sub = torch.randperm(first, generator=self.rank_gen_)[:k].to(dev) if k < first else torch.arange(first, device=dev)
        total = k if self.world_ == 1 else int(self._global_sum(torch.tensor([k], dtype=torch.long)))
        feats = rnd.features[pos[sub]] if self.last_ is not None else None
        _, d = self._double_backprop(idx[sub], w[sub], total, feats, k)
        return d, None

    def _head_diag(self, rnd: _Round, pos: torch.Tensor, w: torch.Tensor, total: int) -> torch.Tensor:
        """Exact output-layer diagonal of the coreset's weighted loss, 0 on every other parameter."""
        labels = rnd.labels[pos]
        probs = rnd.grads[pos].clone()
        probs[torch.arange(probs.shape[0], device=probs.device), labels] += 1.0  # softmax = grad + onehot
        dw, db = head_hessian_diagonal(probs, rnd.features[pos], w.to(probs.device), float(total))
        d = torch.zeros(self.quad_.m.numel(), device=self.ctx.device)
        d[self.head_slices_["weight"]] = dw.reshape(-1).to(d.device)
        if "bias" in self.head_slices_:
            d[self.head_slices_["bias"]] = db.to(d.device)
        return self._global_sum(d)

    def _check(self, state: TrainState) -> bool:
        """The rho check on the ahead check set; True when it triggers a new round."""
        meters = self.ctx.meters
        with meters.timer("checking"):
            f_delta = self.predict_loss()
            rnd = self.ahead_
            with self._anchor_statistics():
                self._fill(rnd, rnd.check_pos)
            l_true = self._global_mean(rnd.losses[rnd.check_pos])
        rho = self._rho(l_true, f_delta)
        decision = self.decide(rho)
        self.checks_ += 1
        self.ref_step_ = self.checked_at_ = state.step
        meters.record("rho", state.step, rho)
        meters.record("L_true", state.step, l_true)
        meters.record("F_delta", state.step, f_delta)
        return decision

    @staticmethod
    def _rho(l_true: float, f_delta: float) -> float:
        rho = abs(l_true - f_delta) / max(abs(l_true), 1e-12)
        return rho if math.isfinite(rho) else math.inf

    # ------------------------------------------------------------------ the eager build
    def _select_eager(self, state: TrainState) -> Selection:
        """One CREST round with every coreset up front (the release's structure)."""
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
            raw = self._fit(idx, w, m, loss0, feats)
        self._snapshot_statistics()
        self.fits_ += 1
        self.coresets_built_ += P
        self._update_schedule(state.step, state.lr, raw)
        self.ref_step_ = state.step
        self._record_round(state.step, loss0)
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
            "built": int(P),
        }
        return Selection(idx.cpu(), w.detach().cpu(), batches, diagnostics, rank_local=self.world_ > 1)

    def _should_select_eager(self, state: TrainState) -> bool:
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
        """``(rho, L_true, F(delta), fresh round or None)`` at the current parameters.

        The lazy build measures on its ahead check set (and returns no round).
        """
        f_delta = self.predict_loss()
        rnd = None
        if self.config.build == "lazy":
            with self._anchor_statistics():
                self._fill(self.ahead_, self.ahead_.check_pos)
            l_true = self._global_mean(self.ahead_.losses[self.ahead_.check_pos])
        elif self.config.check_set == "fixed":
            with self._anchor_statistics():
                l_true = self._global_mean(self._forward(self.check_idx_).losses)
        else:
            rnd = self.draw_round(self.P_, forward_all=False)
            with self._anchor_statistics():
                self._fill(rnd, rnd.check_pos)
            l_true = self._global_mean(rnd.losses[rnd.check_pos])
        return self._rho(l_true, f_delta), l_true, f_delta, rnd

    def decide(self, rho: float) -> bool:
        """The re-selection decision, all-reduced: every rank re-selects if any rank would.

        ``rho`` is computed from all-reduced figures and is the same everywhere; the reduction
        guards against a floating-point difference splitting the ranks (a hang).
        """
        flag = rho > self.config.tau
        if self.world_ > 1:
            flag = bool(self.ctx.dist.all_reduce(torch.tensor([float(flag)]), "max") > 0)
        return flag

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
        ahead = None
        if self.ahead_ is not None:
            ahead = {"subsets": self.ahead_.subsets, "check_pos": self.ahead_.check_pos}
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
            "tracker": self.tracker_.state_dict(),
            "anchor": self.anchor_,
            "anchor_stats": self.anchor_stats_,
            "check_idx": self.check_idx_,
            "pool": self.pool_,
            "records": self.records_.state_dict() if self.records_ is not None else None,
            "round_step": self.round_step_,
            "built": self.built_,
            "coresets_built": self.coresets_built_,
            "ahead": ahead,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after :meth:`setup`)."""
        if not state.get("initialized", False):
            return
        if self.ctx is None:
            raise SelectionError("CrestStrategy.load_state_dict needs setup(ctx) first (the trainer calls it).")
        if state.get("version") != _STATE_VERSION:
            raise SelectionError(
                f"This CREST checkpoint has state version {state.get('version')}; this version of "
                f"subsetlab reads version {_STATE_VERSION}. Start the run afresh (resume=False)."
            )
        dev = self.ctx.device
        self.T1_, self.P_ = int(state["T1"]), int(state["P"])
        self.ref_step_, self.fits_, self.checks_ = int(state["ref_step"]), int(state["fits"]), int(state["checks"])
        self.h0_norm_, self.prev_lr_ = float(state["h0_norm"]), float(state["prev_lr"])
        self.next_drop_epoch_, self.dropped_ = float(state["next_drop_epoch"]), int(state["dropped"])
        self.quad_.load_state_dict(state["quad"])
        self.tracker_.load_state_dict(state["tracker"])
        self.anchor_ = None if state["anchor"] is None else state["anchor"].to(dev).clone()
        stats = state["anchor_stats"]
        self.anchor_stats_ = None if stats is None else [s.to(dev).clone() for s in stats]
        self.check_idx_ = None if state["check_idx"] is None else state["check_idx"].to(dev).clone()
        self.pool_ = state["pool"].cpu().bool().clone()
        self.class_pool_ = ClassPool(self.labels_cpu_, self.pool_, self.num_classes_)
        if self.records_ is not None and state["records"] is not None:
            self.records_.load_state_dict(state["records"])
        self.pending_ = None
        self.pending_fit_ = None
        self.want_ = "round"
        self.round_step_, self.built_ = int(state["round_step"]), int(state["built"])
        self.coresets_built_ = int(state["coresets_built"])
        self.ahead_ = None
        if state["ahead"] is not None:
            subsets = state["ahead"]["subsets"].to(dev)
            union, inverse = torch.unique(subsets, return_inverse=True)
            U = int(union.shape[0])
            self.ahead_ = _Round(
                subsets, union, inverse, torch.empty(U, self.num_classes_, device=dev),
                torch.full((U,), float("nan"), device=dev), torch.empty(U, dtype=torch.long, device=dev),
                state["ahead"]["check_pos"].to(dev), False,
                torch.empty(U, self.ctx.embedder.feature_dim, device=dev) if self._wants_features() else None,
            )
