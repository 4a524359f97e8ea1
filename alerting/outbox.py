"""The outbox dispatcher: durable, at-least-once delivery of warning events to receivers.

`alerting.events.record` writes one `outbox` row per event and matching receiver in the
same transaction as the state change, so a committed event is never lost: whatever
happens to this process, the row waits until some dispatcher delivers it.

One pass (`dispatch_once`) is a pipeline of small named stages, Alertmanager style:

    claim   due rows, oldest event first, `FOR UPDATE SKIP LOCKED`, a bounded batch; each
            claimed row is leased (next_at pushed past the time its send may take), so two
            dispatchers never hold the same row, and a killed one only delays it
    mute    the warning is shelved or suppressed at send time → outcome 'muted', done
    dedup   the row was already delivered (or given up) by another dispatcher → done
    send    receiver.send(notification) within the receiver's timeout_s
    retry   failure → attempts + 1, next_at = now + min(retry_max_s, retry_base_s × 2^attempts),
            last_error; at max_attempts → failed_at, outcome 'failed'

Each outcome is written in its own short transaction right after it happens. Order: a
receiver gets the events of one warning in event order (a row waits while an earlier row of
the same warning and receiver is pending); receivers run concurrently, and a receiver that
just failed is not tried again in the same pass (its other rows wait for the next pass).
Rows of a receiver that is no longer configured fail at once with a clear last_error.

`run_dispatcher` is the long-running loop `hazardwatch serve` runs: LISTEN hw_events wakes
it early, otherwise a pass every dispatch_interval_s; it reconnects after losing the
database; it also re-sends the firing alerts of open warnings to receivers that want it
(Alertmanager, `refresh`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from prometheus_client import Counter, Histogram
from psycopg import pq
from psycopg.rows import dict_row

from alerting.notification import Notification, build_notification
from alerting.receivers import Receiver, build_all, close_all
from hazardwatch import db, logs
from hazardwatch.settings import AlertingSettings, ReceiverSettings

log = logs.get("alerting.outbox")

BATCH = 200                 # rows claimed per pass
LEASE_MARGIN_S = 5.0        # on top of the time the claimed sends may take
DEFAULT_TIMEOUT_S = 5.0     # for rows of receivers that are not configured
MUTE_EXEMPT = frozenset({"shelved", "suppressed"})  # the event that announces the mute itself
MAX_ERROR_CHARS = 1000

NOTIFICATIONS = Counter(
    "hazardwatch_notifications_total",
    "Outbox rows handled, by receiver and outcome (sent, failed, muted, retried, deduped)",
    ["receiver", "outcome"])
SEND_SECONDS = Histogram(
    "hazardwatch_notification_send_seconds", "Time of one receiver.send, by receiver",
    ["receiver"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

OUTCOMES = ("sent", "muted", "deduped", "retried", "failed", "deferred")


@dataclass(frozen=True)
class Row:
    id: int
    event_id: int
    receiver: str
    attempts: int
    warning_id: int


@dataclass
class Item:
    """One claimed row on its way through the stages."""

    row: Row
    receiver: Receiver | None
    cfg: ReceiverSettings | None
    notification: Notification | None = None
    state: dict[str, Any] | None = None  # outbox/warning columns read at send time
    error: str | None = None


class _Clock:
    """`now` as given (tests), else the database's clock at the start of the pass advanced
    by the local monotonic clock (outbox.next_at defaults to the database's now())."""

    def __init__(self, start: datetime, fixed: bool) -> None:
        self.start, self.fixed, self.t0 = start, fixed, time.monotonic()

    def __call__(self) -> datetime:
        if self.fixed:
            return self.start
        return self.start + timedelta(seconds=time.monotonic() - self.t0)


class _Pass:
    """Shared state of one dispatch pass: the connection (one statement at a time), the
    clock, settings, counts."""

    def __init__(self, conn: psycopg.AsyncConnection, clock: _Clock,
                 settings: AlertingSettings) -> None:
        self.conn, self.clock, self.settings = conn, clock, settings
        self.lock = asyncio.Lock()
        self.counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)

    async def write(self, sql: str, params: Mapping[str, Any]) -> int:
        async with self.lock, self.conn.transaction():
            cur = await self.conn.execute(sql, params)
            return cur.rowcount


