"""Evaluation: the scorer on hand-made truth and warnings with known answers, ground truth
derived from the packs' policy, stored warnings read back as records, the shipped scenarios
offline against the issue's targets, and live runs through the real pipeline (a real
mosquitto and PostgreSQL) agreeing with the offline run."""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import psycopg
import pytest
import yaml
from click.testing import CliRunner

from hazardwatch.cli import main
from rules.packs import load_packs
from simulators.evaluate import (
    FLOOD_LINE,
    Truth,
    WarningRecord,
    evaluate,
    max_in_window,
    records_from_rows,
    score,
)
from simulators.models import Incident, make_site, simulate_site
from simulators.scenario import load, parse

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
M = 60.0
PACKS = load_packs()


def w(site: str, cause: str, at_min: float, level: str = "red") -> WarningRecord:
    return WarningRecord(site, cause, at_min * M, level)


TRUTH = [
    Truth("TF1", "overfill", "red", 60 * M, 100 * M, "tank_overfill"),
    Truth("GP1", "pressure_loss", "red", 120 * M, 165 * M, "gas_leak"),
    Truth("DS1", "bag_break", "red", 60 * M, 90 * M, "bag_break"),
]


# ---------------------------------------------------------------------------- the scorer


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
    assert [(x.site, x.cause, x.raised_s) for x in s.false_list] == [
        ("TF1", "overfill", 55 * M), ("DS1", "blockage", 70 * M), ("TF2", "overfill", 75 * M)]
    assert s.precision == pytest.approx(0.5)
    assert s.false_per_site_day == pytest.approx(3 / 4.0)
    assert s.max_per_10min == 3                    # 75, 80 and the TF2 one at 75
    # outside the grace it is missed
    late = score(TRUTH[1:2], [w("GP1", "pressure_loss", 165 + 31)], site_days=1.0, grace_s=30 * M)
    assert late.recall == 0.0 and late.precision == 0.0 and late.false_warnings == 1


def test_scorer_empty_inputs():
    s = score([], [], site_days=3.0, desks={"TF1": "370105"})
    assert s.recall is None and s.precision is None and s.level_accuracy is None
    assert s.false_per_site_day == 0.0 and s.max_per_10min == 0
    assert s.max_per_desk == {"370105": 0} and s.max_desk == 0
    d = s.as_dict()
    assert d["incidents"] == [] and d["delay_s"] == {"mean": None, "median": None, "max": None}


def test_max_in_any_ten_minutes():
    assert max_in_window([]) == 0
    assert max_in_window([0, 599, 600]) == 2             # [t, t + 600) windows
    assert max_in_window([m * M for m in (0, 1, 2, 3, 30, 31, 32, 33, 34, 39.9)]) == 6
    assert max_in_window([5.0] * 11) == 11               # above the flood line


def test_flood_measure_per_desk():
    """A desk is a region's duty officers: the EEMUA figure is per desk, the centre's is the sum."""
    desks = {"TF1": "370105", "GP2": "370105", "TF2": "370112", "DS1": "370114"}
    warnings = ([w("TF1", "overfill", m) for m in (0, 2, 4)] + [w("GP2", "pressure_loss", 5)]
                + [w("TF2", "toxic_gas", m) for m in (1, 3, 20)])
    s = score([], warnings, site_days=4.0, desks=desks)
    assert s.max_per_desk == {"370105": 4, "370112": 2, "370114": 0}
    assert s.max_desk == 4 and s.max_per_10min == 6
    assert score([], warnings, site_days=4.0).max_per_desk == {"centre": 6}


# ---------------------------------------------------------------------------- stored warnings


