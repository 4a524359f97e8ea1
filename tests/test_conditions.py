"""rules.conditions, checked against its specification (not its implementation).

Hand-made series with known answers for every condition kind, plus hypothesis properties:
a pure-Python reference model of the limit / validity / stuck / no-data rules, a quiet
series never raises, raise and clear alternate, split invariance, slot independence, late
readings change nothing, and emit=False replays the same state.

All event times are realistic epoch seconds (T0 + offset) and several slots share each
call, so that vectorisation over slots is exercised.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.conditions import Params, State, Transition, check_no_data, evaluate
from rules.model import PARAM_FIELDS, Cond, SensorRules

T0 = 1_700_000_000.0
NAN = float("nan")
RX = T0 + 10_000_000.0  # a processing time far from the event times (event time drives rules)

PROPS = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much])


# ---- helpers ------------------------------------------------------------------------------


def isnan(x: float) -> bool:
    return x != x


class Rig:
    """Params + State for a list of SensorRules; readings are (slot, dt, value[, quality])
    with event time T0 + dt."""

    def __init__(self, *rules: SensorRules) -> None:
        self.rules = list(rules)
        self.params = Params.from_rules(self.rules)
        self.state = State(len(self.rules))

    def feed(self, readings, rx: float = RX, emit: bool = True) -> list[Transition]:
        return feed(self.state, self.params, readings, rx, emit)

    def check(self, now_dt: float, suppressed=None) -> list[Transition]:
        sup = None if suppressed is None else np.asarray(suppressed, dtype=bool)
        out = check_no_data(self.state, self.params, T0 + now_dt, sup)
        assert isinstance(out, list)
        return out

    def active(self, cond: Cond) -> list[bool]:
        return [bool(x) for x in self.state.active(cond)]


def feed(state, params, readings, rx=RX, emit=True) -> list[Transition]:
    readings = list(readings)
    slots = np.array([r[0] for r in readings], dtype=np.int64)
    ts = np.array([T0 + r[1] for r in readings], dtype=np.float64)
    value = np.array([r[2] for r in readings], dtype=np.float64)
    quality = np.array([r[3] if len(r) > 3 else 0 for r in readings], dtype=np.int16)
    out = evaluate(state, params, slots, ts, value, quality, float(rx), emit=emit)
    assert isinstance(out, list)
    return out


def series(slot: int, dts, values, quality=0) -> list[tuple]:
    values = list(values)
    qs = list(quality) if isinstance(quality, list | tuple) else [quality] * len(values)
    return [(slot, float(t), float(v), int(q)) for t, v, q in zip(dts, values, qs, strict=True)]


def shuffled(readings, seed=0) -> list[tuple]:
    readings = list(readings)
    order = np.random.default_rng(seed).permutation(len(readings))
    return [readings[i] for i in order]


def of(trs, slot: int, cond: Cond) -> list[tuple]:
    """(raised, dt, value) of one slot's transitions of one condition, in event-time order."""
    got = [t for t in trs if t.slot == slot and t.cond == cond]
    got.sort(key=lambda t: t.ts)
    return [(t.raised, t.ts - T0, None if isnan(t.value) else t.value) for t in got]


def one(trs, slot: int, cond: Cond, raised: bool) -> Transition:
    got = [t for t in trs if t.slot == slot and t.cond == cond and t.raised == raised]
    assert len(got) == 1, got
    return got[0]


def conds_of(trs, slot: int) -> set[Cond]:
    return {t.cond for t in trs if t.slot == slot}


def key(t: Transition) -> tuple:
    return (int(t.slot), str(t.cond), bool(t.raised), float(t.ts),
            None if isnan(t.value) else float(t.value))


def keys(trs) -> list[tuple]:
    return sorted((key(t) for t in trs), key=lambda k: k[:4])


def same_detail(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, list | tuple):
            if not isinstance(y, list | tuple) or len(x) != len(y):
                return False
            if any(not _close(p, q) for p, q in zip(x, y, strict=True)):
                return False
        elif not _close(x, y):
            return False
    return True


def _close(x, y) -> bool:
    try:
        fx, fy = float(x), float(y)
    except (TypeError, ValueError):
        return x == y
    if isnan(fx) or isnan(fy):
        return isnan(fx) and isnan(fy)
    return fx == fy or math.isclose(fx, fy, rel_tol=1e-9, abs_tol=1e-9)


def assert_same_transitions(a, b) -> None:
    assert keys(a) == keys(b)
    da = {key(t)[:4]: t.detail for t in a}
    db = {key(t)[:4]: t.detail for t in b}
    for k, d in da.items():
        assert same_detail(d, db[k]), (k, d, db[k])


def all_active(state, n: int) -> dict[Cond, list[bool]]:
    return {c: [bool(x) for x in state.active(c)[:n]] for c in Cond}


def ewls(points, tau: float) -> tuple[float, float]:
    """Exponentially weighted least squares over (t, v) points, weights exp(-age/tau), age
    relative to the newest point: (slope per s, fitted value at the newest t)."""
    t = np.array([p[0] for p in points], dtype=float)
    v = np.array([p[1] for p in points], dtype=float)
    x = t - t[-1]
    w = np.exp(x / tau)
    sw = w.sum()
    xm, vm = (w @ x) / sw, (w @ v) / sw
    slope = (w @ ((x - xm) * (v - vm))) / (w @ ((x - xm) ** 2))
    return float(slope), float(vm - slope * xm)


class RefFit:
    """The spec's fit bookkeeping: restart after a gap > 5 tau; ready with >= 3 readings
    spanning >= warm × tau (rate: tau / 2; trend: a full tau)."""

    def __init__(self, tau: float, warm: float) -> None:
        self.tau, self.warm = tau, warm
        self.pts: list[tuple[float, float]] = []

    def add(self, t: float, v: float) -> tuple[bool, float, float]:
        if self.pts and t - self.pts[-1][0] > 5 * self.tau:
            self.pts = []
        self.pts.append((t, v))
        ready = len(self.pts) >= 3 and t - self.pts[0][0] >= self.warm * self.tau
        if len(self.pts) < 2:
            return ready, NAN, v
        slope, fitted = ewls(self.pts, self.tau)
        return ready, slope, fitted


def ref_rate(r: SensorRules, dts, values) -> list[tuple]:
    """Expected RATE_RISE / RATE_FALL transitions (cond, raised, dt) of an all-valid series;
    asserts the series keeps a clear margin from every decision boundary it meets."""
    fit, out = RefFit(r.rate_tau_s, 0.5), []
    active = {Cond.RATE_RISE: False, Cond.RATE_FALL: False}
    for t, v in zip(dts, values, strict=True):
        ready, slope, _ = fit.add(t, v)
        for cond, lim, sign in ((Cond.RATE_RISE, r.rate_rise_per_min, 1.0),
                                (Cond.RATE_FALL, r.rate_fall_per_min, -1.0)):
            if isnan(lim):
                continue
            if not ready:
                assert not active[cond], "test design: not-ready while active is unspecified"
                continue
            rate = sign * slope * 60
            bound = 0.8 * lim if active[cond] else lim
            assert abs(rate - bound) > 1e-6 * abs(bound), "test design: too close to a boundary"
            if not active[cond] and rate >= lim:
                active[cond] = True
                out.append((cond, True, t))
            elif active[cond] and rate < 0.8 * lim:
                active[cond] = False
                out.append((cond, False, t))
    return out


def ref_trend(r: SensorRules, dts, values, clear_factor: float = 1.25) -> list[tuple]:
    """Expected TREND_HH / TREND_LL transitions (cond, raised, dt) of an all-valid series."""
    fit, out = RefFit(r.trend_tau_s, 1.0), []
    active = {Cond.TREND_HH: False, Cond.TREND_LL: False}
    lead = r.trend_lead_s
    for t, v in zip(dts, values, strict=True):
        ready, slope, fitted = fit.add(t, v)
        for cond, lim, sign in ((Cond.TREND_HH, r.hh, 1.0), (Cond.TREND_LL, r.ll, -1.0)):
            if isnan(lim):
                continue
            if not ready:
                assert not active[cond], "test design: not-ready while active is unspecified"
                continue
            toward = sign * slope > 0
            projected = max(0.0, (lim - fitted) / slope) if toward else math.inf
            if toward:
                bound = clear_factor * lead if active[cond] else lead
                assert abs(projected - bound) > 1e-6 * bound, "test design: too close"
            if not active[cond] and toward and projected <= lead:
                active[cond] = True
                out.append((cond, True, t))
            elif active[cond] and (not toward or projected > clear_factor * lead):
                active[cond] = False
                out.append((cond, False, t))
    return out


def got_conds(trs, slot: int, conds) -> list[tuple]:
    got = [t for t in trs if t.slot == slot and t.cond in conds]
    got.sort(key=lambda t: (t.ts, str(t.cond)))
    return [(t.cond, t.raised, t.ts - T0) for t in got]


# ---- API ---------------------------------------------------------------------------------


def test_params_one_array_per_field():
    a = SensorRules(hh=20, h=10, deadband=1.5, on_delay_s=30, deviation=True,
                    deviation_warmup=7, range_lo=0, range_hi=100)
    b = SensorRules(l=3, stuck_window_s=600, interval_s=5)
    p = Params.from_rules([a, b])
    assert p.n == 2
    for f in PARAM_FIELDS:
        arr = np.asarray(getattr(p, f))
        assert arr.shape == (2,), f
        for i, r in enumerate((a, b)):
            want, got = float(getattr(r, f)), float(arr[i])
            assert (isnan(want) and isnan(got)) or want == got, (f, i, want, got)
    assert Params.from_rules([]).n == 0


