"""The whole loop as a user runs it (`isoflop quickstart --preset smoke`): ladder, fit, predict, verify, report,
summary.json; a second run over the same folder reuses every finished run."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torch")


@pytest.mark.slow
def test_quickstart_smoke_end_to_end_and_resume(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ISOFLOP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "qs"
    first = cli("quickstart", "--out", str(out), "--preset", "smoke")
    assert first.code == 0, first.err + first.out
    assert "held-out (compute-optimal" in first.out
    assert "report:" in first.out and "[1/12]" in first.out
    summary = json.loads((out / "summary.json").read_text())
    held = summary["heldout"]
    lo, hi = held["ci95"]
    assert lo < held["predicted_loss"] < hi and math.isfinite(held["actual_loss"])
    assert held["error_pct"] == pytest.approx(
        100 * (held["predicted_loss"] - held["actual_loss"]) / held["actual_loss"]
    )
    assert held["flops"] > 3 * 8e9 and summary["wall_s"] > 0
    # `heldouts` lists every held-out run, none of them fitted: the compute-optimal one first (primary, `heldout`),
    # then an over-trained one (several times the compute-optimal tokens per parameter, approach 3 alone) where the
    # shape family has a size below the compute-optimal one (the quick ladder has; the smoke ladder may not).
    assert summary["heldouts"][0] == held and held["role"] == "heldout"
    for over in summary["heldouts"][1:]:
        assert over["role"] == "heldout_overtrained" and over["n"] < held["n"]
        assert [p["method"] for p in over["predictions"]] == ["approach3"] and math.isfinite(over["actual_loss"])
        assert over["tokens_per_param"] > 2 * held["tokens_per_param"]
        assert over["error_pct"] == pytest.approx(
            100 * (over["predicted_loss"] - over["actual_loss"]) / over["actual_loss"]
        )
    assert summary["runs"]["total"] == 12 + len(summary["heldouts"])
    assert {"approach3", "approach2", "envelope"} <= set(summary["fit"])
    assert held["epochs"] == pytest.approx(held["tokens"] / summary["corpus_train_tokens"])
    assert summary["runs"]["finished"] == summary["runs"]["total"] and summary["runs"]["failed"] == 0
    assert (out / "report.html").is_file() and len(list((out / "plots").glob("*.png"))) == 5

    # Calibrate the perf model on the measured runs (the local CPU as "GPU"): the step-time error drops.
    cal = cli(
        "calibrate", str(out), "--hardware", str(tmp_path / "hw.yaml"), "--output", str(tmp_path / "cal.yaml"), "--json"
    )
    assert cal.code == 0, cal.err
    (res,) = cal.json()["gpus"]
    assert res["gpu"] == "cpu-local" and res["runs"] == summary["runs"]["total"]
    assert res["after"]["median_abs_step_time_error_pct"] <= res["before"]["median_abs_step_time_error_pct"]
    assert "cpu-local" in (tmp_path / "cal.yaml").read_text() and "cpu-local" in (tmp_path / "hw.yaml").read_text()

    again = cli("quickstart", "--out", str(out), "--preset", "smoke", "--json")
    assert again.code == 0, again.err
    resumed = again.json()
    assert resumed["runs"]["skipped"] == resumed["runs"]["total"] and resumed["runs"]["finished"] == 0
    assert resumed["heldout"]["actual_loss"] == held["actual_loss"]
    assert [h["actual_loss"] for h in resumed["heldouts"]] == [h["actual_loss"] for h in summary["heldouts"]]
