"""Offline evaluation: the scorer on hand-made truth and warnings with known answers, and
shipped scenarios straight through the rule engine (no broker, no database)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from hazardwatch.cli import main
from simulators.evaluate import Truth, WarningRecord, evaluate, max_in_window, score
from simulators.scenario import load

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
M = 60.0


def w(site: str, cause: str, at_min: float, level: str = "red") -> WarningRecord:
    return WarningRecord(site, cause, at_min * M, level)


TRUTH = [
    Truth("TF1", "overfill", "red", 60 * M, 100 * M, "tank_overfill"),
    Truth("GP1", "pressure_loss", "red", 120 * M, 165 * M, "gas_leak"),
    Truth("DS1", "bag_break", "red", 60 * M, 90 * M, "bag_break"),
]


def test_scorer_matching_delay_level_precision_and_false_per_site_day():
    warnings = [
        w("TF1", "overfill", 55),                  # before the start: not a detection
        w("TF1", "overfill", 75, "orange"),        # detects TF1 after 15 min, wrong level ...
        w("TF1", "overfill", 80, "red"),           # ... the highest matching level counts
        w("GP1", "pressure_loss", 165 + 29, "yellow"),   # inside the 30-min grace
        w("DS1", "blockage", 70),                  # same site, other cause: false
        w("TF2", "overfill", 75),                  # other site: false
    ]
    s = score(TRUTH, warnings, site_days=4.0, grace_s=30 * M)
    by_cause = {m.truth.cause: m for m in s.matches}
    assert by_cause["overfill"].detected and by_cause["overfill"].delay_s == 15 * M
    assert by_cause["overfill"].level_found == "red" and by_cause["overfill"].level_ok
    assert by_cause["pressure_loss"].detected and by_cause["pressure_loss"].delay_s == 74 * M
    assert not by_cause["pressure_loss"].level_ok
    assert not by_cause["bag_break"].detected and by_cause["bag_break"].delay_s is None
    assert s.recall == pytest.approx(2 / 3)
    assert s.level_accuracy == pytest.approx(1 / 2)
    assert (s.warnings, s.matched_warnings, s.false_warnings) == (6, 3, 3)
    assert s.precision == pytest.approx(0.5)
    assert s.false_per_site_day == pytest.approx(3 / 4.0)
    assert s.max_per_10min == 3                    # 75, 80 and the TF2 one at 75
    # outside the grace it is missed
    late = score(TRUTH[1:2], [w("GP1", "pressure_loss", 165 + 31)], site_days=1.0, grace_s=30 * M)
    assert late.recall == 0.0 and late.precision == 0.0 and late.false_warnings == 1


def test_scorer_empty_inputs():
    s = score([], [], site_days=3.0)
    assert s.recall is None and s.precision is None and s.level_accuracy is None
    assert s.false_per_site_day == 0.0 and s.max_per_10min == 0
    d = s.as_dict()
    assert d["incidents"] == [] and d["delay_s"] == {"mean": None, "max": None}


def test_max_in_any_ten_minutes():
    assert max_in_window([]) == 0
    assert max_in_window([0, 599, 600]) == 2             # [t, t + 600) windows
    assert max_in_window([m * M for m in (0, 1, 2, 3, 30, 31, 32, 33, 34, 39.9)]) == 6
    assert max_in_window([5.0] * 11) == 11               # above the flood line


def test_offline_tank_overfill_is_detected():
    s, r = evaluate(load(SCENARIOS / "tank_overfill.yaml"))
    assert s.recall == 1.0
    (m,) = s.matches
    assert m.truth.cause == "overfill" and m.detected
    assert 0 <= m.delay_s <= m.truth.end_s - m.truth.start_s
    print(f"tank_overfill: overfill found at {m.level_found} (expected {m.truth.level}) "
          f"after {m.delay_s:.0f} s; precision {s.precision:.2f}, "
          f"{s.false_per_site_day:.3g} false per site-day")
    assert m.level_found in ("blue", "yellow", "orange", "red")
    assert r.readings > 20_000 and r.malformed == 0


def test_offline_gateway_outage_raises_data_interruption_when_every_instant_is_sent():
    s, _ = evaluate(load(SCENARIOS / "gateway_outage.yaml"), batch_readings=1)
    (m,) = s.matches
    assert m.detected and m.delay_s == 0.0 and m.level_found == "yellow"
    assert s.precision == 1.0 and s.false_warnings == 0


def test_offline_normal_day_false_warnings_per_site_day(tmp_path):
    out = tmp_path / "normal.json"
    res = CliRunner().invoke(main, ["evaluate", str(SCENARIOS / "normal_day.yaml"), "--offline",
                                    "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = orjson.loads(out.read_bytes())
    assert doc["incidents"] == [] and doc["recall"] is None
    assert doc["site_days"] == pytest.approx(3.0)
    assert doc["false_per_site_day"] == pytest.approx(doc["false_warnings"] / 3.0)
    # Reported, not asserted against the 1-per-100-site-days target (see the closing note).
    print(f"normal_day: {doc['false_warnings']} false warnings, "
          f"{doc['false_per_site_day']:.3g} per site-day, max {doc['max_per_10min']} in 10 min")
    assert "false per site-day" in res.output


def test_evaluate_refuses_without_offline():
    res = CliRunner().invoke(main, ["evaluate", str(SCENARIOS / "tank_overfill.yaml")])
    assert res.exit_code == 2 and "--offline" in res.output and "later task" in res.output