def backoff_s(settings: AlertingSettings, attempts_before: int) -> float:
    """Delay before the next try after a failed attempt number `attempts_before + 1`."""
    return min(settings.retry_max_s, settings.retry_base_s * 2.0 ** min(attempts_before, 62))


# ---------------------------------------------------------------------------- claim

_CLAIM = """
SELECT o.id, o.event_id, o.receiver, o.attempts, e.warning_id
FROM outbox o JOIN warning_events e ON e.id = o.event_id
WHERE o.delivered_at IS NULL AND o.failed_at IS NULL AND o.next_at <= %(now)s
  AND NOT EXISTS (  -- an earlier event of this warning for this receiver waits (back-off, lease)
      SELECT 1 FROM warning_events pe JOIN outbox p ON p.event_id = pe.id
      WHERE pe.warning_id = e.warning_id AND pe.id < e.id AND p.receiver = o.receiver
        AND p.delivered_at IS NULL AND p.failed_at IS NULL AND p.next_at > %(now)s)
ORDER BY o.event_id, o.id
LIMIT %(batch)s
FOR UPDATE OF o SKIP LOCKED
"""

# Of the rows just locked: those behind an earlier pending row we did not get (another
# dispatcher holds it). They stay unclaimed, so one warning's events keep their order.
_BLOCKED = """
SELECT c.id FROM outbox c JOIN warning_events ce ON ce.id = c.event_id
WHERE c.id = ANY(%(ids)s) AND EXISTS (
    SELECT 1 FROM warning_events pe JOIN outbox p ON p.event_id = pe.id
    WHERE pe.warning_id = ce.warning_id AND pe.id < ce.id AND p.receiver = c.receiver
      AND p.delivered_at IS NULL AND p.failed_at IS NULL AND NOT p.id = ANY(%(ids)s))
"""

_LEASE = "UPDATE outbox SET next_at = %(until)s WHERE id = %(id)s"


async def _claim(p: _Pass, configs: Mapping[str, ReceiverSettings], batch: int) -> list[Row]:
    now = p.clock()
    async with p.lock, p.conn.transaction():
        cur = p.conn.cursor()
        await cur.execute(_CLAIM, {"now": now, "batch": batch})
        rows = [Row(*r) for r in await cur.fetchall()]
        if not rows:
            return []
        await cur.execute(_BLOCKED, {"ids": [r.id for r in rows]})
        blocked = {r[0] for r in await cur.fetchall()}
        rows = [r for r in rows if r.id not in blocked]
        # Lease: the k-th row of a receiver is sent after the k - 1 before it, each within
        # that receiver's timeout.
        position: dict[str, int] = {}
        leases = []
        for r in rows:
            position[r.receiver] = position.get(r.receiver, 0) + 1
            cfg = configs.get(r.receiver)
            timeout = cfg.timeout_s if cfg is not None else DEFAULT_TIMEOUT_S
            until = now + timedelta(seconds=timeout * position[r.receiver] + LEASE_MARGIN_S)
            leases.append({"until": until, "id": r.id})
        await cur.executemany(_LEASE, leases)
    return rows


# ---------------------------------------------------------------------------- stages

_STATE = """
SELECT o.delivered_at, o.failed_at, w.shelved_until, w.suppressed_by
FROM outbox o JOIN warning_events e ON e.id = o.event_id JOIN warnings w ON w.id = e.warning_id
WHERE o.id = %s
"""


async def _load(p: _Pass, item: Item) -> None:
    """Read the row's state and build the notification at send time (current warning)."""
    async with p.lock, p.conn.transaction():
        cur = p.conn.cursor(row_factory=dict_row)
        await cur.execute(_STATE, (item.row.id,))
        item.state = await cur.fetchone()
        if item.state is not None:
            item.notification = await build_notification(
                p.conn, item.row.event_id, console_url=p.settings.console_url)


