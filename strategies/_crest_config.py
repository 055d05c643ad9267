"""CREST's configuration: the parameters, the two presets of the cost structure, and the T1/P rule.

See :class:`~strategies.crest.CrestStrategy` for the method; ``PRESETS["release"]`` reproduces
subsetlab's defaults before the redesign (commit a8db7b0).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from subsetlab.config import StrategyConfig

__all__ = ["PRESETS", "CrestConfig", "next_t1_and_p"]


#: The fields each preset sets when they are not given. ``"default"`` is the cheap faithful
#: path; ``"release"`` the release's cost structure, exactly subsetlab's defaults before the
#: redesign (commit a8db7b0). The release code's own ``||H_0||`` (the first fit, on the
#: untrained network) is ``h0_reference="first", h0_after_epochs=0`` on top of it.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "build": "lazy",
        "check_set": "ahead",
        "check_size": 64,
        "r_fraction": 0.005,
        "fit": "step",
        "h0_reference": "max",
        "h0_after_epochs": 0.0,
        "t1_curvature": "recent",
        "bn_stats": "anchor",
    },
    "release": {
        "build": "eager",
        "check_set": "fixed",
        "check_size": None,
        "r_fraction": 0.01,
        "fit": "coresets",
        "h0_reference": "warmup_end",
        "h0_after_epochs": 1.0,
        "t1_curvature": "smoothed",
        "bn_stats": "current",
    },
}
_D = PRESETS["default"]


class CrestConfig(StrategyConfig):
    """Config of :class:`CrestStrategy`. The paper's hyperparameters (``tau``, ``h``, ``b``,
    ``r``, initial ``T1`` and ``P``, ``alpha``) default to the release's values; ``preset``
    chooses the cost structure (fields it sets are marked "preset")."""

    name: Literal["crest"] = Field("crest", description="Registered name of the strategy.")
    preset: Literal["default", "release"] = Field(
        "default",
        description="Fills the cost-structure fields not given explicitly. 'default': lazy "
        "coresets, checks drawn ahead, g from the training step (the cheap faithful path). "
        "'release': all P coresets selected and fitted up front, checks on the round's union "
        "(the release's structure; subsetlab's defaults before the redesign).",
    )

    # --- mini-batch coresets
    r_fraction: float = Field(
        _D["r_fraction"],
        gt=0.0,
        le=1.0,
        description="(preset) Size r of each random subset as a fraction of N. Floored at "
        "max(B, C) so every subset can yield a full mini-batch and hold every class, and capped "
        "at the pool size. The paper's bias/variance trade-off: a larger r gives a mini-batch "
        "coreset of lower variance and higher bias, and costs r forwards per coreset. "
        "Default 0.005 (r = 270, about 2B, on Fashion-MNIST), measured more accurate and "
        "cheaper than the release's 0.01 on both Fashion-MNIST suites (docs/methods/crest.md).",
    )
    p_init: int = Field(5, ge=1, le=100_000, description="Number P of random subsets before the first T1/P update (release: 5).")
    build: Literal["lazy", "eager"] = Field(
        _D["build"],
        description="(preset) 'lazy': build each mini-batch coreset when the trainer reaches it "
        "(a round that ends after k steps builds k coresets); 'eager': all P at the start of "
        "the round (release).",
    )
    group: int = Field(
        1, ge=1, le=100_000, description="Lazy build: coresets built together (one forward pass, one batched solver call)."
    )
    batch_mode: Literal["coreset", "shuffle"] = Field(
        "coreset",
        description="'coreset': each mini-batch coreset is one training batch (a batch plan); "
        "'shuffle' (release, eager build only): the union of the coresets is shuffled into "
        "batches of B.",
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
    h0_reference: Literal["first", "warmup_end", "max"] = Field(
        _D["h0_reference"],
        description="(preset) Which curvature norm is ||H_0||: 'max', the largest ||H_l|| so far "
        "(T1 grows as the curvature relaxes from its peak; equal to the paper's reference when "
        "the curvature only decreases); 'first', the first eligible fit (release); "
        "'warmup_end', the first eligible fit after the LR warm-up. Eligible: see "
        "h0_after_epochs.",
    )
    h0_after_epochs: float = Field(
        _D["h0_after_epochs"],
        ge=0.0,
        description="(preset) Fits before this many pseudo-epochs cannot set ||H_0|| (T1 and P "
        "keep their initial values until it is set). 0 lets T1 adapt from the first fits.",
    )
    t1_curvature: Literal["recent", "smoothed"] = Field(
        _D["t1_curvature"],
        description="(preset) The ||H_l|| of the T1 rule. 'recent': sqrt of a short EMA (t1_beta) "
        "of the squared norms of the fits' raw estimates, which tracks the current curvature; "
        "'smoothed': the norm of the quadratic model's curvature (beta2 EMA of signed "
        "estimates, whose norm falls as probe noise averages out, so T1 grows with the number "
        "of fits).",
    )
    t1_beta: float = Field(0.9, ge=0.0, lt=1.0, description="EMA decay of t1_curvature='recent' (about 1/(1-beta) fits).")
    max_round_epochs: float | None = Field(
        None,
        gt=0.0,
        description="Lazy build: start a new round after this many pseudo-epochs even when the "
        "quadratic model still holds (None: never, as in the paper, which trains on the round's "
        "coresets for as long as rho <= tau). Forced rounds are counted in the 'forced' series.",
    )
    check_set: Literal["ahead", "fixed", "fresh"] = Field(
        _D["check_set"],
        description="(preset) Where L_true is measured. 'ahead' (lazy build): check_size examples "
        "of the next round's first random subset, drawn at the fit, L0 measured on them there; "
        "the round a check triggers reuses the check's forward pass. 'fixed' (eager): the union "
        "drawn at the last fit (L0 on the same examples). 'fresh' (eager): a new draw of P "
        "subsets per check, reused by the selection it triggers.",
    )
    check_size: int | None = Field(
        _D["check_size"],
        ge=1,
        description="(preset) Examples forwarded per check (None: the whole subset or union). "
        "Paired with L0 on the same examples.",
    )
    bn_stats: Literal["anchor", "current"] = Field(
        _D["bn_stats"],
        description="(preset) Batch-norm running statistics of the checks: 'anchor', those of "
        "the fit, so L0 and L_true differ by the parameter displacement delta alone (what F "
        "models); 'current', the model's statistics at the check. Models without batch norm "
        "are unaffected.",
    )

    # --- quadratic loss model
    fit: Literal["step", "coresets"] = Field(
        _D["fit"],
        description="(preset) How g and diag(H) are fitted. 'step' (lazy build): g is the "
        "gradient of the round's first training step (its batch is the first coreset, at the "
        "fit's parameters; train mode), diag(H) Hutchinson on hvp_rows of that coreset (eval "
        "mode). 'coresets': g and diag(H) by double backprop on fit_batches coresets (eval mode; "
        "lazy build: the coresets built at the round's start).",
    )
    hvp_rows: int | None = Field(
        32,
        ge=1,
        description="fit='step': rows of the first coreset (a seeded random subset) for the "
        "Hutchinson product; None: the whole coreset.",
    )
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
        None, ge=1, description="fit='coresets': mini-batch coresets the fit uses (None: all built)."
    )
    curvature: Literal["all", "head", "last_layer"] = Field(
        "all",
        description="'all': g, delta and diag(H) over every parameter (the paper). 'head' (lazy "
        "build): g and delta over every parameter, diag(H) exact in closed form on the output "
        "layer and 0 elsewhere (no Hessian pass). 'last_layer': g, delta and diag(H) restricted "
        "to the output layer (a variant: L_true still moves with every parameter).",
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

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "default")
        if isinstance(preset, str) and preset in PRESETS:  # anything else fails on the field
            data = {**PRESETS[preset], **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> CrestConfig:
        if self.min_records > self.loss_window:
            raise ValueError(
                f"min_records ({self.min_records}) must not exceed loss_window ({self.loss_window}); "
                f"lower min_records or widen the window"
            )
        if self.t1_max is not None and self.t1_init > self.t1_max:
            raise ValueError(f"t1_init ({self.t1_init}) must not exceed t1_max ({self.t1_max})")
        lazy = self.build == "lazy"
        rules = [
            (lazy and self.check_set != "ahead", f"build='lazy' checks on the next round's subset: use check_set='ahead' (got {self.check_set!r}), or build='eager'"),
            (not lazy and self.check_set == "ahead", "check_set='ahead' needs build='lazy'; use check_set='fixed' or 'fresh' with build='eager'"),
            (lazy and self.batch_mode != "coreset", "batch_mode='shuffle' mixes all P coresets and needs build='eager'"),
            (not lazy and self.fit == "step", "fit='step' takes g from the round's first training step and needs build='lazy'; use fit='coresets' with build='eager'"),
            (not lazy and self.curvature == "head", "curvature='head' needs build='lazy'; use curvature='all' or 'last_layer' with build='eager'"),
            (not lazy and self.max_round_epochs is not None, "max_round_epochs needs build='lazy'"),
        ]
        for bad, why in rules:
            if bad:
                raise ValueError(why)
        return self


def next_t1_and_p(h0_norm: float, h_norm: float, h: float, b: int, steps_per_epoch: int, t1_max: int) -> tuple[int, int]:
    """The T1 and P rule: ``T1 = ceil(h ||H_0|| / ||H_l||)`` in ``[1, t1_max]``, ``P = min(b T1, S)`` >= 1.

    A zero or non-finite ``||H_l||`` gives ``T1 = t1_max``.
    """
    ratio = h * h0_norm / h_norm if h_norm > 0 and math.isfinite(h_norm) else math.inf
    t1 = t1_max if not math.isfinite(ratio) else min(t1_max, max(1, math.ceil(ratio - 1e-9)))
    p = max(1, min(b * t1, int(steps_per_epoch)))
    return int(t1), int(p)
