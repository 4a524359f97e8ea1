"""Scenario evaluation: warnings scored against the scenario's ground truth, and the offline
run that produces them straight through the rule engine. Pure: no MQTT, no database (the
live run through the real pipeline is hazardwatch/evaluation.py; it scores with `score`).

Offline run: the fleet's sensors become `SensorRow`s (sensor, site and gateway ids assigned
here) and every reading is fed to one `Engine` in send-time order, in chunks (60 s by
default), with rx = the chunk's end and `Engine.tick(chunk end)` after each chunk. A gateway
with a gateway fault (clock skew, duplicates, out-of-order batches, malformed payloads, a
lost link) goes through its real message plan (`Scenario.messages`), each payload decoded
as the collector would; a gateway without one sends each scan as it takes it (one message
an instant, send time = the instant), so its readings are taken from the site model's
arrays directly - the same readings and send times, without building and parsing payloads.
A gateway_offline fault becomes `Engine.gateway_state(offline)` at its start and `online`
at its end, as the broker's last-will and the reconnect would.

Scoring (`score`): an incident (truth entry) is detected when a warning of the same site and
cause is raised within [start, end + grace]; delay = raise - start; level accuracy = the
warning's max level vs the expected level; precision = matched warnings / warnings; false
warnings per site-day; and EEMUA 191's flood measure, the most warnings raised in any
10 minutes, for the centre and per desk (a desk = the duty officers of one region; the flood
line is 10 per operator). A "warning" is each raise or reactivation of a (site, cause)
episode - what the desk sees announced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import orjson

from rules.engine import Changes, Engine, SensorRow
from rules.model import Level
from rules.packs import load_packs
from simulators import scenario as scenario_mod
from simulators.faults import GATEWAY_FAULTS
from simulators.scenario import Scenario, sensor_spec

LEVELS = {lv.name.lower(): lv for lv in Level}
FLOOD_WINDOW_S = 600.0
FLOOD_LINE = 10


@dataclass
class WarningRecord:
    """One raise (or reactivation) of a (site, cause) episode; times in scenario seconds."""

    site: str
    cause: str
    raised_s: float                  # event time of the condition that raised it
    level: str                       # the highest level it reached while active
    cleared_s: float | None = None
    seen_s: float | None = None      # processing time it was raised at
    alarms: list[str] = field(default_factory=list)   # "TAG:cond" or "gateway-N:cond"


@dataclass(frozen=True)
class Truth:
    site: str
    cause: str
    level: str
    start_s: float
    end_s: float
    source: str = ""


@dataclass
class Match:
    truth: Truth
    detected: bool
    delay_s: float | None = None
    level_found: str | None = None
    level_ok: bool = False


@dataclass
class Score:
    matches: list[Match]
    warnings: int
    matched_warnings: int
    false_warnings: int
    site_days: float
    max_per_10min: int                      # the whole centre
    max_per_desk: dict[str, int] = field(default_factory=dict)   # region code -> max in 10 min
    false_list: list[WarningRecord] = field(default_factory=list)

    @property
    def recall(self) -> float | None:
        return sum(m.detected for m in self.matches) / len(self.matches) if self.matches else None

    @property
    def precision(self) -> float | None:
        return self.matched_warnings / self.warnings if self.warnings else None

    @property
    def level_accuracy(self) -> float | None:
        found = [m for m in self.matches if m.detected]
        return sum(m.level_ok for m in found) / len(found) if found else None

    @property
    def false_per_site_day(self) -> float:
        return self.false_warnings / self.site_days if self.site_days else 0.0

    @property
    def delays(self) -> list[float]:
        return [m.delay_s for m in self.matches if m.delay_s is not None]

    @property
    def max_desk(self) -> int:
        """The busiest desk's most warnings in any 10 minutes (the EEMUA 191 figure)."""
        return max(self.max_per_desk.values(), default=self.max_per_10min)

    def as_dict(self) -> dict:
        d = self.delays
        return {
            "recall": self.recall, "precision": self.precision,
            "level_accuracy": self.level_accuracy,
            "delay_s": {"mean": float(np.mean(d)) if d else None,
                        "median": float(np.median(d)) if d else None,
                        "max": float(max(d)) if d else None},
            "warnings": self.warnings, "matched_warnings": self.matched_warnings,
            "false_warnings": self.false_warnings, "site_days": self.site_days,
            "false_per_site_day": self.false_per_site_day,
            "max_per_10min": self.max_per_10min, "max_per_desk_10min": dict(self.max_per_desk),
            "flood_line": FLOOD_LINE,
            "incidents": [{**asdict(m.truth), "detected": m.detected, "delay_s": m.delay_s,
                           "level_found": m.level_found, "level_ok": m.level_ok}
                          for m in self.matches],
            "false": [{"site": w.site, "cause": w.cause, "raised_s": w.raised_s, "level": w.level,
                       "alarms": w.alarms} for w in self.false_list],
        }