async def stage_mute(p: _Pass, item: Item) -> str | None:
    """Shelved or suppressed at send time: done, nothing sent."""
    st, n = item.state, item.notification
    if st is None or n is None or n.action in MUTE_EXEMPT:
        return None
    shelved = st["shelved_until"] is not None and st["shelved_until"] > p.clock()
    if not (shelved or st["suppressed_by"] is not None):
        return None
    why = "shelved" if shelved else f"suppressed by warning {st['suppressed_by']}"
    done = await p.write(
        "UPDATE outbox SET delivered_at = %(now)s, outcome = 'muted', last_error = %(why)s "
        "WHERE id = %(id)s AND delivered_at IS NULL AND failed_at IS NULL",
        {"now": p.clock(), "why": f"muted: {why}", "id": item.row.id})
    return "muted" if done else "deduped"


async def stage_dedup(p: _Pass, item: Item) -> str | None:
    """Already delivered (or given up) for this event and receiver: done."""
    st = item.state
    if st is None or st["delivered_at"] is not None or st["failed_at"] is not None:
        return "deduped"
    if item.notification is None:  # the event vanished (its warning was deleted)
        await _fail(p, item, "event or warning no longer exists")
        return "failed"
    return None


async def stage_send(p: _Pass, item: Item) -> str | None:
    assert item.notification is not None and item.receiver is not None
    cfg = item.cfg
    timeout = cfg.timeout_s if cfg is not None else DEFAULT_TIMEOUT_S
    started = time.monotonic()
    try:
        await asyncio.wait_for(item.receiver.send(item.notification), timeout)
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        item.error = f"timed out after {timeout:g} s"
        return None
    except Exception as exc:  # noqa: BLE001 - any failure of a receiver is retried
        item.error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        return None
    finally:
        SEND_SECONDS.labels(item.row.receiver).observe(time.monotonic() - started)
    done = await p.write(
        "UPDATE outbox SET delivered_at = %(now)s, outcome = 'sent', attempts = attempts + 1 "
        "WHERE id = %(id)s AND delivered_at IS NULL AND failed_at IS NULL",
        {"now": p.clock(), "id": item.row.id})
    return "sent" if done else "deduped"


async def stage_retry(p: _Pass, item: Item) -> str:
    """The send failed: back off, or give up after max_attempts."""
    attempts = item.row.attempts + 1
    max_attempts = item.cfg.max_attempts if item.cfg is not None else 1
    if attempts >= max_attempts:
        await _fail(p, item, f"gave up after {attempts} attempts: {item.error}", attempts)
        return "failed"
    delay = backoff_s(p.settings, item.row.attempts)
    await p.write(
        "UPDATE outbox SET attempts = %(attempts)s, next_at = %(next)s, last_error = %(err)s "
        "WHERE id = %(id)s AND delivered_at IS NULL AND failed_at IS NULL",
        {"attempts": attempts, "next": p.clock() + timedelta(seconds=delay),
         "err": item.error, "id": item.row.id})
    log.debug("notification retry", receiver=item.row.receiver, event_id=item.row.event_id,
              attempt=attempts, retry_in_s=delay, error=item.error)
    return "retried"


async def _fail(p: _Pass, item: Item, error: str, attempts: int | None = None) -> None:
    await p.write(
        "UPDATE outbox SET failed_at = %(now)s, outcome = 'failed', last_error = %(err)s, "
        "attempts = COALESCE(%(attempts)s, attempts) "
        "WHERE id = %(id)s AND delivered_at IS NULL AND failed_at IS NULL",
        {"now": p.clock(), "err": error[:MAX_ERROR_CHARS], "attempts": attempts,
         "id": item.row.id})
    log.warning("notification failed", receiver=item.row.receiver, event_id=item.row.event_id,
                warning_id=item.row.warning_id, error=error)


STAGES = (stage_mute, stage_dedup, stage_send)


async def _release(p: _Pass, rows: list[Row]) -> None:
    """Give leased rows back untried (due again now)."""
    if rows:
        async with p.lock, p.conn.transaction():
            await p.conn.cursor().execute(
                "UPDATE outbox SET next_at = %s WHERE id = ANY(%s) "
                "AND delivered_at IS NULL AND failed_at IS NULL",
                (p.clock(), [r.id for r in rows]))


