"""Warnings, events and outbox rows written directly with SQL, for the delivery tests.

A fresh database per test with the small e2e registry (tests/data/registry_e2e.yaml):
enterprise 91370105MA3C000043 (测试化工一厂), site T1 (罐区, major_hazard), sensor TK1.LT.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dbutil import fresh_database
from psycopg.types.json import Jsonb

from hazardwatch.registry import import_file
from hazardwatch.settings import AlertingSettings, ReceiverSettings

DATA = Path(__file__).parent / "data"
ENTERPRISE = "91370105MA3C000043"


@pytest.fixture(name="dsn")
def dsn_fixture() -> Iterator[str]:
    """A fresh migrated database with the e2e registry (import `dsn_fixture`)."""
    with fresh_database("hw_delivery") as url:
        import_file(url, DATA / "registry_e2e.yaml")
        yield url


async def connect(dsn: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def db_now(conn: psycopg.AsyncConnection) -> datetime:
    cur = await conn.execute("SELECT clock_timestamp()")
    return (await cur.fetchone())[0]


async def make_warning(conn: psycopg.AsyncConnection, *, site: str = "T1",
                       enterprise: str = ENTERPRISE, cause: str = "overfill", level: int = 4,
                       active: bool = True, peak: float | None = 18.6,
                       opened_ago_s: float = 120, **columns: Any) -> int:
    """An open warning at `site` (other columns of `warnings` by keyword)."""
    cur = await conn.execute(
        "SELECT s.id, (SELECT id FROM sensors WHERE site_id = s.id ORDER BY tag LIMIT 1) "
        "FROM sites s JOIN enterprises e ON e.id = s.enterprise_id "
        "WHERE s.code = %s AND e.code = %s", (site, enterprise))
    site_id, sensor_id = await cur.fetchone()
    now = await db_now(conn)
    values: dict[str, Any] = {
        "site_id": site_id, "cause": cause, "kind": "process", "level": level,
        "active": active, "opened_at": now - timedelta(seconds=opened_ago_s),
        "peak_value": peak, "peak_sensor_id": sensor_id if peak is not None else None,
        "detail": Jsonb({"source": "test"}),
    }
    values.update(columns)
    names = ", ".join(values)
    marks = ", ".join(f"%({k})s" for k in values)
    cur = await conn.execute(f"INSERT INTO warnings ({names}) VALUES ({marks}) RETURNING id",
                             values)
    return (await cur.fetchone())[0]


async def add_event(conn: psycopg.AsyncConnection, warning_id: int, action: str = "raised",
                    receivers: Iterable[str] = ("hook",), *, level: int | None = None,
                    detail: dict | None = None, actor: str = "system") -> int:
    """One warning_events row and its outbox rows, in one transaction (what
    alerting.events.record does)."""
    async with conn.transaction():
        if level is None:
            cur = await conn.execute("SELECT level FROM warnings WHERE id = %s", (warning_id,))
            (level,) = await cur.fetchone()
        cur = await conn.execute(
            "INSERT INTO warning_events (warning_id, actor, action, level, detail) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (warning_id, actor, action, level, Jsonb(detail or {})))
        (event_id,) = await cur.fetchone()
        for name in receivers:
            await conn.execute("INSERT INTO outbox (event_id, receiver) VALUES (%s, %s)",
                               (event_id, name))
    return event_id


async def outbox_rows(conn: psycopg.AsyncConnection, event_id: int | None = None) -> list[dict]:
    from psycopg.rows import dict_row

    async with conn.cursor(row_factory=dict_row) as cur:
        if event_id is None:
            await cur.execute("SELECT * FROM outbox ORDER BY id")
        else:
            await cur.execute("SELECT * FROM outbox WHERE event_id = %s ORDER BY id",
                              (event_id,))
        return await cur.fetchall()


def alerting(*receivers: ReceiverSettings, **kw: Any) -> AlertingSettings:
    return AlertingSettings(receivers=list(receivers), console_url="http://console.test:8080",
                            **kw)


def webhook(url: str, name: str = "hook", **kw: Any) -> ReceiverSettings:
    return ReceiverSettings(name=name, type="webhook", url=url, **kw)