def test_state_active_views_set_active_resize_and_size():
    s = State(3)
    for c in Cond:
        a = s.active(c)
        assert a.shape == (3,) and a.dtype == bool and not a.any()
    s.active(Cond.H)[1] = True
    assert [bool(x) for x in s.active(Cond.H)] == [False, True, False]
    s.set_active(2, Cond.LL, True)
    assert [bool(x) for x in s.active(Cond.LL)] == [False, False, True]
    assert not s.active(Cond.H)[2] and not s.active(Cond.L)[2]
    s.set_active(1, Cond.H, False)
    assert not s.active(Cond.H).any()
    s.set_active(0, Cond.NO_DATA, True)
    s.resize(5)
    assert [bool(x) for x in s.active(Cond.LL)] == [False, False, True, False, False]
    assert [bool(x) for x in s.active(Cond.NO_DATA)] == [True, False, False, False, False]
    assert 0 < s.nbytes_per_sensor <= 1024
    assert 0 < State(1000).nbytes_per_sensor <= 1024
    empty = State(0)
    empty.resize(2)
    assert empty.active(Cond.H).shape == (2,)


def test_empty_input_and_no_rules():
    rig = Rig()
    assert rig.feed([]) == []
    assert rig.check(0) == []
    rig = Rig(SensorRules())
    assert rig.feed([]) == []
    # no limit, rate, trend, deviation or stuck configured: wild valid values raise nothing
    assert rig.feed(series(0, range(0, 200, 10), [1e9, -1e9] * 10)) == []


# ---- thresholds ----------------------------------------------------------------------------


def test_h_and_l_raise_and_clear_with_deadband():
    rig = Rig(SensorRules(h=10, deadband=1), SensorRules(l=5, deadband=0.5), SensorRules(),
              SensorRules(h=10, l=5))
    dts = range(0, 80, 10)
    readings = (series(0, dts, [5, 10, 9.5, 9.0, 12, 8.9, 9.5, 10])
                + series(1, dts, [6, 5, 5.5, 5.4, 5.6, 4, 5.5, 5.51])
                + series(2, dts, [1e6, -1e6, 0, 0, 1e6, 1e6, -1e6, 0])
                + series(3, dts, [7, 10, 7, 5, 9.99, 5.01, 4.99, 10.01]))
    trs = rig.feed(shuffled(readings))
    assert of(trs, 0, Cond.H) == [(True, 10, 10.0), (False, 50, 8.9), (True, 70, 10.0)]
    assert of(trs, 1, Cond.L) == [(True, 10, 5.0), (False, 40, 5.6), (True, 50, 4.0),
                                  (False, 70, 5.51)]
    assert of(trs, 3, Cond.H) == [(True, 10, 10.0), (False, 20, 7.0), (True, 70, 10.01)]
    assert of(trs, 3, Cond.L) == [(True, 30, 5.0), (False, 40, 9.99), (True, 60, 4.99),
                                  (False, 70, 10.01)]
    assert conds_of(trs, 0) == {Cond.H} and conds_of(trs, 1) == {Cond.L}
    assert conds_of(trs, 2) == set() and conds_of(trs, 3) == {Cond.H, Cond.L}
    for t in trs:
        if t.cond in (Cond.H, Cond.L):
            assert float(t.detail["limit"]) == {Cond.H: 10.0, Cond.L: 5.0}[t.cond]
    assert rig.active(Cond.H) == [True, False, False, True]
    assert rig.active(Cond.L) == [False, False, False, False]


def test_hh_and_h_both_active_ll_and_l_both_active():
    rig = Rig(SensorRules(hh=20, h=10), SensorRules(l=5, ll=0))
    trs = rig.feed(series(0, [0, 10, 20, 30], [5, 25, 15, 5])
                   + series(1, [0, 10, 20, 30], [10, -1, 3, 6]))
    assert of(trs, 0, Cond.H) == [(True, 10, 25.0), (False, 30, 5.0)]
    assert of(trs, 0, Cond.HH) == [(True, 10, 25.0), (False, 20, 15.0)]
    assert of(trs, 1, Cond.L) == [(True, 10, -1.0), (False, 30, 6.0)]
    assert of(trs, 1, Cond.LL) == [(True, 10, -1.0), (False, 20, 3.0)]
    assert float(one(trs, 0, Cond.HH, True).detail["limit"]) == 20.0
    assert float(one(trs, 1, Cond.LL, True).detail["limit"]) == 0.0
    rig2 = Rig(SensorRules(hh=20, h=10))
    rig2.feed([(0, 0, 30.0)])
    assert rig2.active(Cond.H) == [True] and rig2.active(Cond.HH) == [True]


def test_chatter_inside_the_deadband_raises_once():
    rig = Rig(SensorRules(h=10, deadband=1), SensorRules(l=0, deadband=1))
    dts = range(0, 100, 10)
    trs = rig.feed(series(0, dts, [9.6, 10.1, 9.7, 10.3, 9.2, 10.0, 9.5, 10.2, 9.01, 10.0])
                   + series(1, dts, [0.3, -0.1, 0.5, -0.3, 0.9, 1.0, 0.0, 0.7, -2, 0.99]))
    assert of(trs, 0, Cond.H) == [(True, 10, 10.1)]
    assert of(trs, 1, Cond.L) == [(True, 10, -0.1)]
    assert rig.active(Cond.H) == [True, False] and rig.active(Cond.L) == [False, True]


def test_on_delay_short_excursions_raise_nothing_sustained_raise_at_the_delay():
    r = SensorRules(h=10, on_delay_s=30)
    rig = Rig(r, r, r, r, r, SensorRules(l=0, on_delay_s=30))
    trs = rig.feed(shuffled(
        series(0, range(0, 90, 10), [5, 11, 11, 11, 5, 11, 11, 11, 5])         # 20 s twice
        + series(1, [0, 10, 20, 30, 40, 50], [5, 11, 12, 13, 14, 15])          # held 30 s
        + series(2, [10, 20, 30, 40], [11, NAN, 12, 13], [0, 0, 2, 0])        # invalids
        + series(3, [10, 20, 25, 40], [11, 0, 0, 11], [0, 3, 4, 1])           # q3, q4 lows
        + series(4, [10, 20, 30, 50, 60], [11, 5, 11, 11, 11])                # reset at 20
        + series(5, [0, 10, 20, 30, 40], [1, -1, -2, -3, -4]), seed=3))
    assert of(trs, 0, Cond.H) == []
    assert of(trs, 1, Cond.H) == [(True, 40, 14.0)]
    assert of(trs, 2, Cond.H) == [(True, 40, 13.0)]
    assert of(trs, 3, Cond.H) == [(True, 40, 11.0)]
    assert of(trs, 4, Cond.H) == [(True, 60, 11.0)]
    assert of(trs, 5, Cond.L) == [(True, 40, -4.0)]


def test_off_delay_holds_the_clear():
    r = SensorRules(h=10, deadband=1, off_delay_s=30)
    rig = Rig(r, r, r, r, SensorRules(l=5, deadband=1, off_delay_s=30))
    trs = rig.feed(shuffled(
        series(0, [0, 10, 20, 30, 40], [12, 8, 7, 6, 5])
        + series(1, [0, 10, 20, 30, 40, 50, 60], [12, 8, 9.5, 8, 8, 8, 8])   # deadband resets
        + series(2, [0, 10, 20, 30, 40, 50, 60], [12, 8, 12, 8, 8, 8, 8])    # raise side resets
        + series(3, [0, 10, 20, 40], [12, 8, NAN, 8])                        # invalid: no reset
        + series(4, [0, 10, 20, 30, 60], [4, 7, 5.5, 7, 7]), seed=5))
    assert of(trs, 0, Cond.H) == [(True, 0, 12.0), (False, 40, 5.0)]
    assert of(trs, 1, Cond.H) == [(True, 0, 12.0), (False, 60, 8.0)]
    assert of(trs, 2, Cond.H) == [(True, 0, 12.0), (False, 60, 8.0)]
    assert of(trs, 3, Cond.H) == [(True, 0, 12.0), (False, 40, 8.0)]
    assert of(trs, 4, Cond.L) == [(True, 0, 4.0), (False, 60, 7.0)]


def test_nan_limits_are_off():
    rig = Rig(SensorRules(hh=NAN, h=NAN, l=NAN, ll=NAN), SensorRules(h=10))
    trs = rig.feed(series(0, [0, 10], [1e9, -1e9]) + series(1, [0, 10], [1e9, -1e9]))
    assert conds_of(trs, 0) == set()
    assert conds_of(trs, 1) == {Cond.H}


# ---- validity ------------------------------------------------------------------------------


