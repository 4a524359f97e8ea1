"""Warning lifecycle on the real database: officers' actions (alerting.lifecycle), the audit
trail and outbox (alerting.events), and the engine's writer (alerting.store.apply, RulesSink)
— events and notifications commit with the change they record, or not at all."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from dbutil import fresh_database
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerting import events, lifecycle, store
from alerting.lifecycle import LifecycleError
from hazardwatch.pipeline import RulesSink
from hazardwatch.registry import import_file
from hazardwatch.settings import ReceiverSettings
from rules.engine import Changes, Engine, SensorRow
from rules.packs import load_packs

DATA = Path(__file__).parent / "data"
NOW = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)

EVERYTHING = ["raised", "reactivated", "level_up", "cleared", "alarm_raised", "alarm_cleared",
              "acknowledged", "commented", "disposed", "closed", "shelved", "unshelved"]
ALL = ReceiverSettings(name="all", type="webhook", url="http://all.test", actions=EVERYTHING)
RED = ReceiverSettings(name="red", type="webhook", url="http://red.test", min_level="red")
OPS = ReceiverSettings(name="ops", type="webhook", url="http://ops.test", min_level="yellow",
                       actions=["acknowledged", "closed", "raised"])
RECEIVERS = [ALL, RED, OPS]


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database("hw_lifecycle") as url:
        import_file(url, DATA / "registry_e2e.yaml")
        yield url


async def connect(dsn: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def make_warning(conn, *, cause: str = "overfill", level: int = 3, site: str = "T1",
                       kind: str = "process", **columns: Any) -> int:
    cur = await conn.execute("SELECT id FROM sites WHERE code = %s", (site,))
    (site_id,) = await cur.fetchone()
    values: dict[str, Any] = {"site_id": site_id, "cause": cause, "kind": kind, "level": level,
                              "opened_at": NOW - timedelta(minutes=5),
                              "raised_at": NOW - timedelta(minutes=5), "detail": Jsonb({})}
    values.update(columns)
    cur = await conn.execute(
        f"INSERT INTO warnings ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))}) "
        "RETURNING id", list(values.values()))
    return (await cur.fetchone())[0]


async def row(conn, warning_id: int) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM warnings WHERE id = %s", (warning_id,))
        return await cur.fetchone()


async def trail(conn, warning_id: int | None = None) -> list[tuple]:
    """(actor, action, level, detail, receivers) per event, in order."""
    cur = await conn.execute(
        "SELECT e.actor, e.action, e.level, e.detail, "
        "  coalesce((SELECT array_agg(o.receiver ORDER BY o.receiver) FROM outbox o "
        "            WHERE o.event_id = e.id), '{}') "
        "FROM warning_events e WHERE %(w)s::bigint IS NULL OR e.warning_id = %(w)s ORDER BY e.id",
        {"w": warning_id})
    return [tuple(r) for r in await cur.fetchall()]


async def counts(conn) -> tuple[int, int]:
    cur = await conn.execute("SELECT (SELECT count(*) FROM warning_events), (SELECT count(*) FROM outbox)")
    return tuple(await cur.fetchone())


async def engine_clears(conn, warning_id: int) -> None:
    """What the engine writes when the condition clears."""
    await conn.execute("UPDATE warnings SET active = false, cleared_at = %s WHERE id = %s",
                       (NOW, warning_id))


# ---- lifecycle: the legal paths ---------------------------------------------------------------

async def test_active_unack_to_closed_through_every_state(dsn):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, level=3)
        out = await lifecycle.acknowledge(conn, wid, "zhang", "on my way", receivers=RECEIVERS,
                                          now=NOW)
        assert out["state"] == "active_ack" and out["acknowledged_by"] == "zhang"
        assert out["acknowledged_at"] == NOW and out["updated_at"] == NOW
        assert out["event"]["action"] == "acknowledged" and out["event"]["warning_id"] == wid
        assert out["event"]["detail"] == {"note": "on my way"} and out["event"]["level"] == 3

        out = await lifecycle.comment(conn, wid, "li", "  valve closed by hand  ",
                                      receivers=RECEIVERS, now=NOW + timedelta(seconds=1))
        assert out["event"]["detail"] == {"text": "valve closed by hand"}
        assert out["updated_at"] == NOW                       # a remark changes nothing

        out = await lifecycle.dispose(conn, wid, "li", "tank drained to 12 m",
                                      receivers=RECEIVERS, now=NOW + timedelta(seconds=2))
        assert out["disposal"] == "tank drained to 12 m" and out["disposed_by"] == "li"
        assert out["disposed_at"] == NOW + timedelta(seconds=2)
        out = await lifecycle.dispose(conn, wid, "wang", "level normal, pump checked",
                                      receivers=RECEIVERS, now=NOW + timedelta(seconds=3))
        assert out["disposal"] == "level normal, pump checked" and out["disposed_by"] == "wang"
        assert out["disposed_at"] == NOW + timedelta(seconds=2)   # first report kept

        await engine_clears(conn, wid)
        assert (await row(conn, wid))["state"] == "cleared"
        out = await lifecycle.close(conn, wid, "zhang", receivers=RECEIVERS,
                                    now=NOW + timedelta(seconds=4))
        assert out["state"] == "closed" and out["closed_by"] == "zhang"
        assert out["closing_note"] == "level normal, pump checked"   # the disposal on record
        assert out["closed_at"] == NOW + timedelta(seconds=4)

        assert await trail(conn, wid) == [
            ("zhang", "acknowledged", 3, {"note": "on my way"}, ["all", "ops"]),
            ("li", "commented", 3, {"text": "valve closed by hand"}, ["all"]),
            ("li", "disposed", 3, {"note": "tank drained to 12 m"}, ["all"]),
            ("wang", "disposed", 3, {"note": "level normal, pump checked"}, ["all"]),
            ("zhang", "closed", 3, {"note": "level normal, pump checked"}, ["all", "ops"]),
        ]
        cur = await conn.execute("SELECT at FROM warning_events WHERE warning_id = %s ORDER BY id", (wid,))
        assert [r[0] for r in await cur.fetchall()] == [NOW + timedelta(seconds=s) for s in range(5)]


async def test_cleared_unack_is_acknowledged_to_cleared_and_closed_with_a_note(dsn):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, level=4, active=False, cleared_at=NOW)
        assert (await row(conn, wid))["state"] == "cleared_unack"
        out = await lifecycle.acknowledge(conn, wid, "zhang", "", receivers=RECEIVERS, now=NOW)
        assert out["state"] == "cleared" and out["event"]["detail"] == {}   # blank note: none
        out = await lifecycle.close(conn, wid, "zhang", "false alarm: level gauge recalibrated",
                                    receivers=RECEIVERS, now=NOW)
        assert out["state"] == "closed"
        assert out["closing_note"] == "false alarm: level gauge recalibrated"
        assert out["disposal"] is None
        # red: the red receiver wants `closed` (a default action), not `acknowledged`
        assert [(a, r) for _, a, _, _, r in await trail(conn, wid)] == [
            ("acknowledged", ["all", "ops"]), ("closed", ["all", "ops", "red"])]


async def test_shelve_and_unshelve(dsn):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, level=2)
        until = NOW + timedelta(hours=8)
        out = await lifecycle.shelve(conn, wid, "zhang", "instrument maintenance", until,
                                     7 * 24 * 3600, receivers=RECEIVERS, now=NOW)
        assert out["shelved_until"] == until and out["shelved_reason"] == "instrument maintenance"
        assert out["shelved_by"] == "zhang" and out["state"] == "active_unack"
        assert out["event"]["detail"] == {"reason": "instrument maintenance",
                                          "until": "2027-01-15T16:00:00+00:00"}
        later = NOW + timedelta(days=2)    # shelving again replaces reason and expiry
        out = await lifecycle.shelve(conn, wid, "li", "still in maintenance", later, 7 * 24 * 3600,
                                     receivers=RECEIVERS, now=NOW + timedelta(hours=1))
        assert out["shelved_until"] == later and out["shelved_by"] == "li"
        out = await lifecycle.unshelve(conn, wid, "zhang", receivers=RECEIVERS,
                                       now=NOW + timedelta(hours=2))
        assert out["shelved_until"] is None and out["shelved_reason"] is None
        assert out["shelved_by"] is None
        assert [a for _, a, _, _, _ in await trail(conn, wid)] == ["shelved", "shelved", "unshelved"]


# ---- lifecycle: refused -------------------------------------------------------------------------

async def refused(coro) -> LifecycleError:
    with pytest.raises(LifecycleError) as info:
        await coro
    return info.value


async def test_illegal_transitions_are_refused_with_409_and_a_reason(dsn):
    kw = {"receivers": RECEIVERS, "now": NOW}
    async with await connect(dsn) as conn:
        active = await make_warning(conn, cause="a")
        e = await refused(lifecycle.close(conn, active, "zhang", "done", **kw))
        assert (e.status, e.message) == (409, "cannot close: the condition is still active")
        await lifecycle.acknowledge(conn, active, "zhang", **kw)
        e = await refused(lifecycle.acknowledge(conn, active, "li", **kw))
        assert e.status == 409 and "already acknowledged by zhang" in e.message
        e = await refused(lifecycle.close(conn, active, "zhang", "done", **kw))
        assert (e.status, e.message) == (409, "cannot close: the condition is still active")

        unacked = await make_warning(conn, cause="b", active=False, cleared_at=NOW)
        e = await refused(lifecycle.close(conn, unacked, "zhang", "done", **kw))
        assert (e.status, e.message) == (409, "cannot close: the warning has not been acknowledged")

        undisposed = await make_warning(conn, cause="c", active=False, cleared_at=NOW,
                                        acknowledged=True)
        e = await refused(lifecycle.close(conn, undisposed, "zhang", **kw))
        assert e.status == 409 and "no disposal has been reported" in e.message
        e = await refused(lifecycle.close(conn, undisposed, "zhang", "   ", **kw))
        assert e.status == 409

        closed = await make_warning(conn, cause="d", active=False, cleared_at=NOW,
                                    acknowledged=True, closed_at=NOW, closing_note="x")
        for action, args in ((lifecycle.acknowledge, ()), (lifecycle.comment, ("hello",)),
                             (lifecycle.dispose, ("note",)), (lifecycle.close, ("note",)),
                             (lifecycle.shelve, ("r", NOW + timedelta(hours=1), 86400)),
                             (lifecycle.unshelve, ())):
            e = await refused(action(conn, closed, "zhang", *args, **kw))
            assert e.status == 409 and e.message.endswith("the warning is closed"), action

        e = await refused(lifecycle.unshelve(conn, undisposed, "zhang", **kw))
        assert (e.status, e.message) == (409, "cannot unshelve: the warning is not shelved")
        expired = await make_warning(conn, cause="e", shelved_until=NOW, shelved_reason="r")
        e = await refused(lifecycle.unshelve(conn, expired, "zhang", **kw))
        assert e.status == 409                        # expiry is the ticker's to record

        assert await trail(conn, closed) == [] and await trail(conn, undisposed) == []
        assert len(await trail(conn)) == 1            # only the one acknowledgement


async def test_no_such_warning_is_404_for_every_action(dsn):
    kw = {"receivers": RECEIVERS, "now": NOW}
    async with await connect(dsn) as conn:
        for action, args in ((lifecycle.acknowledge, ()), (lifecycle.comment, ("hello",)),
                             (lifecycle.dispose, ("note",)), (lifecycle.close, ("note",)),
                             (lifecycle.shelve, ("r", NOW + timedelta(hours=1), 86400)),
                             (lifecycle.unshelve, ())):
            e = await refused(action(conn, 424242, "zhang", *args, **kw))
            assert (e.status, e.message) == (404, "no warning 424242"), action


async def test_bad_input_is_422(dsn):
    kw = {"receivers": RECEIVERS, "now": NOW}
    async with await connect(dsn) as conn:
        wid = await make_warning(conn)
        cases = [
            (lifecycle.comment(conn, wid, "zhang", "  ", **kw), "comment must not be empty"),
            (lifecycle.comment(conn, wid, "zhang", "x" * 4001, **kw), "comment is too long"),
            (lifecycle.dispose(conn, wid, "zhang", "", **kw), "note must not be empty"),
            (lifecycle.shelve(conn, wid, "zhang", " ", NOW + timedelta(hours=1), 86400, **kw),
             "reason must not be empty"),
            (lifecycle.shelve(conn, wid, "zhang", "r", NOW - timedelta(seconds=1), 86400, **kw),
             "until must be in the future"),
            (lifecycle.shelve(conn, wid, "zhang", "r", NOW, 86400, **kw),
             "until must be in the future"),
            (lifecycle.shelve(conn, wid, "zhang", "r", NOW + timedelta(days=1, seconds=1), 86400,
                              **kw), "cannot shelve for longer than 1 d"),
            (lifecycle.shelve(conn, wid, "zhang", "r", datetime(2027, 1, 15, 9, 0), 86400, **kw),
             "until must carry a time zone (RFC 3339)"),
            (lifecycle.acknowledge(conn, wid, "  ", **kw), "actor must not be empty"),
        ]
        for coro, message in cases:
            e = await refused(coro)
            assert e.status == 422 and e.message.startswith(message), (e, message)
        # exactly max_shelve_s ahead is allowed
        await lifecycle.shelve(conn, wid, "zhang", "r", NOW + timedelta(days=1), 86400, **kw)
        assert [a for _, a, _, _, _ in await trail(conn)] == ["shelved"]


async def test_concurrent_acknowledgements_one_wins(dsn):
    async with await connect(dsn) as a, await connect(dsn) as b:
        wid = await make_warning(a)
        results = await asyncio.gather(
            lifecycle.acknowledge(a, wid, "zhang", receivers=RECEIVERS, now=NOW),
            lifecycle.acknowledge(b, wid, "li", receivers=RECEIVERS, now=NOW),
            return_exceptions=True)
        ok = [r for r in results if isinstance(r, dict)]
        errors = [r for r in results if isinstance(r, LifecycleError)]
        assert len(ok) == 1 and len(errors) == 1 and errors[0].status == 409
        assert [a for _, a, _, _, _ in await trail(a, wid)] == ["acknowledged"]


# ---- the audit trail is append-only, and atomic with the change ---------------------------------

async def test_warning_events_refuse_update_delete_truncate(dsn):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn)
        await lifecycle.comment(conn, wid, "zhang", "hello", receivers=[], now=NOW)
        for statement in ("UPDATE warning_events SET actor = 'mallory'",
                          "DELETE FROM warning_events",
                          "TRUNCATE warning_events CASCADE"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                await conn.execute(statement)
        assert await trail(conn) == [("zhang", "commented", 3, {"text": "hello"}, [])]


async def test_a_rolled_back_transaction_leaves_neither_change_nor_event_nor_outbox(dsn):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn)

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            async with conn.transaction():
                out = await lifecycle.acknowledge(conn, wid, "zhang", receivers=RECEIVERS, now=NOW)
                assert out["acknowledged"]
                assert await counts(conn) == (1, 2)   # visible inside the transaction
                raise Boom
        assert await counts(conn) == (0, 0)
        assert (await row(conn, wid))["state"] == "active_unack"


async def test_a_failing_event_write_undoes_the_state_change(dsn, monkeypatch):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn)
        real = events.record_many

        async def record_then_fail(cur, evs, receivers):
            await real(cur, evs, receivers)
            raise psycopg.errors.DiskFull("disk full")

        monkeypatch.setattr(events, "record_many", record_then_fail)
        with pytest.raises(psycopg.errors.DiskFull):
            await lifecycle.dispose(conn, wid, "zhang", "drained", receivers=RECEIVERS, now=NOW)
        assert await counts(conn) == (0, 0)
        assert (await row(conn, wid))["disposal"] is None


async def test_record_routes_by_min_level_and_actions(dsn):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn)
        async with conn.transaction():
            ids = await events.record_many(conn, [
                events.Event(wid, "system", "raised", 1, {}),
                events.Event(wid, "system", "raised", 2, {}),
                events.Event(wid, "system", "raised", 4, {"n": np.float64(1.5)}),
                events.Event(wid, "system", "alarm_raised", 4, {"sensor_id": 1}),
                events.Event(wid, "zhang", "commented", 4, {"text": "x"}),
                events.Event(wid, "system", "level_up", None, {}),
            ], RECEIVERS + [ALL])                      # a receiver listed twice: one row
        assert ids == sorted(ids) and len(ids) == 6
        assert [(a, lvl, r) for _, a, lvl, _, r in await trail(conn, wid)] == [
            ("raised", 1, ["all"]), ("raised", 2, ["all", "ops"]),
            ("raised", 4, ["all", "ops", "red"]), ("alarm_raised", 4, ["all"]),
            ("commented", 4, ["all"]), ("level_up", None, [])]
        assert events.matches(OPS, "raised", 2) and not events.matches(OPS, "raised", 1)
        assert not events.matches(OPS, "cleared", 4)


# ---- the engine's writer ------------------------------------------------------------------------

T0 = 1_800_000_000.0


async def registry_rows(conn) -> list[SensorRow]:
    from hazardwatch.pipeline import load_sensor_rows

    return await load_sensor_rows(conn)


async def site_of(conn, code: str) -> int:
    cur = await conn.execute("SELECT id FROM sites WHERE code = %s", (code,))
    return (await cur.fetchone())[0]


async def sensor_id(conn, tag: str) -> int:
    cur = await conn.execute("SELECT id FROM sensors WHERE tag = %s", (tag,))
    return (await cur.fetchone())[0]


def feed(engine: Engine, sid: int, points: list[tuple[float, float]], rx: float | None = None
         ) -> Changes:
    ts = np.array([T0 + t for t, _ in points])
    return engine.readings(np.full(len(points), sid, dtype=np.int64), ts,
                           np.array([v for _, v in points]), np.zeros(len(points), dtype=np.int16),
                           T0 + points[-1][0] if rx is None else rx)


async def test_engine_events_are_written_with_routed_outbox_rows(dsn):
    receivers = [ALL, OPS, ReceiverSettings(name="orange", type="webhook", url="http://o.test",
                                            min_level="orange", actions=["raised", "level_up"])]
    async with await connect(dsn) as conn:
        engine = Engine(load_packs())
        engine.load(await registry_rows(conn))
        lt = await sensor_id(conn, "TK1.LT")
        changes = feed(engine, lt, [(0, 16.5), (10, 16.6)])     # over H for the on-delay
        assert [a for _, a, _ in changes.events] == ["raised", "alarm_raised"]
        async with conn.transaction():
            assert await store.apply(conn, changes, receivers) == []
        (ep,) = engine.episodes.values()
        assert await trail(conn, ep.id) == [
            ("system", "raised", 2, {}, ["all", "ops"]),
            ("system", "alarm_raised", 2, {"condition": "h", "sensor_id": lt, "value": 16.6}, ["all"]),
        ]
        changes = feed(engine, lt, [(20, 18.5), (30, 18.6)])    # HH: orange on a grade-2 site
        async with conn.transaction():
            await store.apply(conn, changes, receivers)
        actions = [(a, lvl, d, r) for _, a, lvl, d, r in await trail(conn, ep.id)][2:]
        assert actions == [
            ("alarm_raised", 3, {"condition": "hh", "sensor_id": lt, "value": 18.6}, ["all"]),
            ("level_up", 3, {"from": 2, "to": 3}, ["all", "orange"]),
        ]
        changes = feed(engine, lt, [(t, 10.0) for t in range(40, 120, 10)])
        async with conn.transaction():
            await store.apply(conn, changes, receivers)
        tail = [a for _, a, _, _, _ in await trail(conn, ep.id)][4:]
        assert sorted(tail[:2]) == ["alarm_cleared", "alarm_cleared"] and tail[2:] == ["cleared"]
        w = await row(conn, ep.id)
        assert w["state"] == "cleared_unack" and w["level"] == 3 and w["count"] == 1


async def test_gateway_alarm_events_carry_the_gateway(dsn):
    async with await connect(dsn) as conn:
        engine = Engine(load_packs())
        engine.load(await registry_rows(conn))
        cur = await conn.execute("SELECT id FROM gateways WHERE code = 'gw-e2e'")
        (gid,) = await cur.fetchone()
        changes = engine.gateway_state(gid, False, T0, T0)
        async with conn.transaction():
            await store.apply(conn, changes, [ALL])
        rows = await trail(conn)
        assert rows[0][1] == "raised"
        assert rows[1][1:4] == ("alarm_raised", 2, {"condition": "offline", "gateway_id": gid})


async def test_a_retried_write_records_each_engine_event_once(dsn):
    async with await connect(dsn) as conn:
        engine = Engine(load_packs())
        engine.load(await registry_rows(conn))
        lt = await sensor_id(conn, "TK1.LT")
        changes = feed(engine, lt, [(0, 16.5), (10, 16.6)])

        class Lost(Exception):
            pass

        with pytest.raises(Lost):                     # the first attempt fails after writing
            async with conn.transaction():
                await store.apply(conn, changes, RECEIVERS)
                raise Lost
        (ep,) = engine.episodes.values()
        first_id = ep.id
        async with conn.transaction():                # the collector retries the same Changes
            await store.apply(conn, changes, RECEIVERS)
        assert ep.id == first_id
        assert [a for _, a, _, _, _ in await trail(conn)] == ["raised", "alarm_raised"]
        cur = await conn.execute("SELECT id, count FROM warnings")
        assert await cur.fetchall() == [(first_id, 1)]


async def test_one_batch_that_clears_a_condition_and_raises_it_again_is_written(dsn):
    """A backlog of one sensor's readings in one batch (a gateway catching up, a fast
    replay): H clears and is raised again. The cleared alarm row is written before the new
    one, so the one-active-alarm index takes the batch instead of refusing it."""
    async with await connect(dsn) as conn:
        engine = Engine(load_packs())
        engine.load(await registry_rows(conn))
        lt = await sensor_id(conn, "TK1.LT")
        async with conn.transaction():
            await store.apply(conn, feed(engine, lt, [(0, 16.5), (10, 16.6)]), RECEIVERS)
        # under H for longer than the off-delay, then over H for the on-delay: one batch
        changes = feed(engine, lt, [(t, 15.0) for t in range(20, 100, 10)] + [(100, 16.5), (110, 16.6)])
        assert "h" in {str(a.cond) for a in changes.cleared} & {str(a.cond) for a in changes.raised}
        async with conn.transaction():
            await store.apply(conn, changes, RECEIVERS)
        cur = await conn.execute("SELECT active FROM alarms WHERE condition = 'h' ORDER BY id")
        assert await cur.fetchall() == [(False,), (True,)]


async def close_it(conn, warning_id: int) -> None:
    kw = {"receivers": RECEIVERS}
    await lifecycle.acknowledge(conn, warning_id, "zhang", **kw)
    await lifecycle.close(conn, warning_id, "zhang", "drained and checked", **kw)


async def test_a_closed_warning_is_forgotten_and_the_next_condition_opens_a_new_one(dsn):
    async with await connect(dsn) as conn:
        sink = RulesSink(replay_s=0, receivers=RECEIVERS, closed_poll_s=0)
        await sink.start(conn)
        lt = await sensor_id(conn, "TK1.LT")

        async def write(changes: Changes) -> None:
            async with conn.transaction():
                await sink.write(conn, changes)

        await write(feed(sink.engine, lt, [(0, 16.5), (10, 16.6)]))
        # (the sudden fall back to normal also raises low_level's rate_fall: not looked at here)
        await write(feed(sink.engine, lt, [(t, 15.0) for t in range(20, 80, 10)]))
        key = (await site_of(conn, "T1"), "overfill")
        ep = sink.engine.episodes[key]
        old = ep.id
        assert not ep.active
        await close_it(conn, old)
        await write(Changes())                        # any write polls for closings first
        assert key not in sink.engine.episodes
        changes = feed(sink.engine, lt, [(100, 16.5), (110, 16.6)])
        await write(changes)
        ep = sink.engine.episodes[key]
        assert ep.id != old
        cur = await conn.execute("SELECT id, state, count FROM warnings WHERE cause = 'overfill' "
                                 "ORDER BY id")
        assert await cur.fetchall() == [(old, "closed", 1), (ep.id, "active_unack", 1)]
        assert [a for _, a, _, _, _ in await trail(conn, ep.id)] == ["raised", "alarm_raised"]


async def test_a_warning_closed_under_the_engine_is_rehomed_not_written(dsn):
    """The race: the engine reactivates an episode whose warning an officer closed after the
    engine last heard — the closed row is left alone, a new warning takes the episode."""
    async with await connect(dsn) as conn:
        sink = RulesSink(replay_s=0, receivers=RECEIVERS, closed_poll_s=3600)
        await sink.start(conn)
        await sink.forget_closed(conn)                # the poll is not due for an hour now
        lt = await sensor_id(conn, "TK1.LT")

        async def write(changes: Changes) -> None:
            async with conn.transaction():
                await sink.write(conn, changes)

        await write(feed(sink.engine, lt, [(0, 16.5), (10, 16.6)]))
        await write(feed(sink.engine, lt, [(t, 15.0) for t in range(20, 80, 10)]))
        key = (await site_of(conn, "T1"), "overfill")
        ep = sink.engine.episodes[key]
        old = ep.id
        await close_it(conn, old)
        before = await row(conn, old)

        changes = feed(sink.engine, lt, [(100, 18.5), (110, 18.6)])   # the engine still holds it
        assert [a for e, a, _ in changes.events if e is ep][:1] == ["reactivated"] and ep.count == 2

        class Lost(Exception):
            pass

        with pytest.raises(Lost):                     # the first attempt fails: no trace
            async with conn.transaction():
                assert [o for o, _ in await store.apply(conn, changes, RECEIVERS)] == [old]
                raise Lost
        new = ep.id
        assert new != old and ep.count == 1
        async with conn.transaction():                # the retry re-inserts it once
            assert await store.apply(conn, changes, RECEIVERS) == []
        assert ep.id == new and sink.engine.episodes[(ep.site_id, "overfill")] is ep

        assert await row(conn, old) == before         # the closed warning is untouched
        w = await row(conn, new)
        assert (w["state"], w["count"], w["level"], w["site_id"], w["cause"]) == (
            "active_unack", 1, 3, before["site_id"], "overfill")
        assert w["opened_at"] == datetime.fromtimestamp(T0 + 110, UTC)   # the alarms' raise
        assert w["peak_value"] == 18.6
        assert [(a, d) for _, a, _, d, _ in await trail(conn, new)][:1] == [
            ("raised", {"replaces": old})]
        assert sorted(a for _, a, _, _, _ in await trail(conn, new)) == [
            "alarm_raised", "alarm_raised", "raised"]
        cur = await conn.execute("SELECT count(*) FROM alarms WHERE warning_id = %s AND active", (new,))
        assert (await cur.fetchone())[0] == 2          # h and hh, in the new warning
        actions = [a for _, a, _, _, _ in await trail(conn, old)]
        assert actions[-1] == "closed"                # nothing written after the closing

        # later writes go to the new warning, and clearing it works as usual
        await write(feed(sink.engine, lt, [(t, 15.0) for t in range(120, 200, 10)]))
        assert (await row(conn, new))["state"] == "cleared_unack"
