"""Sensor conditions (报警), vectorised: a batch of readings → raise/clear transitions.

All state lives in flat numpy arrays indexed by sensor *slot*, so one batch costs a few
dozen array operations however many sensors it touches. Readings are processed per slot
in event-time order, in *rounds*: round r takes the r-th reading of every slot at once.
A typical ingest batch (one reading per sensor per gateway message) is one or two rounds.

Slopes come from an exponentially weighted least-squares fit (time constant tau) kept as
five running sums re-centred on the newest reading: O(1) state per sensor, exact on a
linear ramp, irregular sampling handled by weighting with exp(-age / tau). No window of
raw readings is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rules.model import PARAM_FIELDS, Cond, SensorRules

COND_INDEX: dict[Cond, int] = {c: i for i, c in enumerate(Cond)}
_NAN = np.nan
_SIGMA_FLOOR = 1e-9


@dataclass(frozen=True, slots=True)
class Transition:
    slot: int
    cond: Cond
    raised: bool    # True: raise, False: clear
    ts: float       # event time of the causing reading (no_data: processing time)
    value: float    # that reading's value, NaN when none
    detail: dict


class Params:
    """One float64 array per SensorRules field, plus which rule families anyone uses."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.__dict__.update(arrays)
        self.n = len(arrays[PARAM_FIELDS[0]])
        self.limit_on = {c: ~np.isnan(arrays[c.value]) for c in (Cond.HH, Cond.H, Cond.L, Cond.LL)}
        self.rate_on = ~np.isnan(self.rate_rise_per_min) | ~np.isnan(self.rate_fall_per_min)
        self.trend_on = ~np.isnan(self.trend_tau_s) & (np.isfinite(self.hh) | np.isfinite(self.ll))
        self.dev_on = self.deviation > 0
        self.stuck_on = ~np.isnan(self.stuck_window_s)
        self.any = {
            "limits": {c: bool(m.any()) for c, m in self.limit_on.items()},
            "rate": bool(self.rate_on.any()),
            "trend": bool(self.trend_on.any()),
            "deviation": bool(self.dev_on.any()),
            "stuck": bool(self.stuck_on.any()),
        }

    @classmethod
    def from_rules(cls, rules: Sequence[SensorRules]) -> Params:
        arrays = {name: np.fromiter((float(getattr(r, name)) for r in rules), dtype=np.float64,
                                    count=len(rules))
                  for name in PARAM_FIELDS}
        return cls(arrays)


class _Fit:
    """Exponentially weighted linear regression per slot, origin at the newest point.

    Values are held relative to the fit's first value (v0) so large offsets (pressures in
    Pa) do not cancel in the sums. The nine per-slot fields are rows of one (9, n) array,
    so a batch gathers and scatters them in one call each.
    """

    FIELDS = ("s0", "st", "stt", "sv", "stv", "t0", "v0", "last", "n")

    def __init__(self, n: int, warm: float) -> None:
        self.warm = warm  # ready once the readings span warm × tau
        self.data = np.zeros((len(self.FIELDS), n))
        self.data[self.FIELDS.index("last")] = -np.inf
        self._views()

    def _views(self) -> None:
        for i, f in enumerate(self.FIELDS):
            setattr(self, f, self.data[i])

    def resize(self, n: int) -> None:
        new = np.zeros((len(self.FIELDS), n))
        new[self.FIELDS.index("last")] = -np.inf
        keep = min(n, self.data.shape[1])
        new[:, :keep] = self.data[:, :keep]
        self.data = new
        self._views()

    @property
    def nbytes(self) -> int:
        return len(self.FIELDS) * self.data.itemsize

    def update(self, idx: np.ndarray, ts: np.ndarray, v: np.ndarray, tau: np.ndarray):
        """Add one point per slot (idx unique); return (slope per s, fitted value now, ready)."""
        d = self.data[:, idx]
        s0, st, stt, sv, stv, t0, v0, last, n = d   # views into d
        dt = ts - last
        reset = (n == 0) | (dt > 5.0 * tau)
        if reset.any():  # a new fit: empty sums, origin at this point
            dt[reset] = 0.0
            d[:5, reset] = 0.0
            t0[reset], v0[reset], n[reset] = ts[reset], v[reset], 0.0
        w = np.exp(-dt / tau)
        # shift the origin to the new point (old times become t - dt), then decay
        stt[:] = w * (stt - 2.0 * dt * st + dt * dt * s0)
        stv[:] = w * (stv - dt * sv)
        st[:] = w * (st - dt * s0)
        s0 *= w
        s0 += 1.0
        sv *= w
        sv += v - v0
        last[:] = ts
        n += 1.0
        self.data[:, idx] = d
        den = s0 * stt - st * st
        ok = den > 1e-12 * np.maximum(s0 * stt, 1e-300)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(ok, (s0 * stv - st * sv) / np.where(ok, den, 1.0), 0.0)
        fitted = v0 + (sv - slope * st) / s0
        ready = ok & (n >= 3) & (ts - t0 >= self.warm * tau)
        return slope, fitted, ready


