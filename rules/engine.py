"""The rule engine: readings → conditions (per sensor) → graded warnings (per site, cause).

Pure: it holds state in memory and returns `Changes` describing what the database should
now say; `alerting.store` writes them. Changes are *states*, not deltas (the episode's
current level, count, ...), and ids come from the database sequences before the first
write, so re-applying the same Changes after a failed transaction is harmless.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rules.conditions import Params, State, Transition, check_no_data, evaluate
from rules.grading import ActiveCondition, equipment_of, grade
from rules.model import PARAM_FIELDS, CauseSpec, Cond, Level
from rules.packs import Pack, SensorSpec, effective_arrays
from rules.sensor_table import SensorTable

HIGH_SIDE = frozenset({Cond.HH, Cond.H, Cond.RATE_RISE, Cond.TREND_HH})
LOW_SIDE = frozenset({Cond.LL, Cond.L, Cond.RATE_FALL, Cond.TREND_LL})


@dataclass(frozen=True, slots=True)
class SensorRow:
    """The registry slice the engine needs about one sensor."""

    sensor_id: int
    site_id: int
    gateway_id: int | None
    site_kind: str
    site_grade: int
    spec: SensorSpec


@dataclass(eq=False, slots=True)
class Alarm:
    warning: Episode
    cond: Cond
    raised_at: float             # event time, s
    value: float
    sensor_id: int | None = None
    gateway_id: int | None = None
    detail: dict = field(default_factory=dict)
    peak_value: float = np.nan
    cleared_at: float | None = None
    id: int | None = None        # assigned by the store (database sequence)

    @property
    def source(self) -> object:
        return self.sensor_id if self.sensor_id is not None else ("gateway", self.gateway_id)


@dataclass(eq=False, slots=True)
class Episode:
    """The in-memory mirror of one open warning."""

    site_id: int
    site_grade: int
    cause: CauseSpec
    opened_at: float             # event time of the first condition
    active_since_rx: float       # processing time it last became active (for duration)
    level: Level = Level.BLUE
    active: bool = True
    count: int = 1
    cleared_at: float | None = None
    peak_value: float | None = None
    peak_sensor_id: int | None = None
    detail: dict = field(default_factory=dict)
    alarms: dict[tuple, Alarm] = field(default_factory=dict)
    id: int | None = None        # assigned by the store (database sequence)


@dataclass
class Changes:
    dirty: dict[int, Episode] = field(default_factory=dict)   # id(episode) → episode
    raised: list[Alarm] = field(default_factory=list)
    cleared: list[Alarm] = field(default_factory=list)
    peaked: list[Alarm] = field(default_factory=list)     # active alarms with a new peak
    # What happened, for the audit trail and notifications: (episode, action, detail) with
    # action raised | reactivated | level_up | cleared | alarm_raised | alarm_cleared.
    events: list[tuple[Episode, str, dict]] = field(default_factory=list)
    opened: set[int] = field(default_factory=set)         # id(episode) raised/reactivated here

    def touch(self, ep: Episode) -> None:
        self.dirty[id(ep)] = ep

    def __bool__(self) -> bool:
        return bool(self.dirty or self.raised or self.cleared or self.peaked or self.events)

    def merge(self, other: Changes) -> Changes:
        self.dirty.update(other.dirty)
        self.raised.extend(other.raised)
        self.cleared.extend(other.cleared)
        self.peaked.extend(other.peaked)
        self.events.extend(other.events)
        self.opened |= other.opened
        return self


class Engine:
    def __init__(self, packs: dict[str, Pack]) -> None:
        self.packs = packs
        self.rows: SensorTable = SensorTable.empty()        # Sequence[SensorRow], columnar
        self.slot_of: dict[int, int] = {}
        self.slot_lut = np.full(1, -1, dtype=np.int64)     # sensor id → slot, -1 unknown
        self.params = Params.from_rules([])
        self.state = State(0)
        self.causes: list[dict[Cond, list[CauseSpec]]] = []
        self.slot_gateway = np.zeros(0, dtype=np.int64)     # gateway id per slot (-1 none)
        self.gateway_sites: dict[int, set[tuple[int, int, str]]] = {}  # gid → (site, grade, kind)
        self.offline: set[int] = set()
        self.episodes: dict[tuple[int, str], Episode] = {}

    # ---- registry ------------------------------------------------------------------------

    def load(self, rows: Sequence[SensorRow]) -> None:
        """(Re)load the registry; a known sensor keeps its slot and its state.

        Columnar (rules.sensor_table): rules resolve once per rule group, causes once per
        (site kind, sensor kind), so a million sensors load in seconds."""
        incoming = SensorTable.from_rows(rows)
        ids = incoming.sensor_id
        if not (ids[1:] > ids[:-1]).all() and len(np.unique(ids)) != len(ids):
            # the last row of a sensor wins
            _, last = np.unique(ids[::-1], return_index=True)
            incoming = incoming.take(np.sort(len(ids) - 1 - last))
            ids = incoming.sensor_id
        slots = np.full(len(ids), -1, dtype=np.int64)
        inside = (ids >= 0) & (ids < len(self.slot_lut))
        slots[inside] = self.slot_lut[ids[inside]]
        table = self.rows.merged(incoming, slots) if len(self.rows) else incoming
        n = len(table)
        self.rows = table
        self.slot_of = dict(zip(table.sensor_id.tolist(), range(n), strict=True))

        arrays = {name: np.empty(n, dtype=np.float64) for name in PARAM_FIELDS}
        group_causes: list[dict[Cond, list[CauseSpec]]] = []
        by_kind: dict[tuple[str, str], dict[Cond, list[CauseSpec]]] = {}
        limits = {name: getattr(table, name) for name in ("ll", "l", "h", "hh")}
        order = np.argsort(table.group, kind="stable")
        counts = np.bincount(table.group, minlength=len(table.groups))
        members = np.split(order, np.cumsum(counts)[:-1]) if table.groups else []
        for g, idx in zip(table.groups, members, strict=True):
            pack = self.packs[g.site_kind]
            if len(idx):
                resolved = effective_arrays(
                    pack, g.kind, g.rules, table.range_lo[idx], table.range_hi[idx],
                    table.interval_s[idx], {k: v[idx] for k, v in limits.items()})
                for name, values in resolved.items():
                    arrays[name][idx] = values
            by_cond = by_kind.get((g.site_kind, g.kind))
            if by_cond is None:
                by_cond = by_kind[(g.site_kind, g.kind)] = {
                    cond: list(found) for cond in Cond if (found := pack.cause_for(g.kind, cond))}
            group_causes.append(by_cond)
        self.params = Params(arrays)
        self.causes = [group_causes[g] for g in table.group.tolist()]

        gateway_sites: dict[int, set[tuple[int, int, str]]] = {}
        linked = np.flatnonzero(table.gateway_id >= 0)
        if len(linked):
            # one (gateway, site) pair per key; grade and kind are the site's
            span = int(table.site_id.max()) + 1
            _, first = np.unique(table.gateway_id[linked] * span + table.site_id[linked],
                                 return_index=True)
            at = linked[first]
            for gid, site_id, grade_, code in zip(
                    table.gateway_id[at].tolist(), table.site_id[at].tolist(),
                    table.site_grade[at].tolist(), table.group[at].tolist(), strict=True):
                gateway_sites.setdefault(gid, set()).add(
                    (site_id, grade_, table.groups[code].site_kind))
        self.gateway_sites = gateway_sites
        self.slot_gateway = table.gateway_id.copy()
        self.state.resize(n)
        lut = np.full(int(table.sensor_id.max(initial=0)) + 1, -1, dtype=np.int64)
        lut[table.sensor_id] = np.arange(n, dtype=np.int64)
        self.slot_lut = lut

    def slots(self, sensor_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots of the known sensors and the mask of which inputs were known."""
        ids = np.asarray(sensor_ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < len(self.slot_lut))
        slots = np.full(len(ids), -1, dtype=np.int64)
        slots[inside] = self.slot_lut[ids[inside]]
        known = slots >= 0
        return slots[known], known

    # ---- events ----------------------------------------------------------------------------

    def readings(self, sensor_id: np.ndarray, ts: np.ndarray, value: np.ndarray,
                 quality: np.ndarray, rx: float, *, emit: bool = True) -> Changes:
        slots, known = self.slots(sensor_id)
        value, quality = value[known], quality[known]
        transitions = evaluate(self.state, self.params, slots, ts[known], value, quality, rx,
                               emit=emit)
        changes = self._apply(transitions, rx)
        if emit:
            self._track_peaks(slots, value, quality, changes)
        return changes

    def _track_peaks(self, slots: np.ndarray, value: np.ndarray, quality: np.ndarray,
                     changes: Changes) -> None:
        """While a limit alarm is active, its peak (and its warning's) follows the readings."""
        st = self.state
        valid = (quality < 2) & (value == value)
        for conds, pick in (((Cond.H, Cond.HH), np.fmax), ((Cond.L, Cond.LL), np.fmin)):
            hot = valid & (st.active(conds[0])[slots] | st.active(conds[1])[slots])
            if not hot.any():
                continue
            best: dict[int, float] = {}
            for slot, v in zip(slots[hot].tolist(), value[hot].tolist(), strict=True):
                best[slot] = pick(best.get(slot, v), v)
            for slot, v in best.items():
                sensor_id = self.rows[slot].sensor_id
                for cond in conds:
                    for cause in self.causes[slot].get(cond, ()):
                        ep = self.episodes.get((self.rows[slot].site_id, cause.name))
                        alarm = ep.alarms.get((sensor_id, cond)) if ep is not None else None
                        if alarm is None:
                            continue
                        if alarm.peak_value != alarm.peak_value or pick(alarm.peak_value, v) != alarm.peak_value:
                            alarm.peak_value = v
                            changes.peaked.append(alarm)
                        before = ep.peak_value
                        self._peak(ep, cond, v, sensor_id)
                        if ep.peak_value != before:
                            changes.touch(ep)

    def gateway_state(self, gateway_id: int, online: bool, at: float, rx: float) -> Changes:
        changes = Changes()
        was_offline = gateway_id in self.offline
        if online == (not was_offline):
            return changes
        if online:
            self.offline.discard(gateway_id)
        else:
            self.offline.add(gateway_id)
        for site_id, site_grade, site_kind in self.gateway_sites.get(gateway_id, ()):
            for cause in self.packs[site_kind].causes:
                if Cond.OFFLINE not in cause.conditions:
                    continue
                key = (("gateway", gateway_id), Cond.OFFLINE)
                if online:
                    self._clear(changes, site_id, cause, key, at)
                else:
                    self._raise(changes, site_id, site_grade, cause, key, Cond.OFFLINE, at, rx,
                                value=np.nan, gateway_id=gateway_id, detail={})
        for ep in {id(e): e for e in changes.dirty.values()}.values():
            self._regrade(ep, rx, changes)
        return changes

    def tick(self, now: float) -> Changes:
        """Processing-time work: no-data timers and duration-based escalation."""
        suppressed = np.isin(self.slot_gateway, np.fromiter(self.offline, dtype=np.int64)) \
            if self.offline else None
        changes = self._apply(check_no_data(self.state, self.params, now, suppressed), now)
        for ep in self.episodes.values():
            if ep.active:
                self._regrade(ep, now, changes)
        return changes

    # ---- transitions → episodes ------------------------------------------------------------

    def _apply(self, transitions: Iterable[Transition], rx: float) -> Changes:
        changes = Changes()
        touched: dict[int, Episode] = {}
        for t in transitions:
            row = self.rows[t.slot]
            for cause in self.causes[t.slot].get(t.cond, ()):
                key = (row.sensor_id, t.cond)
                if t.raised:
                    ep = self._raise(changes, row.site_id, row.site_grade, cause, key, t.cond, t.ts, rx,
                                     value=t.value, sensor_id=row.sensor_id, detail=dict(t.detail))
                else:
                    ep = self._clear(changes, row.site_id, cause, key, t.ts)
                if ep is not None:
                    touched[id(ep)] = ep
        for ep in touched.values():
            self._regrade(ep, rx, changes)
        return changes

    def _raise(self, changes: Changes, site_id: int, site_grade: int, cause: CauseSpec, key: tuple,
               cond: Cond, ts: float, rx: float, *, value: float, sensor_id: int | None = None,
               gateway_id: int | None = None, detail: dict) -> Episode:
        ep = self.episodes.get((site_id, cause.name))
        if key in (ep.alarms if ep is not None else ()):  # already active (e.g. restored)
            return ep
        if ep is None:
            ep = Episode(site_id, site_grade, cause, opened_at=ts, active_since_rx=rx)
            self.episodes[(site_id, cause.name)] = ep
            changes.events.append((ep, "raised", {}))
            changes.opened.add(id(ep))
        elif not ep.active:
            ep.active, ep.count, ep.active_since_rx, ep.cleared_at = True, ep.count + 1, rx, None
            changes.events.append((ep, "reactivated", {"count": ep.count}))
            changes.opened.add(id(ep))
        alarm = Alarm(ep, cond, ts, value, sensor_id=sensor_id, gateway_id=gateway_id, detail=detail,
                      peak_value=value)
        ep.alarms[key] = alarm
        changes.raised.append(alarm)
        changes.events.append((ep, "alarm_raised", _alarm_detail(alarm)))
        self._peak(ep, cond, value, sensor_id)
        if cond in (Cond.TREND_HH, Cond.TREND_LL) and detail:
            ep.detail["trend"] = {**detail, "sensor_id": sensor_id}
        changes.touch(ep)
        return ep

    def _clear(self, changes: Changes, site_id: int, cause: CauseSpec, key: tuple, ts: float) -> Episode | None:
        ep = self.episodes.get((site_id, cause.name))
        if ep is None:
            return None
        alarm = ep.alarms.pop(key, None)
        if alarm is None:
            return None
        alarm.cleared_at = ts
        changes.cleared.append(alarm)
        changes.events.append((ep, "alarm_cleared", _alarm_detail(alarm)))
        if not ep.alarms:
            ep.active, ep.cleared_at = False, ts
            changes.events.append((ep, "cleared", {}))
        changes.touch(ep)
        return ep

    def _peak(self, ep: Episode, cond: Cond, value: float, sensor_id: int | None) -> None:
        if value != value:  # NaN
            return
        if ep.peak_value is None or (cond in HIGH_SIDE and value > ep.peak_value) or (
                cond in LOW_SIDE and value < ep.peak_value):
            ep.peak_value, ep.peak_sensor_id = value, sensor_id

    def _regrade(self, ep: Episode, now: float, changes: Changes) -> None:
        if not ep.active:
            return
        active = [ActiveCondition(a.source, self._equipment(a), a.cond) for a in ep.alarms.values()]
        level = grade(ep.cause, ep.site_grade, active, now - ep.active_since_rx)
        if level is not None and level > ep.level:
            if id(ep) not in changes.opened:
                changes.events.append((ep, "level_up", {"from": int(ep.level), "to": int(level)}))
            ep.level = level
            changes.touch(ep)

    def _equipment(self, alarm: Alarm) -> str:
        if alarm.sensor_id is None:
            return f"gateway-{alarm.gateway_id}"
        return equipment_of(self.rows[self.slot_of[alarm.sensor_id]].spec.tag)

    # ---- restart -----------------------------------------------------------------------------

    def adopt(self, episode: Episode) -> None:
        """An open warning read back from the database after a restart."""
        self.episodes[(episode.site_id, episode.cause.name)] = episode

    def align(self) -> None:
        """Make condition flags agree with the adopted open alarms (the database is the truth)."""
        for cond in Cond:
            if cond == Cond.OFFLINE:
                continue
            self.state.active(cond)[:] = False
        for ep in self.episodes.values():
            for alarm in ep.alarms.values():
                if alarm.cond == Cond.OFFLINE:
                    self.offline.add(alarm.gateway_id)
                elif alarm.sensor_id in self.slot_of:
                    self.state.set_active(self.slot_of[alarm.sensor_id], alarm.cond, True)

    def forget(self, warning_id: int) -> bool:
        """A warning was closed (闭环): the next condition of its site and cause opens a new
        episode. An active episode is kept (closing needs the condition cleared first)."""
        for key, ep in self.episodes.items():
            if ep.id == warning_id and not ep.active:
                del self.episodes[key]
                return True
        return False

    def cause(self, site_kind: str, name: str) -> CauseSpec | None:
        return next((c for c in self.packs[site_kind].causes if c.name == name), None)


def _alarm_detail(alarm: Alarm) -> dict:
    out: dict = {"condition": str(alarm.cond)}
    if alarm.sensor_id is not None:
        out["sensor_id"] = alarm.sensor_id
    else:
        out["gateway_id"] = alarm.gateway_id
    if alarm.value == alarm.value:
        out["value"] = float(alarm.value)
    return out
