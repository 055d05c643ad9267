"""A suite killed hard (SIGKILL) mid-run resumes without losing or duplicating anything.

The test starts ``subsetlab run tiny_suite.toml`` as a subprocess, waits until the results file
holds ``k`` finished lines while the next run is in progress, kills the process with SIGKILL,
checks the file, and restarts the same command; several times, with ``k`` growing. Some cycles
also cut the last record in half (a write interrupted mid-line), which must be detected and the
run redone. At the end every run of the suite has exactly one valid record, every record
written before a kill is still there byte for byte, and every line but the injected partial
ones is strict JSON. The number of kill-and-resume cycles is printed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from subsetlab.bench.store import ResultsWarning, read_records
from subsetlab.bench.suite import load_suite

pytestmark = [pytest.mark.timeout(180), pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX only")]

SUITE = """\
name = "tiny"
budgets = [0.25, 0.5]
seeds = [0, 1]
strategies = ["random", "sgd-truncated"]
include_full = true
threads = 1

[[datasets]]
name = "synthetic"
options = { n = 1200, n_test = 200, dim = 8, classes = 4 }

[model]
name = "mlp"
options = { hidden = [16] }

[trainer]
epochs = 30        # about 0.3-1 s per run: a kill lands inside a run
batch_size = 16
lr = 0.05
device = "cpu"
"""

#: (finished lines to wait for, then cut the last record in half?) per kill-and-resume cycle
CYCLES = [(1, False), (3, True), (4, False), (6, True), (8, False)]


def _command(suite: Path, results: Path) -> list[str]:
    return [
        sys.executable, "-m", "subsetlab.cli", "run", str(suite), "--results", str(results),
        "--progress", "lines", "--no-plots", "--format", "md", "--out", str(results.parent / "report"),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _finished(path: Path) -> int:
    """Number of whole, valid records in the file."""
    try:
        return len(_valid_lines(path))
    except FileNotFoundError:
        return 0


def _valid(path: Path) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        return read_records(path)


def _valid_lines(path: Path) -> list[bytes]:
    out = []
    for line in path.read_bytes().split(b"\n"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "key" in rec:
            out.append(line)
    return out


def _kill_after(cmd: list[str], results: Path, k: int, cwd: Path) -> tuple[int, str]:
    """Start the suite, SIGKILL it once ``k`` lines are finished and the next run is going."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while _finished(results) < k:
            assert proc.poll() is None, f"the suite ended before {k} runs were recorded"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.005)
        time.sleep(0.05)  # the next run has started (the runner starts it right after the append)
        lines_at_kill = _finished(results)
        assert proc.poll() is None, "the suite finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when an assertion fired above
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return lines_at_kill, out.decode(errors="replace")


def _cut_last_record(path: Path) -> str:
    """Truncate the file in the middle of its last record (a write cut short); return its key."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    start = raw.rstrip(b"\n").rfind(b"\n") + 1
    key = json.loads(raw[start:])["key"]
    cut = start + (len(raw) - start) // 2
    with open(path, "r+b") as f:
        f.truncate(cut)
    return key


def test_sigkill_mid_run_then_resume_keeps_every_finished_run_once(tmp_path, capsys):
    suite_path = tmp_path / "tiny_suite.toml"
    suite_path.write_text(SUITE)
    results = tmp_path / "runs" / "results.jsonl"
    specs = load_suite(suite_path).expand()
    order = [s.key for s in specs]
    assert len(order) == 10
    cmd = _command(suite_path, results)

    kept: list[bytes] = []  # every valid record line seen so far: must survive every later cycle
    cut_keys: list[str] = []
    redone: list[str] = []
    cycles = 0
    t0 = time.monotonic()
    for k, cut in CYCLES:
        already = len(_valid(results))
        lines_at_kill, out = _kill_after(cmd, results, max(k, already + 1), tmp_path)
        cycles += 1
        # the restart skipped exactly what was recorded before it
        assert f"suite tiny: 10 runs, {already} already recorded, {10 - already} to run" in out, out

        recs = _valid(results)
        keys = [r["key"] for r in recs]
        assert len(keys) == len(set(keys)), "a run was recorded twice"
        assert all(r["status"] == "ok" for r in recs)
        assert keys == [key for key in order if key in set(keys)], "runs out of suite order"
        assert lines_at_kill <= len(recs) <= lines_at_kill + 1  # (a run may end as the signal lands)
        raw = results.read_bytes()
        assert raw.endswith(b"\n") and raw.count(b"\n") == len(recs) + len(cut_keys)  # nothing half-written
        in_progress = next(key for key in order if key not in set(keys))
        redone.append(in_progress)

        lines = _valid_lines(results)
        assert lines[: len(kept)] == kept, "a finished record changed or vanished"
        kept = lines
        if cut:  # a write interrupted mid-line: the record is lost and must be redone
            key = _cut_last_record(results)
            cut_keys.append(key)
            kept = [line for line in kept if json.loads(line)["key"] != key]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert key not in {r["key"] for r in read_records(results)}
            assert any("partial last line" in str(w.message) for w in caught)  # detected as such

    # the final, uninterrupted resume
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    elapsed = time.monotonic() - t0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = read_records(results)
    skipped = [w for w in caught if issubclass(w.category, ResultsWarning)]
    assert len(skipped) == len(cut_keys)  # only the injected partial lines, each detected
    assert all("not valid JSON" in str(w.message) for w in skipped)
    keys = [r["key"] for r in recs]
    assert sorted(keys) == sorted(order) and len(keys) == len(set(keys)), "lost or duplicated runs"
    assert all(r["status"] == "ok" and r["result"]["work"]["steps"] == r["result"]["budget"]["total_steps"] for r in recs)
    final_lines = _valid_lines(results)
    assert final_lines[: len(kept)] == kept  # nothing finished was rewritten
    for key in set(redone) | set(cut_keys):  # interrupted and cut runs were redone, exactly once
        assert keys.count(key) == 1
    # every line is a whole record or one of the isolated partial lines; the file ends cleanly
    raw = results.read_bytes()
    assert raw.endswith(b"\n")
    bad = [line for line in raw.split(b"\n")[:-1] if line not in set(final_lines)]
    assert len(bad) == len(cut_keys) and all(not line.endswith(b"}") for line in bad)
    for line in final_lines:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    with capsys.disabled():
        print(
            f"\n[hardening] kill-and-resume: {cycles} SIGKILL cycles ({len(cut_keys)} with a record cut "
            f"mid-line), {len(set(redone) | set(cut_keys))} interrupted/cut runs redone once each, "
            f"{len(keys)}/{len(order)} runs recorded exactly once, 0 lost; {elapsed:.1f} s"
        )
    assert cycles >= 5
