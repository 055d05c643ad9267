"""CPU memory-allocator settings that keep training steps at their speed beside big forwards.

glibc's ``malloc`` serves large blocks with ``mmap`` and hands freed memory back to the kernel
once the heap's free top passes a threshold that it adjusts as blocks come and go. A training
step of ``B`` rows interleaved with larger no-grad forwards (a strategy's selection or checks,
per-epoch evaluation) then keeps mapping, unmapping and faulting in fresh pages: measured on this
project's 2-core CPU machine, the small CNN's training step (batch 128) took 21 ms alone and
60-220 ms when a 540-example eval forward ran between steps, which doubled CREST's training time
(``benchmarks/perf/crest.py --model cnn``). Fixing both thresholds (blocks up to 256 MiB come from
the heap; free memory is kept until 512 MiB of it sits at the top) removes that: 21-22 ms either
way. The memory is reused, not lost; the process keeps up to 512 MiB of freed heap mapped.

Applied once per process by :meth:`subsetlab.trainer.Trainer.fit` on CPU runs
(``TrainerConfig.cpu_allocator="tuned"``, the default); a no-op where the C library is not glibc.
``SUBSETLAB_CPU_ALLOCATOR=system`` in the environment turns it off for the whole process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_cpu_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size are served from the heap (glibc's default adapts between 128 KiB and 32 MiB).
MMAP_THRESHOLD = 256 << 20
#: Free memory at the top of the heap is returned to the kernel only above this.
TRIM_THRESHOLD = 512 << 20

_state: dict[str, bool | None] = {"tuned": None}


def tune_cpu_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (once); True when they are set.

    False on other C libraries (macOS, Windows, musl), when ``SUBSETLAB_CPU_ALLOCATOR=system``,
    or when ``mallopt`` refuses a value. Safe to call many times.
    """
    if _state["tuned"] is not None:
        return bool(_state["tuned"])
    ok = False
    if os.environ.get("SUBSETLAB_CPU_ALLOCATOR", "tuned") != "system" and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = getattr(libc, "mallopt", None)
            gnu = getattr(libc, "gnu_get_libc_version", None)
            if mallopt is not None and gnu is not None:  # glibc only: musl has no gnu_get_libc_version
                mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                mallopt.restype = ctypes.c_int
                ok = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
        except OSError:
            ok = False
    _state["tuned"] = ok
    return ok
