"""Warnings and alarms in the database: write the engine's Changes, read open ones back.

Ids come from the sequences before the first write attempt, and every write states the
current values (an upsert by id), so the collector may re-apply the same Changes when a
transaction failed and was retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import psycopg

from rules.engine import Alarm, Changes, Engine, Episode
from rules.model import Cond, Level


def _dt(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


def _num(x: float | None) -> float | None:
    return None if x is None or x != x else float(x)


async def _ids(conn: psycopg.AsyncConnection, sequence: str, n: int) -> list[int]:
    cur = await conn.execute("SELECT nextval(%s::regclass) FROM generate_series(1, %s)", (sequence, n))
    return [r[0] for r in await cur.fetchall()]


async def apply(conn: psycopg.AsyncConnection, changes: Changes) -> None:
    if not changes:
        return
    episodes = list(changes.dirty.values())
    fresh = [ep for ep in episodes if ep.id is None]
    if fresh:
        for ep, new_id in zip(fresh, await _ids(conn, "warnings_id_seq", len(fresh)), strict=True):
            ep.id = new_id
    alarms = [a for a in changes.raised if a.id is None]
    if alarms:
        for alarm, new_id in zip(alarms, await _ids(conn, "alarms_id_seq", len(alarms)), strict=True):
            alarm.id = new_id
    async with conn.cursor() as cur:
        if episodes:
            await cur.executemany(
                "INSERT INTO warnings AS w (id, site_id, cause, kind, level, active, opened_at, "
                "cleared_at, count, peak_value, peak_sensor_id, detail) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb) "
                "ON CONFLICT (id) DO UPDATE SET level = GREATEST(w.level, excluded.level), "
                "active = excluded.active, cleared_at = excluded.cleared_at, count = excluded.count, "
                "peak_value = excluded.peak_value, peak_sensor_id = excluded.peak_sensor_id, "
                "detail = excluded.detail, updated_at = now()",
                [(ep.id, ep.site_id, ep.cause.name, str(ep.cause.kind), int(ep.level), ep.active,
                  _dt(ep.opened_at), _dt(ep.cleared_at), ep.count, _num(ep.peak_value),
                  ep.peak_sensor_id, orjson.dumps(ep.detail, option=orjson.OPT_SERIALIZE_NUMPY).decode())
                 for ep in episodes],
            )
        rows = {id(a): a for a in [*changes.raised, *changes.cleared, *changes.peaked]}.values()
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
                 for a in rows if a.id is not None],
            )


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