def max_in_window(times: Sequence[float], window_s: float = FLOOD_WINDOW_S) -> int:
    """Most of `times` inside any half-open window [t, t + window_s)."""
    t = np.sort(np.asarray(times, dtype=float))
    if not t.size:
        return 0
    ends = np.searchsorted(t, t + window_s, side="left")
    return int((ends - np.arange(t.size)).max())


def score(truth: Sequence[Truth], warnings: Sequence[WarningRecord], *, site_days: float,
          grace_s: float = 1800.0, desks: Mapping[str, str] | None = None) -> Score:
    """desks: site -> desk (region code); without it every site is one desk."""
    def inside(w: WarningRecord, t: Truth) -> bool:
        return w.site == t.site and w.cause == t.cause and t.start_s <= w.raised_s <= t.end_s + grace_s

    matches = []
    for t in truth:
        hits = [w for w in warnings if inside(w, t)]
        if not hits:
            matches.append(Match(t, False))
            continue
        first = min(hits, key=lambda w: w.raised_s)
        top = max(hits, key=lambda w: LEVELS[w.level])
        matches.append(Match(t, True, first.raised_s - t.start_s, top.level, top.level == t.level))
    false = [w for w in warnings if not any(inside(w, t) for t in truth)]
    by_desk: dict[str, list[float]] = {}
    for w in warnings:
        by_desk.setdefault(desks.get(w.site, "?") if desks else "centre", []).append(w.raised_s)
    if desks:
        for desk in set(desks.values()):
            by_desk.setdefault(desk, [])
    return Score(matches, len(warnings), len(warnings) - len(false), len(false), site_days,
                 max_in_window([w.raised_s for w in warnings]),
                 {desk: max_in_window(ts) for desk, ts in sorted(by_desk.items())}, false)


# ---------------------------------------------------------------------------- the fleet


def sensor_rows(sc: Scenario) -> tuple[list[SensorRow], dict[int, tuple[str, str]],
                                       dict[str, int], dict[tuple[str, str], int]]:
    """The fleet as engine rows: (rows, sensor id → (site, tag), site → site id,
    (enterprise, gateway) → gateway id)."""
    rows, sensors, site_ids, gateway_ids = [], {}, {}, {}
    for e in sc.enterprises:
        for s in e.sites:
            site_ids[s.id] = len(site_ids) + 1
            for gw in s.gateways.values():
                gateway_ids[(e.code, gw)] = len(gateway_ids) + 1
            for x in s.sensors:
                sid = len(sensors) + 1
                sensors[sid] = (s.id, x.tag)
                rows.append(SensorRow(sid, site_ids[s.id], gateway_ids[(e.code, s.gateways[x.gateway])],
                                      s.kind, s.grade, sensor_spec(x)))
    return rows, sensors, site_ids, gateway_ids


def desks_of(sc: Scenario) -> dict[str, str]:
    """site -> its desk: the region of its enterprise (officers are scoped to a region)."""
    return {s.id: e.region for e in sc.enterprises for s in e.sites}


def site_days(sc: Scenario) -> float:
    return len(sc.sites) * sc.duration / 86400.0


def truth_of(sc: Scenario) -> list[Truth]:
    return [Truth(t.site, t.cause, t.level, t.start_s, t.end_s, t.source) for t in sc.truth()]


# ---------------------------------------------------------------------------- offline run


@dataclass
class Run:
    warnings: list[WarningRecord]
    readings: int = 0
    malformed: int = 0
    chunks: int = 0


@dataclass
class Feed:
    """Everything the gateways send, in send order: readings as arrays and link actions."""

    at: np.ndarray        # send time, scenario seconds
    ts: np.ndarray        # event time, epoch seconds (as stamped, ms resolution)
    sensor: np.ndarray    # sensor id
    value: np.ndarray     # NaN = null
    actions: list[tuple[float, int, bool]]   # (send time, gateway id, online)
    malformed: int = 0


