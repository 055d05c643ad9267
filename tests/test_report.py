"""Report arithmetic on a hand-made results file, table formats, and plots."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from subsetlab.bench.plots import PLOT_FILES, make_plots
from subsetlab.bench.report import (
    Stat,
    aggregate,
    load_runs,
    to_csv,
    to_markdown,
    write_report,
)

SQ2 = math.sqrt(2.0)


def record(
    label: str,
    fraction: float,
    seed: int,
    acc: float,
    total: float,
    *,
    strategy: str | None = None,
    train: float = 0.0,
    select: float = 0.0,
    eval: float = 0.0,
    fwd: int = 0,
    bwd: int = 0,
    hvp: int = 0,
    bp: int = 1000,
    selections: int = 1,
    status: str = "ok",
    data: dict | None = None,
    epochs: int = 10,
) -> dict:
    """One results line as the runner writes it (only the fields the report reads matter)."""
    strategy = strategy or label
    key = f"{label}-{fraction}-{seed}-{json.dumps(data or {}, sort_keys=True)}-{epochs}"
    result = {
        "strategy": strategy,
        "status": status,
        "metrics": {"final_acc": acc, "best_acc": acc, "final_loss": 0.5},
        "history": [
            {"epoch": 0, "test_acc": acc - 0.1, "wall": total / 2},
            {"epoch": 1, "test_acc": acc, "wall": total},
        ],
        "timings": {"total": total, "train": train, "select": select, "eval": eval, "checkpoint": 0.0},
        "work": {"steps": 10, "backprop_examples": bp, "forward_examples": fwd, "backward_examples": bwd,
                 "hvp_examples": hvp},
        "selections": {"count": selections},
    }
    return {
        "key": key,
        "suite": "hand",
        "spec": {
            "data": data or {"name": "digits", "val_fraction": 0.1},
            "model": {"name": "mlp", "options": {}},
            "trainer": {"epochs": epochs, "fraction": fraction, "batch_size": 32, "device": "cpu"},
            "strategy": {"name": strategy},
            "seed": seed,
            "label": label,
        },
        "status": status,
        "error": None if status == "ok" else {"type": "X", "message": "boom", "traceback": None},
        "result": result if status == "ok" else None,
        "env": {},
        "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:00:01+00:00",
    }


def hand_made() -> list[dict]:
    return [
        record("full", 1.0, 0, 0.90, 100.0, train=90.0, eval=5.0),
        record("full", 1.0, 1, 0.80, 80.0, train=70.0, eval=5.0),
        record("random", 0.1, 0, 0.81, 10.0, train=6.0, select=2.0, eval=1.0, selections=10),
        record("random", 0.1, 1, 0.50, 99.0, status="failed"),  # retried below; the latest counts
        record("random", 0.1, 1, 0.76, 16.0, train=8.0, select=4.0, eval=2.0, selections=10),
        record("crest+drop", 0.1, 0, 0.72, 20.0, strategy="crest", train=10.0, select=5.0, fwd=500, bwd=100, hvp=100),
        record("crest+drop", 0.1, 1, 0.72, 40.0, strategy="crest", train=20.0, select=10.0, fwd=1500, bwd=300, hvp=100),
        record("crest+drop", 0.1, 2, 0.00, 0.0, strategy="crest", status="failed"),
    ]


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hand_made()))
    return path


def rows_by_label(rows):
    return {r.strategy: r for r in rows}


def test_aggregate_exact_values(results):
    rows = aggregate(load_runs(results))
    assert [(r.strategy, r.budget) for r in rows] == [("full", 1.0), ("random", 0.1), ("crest+drop", 0.1)]
    full, rnd, crest = (rows_by_label(rows)[k] for k in ("full", "random", "crest+drop"))

    assert full.reference and not rnd.reference
    assert full.stats["acc"] == Stat(pytest.approx(85.0), pytest.approx(5 * SQ2), 2)
    assert full.stats["rel_err"].mean == 0.0 and full.stats["speedup"].mean == 1.0

    # random: acc 81, 76; rel. err. 10 %, 5 %; speed-up 100/10 = 10, 80/16 = 5
    assert (rnd.seeds, rnd.failed) == (2, 0)  # the failed first attempt of seed 1 was retried
    assert rnd.stats["acc"].mean == pytest.approx(78.5)
    assert rnd.stats["acc"].std == pytest.approx(2.5 * SQ2)
    assert rnd.stats["rel_err"].mean == pytest.approx(7.5)
    assert rnd.stats["rel_err"].std == pytest.approx(2.5 * SQ2)
    assert rnd.stats["speedup"].mean == pytest.approx(7.5)
    assert rnd.stats["speedup"].std == pytest.approx(2.5 * SQ2)
    assert rnd.stats["wall_s"].mean == pytest.approx(13.0)
    assert rnd.stats["select_s"].mean == pytest.approx(3.0)
    assert rnd.stats["select_share"].mean == pytest.approx((20.0 + 25.0) / 2)
    assert rnd.stats["nontrain_share"].mean == pytest.approx((40.0 + 50.0) / 2)
    assert rnd.stats["selections"].mean == 10.0
    assert rnd.stats["extra_forward_x"].mean == 0.0

    # crest+drop: acc 72, 72 (std 0); rel. err. 20 %, 10 %; speed-up 5, 2; one failed run
    assert (crest.seeds, crest.failed) == (2, 1)
    assert crest.stats["acc"] == Stat(pytest.approx(72.0), pytest.approx(0.0), 2)
    assert crest.stats["rel_err"].mean == pytest.approx(15.0)
    assert crest.stats["rel_err"].std == pytest.approx(5 * SQ2)
    assert crest.stats["speedup"].mean == pytest.approx(3.5)
    assert crest.stats["speedup"].std == pytest.approx(1.5 * SQ2)
    assert crest.stats["extra_forward"].mean == pytest.approx(1000.0)
    assert crest.stats["extra_forward_x"].mean == pytest.approx((0.5 + 1.5) / 2)
    assert crest.stats["extra_backward_hvp"].mean == pytest.approx(300.0)
    assert crest.stats["extra_backward_hvp_x"].mean == pytest.approx((0.2 + 0.4) / 2)


def test_single_seed_has_no_std_and_missing_reference_gives_no_rel_err():
    rows = aggregate([record("random", 0.1, 0, 0.5, 10.0)])
    (r,) = rows
    assert r.stats["acc"] == Stat(50.0, None, 1)
    assert r.stats["rel_err"] == Stat(None, None, 0)
    assert r.stats["acc"].fmt() == "50.00" and r.stats["rel_err"].fmt() == "—"


def test_relative_error_matches_the_same_data_model_setting_and_seed():
    recs = [
        record("full", 1.0, 0, 0.90, 100.0),
        record("full", 1.0, 0, 0.50, 100.0, epochs=20),  # another trainer setting
        record("random", 0.1, 0, 0.45, 10.0, epochs=20),
    ]
    rows = rows_by_label([r for r in aggregate(recs) if r.strategy == "random"])
    assert rows["random"].stats["rel_err"].mean == pytest.approx(10.0)  # against 50, not 90
    assert rows["random"].setting.startswith("E20 B32")


def test_same_dataset_name_with_different_configs_is_disambiguated():
    recs = [
        record("random", 0.1, 0, 0.5, 1.0, data={"name": "digits", "n_train": 100}),
        record("random", 0.1, 0, 0.6, 1.0, data={"name": "digits", "n_train": 200}),
    ]
    names = sorted(r.dataset for r in aggregate(recs))
    assert len(set(names)) == 2 and all(n.startswith("digits#") for n in names)


def test_markdown_and_csv(results, tmp_path):
    rows = aggregate(load_runs(results))
    md = to_markdown(rows)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| dataset | model | budget | strategy | acc % | rel. err. % |")
    assert len(lines) == 2 + 3
    assert lines[3].startswith("| digits | mlp | 0.1 | random | 78.50 ± 3.54 | 7.50 ± 3.54 | 13.00 ± 4.24 | 7.50 ± 3.54 |")
    assert lines[4].endswith("| 2 | 1 |")

    table = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [t["strategy"] for t in table] == ["full", "random", "crest+drop"]
    assert float(table[1]["rel_err_mean"]) == pytest.approx(7.5)
    assert float(table[2]["speedup_std"]) == pytest.approx(1.5 * SQ2)
    assert table[2]["failed"] == "1" and table[0]["budget"] == "1.0"

    written = write_report(results, tmp_path / "out", ("md", "csv"))
    assert written["md"].read_text().count("| digits |") == 3
    assert written["csv"].read_text() == to_csv(rows)
    with pytest.raises(ValueError, match="format"):
        write_report(results, tmp_path / "out", ("html",))


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_plots_are_written(results, tmp_path):
    out = tmp_path / "plots"
    written = make_plots(results, out)
    names = {p.name for p in written}
    assert names == {"accuracy_vs_epoch.png", "accuracy_vs_time.png", "time_breakdown.png"}  # one budget
    assert all(_is_png(p) for p in written)


def test_relative_error_plot_with_two_budgets(tmp_path):
    recs = hand_made() + [
        record("random", 0.3, 0, 0.88, 30.0, train=25.0),
        record("random", 0.3, 1, 0.79, 24.0, train=20.0),
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    written = make_plots(path, tmp_path)
    assert {p.name for p in written} == set(PLOT_FILES)
    assert all(_is_png(p) for p in written)


def test_no_successful_runs_no_plots(tmp_path):
    assert make_plots([record("x", 0.1, 0, 0.0, 0.0, status="failed")], tmp_path) == []
    assert make_plots([], tmp_path) == []