def test_quality_null_and_out_of_range():
    r = SensorRules(h=50, range_lo=0, range_hi=100)
    rig = Rig(r, SensorRules(h=50), r, r)
    trs = rig.feed(shuffled(
        series(0, range(0, 100, 10), [10, 150, 150, NAN, 20, 20, 100, 0, -1, 10],
               [0, 0, 2, 0, 2, 1, 0, 3, 4, 0])
        + series(1, [0, 10, 20], [NAN, NAN, 60], [2, 4, 0])
        + series(2, [0, 10], [1e9, -1e9], [4, 4])
        + series(3, [0, 10], [-0.5, 100.5], [1, 3]), seed=7))
    assert of(trs, 0, Cond.OUT_OF_RANGE) == [(True, 10, 150.0), (False, 50, 20.0)]
    assert of(trs, 0, Cond.BAD_QUALITY) == [(True, 30, None), (False, 50, 20.0),
                                            (True, 70, 0.0), (False, 90, 10.0)]
    assert of(trs, 0, Cond.H) == [(True, 60, 100.0), (False, 90, 10.0)]
    oor = one(trs, 0, Cond.OUT_OF_RANGE, True)
    assert [float(x) for x in oor.detail["range"]] == [0.0, 100.0]
    bq = sorted((t for t in trs if t.slot == 0 and t.cond == Cond.BAD_QUALITY and t.raised),
                key=lambda t: t.ts)
    assert [int(t.detail["quality"]) for t in bq] == [0, 3]
    assert of(trs, 1, Cond.BAD_QUALITY) == [(True, 0, None), (False, 20, 60.0)]
    assert int(one(trs, 1, Cond.BAD_QUALITY, True).detail["quality"]) == 2
    assert of(trs, 1, Cond.H) == [(True, 20, 60.0)]
    assert conds_of(trs, 2) == set()                       # maintenance: nothing at all
    assert of(trs, 3, Cond.OUT_OF_RANGE) == [(True, 0, -0.5)]  # any quality
    assert conds_of(trs, 3) == {Cond.OUT_OF_RANGE}


def test_maintenance_and_invalid_readings_clear_no_fault_and_touch_no_process_state():
    r = SensorRules(h=10, range_lo=0, range_hi=100)
    rig = Rig(r, r, r)
    trs = rig.feed(series(0, [0], [200]) + series(1, [0], [5], [2]) + series(2, [0], [50]))
    assert rig.active(Cond.OUT_OF_RANGE) == [True, False, False]
    assert rig.active(Cond.BAD_QUALITY) == [False, True, False]
    assert rig.active(Cond.H) == [False, False, True]
    trs = rig.feed(series(0, [10, 20], [5, 200], [4, 2]) + series(1, [10, 20], [5, 300], [4, 0])
                   + series(2, [10, 20, 30, 40], [1, 1, -5, NAN], [4, 2, 0, 1]))
    # q4 clears nothing; invalid readings do not clear H
    assert of(trs, 0, Cond.OUT_OF_RANGE) == [] and of(trs, 0, Cond.BAD_QUALITY) == []
    assert of(trs, 1, Cond.BAD_QUALITY) == [] and of(trs, 1, Cond.OUT_OF_RANGE) == [(True, 20, 300.0)]
    assert of(trs, 2, Cond.H) == []
    assert of(trs, 2, Cond.OUT_OF_RANGE) == [(True, 30, -5.0)]
    assert of(trs, 2, Cond.BAD_QUALITY) == [(True, 20, 1.0)]
    assert rig.active(Cond.BAD_QUALITY) == [False, True, True]
    trs = rig.feed(series(0, [30], [5], [1]) + series(1, [30], [5]) + series(2, [50], [5]))
    assert of(trs, 0, Cond.OUT_OF_RANGE) == [(False, 30, 5.0)]
    assert sorted(of(trs, 1, Cond.OUT_OF_RANGE) + of(trs, 1, Cond.BAD_QUALITY)) == \
        [(False, 30, 5.0), (False, 30, 5.0)]
    assert of(trs, 2, Cond.H) == [(False, 50, 5.0)]
    assert of(trs, 2, Cond.OUT_OF_RANGE) == [(False, 50, 5.0)]
    assert of(trs, 2, Cond.BAD_QUALITY) == [(False, 50, 5.0)]
    for c in (Cond.OUT_OF_RANGE, Cond.BAD_QUALITY, Cond.H):
        assert rig.active(c) == [False, False, False]


# ---- ordering --------------------------------------------------------------------------------


def _ordering_readings():
    dts = range(0, 80, 10)
    return (series(0, dts, [5, 10, 11, 9.0, 12, 8.9, 9.5, 10])
            + series(1, dts, [6, 5, 5.5, 5.4, 5.6, 4, NAN, 5.51], [0, 0, 0, 0, 0, 0, 2, 0])
            + series(2, dts, [1, 1, 1, 1, 1, 1, 1, 1]))


def _ordering_rules():
    return (SensorRules(h=10, deadband=1, on_delay_s=10), SensorRules(l=5, deadband=0.5),
            SensorRules(stuck_window_s=30))


def test_readings_in_any_order_within_a_call():
    base = Rig(*_ordering_rules()).feed(_ordering_readings())
    assert base
    assert keys(Rig(*_ordering_rules()).feed(list(reversed(_ordering_readings())))) == keys(base)
    for seed in range(5):
        rig = Rig(*_ordering_rules())
        assert_same_transitions(rig.feed(shuffled(_ordering_readings(), seed)), base)
    assert of(base, 0, Cond.H) == [(True, 20, 11.0), (False, 50, 8.9)]
    assert of(base, 2, Cond.STUCK) == [(True, 30, 1.0)]


def test_duplicate_timestamps_use_one_reading():
    rig = Rig(SensorRules(h=10), SensorRules(h=10), SensorRules(stuck_window_s=20))
    trs = rig.feed([(0, 10, 15.0), (0, 10, 15.0), (1, 10, 15.0), (1, 10, 5.0),
                    (2, 0, 1.0), (2, 0, 1.0), (2, 20, 1.0), (2, 20, 1.0)])
    assert of(trs, 0, Cond.H) == [(True, 10, 15.0)]
    assert of(trs, 1, Cond.H) in ([(True, 10, 15.0)], [])
    assert of(trs, 2, Cond.STUCK) == [(True, 20, 1.0)]
    h1 = rig.active(Cond.H)[1]
    # the same ts again in a later call is ignored, whatever its value
    trs = rig.feed([(0, 10, 0.0), (1, 10, 15.0 if not h1 else 0.0), (2, 20, 9.0)])
    assert trs == []
    assert rig.active(Cond.H) == [True, h1, False]


def test_late_readings_are_ignored_and_never_rewind_state():
    rig = Rig(SensorRules(h=10, on_delay_s=30), SensorRules(h=10),
              SensorRules(stuck_window_s=60), SensorRules(h=10, interval_s=10, nodata_k=3))
    rig.feed([(0, 10, 11.0), (0, 20, 11.0), (1, 100, 12.0), (2, 0, 5.0), (2, 30, 5.0),
              (3, 100, 12.0)], rx=T0 + 1000)
    assert rig.active(Cond.H) == [False, True, False, True]
    rig.check(1030)
    assert rig.active(Cond.NO_DATA) == [False, False, False, True]
    # late (ts < newest) and equal-ts readings: nothing at all, not even a no_data clear
    late = [(0, 15, 5.0), (0, 20, 5.0), (1, 50, 0.0), (1, 100, 0.0), (2, 20, 9.0),
            (3, 99, 0.0, 2), (3, 100, 0.0)]
    assert rig.feed(shuffled(late), rx=T0 + 1031) == []
    assert rig.active(Cond.H) == [False, True, False, True]
    assert rig.active(Cond.NO_DATA) == [False, False, False, True]
    assert rig.active(Cond.BAD_QUALITY) == [False] * 4
    # nor refresh the processing-time clock
    assert rig.check(1040) == []
    trs = rig.feed([(0, 40, 11.0), (1, 110, 0.0), (2, 60, 5.0), (3, 110, 12.0)], rx=T0 + 1100)
    assert of(trs, 0, Cond.H) == [(True, 40, 11.0)]           # pending since 10 survived
    assert of(trs, 1, Cond.H) == [(False, 110, 0.0)]
    assert of(trs, 2, Cond.STUCK) == [(True, 60, 5.0)]        # reference since 0 survived
    assert float(one(trs, 2, Cond.STUCK, True).detail["since"]) == T0
    assert of(trs, 3, Cond.NO_DATA) == [(False, 110, 12.0)]


def test_late_reading_does_not_refresh_the_no_data_clock():
    rig = Rig(SensorRules(interval_s=10, nodata_k=3))
    rig.feed([(0, 100, 1.0)], rx=T0 + 1000)
    rig.feed([(0, 50, 1.0)], rx=T0 + 1020)                    # late: ignored
    trs = rig.check(1030)
    assert of(trs, 0, Cond.NO_DATA) == [(True, 1030, None)]
    assert float(trs[0].detail["silent_s"]) == 30.0


# ---- rate of change -------------------------------------------------------------------------