class State:
    """Per-slot condition state. ~260 bytes a sensor (see nbytes_per_sensor)."""

    _FLOATS = ("last_ts", "last_rx", "pend_hh", "pend_h", "pend_l", "pend_ll",
               "dev_mean", "dev_var", "dev_n", "dev_pos", "dev_neg", "stuck_ref", "stuck_since")
    _INIT = {"last_ts": -np.inf}

    def __init__(self, n: int) -> None:
        self.n = 0
        self.flags = np.zeros((len(COND_INDEX), 0), dtype=bool)
        for f in self._FLOATS:
            setattr(self, f, np.zeros(0))
        self.rate_fit = _Fit(0, warm=0.5)
        # A projection needs a full time constant of history: over less, a fit on the rising
        # half of a periodic process (a collector's ΔP between cleaning pulses, 7-10 min)
        # projects a limit that the next pulse takes away (5 % of 1-hour dust runs warned so).
        self.trend_fit = _Fit(0, warm=1.0)
        self._mark = np.zeros(0, dtype=np.int64)
        self.resize(n)

    def resize(self, n: int) -> None:
        if n == self.n:
            return
        flags = np.zeros((len(COND_INDEX), n), dtype=bool)
        keep = min(n, self.n)
        flags[:, :keep] = self.flags[:, :keep]
        self.flags = flags
        for f in self._FLOATS:
            old = getattr(self, f)
            new = np.full(n, self._INIT.get(f, 0.0 if f.startswith("dev_") else _NAN))
            new[:keep] = old[:keep]
            setattr(self, f, new)
        self.rate_fit.resize(n)
        self.trend_fit.resize(n)
        self.n = n

    def one_per_slot(self, slots: np.ndarray) -> bool:
        """True when no slot occurs twice (O(n), no sort: a marker array per state)."""
        if len(slots) < 2:
            return True
        if len(self._mark) != self.n:
            self._mark = np.zeros(self.n, dtype=np.int64)
        pos = np.arange(1, len(slots) + 1)
        self._mark[slots] = pos
        return bool((self._mark[slots] == pos).all())

    def active(self, cond: Cond) -> np.ndarray:
        return self.flags[COND_INDEX[cond]]

    def set_active(self, slot: int, cond: Cond, on: bool) -> None:
        self.flags[COND_INDEX[cond], slot] = on

    @property
    def nbytes_per_sensor(self) -> int:
        return (self.flags.shape[0] * self.flags.itemsize
                + sum(getattr(self, f).itemsize for f in self._FLOATS)
                + self.rate_fit.nbytes + self.trend_fit.nbytes)