def _decode(payload: bytes) -> list[tuple[float, str, float | None]] | None:
    """(ts s, tag, value) of a native batch; None when the collector would refuse it."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, list):
        doc = [doc]
    out = []
    for item in doc:
        if not isinstance(item, dict) or not isinstance(item.get("ts"), int) or item["ts"] < 10**11:
            return None
        values = item.get("values")
        if not isinstance(values, dict) or any(
                v is not None and (isinstance(v, bool) or not isinstance(v, int | float))
                for v in values.values()):
            return None
        out += [(item["ts"] / 1000.0, tag, v) for tag, v in values.items()]
    return out


def build_feed(sc: Scenario, gateway_ids: Mapping[tuple[str, str], int],
               tag_ids: Mapping[tuple[str, str], int], base: float,
               batch_readings: int | None = None) -> Feed:
    """The whole scenario as the collector would receive it (see the module docstring)."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    actions: list[tuple[float, int, bool]] = []
    malformed = 0
    cache: dict[str, dict] = {}
    saved = scenario_mod.BATCH_READINGS
    if batch_readings is not None:
        scenario_mod.BATCH_READINGS = int(batch_readings)
    try:
        for ent, gw, site in sc.gateways():
            gid = gateway_ids[(ent, gw)]
            faulty = any(s == site.id and f.kind in GATEWAY_FAULTS and f.target == gw
                         for s, f in sc.faults)
            role = next(r for r, g in site.gateways.items() if g == gw)
            tags = [x.tag for x in site.sensors if x.gateway == role]
            if not faulty:
                data = cache.get(site.id)
                if data is None:
                    data = cache[site.id] = sc.readings(site.id)
                instants = np.unique(np.concatenate([data[tag][0] for tag in tags]))
                # every scan alone in its message (scans >= BATCH_SECONDS apart): send = scan
                if instants.size < 2 or np.diff(instants).min() >= scenario_mod.BATCH_SECONDS:
                    for tag in tags:
                        t, v = data[tag]
                        parts.append((t, np.round((base + t) * 1000.0) / 1000.0,
                                      np.full(t.size, tag_ids[(site.id, tag)], dtype=np.int64),
                                      np.asarray(v, dtype=np.float64)))
                    continue
            at_l, ts_l, sid_l, val_l = [], [], [], []
            for m in sc.messages(ent, gw, base):
                if m.action in ("drop", "reconnect"):
                    actions.append((m.at, gid, m.action == "reconnect"))
                    continue
                decoded = _decode(m.payload)
                if decoded is None:
                    malformed += 1
                    continue
                for ts, tag, v in decoded:
                    sid = tag_ids.get((site.id, tag))
                    if sid is not None:
                        at_l.append(m.at)
                        ts_l.append(ts)
                        sid_l.append(sid)
                        val_l.append(np.nan if v is None else float(v))
            parts.append((np.array(at_l, dtype=np.float64), np.array(ts_l, dtype=np.float64),
                          np.array(sid_l, dtype=np.int64), np.array(val_l, dtype=np.float64)))
    finally:
        scenario_mod.BATCH_READINGS = saved
    if parts:
        at, ts, sid, val = (np.concatenate([p[i] for p in parts]) for i in range(4))
    else:
        at = ts = val = np.zeros(0)
        sid = np.zeros(0, dtype=np.int64)
    order = np.argsort(at, kind="stable")
    actions.sort(key=lambda a: (a[0], a[1]))
    return Feed(at[order], ts[order], sid[order], val[order], actions, malformed)