def test_records_from_stored_rows_split_activations_and_keep_their_levels():
    base = 1_700_000_000.0
    ws = [(7, "TF1", "overfill", base + 600), (8, "GP1", "pressure_loss", base + 900)]
    alarms = [   # warning, raised, cleared, name (event times)
        (7, base + 600, base + 700, "TK101.LT1:h"), (7, base + 650, base + 720, "TK101.LT2:h"),
        (7, base + 1500, None, "TK101.LT1:h"),                  # after both cleared: again
        (8, base + 900, None, "P1N02.PT:l"), (8, base + 930, base + 990, "P1N01.PT:l")]
    events = [(7, "raised", 2), (7, "alarm_raised", 2), (8, "raised", 2), (7, "level_up", 3),
              (7, "alarm_cleared", 3), (7, "cleared", 3), (8, "level_up", 4),
              (7, "reactivated", 3), (7, "acknowledged", None)]
    recs = records_from_rows(ws, alarms, events, base)
    assert [(r.site, r.raised_s, r.level, r.cleared_s) for r in recs] == [
        ("TF1", 600, "orange", 720), ("GP1", 900, "red", None), ("TF1", 1500, "orange", None)]
    assert recs[0].alarms == ["TK101.LT1:h", "TK101.LT2:h"] and recs[2].alarms == ["TK101.LT1:h"]
    # more activations than alarm groups (alarms out of step): the count still holds
    odd = records_from_rows(ws[:1], alarms[:1], [(7, "raised", 1), (7, "reactivated", 2)], base)
    assert [(r.raised_s, r.level) for r in odd] == [(600, "blue"), (600, "yellow")]


# ---------------------------------------------------------------------------- ground truth


def _scenario(**doc):
    base = {"name": "t", "seed": 3, "start": "2024-06-03T08:00:00+08:00", "duration": "1d",
            "fleet": {"enterprises": 1, "major_hazard": 1, "gas_pipeline": 1, "dust_explosion": 1}}
    return parse({**base, **doc})


def _truth(sc):
    return [(t.site, t.cause, t.level, t.source, t.start_s, t.end_s) for t in sc.truth()]


def test_truth_of_faults_follows_what_the_packs_can_see():
    sc = _scenario(faults=[
        {"at": "1h", "site": "DS1", "kind": "dropout", "sensor": "DC1.TT", "duration": "5m"},
        {"at": "2h", "site": "DS1", "kind": "dropout", "sensor": "DC1.TT", "duration": "50s"},
        {"at": "3h", "site": "TF1", "kind": "stuck", "sensor": "TK101.TT", "duration": "5h"},
        {"at": "4h", "site": "TF1", "kind": "clock_skew", "gateway": "dcs", "duration": "1h",
         "offset_s": 90},
        {"at": "4h", "site": "GP1", "kind": "clock_skew", "gateway": "nbiot", "duration": "1h",
         "offset_s": 90},
        {"at": "6h", "site": "GP1", "kind": "clock_skew", "gateway": "scada", "duration": "1h",
         "offset_s": -70},
        {"at": "9h", "site": "GP1", "kind": "gateway_offline", "gateway": "nbiot", "duration": "10m"},
        {"at": "10h", "site": "DS1", "kind": "gateway_offline", "gateway": "plc", "duration": "2h"},
        {"at": "13h", "site": "TF1", "kind": "spike", "sensor": "TK101.PT", "duration": "10s"},
    ])
    assert _truth(sc) == [
        # 5 min silence > 6 x 10 s no-data time: blue; 50 s is too short to see
        ("DS1", "data_interruption", "blue", "dropout", 3600, 3900),
        # a clock 90 s ahead steps back at the skew's end: 8 sensors at 10 s go silent
        # (3 sources agree: yellow); the 30-s methane detectors' 180 s is longer than 90 s
        ("TF1", "data_interruption", "yellow", "clock_skew", 5 * 3600, 5 * 3600 + 90),
        # a clock 70 s behind steps back at the skew's start: 4 scada sensors at 10 s
        ("GP1", "data_interruption", "yellow", "clock_skew", 6 * 3600, 6 * 3600 + 70),
        ("GP1", "data_interruption", "yellow", "gateway_offline", 9 * 3600, 9 * 3600 + 600),
        # offline for longer than the cause's duration window (1 h): one level up
        ("DS1", "data_interruption", "orange", "gateway_offline", 10 * 3600, 12 * 3600),
    ]
    # the 6-h flat-line window of tank temperature: 5 h frozen is never seen
    sc2 = _scenario(faults=[{"at": "1h", "site": "TF1", "kind": "stuck", "sensor": "TK101.TT",
                             "duration": "8h"}])
    assert _truth(sc2) == [("TF1", "sensor_fault", "blue", "stuck", 3600, 9 * 3600)]