def test_rate_rise_and_fall_on_linear_series():
    rise = SensorRules(rate_rise_per_min=6, rate_tau_s=60)
    fall = SensorRules(rate_fall_per_min=6, rate_tau_s=60)
    both = SensorRules(rate_rise_per_min=6, rate_fall_per_min=6, rate_tau_s=60)
    rig = Rig(rise, fall, rise, rise, both)
    ramp = list(range(0, 50, 10))
    flat = list(range(50, 400, 10))
    up = [0.2 * t for t in ramp] + [0.2 * ramp[-1]] * len(flat)       # 12 /min, then flat
    down = [100 - 0.2 * t for t in ramp] + [100 - 0.2 * ramp[-1]] * len(flat)
    dts = ramp + flat
    trs = rig.feed(shuffled(
        series(0, dts, up) + series(1, dts, down)
        + series(2, dts, [0.05 * t for t in dts])                       # 3 /min: below
        + series(3, dts, down)                                          # falling: rise only
        + series(4, dts, up), seed=11))
    r0 = one(trs, 0, Cond.RATE_RISE, True)
    assert r0.ts == T0 + 30 and r0.value == pytest.approx(6.0)         # ready at span tau/2
    assert float(r0.detail["rate_per_min"]) == pytest.approx(12.0, rel=1e-9)
    assert float(r0.detail["limit_per_min"]) == 6.0
    f1 = one(trs, 1, Cond.RATE_FALL, True)
    assert f1.ts == T0 + 30
    assert float(f1.detail["rate_per_min"]) == pytest.approx(-12.0, rel=1e-9)
    assert abs(float(f1.detail["limit_per_min"])) == 6.0
    assert conds_of(trs, 2) == set() and conds_of(trs, 3) == set()
    rate_conds = (Cond.RATE_RISE, Cond.RATE_FALL)
    assert got_conds(trs, 0, rate_conds) == ref_rate(rise, dts, up)
    assert got_conds(trs, 1, rate_conds) == ref_rate(fall, dts, down)
    assert got_conds(trs, 4, rate_conds) == ref_rate(both, dts, up)
    assert [x[1] for x in got_conds(trs, 0, rate_conds)] == [True, False]  # cleared when flat
    clear = one(trs, 0, Cond.RATE_RISE, False)
    pts = [(t, v) for t, v in zip(dts, up, strict=True) if t <= clear.ts - T0]
    if "rate_per_min" in clear.detail:
        want = ewls(pts, 60)[0] * 60
        assert float(clear.detail["rate_per_min"]) == pytest.approx(want, rel=1e-6)


def test_rate_needs_three_readings_spanning_half_tau():
    r = SensorRules(rate_rise_per_min=6, rate_tau_s=60)
    rig = Rig(r, r)
    trs = rig.feed(series(0, [0, 40, 50], [0, 8, 10])              # 2 readings span 40: not yet
                   + series(1, [0, 5, 10, 15, 20, 25, 29, 30], [0.2 * t for t in
                                                                 [0, 5, 10, 15, 20, 25, 29, 30]]))
    assert of(trs, 0, Cond.RATE_RISE) == [(True, 50, 10.0)]
    assert of(trs, 1, Cond.RATE_RISE) == [(True, 30, 0.2 * 30)]


def test_rate_gap_restarts_the_fit():
    r = SensorRules(rate_rise_per_min=6, rate_tau_s=60)              # 5 tau = 300 s
    rig = Rig(r, r, r)
    before = list(range(0, 110, 10))
    after_long = [500, 510, 520, 530, 540, 550]
    after_short = [350, 360, 370, 380, 390, 400]
    bad = list(range(110, 500, 10))
    trs = rig.feed(shuffled(
        series(0, before + after_long, [0] * len(before) + [100] * len(after_long))
        + series(1, before + after_short, [0] * len(before) + [100] * len(after_short))
        + series(2, before + bad + after_long,
                 [0] * len(before) + [50] * len(bad) + [100] * len(after_long),
                 [0] * len(before) + [2] * len(bad) + [0] * len(after_long)), seed=2))
    assert of(trs, 0, Cond.RATE_RISE) == []                          # restarted, then flat
    expect1 = ref_rate(r, before + after_short, [0] * len(before) + [100] * len(after_short))
    assert expect1 and expect1[0] == (Cond.RATE_RISE, True, 350)     # no restart: the jump shows
    assert got_conds(trs, 1, (Cond.RATE_RISE,)) == expect1
    assert of(trs, 2, Cond.RATE_RISE) == []                          # the gap counts valid readings
    assert of(trs, 2, Cond.BAD_QUALITY) == [(True, 110, 50.0), (False, 500, 100.0)]


def test_rate_gap_of_exactly_five_tau_does_not_restart():
    r = SensorRules(rate_rise_per_min=6, rate_tau_s=60)
    rig = Rig(r, r)
    before = list(range(0, 110, 10))
    trs = rig.feed(series(0, before + [400, 410, 420], [0] * len(before) + [100] * 3)   # 300 s
                   + series(1, before + [401, 411, 421], [0] * len(before) + [100] * 3))  # 301 s
    assert of(trs, 0, Cond.RATE_RISE)[:1] == [(True, 400, 100.0)]
    assert of(trs, 1, Cond.RATE_RISE) == []


def test_fit_stays_exact_over_a_day_of_history():
    """A day of 10 s readings at epoch timestamps, fed in calls of 2000: slopes and the
    projection are still exact on a linear series."""
    s, lead = 0.003, 900.0
    dts = np.arange(0, 86400, 10.0)
    vals = 5.0 + s * dts
    hh = 5.0 + s * (dts[-1] - 5) + s * lead             # reaches `lead` 5 s before the end
    r = SensorRules(hh=hh, trend_tau_s=3600, trend_lead_s=lead,
                    rate_rise_per_min=60 * s * (1 + 1e-7), rate_tau_s=60)
    pa = 101_325.0                                       # a pressure in Pa: large offset
    r_pa = SensorRules(hh=hh + pa, trend_tau_s=3600, trend_lead_s=lead)
    rig = Rig(r, SensorRules(rate_rise_per_min=60 * s * (1 - 1e-7), rate_tau_s=600), r_pa)
    out = []
    for i in range(0, len(dts), 2000):
        chunk = list(zip(dts[i:i + 2000].tolist(), vals[i:i + 2000].tolist(), strict=True))
        out += rig.feed([(0, t, v) for t, v in chunk] + [(1, t, v) for t, v in chunk]
                        + [(2, t, v + pa) for t, v in chunk])
    assert got_conds(out, 0, list(Cond)) == [(Cond.TREND_HH, True, dts[-1])]
    d = one(out, 0, Cond.TREND_HH, True).detail
    assert float(d["projected_s"]) == pytest.approx(lead - 5, rel=1e-7)
    assert float(d["slope_per_min"]) == pytest.approx(60 * s, rel=1e-9)
    assert float(d["fitted"]) == pytest.approx(vals[-1], rel=1e-9)
    assert got_conds(out, 1, list(Cond)) == [(Cond.RATE_RISE, True, 300.0)]
    assert got_conds(out, 2, list(Cond)) == [(Cond.TREND_HH, True, dts[-1])]
    d = one(out, 2, Cond.TREND_HH, True).detail
    assert float(d["projected_s"]) == pytest.approx(lead - 5, rel=1e-7)
    assert float(d["slope_per_min"]) == pytest.approx(60 * s, rel=1e-9)


def test_rate_invalid_readings_do_not_feed_the_fit():
    r = SensorRules(rate_rise_per_min=6, rate_tau_s=60)
    rig = Rig(r, SensorRules(rate_rise_per_min=6, rate_tau_s=60, range_lo=0, range_hi=10))
    dts = list(range(0, 200, 10))
    vals = [1.0] * len(dts)
    q = [0] * len(dts)
    for i in range(5, len(dts), 3):
        vals[i], q[i] = 1000.0, 2
    vals1 = [1.0 if qq == 0 else 1000.0 for qq in q]
    trs = rig.feed(series(0, dts, vals, q) + series(1, dts, vals1))
    assert of(trs, 0, Cond.RATE_RISE) == [] and of(trs, 1, Cond.RATE_RISE) == []
    assert of(trs, 1, Cond.OUT_OF_RANGE)[0] == (True, 50, 1000.0)


# ---- trend -----------------------------------------------------------------------------------


def test_slow_ramp_trend_hh_before_hh_with_the_true_time_left():
    up = SensorRules(hh=100, trend_tau_s=600, trend_lead_s=900)
    down = SensorRules(ll=0, trend_tau_s=600, trend_lead_s=900)
    rig = Rig(up, down, SensorRules(trend_tau_s=600), SensorRules(hh=100))
    dts = list(range(0, 10021, 60))                     # 0.01 /s; 100 reached at 10000 s
    ramp = [0.01 * t for t in dts]
    fallr = [100 - 0.01 * t for t in dts]
    trs = rig.feed(shuffled(series(0, dts, ramp) + series(1, dts, fallr)
                            + series(2, dts, ramp) + series(3, dts, ramp), seed=1))
    t_hh = one(trs, 0, Cond.TREND_HH, True)
    hh = one(trs, 0, Cond.HH, True)
    assert t_hh.ts < hh.ts
    assert hh.ts == T0 + 10020
    assert t_hh.ts == T0 + 9120                          # first reading with 100 - v <= 9
    true_left = (100 - t_hh.value) / 0.01
    assert true_left == pytest.approx(880, rel=1e-9)
    d = t_hh.detail
    assert float(d["projected_s"]) == pytest.approx(true_left, rel=0.01)
    assert float(d["projected_s"]) == pytest.approx(true_left, rel=1e-6)   # linear: exact fit
    assert float(d["slope_per_min"]) == pytest.approx(0.6, rel=1e-9)
    assert float(d["limit"]) == 100.0
    assert float(d["fitted"]) == pytest.approx(91.2, rel=1e-9)
    t_ll = one(trs, 1, Cond.TREND_LL, True)
    assert t_ll.ts == T0 + 9120
    assert float(t_ll.detail["projected_s"]) == pytest.approx(880, rel=0.01)
    assert float(t_ll.detail["slope_per_min"]) == pytest.approx(-0.6, rel=1e-9)
    assert float(t_ll.detail["limit"]) == 0.0
    assert one(trs, 1, Cond.LL, True).ts == T0 + 10020
    assert conds_of(trs, 0) == {Cond.TREND_HH, Cond.HH}
    assert conds_of(trs, 2) == set()                     # no hh/ll: trend has nothing to reach
    assert conds_of(trs, 3) == {Cond.HH}                 # trend off
    assert rig.active(Cond.TREND_HH) == [True, False, False, False]
    # the level turns and falls: HH clears at once, TREND_HH when the fit says so
    back = list(range(10080, 13081, 60))
    down_vals = [100.2 - 0.02 * (t - 10020) for t in back]
    trs = rig.feed(series(0, back, down_vals))
    assert of(trs, 0, Cond.HH) == [(False, 10080, pytest.approx(99.0))]
    expect = [x for x in ref_trend(up, dts + back, ramp + down_vals) if x[2] > 10020]
    assert expect and expect[0][:2] == (Cond.TREND_HH, False)
    assert got_conds(trs, 0, (Cond.TREND_HH,)) == expect