class _Out:
    """Collects transitions of one call; builds Python objects only for what fired."""

    def __init__(self, state: State, emit: bool) -> None:
        self.state, self.emit = state, emit
        self.items: list[Transition] = []

    def fire(self, cond: Cond, idx: np.ndarray, mask: np.ndarray, raised, ts, value,
             detail=None) -> None:
        """Flip `cond` for idx[mask]; `raised`, `ts`, `value` are arrays over idx or scalars;
        detail(i) builds the detail of element i of idx."""
        if not mask.any():
            return
        hit = np.flatnonzero(mask)
        if len(hit) > 1:
            hit = hit[np.argsort(idx[hit], kind="stable")]  # slot order, whatever the input order
        row = self.state.flags[COND_INDEX[cond]]
        rz = np.broadcast_to(raised, idx.shape)
        row[idx[hit]] = rz[hit]
        if not self.emit:
            return
        tsb = np.broadcast_to(ts, idx.shape)
        vb = np.broadcast_to(value, idx.shape)
        for i in hit:
            self.items.append(Transition(int(idx[i]), cond, bool(rz[i]), float(tsb[i]),
                                         float(vb[i]), detail(i) if detail is not None else {}))


def evaluate(state: State, params: Params, slots: np.ndarray, ts: np.ndarray, value: np.ndarray,
             quality: np.ndarray, rx: float, *, emit: bool = True) -> list[Transition]:
    """Evaluate readings (any order, several per slot) against every condition."""
    out = _Out(state, emit)
    if len(slots) == 0:
        return out.items
    slots = np.asarray(slots, dtype=np.int64)
    ts = np.asarray(ts, dtype=np.float64)
    if state.one_per_slot(slots):
        # The common batch (each sensor at most once): one round, no sort. Transitions
        # still come out in slot order (_Out sorts what fired).
        s, t = slots, ts
        v = np.asarray(value, dtype=np.float64)
        q = np.asarray(quality)
        keep = t > state.last_ts[s]      # late or repeated readings never rewind state
        if not keep.all():
            s, t, v, q = s[keep], t[keep], v[keep], q[keep]
        if len(s):
            _round(state, params, out, s, t, v, q, rx)
        return out.items
    order = np.lexsort((ts, slots))  # by slot, then time; stable: first of equal times wins
    s, t = slots[order], ts[order]
    v = np.asarray(value, dtype=np.float64)[order]
    q = np.asarray(quality)[order]
    keep = t > state.last_ts[s]      # late or repeated readings never rewind state
    if len(s) > 1:
        keep[1:] &= ~((s[1:] == s[:-1]) & (t[1:] == t[:-1]))
    if not keep.all():
        s, t, v, q = s[keep], t[keep], v[keep], q[keep]
    if len(s) == 0:
        return out.items
    # rank of each reading within its slot: round number
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    pos = np.arange(len(s))
    rank = pos - np.maximum.accumulate(np.where(first, pos, 0))
    if not rank.any():
        _round(state, params, out, s, t, v, q, rx)
    else:
        by_round = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_round], np.arange(rank.max() + 2))
        for r in range(len(bounds) - 1):
            sel = by_round[bounds[r]:bounds[r + 1]]
            _round(state, params, out, s[sel], t[sel], v[sel], q[sel], rx)
    return out.items


def _round(state: State, params: Params, out: _Out, idx: np.ndarray, ts: np.ndarray,
           v: np.ndarray, q: np.ndarray, rx: float) -> None:
    """One reading per slot (idx unique)."""
    state.last_ts[idx] = ts
    state.last_rx[idx] = rx
    nodata = state.flags[COND_INDEX[Cond.NO_DATA]][idx]
    out.fire(Cond.NO_DATA, idx, nodata, False, ts, v)

    lo, hi = params.range_lo[idx], params.range_hi[idx]
    maint = q == 4
    outside = ~maint & ((v < lo) | (v > hi))
    bad = ~maint & ~outside & ((v != v) | (q == 2) | (q == 3))
    valid = ~maint & ~outside & ~bad
    _flag(out, Cond.OUT_OF_RANGE, idx, ts, v, outside, valid,
          lambda i: {"range": [float(lo[i]), float(hi[i])]})
    _flag(out, Cond.BAD_QUALITY, idx, ts, v, bad, valid, lambda i: {"quality": int(q[i])})
    if not valid.all():
        idx, ts, v = idx[valid], ts[valid], v[valid]
        if len(idx) == 0:
            return

    for cond in (Cond.HH, Cond.H, Cond.L, Cond.LL):
        if params.any["limits"][cond]:
            _limit(state, params, out, cond, idx, ts, v)
    if params.any["rate"]:
        _rate(state, params, out, idx, ts, v)
    if params.any["trend"]:
        _trend(state, params, out, idx, ts, v)
    if params.any["deviation"]:
        _deviation(state, params, out, idx, ts, v)
    if params.any["stuck"]:
        _stuck(state, params, out, idx, ts, v)