async def _lane(p: _Pass, name: str, receiver: Receiver, cfg: ReceiverSettings | None,
                rows: list[Row]) -> None:
    """One receiver's rows, in event order."""
    for i, row in enumerate(rows):
        item = Item(row=row, receiver=receiver, cfg=cfg)
        await _load(p, item)
        outcome = None
        for stage in STAGES:
            outcome = await stage(p, item)
            if outcome is not None:
                break
        if outcome is None:
            outcome = await stage_retry(p, item)
        p.counts[outcome] += 1
        NOTIFICATIONS.labels(name, outcome).inc()
        _health(name, outcome, item.error)
        if outcome in ("retried", "failed") and item.error is not None:
            rest = rows[i + 1:]
            await _release(p, rest)
            p.counts["deferred"] += len(rest)
            return


_failing: dict[str, str] = {}  # receiver → error, while its sends fail (log on change only)


def _health(name: str, outcome: str, error: str | None) -> None:
    if outcome in ("retried", "failed") and error is not None:
        if name not in _failing:
            log.warning("receiver failing; retrying with back-off", receiver=name, error=error)
        _failing[name] = error
    elif outcome == "sent" and name in _failing:
        del _failing[name]
        log.info("receiver delivering again", receiver=name)


async def dispatch_once(conn: psycopg.AsyncConnection, receivers: dict[str, Receiver],
                        settings: AlertingSettings, now: datetime | None = None, *,
                        batch: int = BATCH) -> dict[str, int]:
    """One pass over the due outbox rows. `conn` must not be inside a transaction (each
    step commits on its own). `now` fixes the clock (tests); default: the database's.
    Returns counts: claimed, sent, muted, deduped, retried, failed, deferred."""
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("dispatch_once needs a connection that is not inside a transaction")
    if now is None:
        cur = await conn.execute("SELECT clock_timestamp()")
        row = await cur.fetchone()
        if not conn.autocommit:
            await conn.commit()
        clock = _Clock(row[0], fixed=False)
    else:
        clock = _Clock(now, fixed=True)
    p = _Pass(conn, clock, settings)
    configs = {c.name: c for c in settings.receivers}
    rows = await _claim(p, configs, batch)
    lanes: dict[str, list[Row]] = {}
    for r in rows:
        lanes.setdefault(r.receiver, []).append(r)
    tasks = []
    for name, lane_rows in lanes.items():
        receiver = receivers.get(name)
        if receiver is None:
            for r in lane_rows:
                await _fail(p, Item(row=r, receiver=None, cfg=None),
                            f"receiver {name!r} is not configured (no [[alerting.receivers]] "
                            "entry with this name): not sent")
                p.counts["failed"] += 1
                NOTIFICATIONS.labels(name, "failed").inc()
            continue
        tasks.append(_lane(p, name, receiver, configs.get(name), lane_rows))
    if tasks:
        # Every lane finishes (a broken connection fails them all quickly); then the first
        # error, e.g. the database gone, goes up to the caller.
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
    return {"claimed": len(rows), **p.counts}


# ---------------------------------------------------------------------------- refresh

_OPEN_FOR = """
SELECT DISTINCT ON (w.id) w.id, e.id
FROM warnings w
JOIN warning_events e ON e.warning_id = w.id
JOIN outbox o ON o.event_id = e.id AND o.receiver = %(receiver)s AND o.outcome = 'sent'
WHERE w.active AND w.closed_at IS NULL AND w.suppressed_by IS NULL
  AND (w.shelved_until IS NULL OR w.shelved_until <= %(now)s)
ORDER BY w.id, e.id DESC
"""


async def refresh_open(conn: psycopg.AsyncConnection, receiver: Any, name: str,
                       settings: AlertingSettings, now: datetime) -> int:
    """Hand `receiver.refresh` the open, active, unmuted warnings it was already sent,
    each with its latest delivered event. Returns how many."""
    cur = await conn.execute(_OPEN_FOR, {"receiver": name, "now": now})
    pairs = await cur.fetchall()
    items = []
    for _, event_id in pairs:
        n = await build_notification(conn, event_id, console_url=settings.console_url)
        if n is not None:
            items.append(n)
    if not conn.autocommit:
        await conn.commit()
    if items:
        await receiver.refresh(items)
    return len(items)


