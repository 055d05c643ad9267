"""One run of a suite: :func:`execute_run`, a pure function of the spec that never raises.

An exception anywhere (data loading, model building, a strategy bug) and a failed
:class:`~subsetlab.trainer.RunResult` (divergence, invalid selection, timeout) both come back as
a record with ``status="failed"`` and the error. :func:`task_payload` is what an executor
ships to a worker process; :func:`environment` describes the machine a run ran on.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import socket
import traceback
from collections.abc import Callable
from typing import Any

from subsetlab.config import RunSpec

__all__ = ["available_cores", "environment", "execute_run", "failure_record", "task_payload", "warm_up"]

_RECORD_ORDER = ("key", "suite", "spec", "match", "status", "error", "result", "env", "started", "finished")

StepCallback = Callable[[int, int, dict[str, Any]], None]

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def environment(device: str = "cpu") -> dict[str, Any]:
    """Where a run executed: versions, platform, device, threads, host (not part of the key)."""
    import numpy
    import torch

    import subsetlab

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "subsetlab": subsetlab.__version__,
        "platform": platform.platform(),
        "device": device,
        "threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
    }
    from subsetlab.distributed import view

    world = view().world_size
    if world > 1:
        env["world_size"] = world
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _failure_type(message: str) -> str:
    if message.startswith("diverged:"):
        return "TrainingDiverged"
    if message.startswith("timeout:"):
        return "RunTimeout"
    head = message.split(":", 1)[0].strip()
    return head if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", head) else "RunFailed"


def _spec_dump(spec: RunSpec | dict[str, Any]) -> dict[str, Any]:
    return spec.model_dump(mode="json") if isinstance(spec, RunSpec) else dict(spec)


def failure_record(
    spec: RunSpec | dict[str, Any],
    exc: BaseException,
    *,
    started: str | None = None,
    message: str | None = None,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``failed`` record for a run that raised ``exc`` (type, message and traceback kept)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "key": spec.key if isinstance(spec, RunSpec) else spec.get("key"),
        "spec": _spec_dump(spec),
        "status": "failed",
        "error": {"type": type(exc).__name__, "message": message or str(exc), "traceback": tb, "step": None},
        "result": None,
        "env": env or {},
        "started": started or _now(),
        "finished": _now(),
    }


_warmed: set[str] = set()


def warm_up(device: str = "cpu") -> None:
    """Pay torch's one-time costs (lazy imports, kernel and allocator set-up) once per process.

    The first optimiser step of a process costs about a second on a CPU; without this the
    first run of a suite (the full-data reference) would carry it and every speed-up would be
    inflated. Uses a forked RNG, so the global torch RNG is left as it was.
    """
    if device in _warmed:
        return
    import torch
    from torch.nn import functional as F

    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(0)
        layer = torch.nn.Linear(8, 4).to(dev)
        opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        x, y = torch.randn(16, 8, device=dev), torch.randint(0, 4, (16,), device=dev)
        for _ in range(2):
            loss = F.cross_entropy(layer(x), y, reduction="none").mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            layer(x).argmax(1)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    _warmed.add(device)


def execute_run(
    spec: RunSpec | dict[str, Any],
    progress: StepCallback | None = None,
    strategy_module: str | None = None,
) -> dict[str, Any]:
    """Run one spec and return its results record; never raises for a failing run.

    Args:
        spec: The run (a :class:`~subsetlab.config.RunSpec` or its JSON dump).
        progress: Optional per-step callback ``(step_done, total_steps, info)``.
        strategy_module: Module to import first if the strategy is not registered in this
            process (a strategy of user code registered with ``@register``, run in a fresh
            worker process; see :func:`subsetlab.registry.defining_module`).

    Returns:
        A record: ``key``, ``spec``, ``status``, ``error``, ``result``, ``env``, ``started``,
        ``finished`` (see :mod:`subsetlab.bench.store`).
    """
    started = _now()
    env: dict[str, Any] = {}
    raw = spec
    try:
        from subsetlab.config import validate

        if not isinstance(spec, RunSpec):
            name = spec.get("strategy", {}).get("name") if isinstance(spec.get("strategy"), dict) else None
            from subsetlab import registry

            registry.ensure_registered(str(name), strategy_module)
        spec = validate(RunSpec, spec, "RunSpec")
        device = spec.trainer.device
        try:
            from subsetlab.trainer import resolve_device

            device = str(resolve_device(spec.trainer.device))
        finally:
            env = environment(device)
        from subsetlab.api import run_spec

        warm_up(device)
        result = run_spec(spec, progress=progress, resume=False)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of one run (a plugin's
        # sys.exit() included) is recorded, the suite goes on; Ctrl-C still stops the suite
        return failure_record(raw, exc, started=started, env=env)
    record: dict[str, Any] = {
        "key": spec.key,
        "spec": spec.model_dump(mode="json"),
        "status": "ok" if result.ok else "failed",
        "error": None,
        "result": result.to_dict(),
        "env": env,
        "started": started,
        "finished": _now(),
    }
    if not result.ok:
        msg = result.error or "failed"
        record["error"] = {"type": _failure_type(msg), "message": msg, "traceback": None, "step": result.failed_step}
    return record


def task_payload(spec: RunSpec) -> dict[str, Any]:
    """Keyword arguments of :func:`execute_run` for running ``spec`` in another process.

    The spec travels as JSON (re-validated there); a strategy of user code (registered with
    ``@register``, not through an entry point) is found by importing the module that defines
    its class.
    """
    from subsetlab import registry

    module = registry.defining_module(spec.strategy.name)
    return {"spec": spec.model_dump(mode="json"), "strategy_module": module}