def _flag(out: _Out, cond: Cond, idx, ts, v, on: np.ndarray, off: np.ndarray, detail) -> None:
    """A condition that holds exactly while readings say so (faults)."""
    act = out.state.flags[COND_INDEX[cond]][idx]
    out.fire(cond, idx, (on & ~act) | (off & act), ~act, ts, v, detail)


def _subset(mask: np.ndarray, *arrays):
    if mask.all():
        return arrays
    return tuple(a[mask] for a in arrays)


def _limit(state: State, params: Params, out: _Out, cond: Cond, idx, ts, v) -> None:
    on = params.limit_on[cond][idx]
    if not on.any():
        return
    idx, ts, v = _subset(on, idx, ts, v)
    lim = getattr(params, cond.value)[idx]
    dead = params.deadband[idx]
    act = state.flags[COND_INDEX[cond]][idx]
    if cond in (Cond.HH, Cond.H):
        meet = np.where(act, v < lim - dead, v >= lim)
    else:
        meet = np.where(act, v > lim + dead, v <= lim)
    pend_arr = getattr(state, "pend_" + cond.value)
    pend = pend_arr[idx]
    pend = np.where(meet, np.where(np.isnan(pend), ts, pend), _NAN)
    delay = np.where(act, params.off_delay_s[idx], params.on_delay_s[idx])
    fire = meet & (ts - pend >= delay)
    pend[fire] = _NAN
    pend_arr[idx] = pend
    out.fire(cond, idx, fire, ~act, ts, v, lambda i: {"limit": float(lim[i])})


def _rate(state: State, params: Params, out: _Out, idx, ts, v) -> None:
    on = params.rate_on[idx]
    if not on.any():
        return
    idx, ts, v = _subset(on, idx, ts, v)
    slope, _, ready = state.rate_fit.update(idx, ts, v, params.rate_tau_s[idx])
    per_min = slope * 60.0
    for cond, lim, signed in ((Cond.RATE_RISE, params.rate_rise_per_min[idx], per_min),
                              (Cond.RATE_FALL, params.rate_fall_per_min[idx], -per_min)):
        act = state.flags[COND_INDEX[cond]][idx]
        off = np.isnan(lim)
        raise_ = ready & ~act & ~off & (signed >= lim)
        clear = act & (off | (ready & (signed < 0.8 * lim)))
        out.fire(cond, idx, raise_ | clear, ~act, ts, v,
                 lambda i, lim=lim: {"rate_per_min": float(per_min[i]), "limit_per_min": float(lim[i])})


def _trend(state: State, params: Params, out: _Out, idx, ts, v) -> None:
    on = params.trend_on[idx]
    if not on.any():
        return
    idx, ts, v = _subset(on, idx, ts, v)
    slope, fitted, ready = state.trend_fit.update(idx, ts, v, params.trend_tau_s[idx])
    lead = params.trend_lead_s[idx]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # tiny slope: inf, fine
        for cond, lim, toward in ((Cond.TREND_HH, params.hh[idx], slope > 0),
                                  (Cond.TREND_LL, params.ll[idx], slope < 0)):
            act = state.flags[COND_INDEX[cond]][idx]
            off = ~np.isfinite(lim)
            proj = np.where(toward, np.maximum(0.0, (lim - fitted) / np.where(toward, slope, 1.0)),
                            np.inf)
            raise_ = ready & ~act & ~off & toward & (proj <= lead)
            clear = act & (off | (ready & (~toward | (proj > 1.25 * lead))))
            out.fire(cond, idx, raise_ | clear, ~act, ts, v,
                     lambda i, lim=lim, proj=proj: {
                         "projected_s": float(proj[i]) if np.isfinite(proj[i]) else None,
                         "slope_per_min": float(slope[i] * 60.0), "limit": float(lim[i]),
                         "fitted": float(fitted[i])})


