"""The escalation ticker with an injected clock: 提示 → 警示 → 督办 at the per-level
deadlines, never early, never twice, never backwards; shelving expiry; suppression of
sensor faults under a data interruption; the long-running loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dbutil import fresh_database
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerting import lifecycle
from alerting.escalation import escalate, run_escalation
from hazardwatch.registry import import_file
from hazardwatch.settings import AlertingSettings, EscalationSettings, ReceiverSettings

DATA = Path(__file__).parent / "data"
R = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)         # raised_at of the test warnings
US = timedelta(microseconds=1)
ACK = {"red": 300, "orange": 900, "yellow": 3600, "blue": 4 * 3600}
DISPOSE = {"red": 3600, "orange": 4 * 3600, "yellow": 24 * 3600, "blue": 72 * 3600}
LEVEL = {"blue": 1, "yellow": 2, "orange": 3, "red": 4}
ESC = ReceiverSettings(name="esc", type="webhook", url="http://esc.test", min_level="orange",
                       actions=["escalated", "unshelved", "suppressed", "unsuppressed"])
SETTINGS = AlertingSettings(escalation=EscalationSettings(ack_s=ACK, dispose_s=DISPOSE),
                            receivers=[ESC])


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database("hw_escalation") as url:
        import_file(url, DATA / "registry_e2e.yaml")
        yield url


async def connect(dsn: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def make_warning(conn, *, cause: str, level: int = 4, site: str = "T1",
                       kind: str = "process", **columns: Any) -> int:
    cur = await conn.execute("SELECT id FROM sites WHERE code = %s", (site,))
    (site_id,) = await cur.fetchone()
    values: dict[str, Any] = {"site_id": site_id, "cause": cause, "kind": kind, "level": level,
                              "opened_at": R, "raised_at": R, "detail": Jsonb({})}
    values.update(columns)
    cur = await conn.execute(
        f"INSERT INTO warnings ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))}) "
        "RETURNING id", list(values.values()))
    return (await cur.fetchone())[0]


async def row(conn, warning_id: int) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM warnings WHERE id = %s", (warning_id,))
        return await cur.fetchone()


async def trail(conn, warning_id: int) -> list[tuple]:
    """(actor, action, detail, at, receivers) per event."""
    cur = await conn.execute(
        "SELECT e.actor, e.action, e.detail, e.at, "
        "  coalesce((SELECT array_agg(o.receiver) FROM outbox o WHERE o.event_id = e.id), '{}') "
        "FROM warning_events e WHERE e.warning_id = %s ORDER BY e.id", (warning_id,))
    return [tuple(r) for r in await cur.fetchall()]


def steps(events: list[tuple]) -> list[tuple[str, float]]:
    return [(d["step"], d["overdue_s"]) for _, a, d, _, _ in events if a == "escalated"]


@pytest.mark.parametrize("name", list(LEVEL))
async def test_each_level_escalates_exactly_at_its_deadlines_not_before(dsn, name):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, cause="x", level=LEVEL[name])
        ack_due = R + timedelta(seconds=ACK[name])
        dispose_due = R + timedelta(seconds=DISPOSE[name])
        assert await escalate(conn, SETTINGS, ack_due - US) == []
        assert (await row(conn, wid))["escalation"] == 0
        assert await escalate(conn, SETTINGS, ack_due) == [wid]
        w = await row(conn, wid)
        assert (w["escalation"], w["escalated_at"]) == (1, ack_due)
        assert steps(await trail(conn, wid)) == [("警示", 0.0)]
        assert await escalate(conn, SETTINGS, dispose_due - US) == []
        assert await escalate(conn, SETTINGS, dispose_due) == [wid]
        w = await row(conn, wid)
        assert (w["escalation"], w["escalated_at"]) == (2, dispose_due)
        assert steps(await trail(conn, wid)) == [("警示", 0.0), ("督办", 0.0)]
        # the top of the ladder: nothing more, ever
        assert await escalate(conn, SETTINGS, R + timedelta(days=365)) == []
        events = await trail(conn, wid)
        assert len(events) == 2 and all(e[0] == "system" for e in events)
        assert [e[3] for e in events] == [ack_due, dispose_due]
        # routed: the esc receiver wants orange and above
        assert all(e[4] == (["esc"] if LEVEL[name] >= 3 else []) for e in events)


async def test_the_ladder_never_fires_twice_nor_goes_backwards(dsn):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, cause="x", level=4)
        t = R + timedelta(seconds=400)
        assert await escalate(conn, SETTINGS, t) == [wid]
        for later in (t, t + timedelta(seconds=1), t + timedelta(seconds=100)):
            assert await escalate(conn, SETTINGS, later) == []
        # an acknowledgement after the step does not bring it back down
        await lifecycle.acknowledge(conn, wid, "zhang", receivers=[], now=t + timedelta(seconds=200))
        assert (await row(conn, wid))["escalation"] == 1
        # an earlier clock (a ticker on another host, say) does not undo anything either
        assert await escalate(conn, SETTINGS, R) == []
        assert (await row(conn, wid))["escalation"] == 1
        assert steps(await trail(conn, wid)) == [("警示", 100.0)]


async def test_a_late_pass_records_both_steps_in_order(dsn):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, cause="x", level=4)
        now = R + timedelta(seconds=3700)
        assert await escalate(conn, SETTINGS, now) == [wid]
        assert steps(await trail(conn, wid)) == [("警示", 3400.0), ("督办", 100.0)]
        assert (await row(conn, wid))["escalation"] == 2


async def test_acknowledged_in_time_but_not_disposed_goes_to_督办(dsn):
    async with await connect(dsn) as conn:
        acked = await make_warning(conn, cause="acked", level=4, acknowledged=True,
                                   acknowledged_at=R + timedelta(seconds=60))
        disposed = await make_warning(conn, cause="disposed", level=4, acknowledged=True,
                                      disposed_at=R + timedelta(seconds=120), disposal="done")
        assert await escalate(conn, SETTINGS, R + timedelta(seconds=3599)) == []
        assert await escalate(conn, SETTINGS, R + timedelta(seconds=3600)) == [acked]
        assert steps(await trail(conn, acked)) == [("督办", 0.0)]
        assert (await row(conn, disposed))["escalation"] == 0


async def test_a_level_rise_uses_the_new_level_deadlines(dsn):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, cause="x", level=1)           # blue: 4 h to acknowledge
        assert await escalate(conn, SETTINGS, R + timedelta(seconds=600)) == []
        await conn.execute("UPDATE warnings SET level = 4 WHERE id = %s", (wid,))  # red: 5 min
        assert await escalate(conn, SETTINGS, R + timedelta(seconds=600)) == [wid]
        assert steps(await trail(conn, wid)) == [("警示", 300.0)]


async def test_closed_shelved_and_suppressed_warnings_do_not_escalate(dsn):
    async with await connect(dsn) as conn:
        late = R + timedelta(days=30)
        await make_warning(conn, cause="closed", active=False, acknowledged=True,
                           closed_at=R + timedelta(seconds=10), closing_note="x")
        shelved = await make_warning(conn, cause="shelved", shelved_until=late + US,
                                     shelved_reason="maintenance", shelved_by="zhang")
        parent = await make_warning(conn, cause="other", level=2)
        child = await make_warning(conn, cause="child", suppressed_by=parent)
        assert await escalate(conn, SETTINGS, late) == [parent]
        for wid in (shelved, child):
            assert (await row(conn, wid))["escalation"] == 0
            assert await trail(conn, wid) == []


async def test_shelving_expires_on_time_and_the_warning_escalates_again(dsn):
    async with await connect(dsn) as conn:
        until = R + timedelta(hours=2)
        wid = await make_warning(conn, cause="x", level=4)
        await lifecycle.shelve(conn, wid, "zhang", "maintenance", until, 86400, receivers=[],
                               now=R + timedelta(seconds=60))
        assert await escalate(conn, SETTINGS, until - US) == []
        w = await row(conn, wid)
        assert w["shelved_until"] == until and w["escalation"] == 0
        assert await escalate(conn, SETTINGS, until) == [wid]   # expired, then overdue at once
        w = await row(conn, wid)
        assert (w["shelved_until"], w["shelved_reason"], w["shelved_by"]) == (None, None, None)
        events = await trail(conn, wid)
        assert [(actor, action) for actor, action, _, _, _ in events] == [
            ("zhang", "shelved"), ("system", "unshelved"), ("system", "escalated"),
            ("system", "escalated")]
        assert events[1][2] == {"expired": True, "until": "2027-01-15T10:00:00+00:00",
                                "shelved_by": "zhang", "reason": "maintenance"}
        assert events[1][3] == until and events[1][4] == ["esc"]
        assert await escalate(conn, SETTINGS, until + timedelta(hours=1)) == []
        assert len(await trail(conn, wid)) == 4                 # expiry recorded once


async def test_sensor_faults_are_suppressed_under_a_data_interruption_and_released(dsn):
    async with await connect(dsn) as conn:
        fault = await make_warning(conn, cause="sensor_fault", kind="sensor_fault", level=3)
        other_site = await make_warning(conn, cause="sensor_fault", kind="sensor_fault", level=3,
                                        site="T9")
        process = await make_warning(conn, cause="overfill", level=3)
        t = R + timedelta(seconds=10)
        assert await escalate(conn, SETTINGS, t) == []
        assert (await row(conn, fault))["suppressed_by"] is None     # no parent yet

        parent = await make_warning(conn, cause="data_interruption", kind="data_interruption",
                                    level=2)
        assert await escalate(conn, SETTINGS, t) == []
        assert (await row(conn, fault))["suppressed_by"] == parent
        assert (await row(conn, other_site))["suppressed_by"] is None  # another site
        assert (await row(conn, process))["suppressed_by"] is None     # process danger: never
        assert [(a, d, r) for _, a, d, _, r in await trail(conn, fault)] == [
            ("suppressed", {"parent": parent, "parent_cause": "data_interruption"}, ["esc"])]
        # suppressed: no escalation however late, and no second `suppressed`
        late = R + timedelta(hours=5)
        assert set(await escalate(conn, SETTINGS, late)) == {other_site, process, parent}
        assert (await row(conn, fault))["escalation"] == 0
        assert len(await trail(conn, fault)) == 1

        await conn.execute("UPDATE warnings SET active = false WHERE id = %s", (parent,))
        assert await escalate(conn, SETTINGS, late) == [fault]      # released, then overdue
        assert (await row(conn, fault))["suppressed_by"] is None
        assert [a for _, a, _, _, _ in await trail(conn, fault)] == [
            "suppressed", "unsuppressed", "escalated", "escalated"]
        assert (await trail(conn, fault))[1][2] == {"parent": parent}


async def test_a_closed_parent_releases_too(dsn):
    async with await connect(dsn) as conn:
        parent = await make_warning(conn, cause="data_interruption", kind="data_interruption")
        fault = await make_warning(conn, cause="sensor_fault", kind="sensor_fault")
        await escalate(conn, SETTINGS, R)
        assert (await row(conn, fault))["suppressed_by"] == parent
        await conn.execute("UPDATE warnings SET active = false, acknowledged = true, "
                           "closed_at = %s, closing_note = 'x' WHERE id = %s", (R, parent))
        await escalate(conn, SETTINGS, R)
        assert (await row(conn, fault))["suppressed_by"] is None
        assert [a for _, a, _, _, _ in await trail(conn, fault)] == ["suppressed", "unsuppressed"]


async def test_a_warning_locked_by_an_officer_is_left_for_the_next_pass(dsn):
    async with await connect(dsn) as conn, await connect(dsn) as officer:
        wid = await make_warning(conn, cause="x", level=4)
        t = R + timedelta(seconds=300)
        async with officer.transaction():
            await officer.execute("SELECT 1 FROM warnings WHERE id = %s FOR UPDATE", (wid,))
            assert await asyncio.wait_for(escalate(conn, SETTINGS, t), 5) == []   # no waiting
        assert await escalate(conn, SETTINGS, t) == [wid]


async def test_escalated_events_and_the_step_commit_together(dsn):
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, cause="x", level=4)

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            async with conn.transaction():
                assert await escalate(conn, SETTINGS, R + timedelta(seconds=300)) == [wid]
                raise Boom
        assert (await row(conn, wid))["escalation"] == 0
        assert await trail(conn, wid) == []
        cur = await conn.execute("SELECT count(*) FROM outbox")
        assert (await cur.fetchone())[0] == 0


async def test_naive_now_is_refused(dsn):
    async with await connect(dsn) as conn:
        with pytest.raises(ValueError):
            await escalate(conn, SETTINGS, datetime(2027, 1, 15))


async def test_run_escalation_ticks_and_survives_losing_its_connection(dsn):
    settings = AlertingSettings(escalation=EscalationSettings(ack_s=ACK, dispose_s=DISPOSE,
                                                              tick_s=0.05), receivers=[ESC])
    clock_at = {"t": (R + timedelta(seconds=299)).timestamp()}
    stop = asyncio.Event()
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, cause="x", level=4)
        loop = asyncio.create_task(run_escalation(dsn, settings, stop, clock=lambda: clock_at["t"]))

        async def wait_for(predicate, what: str, timeout: float = 10.0):
            deadline = asyncio.get_running_loop().time() + timeout
            while not await predicate():
                assert asyncio.get_running_loop().time() < deadline, what
                await asyncio.sleep(0.05)

        async def escalation(w: int) -> int:
            return (await row(conn, w))["escalation"]

        await asyncio.sleep(0.3)
        assert await escalation(wid) == 0                 # 1 s early: nothing
        clock_at["t"] += 1
        await wait_for(lambda: _eq(escalation(wid), 1), "警示 from the loop")

        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = 'hw-escalation'")
        second = await make_warning(conn, cause="y", level=4)
        await wait_for(lambda: _eq(escalation(second), 1), "a pass after reconnecting")
        stop.set()
        await asyncio.wait_for(loop, 5)
        assert steps(await trail(conn, wid)) == [("警示", 0.0)]


async def _eq(coro, value) -> bool:
    return await coro == value


def test_a_partial_table_keeps_the_other_levels_defaults():
    from alerting.escalation import limits

    ack, dispose = limits(EscalationSettings(ack_s={"red": 60}))
    assert ack == [4 * 3600, 3600, 900, 60] and dispose == [72 * 3600, 24 * 3600, 4 * 3600, 3600]
