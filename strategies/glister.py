"""Glister: greedy subset that most reduces the validation loss after one step on it.

Killamsetty et al., "GLISTER: Generalization based Data Subset Selection for Efficient and
Robust Learning", AAAI 2021 (GLISTER-ONLINE); a baseline of the CREST paper, with CORDS'
defaults unless noted.

**Objective.** Choose ``S``, ``|S| = k``, to minimise the validation loss after one SGD step
with step size ``eta`` on the *summed* training loss of ``S`` (the paper's and CORDS'
convention). Only the last linear layer ``z = W h + b`` is stepped; all gradients are the
closed-form last-layer gradients (``g = softmax(z) - onehot(y)`` per example).

**Gain (first-order Taylor).** With the validation loss ``L_V = mean_v CE(z_v, y_v)`` and
``r_v = (softmax(z_v) - onehot(y_v)) / n_val``, its gradients are ``g_val = sum_v r_v``
(bias) and ``G_val = sum_v r_v h_v^T`` (weight). A step on example i changes the parameters by
``-eta (g_i, g_i h_i^T)``, so ``L_V`` drops by ``eta * gain_i`` to first order, with::

    gain_i = g_i . g_val + g_i^T G_val h_i      (embedding="bias_weight")
    gain_i = g_i . g_val                        (embedding="bias": only the bias is stepped)

Using the mean rather than the sum of the validation loss scales every gain by the same
``1/n_val`` and changes no choice.

**Update after a pick (no new forward pass).** Adding j to S moves every validation logit as
the step on j would::

    z_v <- z_v - eta * g_j * (h_j . h_v + 1)     (bias_weight: weight part + bias part)
    z_v <- z_v - eta * g_j                       (bias)

because ``(W - eta g_j h_j^T) h_v + (b - eta g_j) = z_v - eta g_j (h_j . h_v) - eta g_j``.
``g_val`` and ``G_val`` are then recomputed from the new logits. The logits after the greedy
equal those of the model after one real step on ``S`` (tested with autograd). Each pick costs
``O(n_val * C)`` for the bias form, plus ``O(n_val * (C + D) + n_val * C * D)`` for the weight
form, plus the gains of the evaluated candidates (``O(C)`` or ``O(C * D)`` each).

**Optimizers.** ``stochastic`` (default; epsilon 0.01: each pick evaluates
``ceil(n / k * ln(1 / epsilon))`` random remaining candidates, as CORDS; drawn with
replacement from ``ctx.generator``, duplicates dropped), ``naive`` (all
remaining candidates every pick) and ``r_round`` (CORDS' "RGreedy": ``rounds`` rounds, each
taking the top gains of its share of ``k`` at once, then one update).

**Class balance.** Whole-set Glister picked heavily class-imbalanced subsets in CORDS (and lost
5.6 points to random on Fashion-MNIST). ``per_class=True`` (default) keeps the whole
validation loss as the objective but gives each class a quota proportional to its size
(summing exactly to k): a class leaves the candidate pool once its quota is filled.
``per_class=False`` is the original whole-set greedy.

**The look-ahead step** (``virtual_step``). The paper and CORDS step on the *summed* loss of
``S`` with the current learning rate ``eta`` (``"sum"``, the default): each pick moves the
validation logits by a full step, so after thousands of picks the look-ahead can lie far past
the minimum (on Fashion-MNIST, bias + weight step, the look-ahead validation loss rose from
0.65 to ~47). Three well-posed forms take a step of trainer scale instead:

* ``"mean"``: step ``eta / k`` per pick (``k`` the budget): the look-ahead after the whole
  greedy is one step of ``eta`` on the mean loss of the chosen set; after ``t`` picks, ``t / k``
  of that step.
* ``"running_mean"``: after ``t`` picks the look-ahead is one full step of ``eta`` on the mean
  loss of the ``t`` rows chosen so far (``z = z0 - eta / t * sum_j dz_j``), so every stage of
  the greedy maximises the same objective ``L_V(theta - eta * mean-gradient(S))``. Moving from
  ``S`` to ``S + i`` changes the look-ahead by ``eta / (t+1) * (dz_i - mean_S dz)``, whose
  first-order gain is ``g_i . g_val`` minus a term that does not depend on ``i``, so the greedy
  still picks the largest Taylor gain at the current look-ahead (tested against autograd).
* ``"epoch"``: step ``eta / B`` per pick: the linearised look-ahead of one pseudo-epoch of plain
  SGD on the chosen set (``k / B`` steps of ``eta`` on batch-mean losses, every row once).

``"sum"`` stays the default because it measured best: on the Fashion-MNIST LeNet protocol
(3 seeds, R = 2) it reached 86.7% against 79.1-81.2% for the three others. With a small look-ahead
step the logits hardly move during the greedy, so it ranks the candidates by their alignment
with the validation gradient, which favours high-loss examples; the validation loss measured at
the later selections averaged 1.1-1.2 (0.6-1.9), against 0.44 (0.33-0.57) with ``"sum"``, whose
large step keeps changing ``g_val`` and so spreads the picks. Details and commands: docs/methods/glister.md. All weights
are 1.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from strategies._common import (
    FREQUENT_SELECT_EVERY_FRACTION,
    GREEDI_NOTE,
    BaselineConfig,
    BaselineStrategy,
    as_float,
    class_budgets,
    embed,
    greedi_round,
    shard_rows,
    val_rows,
)
from strategies._glister_greedy import GlisterResult, glister_greedy, step_logits, taylor_gains, validation_gradient
from subsetlab.embeddings import Embeddings
from subsetlab.protocol import Capabilities, Selection, TrainState

__all__ = [
    "GlisterConfig",
    "GlisterStrategy",
    "GlisterResult",
    "glister_greedy",
    "glister_selection",
    "virtual_step_size",
    "validation_gradient",
    "taylor_gains",
    "step_logits",
]


class GlisterConfig(BaselineConfig):
    """Config of :class:`GlisterStrategy` (CORDS defaults unless noted)."""

    name: Literal["glister"] = Field("glister", description="Registered name of the strategy.")
    optimizer: Literal["stochastic", "naive", "r_round"] = Field(
        "stochastic",
        description="Greedy: 'stochastic' (samples ceil(n/k * ln(1/epsilon)) candidates per "
        "pick), 'naive' (all candidates per pick) or 'r_round' (CORDS' RGreedy: `rounds` rounds "
        "of top gains).",
    )
    epsilon: float = Field(0.01, gt=0.0, lt=1.0, description="Accuracy parameter of the stochastic greedy.")
    rounds: int = Field(15, ge=1, le=1_000_000, description="Rounds r of 'r_round' (CORDS 15).")
    embedding: Literal["bias", "bias_weight"] = Field(
        "bias",
        description="Step only the last layer's bias ('bias': C-dim gradients, CORDS' default) or "
        "its bias and weight ('bias_weight').",
    )
    virtual_step: Literal["sum", "mean", "running_mean", "epoch"] = Field(
        "sum",
        description="The one-step look-ahead of the greedy: 'sum' (paper, CORDS) steps the "
        "current learning rate on the summed loss of the chosen set; 'mean' steps lr/k per pick "
        "(one step on the set's mean loss); 'running_mean' keeps the look-ahead at one step of "
        "lr on the mean loss of the rows chosen so far; 'epoch' steps lr/B per pick (one "
        "pseudo-epoch of plain SGD on the set, k/B steps on batch-mean losses). 'sum' is the "
        "default because it measured best (Fashion-MNIST LeNet, 3 seeds, R = 2: 86.7% vs "
        "79.1-81.2%).",
    )
    per_class: bool = Field(
        True,
        description="Class-proportional quotas summing to the budget (a class leaves the pool "
        "when its quota is full); the objective stays the whole validation loss. False: the "
        "original whole-set greedy (class-imbalanced subsets in CORDS).",
    )


    def default_select_every_fraction(self) -> float:
        """0.05: about 20 selections per run (R = 1 for 20 epochs, 10 for 200).

        Measured on the Fashion-MNIST LeNet protocol (3 seeds): 87.93 ± 0.28% with R = 1
        against 86.68 ± 1.13% with R = 2 (docs/methods/glister.md), at about twice the
        selection time.
        """
        return FREQUENT_SELECT_EVERY_FRACTION


def virtual_step_size(virtual_step: str, lr: float, k: int, batch_size: int | None = None) -> float:
    """The look-ahead's step size per pick for ``virtual_step`` at learning rate ``lr``.

    ``"sum"`` and ``"running_mean"``: ``lr`` (the latter averages over the picks itself);
    ``"mean"``: ``lr / k``; ``"epoch"``: ``lr / batch_size`` (``batch_size`` defaults to ``k``:
    one batch).
    """
    if virtual_step == "mean":
        return lr / max(1, int(k))
    if virtual_step == "epoch":
        return lr / max(1, int(batch_size if batch_size is not None else k))
    return lr


def _greedy_on(
    emb_g: torch.Tensor,
    emb_h: torch.Tensor | None,
    labels: torch.Tensor,
    val: Embeddings,
    k: int,
    eta: float,
    config: GlisterConfig,
    generator: torch.Generator,
    quotas: torch.Tensor | None,
) -> GlisterResult:
    weight = config.embedding == "bias_weight"
    return glister_greedy(
        as_float(emb_g),
        as_float(val.logits),
        val.labels,
        k,
        eta,
        h=as_float(emb_h) if weight else None,
        h_val=as_float(val.features) if weight else None,
        optimizer=config.optimizer,
        epsilon=config.epsilon,
        rounds=config.rounds,
        generator=generator,
        labels=labels,
        quotas=quotas,
        running=config.virtual_step == "running_mean",
    )


def glister_selection(
    emb: Embeddings,
    val: Embeddings,
    k: int,
    eta: float,
    config: GlisterConfig,
    generator: torch.Generator,
    batch_size: int | None = None,
) -> Selection:
    """One Glister selection from precomputed training and validation embeddings.

    Args:
        emb: Training bias gradients, labels, dataset indices (and features for
            ``bias_weight``).
        val: Validation embeddings with ``logits`` (and features for ``bias_weight``).
        k: Budget.
        eta: The current learning rate; the look-ahead's step per pick is
            :func:`virtual_step_size` of it.
        config: The strategy's config.
        generator: Source of randomness (stochastic greedy).
        batch_size: Rows per training step B (``virtual_step="epoch"``; default k).

    Returns:
        A :class:`Selection` of weight-1 examples, with diagnostics ``val_loss``,
        ``val_loss_after`` (after the virtual step), ``eta`` (the virtual step size per pick),
        ``class_counts``, ``budgets``.
    """
    num_classes = emb.grads.shape[1]
    quotas = class_budgets(emb.labels, num_classes, k) if config.per_class else None
    eta = virtual_step_size(config.virtual_step, eta, min(k, emb.grads.shape[0]), batch_size)
    res = _greedy_on(emb.grads, emb.features, emb.labels, val, k, eta, config, generator, quotas)
    counts = torch.bincount(emb.labels[res.ranking], minlength=num_classes)
    diagnostics = {
        "val_loss": res.val_loss,
        "val_loss_after": res.val_loss_after,
        "eta": float(eta),
        "class_counts": counts.tolist(),
    }
    if quotas is not None:
        diagnostics["budgets"] = quotas.tolist()
    return Selection.uniform(emb.indices[res.ranking].cpu(), **diagnostics)


class GlisterStrategy(BaselineStrategy):
    """Glister: greedy Taylor-gain selection against the validation loss, all weights 1.

    Needs a validation split. Re-selects every R pseudo-epochs (``select_every``, or by
    default a twentieth of the run; after an optional full-data ``warm_start``). Under torchrun
    the selection is GreeDi's (:meth:`_select_greedi`). See :mod:`strategies.glister`.
    """

    name = "glister"
    Config = GlisterConfig
    capabilities = Capabilities(
        needs_validation=True,
        supports_distributed=True,
        distributed_note="Glister's greedy runs per shard of the training set against the whole "
        "validation loss (the ranks embed a share of the validation set each and gather it). "
        + GREEDI_NOTE
        + "; the merge is the same greedy over the candidates, and the shard solution with the "
        "lowest look-ahead validation loss wins if it beats the merge.",
        stochastic=True,
    )

    def select_subset(self, state: TrainState) -> Selection:
        """Embed the training and validation sets, then :func:`glister_selection` with
        ``eta = state.lr`` (GreeDi across ranks)."""
        ctx, cfg = self.ctx, self.config
        if self.distributed:
            return self._select_greedi(state)
        weight = cfg.embedding == "bias_weight"
        emb = embed(ctx, kind="bias", features=weight, who=self.name)
        val = embed(ctx, "val", kind="bias", features=weight, logits=True, who=self.name)
        with ctx.meters.timer("selection"):
            return glister_selection(emb, val, ctx.budget.subset_size, state.lr, cfg, ctx.generator, self.plan_batch_size())

    def _gather_val(self, weight: bool, dev: torch.device) -> Embeddings:
        """This rank's share of the validation embeddings (every ``W``-th example), gathered
        from all ranks onto ``dev``: the whole validation set, for every rank's greedy."""
        from subsetlab.distributed import all_gather_object

        ctx = self.ctx
        part = embed(ctx, "val", kind="bias", features=weight, logits=True, who=self.name, indices=val_rows(ctx))
        shares = all_gather_object(
            ctx.dist, {"logits": part.logits.cpu(), "labels": part.labels.cpu(),
                       "features": part.features.cpu() if weight else None}
        )
        return Embeddings(
            grads=torch.zeros(0), losses=torch.zeros(0), preds=torch.zeros(0, dtype=torch.long),
            labels=torch.cat([p["labels"] for p in shares]).to(dev),
            indices=torch.zeros(0, dtype=torch.long),
            features=torch.cat([p["features"] for p in shares]).to(dev) if weight else None,
            logits=torch.cat([p["logits"] for p in shares]).to(dev),
        )

    def _select_greedi(self, state: TrainState) -> Selection:
        """GreeDi: the greedy on this rank's shard, then over the union of the ranks' picks.

        Each rank embeds its shard of the training set and every ``W``-th validation example;
        the validation embeddings are gathered, so every greedy measures the whole validation
        loss. A shard's greedy keeps ``min(q_c, n_{c,r})`` of each class (``q_c`` the class's
        quota; the union therefore holds at least ``q_c`` of every class). Rank 0 runs the
        greedy over the union with the quotas of the whole set, then keeps whichever of the
        merged and the (complete) shard solutions has the lowest look-ahead validation loss,
        the objective every one of them was measured with.
        """
        from subsetlab.greedi import agree, gather_candidates, local_budget, merge_bytes

        ctx, cfg = self.ctx, self.config
        dv, k = ctx.dist, ctx.budget.subset_size
        weight = cfg.embedding == "bias_weight"
        rnd = greedi_round(ctx, self.name, state.step)
        emb = embed(ctx, kind="bias", features=weight, who=self.name, indices=shard_rows(ctx, rnd.shard))
        dev = emb.grads.device
        val = self._gather_val(weight, dev)
        with ctx.meters.timer("selection"):
            labels_all = ctx.train.labels.cpu()
            num_classes = emb.grads.shape[1]
            n_local = len(emb)
            m = min(k, ctx.budget.n)
            eta = virtual_step_size(cfg.virtual_step, state.lr, m, self.plan_batch_size())
            lab = emb.labels.cpu()
            if cfg.per_class:
                quotas = class_budgets(labels_all, num_classes, k)
                have = torch.bincount(lab, minlength=num_classes)
                local_q = torch.tensor(
                    [local_budget(int(q), int(n_c), dv.world_size, cfg.greedi_oversample) for q, n_c in zip(quotas, have)],
                    dtype=torch.long,
                )
                k_loc = int(local_q.sum())
            else:
                quotas = local_q = None
                k_loc = local_budget(m, n_local, dv.world_size, cfg.greedi_oversample)
            if k_loc > 0:
                loc = _greedy_on(emb.grads, emb.features, emb.labels, val, k_loc, eta, cfg, rnd.local, local_q)
                picks, loss_after = loc.ranking, loc.val_loss_after
            else:
                picks, loss_after = torch.zeros(0, dtype=torch.long, device=dev), float("inf")
            dim = emb.grads.shape[1] + (emb.features.shape[1] if weight else 0)
            payload = {
                "g": emb.grads[picks].cpu(), "h": emb.features[picks].cpu() if weight else None,
                "labels": lab[picks.cpu()], "ids": emb.indices[picks].cpu(), "loss_after": float(loss_after),
            }
            parts, counts = gather_candidates(
                dv, payload, int(picks.numel()), lambda t: merge_bytes(t, dim, emb.grads.element_size()),
                cfg.greedi_max_bytes, self.name,
            )
            out = None
            if dv.rank == 0:
                g = torch.cat([p["g"] for p in parts]).to(dev)
                h = torch.cat([p["h"] for p in parts]).to(dev) if weight else None
                labels = torch.cat([p["labels"] for p in parts]).to(dev)
                ids = torch.cat([p["ids"] for p in parts])
                # with balanced shards the union holds at least each quota (local_budget); the
                # clamp only guards unbalanced shards
                merge_q = None if quotas is None else torch.minimum(quotas, torch.bincount(labels.cpu(), minlength=num_classes))
                res = _greedy_on(g, h, labels, val, min(m, labels.numel()), eta, cfg, rnd.merge, merge_q)
                options = [(res.val_loss_after, 0, ids[res.ranking.cpu()])]
                for r, p in enumerate(parts):
                    full = (
                        torch.equal(torch.bincount(p["labels"], minlength=num_classes), quotas)
                        if quotas is not None else p["ids"].numel() == m
                    )
                    if full:
                        options.append((p["loss_after"], r + 1, p["ids"]))
                best = min(options, key=lambda o: (o[0], o[1]))
                out = {
                    "ids": best[2], "val_loss": res.val_loss, "val_loss_after": best[0],
                    "merge_val_loss_after": res.val_loss_after,
                    "source": "merge" if best[1] == 0 else f"rank {best[1] - 1}",
                }
            out = agree(dv, out)
        ids = out["ids"]
        counts_c = torch.bincount(labels_all[ids], minlength=num_classes)
        diagnostics = {
            "val_loss": out["val_loss"], "val_loss_after": out["val_loss_after"], "eta": float(eta),
            "class_counts": counts_c.tolist(),
            "greedi": {
                "world_size": dv.world_size, "candidates": int(sum(counts)),
                "merge_val_loss_after": out["merge_val_loss_after"], "source": out["source"],
            },
        }
        if quotas is not None:
            diagnostics["budgets"] = quotas.tolist()
        return Selection.uniform(ids, **diagnostics)