def _deviation(state: State, params: Params, out: _Out, idx, ts, v) -> None:
    on = params.dev_on[idx]
    if not on.any():
        return
    idx, ts, v = _subset(on, idx, ts, v)
    n = state.dev_n[idx]
    mean, var = state.dev_mean[idx], state.dev_var[idx]
    k, h = params.deviation_k[idx], params.deviation_h[idx]
    warm = n >= params.deviation_warmup[idx]
    sigma = np.sqrt(np.maximum(var, np.maximum(_SIGMA_FLOOR, 1e-6 * np.abs(mean)) ** 2))
    z = (v - mean) / sigma
    pos = np.where(warm, np.maximum(0.0, state.dev_pos[idx] + z - k), 0.0)
    neg = np.where(warm, np.maximum(0.0, state.dev_neg[idx] - z - k), 0.0)
    state.dev_pos[idx], state.dev_neg[idx] = pos, neg
    act = state.flags[COND_INDEX[Cond.DEVIATION]][idx]
    raise_ = warm & ~act & (np.maximum(pos, neg) >= h)
    clear = act & (pos < 0.5 * h) & (neg < 0.5 * h)
    out.fire(Cond.DEVIATION, idx, raise_ | clear, ~act, ts, v,
             lambda i: {"baseline": float(mean[i]), "sigma": float(sigma[i]), "z": float(z[i]),
                        "cusum": float(max(pos[i], neg[i]))})
    # Baseline: exact mean/variance while young (weight 1/(n+1)), EWMA once alpha dominates.
    a = np.maximum(params.deviation_alpha[idx], 1.0 / (n + 1.0))
    d = v - mean
    state.dev_mean[idx] = mean + a * d
    state.dev_var[idx] = (1.0 - a) * (var + a * d * d)
    state.dev_n[idx] = np.minimum(n + 1.0, 1e9)


def _stuck(state: State, params: Params, out: _Out, idx, ts, v) -> None:
    on = params.stuck_on[idx]
    if not on.any():
        return
    idx, ts, v = _subset(on, idx, ts, v)
    ref, since = state.stuck_ref[idx], state.stuck_since[idx]
    change = np.isnan(ref) | (np.abs(v - ref) > params.stuck_eps[idx])
    ref = np.where(change, v, ref)
    since = np.where(change, ts, since)
    state.stuck_ref[idx], state.stuck_since[idx] = ref, since
    act = state.flags[COND_INDEX[Cond.STUCK]][idx]
    window = params.stuck_window_s[idx]
    raise_ = ~act & ~change & (ts - since >= window)
    clear = act & change
    out.fire(Cond.STUCK, idx, raise_ | clear, ~act, ts, v,
             lambda i: {"since": float(since[i]), "window_s": float(window[i])})


def check_no_data(state: State, params: Params, now: float,
                  suppressed: np.ndarray | None = None) -> list[Transition]:
    """Processing-time check: raise no_data where a slot has been silent too long.

    A slot whose clock never started (new, or just restarted) starts it now, so a restart
    gives every sensor a full k x interval before it is called silent."""
    out = _Out(state, True)
    last = state.last_rx
    fresh = np.isnan(last)
    if fresh.any():
        last[fresh] = now
    silent = now - last
    due = ~state.flags[COND_INDEX[Cond.NO_DATA]] & (silent >= params.nodata_k * params.interval_s)
    if suppressed is not None:
        due &= ~suppressed
    if due.any():
        idx = np.flatnonzero(due)
        expected = params.nodata_k * params.interval_s
        out.fire(Cond.NO_DATA, idx, np.ones(len(idx), dtype=bool), True, now, _NAN,
                 lambda i: {"silent_s": float(silent[idx[i]]), "expected_s": float(expected[idx[i]])})
    return out.items