def test_truth_of_incidents_follows_duration_and_lists_consequences():
    sc = _scenario(incidents=[
        {"at": "1h", "site": "DS1", "kind": "hopper_over_temperature", "duration": "30m"},
        {"at": "4h", "site": "DS1", "kind": "hopper_over_temperature", "duration": "10m", "sparks": 0},
        {"at": "7h", "site": "DS1", "kind": "blockage", "duration": "20m"},
        {"at": "9h", "site": "DS1", "kind": "blockage", "duration": "40m"},
        {"at": "12h", "site": "TF1", "kind": "toxic_release", "duration": "20m"},
        {"at": "14h", "site": "TF1", "kind": "toxic_release", "duration": "45m"},
    ])
    assert [(t[0], t[1], t[2], t[4]) for t in _truth(sc)] == [
        ("DS1", "hopper_over_temperature", "red", 3600),   # hot for 30 min > the 15-min window
        ("DS1", "sparks", "yellow", 3600),                 # embers reach the spark detector
        ("DS1", "hopper_over_temperature", "orange", 4 * 3600),   # 10 min; no sparks
        ("DS1", "blockage", "orange", 7 * 3600),
        ("DS1", "blockage", "red", 9 * 3600),              # 40 min > the 30-min window
        ("TF1", "toxic_gas", "orange", 12 * 3600),
        ("TF1", "toxic_gas", "red", 14 * 3600),
    ]


def test_models_behind_the_truth():
    """The model fixes the evaluation rests on: an overfill is pumped back at a transfer
    pump's rate (no 'sudden level loss'), a cleared blockage comes down slower than a torn
    bag, a smouldering hopper sends exactly `sparks` embers to the detector."""
    tf, ds = make_site("major_hazard", 1), make_site("dust_explosion", 1)
    inc = Incident("tank_overfill", 3600, 2400, {"tank": 1})
    t, v = simulate_site(tf, 5, 0, 6 * 3600, tod0=8 * 3600, incidents=[inc])["TK101.LT1"]
    after = t >= 3600 + 2400
    fall_per_h = -np.diff(v[after]) / np.diff(t[after]) * 3600
    k = 30                                             # 5-min differences: above the noise
    fall5 = -(v[after][k:] - v[after][:-k]) / (t[after][k:] - t[after][:-k]) * 3600
    assert fall5.max() < 3.5 and v[after].max() > 18   # 3 m/h (+ noise) from the peak
    assert np.median(fall_per_h[:300]) > 0             # and it does come down
    lim = 0.1 * 3000                                   # the pack's rate_fall for ΔP, Pa/min
    inc = Incident("blockage", 3600, 2400, {})
    t, v = simulate_site(ds, 5, 0, 3 * 3600, tod0=8 * 3600, incidents=[inc])["DC1.DPT"]
    rec = (t >= 6000) & (t < 6000 + 1200)
    slope = -np.polyfit(t[rec], v[rec], 1)[0] * 60
    assert 0 < slope < lim / 3
    for n in (0, 3, 6):
        inc = Incident("hopper_over_temperature", 3600, 1800, {"sparks": n})
        _, sp = simulate_site(ds, 5, 0, 3 * 3600, tod0=8 * 3600, incidents=[inc])["DC1.SPARK"]
        assert sp.sum() == n and sp.max() <= 1


# ---------------------------------------------------------------------------- shipped scenarios

INCIDENT_SCENARIOS = ["tank_overfill", "toxic_release", "gas_pipeline_leak", "dust_bag_break",
                      "gateway_outage", "stuck_sensor", "alarm_flood_day"]


def test_every_shipped_scenario_is_evaluated_here():
    shipped = {p.stem for p in SCENARIOS.glob("*.yaml")} - {"demo"}
    assert shipped == {*INCIDENT_SCENARIOS, "normal_day", "normal_fleet"}


@functools.cache
def _offline(name: str):
    """Each shipped scenario evaluated once per session (the flood day takes ~10 s)."""
    return evaluate(load(SCENARIOS / f"{name}.yaml"))


def _report(name, s, r):
    d = s.delays
    print(f"{name}: recall {s.recall} precision {s.precision} level accuracy {s.level_accuracy} "
          f"delay median {np.median(d) if d else None} false {s.false_warnings} "
          f"per desk {s.max_per_desk} readings {r.readings}")