def run(sc: Scenario, *, chunk_s: float = 60.0, packs: dict | None = None,
        batch_readings: int | None = None,
        progress: Callable[[float], None] | None = None) -> Run:
    """Feed the whole scenario through an engine; the warnings it raised.

    batch_readings: readings per gateway message (default: the simulator's
    scenario.BATCH_READINGS, as `hazardwatch simulate` publishes; 1 sends every instant)."""
    rows, sensors, site_ids, gateway_ids = sensor_rows(sc)
    engine = Engine(packs if packs is not None else load_packs())
    engine.load(rows)
    site_of = {v: k for k, v in site_ids.items()}
    tag_ids = {(site, tag): sid for sid, (site, tag) in sensors.items()}
    base = sc.start.timestamp()
    feed = build_feed(sc, gateway_ids, tag_ids, base, batch_readings)

    result = Run([], malformed=feed.malformed)
    open_: dict[tuple[int, str], WarningRecord] = {}

    def collect(ch: Changes, seen: float) -> None:
        for ep, action, detail in ch.events:
            key = (ep.site_id, ep.cause.name)
            if action in ("raised", "reactivated"):
                w = WarningRecord(site_of[ep.site_id], ep.cause.name, ep.opened_at - base
                                  if action == "raised" else _first_alarm(ep) - base,
                                  ep.level.name.lower(), seen_s=seen - base)
                open_[key] = w
                result.warnings.append(w)
            elif action == "cleared" and key in open_:
                open_.pop(key).cleared_s = (ep.cleared_at or seen) - base
            elif action == "alarm_raised" and key in open_:
                src = (sensors[detail["sensor_id"]][1] if "sensor_id" in detail
                       else f"gateway-{detail.get('gateway_id')}")
                name = f"{src}:{detail['condition']}"
                if name not in open_[key].alarms:
                    open_[key].alarms.append(name)
        for key, w in open_.items():
            ep = engine.episodes.get(key)
            if ep is not None and LEVELS[ep.level.name.lower()] > LEVELS[w.level]:
                w.level = ep.level.name.lower()

    def flush(a: int, b: int, rx: float) -> None:
        if b <= a:
            return
        val = feed.value[a:b]
        q = np.where(np.isnan(val), 2, 0).astype(np.int16)
        collect(engine.readings(feed.sensor[a:b], feed.ts[a:b], val, q, rx), rx)
        result.readings += b - a

    i, k = 0, 0
    chunk_end = chunk_s
    while chunk_end - chunk_s < sc.duration:
        rx = base + chunk_end
        while k < len(feed.actions) and feed.actions[k][0] < chunk_end:
            at, gid, online = feed.actions[k]
            j = int(np.searchsorted(feed.at, at, side="left"))
            flush(i, j, rx)
            i = max(i, j)
            collect(engine.gateway_state(gid, online, base + at, rx), rx)
            k += 1
        j = int(np.searchsorted(feed.at, chunk_end, side="left"))
        flush(i, j, rx)
        i = max(i, j)
        collect(engine.tick(rx), rx)
        result.chunks += 1
        if progress is not None:
            progress(min(chunk_end, sc.duration))
        chunk_end += chunk_s
    return result


def _first_alarm(ep) -> float:
    return min((a.raised_at for a in ep.alarms.values()), default=ep.opened_at)


def evaluate(sc: Scenario, *, grace_s: float = 1800.0, chunk_s: float = 60.0,
             batch_readings: int | None = None,
             progress: Callable[[float], None] | None = None) -> tuple[Score, Run]:
    r = run(sc, chunk_s=chunk_s, batch_readings=batch_readings, progress=progress)
    return score(truth_of(sc), r.warnings, site_days=site_days(sc), grace_s=grace_s,
                 desks=desks_of(sc)), r


# ---------------------------------------------------------------------------- stored warnings


def records_from_rows(warnings: Sequence[tuple], alarms: Sequence[tuple],
                      events: Sequence[tuple], base: float) -> list[WarningRecord]:
    """WarningRecords (one per raise or reactivation) from what the pipeline stored.

    warnings: (id, site, cause, opened_at epoch s); alarms: (warning id, raised_at,
    cleared_at or None, name) with event times; events: (warning id, action, level) in
    insertion order. An activation is a `raised`/`reactivated` event; its level is the
    highest level of the events up to the next one, and its raise time the event time of
    the first alarm of that activation (alarms grouped by overlap: a new group starts when
    an alarm is raised after every earlier one has cleared, as the engine reactivates)."""
    acts: dict[int, list[int]] = {}
    for wid, action, level in events:
        lst = acts.setdefault(wid, [])
        if action in ("raised", "reactivated"):
            lst.append(int(level or 1))
        elif lst and level is not None:
            lst[-1] = max(lst[-1], int(level))
    groups: dict[int, list[tuple[float, float | None, list[str]]]] = {}
    for wid, raised, cleared, name in sorted(alarms, key=lambda a: (a[0], a[1])):
        g = groups.setdefault(wid, [])
        if g and (g[-1][1] is None or raised <= g[-1][1]):
            start, end, names = g[-1]
            g[-1] = (start, None if end is None or cleared is None else max(end, cleared),
                     [*names, name] if name not in names else names)
        else:
            g.append((raised, cleared, [name]))
    out = []
    for wid, site, cause, opened in warnings:
        g = groups.get(wid, [])
        for k, level in enumerate(acts.get(wid, [])):
            if k == 0:
                raised, names = opened, g[0][2] if g else []
            elif k < len(g):
                raised, names = g[k][0], g[k][2]
            else:                   # alarms out of step with the events: keep the count right
                raised, names = (g[-1][0], g[-1][2]) if g else (opened, [])
            cleared = g[k][1] if k < len(g) else None
            # stamps carry milliseconds (payloads) and the database microseconds: round
            # away the float noise of subtracting the base
            out.append(WarningRecord(site, cause, round(raised - base, 3), Level(level).name.lower(),
                                     None if cleared is None else round(cleared - base, 3),
                                     alarms=names))
    return sorted(out, key=lambda w: w.raised_s)
