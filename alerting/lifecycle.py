"""What the duty officers do to a warning (ISA-18.2, docs/alerting.md "States").

Each action is one transaction: lock the warning (SELECT … FOR UPDATE), check the
transition is allowed from its state, update it, and record the event (with its outbox
rows) through alerting.events — so the state change, the audit trail and the
notifications commit together or not at all. Called inside an open transaction, the action
runs in a savepoint of it.

| action      | allowed from                              | writes                              |
|-------------|-------------------------------------------|-------------------------------------|
| acknowledge | active_unack, cleared_unack               | acknowledged, acknowledged_at/_by   |
| comment     | any but closed                            | (the event only)                    |
| dispose     | any but closed                            | disposal, disposed_by, disposed_at  |
| close       | cleared, with a disposal (earlier, or the | closed_at/_by, closing_note         |
|             | note given to close)                      |                                     |
| shelve      | any but closed                            | shelved_until/_reason/_by           |
| unshelve    | any but closed, while shelved             | shelved_* cleared                   |

Errors are `LifecycleError(status, message)`: 404 no such warning, 409 the transition is not
allowed (the message says why, in plain words), 422 bad input. Who may do what is the
API's business, not this module's.

Every function returns the warning row after the change as a dict (the `warnings` columns),
plus `"event"`: the recorded event as a dict (`id, warning_id, at, actor, action, level,
detail`, the API's EventOut).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from alerting import events
from hazardwatch.settings import ReceiverSettings

MAX_TEXT = 4000  # characters in a note, comment or reason


class LifecycleError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"LifecycleError({self.status}, {self.message!r})"


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def _text(value: str | None, what: str, *, required: bool) -> str | None:
    """A note, comment or reason: stripped; blank is None (or 422 when required)."""
    if value is not None and not isinstance(value, str):
        raise LifecycleError(422, f"{what} must be text")
    text = (value or "").strip()
    if not text:
        if required:
            raise LifecycleError(422, f"{what} must not be empty")
        return None
    if len(text) > MAX_TEXT:
        raise LifecycleError(422, f"{what} is too long ({len(text)} characters; at most {MAX_TEXT})")
    return text


def _actor(actor: str) -> str:
    if not isinstance(actor, str) or not actor.strip():
        raise LifecycleError(422, "actor must not be empty")
    return actor.strip()


def _duration(seconds: float) -> str:
    if seconds % 86400 == 0:
        return f"{seconds / 86400:g} d"
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"


async def _locked(cur, warning_id: int) -> dict[str, Any]:
    await cur.execute("SELECT * FROM warnings WHERE id = %s FOR UPDATE", (warning_id,))
    row = await cur.fetchone()
    if row is None:
        raise LifecycleError(404, f"no warning {warning_id}")
    return row


def _not_closed(row: dict[str, Any], verb: str) -> None:
    if row["closed_at"] is not None:
        raise LifecycleError(409, f"cannot {verb}: the warning is closed")


async def _finish(cur, row: dict[str, Any], actor: str, action: str, detail: dict[str, Any],
                  receivers: Sequence[ReceiverSettings], now: datetime,
                  sets: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply the update (if any), record the event, return the row with the event."""
    if sets is not None:
        await cur.execute(f"UPDATE warnings SET {sets}, updated_at = %(now)s WHERE id = %(id)s "
                          "RETURNING *", {**(params or {}), "now": now, "id": row["id"]})
        row = await cur.fetchone()
    level = int(row["level"])
    event_id = await events.record(cur, row["id"], actor, action, level, detail, receivers, at=now)
    out = dict(row)
    out["event"] = {"id": event_id, "warning_id": row["id"], "at": now, "actor": actor,
                    "action": action, "level": level, "detail": detail}
    return out


async def acknowledge(conn: psycopg.AsyncConnection, warning_id: int, actor: str,
                      note: str | None = None, *, receivers: Sequence[ReceiverSettings],
                      now: datetime | None = None) -> dict[str, Any]:
    """Acknowledge (确认): from active_unack or cleared_unack."""
    actor, note, now = _actor(actor), _text(note, "note", required=False), _now(now)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = await _locked(cur, warning_id)
        _not_closed(row, "acknowledge")
        if row["acknowledged"]:
            by = f" by {row['acknowledged_by']}" if row["acknowledged_by"] else ""
            raise LifecycleError(409, f"cannot acknowledge: the warning is already acknowledged{by}")
        return await _finish(cur, row, actor, "acknowledged", {"note": note} if note else {},
                             receivers, now,
                             "acknowledged = true, acknowledged_at = %(now)s, acknowledged_by = %(actor)s",
                             {"actor": actor})


