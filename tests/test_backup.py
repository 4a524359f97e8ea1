"""Backup and restore as docs/operations.md ("Backup and restore") tells an operator to do
it: `pg_dump -Fc` of the whole database, or of the registry and warnings only, then
`pg_restore` into another database. The restored content equals the original row for
row, `hazardwatch migrate` finds it up to date, and the API signs in a restored user and
shows the restored warnings (and can add to them: the sequences came along)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from apihelp import ApiServer
from dbutil import admin_dsn, fresh_database
from harness import HAZARDWATCH

from alerting import lifecycle, store
from alerting.api.users import add_user
from hazardwatch.pipeline import load_sensor_rows
from hazardwatch.registry import import_file
from hazardwatch.settings import ReceiverSettings
from rules.engine import Engine
from rules.packs import load_packs

DATA = Path(__file__).parent / "data"
PASSWORD = "backup and restore 1"
RECEIVERS = [ReceiverSettings(name="hook", type="webhook", url="http://hook.test",
                              actions=["raised", "level_up", "cleared", "acknowledged",
                                       "commented", "disposed", "closed"])]
PG_DUMP = shutil.which("pg_dump") or "/usr/bin/pg_dump"
PG_RESTORE = shutil.which("pg_restore") or "/usr/bin/pg_restore"

# What docs/operations.md calls the registry and the warnings (with users).
REGISTRY = ["regions", "enterprises", "sites", "gateways", "sensors"]
WARNINGS = ["warnings", "alarms", "warning_events", "outbox"]
USERS = ["users"]
SMALL_BACKUP = REGISTRY + WARNINGS + USERS


def _major(version: str) -> int:
    """15 of "pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"."""
    found = re.search(r"\(PostgreSQL\)\s+(\d+)", version)
    assert found, f"cannot read the version in {version!r}"
    return int(found[1])


@pytest.fixture(scope="module")
def tools() -> None:
    """pg_dump must be at least the server's major version (it refuses newer servers)."""
    for tool in (PG_DUMP, PG_RESTORE):
        if not Path(tool).exists():
            pytest.skip(f"{tool} is not installed (apt-get install postgresql-client)")
    dump_version = subprocess.run([PG_DUMP, "--version"], capture_output=True, text=True,
                                  check=True, timeout=30).stdout.strip()
    with psycopg.connect(admin_dsn()) as conn:
        server = conn.info.server_version // 10000
    if _major(dump_version) < server:
        pytest.skip(f"{dump_version} is older than the server (PostgreSQL {server}): pg_dump "
                    "cannot dump a newer server; install the client of the server's version")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("HW_", "PG"))}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}{result.stderr}"
    return result


async def _fill(dsn: str) -> None:
    """Registry, users, readings, and warnings made the way production makes them: the rule
    engine raises and clears them (alerting.store.apply), officers act on them
    (alerting.lifecycle), each change with its events and outbox rows."""
    import_file(dsn, DATA / "registry_e2e.yaml")
    add_user(dsn, "root", PASSWORD, "admin", display_name="值班长")
    add_user(dsn, "duty", PASSWORD, "officer", region="370105", display_name="张三")
    add_user(dsn, "plant", PASSWORD, "enterprise", enterprise="91370105MA3C000043")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        engine = Engine(load_packs())
        engine.load(await load_sensor_rows(conn))
        cur = await conn.execute("SELECT id FROM sensors WHERE tag = 'TK1.LT'")
        (lt,) = await cur.fetchone()
        t0 = time.time() - 3600

        async def feed(points: list[tuple[float, float]]) -> None:
            ts = np.array([t0 + t for t, _ in points])
            changes = engine.readings(np.full(len(points), lt, dtype=np.int64), ts,
                                      np.array([v for _, v in points]),
                                      np.zeros(len(points), dtype=np.int16), ts[-1])
            async with conn.transaction():
                await store.apply(conn, changes, RECEIVERS)
            await conn.execute(
                "INSERT INTO readings (ts, sensor_id, value) "
                "SELECT to_timestamp(t), %s, v FROM unnest(%s::float8[], %s::float8[]) AS x(t, v)",
                (lt, list(ts), [v for _, v in points]))

        await feed([(0, 16.5), (10, 16.6), (20, 18.5), (30, 18.6)])     # H, then HH
        await feed([(t, 10.0) for t in range(40, 120, 10)])             # cleared
        cur = await conn.execute("SELECT min(id) FROM warnings WHERE NOT active")
        (first,) = await cur.fetchone()
        assert first is not None, "the engine raised and cleared no warning"
        await lifecycle.acknowledge(conn, first, "duty", "收到, 已通知现场", receivers=RECEIVERS)
        await lifecycle.comment(conn, first, "plant", "It's O'Brien's shift; 50% drained -- ok",
                                receivers=RECEIVERS)
        await lifecycle.dispose(conn, first, "plant", "已关闭进料阀", receivers=RECEIVERS)
        await lifecycle.close(conn, first, "duty", receivers=RECEIVERS)
        await feed([(600, 16.7), (610, 16.8)])                          # a new, open episode
        await conn.execute(
            "INSERT INTO readings (ts, sensor_id, value, quality) "
            "SELECT now() - make_interval(secs => g), s.id, g / 10.0, (g % 3)::int2 "
            "FROM generate_series(1, 500) g CROSS JOIN sensors s")
        await conn.execute("UPDATE outbox SET delivered_at = now(), outcome = 'sent', attempts = 1 "
                           "WHERE id % 2 = 0")


