"""Simulators: site models inside their limits on a normal day, incident signatures,
determinism, scenario files → a valid registry and ground truth, faults, and a short scenario
published to a real broker and stored by `hazardwatch serve`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import psycopg
import pytest

from hazardwatch.registry import validate
from rules.packs import SensorSpec, effective_rules, load_packs
from simulators.models import INCIDENTS, Incident, make_site, simulate_site
from simulators.scenario import load, parse, shift_base

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
SHIPPED = ["normal_day", "tank_overfill", "toxic_release", "gas_pipeline_leak", "dust_bag_break",
           "gateway_outage", "stuck_sensor", "alarm_flood_day"]
DAY = 86400.0
PACKS = load_packs()


def rules_of(site, sensor):
    spec = SensorSpec(sensor.tag, sensor.kind, sensor.unit, sensor.range[0], sensor.range[1],
                      sensor.limits.get("ll"), sensor.limits.get("l"), sensor.limits.get("h"),
                      sensor.limits.get("hh"), sensor.interval_s)
    return effective_rules(PACKS[site.kind], spec)[0]


def window(series, a, b):
    t, v = series
    return v[(t >= a) & (t < b)]


@pytest.mark.parametrize("kind", ["major_hazard", "gas_pipeline", "dust_explosion"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_normal_day_stays_inside_effective_limits(kind, seed):
    site = make_site(kind, 1)
    data = simulate_site(site, seed, 0, DAY, tod0=0)
    for s in site.sensors:
        r = rules_of(site, s)
        t, v = data[s.tag]
        assert t.size == int(DAY / s.interval_s), s.tag
        assert np.all(np.isfinite(v)), s.tag
        for name in ("h", "hh"):
            lim = getattr(r, name)
            if np.isfinite(lim):
                assert v.max() < lim, f"{s.tag} reaches {v.max()} >= {name} {lim}"
        for name in ("l", "ll"):
            lim = getattr(r, name)
            if np.isfinite(lim):
                assert v.min() > lim, f"{s.tag} falls to {v.min()} <= {name} {lim}"
        if np.isfinite(r.rate_fall_per_min):   # normal movements stay below the rate check
            k = max(2, int(r.rate_tau_s / s.interval_s))       # slope over the pack's rate_tau
            fall = -(v[k:] - v[:-k]) / (t[k:] - t[:-k]) * 60
            assert fall.max() < r.rate_fall_per_min, f"{s.tag} falls {fall.max()}/min"


def test_daily_cycles_and_physics():
    tf = make_site("major_hazard", 1)
    d = simulate_site(tf, 9, 0, DAY, tod0=0)
    t, temp = d["TK101.TT"]
    hours = t / 3600
    assert temp[(hours > 13) & (hours < 17)].mean() > temp[(hours > 3) & (hours < 7)].mean() + 5
    assert np.corrcoef(temp, d["TK101.PT"][1])[0, 1] > 0.5          # pressure follows temperature
    lt1, lt2 = d["TK101.LT1"][1], d["TK101.LT2"][1]
    assert np.abs(lt1 - lt2).max() < 0.05                              # redundant instruments agree
    assert lt1.max() - lt1.min() > 3                                   # fill/drain cycles
    assert d["GT101.LEL"][1].mean() < 1 and d["AT101.H2S"][1].mean() < 1
    gp = simulate_site(make_site("gas_pipeline", 1), 9, 0, DAY, tod0=0)
    th, p = gp["P1N02.PT"][0] / 3600, gp["P1N02.PT"][1]
    assert p[(th > 7) & (th < 8)].mean() < p[(th > 2) & (th < 4)].mean() - 0.02  # morning demand
    assert gp["P1RS01.FT"][1][(th > 7) & (th < 8)].mean() > 2 * gp["P1RS01.FT"][1][(th > 2) & (th < 4)].mean()
    ds = simulate_site(make_site("dust_explosion", 1), 9, 0, 3600, tod0=0)
    dp = ds["DC1.DPT"][1]
    cleaning = (dp[12:] - dp[:-12]) < -120                              # pulse cleaning passes
    assert 5 <= np.sum(cleaning[1:] & ~cleaning[:-1]) <= 10


def test_same_seed_same_readings_and_other_seed_differs():
    for kind in ("major_hazard", "gas_pipeline", "dust_explosion"):
        site = make_site(kind, 2)
        a = simulate_site(site, 42, 0, 7200, tod0=3600)
        b = simulate_site(site, 42, 0, 7200, tod0=3600)
        c = simulate_site(site, 43, 0, 7200, tod0=3600)
        part = simulate_site(site, 42, 3600, 7200, tod0=3600)   # a sub-range is the same values
        for tag in a:
            assert np.array_equal(a[tag][0], b[tag][0]) and np.array_equal(a[tag][1], b[tag][1])
            assert np.array_equal(window(a[tag], 3600, 7200), part[tag][1])
        assert any(not np.array_equal(a[tag][1], c[tag][1]) for tag in a)


def _incident(kind, at=3600.0, duration=1800.0, **params):
    site = make_site(INCIDENTS[kind][0], 1)
    inc = Incident(kind, at, duration, params)
    return site, simulate_site(site, 5, 0, at + duration + 3600, tod0=8 * 3600, incidents=[inc])


def test_overfill_crosses_hh_on_both_instruments_in_its_window():
    site, d = _incident("tank_overfill", tank=1)
    for tag in ("TK101.LT1", "TK101.LT2"):
        assert window(d[tag], 0, 3600).max() < 16
        assert window(d[tag], 3600, 5400).max() > 18
    assert window(d["TK102.LT1"], 0, 9000).max() < 16                  # the other tank is calm


def test_toxic_release_crosses_hh():
    _, d = _incident("toxic_release", duration=1200)
    assert window(d["AT101.H2S"], 0, 3600).max() < 10
    assert window(d["AT101.H2S"], 3600, 4800).max() > 20


def test_gas_leak_drops_pressure_faster_than_demand_and_raises_methane():
    site, d = _incident("gas_leak")
    n2 = d["P1N02.PT"]
    assert window(n2, 3600, 5400).min() < 0.15 and window(d["P1N01.PT"], 3600, 5400).min() < 0.2
    r = rules_of(site, site.sensor("P1N02.PT"))
    t, v = n2
    sel = (t >= 3600) & (t < 4200)
    fall = -np.polyfit(t[sel], v[sel], 1)[0] * 60
    assert fall > r.rate_fall_per_min                                  # the pack's rate_fall fires
    assert window(d["P1VW01.CH4"], 3600, 5400).max() > 35
    assert window(d["P1VW02.CH4"], 3600, 5400).max() > 20
    assert window(d["P1VW01.CH4"], 0, 3600).max() < 5


def test_bag_break_drops_dp_and_raises_dust():
    _, d = _incident("bag_break")
    assert window(d["DC1.DPT"], 3700, 5400).max() < 500                # ΔP down (below L)
    assert window(d["DC1.DUST"], 3700, 5400).min() > 20                # AND outlet dust up (HH)
    assert window(d["DC1.DPT"], 0, 3600).min() > 500


def test_blockage_raises_dp_and_hopper_overheats():
    _, d = _incident("blockage")
    assert window(d["DC1.DPT"], 3600, 5400).max() > 2200
    _, d = _incident("hopper_over_temperature")
    assert window(d["DC1.TT"], 3600, 5400).max() > 80
    assert window(d["DC1.TT"], 0, 3600).max() < 70


@pytest.mark.parametrize("name", SHIPPED)
def test_scenario_files_expand_to_a_valid_registry_and_truth(name):
    sc = load(SCENARIOS / f"{name}.yaml")
    reg = validate(sc.registry())
    assert len(reg.enterprises) >= 1 and sum(len(e.sites) for e in reg.enterprises) == len(sc.sites)
    truth = sc.truth()
    for entry in truth:
        site = sc.site(entry.site)
        assert entry.cause in {c.name for c in PACKS[site.kind].causes}, entry
        assert entry.level in ("blue", "yellow", "orange", "red")
        assert 0 <= entry.start_s < entry.end_s
    if name == "normal_day":
        assert truth == []
    else:
        assert truth
    doc = orjson.loads(sc.truth_json(1_700_000_000.0))
    assert doc["entries"][0]["start_ms"] > 1_700_000_000_000 if truth else doc["entries"] == []


def test_messages_follow_the_native_contract_one_scan_a_message():
    sc = load(SCENARIOS / "tank_overfill.yaml")
    ent, gw, _ = sc.gateways()[0]
    msgs = sc.messages(ent, gw, 1_700_000_000.0)
    # each message holds the scans of under BATCH_SECONDS, so no reading waits for a batch
    # to fill: a small gateway's 8 tags every 10 s go out every 10 s, not every 70 s
    for m in msgs:
        stamps = [g["ts"] for g in orjson.loads(m.payload)]
        assert max(stamps) - min(stamps) < 1000 and m.readings <= 59
    gaps = np.diff([m.at for m in msgs])
    assert gaps.max() <= 10.0 + 1e-9
    groups = orjson.loads(msgs[0].payload)
    assert isinstance(groups, list) and set(groups[0]) == {"ts", "values"}
    assert groups[0]["ts"] == 1_700_000_000_000
    ts = [g["ts"] for m in msgs for g in orjson.loads(m.payload)]
    assert ts == sorted(ts)


def _faulty(kind, **extra):
    doc = {"seed": 3, "duration": "2h", "fleet": {"major_hazard": 1},
           "faults": [{"at": "30m", "site": "TF1", "kind": kind, "duration": "10m", **extra}]}
    return parse(doc)


def test_gateway_faults():
    base = 1_700_000_000.0
    sc = _faulty("gateway_offline", gateway="gds")
    gw = "tf1-gds"
    msgs = sc.messages(sc.enterprises[0].code, gw, base)
    actions = [(m.action, m.at) for m in msgs if m.action != "publish"]
    assert actions == [("drop", 1800.0), ("reconnect", 2400.0)]
    assert not [m for m in msgs if m.action == "publish" and 1800 <= m.at < 2400]
    assert [(t.cause, t.level) for t in sc.truth()] == [("data_interruption", "yellow")]

    clean = parse({"seed": 3, "duration": "2h", "fleet": {"major_hazard": 1}})
    n = len(clean.messages(clean.enterprises[0].code, gw, base))
    assert len(_faulty("duplicate", gateway="gds").messages(sc.enterprises[0].code, gw, base)) > n
    bad = _faulty("malformed", gateway="gds").messages(sc.enterprises[0].code, gw, base)
    assert any(m.readings == 0 and m.action == "publish" for m in bad)
    ooo = _faulty("out_of_order", gateway="gds").messages(sc.enterprises[0].code, gw, base)
    first = [orjson.loads(m.payload)[0]["ts"] for m in ooo]
    assert first != sorted(first)
    skew = _faulty("clock_skew", gateway="gds", offset_s=120).messages(sc.enterprises[0].code, gw, base)
    plain = clean.messages(clean.enterprises[0].code, gw, base)
    k = next(i for i, m in enumerate(plain) if m.at >= 1900)
    assert orjson.loads(skew[k].payload)[0]["ts"] - orjson.loads(plain[k].payload)[0]["ts"] == 120_000


def test_sensor_faults():
    clean = parse({"seed": 3, "duration": "2h", "fleet": {"major_hazard": 1}}).readings("TF1")
    stuck = _faulty("stuck", sensor="TK101.TT").readings("TF1")["TK101.TT"]
    assert np.unique(window(stuck, 1800, 2400)).size == 1
    assert np.array_equal(window(stuck, 0, 1800), window(clean["TK101.TT"], 0, 1800))
    drop = _faulty("dropout", sensor="TK101.TT").readings("TF1")["TK101.TT"]
    assert window(drop, 1800, 2400).size == 0 and drop[0].size == clean["TK101.TT"][0].size - 60
    spike = _faulty("spike", sensor="TK101.PT", size=3).readings("TF1")["TK101.PT"]
    assert np.abs(spike[1] - clean["TK101.PT"][1]).max() == pytest.approx(3, abs=0.01)
    drift = _faulty("drift", sensor="TK101.LT2", size=0.5).readings("TF1")["TK101.LT2"]
    diff = drift[1] - clean["TK101.LT2"][1]
    assert diff.max() > 0.45 and diff[:180].max() == 0
    noisy = _faulty("noise", sensor="TK101.TT", sigma=2).readings("TF1")["TK101.TT"]
    assert np.std(window(noisy, 1800, 2400) - window(clean["TK101.TT"], 1800, 2400)) > 1


def test_time_shift_never_stamps_the_future():
    now = 1_700_000_000.0
    for speed in (1, 10, 600):
        base = shift_base(7200, speed, now)
        for t in (0, 3600, 7199):
            assert base + t <= now + t / speed + 1e-6     # stamped no later than it is sent
    assert shift_base(7200, 1, now) == now


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_short_scenario_published_live_is_stored(project_broker, tmp_path):
    from dbutil import fresh_database
    from harness import Site, wait_for

    from simulators.publish import publish

    sc = parse({"name": "e2e", "seed": int(time.time()) % 100000, "duration": "10m",
                "fleet": {"enterprises": 1, "dust_explosion": 1},
                "faults": [{"at": "5m", "site": "DS1", "kind": "duplicate", "duration": "1m"}]})
    reg = tmp_path / "registry.yaml"
    reg.write_text(sc.registry_yaml(), encoding="utf-8")
    ent = sc.enterprises[0].code
    gws = [(e, g) for e, g, _ in sc.gateways()]
    with fresh_database("hw_test_sim") as dsn:
        site = Site(dsn, project_broker, tmp_path, f"hw-ingest-sim-{time.monotonic_ns()}", reg, gws)
        site.serve.start()
        try:
            summary = publish(sc, host=project_broker.host, port=project_broker.port,
                              passwords=lambda e, g: site.passwords[f"{e}/{g}"], speed=600)
            expected = sum(t.size for t, _ in sc.readings("DS1").values())
            assert summary.readings > expected and summary.messages > 0   # + the duplicates
            assert summary.gateways[f"{ent}/ds1-plc"].messages == summary.messages

            def stored():
                with psycopg.connect(dsn) as conn:
                    return conn.execute("SELECT count(*) FROM readings").fetchone()[0]

            wait_for(lambda: stored() >= expected, timeout=30, what=f"{expected} readings stored")
            assert stored() == expected                                      # duplicates stored once
            with psycopg.connect(dsn) as conn:
                lo, hi = conn.execute("SELECT extract(epoch FROM min(ts)), extract(epoch FROM max(ts)) "
                                      "FROM readings").fetchone()
            assert float(hi) <= time.time() + 1 and float(hi) - float(lo) > 590   # shifted to now
        finally:
            site.serve.stop()
