"""Running on several processes with PyTorch's own distributed engine.

subsetlab does not ship a distributed runtime of its own: a distributed run is a set of
processes started by ``torchrun`` (``python -m torch.distributed.run``), or by :func:`spawn`
on one machine, that form a ``torch.distributed`` process group (gloo on CPU, NCCL on CUDA).
The trainer wraps the model in ``DistributedDataParallel`` and strategies talk to the other
ranks only through the :class:`~subsetlab.protocol.DistView` in their context.

Conventions of a distributed run of ``W`` processes (see the "Scaling out" guide):

* ``trainer.batch_size`` is the *global* batch ``B``: every rank trains ``B / W`` rows per
  step and DDP averages the gradients, so a step is the step of one process on the union of
  the ranks' rows, and the budget (steps, schedule, examples back-propagated) is the one of a
  single-process run. ``B`` (or the budget, when it is smaller than one batch) must be a
  multiple of ``W``.
* A selection is *replicated* (every rank computes the same one from the shared seed; the
  trainer serves rank ``r`` its share of each global batch) unless the strategy marks it
  ``rank_local`` (each rank selected its own rows, as CREST does).
* Evaluation is split over the ranks and merged; only rank 0 writes results and shows
  progress; every rank writes its own checkpoint (``<path>.rank{r}-of-{W}``).

Functions here: :func:`init` / :func:`view` / :func:`shutdown` for a process launched by
``torchrun``, :func:`spawn` to run a function on ``W`` local processes (tests, benchmarks),
:func:`torchrun_command` for ``subsetlab run --nproc``, and the collectives the trainer uses
(:func:`all_gather_cat`, :func:`all_gather_object`, :func:`broadcast_object`,
:func:`gather_outcomes`).
"""

from __future__ import annotations

import datetime as _dt
import os
import io
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch

from subsetlab.errors import DistributedError
from subsetlab.protocol import DistView

__all__ = [
    "DistributedError",
    "all_gather_cat",
    "all_gather_object",
    "broadcast_object",
    "env_rank_world",
    "free_port",
    "gather_outcomes",
    "in_torchrun",
    "is_peer_error",
    "open_side_channel",
    "init",
    "shutdown",
    "spawn",
    "torchrun_command",
    "view",
]

#: Seconds a collective may wait for the other ranks before the run fails (``SUBSETLAB_DIST_TIMEOUT``).
DEFAULT_TIMEOUT_S = 1800.0

_OPS = ("sum", "max", "min", "mean")
_PEER_ERRORS = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout", "died with exit code")


def env_rank_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the environment ``torchrun`` sets (0, 1, 0 if unset)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise DistributedError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"Inconsistent RANK={rank} and WORLD_SIZE={world} in the environment.")
    return rank, world, local


def in_torchrun() -> bool:
    """True when this process is one rank of a multi-process launch (``WORLD_SIZE`` > 1)."""
    return env_rank_world()[1] > 1


def _timeout_s() -> float:
    raw = os.environ.get("SUBSETLAB_DIST_TIMEOUT")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise DistributedError(f"SUBSETLAB_DIST_TIMEOUT must be a number of seconds. Got {raw!r}.") from None
    if not value > 0:
        raise DistributedError(f"SUBSETLAB_DIST_TIMEOUT must be > 0. Got {raw!r}.")
    return value


