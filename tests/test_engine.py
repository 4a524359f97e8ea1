"""The engine with the shipped rule packs: conditions → one graded warning per site and cause.

Pure computation: no database, no broker (those are in test_rules_e2e.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.engine import Alarm, Changes, Engine, Episode, SensorRow
from rules.model import Cond, Level, WarningKind
from rules.packs import SensorSpec, load_packs

PACKS = load_packs()
T0 = 1_800_000_000.0  # event time origin (2027-01-15)


def level_sensor(tag: str) -> SensorSpec:
    return SensorSpec(tag=tag, kind="level", unit="m", range_lo=0.0, range_hi=20.0, ll=0.5, l=1.0,
                      h=16.0, hh=18.0, interval_s=10.0, rules={})


def gas_sensor(tag: str) -> SensorSpec:
    return SensorSpec(tag=tag, kind="gas_lel", unit="%LEL", range_lo=0.0, range_hi=100.0, ll=None,
                      l=None, h=None, hh=None, interval_s=5.0, rules={})  # pack: H 25, HH 50


# sensor id → (gateway, spec); one major hazard site of grade 2, two gateways
SENSORS = {
    1: (1, level_sensor("TK1.LT1")),
    2: (1, level_sensor("TK1.LT2")),
    3: (2, gas_sensor("GT1.LEL")),
    4: (2, gas_sensor("GT2.LEL")),
    5: (1, level_sensor("TK2.LT1")),
}


def engine(grade: int = 2) -> Engine:
    e = Engine(PACKS)
    e.load([SensorRow(sid, 10, gw, "major_hazard", grade, spec) for sid, (gw, spec) in SENSORS.items()])
    return e


def feed(e: Engine, points: list[tuple[int, float, float]], rx: float | None = None,
         quality: int = 0) -> Changes:
    """points: (sensor id, seconds after T0, value)."""
    sid = np.array([p[0] for p in points], dtype=np.int64)
    ts = np.array([T0 + p[1] for p in points])
    value = np.array([p[2] for p in points], dtype=np.float64)
    q = np.full(len(points), quality, dtype=np.int16)
    return e.readings(sid, ts, value, q, T0 + max(p[1] for p in points) if rx is None else rx)


def episode(e: Engine, cause: str) -> Episode:
    return e.episodes[(10, cause)]


def active_conds(ep: Episode) -> set[tuple[object, str]]:
    return {(a.source, str(a.cond)) for a in ep.alarms.values()}


def test_one_instrument_over_h_is_yellow_two_of_the_same_tank_agreeing_is_orange():
    e = engine()
    ch = feed(e, [(1, 0, 16.5)])
    assert not ch  # on-delay (10 s in the pack) not yet held
    ch = feed(e, [(1, 10, 16.6)])
    assert [(a.sensor_id, a.cond) for a in ch.raised] == [(1, Cond.H)]
    ep = episode(e, "overfill")
    assert ep.level == Level.YELLOW and ep.active and ep.cause.kind == WarningKind.PROCESS
    feed(e, [(2, 20, 16.4), (2, 30, 16.5)])
    assert ep.level == Level.ORANGE                  # GB 17681: two level instruments agree
    assert active_conds(ep) == {(1, "h"), (2, "h")}
    assert len([k for k in e.episodes if k[1] == "overfill"]) == 1


def test_instruments_of_different_tanks_do_not_agree():
    e = engine()
    feed(e, [(1, 0, 16.5), (5, 0, 16.5), (1, 10, 16.5), (5, 10, 16.5)])
    ep = episode(e, "overfill")
    assert active_conds(ep) == {(1, "h"), (5, "h")}
    assert ep.level == Level.YELLOW                  # agreement is per tank (equipment)


def test_two_gas_detectors_over_25_percent_lel_raise_the_level():
    e = engine()
    feed(e, [(3, 0, 30.0), (3, 5, 31.0)])
    ep = episode(e, "combustible_gas")
    assert ep.level == Level.YELLOW
    feed(e, [(4, 6, 28.0), (4, 11, 29.0)])
    assert ep.level == Level.ORANGE                  # GB/T 50493: two detectors agree
    feed(e, [(3, 20, 55.0), (3, 25, 56.0)])
    assert ep.level == Level.RED                     # HH (50 %LEL) plus agreement


def test_hazard_source_grade_shifts_the_level():
    for grade, expected in ((1, Level.ORANGE), (2, Level.YELLOW), (4, Level.BLUE)):
        e = engine(grade)
        feed(e, [(3, 0, 30.0), (3, 5, 31.0)])
        assert episode(e, "combustible_gas").level == expected, grade


def test_level_never_falls_and_a_repeat_counts_in_the_same_episode():
    e = engine()
    feed(e, [(1, 0, 18.5), (1, 10, 18.6)])
    ep = episode(e, "overfill")
    assert ep.level == Level.ORANGE and ep.count == 1
    ch = feed(e, [(1, t, 10.0) for t in range(20, 100, 10)])   # off-delay 30 s in the pack
    assert {a.cond for a in ch.cleared} == {Cond.HH, Cond.H}
    assert not ep.active and ep.level == Level.ORANGE and ep.cleared_at == T0 + 50
    feed(e, [(1, 100, 16.5), (1, 110, 16.5)])                  # H again: yellow on its own
    assert episode(e, "overfill") is ep
    assert ep.active and ep.count == 2 and ep.level == Level.ORANGE and ep.cleared_at is None


def test_duration_raises_the_level_on_the_processing_time_tick():
    e = engine()
    feed(e, [(1, 0, 16.5), (1, 10, 16.5)], rx=1000.0)
    ep = episode(e, "overfill")
    assert ep.level == Level.YELLOW
    e.tick(1000.0 + 1799)
    assert ep.level == Level.YELLOW
    ch = e.tick(1000.0 + 1801)                     # active 30 min (pack duration.s 1800)
    assert ep.level == Level.ORANGE and id(ep) in ch.dirty


def test_gateway_offline_is_one_interruption_warning_and_silences_its_sensors_no_data():
    e = engine()
    e.tick(T0)                                      # clocks start
    ch = e.gateway_state(1, False, T0 + 1, T0 + 1)
    ep = episode(e, "data_interruption")
    assert ep.cause.kind == WarningKind.DATA_INTERRUPTION and ep.level == Level.YELLOW
    assert [(a.gateway_id, a.cond) for a in ch.raised] == [(1, Cond.OFFLINE)]
    ch = e.tick(T0 + 3600)                          # everybody silent for an hour
    no_data = sorted(a.sensor_id for a in ch.raised if a.cond == Cond.NO_DATA)
    assert no_data == [3, 4]                        # gateway 2's sensors only
    assert "overfill" not in {k[1] for k in e.episodes}  # never mistaken for process danger
    ch = e.gateway_state(1, True, T0 + 3700, T0 + 3700)
    assert [(a.gateway_id, a.cond) for a in ch.cleared] == [(1, Cond.OFFLINE)]
    assert e.gateway_state(1, True, T0 + 3701, T0 + 3701).raised == []  # repeated state: no-op


def test_a_reading_clears_no_data():
    e = engine()
    e.tick(T0)
    e.tick(T0 + 3600)
    ep = episode(e, "data_interruption")
    assert (3, "no_data") in active_conds(ep)
    ch = feed(e, [(3, 3601, 0.0)], rx=T0 + 3601)
    assert [(a.sensor_id, a.cond) for a in ch.cleared] == [(3, Cond.NO_DATA)]


def test_sensor_fault_is_its_own_warning_not_process_danger():
    e = engine()
    # 25 m on a 0..20 m gauge: ingest stores it with quality bad; it is a fault, not overfill
    ch = feed(e, [(1, 0, 25.0), (1, 10, 25.0)], quality=2)
    assert [(a.sensor_id, a.cond) for a in ch.raised] == [(1, Cond.OUT_OF_RANGE)]
    ep = episode(e, "sensor_fault")
    assert ep.cause.kind == WarningKind.SENSOR_FAULT
    assert "overfill" not in {k[1] for k in e.episodes}
    ch = feed(e, [(1, 20, 12.0)])
    assert [(a.sensor_id, a.cond) for a in ch.cleared] == [(1, Cond.OUT_OF_RANGE)]
    assert not ep.active


def test_peak_follows_the_readings_while_the_alarm_is_active():
    e = engine()
    feed(e, [(1, 0, 16.5), (1, 10, 16.6)])
    ch = feed(e, [(1, 20, 17.2), (1, 30, 16.9)])
    ep = episode(e, "overfill")
    (alarm,) = ch.peaked
    assert alarm.cond == Cond.H and alarm.peak_value == 17.2
    assert ep.peak_value == 17.2 and ep.peak_sensor_id == 1 and id(ep) in ch.dirty
    assert not feed(e, [(1, 40, 16.8)]).peaked     # lower than the peak: nothing to write


def test_restart_adopts_open_alarms_without_raising_them_again():
    before = engine()
    feed(before, [(1, 0, 16.5), (1, 10, 16.6)])
    old = episode(before, "overfill")
    old.id = 41
    (old_alarm,) = old.alarms.values()
    old_alarm.id = 99

    after = engine()                                # a new process: state from the "database"
    ep = Episode(10, 2, old.cause, opened_at=old.opened_at, active_since_rx=old.opened_at,
                 level=old.level, active=True, id=41)
    ep.alarms[(1, Cond.H)] = Alarm(ep, Cond.H, old_alarm.raised_at, 16.6, sensor_id=1, id=99)
    after.adopt(ep)
    # history replayed without emitting, then flags aligned with the adopted alarms
    feed_quiet = after.readings(np.array([1, 1]), np.array([T0, T0 + 10]), np.array([16.5, 16.6]),
                                np.zeros(2, dtype=np.int16), T0 + 10, emit=False)
    assert not feed_quiet
    after.align()
    ch = feed(after, [(1, 20, 16.7), (1, 30, 16.8)])
    assert ch.raised == []                          # not raised a second time
    ch = feed(after, [(1, t, 10.0) for t in range(40, 90, 10)])
    assert [(a.id, a.cond) for a in ch.cleared] == [(99, Cond.H)]
    assert not ep.active and ep.id == 41


def test_unknown_sensor_ids_are_ignored():
    e = engine()
    ch = e.readings(np.array([777, 1]), np.array([T0, T0]), np.array([99.0, 5.0]),
                    np.zeros(2, dtype=np.int16), T0)
    assert not ch


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(3, 4), st.floats(0, 100, allow_nan=False),
                          st.sampled_from([0, 0, 0, 2])), min_size=1, max_size=120),
       st.lists(st.integers(0, 4000), max_size=4))
def test_levels_never_fall_within_an_episode_and_alarms_alternate(points, ticks):
    """Any sequence of gas readings (and ticks): a warning's level only rises while it stays
    open, and per source and condition raises and clears alternate."""
    e = engine()
    seen: dict[int, Level] = {}
    active: dict[tuple, bool] = {}
    tick_at = sorted(ticks)
    for i, (sid, value, q) in enumerate(points):
        ch = feed(e, [(sid, 5.0 * i, value)], quality=q)
        while tick_at and tick_at[0] <= 5.0 * i:
            ch.merge(e.tick(T0 + tick_at.pop(0)))
        for alarm in ch.raised:
            key = (alarm.warning.cause.name, alarm.source, alarm.cond)
            assert not active.get(key), key
            active[key] = True
        for alarm in ch.cleared:
            key = (alarm.warning.cause.name, alarm.source, alarm.cond)
            assert active.get(key), key
            active[key] = False
        for ep in e.episodes.values():
            assert ep.level >= seen.get(id(ep), Level.BLUE)
            seen[id(ep)] = ep.level


def overfill(ch: Changes) -> list[str]:
    """Actions on the overfill warning (a fast drop also opens low_level: rate of fall)."""
    return [action for ep, action, _ in ch.events if ep.cause.name == "overfill"]


def test_changes_say_what_happened_for_the_audit_trail():
    e = engine()
    ch = feed(e, [(1, 0, 16.5), (1, 10, 16.6)])
    assert [(a, d.get("condition")) for _, a, d in ch.events] == [("raised", None), ("alarm_raised", "h")]
    assert ch.events[0][0].cause.name == "overfill"
    ch = feed(e, [(2, 20, 16.5), (2, 30, 16.6)])     # agreement: yellow → orange
    assert overfill(ch) == ["alarm_raised", "level_up"]
    assert ch.events[-1][2] == {"from": int(Level.YELLOW), "to": int(Level.ORANGE)}
    ch = feed(e, [(s, t, 10.0) for t in range(40, 90, 10) for s in (1, 2)])
    assert overfill(ch) == ["alarm_cleared", "alarm_cleared", "cleared"]
    ep = episode(e, "overfill")
    ch = feed(e, [(1, 100, 16.5), (1, 110, 16.6)])
    assert overfill(ch) == ["reactivated", "alarm_raised"]
    # closed by an officer (after it cleared): the next condition opens a new episode
    feed(e, [(1, t, 10.0) for t in range(120, 170, 10)])
    ep.id = 5
    assert e.forget(5)
    ch = feed(e, [(1, 200, 16.5), (1, 210, 16.6)])
    assert overfill(ch)[0] == "raised" and "reactivated" not in overfill(ch)  # (+ trend_hh: a jump)
    assert episode(e, "overfill") is not ep and episode(e, "overfill").count == 1
