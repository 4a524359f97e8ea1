"""Offline evaluation: a scenario straight through the rule engine, scored against its ground
truth. Pure: no MQTT, no database.

The fleet's sensors become `SensorRow`s (sensor, site and gateway ids assigned here), each
gateway's message plan (`Scenario.messages`: sensor faults, clock skew, duplicates,
out-of-order batches and malformed payloads applied) is decoded as the collector would, and
the readings are fed to an `Engine` in send-time order in chunks (60 s by default), with
rx = the chunk's end and `Engine.tick(chunk end)` after each chunk. A gateway_offline fault
becomes `Engine.gateway_state(offline)` at its start and `online` at its end (no messages in
between), as the broker's last-will and the reconnect would.

Scoring (`score`): an incident (truth entry) is detected when a warning of the same site and
cause is raised within [start, end + grace]; delay = raise - start; level accuracy = the
warning's max level vs the expected level; precision = matched warnings / warnings; false
warnings per site-day; and EEMUA 191's measure for the centre: the most warnings raised in
any 10-minute window (flood line: 10). A "warning" here is each raise or reactivation of a
(site, cause) episode - what the desk sees announced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import orjson

from rules.engine import Changes, Engine, SensorRow
from rules.model import Level
from rules.packs import SensorSpec, load_packs
from simulators import scenario as scenario_mod
from simulators.scenario import Scenario

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
    seen_s: float | None = None      # processing time (chunk end) it was raised at
    alarms: list[str] = field(default_factory=list)   # "TAG:cond" or "gateway:cond"


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
    max_per_10min: int

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

    def as_dict(self) -> dict:
        d = self.delays
        return {
            "recall": self.recall, "precision": self.precision,
            "level_accuracy": self.level_accuracy,
            "delay_s": {"mean": float(np.mean(d)) if d else None,
                        "max": float(max(d)) if d else None},
            "warnings": self.warnings, "matched_warnings": self.matched_warnings,
            "false_warnings": self.false_warnings, "site_days": self.site_days,
            "false_per_site_day": self.false_per_site_day,
            "max_per_10min": self.max_per_10min, "flood_line": FLOOD_LINE,
            "incidents": [{**asdict(m.truth), "detected": m.detected, "delay_s": m.delay_s,
                           "level_found": m.level_found, "level_ok": m.level_ok}
                          for m in self.matches],
        }


def max_in_window(times: Sequence[float], window_s: float = FLOOD_WINDOW_S) -> int:
    """Most of `times` inside any half-open window [t, t + window_s)."""
    t = np.sort(np.asarray(times, dtype=float))
    if not t.size:
        return 0
    ends = np.searchsorted(t, t + window_s, side="left")
    return int((ends - np.arange(t.size)).max())


def score(truth: Sequence[Truth], warnings: Sequence[WarningRecord], *, site_days: float,
          grace_s: float = 1800.0) -> Score:
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
    matched = sum(any(inside(w, t) for t in truth) for w in warnings)
    return Score(matches, len(warnings), matched, len(warnings) - matched, site_days,
                 max_in_window([w.raised_s for w in warnings]))


# ---------------------------------------------------------------------------- running


@dataclass
class Run:
    warnings: list[WarningRecord]
    readings: int = 0
    malformed: int = 0
    chunks: int = 0


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
                lim = x.limits
                spec = SensorSpec(tag=x.tag, kind=x.kind, unit=x.unit, range_lo=float(x.range[0]),
                                  range_hi=float(x.range[1]), ll=lim.get("ll"), l=lim.get("l"),
                                  h=lim.get("h"), hh=lim.get("hh"), interval_s=float(x.interval_s))
                rows.append(SensorRow(sid, site_ids[s.id], gateway_ids[(e.code, s.gateways[x.gateway])],
                                      s.kind, s.grade, spec))
    return rows, sensors, site_ids, gateway_ids


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

    # every gateway's plan as (send time, order, gateway id, site, message)
    plan = []
    saved = scenario_mod.BATCH_READINGS
    if batch_readings is not None:
        scenario_mod.BATCH_READINGS = int(batch_readings)
    try:
        for ent, gw, site in sc.gateways():
            for i, m in enumerate(sc.messages(ent, gw, base)):
                plan.append((m.at, i, gateway_ids[(ent, gw)], site.id, m))
    finally:
        scenario_mod.BATCH_READINGS = saved
    plan.sort(key=lambda p: (p[0], p[2], p[1]))

    result = Run([])
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

    def flush(buf: list[tuple[float, int, float | None]], rx: float) -> None:
        if not buf:
            return
        sid = np.fromiter((b[1] for b in buf), dtype=np.int64, count=len(buf))
        ts = np.fromiter((b[0] for b in buf), dtype=np.float64, count=len(buf))
        val = np.array([np.nan if b[2] is None else b[2] for b in buf], dtype=np.float64)
        q = np.where(np.isnan(val), 2, 0).astype(np.int16)
        collect(engine.readings(sid, ts, val, q, rx), rx)
        result.readings += len(buf)
        buf.clear()

    i, n = 0, len(plan)
    chunk_end = chunk_s
    while chunk_end - chunk_s < sc.duration:
        rx = base + chunk_end
        buf: list[tuple[float, int, float | None]] = []
        while i < n and plan[i][0] < chunk_end:
            _, _, gid, site, m = plan[i]
            i += 1
            if m.action in ("drop", "reconnect"):
                flush(buf, rx)
                collect(engine.gateway_state(gid, m.action == "reconnect", base + m.at, rx), rx)
                continue
            decoded = _decode(m.payload)
            if decoded is None:
                result.malformed += 1
                continue
            for ts, tag, v in decoded:
                sid = tag_ids.get((site, tag))
                if sid is not None:
                    buf.append((ts, sid, v))
        flush(buf, rx)
        collect(engine.tick(rx), rx)
        result.chunks += 1
        if progress is not None:
            progress(min(chunk_end, sc.duration))
        chunk_end += chunk_s
    return result


def _first_alarm(ep) -> float:
    return min((a.raised_at for a in ep.alarms.values()), default=ep.opened_at)


def truth_of(sc: Scenario) -> list[Truth]:
    return [Truth(t.site, t.cause, t.level, t.start_s, t.end_s, t.source) for t in sc.truth()]


def evaluate(sc: Scenario, *, grace_s: float = 1800.0, chunk_s: float = 60.0,
             batch_readings: int | None = None,
             progress: Callable[[float], None] | None = None) -> tuple[Score, Run]:
    r = run(sc, chunk_s=chunk_s, batch_readings=batch_readings, progress=progress)
    site_days = len(sc.sites) * sc.duration / 86400.0
    return score(truth_of(sc), r.warnings, site_days=site_days, grace_s=grace_s), r
