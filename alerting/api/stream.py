"""GET /api/events/stream: server-sent events read from warning_events itself.

One LISTEN hw_events connection per process (`EventHub`, opened in the app's lifespan)
wakes every open stream; each stream then reads the events after its cursor, keeps those
in the user's scope and sends each as

    id: <event id>
    event: warning
    data: {"event": EventOut, "warning": WarningOut}

with the warning as it is at send time. A new client starts at the newest event; a client
that reconnects sends Last-Event-ID (EventSource does this by itself) and gets everything
after it. A comment line every 15 s keeps proxies from closing an idle stream; at each one
the token is checked again, so a revoked or expired session's stream ends.

Event ids come from a sequence, so a transaction that took an id earlier may commit after
one that took a later id. A stream therefore remembers the ids it skipped over ("gaps") and
looks for them again for GAP_GRACE_S before giving them up, so a slow batch transaction's
events are still delivered (possibly after later ones; the console orders by event id).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson
import psycopg
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from psycopg.rows import dict_row

from alerting.api.auth import User, credentials, get_api, resolve
from alerting.api.scope import Principal
from hazardwatch import logs

if TYPE_CHECKING:
    from alerting.api.app import Api

log = logs.get("alerting.api.stream")

BATCH = 500               # events read per query
POLL_S = 5.0              # read even without a notification (belt and braces)
GAP_POLL_S = 0.5          # while gaps are pending
GAP_GRACE_S = 10.0        # how long a skipped id may still commit
MAX_GAPS = 1000
RETRY_MS = 3000           # EventSource reconnect delay


class EventHub:
    """One LISTEN hw_events connection; wakes every subscribed stream on each NOTIFY."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.connected = False
        self._subs: set[asyncio.Event] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hw-events-listen")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._wake()

    def subscribe(self) -> asyncio.Event:
        ev = asyncio.Event()
        self._subs.add(ev)
        return ev

    def unsubscribe(self, ev: asyncio.Event) -> None:
        self._subs.discard(ev)

    def _wake(self) -> None:
        for ev in self._subs:
            ev.set()

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, application_name="hazardwatch-sse")
                async with conn:
                    await conn.execute("LISTEN hw_events")
                    self.connected, delay = True, 0.5
                    self._wake()  # catch up whatever happened while not listening
                    async for _ in conn.notifies():
                        self._wake()
            except (psycopg.Error, OSError) as exc:
                if self.connected or delay == 0.5:
                    log.warning("event listener: database unavailable; retrying",
                                error=type(exc).__name__)
            self.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


class Cursor:
    """What a stream has sent: the highest event id read, and the ids skipped below it."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.gaps: dict[int, float] = {}   # id → when it was first missed (monotonic)

    def seen(self, ids: list[int], now: float) -> None:
        for i in ids:
            self.gaps.pop(i, None)
        for i in ids:
            if i > self.after:
                room = MAX_GAPS - len(self.gaps)
                if room > 0:
                    for m in range(self.after + 1, i)[-room:]:
                        self.gaps.setdefault(m, now)
                self.after = i
        for gap, since in list(self.gaps.items()):
            if now - since > GAP_GRACE_S:
                del self.gaps[gap]


_READ = """
SELECT we.id, we.warning_id, we.at, we.actor, we.action, we.level, we.detail,
       s.enterprise_id
FROM warning_events we
JOIN warnings w ON w.id = we.warning_id
JOIN sites s ON s.id = w.site_id
WHERE we.id > %(after)s OR we.id = ANY(%(gaps)s)
ORDER BY we.id
LIMIT %(limit)s
"""


async def read_frames(api: Api, principal: Principal, cursor: Cursor) -> tuple[list[bytes], bool]:
    """The SSE frames of the events after the cursor (and of gaps that committed since);
    True when there may be more to read at once."""
    from alerting.notification import event_from_row, warnings_out

    async with api.pool.connection() as conn:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_READ, {"after": cursor.after, "gaps": list(cursor.gaps),
                                      "limit": BATCH})
            rows = await cur.fetchall()
        if not rows:
            return [], False
        allowed = await principal.enterprise_ids(conn)
        visible = [r for r in rows if allowed is None or r["enterprise_id"] in allowed]
        warnings = await warnings_out(conn, sorted({r["warning_id"] for r in visible}))
    cursor.seen([r["id"] for r in rows], time.monotonic())
    frames = []
    for row in visible:
        warning = warnings.get(row["warning_id"])
        if warning is None:
            continue
        data = orjson.dumps({"event": event_from_row(row), "warning": warning})
        frames.append(b"id: %d\nevent: warning\ndata: %s\n\n" % (row["id"], data))
    return frames, len(rows) == BATCH


async def _newest(api: Api) -> int:
    async with api.pool.connection() as conn:
        cur = await conn.execute("SELECT coalesce(max(id), 0) FROM warning_events")
        return (await cur.fetchone())[0]


def _parse_id(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        return None
    return int(value)


router = APIRouter(prefix="/api", tags=["events"])


@router.get("/events/stream", summary="Warning events as server-sent events",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`id: <event id>`, `event: warning`, "
                                            "`data: {event: EventOut, warning: WarningOut}`"}})
async def events_stream(
    request: Request,
    principal: Principal = User,
    last_event_id: str | None = Header(default=None, alias="Last-Event-ID"),
    after: str | None = Query(default=None, max_length=32,
                              description="resume after this event id when the client cannot "
                                          "send Last-Event-ID (the header wins)"),
) -> StreamingResponse:
    api = get_api(request)
    start = _parse_id(last_event_id)
    if start is None:
        start = _parse_id(after)
    newest = await _newest(api)
    start = newest if start is None else min(start, newest)
    token, _ = credentials(request)
    gen = _frames(api, principal, token or "", Cursor(start))
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache, no-store",
                                      "X-Accel-Buffering": "no"})


async def _frames(api: Api, principal: Principal, token: str,
                  cursor: Cursor) -> AsyncIterator[bytes]:
    wake = api.hub.subscribe()
    try:
        yield b"retry: %d\n: connected\n\n" % RETRY_MS
        beat = time.monotonic() + api.heartbeat_s
        while not api.stop.is_set():
            wake.clear()
            try:
                frames, more = await read_frames(api, principal, cursor)
            except (psycopg.Error, OSError) as exc:  # the database went away: say so, retry
                log.warning("event stream read failed", error=type(exc).__name__)
                frames, more = [], False
            for frame in frames:
                yield frame
            if more:
                continue
            now = time.monotonic()
            if now >= beat:
                try:
                    fresh = await resolve(api, token)
                except (psycopg.Error, OSError):   # cannot tell now: ask again next beat
                    fresh = principal
                if fresh is None:   # revoked, expired or disabled: end the stream
                    return
                principal = fresh
                beat = now + api.heartbeat_s
                yield b": ping\n\n"
            wait = min(GAP_POLL_S if cursor.gaps else POLL_S, max(beat - now, 0.01))
            await _wait_any(wake, api.stop, wait)
    finally:
        api.hub.unsubscribe(wake)


async def _wait_any(wake: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