async def comment(conn: psycopg.AsyncConnection, warning_id: int, actor: str, text: str, *,
                  receivers: Sequence[ReceiverSettings], now: datetime | None = None) -> dict[str, Any]:
    """A remark on the timeline: any state but closed; the warning itself is unchanged."""
    actor, text, now = _actor(actor), _text(text, "comment", required=True), _now(now)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = await _locked(cur, warning_id)
        _not_closed(row, "comment")
        return await _finish(cur, row, actor, "commented", {"text": text}, receivers, now)


async def dispose(conn: psycopg.AsyncConnection, warning_id: int, actor: str, note: str, *,
                  receivers: Sequence[ReceiverSettings], now: datetime | None = None) -> dict[str, Any]:
    """Disposal feedback (处置反馈): any state but closed. `disposal` holds the latest note
    and `disposed_by` its author; `disposed_at` is when disposal was first reported (what the
    督办 timer asks)."""
    actor, note, now = _actor(actor), _text(note, "note", required=True), _now(now)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = await _locked(cur, warning_id)
        _not_closed(row, "dispose")
        return await _finish(cur, row, actor, "disposed", {"note": note}, receivers, now,
                             "disposal = %(note)s, disposed_by = %(actor)s, "
                             "disposed_at = coalesce(disposed_at, %(now)s)",
                             {"note": note, "actor": actor})


async def close(conn: psycopg.AsyncConnection, warning_id: int, actor: str,
                note: str | None = None, *, receivers: Sequence[ReceiverSettings],
                now: datetime | None = None) -> dict[str, Any]:
    """Close (闭环): only a cleared, acknowledged warning with a disposal — reported earlier,
    or the note given here. After it, the next condition of that site and cause opens a new
    warning."""
    actor, note, now = _actor(actor), _text(note, "note", required=False), _now(now)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = await _locked(cur, warning_id)
        _not_closed(row, "close")
        if row["active"]:
            raise LifecycleError(409, "cannot close: the condition is still active")
        if not row["acknowledged"]:
            raise LifecycleError(409, "cannot close: the warning has not been acknowledged")
        if note is None and not row["disposal"]:
            raise LifecycleError(409, "cannot close: no disposal has been reported; "
                                      "give the disposal note to close it")
        closing = note if note is not None else row["disposal"]
        return await _finish(cur, row, actor, "closed", {"note": closing}, receivers, now,
                             "closed_at = %(now)s, closed_by = %(actor)s, closing_note = %(note)s",
                             {"actor": actor, "note": closing})


async def shelve(conn: psycopg.AsyncConnection, warning_id: int, actor: str, reason: str,
                 until: datetime, max_shelve_s: float, *, receivers: Sequence[ReceiverSettings],
                 now: datetime | None = None) -> dict[str, Any]:
    """Shelve (e.g. maintenance) until `until`, at most max_shelve_s ahead: any state but
    closed; shelving a shelved warning again replaces reason and expiry. A shelved warning
    stays visible, does not escalate, and its notifications are muted."""
    actor, reason, now = _actor(actor), _text(reason, "reason", required=True), _now(now)
    if not isinstance(until, datetime):
        raise LifecycleError(422, "until must be a date and time")
    if until.tzinfo is None:
        raise LifecycleError(422, "until must carry a time zone (RFC 3339)")
    if until <= now:
        raise LifecycleError(422, "until must be in the future")
    if until - now > timedelta(seconds=max_shelve_s):
        raise LifecycleError(422, f"cannot shelve for longer than {_duration(max_shelve_s)}")
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = await _locked(cur, warning_id)
        _not_closed(row, "shelve")
        detail = {"reason": reason, "until": until.astimezone(UTC).isoformat()}
        return await _finish(cur, row, actor, "shelved", detail, receivers, now,
                             "shelved_until = %(until)s, shelved_reason = %(reason)s, "
                             "shelved_by = %(actor)s",
                             {"until": until, "reason": reason, "actor": actor})


async def unshelve(conn: psycopg.AsyncConnection, warning_id: int, actor: str, *,
                   receivers: Sequence[ReceiverSettings], now: datetime | None = None) -> dict[str, Any]:
    """Return a shelved warning to service before its expiry."""
    actor, now = _actor(actor), _now(now)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = await _locked(cur, warning_id)
        _not_closed(row, "unshelve")
        if row["shelved_until"] is None or row["shelved_until"] <= now:
            raise LifecycleError(409, "cannot unshelve: the warning is not shelved")
        return await _finish(cur, row, actor, "unshelved", {}, receivers, now,
                             "shelved_until = NULL, shelved_reason = NULL, shelved_by = NULL")
