"""The partition lease is enforced by the database inside the rules write transaction.

Lease.check() only trusts the local monotonic clock; a process that stalls between the
check and its commit must not commit rules output for partitions a standby has taken.
"""

from __future__ import annotations

import asyncio
import os
import subprocess

import psycopg
import pytest
from dbutil import fresh_database
from harness import HAZARDWATCH

from hazardwatch.pipeline import RulesSink
from hazardwatch.settings import IngestSettings, Settings
from ingest.collector import Collector
from ingest.partitions import Assignment, Layout, Lease, LeaseLost, claim_layout
from rules.engine import Changes


async def connect(dsn: str, **kw) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(dsn, **kw)


def test_write_refuses_when_the_database_lease_expired_or_was_taken():
    async def run(dsn: str) -> None:
        a = Assignment(4, 2, 1)
        holder = Lease(a, 30.0)
        sink = RulesSink(replay_s=0)
        sink.lease = holder
        async with await connect(dsn, autocommit=True) as admin, await connect(dsn) as conn:
            assert await holder.try_acquire(admin) == []
            async with conn.transaction():
                await sink.write(conn, Changes())  # held: the write goes through

            # expired in the database while the local clock still says "held" (a stall)
            await admin.execute("UPDATE ingest_partitions SET expires_at = now() - interval '1 s' "
                                "WHERE partition = 3")
            assert holder.valid()
            with pytest.raises(LeaseLost, match=r"\[3\]"):
                async with conn.transaction():
                    await sink.write(conn, Changes())
            assert holder.lost and not holder.valid()

            # taken by another owner
            await admin.execute("UPDATE ingest_partitions SET expires_at = '-infinity'")
            holder2 = Lease(a, 30.0)
            assert await holder2.try_acquire(admin) == []
            await admin.execute("UPDATE ingest_partitions SET owner = 'thief' WHERE partition = 1")
            with pytest.raises(LeaseLost, match=r"\[1\]"):
                async with conn.transaction():
                    await holder2.confirm(conn)

    with fresh_database("hw_test_lease_db") as dsn:
        asyncio.run(asyncio.wait_for(run(dsn), 60))


def test_confirmed_lease_blocks_a_takeover_until_commit():
    async def run(dsn: str) -> None:
        a = Assignment(2, 1, 0)
        holder, standby = Lease(a, 2.0), Lease(a, 2.0)  # locally valid for 1 s
        async with await connect(dsn, autocommit=True) as admin, \
                await connect(dsn) as conn, await connect(dsn, autocommit=True) as other:
            assert await holder.try_acquire(admin) == []
            await other.execute("SET lock_timeout = '300ms'")
            async with conn.transaction():
                await holder.confirm(conn)
                # let the lease run out in the database while the write is still open
                while (await (await admin.execute(
                        "SELECT bool_and(expires_at < clock_timestamp()) FROM ingest_partitions"
                        )).fetchone())[0] is not True:
                    await asyncio.sleep(0.1)
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    await standby.try_acquire(other)  # waits on the row lock, not taken over
            assert await standby.try_acquire(other) == []  # after the commit it may
            with pytest.raises(LeaseLost):
                async with conn.transaction():
                    await holder.confirm(conn)

    with fresh_database("hw_test_lease_db") as dsn:
        asyncio.run(asyncio.wait_for(run(dsn), 60))


# ---------------------------------------------------------------------------- layout

CLIENT = "hw-ingest-1"  # settings' default MQTT client id

def test_a_worker_of_another_layout_refuses_to_start_until_reset():
    """Sessions of the recorded layout (e.g. -w2/-w3 of 4 workers) would keep queueing
    readings after a switch to 2 workers: the new layout refuses until the reset."""
    def settings(dsn: str, partitions: int, workers: int, worker: int = 0) -> Settings:
        return Settings(database_url=dsn, ingest=IngestSettings(
            partitions=partitions, workers=workers, worker=worker))

    async def start(s: Settings) -> None:
        stop = asyncio.Event()
        stop.set()  # past the layout check a standby-free start returns at once
        await Collector(s).run(stop)

    def cli(dsn: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "HW_DATABASE_URL": dsn}
        return subprocess.run([HAZARDWATCH, "partitions", "layout", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    async def run(dsn: str) -> None:
        assert settings(dsn, 4, 2).mqtt.client_id == CLIENT  # the same sessions' base id
        four = Layout(4, 4, CLIENT)
        async with await connect(dsn, autocommit=True) as conn:
            assert await claim_layout(conn, four) is None
            assert await claim_layout(conn, four) is None  # the same layout again
            problem = await claim_layout(conn, Layout(4, 2, CLIENT))
            assert problem is not None and f"{CLIENT}-w3" in problem
            assert "hazardwatch partitions layout --reset" in problem
            assert await claim_layout(conn, Layout(0, 1, CLIENT)) is not None
            assert await claim_layout(conn, Layout(4, 4, "other-id")) is not None

        with pytest.raises(SystemExit, match="4 partitions, 4 workers"):
            await start(settings(dsn, 4, 2))
        with pytest.raises(SystemExit, match="database records 4 partitions"):
            await start(settings(dsn, 0, 1))

    with fresh_database("hw_test_layout") as dsn:
        asyncio.run(asyncio.wait_for(run(dsn), 60))
        shown = cli(dsn)
        assert shown.returncode == 0 and "4 partitions, 4 workers" in shown.stdout, shown

        with psycopg.connect(dsn, autocommit=True) as conn:  # a live worker's lease
            conn.execute("INSERT INTO ingest_partitions (partition, partitions, workers, worker, "
                         "owner, expires_at) VALUES (0, 4, 4, 0, 'x', now() + interval '1 h')")
            refused = cli(dsn, "--reset")
            assert refused.returncode != 0 and "stop every collector worker" in refused.stderr
            conn.execute("UPDATE ingest_partitions SET expires_at = '-infinity'")
            done = cli(dsn, "--reset")
            assert done.returncode == 0 and "forgot 4 partitions" in done.stdout, done
            assert conn.execute("SELECT count(*) FROM ingest_layout").fetchone()[0] == 0

        asyncio.run(asyncio.wait_for(start(settings(dsn, 4, 2)), 60))  # now it starts
        with psycopg.connect(dsn) as conn:
            # recorded only once the broker agreed on P: a start that never connected (or a
            # refused misconfiguration) leaves nothing behind to block the corrected one
            assert conn.execute("SELECT count(*) FROM ingest_layout").fetchone() == (0,)