def test_trend_readiness_and_clear_on_reversal():
    r = SensorRules(hh=100, trend_tau_s=600, trend_lead_s=900)
    rig = Rig(r, SensorRules(ll=0, trend_tau_s=60, trend_lead_s=120))
    dts = list(range(0, 661, 60))
    # 1000 s from HH at the start and within the 900-s lead from 100 s on, but a projection
    # waits for a full tau (600 s) of readings
    trs = rig.feed(series(0, dts, [90 + 0.01 * t for t in dts])
                   + series(1, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
                            [30, 27, 24, 21, 18, 15, 15, 16, 17, 18, 19]))
    assert of(trs, 0, Cond.TREND_HH) == [(True, 600, pytest.approx(96.0))]
    p = float(one(trs, 0, Cond.TREND_HH, True).detail["projected_s"])
    assert p == pytest.approx(400, rel=1e-6)
    vals1 = [30, 27, 24, 21, 18, 15, 15, 16, 17, 18, 19]
    expect = ref_trend(rig.rules[1], [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100], vals1)
    assert [x[1] for x in expect] == [True, False]
    assert got_conds(trs, 1, (Cond.TREND_LL,)) == expect


def test_trend_clears_once_the_projection_passes_one_and_a_quarter_lead():
    """v = limit -/+ D / (1 + t / T) has a true time-to-limit of T + t: the projection grows
    steadily, so the clear falls on the reading where the fit's projection passes 1.25 lead."""
    dts = [float(t) for t in range(0, 1001, 2)]
    up = [100 - 50 / (1 + t / 300) for t in dts]
    down = [50 / (1 + t / 300) for t in dts]
    r_up = SensorRules(hh=100, trend_tau_s=20, trend_lead_s=600)
    r_down = SensorRules(ll=0, trend_tau_s=20, trend_lead_s=600)
    rig = Rig(r_up, r_down)
    trs = rig.feed(shuffled(series(0, dts, up) + series(1, dts, down), seed=6))
    want_up = ref_trend(r_up, dts, up)
    want_down = ref_trend(r_down, dts, down)
    assert [x[:2] for x in want_up] == [(Cond.TREND_HH, True), (Cond.TREND_HH, False)]
    assert [x[:2] for x in want_down] == [(Cond.TREND_LL, True), (Cond.TREND_LL, False)]
    later = ref_trend(r_up, dts, up, clear_factor=1.3)
    assert later[1][2] > want_up[1][2] + 10               # the factor matters in this series
    assert got_conds(trs, 0, (Cond.TREND_HH,)) == want_up
    assert got_conds(trs, 1, (Cond.TREND_LL,)) == want_down


def test_trend_needs_a_slope_toward_the_limit():
    r = SensorRules(hh=100, ll=0, trend_tau_s=60, trend_lead_s=900)
    rig = Rig(r, r, r)
    dts = range(0, 600, 10)
    trs = rig.feed(series(0, dts, [110.0] * 60)            # above HH, flat: slope exactly 0
                   + series(1, dts, [-10.0] * 60)          # below LL, flat
                   + series(2, dts, [99.0] * 60))          # 1 below HH, flat
    assert conds_of(trs, 0) == {Cond.HH} and conds_of(trs, 1) == {Cond.LL}
    assert conds_of(trs, 2) == set()


# ---- deviation -------------------------------------------------------------------------------