@pytest.mark.parametrize("name", INCIDENT_SCENARIOS)
def test_shipped_scenario_detects_every_incident_at_its_level(name):
    s, r = _offline(name)
    _report(name, s, r)
    assert s.matches
    missed = [(m.truth.site, m.truth.cause, m.level_found, m.truth.level)
              for m in s.matches if not (m.detected and m.level_ok)]
    assert missed == [] and s.recall == 1.0 and s.level_accuracy == 1.0
    assert s.max_desk <= FLOOD_LINE
    for m in s.matches:
        assert 0 <= m.delay_s <= m.truth.end_s - m.truth.start_s + 1800


def test_flood_day_keeps_every_desk_under_the_flood_line():
    sc = load(SCENARIOS / "alarm_flood_day.yaml")
    s, r = _offline("alarm_flood_day")
    _report("alarm_flood_day", s, r)
    regions = {e.region for e in sc.enterprises}
    assert set(s.max_per_desk) == regions and len(regions) == 3
    assert 0 < max(s.max_per_desk.values()) <= FLOOD_LINE
    assert s.recall == 1.0 and len(s.matches) >= 8
    assert r.malformed > 0                                  # its malformed burst is refused


def test_offline_normal_day_json(tmp_path):
    out = tmp_path / "normal.json"
    res = CliRunner().invoke(main, ["evaluate", str(SCENARIOS / "normal_day.yaml"), "--offline",
                                    "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = orjson.loads(out.read_bytes())
    assert doc["mode"] == "offline" and doc["incidents"] == [] and doc["recall"] is None
    assert doc["site_days"] == pytest.approx(3.0)
    assert doc["false_per_site_day"] == pytest.approx(doc["false_warnings"] / 3.0)
    assert set(doc["max_per_desk_10min"]) == {"370105", "370112", "370114"}
    assert doc["false_warnings"] == len(doc["false"])
    assert "false per site-day" in res.output and doc["run_s"] > 0


@pytest.mark.parametrize("seed", [38, 56, 98, 99, 114, 119, 127])
def test_cold_start_of_a_dust_collector_projects_no_blockage(seed):
    """A trend fit over less than one pulse-cleaning cycle (7-10 min) once saw the rising half
    of the ΔP saw-tooth 5 min after start and projected HH within the lead: these seeds (of
    the first 160 one-hour runs, 7 did) each raised a false `blockage`. A projection now
    waits for a full time constant of readings."""
    doc = {"name": "cold", "seed": seed, "start": "2024-06-03T10:00:00+08:00", "duration": "1h",
           "fleet": {"enterprises": 2, "major_hazard": 1, "dust_explosion": 1}}
    s, _ = evaluate(parse(doc))
    assert [(w.site, w.cause) for w in s.false_list] == []


@pytest.mark.slow
def test_normal_fleet_stays_under_one_false_warning_per_hundred_site_days():
    s, r = evaluate(load(SCENARIOS / "normal_fleet.yaml"))
    _report("normal_fleet", s, r)
    for f in s.false_list:
        print("  false:", f.site, f.cause, f.level, f"{f.raised_s / 3600:.2f} h", f.alarms)
    assert s.site_days >= 100 and s.matches == []
    assert s.false_per_site_day <= 0.01
    assert r.readings > 10_000_000


def test_evaluate_option_mistakes_are_refused():
    res = CliRunner().invoke(main, ["evaluate", "tank_overfill", "--offline", "--speed", "60"])
    assert res.exit_code == 2 and "--speed" in res.output
    res = CliRunner().invoke(main, ["evaluate", "tank_overfill", "--batch-readings", "1"])
    assert res.exit_code == 2 and "--offline" in res.output
    res = CliRunner().invoke(main, ["evaluate", "no_such_scenario", "--offline"])
    assert res.exit_code == 1 and "no_such_scenario" in res.output


# ---------------------------------------------------------------------------- live


def _live(broker, tmp_path, doc: dict, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    from dbutil import SERVER
    from harness import HAZARDWATCH

    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    password = secrets.token_hex(8)
    for ent, gw, _ in load(path).gateways():
        broker.add_gateway(ent, gw, password=password)
    out = tmp_path / f"{doc['name']}.json"
    env = {**os.environ, "HW_DATABASE_URL": SERVER, "HW_MQTT__HOST": broker.host,
           "HW_MQTT__PORT": str(broker.port), "HW_MQTT__USERNAME": broker.collector.username,
           "HW_MQTT__PASSWORD": broker.collector.password}
    proc = subprocess.run([HAZARDWATCH, "evaluate", str(path), "--password", password, "--json",
                           str(out), *extra], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, orjson.loads(out.read_bytes())


@pytest.mark.slow
def test_live_run_through_the_pipeline_matches_offline(project_broker, tmp_path):
    """An hour with an overfill, a gateway losing its link and a sensor dropping out, at 240×
    through mosquitto, the collector, PostgreSQL and the rule engine: the warnings stored
    detect the same incidents at the same levels as the offline run."""
    from dbutil import fresh_database

    doc = {"name": f"live_{uuid.uuid4().hex[:6]}", "seed": int(time.time() * 1000) % 1_000_000,
           "start": "2024-06-03T10:00:00+08:00", "duration": "1h", "speed": 240,
           "fleet": {"enterprises": 2, "major_hazard": 1, "dust_explosion": 1},
           "incidents": [{"at": "10m", "site": "TF1", "kind": "tank_overfill", "duration": "20m",
                          "tank": 1}],
           "faults": [{"at": "35m", "site": "TF1", "kind": "gateway_offline", "gateway": "gds",
                       "duration": "5m"},
                      {"at": "40m", "site": "DS1", "kind": "dropout", "sensor": "DC1.TT",
                       "duration": "5m"}]}
    offline, _ = evaluate(parse(doc))
    assert offline.recall == 1.0 and len(offline.matches) == 3
    with fresh_database("hw_test_eval", migrated=False) as dsn:
        proc, live = _live(project_broker, tmp_path, doc, "--database", dsn)
        print(proc.stderr[-2000:])
        assert live["mode"] == "live" and live["speed"] == 240
        assert live["stored_readings"] == live["expected_readings"] == live["published_readings"]
        assert live["notes"] == []
        found = {(i["site"], i["cause"], i["source"]): i for i in live["incidents"]}
        for m in offline.matches:
            i = found[(m.truth.site, m.truth.cause, m.truth.source)]
            assert i["detected"] and i["level_found"] == m.level_found, (i, m)
            # raise times are event times in both; processing-time ones (no_data) differ by
            # the tick granularity (one 60-s chunk offline, ticks every 60 s of scenario live)
            assert abs(i["delay_s"] - m.delay_s) <= 120, (i, m)
        assert live["recall"] == 1.0 and live["false_warnings"] == offline.false_warnings
        with psycopg.connect(dsn) as conn:
            stored = conn.execute(
                "SELECT st.code, w.cause, w.level, w.count FROM warnings w "
                "JOIN sites st ON st.id = w.site_id ORDER BY 1, 2").fetchall()
        # the incidents' warnings, and any the offline run could not explain (the seed varies)
        expected = {("DS1", "data_interruption"), ("TF1", "data_interruption"), ("TF1", "overfill")}
        expected |= {(w.site, w.cause) for w in offline.false_list}
        assert [(site, cause) for site, cause, _, _ in stored] == sorted(expected), doc["seed"]
        assert sum(n for *_, n in stored) == live["warnings"]
        assert dict(((s, c), lv) for s, c, lv, _ in stored)[("TF1", "overfill")] == 4   # red


@pytest.mark.slow
def test_live_run_drops_its_throwaway_database(project_broker, tmp_path):
    from dbutil import admin_dsn

    name = f"drop_{uuid.uuid4().hex[:6]}"
    doc = {"name": name, "seed": int(time.time() * 1000) % 1_000_000, "duration": "20m",
           "fleet": {"enterprises": 1, "major_hazard": 1},
           "faults": [{"at": "5m", "site": "TF1", "kind": "gateway_offline", "gateway": "gds",
                       "duration": "5m"}]}
    _, live = _live(project_broker, tmp_path, doc, "--speed", "240")
    assert live["database"] is None and live["recall"] == 1.0 and live["false_warnings"] == 0
    with psycopg.connect(admin_dsn()) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (f"hw_eval_{name}%",)).fetchall()
    assert left == []
