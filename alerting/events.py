"""The audit trail: one `warning_events` row per event, plus its `outbox` rows.

Every state change of a warning is recorded here, in the caller's transaction, together
with one outbox row per receiver whose route matches (the warning's level at or above the
receiver's `min_level`, the action among its `actions`). Event and notifications therefore
commit, or roll back, with the change they describe: nothing is announced that did not
happen, and nothing that happened goes unannounced.

`record` writes one event (lifecycle actions); `record_many` writes any number in one round
trip (the rule engine's writer on the ingest hot path, the escalation ticker). Both keep the
given order in the event ids, which is the order the dispatcher delivers a warning's events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from psycopg.rows import tuple_row

from hazardwatch.settings import ReceiverSettings

LEVELS: dict[str, int] = {"blue": 1, "yellow": 2, "orange": 3, "red": 4}
LEVEL_NAMES: dict[int, str] = {v: k for k, v in LEVELS.items()}
SYSTEM = "system"


class Event(NamedTuple):
    """One event to record. `at` None: the transaction's time (now())."""

    warning_id: int
    actor: str
    action: str
    level: int | None
    detail: dict[str, Any]
    at: datetime | None = None


def routes(receivers: Iterable[ReceiverSettings]) -> list[tuple[str, int, str]]:
    """(receiver name, minimum level, action) for every route of every receiver."""
    return [(r.name, LEVELS[r.min_level], action) for r in receivers for action in r.actions]


def matches(receiver: ReceiverSettings, action: str, level: int | None) -> bool:
    return level is not None and level >= LEVELS[receiver.min_level] and action in receiver.actions


def _json(detail: dict[str, Any]) -> str:
    return orjson.dumps(detail, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


# One statement for events and outbox rows: the events in the given order (ordinality), then
# every (event, receiver) pair whose route matches. A receiver listed twice under one name
# yields one row (the outbox key is (event_id, receiver)).
_RECORD = """
WITH ev AS (
    INSERT INTO warning_events (warning_id, actor, action, level, detail, at)
    SELECT e.warning_id, e.actor, e.action, e.level, e.detail, coalesce(e.at, now())
    FROM unnest(%(warning_id)s::bigint[], %(actor)s::text[], %(action)s::text[],
                %(level)s::smallint[], %(detail)s::jsonb[], %(at)s::timestamptz[])
         WITH ORDINALITY AS e (warning_id, actor, action, level, detail, at, n)
    ORDER BY e.n
    RETURNING id, action, level
), routed AS (
    INSERT INTO outbox (event_id, receiver)
    SELECT DISTINCT ev.id, r.name
    FROM ev JOIN unnest(%(r_name)s::text[], %(r_min)s::smallint[], %(r_action)s::text[])
                 AS r (name, min_level, action)
      ON r.action = ev.action AND ev.level >= r.min_level
    ON CONFLICT (event_id, receiver) DO NOTHING
)
SELECT id FROM ev ORDER BY id
"""


async def record_many(cur, events: Sequence[Event | tuple], receivers: Sequence[ReceiverSettings]
                      ) -> list[int]:
    """Insert the events (in order) and their routed outbox rows; returns the event ids in
    the same order. `cur` is an async connection or cursor inside the caller's transaction."""
    if not events:
        return []
    evs = [e if isinstance(e, Event) else Event(*e) for e in events]
    rts = routes(receivers)
    params = {
        "warning_id": [e.warning_id for e in evs],
        "actor": [e.actor for e in evs],
        "action": [e.action for e in evs],
        "level": [None if e.level is None else int(e.level) for e in evs],
        "detail": [_json(e.detail or {}) for e in evs],
        "at": [e.at for e in evs],
        "r_name": [r[0] for r in rts],
        "r_min": [r[1] for r in rts],
        "r_action": [r[2] for r in rts],
    }
    conn = getattr(cur, "connection", cur)  # a cursor's row factory may not be tuples
    async with conn.cursor(row_factory=tuple_row) as c:
        await c.execute(_RECORD, params)
        ids = [row[0] for row in await c.fetchall()]
    if len(ids) != len(evs):  # cannot happen: every event row is returned
        raise RuntimeError(f"recorded {len(ids)} of {len(evs)} events")
    return ids


async def record(cur, warning_id: int, actor: str, action: str, level: int | None,
                 detail: dict[str, Any] | None, receivers: Sequence[ReceiverSettings], *,
                 at: datetime | None = None) -> int:
    """Insert one event and its routed outbox rows; returns the event id."""
    (event_id,) = await record_many(
        cur, [Event(warning_id, actor, action, level, detail or {}, at)], receivers)
    return event_id