def test_deviation_warmup_raise_and_clear():
    r = SensorRules(deviation=True, deviation_warmup=30)
    rig = Rig(r, r, r, SensorRules(deviation=False), r, r)
    base30 = [9.0, 11.0] * 15
    dts = list(range(0, 3000, 10))
    n_base, n_shift = 60, 10
    shift = [9.0, 11.0] * (n_base // 2) + [14.0] * n_shift + [9.0, 11.0] * 115
    trs = rig.feed(shuffled(
        series(0, dts[:31], base30[:29] + [1010.0, 10.0])          # outlier in the warm-up
        + series(1, dts[:31], base30 + [1010.0])                   # outlier right after it
        + series(2, dts, shift)
        + series(3, dts, shift)
        + series(4, dts[:36], [10.0] * 35 + [10.5])                # sigma 0: floored, no NaN
        + series(5, dts[:40], base30 + [NAN] * 5 + [5000.0] * 5, [0] * 30 + [0] * 5 + [2] * 5),
        seed=4))
    assert of(trs, 0, Cond.DEVIATION) == []
    assert of(trs, 1, Cond.DEVIATION) == [(True, 300, 1010.0)]
    d = one(trs, 1, Cond.DEVIATION, True).detail
    assert "baseline" in d and "sigma" in d
    assert float(d["sigma"]) > 0
    got = of(trs, 2, Cond.DEVIATION)
    assert [g[0] for g in got] == [True, False], got
    assert n_base * 10 <= got[0][1] < (n_base + n_shift) * 10          # during the shift
    assert got[1][1] >= (n_base + n_shift) * 10
    assert conds_of(trs, 3) == set()
    assert of(trs, 4, Cond.DEVIATION) == [(True, 350, 10.5)]
    assert of(trs, 5, Cond.DEVIATION) == []                             # invalids don't count
    assert rig.active(Cond.DEVIATION) == [False, True, False, False, True, False]


def test_deviation_warmup_counts_valid_readings_only():
    r = SensorRules(deviation=True, deviation_warmup=10)
    rig = Rig(r, r)
    vals = [9.0, 11.0] * 5
    trs = rig.feed(series(0, range(0, 200, 10), vals[:5] + [NAN] * 3 + [500] * 2 + vals[5:] + [1e4]
                          + [10.0] * 4, [0] * 5 + [0] * 3 + [3] * 2 + [0] * 10)
                   + series(1, range(0, 110, 10), vals + [1e4]))
    assert of(trs, 0, Cond.DEVIATION)[:1] == [(True, 150, 1e4)]
    assert of(trs, 1, Cond.DEVIATION) == [(True, 100, 1e4)]


# ---- stuck -----------------------------------------------------------------------------------


def test_stuck_raise_reset_and_drift():
    r = SensorRules(stuck_window_s=60, stuck_eps=0.5)
    rig = Rig(r, r, r, SensorRules(), SensorRules(stuck_window_s=60))
    trs = rig.feed(shuffled(
        series(0, range(0, 140, 10),
               [5.0, 5.25, 5.5, 5.0, 4.5, 5.5, 5.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.25])
        + series(1, range(0, 200, 10), [5.0 + 0.025 * t for t in range(0, 200, 10)])
        + series(2, [0, 20, 30, 50, 60], [5.0, 100, NAN, 5.0, 5.0], [0, 2, 0, 4, 0])
        + series(3, range(0, 200, 10), [1.0] * 20)
        + series(4, [0, 30, 59, 60], [2.0, 2.0, 2.0, 2.0]), seed=9))
    assert of(trs, 0, Cond.STUCK) == [(True, 60, 5.0), (False, 70, 6.0), (True, 130, 6.25)]
    raises = sorted((t for t in trs if t.slot == 0 and t.cond == Cond.STUCK and t.raised),
                    key=lambda t: t.ts)
    assert [float(t.detail["since"]) for t in raises] == [T0, T0 + 70]
    assert float(raises[0].detail["window_s"]) == 60.0
    assert of(trs, 1, Cond.STUCK) == []
    assert of(trs, 2, Cond.STUCK) == [(True, 60, 5.0)]
    assert of(trs, 3, Cond.STUCK) == []
    assert of(trs, 4, Cond.STUCK) == [(True, 60, 2.0)]


# ---- no data ---------------------------------------------------------------------------------


def test_no_data_raise_clear_suppress():
    r = SensorRules(interval_s=10, nodata_k=3)
    rig = Rig(r, r, SensorRules(interval_s=60, nodata_k=2))
    assert rig.check(1000) == []                          # clocks start, nothing raised
    assert rig.check(1029) == []
    trs = rig.check(1030)
    assert of(trs, 0, Cond.NO_DATA) == [(True, 1030, None)]
    assert of(trs, 1, Cond.NO_DATA) == [(True, 1030, None)]
    assert conds_of(trs, 2) == set()
    for t in trs:
        assert float(t.detail["silent_s"]) == 30.0 and float(t.detail["expected_s"]) == 30.0
    assert rig.active(Cond.NO_DATA) == [True, True, False]
    assert rig.check(1040) == []                          # already active
    # any reading clears it, at the reading's event time; its processing time restarts the clock
    trs = rig.feed([(0, 500, NAN, 2)], rx=T0 + 1045)
    assert of(trs, 0, Cond.NO_DATA) == [(False, 500, None)]
    assert of(trs, 0, Cond.BAD_QUALITY) == [(True, 500, None)]
    assert rig.check(1074) == []
    trs = rig.check(1075)
    assert of(trs, 0, Cond.NO_DATA) == [(True, 1075, None)]
    assert conds_of(trs, 2) == set()
    trs = rig.feed([(1, 7, 123.0, 4)], rx=T0 + 1080)      # maintenance clears it too
    assert of(trs, 1, Cond.NO_DATA) == [(False, 7, 123.0)] and conds_of(trs, 1) == {Cond.NO_DATA}
    assert rig.check(1110, [False, True, True]) == []     # suppressed: its gateway is offline
    trs = rig.check(1120, [False, True, False])
    assert of(trs, 2, Cond.NO_DATA) == [(True, 1120, None)]
    assert float(one(trs, 2, Cond.NO_DATA, True).detail["expected_s"]) == 120.0
    assert conds_of(trs, 1) == set()
    trs = rig.check(1121)
    assert of(trs, 1, Cond.NO_DATA) == [(True, 1121, None)]
    assert float(one(trs, 1, Cond.NO_DATA, True).detail["silent_s"]) == 41.0
    assert rig.active(Cond.NO_DATA) == [True, True, True]


def test_no_data_clock_started_by_a_reading_before_any_check():
    rig = Rig(SensorRules(interval_s=10, nodata_k=3), SensorRules(interval_s=10, nodata_k=3))
    rig.feed([(0, 0, 1.0)], rx=T0 + 1000)
    trs = rig.check(1030)
    assert of(trs, 0, Cond.NO_DATA) == [(True, 1030, None)]
    assert conds_of(trs, 1) == set()                      # never heard of: clock starts now
    assert of(rig.check(1060), 1, Cond.NO_DATA) == [(True, 1060, None)]


def test_resize_keeps_existing_state():
    r0 = SensorRules(h=10, on_delay_s=30, interval_s=10, nodata_k=3)
    rig = Rig(r0)
    rig.feed([(0, 10, 11.0), (0, 20, 11.0), (0, 25, NAN)], rx=T0 + 1000)
    assert rig.active(Cond.BAD_QUALITY) == [True]
    rig.rules = [r0, SensorRules(h=10, interval_s=10, nodata_k=3),
                 SensorRules(interval_s=10, nodata_k=3)]
    rig.params = Params.from_rules(rig.rules)
    rig.state.resize(3)
    assert rig.active(Cond.BAD_QUALITY) == [True, False, False]
    assert rig.feed([(0, 15, 0.0)]) == []                 # still late after the resize
    trs = rig.feed([(0, 40, 11.0), (1, 40, 11.0)], rx=T0 + 1000)
    assert of(trs, 0, Cond.H) == [(True, 40, 11.0)]       # pending timer kept
    assert of(trs, 1, Cond.H) == [(True, 40, 11.0)]
    assert of(trs, 0, Cond.BAD_QUALITY) == [(False, 40, 11.0)]
    trs = rig.check(1030)
    assert {t.slot for t in trs} == {0, 1}                # slot 2: clock starts now
    assert of(rig.check(1060), 2, Cond.NO_DATA) == [(True, 1060, None)]


def test_resized_slots_behave_like_fresh_ones_and_old_ones_carry_on():
    rules = [SensorRules(h=10, hh=15, on_delay_s=20, rate_rise_per_min=3, rate_fall_per_min=3,
                         trend_tau_s=60, trend_lead_s=120, deviation=True, deviation_warmup=5,
                         stuck_window_s=60, stuck_eps=0.1, interval_s=10, nodata_k=3),
             SensorRules(l=2, ll=0, trend_tau_s=30, trend_lead_s=60, deviation=True,
                         deviation_warmup=3, deviation_alpha=0.2, deviation_h=3,
                         stuck_window_s=30, range_lo=-5, range_hi=50, interval_s=5, nodata_k=2)]
    rng = np.random.default_rng(7)

    def walk(slot, start, count):
        t, v, out = start, 5.0, []
        for _ in range(count):
            t += float(rng.choice([1, 5, 10]))
            v = float(np.clip(v + rng.normal(0, 1.5), -3, 20))
            out.append((slot, t, round(v, 1), int(rng.choice([0, 0, 0, 0, 1, 2, 4]))))
        return out

    first = walk(0, 0, 40) + walk(1, 0, 40)
    later = {s: walk(s, 1000, 60) for s in range(4)}
    grown = Rig(*rules[:2])
    grown.feed(first, rx=T0 + 100)
    grown.check(100)
    for n in (3, 4):                                      # grow twice
        grown.rules = rules + rules[:n - 2]
        grown.params = Params.from_rules(grown.rules)
        grown.state.resize(n)
    fixed = Rig(*rules)
    fixed.feed(first, rx=T0 + 100)
    fixed.check(100)
    fresh = Rig(*rules)
    a = grown.feed(later[0] + later[1] + [(s + 2, t, v, q) for s in (0, 1) for _, t, v, q in later[s + 2]],
                   rx=T0 + 200)
    b = fixed.feed(later[0] + later[1], rx=T0 + 200)
    c = fresh.feed([(s, t, v, q) for s in (0, 1) for _, t, v, q in later[s + 2]], rx=T0 + 200)
    assert_same_transitions([t for t in a if t.slot < 2], b)
    assert_same_transitions([_reslot(t, t.slot - 2) for t in a if t.slot >= 2], c)
    assert len(c) > 10
    for now in (210, 300):
        a, b, c = grown.check(now), fixed.check(now), fresh.check(now)
        assert_same_transitions([t for t in a if t.slot < 2], b)
        assert_same_transitions([_reslot(t, t.slot - 2) for t in a if t.slot >= 2], c)


def test_restored_active_flags_are_respected():
    rig = Rig(SensorRules(h=10), SensorRules(h=10), SensorRules(interval_s=10))
    rig.state.set_active(0, Cond.H, True)
    rig.state.active(Cond.H)[1] = True
    rig.state.set_active(2, Cond.NO_DATA, True)
    trs = rig.feed([(0, 0, 5.0), (1, 0, 12.0), (2, 0, 1.0)])
    assert of(trs, 0, Cond.H) == [(False, 0, 5.0)]        # clear only when active ...
    assert of(trs, 1, Cond.H) == []                       # ... raise only when not
    assert of(trs, 2, Cond.NO_DATA) == [(False, 0, 1.0)]
    rig.state.active(Cond.H)[:] = False
    trs = rig.feed([(1, 10, 12.0)])
    assert of(trs, 1, Cond.H) == [(True, 10, 12.0)]


def test_emit_false_updates_state_identically():
    rules = (SensorRules(h=10, deadband=1, on_delay_s=20), SensorRules(l=0, off_delay_s=20),
             SensorRules(stuck_window_s=30, interval_s=10), SensorRules(rate_rise_per_min=6))
    hist = (series(0, range(0, 100, 10), [5, 11, 12, 13, 9.5, 8, 11, 11, 11, 11])
            + series(1, range(0, 100, 10), [1, -1, -2, 3, 4, 5, 6, -1, 2, 3])
            + series(2, range(0, 100, 10), [1, 1, 1, NAN, 1, 1, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0, 0,
                                                                              0, 2, 0])
            + series(3, range(0, 100, 10), [0.3 * t for t in range(0, 100, 10)]))
    quiet, loud = Rig(*rules), Rig(*rules)
    assert quiet.feed(hist, emit=False, rx=T0 + 500) == []
    assert loud.feed(hist, rx=T0 + 500)
    assert all_active(quiet.state, 4) == all_active(loud.state, 4)
    nxt = (series(0, range(100, 200, 10), [8, 5, 11, 11, 11, 5, 5, 5, 5, 5])
           + series(1, range(100, 200, 10), [3, -1, -1, -1, 5, 5, 5, 5, 5, 5])
           + series(2, range(100, 200, 10), [2] * 10)
           + series(3, range(100, 200, 10), [30.0] * 10))
    assert_same_transitions(quiet.feed(nxt, rx=T0 + 600), loud.feed(nxt, rx=T0 + 600))
    assert all_active(quiet.state, 4) == all_active(loud.state, 4)
    assert_same_transitions(quiet.check(640), loud.check(640))


def _state_arrays(obj, seen=None) -> int:
    """Bytes of every numpy array held by the state (attributes, dicts, lists, tuples)."""
    seen = set() if seen is None else seen
    if isinstance(obj, np.ndarray):
        while isinstance(obj.base, np.ndarray):     # count a view's owner once
            obj = obj.base
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_state_arrays(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_state_arrays(v, seen) for v in obj)
    names = list(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        names += list(getattr(klass, "__slots__", ()))
    return sum(_state_arrays(getattr(obj, n), seen) for n in set(names) if hasattr(obj, n))


def test_state_memory_per_sensor_is_bounded():
    n = 5000
    s = State(n)
    assert s.nbytes_per_sensor <= 1024
    assert 0 < _state_arrays(s) / n <= 1024
    s.resize(2 * n)
    assert _state_arrays(s) / (2 * n) <= 1024


def test_many_slots_in_one_call_do_not_mix():
    rng = np.random.default_rng(42)
    n = 60
    rules = []
    for _ in range(n):
        h = float(rng.integers(5, 15))
        rules.append(SensorRules(
            h=h, hh=h + 5, l=h - 8, ll=h - 12, deadband=float(rng.choice([0, 0.5, 1])),
            on_delay_s=float(rng.choice([0, 20])), off_delay_s=float(rng.choice([0, 20])),
            rate_rise_per_min=float(rng.choice([NAN, 3.0])), rate_fall_per_min=3.0,
            trend_tau_s=float(rng.choice([NAN, 60.0])), trend_lead_s=120,
            deviation=bool(rng.integers(2)), deviation_warmup=10,
            stuck_window_s=float(rng.choice([NAN, 60.0])), stuck_eps=0.2,
            range_lo=-5, range_hi=30))
    readings = []
    for s in range(n):
        t = 0.0
        v = float(rng.uniform(0, 20))
        for _ in range(int(rng.integers(0, 60))):
            t += float(rng.choice([1, 5, 10, 30]))
            v = float(np.clip(v + rng.normal(0, 1.5), -8, 33)) if rng.random() < 0.8 else v
            q = int(rng.choice([0, 0, 0, 0, 0, 1, 2, 4]))
            readings.append((s, t, round(v, 1) if rng.random() < 0.97 else NAN, q))
    together = Rig(*rules).feed(shuffled(readings, 1))
    assert len(together) > 100
    for s in range(n):
        alone = Rig(rules[s]).feed([(0, t, v, q) for ss, t, v, q in readings if ss == s])
        assert_same_transitions([_reslot(t, s) for t in alone],
                                [t for t in together if t.slot == s])


# ---- reference model (limits, validity, stuck, no data, ordering) --------------------------


class RefSlot:
    """Pure-Python transcription of spec items 1-4, 8, 9 and 11 for one slot."""

    LIMITS = ((Cond.HH, "hh", 1), (Cond.H, "h", 1), (Cond.L, "l", -1), (Cond.LL, "ll", -1))

    def __init__(self, r: SensorRules) -> None:
        self.r = r
        self.newest = -math.inf
        self.clock: float | None = None
        self.active = dict.fromkeys(Cond, False)
        self.pend_on: dict[Cond, float | None] = dict.fromkeys(Cond)
        self.pend_off: dict[Cond, float | None] = dict.fromkeys(Cond)
        self.ref: tuple[float, float] | None = None

    def _tr(self, out, cond, raised, ts, v, detail):
        assert self.active[cond] != raised
        self.active[cond] = raised
        out.append((cond, raised, ts, v, detail))

    def reading(self, ts: float, v: float, q: int, rx: float) -> list[tuple]:
        out: list[tuple] = []
        if ts <= self.newest:
            return out
        self.newest = ts
        self.clock = rx
        if self.active[Cond.NO_DATA]:
            self._tr(out, Cond.NO_DATA, False, ts, v, None)
        if q == 4:
            return out
        r = self.r
        if not isnan(v) and (v < r.range_lo or v > r.range_hi):
            if not self.active[Cond.OUT_OF_RANGE]:
                self._tr(out, Cond.OUT_OF_RANGE, True, ts, v, {"range": [r.range_lo, r.range_hi]})
            return out
        if isnan(v) or q in (2, 3):
            if not self.active[Cond.BAD_QUALITY]:
                self._tr(out, Cond.BAD_QUALITY, True, ts, v, {"quality": q})
            return out
        for c in (Cond.OUT_OF_RANGE, Cond.BAD_QUALITY):
            if self.active[c]:
                self._tr(out, c, False, ts, v, None)
        for cond, name, side in self.LIMITS:
            lim = getattr(r, name)
            if isnan(lim):
                continue
            if not self.active[cond]:
                meets = v >= lim if side > 0 else v <= lim
                if not meets:
                    self.pend_on[cond] = None
                    continue
                if self.pend_on[cond] is None:
                    self.pend_on[cond] = ts
                if ts - self.pend_on[cond] >= r.on_delay_s:
                    self.pend_on[cond] = None
                    self.pend_off[cond] = None
                    self._tr(out, cond, True, ts, v, {"limit": lim})
            else:
                meets = v < lim - r.deadband if side > 0 else v > lim + r.deadband
                if not meets:
                    self.pend_off[cond] = None
                    continue
                if self.pend_off[cond] is None:
                    self.pend_off[cond] = ts
                if ts - self.pend_off[cond] >= r.off_delay_s:
                    self.pend_off[cond] = None
                    self.pend_on[cond] = None
                    self._tr(out, cond, False, ts, v, None)
        if not isnan(r.stuck_window_s):
            if self.ref is None or abs(v - self.ref[0]) > r.stuck_eps:
                self.ref = (v, ts)
                if self.active[Cond.STUCK]:
                    self._tr(out, Cond.STUCK, False, ts, v, None)
            if not self.active[Cond.STUCK] and ts - self.ref[1] >= r.stuck_window_s:
                self._tr(out, Cond.STUCK, True, ts, v,
                         {"since": self.ref[1], "window_s": r.stuck_window_s})
        return out

    def check(self, now: float, suppressed: bool) -> list[tuple]:
        out: list[tuple] = []
        if self.clock is None:
            self.clock = now
            return out
        expected = self.r.nodata_k * self.r.interval_s
        if not self.active[Cond.NO_DATA] and not suppressed and now - self.clock >= expected:
            self._tr(out, Cond.NO_DATA, True, now, NAN,
                     {"silent_s": now - self.clock, "expected_s": expected})
        return out


HALF = st.integers(-4, 44).map(lambda i: i * 0.5)


@st.composite
def limit_rules(draw) -> SensorRules:
    def lim():
        return draw(st.one_of(st.just(NAN), HALF))

    return SensorRules(
        hh=lim(), h=lim(), l=lim(), ll=lim(),
        deadband=draw(st.sampled_from([0.0, 0.5, 1.0, 2.5])),
        on_delay_s=draw(st.sampled_from([0.0, 3.0, 10.0])),
        off_delay_s=draw(st.sampled_from([0.0, 4.0, 10.0])),
        stuck_window_s=draw(st.sampled_from([NAN, 5.0, 12.0])),
        stuck_eps=draw(st.sampled_from([0.0, 0.5, 1.0])),
        range_lo=draw(st.sampled_from([-math.inf, -1.0, 0.0])),
        range_hi=draw(st.sampled_from([math.inf, 20.0, 21.5])),
        interval_s=draw(st.sampled_from([5.0, 10.0])),
        nodata_k=draw(st.sampled_from([1.0, 2.5, 3.0])),
    )


@st.composite
def call_batch(draw, n: int, tmax: int, dup_ok: bool = True, invalid: bool = True):
    """Readings of one call: unique per (slot, ts) except for exact copies; shuffled."""
    cells = draw(st.dictionaries(
        st.tuples(st.integers(0, n - 1), st.integers(0, tmax)),
        st.tuples(st.one_of(HALF, st.just(NAN)) if invalid else HALF,
                  st.sampled_from([0, 0, 0, 1, 2, 3, 4] if invalid else [0, 0, 1])),
        max_size=30))
    readings = [(s, float(t), v, q) for (s, t), (v, q) in cells.items()]
    if dup_ok and readings:
        for i in draw(st.lists(st.integers(0, len(readings) - 1), max_size=4)):
            readings.append(readings[i])
    return draw(st.permutations(readings))


@st.composite
def ops_script(draw):
    n = draw(st.integers(1, 4))
    rules = draw(st.lists(limit_rules(), min_size=n, max_size=n))
    ops, clock, tbase = [], 0.0, 0
    for _ in range(draw(st.integers(1, 6))):
        clock += draw(st.sampled_from([0.0, 1.0, 7.0, 20.0, 40.0]))
        if draw(st.booleans()):
            # event times mostly move forward but may reach back (late readings)
            tbase += draw(st.integers(0, 30))
            batch = draw(call_batch(n, 40))
            ops.append(("eval", clock, [(s, t + tbase - 10, v, q) for s, t, v, q in batch]))
        else:
            sup = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=n, max_size=n)))
            ops.append(("check", clock, sup))
    return rules, ops