@pytest.fixture(scope="module")
async def source(tools) -> AsyncIterator[str]:
    with fresh_database("hw_backup_src") as dsn:
        await _fill(dsn)
        yield dsn


def _tables(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")]


def _content(dsn: str, tables: list[str]) -> dict[str, list[str]]:
    """Every row of every table as text, in a stable order; and every sequence's position."""
    out: dict[str, list[str]] = {}
    with psycopg.connect(dsn) as conn:
        for table in tables:
            rows = conn.execute(psycopg.sql.SQL("SELECT t::text FROM {} t ORDER BY 1").format(
                psycopg.sql.Identifier(table))).fetchall()
            out[table] = [r[0] for r in rows]
        for (seq,) in conn.execute("SELECT sequencename FROM pg_sequences "
                                   "WHERE schemaname = current_schema() ORDER BY 1").fetchall():
            out[f"sequence {seq}"] = [str(conn.execute(psycopg.sql.SQL(
                "SELECT last_value FROM {}").format(psycopg.sql.Identifier(seq))).fetchone()[0])]
    return out


def _sequences_of(content: dict[str, list[str]], tables: list[str]) -> dict[str, list[str]]:
    return {k: v for k, v in content.items()
            if k.startswith("sequence ") and k.split()[1].rsplit("_id_seq", 1)[0] in tables}


async def _api_sees_restored(dsn: str, source_dsn: str) -> None:
    """A restored officer signs in and reads the restored warnings and their timelines; a
    comment gets new ids, not ones the restored rows already hold."""
    with psycopg.connect(source_dsn) as conn:
        warning_ids = [r[0] for r in conn.execute("SELECT id FROM warnings ORDER BY id")]
        closed = conn.execute("SELECT id FROM warnings WHERE closed_at IS NOT NULL").fetchone()[0]
        trail = [tuple(r) for r in conn.execute(
            "SELECT id, actor, action FROM warning_events WHERE warning_id = %s ORDER BY id",
            (closed,))]
    assert len(warning_ids) >= 2 and len(trail) >= 6
    server = await ApiServer(dsn).start()
    try:
        token = await server.login("duty", PASSWORD)
        async with server.client(token) as c:
            listed = (await c.get("/api/warnings", params={"limit": 500})).json()
            assert sorted(w["id"] for w in listed["items"]) == warning_ids
            detail = (await c.get(f"/api/warnings/{closed}")).json()
            assert [(e["id"], e["actor"], e["action"]) for e in detail["events"]] == trail
            assert detail["state"] == "closed" and detail["closing_note"] == "已关闭进料阀"
            open_id = next(w["id"] for w in listed["items"] if w["state"] != "closed")
            r = await c.post(f"/api/warnings/{open_id}/comment", json={"text": "恢复后"})
            assert r.status_code == 200, r.text
            assert r.json()["id"] > max(e[0] for e in trail)
    finally:
        await server.stop()


def _migrate_says_up_to_date(dsn: str) -> None:
    env = {**_env(), "HW_DATABASE_URL": dsn}
    result = subprocess.run([HAZARDWATCH, "migrate"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "up to date", result.stdout


async def test_whole_database_dump_and_restore(source, tmp_path):
    dump = tmp_path / "hazardwatch.dump"
    _run([PG_DUMP, "-Fc", "-f", str(dump), source])
    with psycopg.connect(source) as conn:
        tables = _tables(conn)
    assert set(SMALL_BACKUP) | {"readings", "schema_migrations", "api_tokens"} <= set(tables)
    with fresh_database("hw_backup_dst", migrated=False) as target:
        _run([PG_RESTORE, "--exit-on-error", "--no-owner", "-d", target, str(dump)])
        before, after = _content(source, tables), _content(target, tables)
        assert after.keys() == before.keys()
        for key in before:
            assert after[key] == before[key], key
        assert len(after["readings"]) > 2000 and len(after["warning_events"]) >= 10
        _migrate_says_up_to_date(target)
        await _api_sees_restored(target, source)


async def test_registry_and_warnings_only_into_a_migrated_database(source, tmp_path):
    """The small, frequent backup: no readings. Restored as data into a database that
    `hazardwatch migrate` has just created (same hazardwatch version)."""
    dump = tmp_path / "registry-warnings.dump"
    _run([PG_DUMP, "-Fc", "--data-only", *[f"--table={t}" for t in SMALL_BACKUP],
          "-f", str(dump), source])
    listing = _run([PG_RESTORE, "--list", str(dump)]).stdout
    for table in SMALL_BACKUP:
        assert re.search(rf"TABLE DATA \S+ {table} ", listing), table
    assert not re.search(r"TABLE DATA \S+ readings ", listing)
    with fresh_database("hw_backup_dst") as target:
        _run([PG_RESTORE, "--data-only", "--disable-triggers", "--single-transaction",
              "--exit-on-error", "-d", target, str(dump)])
        before, after = _content(source, SMALL_BACKUP), _content(target, SMALL_BACKUP)
        for table in SMALL_BACKUP:
            assert after[table] == before[table], table
        assert _sequences_of(after, SMALL_BACKUP) == _sequences_of(before, SMALL_BACKUP)
        assert _sequences_of(before, SMALL_BACKUP)     # they were compared at all
        with psycopg.connect(target) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 0
        _migrate_says_up_to_date(target)
        await _api_sees_restored(target, source)
