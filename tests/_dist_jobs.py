"""Functions run on every rank by the distributed tests (importable by spawned processes)."""

from __future__ import annotations

from typing import Any

import torch

from subsetlab.api import build_run
from subsetlab.protocol import Budget, DistView, TrainState
from subsetlab.testing import TinyProblem, make_context, tiny_model, tiny_problem
from subsetlab.trainer import Trainer

CREST_PROBLEM = TinyProblem(n_train=600, n_val=60, n_test=60, dim=8, classes=4)


def flat(model: torch.nn.Module) -> torch.Tensor:
    """The model's parameters as one vector."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def fit_job(dv: DistView, spec: dict[str, Any], stop_after: int | None = None, ckpt: str | None = None) -> dict[str, Any]:
    """Train ``spec`` (optionally interrupted at ``stop_after`` then resumed from ``ckpt``)."""
    spec, strategy, model, data = build_run(spec)
    out: dict[str, Any] = {"rank": dv.rank}
    if stop_after is not None:
        Trainer(spec.trainer, checkpoint_path=ckpt, dist=dv).fit(
            strategy, model, data, spec.seed, run_key=spec.key, stop_after_steps=stop_after
        )
        spec, strategy, model, data = build_run(spec)  # a fresh process would start from scratch
    res = Trainer(spec.trainer, checkpoint_path=ckpt, dist=dv).fit(strategy, model, data, spec.seed, run_key=spec.key)
    out["result"] = res.to_dict()
    out["params"] = flat(model)
    out["T1"] = getattr(strategy, "T1_", None)
    out["P"] = getattr(strategy, "P_", None)
    out["pool"] = getattr(strategy, "pool_", None)
    return out


def crest_select_job(
    dv: DistView, batch_size: int, p_init: int, seed: int = 0, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One CREST selection round on the tiny problem; this rank's coresets."""
    from strategies.crest import CrestStrategy

    data = tiny_problem(seed, CREST_PROBLEM)
    model = tiny_model(seed, CREST_PROBLEM)
    budget = Budget.make(len(data.train), 0.2, batch_size, 4)
    strategy = CrestStrategy(r_fraction=0.1, p_init=p_init, **(config or {}))
    strategy.setup(make_context(data, model, budget, seed, dv))
    sel = strategy.select(TrainState(0, 0, budget.steps_per_epoch, budget.total_steps, 0.1, model, 0))
    m = strategy.ctx.batch_size
    return {
        "indices": sel.indices.view(-1, m),
        "weights": sel.weights.view(-1, m),
        "rank_local": sel.rank_local,
        "P": strategy.P_,
        "grad_ema": strategy.quad_.m.clone(),
        "hess_ema": strategy.quad_.v.clone(),
    }


def fail_on_rank_one(dv: DistView) -> None:
    """Raise on rank 1 only."""
    if dv.rank == 1:
        raise ValueError("boom on rank 1")
    dv.barrier()  # rank 0 waits for a partner that never comes


def deadlock(dv: DistView) -> None:
    """Rank 0 waits in a collective rank 1 never joins."""
    import time

    if dv.rank == 0:
        dv.all_reduce(torch.ones(1), "sum")
    else:
        time.sleep(3600)


def collectives_job(dv: DistView) -> dict[str, Any]:
    """Each collective once, with rank-dependent inputs."""
    from subsetlab.distributed import all_gather_cat, broadcast_object

    t = torch.tensor([float(dv.rank), float(dv.rank + 1)])
    rows = torch.tensor([0]) if dv.rank == 0 else torch.tensor([10, 11])
    obj = broadcast_object(dv, {"from": dv.rank, "rows": [1, 2]} if dv.rank == 0 else None)
    return {
        "sum": dv.all_reduce(t, "sum").tolist(),
        "max": dv.all_reduce(t, "max").tolist(),
        "mean": dv.all_reduce(t, "mean").tolist(),
        "gather": all_gather_cat(dv, rows).tolist(),
        "object": obj,
    }


def suite_job(dv: DistView, suite: dict[str, Any], results: str) -> dict[str, Any]:
    """Run a suite on every rank with a strategy that fails mid-run on rank 1 only."""
    from subsetlab import registry
    from subsetlab.bench.runner import run_suite
    from subsetlab.bench.suite import Suite
    from subsetlab.config import StrategyConfig
    from subsetlab.protocol import Capabilities, Selection, SelectionStrategy

    class RankBoomConfig(StrategyConfig):
        name: str = "test-rank-boom"

    class RankBoom(SelectionStrategy):
        """Random-like; its second selection raises on rank 1 only, mid-run."""

        name = "test-rank-boom"
        Config = RankBoomConfig
        capabilities = Capabilities(supports_distributed=True, stochastic=True)

        def should_select(self, state: TrainState) -> bool:
            return state.epoch_start

        def select(self, state: TrainState) -> Selection:
            if state.step > 0 and self.ctx.dist.rank == 1:
                raise RuntimeError("boom on rank 1 only")
            k = self.ctx.budget.subset_size
            return Selection.uniform(torch.randperm(self.ctx.budget.n, generator=self.ctx.generator)[:k])

    registry.register(RankBoom)
    out = run_suite(Suite.from_dict(suite), results, progress="none", dist=dv)
    return {"statuses": out.statuses, "ran": out.ran}


def greedi_select_job(dv: DistView, configs: list[dict[str, Any]], seed: int = 0, batch_size: int = 32) -> list[dict[str, Any]]:
    """One selection of each epoch-wise baseline config (CRAIG, GradMatch, Glister) on the tiny
    problem: this rank's selection and the work it did."""
    from subsetlab import registry

    data = tiny_problem(seed, CREST_PROBLEM)
    model = tiny_model(seed, CREST_PROBLEM)
    out = []
    for config in configs:
        strategy = registry.create(registry.make_config(config))
        budget = Budget.make(len(data.train), 0.2, batch_size, 4)
        ctx = make_context(data, model, budget, seed, dv)
        strategy.setup(ctx)
        sel = strategy.select(TrainState(0, 0, budget.steps_per_epoch, budget.total_steps, 0.1, model, 0))
        checked = sel.validate(len(data.train), strategy.name, batch_size=min(batch_size, budget.subset_size))
        out.append({
            "indices": checked.indices,
            "weights": checked.weights,
            "batches": None if checked.batches is None else torch.stack(checked.batches),
            "rank_local": checked.rank_local,
            "forward": ctx.meters.forward_examples,
            "diagnostics": {k: v for k, v in checked.diagnostics.items() if k in ("greedi", "random_fill", "source")},
            "generator": ctx.generator.get_state(),
        })
    return out