@PROPS
@given(ops_script())
def test_matches_the_reference_model(script):
    rules, ops = script
    n = len(rules)
    rig = Rig(*rules)
    refs = [RefSlot(r) for r in rules]
    for op, clock, arg in ops:
        now = T0 + 100_000 + clock
        if op == "eval":
            got = rig.feed(arg, rx=now)
            want = []
            for s, t, v, q in sorted(arg, key=lambda r: r[1]):
                want += [(s, *w) for w in refs[s].reading(T0 + t, v, q, now)]
        else:
            got = rig.check(100_000 + clock, arg)
            want = []
            for s in range(n):
                want += [(s, *w) for w in refs[s].check(now, bool(arg[s]) if arg else False)]
        want_keys = sorted(((s, str(c), ra, ts, None if isnan(v) else v)
                            for s, c, ra, ts, v, _ in want), key=lambda k: k[:4])
        assert keys(got) == want_keys, (op, arg)
        details = {(s, str(c), ra, ts): d for s, c, ra, ts, v, d in want}
        for t in got:
            d = details[key(t)[:4]]
            if d is not None:
                for k, x in d.items():
                    assert _close(x, t.detail[k]) if not isinstance(x, list) else \
                        [float(y) for y in t.detail[k]] == x, (t, k, x)
        for c in Cond:
            assert rig.active(c) == [ref.active[c] for ref in refs], c


# ---- properties over every condition kind -----------------------------------------------


@st.composite
def any_rules(draw) -> SensorRules:
    base = draw(limit_rules())
    return SensorRules(
        hh=base.hh, h=base.h, l=base.l, ll=base.ll, deadband=base.deadband,
        on_delay_s=base.on_delay_s, off_delay_s=base.off_delay_s,
        stuck_window_s=base.stuck_window_s, stuck_eps=base.stuck_eps,
        range_lo=base.range_lo, range_hi=base.range_hi,
        interval_s=base.interval_s, nodata_k=base.nodata_k,
        rate_rise_per_min=draw(st.sampled_from([NAN, 3.0, 30.0])),
        rate_fall_per_min=draw(st.sampled_from([NAN, 3.0, 30.0])),
        rate_tau_s=draw(st.sampled_from([10.0, 30.0, 60.0])),
        trend_tau_s=draw(st.sampled_from([NAN, 10.0, 40.0])),
        trend_lead_s=draw(st.sampled_from([30.0, 300.0])),
        deviation=draw(st.booleans()),
        deviation_alpha=draw(st.sampled_from([0.01, 0.2])),
        deviation_warmup=draw(st.sampled_from([0, 3, 10])),
        deviation_h=draw(st.sampled_from([2.0, 8.0])),
    )


