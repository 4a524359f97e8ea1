"""Warnings and alarms in the database: write the engine's Changes, read open ones back.

Ids come from the sequences before the first write attempt, and every write states the
current values (an upsert by id), so the collector may re-apply the same Changes when a
transaction failed and was retried. The engine's events go to the audit trail (and the
outbox) in the same transaction; a failed attempt takes its events with it, so a retry
writes them exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import psycopg

from alerting.events import SYSTEM, Event, record_many
from hazardwatch import logs
from hazardwatch.settings import ReceiverSettings
from rules.engine import HIGH_SIDE, LOW_SIDE, Alarm, Changes, Engine, Episode
from rules.model import Cond, Level

log = logs.get("alerting.store")


def _dt(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


def _num(x: float | None) -> float | None:
    return None if x is None or x != x else float(x)


async def _ids(conn: psycopg.AsyncConnection, sequence: str, n: int) -> list[int]:
    cur = await conn.execute("SELECT nextval(%s::regclass) FROM generate_series(1, %s)", (sequence, n))
    return [r[0] for r in await cur.fetchall()]


async def apply(conn: psycopg.AsyncConnection, changes: Changes,
                receivers: Sequence[ReceiverSettings] = ()) -> list[tuple[int, int]]:
    """Write the engine's Changes in the caller's transaction: warnings, alarms, and the
    events (with their routed outbox rows, see alerting.events).

    A closed warning is never written to: an episode the engine still holds for a warning an
    officer has closed meanwhile (the close committed between evaluation and this write) is
    re-homed as a new warning (new id, count 1). Returns the (old id, new id) pairs re-homed.
    Safe to call again with the same Changes after the transaction failed: the episode
    objects carry the ids (and any re-homing) of the first attempt, and the events of a
    rolled-back attempt are gone with it."""
    if not changes:
        return []
    episodes = {id(ep): ep for ep in changes.dirty.values()}
    for ep, _, _ in changes.events:  # every event's episode is dirty; be sure anyway
        episodes.setdefault(id(ep), ep)
    fresh = [ep for ep in episodes.values() if ep.id is None]
    if fresh:
        for ep, new_id in zip(fresh, await _ids(conn, "warnings_id_seq", len(fresh)), strict=True):
            ep.id = new_id
    alarms = [a for a in changes.raised if a.id is None]
    if alarms:
        for alarm, new_id in zip(alarms, await _ids(conn, "alarms_id_seq", len(alarms)), strict=True):
            alarm.id = new_id
    rehomed: list[tuple[int, int]] = []
    dropped: set[int] = set()   # id(episode): a closed warning with nothing new to say
    if episodes:
        written = await _upsert_warnings(conn, list(episodes.values()))
        refused = [ep for ep in episodes.values() if ep.id not in written]
        moving = [ep for ep in refused if ep.active]
        dropped = {id(ep) for ep in refused if not ep.active}
        if moving:
            new_ids = await _ids(conn, "warnings_id_seq", len(moving))
            for ep, new_id in zip(moving, new_ids, strict=True):
                rehomed.append((ep.id, new_id))
                _rehome(ep, new_id, changes)
            await _upsert_warnings(conn, moving)
            log.warning("closed warning still active in the engine: re-homed as new warnings",
                        moved=rehomed)
    async with conn.cursor() as cur:
        # Cleared alarms first: when one batch clears a condition and raises it again (a
        # backlog of one sensor's readings), the old row must stop being active before the
        # new one is written, or the one-active-alarm index refuses the batch.
        rows = {id(a): a for a in [*changes.cleared, *changes.raised, *changes.peaked]}.values()
        rows = [a for a in rows if a.id is not None and id(a.warning) not in dropped]
        if rows:
            await cur.executemany(
                "INSERT INTO alarms AS a (id, warning_id, sensor_id, gateway_id, condition, active, "
                "raised_at, cleared_at, value, peak_value, detail) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb) "
                "ON CONFLICT (id) DO UPDATE SET active = excluded.active, cleared_at = excluded.cleared_at, "
                "peak_value = excluded.peak_value",
                [(a.id, a.warning.id, a.sensor_id, a.gateway_id, str(a.cond), a.cleared_at is None,
                  _dt(a.raised_at), _dt(a.cleared_at), _num(a.value), _num(a.peak_value),
                  orjson.dumps(a.detail, option=orjson.OPT_SERIALIZE_NUMPY).decode())
                 for a in rows],
            )
        # The audit trail, in the order the engine saw things; level = the episode's now.
        events = [Event(ep.id, SYSTEM, action, int(ep.level), detail)
                  for ep, action, detail in changes.events if id(ep) not in dropped]
        if events:
            await record_many(cur, events, receivers)
    return rehomed


async def _upsert_warnings(conn: psycopg.AsyncConnection, episodes: list[Episode]) -> set[int]:
    """Insert or update the episodes' warnings, in id order (lock order: no deadlocks between
    writers); a closed row is left alone. Returns the ids written."""
    episodes = sorted(episodes, key=lambda ep: ep.id)
    cur = await conn.execute(
        "INSERT INTO warnings AS w (id, site_id, cause, kind, level, active, opened_at, "
        "cleared_at, count, peak_value, peak_sensor_id, detail) "
        "SELECT * FROM unnest(%s::bigint[], %s::int[], %s::text[], %s::text[], %s::smallint[], "
        "%s::boolean[], %s::timestamptz[], %s::timestamptz[], %s::int[], %s::float8[], %s::int[], "
        "%s::jsonb[]) "
        "ON CONFLICT (id) DO UPDATE SET level = GREATEST(w.level, excluded.level), "
        "active = excluded.active, cleared_at = excluded.cleared_at, count = excluded.count, "
        "peak_value = excluded.peak_value, peak_sensor_id = excluded.peak_sensor_id, "
        "detail = excluded.detail, updated_at = now() "
        "WHERE w.closed_at IS NULL "
        "RETURNING id",
        ([ep.id for ep in episodes], [ep.site_id for ep in episodes],
         [ep.cause.name for ep in episodes], [str(ep.cause.kind) for ep in episodes],
         [int(ep.level) for ep in episodes], [ep.active for ep in episodes],
         [_dt(ep.opened_at) for ep in episodes], [_dt(ep.cleared_at) for ep in episodes],
         [ep.count for ep in episodes], [_num(ep.peak_value) for ep in episodes],
         [ep.peak_sensor_id for ep in episodes],
         [orjson.dumps(ep.detail, option=orjson.OPT_SERIALIZE_NUMPY).decode() for ep in episodes]))
    return {row[0] for row in await cur.fetchall()}


def _rehome(ep: Episode, new_id: int, changes: Changes) -> None:
    """Make `ep` a new warning: its closed predecessor keeps its history, this one starts
    with the conditions active now (count 1, opened at the oldest of them, their peak)."""
    old_id = ep.id
    ep.id = new_id
    ep.count = 1
    ep.cleared_at = None
    if ep.alarms:
        ep.opened_at = min(a.raised_at for a in ep.alarms.values())
    ep.peak_value, ep.peak_sensor_id = None, None
    for alarm in ep.alarms.values():
        peak = alarm.peak_value if alarm.peak_value == alarm.peak_value else alarm.value
        if peak != peak:
            continue
        if ep.peak_value is None or (alarm.cond in HIGH_SIDE and peak > ep.peak_value) or (
                alarm.cond in LOW_SIDE and peak < ep.peak_value):
            ep.peak_value, ep.peak_sensor_id = peak, alarm.sensor_id
    # Its events: the first one announces a new warning. Rewritten in place, so a retry of
    # the same Changes writes the same events.
    mine = [i for i, (e, _, _) in enumerate(changes.events) if e is ep]
    first = {"replaces": old_id}
    if mine and changes.events[mine[0]][1] in ("reactivated", "raised"):
        changes.events[mine[0]] = (ep, "raised", first)
    else:
        changes.events.insert(mine[0] if mine else len(changes.events), (ep, "raised", first))


async def restore_open(conn: psycopg.AsyncConnection, engine: Engine) -> int:
    """Adopt every open warning and its active alarms, so a restart re-raises nothing."""
    cur = await conn.execute(
        "SELECT w.id, w.site_id, s.grade, s.kind::text, w.cause, w.level, w.active, "
        "extract(epoch FROM w.opened_at), extract(epoch FROM w.cleared_at), w.count, w.peak_value, "
        "w.peak_sensor_id, w.detail FROM warnings w JOIN sites s ON s.id = w.site_id "
        "WHERE w.closed_at IS NULL")
    warnings = await cur.fetchall()
    by_id: dict[int, Episode] = {}
    for (wid, site_id, grade, kind, cause_name, level, active, opened, cleared, count, peak,
         peak_sensor, detail) in warnings:
        cause = engine.cause(kind, cause_name)
        if cause is None:  # a cause removed from the pack: leave the warning to the officers
            continue
        ep = Episode(site_id, grade, cause, opened_at=float(opened), active_since_rx=float(opened),
                     level=Level(level), active=active, count=count,
                     cleared_at=None if cleared is None else float(cleared), peak_value=peak,
                     peak_sensor_id=peak_sensor, detail=detail or {}, id=wid)
        by_id[wid] = ep
    if by_id:
        cur = await conn.execute(
            "SELECT id, warning_id, sensor_id, gateway_id, condition, extract(epoch FROM raised_at), "
            "value, peak_value, detail FROM alarms WHERE active AND warning_id = ANY(%s)",
            (list(by_id),))
        for aid, wid, sensor_id, gateway_id, cond, raised, value, peak, detail in await cur.fetchall():
            ep = by_id[wid]
            alarm = Alarm(ep, Cond(cond), float(raised), value if value is not None else float("nan"),
                          sensor_id=sensor_id, gateway_id=gateway_id, detail=detail or {},
                          peak_value=peak if peak is not None else float("nan"), id=aid)
            source = sensor_id if sensor_id is not None else ("gateway", gateway_id)
            ep.alarms[(source, alarm.cond)] = alarm
            ep.active_since_rx = min(ep.active_since_rx, alarm.raised_at) if ep.active else ep.active_since_rx
    for ep in by_id.values():
        engine.adopt(ep)
    return len(by_id)


async def recent_readings(conn: psycopg.AsyncConnection, sensor_ids: Sequence[int], seconds: float,
                          chunk: int = 50_000):
    """The recent window the engine replays after a restart, oldest first, in chunks.

    A server-side cursor: at 100,000 sensors half an hour is millions of rows, which must
    stream through the engine rather than sit in memory at once."""
    async with conn.transaction(), conn.cursor(name="hw_replay") as cur:
        await cur.execute(
            "SELECT sensor_id, extract(epoch FROM ts)::float8, coalesce(value, 'NaN'::float8), "
            "quality FROM readings WHERE sensor_id = ANY(%s) "
            "AND ts > now() - make_interval(secs => %s) ORDER BY ts",
            (list(sensor_ids), seconds))
        while rows := await cur.fetchmany(chunk):
            yield rows
