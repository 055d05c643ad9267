"""The run's clock (:mod:`subsetlab.timing`) on a fake wall clock: exact seconds per part."""

from __future__ import annotations

import pytest
import torch

from subsetlab import timing
from subsetlab.protocol import WorkMeters
from subsetlab.timing import Lap, Stopwatch


class FakeClock:
    """``perf_counter`` that only moves when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", fake)
    return fake


def test_a_part_inside_another_is_not_counted_in_the_outer(clock):
    watch = Stopwatch(torch.device("cpu"), ("train", "select"))
    with watch.part("train"):
        clock.now += 3.0
        with watch.part("select"):  # e.g. on_after_backward inside the training step
            clock.now += 0.5
        clock.now += 1.0
    assert watch.times == {"train": 4.0, "select": 0.5}
    clock.now += 2.0
    assert watch.report() == {"total": 6.5, "train": 4.0, "select": 0.5, "other": 2.0}


def test_a_lap_reads_its_seconds_inside_and_after_the_block(clock):
    with Lap(None) as lap:
        clock.now += 1.5
        assert lap.elapsed() == 1.5
        clock.now += 1.0
    assert lap.seconds == 2.5


def test_a_failing_block_is_still_timed(clock):
    watch = Stopwatch(None, ("select",))
    with pytest.raises(RuntimeError), watch.part("select"):
        clock.now += 2.0
        raise RuntimeError("the strategy failed")
    assert watch.times == {"select": 2.0}


def test_a_resumed_run_adds_the_saved_seconds(clock):
    saved = Stopwatch(None, ("setup", "train"))
    with saved.part("setup"):
        clock.now += 1.0
    with saved.part("train"):
        clock.now += 4.0
    state = saved.state_dict()
    assert state == {"times": {"setup": 1.0, "train": 4.0}, "elapsed": 5.0}

    watch = Stopwatch(None, ("setup", "train", "analytics"))
    with watch.part("setup"):
        clock.now += 0.5
        watch.load_state_dict(state)  # inside setup, as the trainer resumes
        clock.now += 0.25
    assert watch.times == {"setup": 1.75, "train": 4.0, "analytics": 0.0}
    assert watch.total() == 5.75


def test_the_strategy_meters_time_with_the_same_lap(clock):
    meters = WorkMeters(torch.device("cpu"))
    for _ in range(2):
        with meters.timer("selection"):
            clock.now += 0.75
    assert meters.seconds == {"selection": 1.5} and meters.counts == {"selection": 2}
