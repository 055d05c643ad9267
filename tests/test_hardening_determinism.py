"""Same spec and seed, separate fresh processes: identical selections, weights and metrics.

For every built-in strategy (those registered by the ``subsetlab`` distribution), a child
process builds the run from its spec (data split, model, strategy), wraps the strategy's
``select`` to hash every Selection it returns (indices, weights and batch plan, SHA-256), trains
on CPU and prints the hashes, the final metrics and a hash of the final weights. Two children
with different ``PYTHONHASHSEED`` values (so a salted ``hash()`` anywhere would show) must
print the same thing; a different seed must change the selections of stochastic strategies,
which shows the hashes do see the selections.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from subsetlab import registry

pytestmark = pytest.mark.timeout(240)

BUILTINS = sorted(i.name for i in registry.info() if i.distribution == "subsetlab")

CHILD = r"""
import hashlib, json, sys, warnings
import torch
warnings.simplefilter("ignore")
torch.set_num_threads(1)
from subsetlab.api import build_run
from subsetlab.trainer import Trainer

def digest(sel):
    h = hashlib.sha256()
    h.update(sel.indices.detach().cpu().to(torch.int64).numpy().tobytes())
    h.update(sel.weights.detach().cpu().to(torch.float32).numpy().tobytes())
    for b in sel.batches or []:
        h.update(b"|" + torch.as_tensor(b).cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]

EXTRA = {"crest": {"tau": 1e-4}}  # re-select at almost every rho check: several rounds to compare

def cfg_fields(name):
    from subsetlab import registry
    return registry.get(name).Config.model_fields

out = {}
for name in json.loads(sys.argv[1]):
    for seed in json.loads(sys.argv[2]):
        spec = {
            "data": {"name": "synthetic", "options": {"n": 300, "n_test": 80, "dim": 8, "classes": 4}},
            "model": {"name": "mlp", "options": {"hidden": [16]}},
            "trainer": {"epochs": 4, "fraction": 0.2, "batch_size": 16, "lr": 0.05, "device": "cpu"},
            "strategy": {"name": name, **EXTRA.get(name, {}), **({"select_every": 1} if "select_every" in cfg_fields(name) else {})},
            "seed": seed,
        }
        spec, strategy, model, data = build_run(spec)
        hashes, inner = [], strategy.select
        def select(state, inner=inner, hashes=hashes):
            sel = inner(state)
            hashes.append([state.step, digest(sel)])
            return sel
        strategy.select = select
        result = Trainer(spec.trainer).fit(strategy, model, data, spec.seed, run_key=spec.key)
        params = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()[:16]
        out[f"{name}/{seed}"] = {
            "status": result.status, "error": result.error, "selections": hashes,
            "metrics": result.metrics, "history": [[h["test_acc"], h["test_loss"], h["train_loss"]] for h in result.history],
            "params": params, "work": result.work, "key": spec.key,
        }
print("RESULT " + json.dumps(out, sort_keys=True))
"""


def _child(names: list[str], seeds: list[int], hashseed: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hashseed, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(names), json.dumps(seeds)],
        env=env, capture_output=True, text=True, timeout=200, check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_every_builtin_strategy_is_deterministic_across_fresh_processes(capsys):
    assert {"random", "craig", "gradmatch", "glister", "crest", "full", "sgd-truncated"} <= set(BUILTINS)
    first = _child(BUILTINS, [0, 1], hashseed="1")
    second = _child(BUILTINS, [0], hashseed="2")
    compared = 0
    per: dict[str, int] = {}
    for name in BUILTINS:
        a, b = first[f"{name}/0"], second[f"{name}/0"]
        assert a["status"] == "ok", (name, a["error"])
        assert a["selections"], f"{name} made no selection"
        assert a["selections"] == b["selections"], f"{name}: selections differ between processes"
        assert a["metrics"] == b["metrics"] and a["history"] == b["history"], f"{name}: metrics differ"
        assert a["params"] == b["params"] and a["work"] == b["work"], f"{name}: final weights differ"
        assert a["key"] == b["key"]
        compared += len(a["selections"])
        per[name] = len(a["selections"])
        if "select_every" in registry.get(name).Config.model_fields:
            assert len(a["selections"]) == 4  # re-selected every pseudo-epoch
        if registry.get(name).capabilities.stochastic:  # the hashes do see the selections
            assert first[f"{name}/1"]["selections"] != a["selections"], f"{name}: seed 1 selected as seed 0"
    with capsys.disabled():
        print(f"\n[hardening] determinism: {len(BUILTINS)} built-in strategies, {compared} selections hashed ({per}), identical in 2 fresh processes")
