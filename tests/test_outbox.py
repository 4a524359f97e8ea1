"""The durable outbox: retries with back-off, exactly one successful delivery, crash safety,
concurrent dispatchers, mute, give-up, removed receivers, order, the long-running loop.

Real PostgreSQL (a fresh database per test), real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import psycopg
import pytest
from alertdata import (  # noqa: F401  (dsn_fixture: the dsn fixture)
    ENTERPRISE,
    add_event,
    alerting,
    connect,
    db_now,
    dsn_fixture,
    make_warning,
    outbox_rows,
    webhook,
)
from httpsink import HttpSink
from prometheus_client import REGISTRY

from alerting.notification import warning_out
from alerting.outbox import backoff_s, dispatch_once, run_dispatcher
from alerting.receivers import build_all
from alerting.receivers.webhook import verify

WARNING_OUT_KEYS = {
    "id", "cause", "title_zh", "title_en", "kind", "level", "level_name", "state", "active",
    "acknowledged", "escalation", "count", "opened_at", "raised_at", "updated_at",
    "cleared_at", "closed_at", "acknowledged_at", "disposed_at", "disposal", "closing_note",
    "shelved_until", "shelved_reason", "suppressed_by", "peak_value", "peak_sensor", "detail",
    "site", "enterprise", "region",
}


def counter(receiver: str, outcome: str) -> float:
    return REGISTRY.get_sample_value(
        "hazardwatch_notifications_total", {"receiver": receiver, "outcome": outcome}) or 0.0


@pytest.fixture
def sink():
    with HttpSink() as s:
        yield s


# ---------------------------------------------------------------------------- retries


async def test_fails_three_times_then_delivered_exactly_once_with_backoff(dsn, sink):
    sink.script = [(500, b"down"), (503, b"busy"), (500, b"down")]
    settings = alerting(webhook(sink.url), retry_base_s=2, retry_max_s=300)
    receivers = build_all(settings.receivers)
    async with await connect(dsn) as conn:
        wid = await make_warning(conn)
        eid = await add_event(conn, wid, "raised")
        t0 = await db_now(conn) + timedelta(seconds=1)
        sent_before = counter("hook", "sent")
        retried_before = counter("hook", "retried")

        # attempt 1 at t0 fails → next at t0 + 2 s (base × 2^0)
        got = await dispatch_once(conn, receivers, settings, now=t0)
        assert got["retried"] == 1 and got["sent"] == 0
        (row,) = await outbox_rows(conn, eid)
        assert row["attempts"] == 1 and row["next_at"] == t0 + timedelta(seconds=2)
        assert "HTTP 500" in row["last_error"] and row["delivered_at"] is None

        # not due yet: nothing is claimed, nothing is sent
        got = await dispatch_once(conn, receivers, settings, now=t0 + timedelta(seconds=1.9))
        assert got["claimed"] == 0 and len(sink.requests) == 1

        # attempt 2 at t0 + 2 fails → + 4 s; attempt 3 at t0 + 6 fails → + 8 s
        got = await dispatch_once(conn, receivers, settings, now=t0 + timedelta(seconds=2))
        assert got["retried"] == 1
        (row,) = await outbox_rows(conn, eid)
        assert row["next_at"] == t0 + timedelta(seconds=6) and "HTTP 503" in row["last_error"]
        assert (await dispatch_once(conn, receivers, settings,
                                    now=t0 + timedelta(seconds=5.99)))["claimed"] == 0
        got = await dispatch_once(conn, receivers, settings, now=t0 + timedelta(seconds=6))
        assert got["retried"] == 1
        (row,) = await outbox_rows(conn, eid)
        assert row["attempts"] == 3 and row["next_at"] == t0 + timedelta(seconds=14)
        assert (await dispatch_once(conn, receivers, settings,
                                    now=t0 + timedelta(seconds=13.9)))["claimed"] == 0

        # attempt 4 succeeds
        got = await dispatch_once(conn, receivers, settings, now=t0 + timedelta(seconds=14))
        assert got["sent"] == 1
        (row,) = await outbox_rows(conn, eid)
        assert row["outcome"] == "sent" and row["attempts"] == 4
        assert row["delivered_at"] == t0 + timedelta(seconds=14) and row["failed_at"] is None

        # never again, however late
        got = await dispatch_once(conn, receivers, settings, now=t0 + timedelta(days=1))
        assert got["claimed"] == 0
    assert len(sink.requests) == 4
    assert {r.headers["x-hazardwatch-event-id"] for r in sink.requests} == {str(eid)}
    assert counter("hook", "sent") - sent_before == 1
    assert counter("hook", "retried") - retried_before == 3


def test_backoff_is_capped():
    settings = alerting(retry_base_s=2, retry_max_s=60)
    assert [backoff_s(settings, a) for a in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff_s(settings, 10_000) == 60


async def test_failed_after_max_attempts(dsn, sink):
    sink.default = (500, b"broken")
    settings = alerting(webhook(sink.url, max_attempts=3), retry_base_s=1, retry_max_s=10)
    receivers = build_all(settings.receivers)
    async with await connect(dsn) as conn:
        eid = await add_event(conn, await make_warning(conn))
        t = await db_now(conn) + timedelta(seconds=1)
        outcomes = []
        for _ in range(6):
            got = await dispatch_once(conn, receivers, settings, now=t)
            outcomes.append((got["retried"], got["failed"]))
            t += timedelta(seconds=100)
        assert outcomes == [(1, 0), (1, 0), (0, 1), (0, 0), (0, 0), (0, 0)]
        (row,) = await outbox_rows(conn, eid)
        assert row["outcome"] == "failed" and row["failed_at"] is not None
        assert row["attempts"] == 3 and row["delivered_at"] is None
        assert "gave up after 3 attempts" in row["last_error"] and "HTTP 500" in row["last_error"]
    assert len(sink.requests) == 3


async def test_timeout_is_a_failure(dsn, sink):
    sink.delay_s = 1.5
    settings = alerting(webhook(sink.url, timeout_s=0.3))
    receivers = build_all(settings.receivers)
    async with await connect(dsn) as conn:
        eid = await add_event(conn, await make_warning(conn))
        got = await dispatch_once(conn, receivers, settings)
        assert got["retried"] == 1
        (row,) = await outbox_rows(conn, eid)
        assert row["attempts"] == 1 and "0.3" in row["last_error"]


# ---------------------------------------------------------------------------- the payload


async def test_event_id_and_signature_verified_by_the_server(dsn, sink):
    secret = "s3cr3t-key"
    settings = alerting(webhook(sink.url, secret=secret))
    receivers = build_all(settings.receivers)

    def check(rec):
        ok = verify(secret, rec.body, rec.headers.get("x-hazardwatch-signature"))
        return (200, b"{}") if ok else (401, b"bad signature")

    sink.respond = check
    async with await connect(dsn) as conn:
        wid = await make_warning(conn)
        eid = await add_event(conn, wid, "raised", detail={"why": "TK1.LT hh"})
        got = await dispatch_once(conn, receivers, settings)
        assert got["sent"] == 1
        expected = await warning_out(conn, wid)
    (rec,) = sink.requests
    assert rec.path == "/" and rec.headers["content-type"].startswith("application/json")
    assert rec.headers["x-hazardwatch-event-id"] == str(eid)
    assert rec.headers["x-hazardwatch-signature"].startswith("sha256=")
    body = rec.json()
    assert body["event"] == {**body["event"], "id": eid, "warning_id": wid, "action": "raised",
                             "actor": "system", "level": 4, "detail": {"why": "TK1.LT hh"}}
    assert set(body["event"]) == {"id", "warning_id", "at", "actor", "action", "level", "detail"}
    assert body["warning"] == expected
    assert set(body["warning"]) == WARNING_OUT_KEYS

    # a wrong secret is refused by the server → retried, not delivered
    bad = alerting(webhook(sink.url, secret="not-the-secret"))
    async with await connect(dsn) as conn:
        eid2 = await add_event(conn, wid, "escalated", detail={"step": "警示", "overdue_s": 301})
        got = await dispatch_once(conn, build_all(bad.receivers), bad)
        assert got["retried"] == 1
        (row,) = await outbox_rows(conn, eid2)
        assert "HTTP 401" in row["last_error"]


async def test_warning_out_is_the_contract_shape(dsn):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, level=3, count=2, shelved_reason=None)
        w = await warning_out(conn, wid)
        assert await warning_out(conn, 10**9) is None
    assert set(w) == WARNING_OUT_KEYS
    assert w["level"] == 3 and w["level_name"] == "orange" and w["state"] == "active_unack"
    assert w["title_zh"] != "overfill" and w["title_en"] != "overfill"  # from the rule pack
    assert w["site"] == {"id": w["site"]["id"], "code": "T1", "name": "罐区",
                         "kind": "major_hazard", "grade": 2}
    assert w["enterprise"] == {"code": ENTERPRISE, "name": "测试化工一厂"}
    assert w["region"] == {"code": "370105", "name": "天桥区"}
    sensor = w["peak_sensor"]
    assert set(sensor) == {"id", "tag", "kind", "unit", "range", "limits", "interval_s"}
    assert set(sensor["limits"]) == {"ll", "l", "h", "hh"} and len(sensor["range"]) == 2
    assert w["opened_at"].endswith("Z") and w["cleared_at"] is None
    json.dumps(w)  # plain JSON


# ---------------------------------------------------------------------------- crash safety


async def test_committed_rows_are_delivered_when_a_dispatcher_starts(dsn, sink):
    """Rows committed with their events while no dispatcher ran are delivered later."""
    settings = alerting(webhook(sink.url), dispatch_interval_s=0.2)
    async with await connect(dsn) as conn:
        wid = await make_warning(conn)
        ids = [await add_event(conn, wid, a) for a in ("raised", "level_up", "escalated")]
    stop = asyncio.Event()
    task = asyncio.create_task(run_dispatcher(dsn, settings, stop))
    try:
        await asyncio.to_thread(sink.wait_for, 3)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert [int(r.headers["x-hazardwatch-event-id"]) for r in sink.requests] == ids
    async with await connect(dsn) as conn:
        assert [r["outcome"] for r in await outbox_rows(conn)] == ["sent"] * 3


DISPATCHER_SCRIPT = """
import asyncio, sys
from alerting.outbox import run_dispatcher
from hazardwatch.settings import AlertingSettings
settings = AlertingSettings.model_validate_json(sys.argv[2])
asyncio.run(run_dispatcher(sys.argv[1], settings, asyncio.Event()))
"""


@pytest.mark.slow
async def test_dispatcher_killed_mid_send_the_next_one_delivers(dsn, sink):
    """SIGKILL while the receiver holds the request: the row stays undelivered, and a new
    dispatcher delivers it once the dead one's lease runs out (same event id: the far end
    can drop the repeat)."""
    settings = alerting(webhook(sink.url, timeout_s=1.0), dispatch_interval_s=0.2)
    async with await connect(dsn) as conn:
        eid = await add_event(conn, await make_warning(conn))
    sink.holding = True  # the first dispatcher's request hangs
    proc = subprocess.Popen([sys.executable, "-c", DISPATCHER_SCRIPT, dsn,
                             settings.model_dump_json()], start_new_session=True)
    try:
        await asyncio.to_thread(sink.wait_for, 1, 30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    sink.holding = False
    sink.hold.set()
    async with await connect(dsn) as conn:
        (row,) = await outbox_rows(conn, eid)
        assert row["delivered_at"] is None and row["outcome"] is None
    stop = asyncio.Event()
    task = asyncio.create_task(run_dispatcher(dsn, settings, stop))
    started = time.monotonic()
    try:
        await asyncio.to_thread(sink.wait_for, 2, 30)
        async with await connect(dsn) as conn:
            for _ in range(100):
                (row,) = await outbox_rows(conn, eid)
                if row["delivered_at"] is not None:
                    break
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert row["outcome"] == "sent"
    assert time.monotonic() - started < 20  # the lease (timeout + margin) ran out
    assert [r.headers["x-hazardwatch-event-id"] for r in sink.requests] == [str(eid)] * 2


# ---------------------------------------------------------------------------- concurrency


async def test_two_dispatchers_never_send_the_same_row_twice(dsn, sink):
    sink.delay_s = 0.005
    settings = alerting(webhook(sink.url), webhook(sink.url + "/b", name="hook-b"))
    expected: dict[int, list[int]] = {}
    async with await connect(dsn) as conn:
        for i in range(6):
            wid = await make_warning(conn, cause=f"cause_{i}")
            expected[wid] = [await add_event(conn, wid, a, ("hook", "hook-b"))
                             for a in ("raised", "level_up", "escalated", "escalated",
                                       "acknowledged", "cleared", "closed")]
    total = sum(len(v) for v in expected.values()) * 2

    async def dispatcher() -> int:
        receivers = build_all(settings.receivers)
        sent = 0
        async with await connect(dsn) as conn:
            for _ in range(500):
                got = await dispatch_once(conn, receivers, settings, batch=5)
                sent += got["sent"]
                cur = await conn.execute(
                    "SELECT count(*) FROM outbox WHERE delivered_at IS NULL")
                if (await cur.fetchone())[0] == 0:
                    return sent
                await asyncio.sleep(0.005)
        raise AssertionError("not everything delivered")

    a, b, c = await asyncio.gather(dispatcher(), dispatcher(), dispatcher())
    assert a + b + c == total
    assert a > 0 and b > 0  # both really worked
    seen = [(r.path, int(r.headers["x-hazardwatch-event-id"])) for r in sink.requests]
    assert len(seen) == len(set(seen)) == total
    # and each receiver got each warning's events in order
    for path in ("/", "/b"):
        got = [e for p, e in seen if p == path]
        for events in expected.values():
            assert [e for e in got if e in events] == events


# ---------------------------------------------------------------------------- mute


async def test_muted_when_shelved_or_suppressed(dsn, sink):
    settings = alerting(webhook(sink.url))
    receivers = build_all(settings.receivers)
    async with await connect(dsn) as conn:
        now = await db_now(conn)
        parent = await make_warning(conn, cause="data_interruption", kind="data_interruption")
        shelved = await make_warning(conn, cause="overfill", shelved_until=now + timedelta(hours=1),
                                     shelved_reason="检修", shelved_by="officer1")
        suppressed = await make_warning(conn, cause="low_level", suppressed_by=parent)
        expired = await make_warning(conn, cause="overpressure",
                                     shelved_until=now - timedelta(minutes=1))
        e_shelved = await add_event(conn, shelved, "escalated")
        e_announce = await add_event(conn, shelved, "shelved", actor="officer1")
        e_suppressed = await add_event(conn, suppressed, "raised")
        e_expired = await add_event(conn, expired, "raised")
        muted_before = counter("hook", "muted")
        got = await dispatch_once(conn, receivers, settings)
        assert got["muted"] == 2 and got["sent"] == 2
        rows = {r["event_id"]: r for r in await outbox_rows(conn)}
    for eid in (e_shelved, e_suppressed):
        assert rows[eid]["outcome"] == "muted" and rows[eid]["delivered_at"] is not None
        assert rows[eid]["attempts"] == 0
    assert "shelved" in rows[e_shelved]["last_error"]
    assert f"suppressed by warning {parent}" in rows[e_suppressed]["last_error"]
    assert rows[e_expired]["outcome"] == "sent"
    assert rows[e_announce]["outcome"] == "sent"  # the shelving itself is announced
    sent = sorted(int(r.headers["x-hazardwatch-event-id"]) for r in sink.requests)
    assert sent == sorted([e_announce, e_expired])
    assert counter("hook", "muted") - muted_before == 2


# ---------------------------------------------------------------------------- config changes


async def test_rows_of_a_removed_receiver_fail_with_a_clear_error(dsn, sink):
    settings = alerting(webhook(sink.url))
    receivers = build_all(settings.receivers)
    async with await connect(dsn) as conn:
        eid = await add_event(conn, await make_warning(conn), "raised", ("hook", "old-robot"))
        got = await dispatch_once(conn, receivers, settings)
        assert got["sent"] == 1 and got["failed"] == 1
        rows = {r["receiver"]: r for r in await outbox_rows(conn, eid)}
    assert rows["old-robot"]["outcome"] == "failed" and rows["old-robot"]["failed_at"]
    assert "'old-robot' is not configured" in rows["old-robot"]["last_error"]
    assert rows["hook"]["outcome"] == "sent"


# ---------------------------------------------------------------------------- order


async def test_a_failing_event_holds_later_events_of_the_same_warning_only(dsn, sink):
    settings = alerting(webhook(sink.url), retry_base_s=10)
    receivers = build_all(settings.receivers)
    sink.script = [(500, b"once")]
    async with await connect(dsn) as conn:
        w1 = await make_warning(conn, cause="overfill")
        w2 = await make_warning(conn, cause="low_level")
        e1 = await add_event(conn, w1, "raised")
        e2 = await add_event(conn, w1, "cleared")
        e3 = await add_event(conn, w2, "raised")
        t = await db_now(conn) + timedelta(seconds=1)
        got = await dispatch_once(conn, receivers, settings, now=t)
        # e1 failed; e2 (same warning, after it) waits; e3 is another warning's
        assert got["retried"] == 1
        got = await dispatch_once(conn, receivers, settings, now=t + timedelta(seconds=1))
        assert got["sent"] == 1 and got["claimed"] == 1
        got = await dispatch_once(conn, receivers, settings, now=t + timedelta(seconds=5))
        assert got["claimed"] == 0  # e2 still behind e1's back-off
        got = await dispatch_once(conn, receivers, settings, now=t + timedelta(seconds=10))
        assert got["sent"] == 2  # e1, then e2 right behind it in the same pass
    order = [int(r.headers["x-hazardwatch-event-id"]) for r in sink.requests]
    assert order == [e1, e3, e1, e2]


# ---------------------------------------------------------------------------- the loop


async def test_run_dispatcher_wakes_on_notify_and_survives_losing_the_database(dsn, sink):
    settings = alerting(webhook(sink.url), dispatch_interval_s=60)  # only NOTIFY wakes it
    stop = asyncio.Event()
    task = asyncio.create_task(run_dispatcher(dsn, settings, stop))
    try:
        async with await connect(dsn) as conn:
            wid = await make_warning(conn)
            await asyncio.sleep(0.5)  # the dispatcher is listening
            started = time.monotonic()
            e1 = await add_event(conn, wid, "raised")
            await asyncio.to_thread(sink.wait_for, 1, 10)
            assert time.monotonic() - started < 5
            for _ in range(100):  # recorded as delivered (else it is rightly sent again)
                if (await outbox_rows(conn, e1))[0]["delivered_at"] is not None:
                    break
                await asyncio.sleep(0.05)

            # the database drops every dispatcher connection
            others = ("FROM pg_stat_activity WHERE datname = current_database() "
                      "AND application_name = 'hazardwatch' AND pid <> pg_backend_pid()")
            old = {r[0] for r in await (await conn.execute(f"SELECT pid {others}")).fetchall()}
            assert len(old) >= 2
            await conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid",
                               (list(old),))
            for _ in range(100):  # until it has reconnected (two new sessions)
                cur = await conn.execute(f"SELECT pid {others}")
                if len({r[0] for r in await cur.fetchall()} - old) >= 2:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the dispatcher did not reconnect")
            await asyncio.sleep(0.3)  # LISTEN issued
            e2 = await add_event(conn, wid, "cleared")
            await asyncio.to_thread(sink.wait_for, 2, 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert [int(r.headers["x-hazardwatch-event-id"]) for r in sink.requests] == [e1, e2]


async def test_dispatch_once_with_a_connection_that_is_not_autocommit(dsn, sink):
    settings = alerting(webhook(sink.url))
    async with await connect(dsn) as conn:
        eid = await add_event(conn, await make_warning(conn))
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        got = await dispatch_once(conn, build_all(settings.receivers), settings)
        assert got["sent"] == 1
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        await conn.execute("SELECT 1")
        with pytest.raises(ValueError, match="inside a transaction"):
            await dispatch_once(conn, {}, settings)
    async with await connect(dsn) as conn:
        assert [r["outcome"] for r in await outbox_rows(conn, eid)] == ["sent"]
