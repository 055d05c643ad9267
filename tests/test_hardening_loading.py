"""Safe loading: nothing subsetlab reads from disk can run code.

* An audit of the source: every ``torch.load`` passes ``weights_only=True``; ``pickle`` is only
  used through the restricted :class:`~subsetlab.data.safe_pickle.SafeUnpickler`; no
  ``numpy.load(allow_pickle=True)``, ``eval`` or ``exec``.
* A crafted checkpoint whose ``__reduce__`` would create a marker file is refused by the
  trainer's resume path (``Trainer.fit``, ``run_spec``, in this process and in a fresh one)
  with a :class:`~subsetlab.errors.CheckpointError`; the marker never appears. The decision:
  refuse loudly rather than ignore, so a tampered file is noticed; ``resume=False`` skips it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from subsetlab import registry
from subsetlab.api import run_spec
from subsetlab.errors import CheckpointError, DataError
from subsetlab.testing import tiny_model, tiny_problem, tiny_trainer_config
from subsetlab.trainer import CHECKPOINT_FORMAT, Trainer

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("subsetlab", "strategies") for p in (ROOT / d).rglob("*.py"))


# ---------------------------------------------------------------------- the audit
def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def audit(path: Path) -> list[str]:
    """Unsafe deserialisation calls in one source file, as ``file:line: what``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems = []
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = _dotted(node.func)
            where = f"{rel}:{node.lineno}"
            if fn.endswith("torch.load"):
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if fn in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "dill.load", "joblib.load", "marshal.loads", "shelve.open"):
                problems.append(f"{where}: {fn}")
            if fn.endswith(("np.load", "numpy.load")):
                ap = _kw(node, "allow_pickle")
                if isinstance(ap, ast.Constant) and ap.value is True:
                    problems.append(f"{where}: numpy.load(allow_pickle=True)")
            if fn in ("eval", "exec", "yaml.load", "yaml.unsafe_load"):
                problems.append(f"{where}: {fn}")
        if isinstance(node, ast.ClassDef):  # only the restricted unpickler may subclass Unpickler
            for base in node.bases:
                if _dotted(base).endswith("Unpickler") and node.name != "SafeUnpickler":
                    problems.append(f"{rel}:{node.lineno}: unrestricted Unpickler subclass {node.name}")
    return problems


def test_source_audit_finds_no_unsafe_loading():
    assert len(SOURCES) > 30
    problems = [p for path in SOURCES for p in audit(path)]
    assert problems == [], "\n".join(problems)


def test_the_audit_catches_unsafe_calls(tmp_path):
    """The audit is not vacuous: it flags each unsafe form."""
    bad = tmp_path / "probe.py"
    bad.write_text(
        "import pickle, torch, numpy as np\n"
        "torch.load('x')\n"
        "torch.load('x', weights_only=False)\n"
        "pickle.loads(b'')\n"
        "np.load('x', allow_pickle=True)\n"
        "class U(pickle.Unpickler): pass\n"
        "torch.load('x', weights_only=True)\n"
    )
    got = audit(bad)
    assert len(got) == 5, got
    assert any("unrestricted Unpickler" in g for g in got) and any("allow_pickle" in g for g in got)


def test_the_only_torch_loads_are_weights_only():
    hits = [(p, n.lineno) for p in SOURCES for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Call) and _dotted(n.func) == "torch.load"]
    assert hits, "expected the trainer's resume path"
    assert any(p.name == "checkpoint.py" for p, _ in hits)  # the trainer's resume path (subsetlab/checkpoint.py)


