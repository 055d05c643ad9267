"""subsetlab.allocator: glibc's malloc thresholds fixed once per process, off on request."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from subsetlab.config import RunSpec, TrainerConfig

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

_PROBE = (
    "import subsetlab.allocator as a; first = a.tune_cpu_allocator(); "
    "print(first, a.tune_cpu_allocator() == first)"
)


def _probe(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "SUBSETLAB_CPU_ALLOCATOR"}
    if env_value is not None:
        env["SUBSETLAB_CPU_ALLOCATOR"] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="the thresholds exist on glibc only")
def test_tuning_applies_on_glibc_and_is_idempotent() -> None:
    assert _probe(None) == "True True"


def test_environment_turns_the_tuning_off() -> None:
    assert _probe("system") == "False True"


def test_allocator_setting_is_not_part_of_the_run_key() -> None:
    a = RunSpec(strategy="random", trainer=TrainerConfig(cpu_allocator="tuned"))
    b = RunSpec(strategy="random", trainer=TrainerConfig(cpu_allocator="system"))
    assert a.key == b.key
    assert RunSpec(strategy="random", trainer=TrainerConfig(epochs=3)).key != a.key