@st.composite
def stream(draw, n: int, invalid: bool = True):
    """Each slot's readings with strictly increasing ts (exact duplicates allowed),
    merged and sorted by event time."""
    out = []
    for s in range(n):
        t = 0.0
        for _ in range(draw(st.integers(0, 25))):
            t += draw(st.sampled_from([1.0, 2.0, 5.0, 10.0, 30.0, 200.0]))
            if invalid:
                v = draw(st.one_of(HALF, HALF, HALF, st.just(NAN)))
                q = draw(st.sampled_from([0, 0, 0, 0, 1, 2, 3, 4]))
            else:
                v, q = draw(HALF), draw(st.sampled_from([0, 1]))
            out.append((s, t, v, q))
            if draw(st.integers(0, 9)) == 0:
                out.append((s, t, v, q))                      # exact duplicate
    out.sort(key=lambda r: r[1])
    return out


@st.composite
def split_case(draw):
    n = draw(st.integers(1, 3))
    rules = draw(st.lists(any_rules(), min_size=n, max_size=n))
    readings = draw(stream(n))
    cuts = sorted(draw(st.lists(st.integers(0, len(readings)), max_size=6)))
    seed = draw(st.integers(0, 2**16))
    return rules, readings, cuts, seed


def _chunks(readings, cuts, seed):
    bounds = [0, *cuts, len(readings)]
    return [shuffled(readings[a:b], seed + i) for i, (a, b) in enumerate(itertools.pairwise(bounds))]


@PROPS
@given(split_case())
def test_split_invariance_and_slot_independence(case):
    rules, readings, cuts, seed = case
    n = len(rules)
    whole = Rig(*rules)
    all_at_once = whole.feed(shuffled(readings, seed))
    split = Rig(*rules)
    pieces = []
    for i, chunk in enumerate(_chunks(readings, cuts, seed)):
        pieces += split.feed(chunk, rx=RX + i)
    assert_same_transitions(pieces, all_at_once)
    assert all_active(split.state, n) == all_active(whole.state, n)
    for s in range(n):
        alone = Rig(rules[s])
        mine = alone.feed([(0, t, v, q) for ss, t, v, q in readings if ss == s])
        theirs = [t for t in all_at_once if t.slot == s]
        assert_same_transitions([_reslot(t, s) for t in mine], theirs)


def _reslot(t: Transition, slot: int) -> Transition:
    return Transition(slot=slot, cond=t.cond, raised=t.raised, ts=t.ts, value=t.value,
                      detail=t.detail)


@PROPS
@given(split_case(), st.data())
def test_late_readings_change_nothing(case, data):
    rules, readings, cuts, seed = case
    n = len(rules)
    clean, noisy = Rig(*rules), Rig(*rules)
    newest: dict[int, float] = {}
    for i, chunk in enumerate(_chunks(readings, cuts, seed)):
        assert_same_transitions(noisy.feed(chunk, rx=RX + i), clean.feed(chunk, rx=RX + i))
        for s, t, _, _ in chunk:
            newest[s] = max(newest.get(s, -math.inf), t)
        late = []
        for s, top in newest.items():
            for _ in range(data.draw(st.integers(0, 3))):
                late.append((s, top - data.draw(st.sampled_from([0.0, 0.5, 1.0, 40.0])),
                             data.draw(st.one_of(HALF, st.just(NAN), st.just(1e6))),
                             data.draw(st.sampled_from([0, 1, 2, 3, 4]))))
        assert noisy.feed(late, rx=RX + i) == []
        assert all_active(noisy.state, n) == all_active(clean.state, n)


@PROPS
@given(split_case(), st.integers(0, 10))
def test_emit_false_replay_equals_emitted_run(case, tail_at):
    rules, readings, cuts, seed = case
    n = len(rules)
    chunks = _chunks(readings, cuts, seed)
    k = min(tail_at, len(chunks) - 1)
    replayed, live = Rig(*rules), Rig(*rules)
    for i, chunk in enumerate(chunks[:k]):
        assert replayed.feed(chunk, rx=RX + i, emit=False) == []
        live.feed(chunk, rx=RX + i)
        assert all_active(replayed.state, n) == all_active(live.state, n)
    for i, chunk in enumerate(chunks[k:]):
        assert_same_transitions(replayed.feed(chunk, rx=RX + k + i), live.feed(chunk, rx=RX + k + i))
    assert all_active(replayed.state, n) == all_active(live.state, n)


@st.composite
def script_all(draw):
    n = draw(st.integers(1, 3))
    rules = draw(st.lists(any_rules(), min_size=n, max_size=n))
    ops, clock, tbase = [], 0.0, 0
    for _ in range(draw(st.integers(1, 8))):
        clock += draw(st.sampled_from([0.0, 5.0, 30.0, 100.0]))
        if draw(st.integers(0, 2)):
            tbase += draw(st.integers(0, 60))
            batch = draw(call_batch(n, 80))
            ops.append(("eval", clock, [(s, t + tbase - 20, v, q) for s, t, v, q in batch]))
        else:
            sup = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=n, max_size=n)))
            ops.append(("check", clock, sup))
    return rules, ops


@PROPS
@given(script_all())
def test_raise_and_clear_alternate_and_active_reflects_them(script):
    rules, ops = script
    n = len(rules)
    rig = Rig(*rules)
    active: dict[tuple[int, Cond], bool] = defaultdict(bool)
    newest: dict[int, float] = {}
    for op, clock, arg in ops:
        now = T0 + 100_000 + clock
        if op == "eval":
            trs = rig.feed(arg, rx=now)
            given_ = {(s, T0 + t) for s, t, _, _ in arg}
            values = defaultdict(list)
            for s, t, v, _ in arg:
                values[(s, T0 + t)].append(v)
            for t in trs:
                assert t.ts > newest.get(t.slot, -math.inf)          # never from a late reading
                assert (t.slot, t.ts) in given_
                assert any((isnan(v) and isnan(t.value)) or v == t.value
                           for v in values[(t.slot, t.ts)])
                assert t.cond != Cond.OFFLINE
                assert t.cond != Cond.NO_DATA or not t.raised
            for s, t, _, _ in arg:
                newest[s] = max(newest.get(s, -math.inf), T0 + t)
        else:
            trs = rig.check(100_000 + clock, arg)
            for t in trs:
                assert t.cond == Cond.NO_DATA and t.raised and t.ts == now and isnan(t.value)
                assert not (arg and arg[t.slot])
        by = defaultdict(list)
        for t in trs:
            by[(t.slot, t.cond)].append(t)
        for k, group in by.items():
            group.sort(key=lambda t: t.ts)
            for t in group:
                assert t.raised != active[k], (k, [(x.raised, x.ts - T0) for x in group])
                active[k] = t.raised
        for c in Cond:
            assert rig.active(c) == [active[(s, c)] for s in range(n)], c


@st.composite
def quiet_case(draw):
    n = draw(st.integers(1, 3))
    rules, readings = [], []
    for s in range(n):
        l_ = draw(st.integers(-50, 50)) * 1.0
        deadband = draw(st.sampled_from([0.0, 0.5, 2.0]))
        width = draw(st.sampled_from([1.0, 5.0, 40.0]))
        h = l_ + 2 * deadband + width
        rate = draw(st.sampled_from([1.0, 6.0, 60.0]))
        slope = rate / 60 * draw(st.sampled_from([0.0, 0.1, 0.5]))   # max |dv/dt| per s
        lead = draw(st.sampled_from([60.0, 900.0]))
        ts_, t = [], 0.0
        for _ in range(draw(st.integers(1, 40))):
            t += draw(st.sampled_from([1.0, 5.0, 10.0, 60.0, 400.0]))
            ts_.append(t)
        span = ts_[-1] - ts_[0]
        margin = slope * (2 * span + 2 * lead) + 1.0
        rules.append(SensorRules(
            hh=h + margin, h=h, l=l_, ll=l_ - margin, deadband=deadband,
            on_delay_s=draw(st.sampled_from([0.0, 10.0])),
            rate_rise_per_min=rate, rate_fall_per_min=rate,
            rate_tau_s=draw(st.sampled_from([10.0, 60.0, 300.0])),
            trend_tau_s=draw(st.sampled_from([NAN, 30.0, 300.0])), trend_lead_s=lead,
            range_lo=l_ - 1000, range_hi=h + 1000))
        lo, hi = l_ + deadband + 1e-6, h - deadband - 1e-6     # strictly inside
        v = draw(st.floats(lo, hi))
        prev = None
        for t in ts_:
            if prev is not None:
                v = v + draw(st.floats(-1.0, 1.0)) * slope * (t - prev)
            v = min(max(v, lo), hi)
            prev = t
            readings.append((s, t, v, draw(st.sampled_from([0, 1]))))
    return rules, readings


@PROPS
@given(quiet_case(), st.integers(0, 2**16))
def test_quiet_series_never_raises(case, seed):
    rules, readings = case
    rig = Rig(*rules)
    assert rig.feed(shuffled(readings, seed)) == []
    for c in Cond:
        assert not rig.state.active(c).any()
