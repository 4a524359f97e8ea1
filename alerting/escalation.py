"""The escalation ticker: timers on open warnings (docs/alerting.md "Escalation ladder").

One pass (`escalate`), in one transaction, in this order:

1. shelving expiry — `shelved_until <= now`: shelved_* cleared, event `unshelved` (actor
   'system', detail {"expired": true, "until": …});
2. suppression released — a suppressed warning whose parent is no longer an active open
   warning: suppressed_by cleared, event `unsuppressed` ({"parent": id});
3. suppression — an open `sensor_fault` warning of a site that has an active open
   `data_interruption` warning: suppressed_by = that warning's id (the oldest, if several),
   event `suppressed` ({"parent": id, "parent_cause": …}); a fault seen while the data is
   not getting through is a consequence, not news;
4. the ladder — 提示 (0) on raise → 警示 (1) when not acknowledged at raised_at + ack_s[level]
   → 督办 (2) when not disposed at raised_at + dispose_s[level]; event `escalated`
   ({"step": "警示"|"督办", "overdue_s": …}) per step. A timer fires at its deadline, not
   before (now >= deadline); the ladder only climbs, one event per step; a pass that finds
   both deadlines past records both steps, in order; a warning acknowledged in time but not
   disposed goes from 提示 to 督办. Closed, shelved and suppressed warnings do not escalate;
   the deadlines use the warning's current level (a level rise can make one due at once).

Rows are taken with FOR UPDATE SKIP LOCKED: a warning an officer is acting on right now is
left for the next pass, and the ticker never waits for (or deadlocks with) another writer.
`run_escalation` is the loop `hazardwatch serve` runs, every escalation.tick_s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
from psycopg.rows import tuple_row

from alerting.events import LEVEL_NAMES, SYSTEM, Event, record_many
from hazardwatch import logs
from hazardwatch.settings import AlertingSettings, EscalationSettings

log = logs.get("alerting.escalation")

STEPS = {1: "警示", 2: "督办"}


_DEFAULTS = EscalationSettings()


def limits(esc: EscalationSettings) -> tuple[list[float], list[float]]:
    """ack_s and dispose_s as arrays indexed by level - 1 (blue .. red). A level left out
    of a configured table keeps its default (a TOML table replaces the whole dict)."""
    names = [LEVEL_NAMES[lvl] for lvl in (1, 2, 3, 4)]
    return ([float(esc.ack_s.get(n, _DEFAULTS.ack_s[n])) for n in names],
            [float(esc.dispose_s.get(n, _DEFAULTS.dispose_s[n])) for n in names])


async def _expire_shelving(conn, now: datetime) -> list[Event]:
    cur = await conn.execute(
        "SELECT id, level, shelved_until, shelved_by, shelved_reason FROM warnings "
        "WHERE closed_at IS NULL AND shelved_until <= %s ORDER BY id FOR UPDATE SKIP LOCKED",
        (now,))
    rows = await cur.fetchall()
    if rows:
        await conn.execute(
            "UPDATE warnings SET shelved_until = NULL, shelved_reason = NULL, shelved_by = NULL, "
            "updated_at = %s WHERE id = ANY(%s)", (now, [r[0] for r in rows]))
    return [Event(wid, SYSTEM, "unshelved", level,
                  {"expired": True, "until": until.astimezone(UTC).isoformat(), "shelved_by": by,
                   "reason": reason}, now)
            for wid, level, until, by, reason in rows]


async def _release(conn, now: datetime) -> list[Event]:
    cur = await conn.execute(
        "SELECT c.id, c.level, c.suppressed_by FROM warnings c "
        "JOIN warnings p ON p.id = c.suppressed_by "
        "WHERE c.closed_at IS NULL AND (NOT p.active OR p.closed_at IS NOT NULL) "
        "ORDER BY c.id FOR UPDATE OF c SKIP LOCKED")
    rows = await cur.fetchall()
    if rows:
        await conn.execute("UPDATE warnings SET suppressed_by = NULL, updated_at = %s "
                           "WHERE id = ANY(%s)", (now, [r[0] for r in rows]))
    return [Event(wid, SYSTEM, "unsuppressed", level, {"parent": parent}, now)
            for wid, level, parent in rows]


async def _suppress(conn, now: datetime) -> list[Event]:
    cur = await conn.execute(
        "WITH parents AS (SELECT DISTINCT ON (site_id) site_id, id, cause FROM warnings "
        "                 WHERE kind = 'data_interruption' AND active AND closed_at IS NULL "
        "                 ORDER BY site_id, id) "
        "SELECT c.id, c.level, p.id, p.cause FROM warnings c JOIN parents p ON p.site_id = c.site_id "
        "WHERE c.kind = 'sensor_fault' AND c.closed_at IS NULL AND c.suppressed_by IS NULL "
        "ORDER BY c.id FOR UPDATE OF c SKIP LOCKED")
    rows = await cur.fetchall()
    if rows:
        await conn.execute(
            "UPDATE warnings w SET suppressed_by = m.parent, updated_at = %s "
            "FROM unnest(%s::bigint[], %s::bigint[]) AS m (id, parent) WHERE w.id = m.id",
            (now, [r[0] for r in rows], [r[2] for r in rows]))
    return [Event(wid, SYSTEM, "suppressed", level, {"parent": parent, "parent_cause": cause}, now)
            for wid, level, parent, cause in rows]


async def _climb(conn, esc: EscalationSettings, now: datetime) -> tuple[list[Event], list[int]]:
    ack, dispose = limits(esc)
    # FOR UPDATE re-checks the conditions on the newest version of a row it locks, so a
    # warning acknowledged or disposed a moment ago is not escalated.
    cur = await conn.execute(
        "SELECT id, level, escalation, acknowledged, disposed_at IS NOT NULL, "
        "  extract(epoch FROM %(now)s - (raised_at + make_interval(secs => (%(ack)s::float8[])[level])))::float8, "
        "  extract(epoch FROM %(now)s - (raised_at + make_interval(secs => (%(dispose)s::float8[])[level])))::float8 "
        "FROM warnings WHERE closed_at IS NULL AND escalation < 2 AND suppressed_by IS NULL "
        "  AND (shelved_until IS NULL OR shelved_until <= %(now)s) "
        "  AND ((escalation < 1 AND NOT acknowledged "
        "        AND raised_at + make_interval(secs => (%(ack)s::float8[])[level]) <= %(now)s) "
        "    OR (disposed_at IS NULL "
        "        AND raised_at + make_interval(secs => (%(dispose)s::float8[])[level]) <= %(now)s)) "
        "ORDER BY id FOR UPDATE SKIP LOCKED",
        {"ack": ack, "dispose": dispose, "now": now})
    out: list[Event] = []
    moved: list[tuple[int, int]] = []
    for wid, level, step, acked, disposed, ack_over, dispose_over in await cur.fetchall():
        new = step
        if new < 1 and not acked and ack_over >= 0:
            new = 1
            out.append(Event(wid, SYSTEM, "escalated", level,
                             {"step": STEPS[1], "overdue_s": round(ack_over, 3)}, now))
        if new < 2 and not disposed and dispose_over >= 0:
            new = 2
            out.append(Event(wid, SYSTEM, "escalated", level,
                             {"step": STEPS[2], "overdue_s": round(dispose_over, 3)}, now))
        if new != step:
            moved.append((wid, new))
    if moved:
        await conn.execute(
            "UPDATE warnings w SET escalation = m.step, escalated_at = %s, updated_at = %s "
            "FROM unnest(%s::bigint[], %s::smallint[]) AS m (id, step) "
            "WHERE w.id = m.id AND w.escalation < m.step",
            (now, now, [m[0] for m in moved], [m[1] for m in moved]))
    return out, [m[0] for m in moved]


async def escalate(conn: psycopg.AsyncConnection, settings: AlertingSettings,
                   now: datetime) -> list[int]:
    """One pass of the ticker at `now` (timezone-aware); returns the ids of the warnings that
    climbed the ladder in this pass. Runs in one transaction (a savepoint when the caller
    has one open)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        recorded = await _expire_shelving(cur, now)
        recorded += await _release(cur, now)
        recorded += await _suppress(cur, now)
        climbed, ids = await _climb(cur, settings.escalation, now)
        recorded += climbed
        await record_many(cur, recorded, settings.receivers)
    if recorded:
        counts: dict[str, int] = {}
        for e in recorded:
            counts[e.action] = counts.get(e.action, 0) + 1
        log.info("escalation pass", **counts)
    return ids


async def run_escalation(dsn: str, settings: AlertingSettings, stop: asyncio.Event,
                         clock: Callable[[], float] = time.time) -> None:
    """Run escalate() every settings.escalation.tick_s until `stop`, on its own connection;
    reconnects (with back-off) after losing the database. An unexpected error in one pass
    is logged and the next pass runs as usual."""
    conn: psycopg.AsyncConnection | None = None
    delay = 0.5
    try:
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(
                        dsn, autocommit=True, application_name="hw-escalation")
                    delay = 0.5
                await escalate(conn, settings, datetime.fromtimestamp(clock(), tz=UTC))
                wait = settings.escalation.tick_s
            except psycopg.OperationalError as exc:
                log.warning("escalation: database unavailable", error=str(exc), retry_in=delay)
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
                conn = None
                wait, delay = delay, min(delay * 2, 10.0)
            except Exception:  # a bug in one pass must not stop the ticker for good
                log.exception("escalation pass failed")
                wait = settings.escalation.tick_s
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
    finally:
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