def init(backend: str = "auto", device: str = "auto", timeout_s: float | None = None) -> DistView:
    """Join the process group described by the ``torchrun`` environment; return its view.

    Single-process (``WORLD_SIZE`` unset or 1): nothing is initialised and the trivial
    :class:`~subsetlab.protocol.DistView` is returned.

    Args:
        backend: ``"auto"`` (NCCL when the run uses CUDA, else gloo), ``"gloo"`` or ``"nccl"``.
        device: The training device setting (``"auto"``, ``"cpu"``, ``"cuda"``); with CUDA each
            rank uses ``cuda:LOCAL_RANK``.
        timeout_s: How long a collective waits for the others (default
            ``SUBSETLAB_DIST_TIMEOUT`` or 1800 s); a rank that died or hangs fails the run
            after this long instead of blocking forever.
    """
    global _GROUP_TIMEOUT_S
    import torch.distributed as dist

    rank, world, local = env_rank_world()
    if world == 1:
        return DistView()
    if not dist.is_available():
        raise DistributedError("This torch build has no torch.distributed support.")
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda and torch.cuda.is_available():
        torch.cuda.set_device(local % max(1, torch.cuda.device_count()))
    if not dist.is_initialized():
        _GROUP_TIMEOUT_S = timeout_s if timeout_s is not None else _timeout_s()
        timeout = _dt.timedelta(seconds=_GROUP_TIMEOUT_S)
        try:
            dist.init_process_group(backend=backend, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - name the cause whatever the backend raised
            raise DistributedError(
                f"Rank {rank} of {world} could not join the process group ({backend}): {exc}. "
                f"Launch with torchrun (MASTER_ADDR/MASTER_PORT set) or subsetlab.distributed.spawn."
            ) from exc
    return view()


def view() -> DistView:
    """The :class:`~subsetlab.protocol.DistView` of the current default process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return DistView()
    rank, world = dist.get_rank(), dist.get_world_size()
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    reduce_ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "mean": dist.ReduceOp.SUM}

    def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if op not in reduce_ops:
            raise ValueError(f"all_reduce op must be one of {_OPS}. Got {op!r}.")
        src = torch.as_tensor(t)
        buf = src.detach().to(comm, copy=True)
        if op == "mean" and not buf.is_floating_point():
            buf = buf.double()
        dist.all_reduce(buf, op=reduce_ops[op])
        if op == "mean":
            buf = buf / world
        return buf.to(src.device)

    def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
        orig = torch.as_tensor(t)
        buf = orig.detach().to(comm, copy=True).contiguous()
        dist.broadcast(buf, src=src)
        return buf.to(orig.device)

    def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
        orig = torch.as_tensor(t)
        buf = orig.detach().to(comm).contiguous()
        out = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(out, buf)
        return [o.to(orig.device) for o in out]

    def barrier() -> None:
        dist.barrier()

    return DistView(rank, world, all_reduce, broadcast, all_gather, barrier)


def shutdown() -> None:
    """Leave the process group (no-op when none was initialised)."""
    global _SIDE_GROUP
    import torch.distributed as dist

    _SIDE_GROUP = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_SIDE_GROUP: Any = None
_GROUP_TIMEOUT_S: float | None = None  # the training group's timeout, as init set it


def open_side_channel() -> None:
    """Create the gloo group :func:`gather_outcomes` uses, apart from the training collectives.

    Every rank must call it at the same point (a suite calls it before its first run). Its
    timeout outlasts the training group's, so a rank that finished (or failed) early waits in
    it for a rank still blocked in a training collective until that one gives up.
    """
    global _SIDE_GROUP
    import torch.distributed as dist

    if _SIDE_GROUP is None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        waits = (_GROUP_TIMEOUT_S or _timeout_s()) + 120
        _SIDE_GROUP = dist.new_group(backend="gloo", timeout=_dt.timedelta(seconds=waits))


def gather_outcomes(dv: DistView, ok: bool, message: str | None = None) -> list[tuple[bool, str | None]]:
    """Every rank's ``(ok, message)`` for the run just finished, in rank order.

    Uses the side channel of :func:`open_side_channel` when there is one: a rank whose run
    failed early is not matched against another rank's training collectives. Single-process:
    ``[(ok, message)]``.
    """
    if dv.world_size == 1:
        return [(ok, message)]
    if _SIDE_GROUP is not None:
        import torch.distributed as dist

        out: list[Any] = [None] * dv.world_size
        dist.all_gather_object(out, (bool(ok), message), group=_SIDE_GROUP)
        return [tuple(o) for o in out]
    data = torch.frombuffer(bytearray(_dumps((bool(ok), message))), dtype=torch.uint8)
    sizes = [int(n) for n in dv.all_gather(torch.tensor([data.numel()], dtype=torch.long))]
    flat = all_gather_cat(dv, data)
    parts, start = [], 0
    for n in sizes:
        parts.append(tuple(_loads(flat[start : start + n].numpy().tobytes())))
        start += n
    return parts


def _dumps(obj: Any) -> bytes:
    """Serialise tensors, numbers, strings and containers of them (``torch.save``)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _loads(data: bytes) -> Any:
    """The inverse of :func:`_dumps`, with ``weights_only=True``: nothing but data is rebuilt."""
    return torch.load(io.BytesIO(data), weights_only=True)


def is_peer_error(message: str | None) -> bool:
    """True for the error a rank sees because another rank failed (a collective broke or timed out)."""
    first = (message or "").split("\n", 1)[0].lower()
    return any(k in first for k in _PEER_ERRORS)


def all_gather_cat(dv: DistView, t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's 1-D (or row-stacked) ``t`` in rank order; sizes may differ.

    Single-process: ``t`` itself.
    """
    if dv.world_size == 1:
        return t
    n = torch.tensor([int(t.shape[0])], dtype=torch.long)
    sizes = [int(s) for s in dv.all_gather(n)]
    top = max(sizes)
    pad = torch.zeros((top - int(t.shape[0]), *t.shape[1:]), dtype=t.dtype, device=t.device)
    parts = dv.all_gather(torch.cat([t, pad]) if top > t.shape[0] else t)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def all_gather_object(dv: DistView, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (sizes may differ between ranks).

    ``obj`` is data, as for :func:`broadcast_object`. Single-process: ``[obj]``.
    """
    if dv.world_size == 1:
        return [obj]
    data = torch.frombuffer(bytearray(_dumps(obj)), dtype=torch.uint8)
    sizes = [int(s) for s in dv.all_gather(torch.tensor([data.numel()], dtype=torch.long))]
    flat = all_gather_cat(dv, data)
    parts, start = [], 0
    for n in sizes:
        parts.append(_loads(flat[start : start + n].numpy().tobytes()))
        start += n
    return parts


def broadcast_object(dv: DistView, obj: Any, src: int = 0) -> Any:
    """Send ``obj`` from rank ``src`` to every rank; return it everywhere.

    ``obj`` is data: tensors, numbers, strings, ``None`` and lists, tuples and dicts of them
    (it travels through ``torch.save`` and is loaded with ``weights_only=True``).
    """
    if dv.world_size == 1:
        return obj
    data = _dumps(obj) if dv.rank == src else b""
    n = int(dv.broadcast(torch.tensor([len(data)], dtype=torch.long), src))
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if dv.rank == src else torch.zeros(n, dtype=torch.uint8)
    buf = dv.broadcast(buf, src)
    return obj if dv.rank == src else _loads(buf.numpy().tobytes())


# ---------------------------------------------------------------------- launching
_FAILURE_GRACE_S = 3.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_entry(rank: int, world: int, port: int, fn: Callable, args: tuple, backend: str, threads: int,
                 timeout_s: float, queue: Any) -> None:
    """One spawned rank: join the group, run ``fn``, report the result or the error to the parent."""
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world),
         "LOCAL_RANK": str(rank)}
    )
    torch.set_num_threads(threads)
    try:
        dv = init(backend, device="cpu" if backend == "gloo" else "auto", timeout_s=timeout_s)
        try:
            out = fn(dv, *args)
        finally:
            shutdown()
        queue.put((rank, True, _dumps(out)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        queue.put((rank, False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise SystemExit(1) from None


def spawn(
    fn: Callable[..., Any],
    nproc: int,
    args: Sequence[Any] = (),
    *,
    backend: str = "gloo",
    threads: int = 1,
    timeout_s: float = 300.0,
    group_timeout_s: float | None = None,
) -> list[Any]:
    """Run ``fn(dist_view, *args)`` on ``nproc`` fresh local processes forming a process group.

    The processes are started with the ``spawn`` method (``fn`` must be importable: a
    module-level function) and joined with gloo (CPU) or NCCL. Returns each rank's return
    value, in rank order; a return value is data (tensors, numbers, strings, containers of
    them), sent back through ``torch.save`` and loaded with ``weights_only=True``.

    ``group_timeout_s`` bounds each collective (default ``timeout_s``): a rank left waiting
    for one that failed gives up after it.

    Raises:
        DistributedError: a rank raised (its traceback is included), died, or the ranks did
            not finish within ``timeout_s`` (then every rank is killed: no hang outlives the
            call).
    """
    import multiprocessing as mp

    if nproc < 1:
        raise ValueError(f"nproc must be >= 1. Got {nproc}.")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_spawn_entry, args=(r, nproc, port, fn, tuple(args), backend, threads, group_timeout_s or timeout_s, queue),
                    daemon=True)
        for r in range(nproc)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    failures: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    error = None
    grace_end = None  # after a first failure: how long to wait for the other ranks' errors
    try:
        while len(results) + len(failures) < nproc:
            now = time.monotonic()
            if grace_end is not None and now >= grace_end:
                break
            left = deadline - now
            if left <= 0:
                error = f"the {nproc} ranks did not finish within {timeout_s:g} s (deadlock or too slow)"
                break
            try:
                rank, ok, payload = queue.get(timeout=min(1.0, left, max(0.05, (grace_end or now + 1) - now)))
            except Exception:  # noqa: BLE001 - queue.Empty: check for dead ranks
                dead = [i for i, p in enumerate(procs)
                        if p.exitcode not in (None, 0) and i not in results and i not in failures]
                for i in dead:
                    failures[i] = f"died with exit code {procs[i].exitcode}"
                if dead and grace_end is None:
                    grace_end = time.monotonic() + _FAILURE_GRACE_S
                continue
            if ok:
                results[rank] = _loads(payload)
            else:
                failures[rank] = payload
                if grace_end is None:
                    grace_end = time.monotonic() + _FAILURE_GRACE_S
        if failures:
            # the root cause first: a rank's own error before the peers' broken-connection errors
            order = sorted(failures, key=lambda r: (is_peer_error(failures[r]), r))
            error = "; ".join(f"rank {r} failed: {failures[r]}" for r in order)
    finally:
        for p in procs:
            if error is not None and p.is_alive():
                p.kill()
            p.join(timeout=10 if error is None else 2)
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
        queue.close()
    if error is not None:
        raise DistributedError(f"Distributed run of {getattr(fn, '__name__', fn)!r}: {error}")
    return [results[r] for r in range(nproc)]


def torchrun_command(nproc: int, module_args: Sequence[str], *, module: str = "subsetlab") -> list[str]:
    """The command that runs ``python -m MODULE ARGS`` on ``nproc`` local ranks under torchrun.

    ``--standalone`` picks a free rendezvous port; torchrun sets one torch thread per rank
    (``OMP_NUM_THREADS=1``) unless the environment already sets it, and stops every rank when
    one fails.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1. Got {nproc}.")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", module, *module_args]