# ---------------------------------------------------------------------- crafted checkpoints
class Evil:
    """Pickles to a call of ``open(marker, "w")``: loading it unsafely creates the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_checkpoint(path: Path, marker: Path, run_key: str = "r", where: str = "model") -> None:
    payload = {"format": CHECKPOINT_FORMAT, "run_key": run_key, "step": 1, "model": {}, "strategy": {}}
    payload[where] = Evil(marker)
    torch.save(payload, path)


def test_the_crafted_checkpoint_really_runs_code_when_loaded_unsafely(tmp_path):
    """Control: without weights_only the file does execute its payload."""
    path, marker = tmp_path / "evil.pt", tmp_path / "PWNED"
    _evil_checkpoint(path, marker)
    got = torch.load(path, weights_only=False)
    got["model"].close()
    assert marker.exists()


@pytest.mark.parametrize("where", ["model", "strategy", "generators"])
def test_trainer_refuses_a_crafted_checkpoint_without_running_it(tmp_path, where):
    path, marker = tmp_path / "ckpt.pt", tmp_path / "PWNED"
    _evil_checkpoint(path, marker, where=where)
    trainer = Trainer(tiny_trainer_config(checkpoint_every=1), checkpoint_path=path)
    with pytest.raises(CheckpointError) as exc:
        trainer.fit(registry.create("random"), tiny_model(0), tiny_problem(0), 0, run_key="r")
    msg = str(exc.value)
    assert str(path) in msg and "weights_only=True" in msg and "Delete it" in msg
    assert not marker.exists(), "the checkpoint's payload ran"
    assert isinstance(exc.value, ValueError)


def test_resume_false_never_opens_the_checkpoint(tmp_path):
    path, marker = tmp_path / "ckpt.pt", tmp_path / "PWNED"
    _evil_checkpoint(path, marker)
    result = Trainer(tiny_trainer_config(), checkpoint_path=path).fit(
        registry.create("random"), tiny_model(0), tiny_problem(0), 0, run_key="r", resume=False
    )
    assert result.ok and not marker.exists()


SPEC = {
    "data": {"name": "synthetic", "options": {"n": 120, "n_test": 40, "dim": 5, "classes": 3}},
    "model": {"name": "mlp", "options": {"hidden": [8]}},
    "trainer": {"epochs": 2, "batch_size": 16, "device": "cpu", "checkpoint_every": 1},
    "strategy": {"name": "random"},
}


def test_run_spec_refuses_a_crafted_checkpoint(tmp_path):
    from subsetlab.config import RunSpec

    path, marker = tmp_path / "ckpt.pt", tmp_path / "PWNED"
    _evil_checkpoint(path, marker, run_key=RunSpec.model_validate(SPEC).key)
    with pytest.raises(CheckpointError, match="Refused to resume"):
        run_spec(SPEC, checkpoint_path=path)
    assert not marker.exists()


FRESH = """
import sys
from subsetlab.api import run_spec
from subsetlab.errors import CheckpointError
try:
    run_spec({spec!r}, checkpoint_path={path!r})
except CheckpointError as exc:
    print("REFUSED", exc)
    sys.exit(0)
print("LOADED")
sys.exit(1)
"""


def test_a_fresh_process_refuses_a_crafted_checkpoint(tmp_path):
    from subsetlab.config import RunSpec

    path, marker = tmp_path / "ckpt.pt", tmp_path / "PWNED"
    _evil_checkpoint(path, marker, run_key=RunSpec.model_validate(SPEC).key)
    out = subprocess.run([sys.executable, "-c", FRESH.format(spec=SPEC, path=str(path))], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "REFUSED" in out.stdout, out.stdout + out.stderr
    assert not marker.exists()


def test_foreign_objects_and_corrupt_files_are_refused_too(tmp_path):
    """Not malicious but not tensors (a NumPy array in a strategy's state), or cut short."""
    path = tmp_path / "ckpt.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "run_key": "r", "strategy": {"state": np.arange(3)}}, path)
    trainer = Trainer(tiny_trainer_config(), checkpoint_path=path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        trainer.fit(registry.create("random"), tiny_model(0), tiny_problem(0), 0, run_key="r")
    # a genuine checkpoint, truncated
    good = tmp_path / "good.pt"
    Trainer(tiny_trainer_config(checkpoint_every=1), checkpoint_path=good).fit(
        registry.create("random"), tiny_model(0), tiny_problem(0), 0, run_key="r", stop_after_steps=6
    )
    raw = good.read_bytes()
    good.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(tiny_trainer_config(checkpoint_every=1), checkpoint_path=good).fit(
            registry.create("random"), tiny_model(0), tiny_problem(0), 0, run_key="r"
        )


def test_a_genuine_checkpoint_still_resumes(tmp_path):
    cfg = tiny_trainer_config(checkpoint_every=1)
    ref_model = tiny_model(0)
    ref = Trainer(cfg).fit(registry.create("random"), ref_model, tiny_problem(0), 0)
    path = tmp_path / "ckpt.pt"
    Trainer(cfg, checkpoint_path=path).fit(registry.create("random"), tiny_model(0), tiny_problem(0), 0, run_key="r", stop_after_steps=5)
    model = tiny_model(0)
    resumed = Trainer(cfg, checkpoint_path=path).fit(registry.create("random"), model, tiny_problem(0), 0, run_key="r")
    assert resumed.ok and resumed.metrics == ref.metrics
    assert all(torch.equal(a, b) for a, b in zip(ref_model.parameters(), model.parameters()))


def test_cifar_style_pickles_go_through_the_restricted_unpickler(tmp_path):
    """The data side: a crafted 'CIFAR batch' is refused before its payload runs."""
    import pickle

    from subsetlab.data.safe_pickle import safe_load

    path, marker = tmp_path / "data_batch_1", tmp_path / "PWNED"
    path.write_bytes(pickle.dumps({b"data": Evil(marker)}))
    with pytest.raises(DataError, match="Refused to load"):
        safe_load(path)
    assert not marker.exists()