# ---------------------------------------------------------------------------- the loop


async def _listen(conn: psycopg.AsyncConnection, wake: asyncio.Event) -> None:
    async for _ in conn.notifies():
        wake.set()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_dispatcher(dsn: str, settings: AlertingSettings, stop: asyncio.Event) -> None:
    """Deliver outbox rows until `stop` is set."""
    receivers = build_all(settings.receivers)
    refreshers = {name: r for name, r in receivers.items() if hasattr(r, "refresh")}
    next_refresh = dict.fromkeys(refreshers, 0.0)
    log.info("outbox dispatcher started", receivers=sorted(receivers))
    retry_s = 1.0
    try:
        while not stop.is_set():
            try:
                async with await db.connect(dsn, autocommit=True) as conn, \
                        await db.connect(dsn, autocommit=True) as listen_conn:
                    await listen_conn.execute("LISTEN hw_events")
                    wake = asyncio.Event()
                    listener = asyncio.create_task(_listen(listen_conn, wake))
                    try:
                        if retry_s > 1.0:
                            log.info("outbox dispatcher reconnected")
                        retry_s = 1.0
                        while not stop.is_set():
                            wake.clear()
                            counts = await dispatch_once(conn, receivers, settings)
                            await _refresh_due(conn, refreshers, next_refresh, settings)
                            if counts["claimed"] >= BATCH:
                                continue  # more is due right now
                            wait_s = await _next_due_s(conn, settings.dispatch_interval_s)
                            await _wait(wake, stop, listener, wait_s)
                    finally:  # before the connections close
                        listener.cancel()
                        await asyncio.gather(listener, return_exceptions=True)
            except (psycopg.OperationalError, OSError) as exc:
                if stop.is_set():
                    break
                log.warning("outbox dispatcher lost the database; reconnecting",
                            error=str(exc).strip(), retry_in_s=retry_s)
                await _sleep(stop, retry_s)
                retry_s = min(retry_s * 2, 30.0)
            except Exception:  # a bug must not end delivery for good: log, pause, go on
                log.exception("outbox dispatcher pass failed; retrying", retry_in_s=retry_s)
                await _sleep(stop, retry_s)
                retry_s = min(retry_s * 2, 30.0)
    finally:
        await close_all(receivers)
        log.info("outbox dispatcher stopped")


async def _next_due_s(conn: psycopg.AsyncConnection, longest: float) -> float:
    """Seconds until the next pending row is due (a back-off or a lease runs out), at most
    `longest`."""
    cur = await conn.execute(
        "SELECT extract(epoch FROM min(next_at) - clock_timestamp()) FROM outbox "
        "WHERE delivered_at IS NULL AND failed_at IS NULL")
    (left,) = await cur.fetchone()
    if left is None:
        return longest
    return min(longest, max(0.05, float(left) + 0.01))


async def _wait(wake: asyncio.Event, stop: asyncio.Event, listener: asyncio.Task,
                timeout: float) -> None:
    waiters = [asyncio.create_task(wake.wait()), asyncio.create_task(stop.wait())]
    try:
        await asyncio.wait([*waiters, listener], timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
    if listener.done():
        listener.result()  # raises the listening connection's error → reconnect
        raise psycopg.OperationalError("LISTEN connection closed")


async def _refresh_due(conn: psycopg.AsyncConnection, refreshers: dict[str, Any],
                       next_refresh: dict[str, float], settings: AlertingSettings) -> None:
    if not refreshers:
        return
    configs = {c.name: c for c in settings.receivers}
    now_m = time.monotonic()
    for name, receiver in refreshers.items():
        if now_m < next_refresh[name]:
            continue
        next_refresh[name] = now_m + configs[name].resend_s
        cur = await conn.execute("SELECT clock_timestamp()")
        (now,) = await cur.fetchone()
        try:
            await refresh_open(conn, receiver, name, settings, now)
        except psycopg.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - a refresh is best effort
            log.info("refresh failed", receiver=name, error=f"{type(exc).__name__}: {exc}")
