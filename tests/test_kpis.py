"""KPIs on hand-inserted warnings, alarms and gateways with answers worked out by hand."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dbutil import fresh_database
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerting.kpis import kpis
from hazardwatch.registry import import_file

DATA = Path(__file__).parent / "data"
S = datetime(2027, 1, 15, 0, 0, tzinfo=UTC)          # the period: [S, S + 24 h)
U = S + timedelta(hours=24)
H = timedelta(hours=1)
ENT1, ENT2 = "91370105MA3C000043", "91370105MA3C000056"


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with fresh_database("hw_kpis") as url:
        import_file(url, DATA / "registry_e2e.yaml")
        with psycopg.connect(url, autocommit=True) as conn:
            populate(conn)
        yield url


class Data:
    ids: dict[str, int] = {}


def populate(conn: psycopg.Connection) -> None:
    def one(sql: str, *args: Any) -> Any:
        return conn.execute(sql, args).fetchone()[0]

    site = {code: one("SELECT id FROM sites WHERE code = %s", code) for code in ("T1", "T9")}
    sensor = {tag: one("SELECT id FROM sensors WHERE tag = %s", tag)
              for tag in ("TK1.LT", "TK1.TT", "TK1.PT")}
    Data.ids["ent2"] = one("SELECT id FROM enterprises WHERE code = %s", ENT2)
    Data.ids["ent1"] = one("SELECT id FROM enterprises WHERE code = %s", ENT1)
    for code, online in (("gw-e2e", True), ("gw-tb", False), ("gw-other", None)):
        conn.execute("UPDATE gateways SET online = %s WHERE code = %s", (online, code))

    def warning(name: str, level: int, raised: datetime, *, site_code: str = "T1",
                **cols: Any) -> int:
        values = {"site_id": site[site_code], "cause": name, "kind": "process", "level": level,
                  "opened_at": raised, "raised_at": raised, "detail": Jsonb({})}
        values.update(cols)
        wid = one(f"INSERT INTO warnings ({', '.join(values)}) "
                  f"VALUES ({', '.join(['%s'] * len(values))}) RETURNING id", *values.values())
        Data.ids[name] = wid
        return wid

    closed = {"active": False, "acknowledged": True, "disposal": "done"}
    warning("w1", 4, S + 1 * H, acknowledged_at=S + 1 * H + timedelta(seconds=60),
            closed_at=S + 2 * H, **closed)                                     # closed
    warning("w2", 3, S + 2 * H, acknowledged=True,
            acknowledged_at=S + 2 * H + timedelta(seconds=120))                # active_ack
    warning("w3", 2, S + 3 * H)                                                # active_unack
    warning("w4", 1, S + 4 * H, active=False, cleared_at=S + 5 * H)            # cleared_unack
    warning("w5", 4, S + 5 * H, site_code="T9")                                # active_unack
    warning("w6", 4, S - 1 * H)                                 # before the period, still open
    warning("w8", 4, S + 6 * H, shelved_until=U + H, shelved_reason="maintenance")
    warning("w9", 4, S + 6 * H, kind="sensor_fault", suppressed_by=Data.ids["w6"])
    # a flood: 12 in 4 min inside the clock period 10:00-10:10
    for k in range(12):
        t = S + 10 * H + timedelta(seconds=20 * k)
        warning(f"flood{k}", 1, t, acknowledged_at=t + timedelta(seconds=30),
                closed_at=t + timedelta(seconds=600), **closed)
    # 11 in 8 min 20 s across 12:10: over 10 in a sliding window, in no clock period
    for k in range(11):
        t = S + 12 * H + timedelta(minutes=5, seconds=50 * k)
        warning(f"straddle{k}", 1, t, acknowledged_at=t + timedelta(seconds=30),
                closed_at=t + timedelta(seconds=600), **closed)

    def alarm(tag: str, cond: str, at: datetime, warning_name: str = "w1") -> None:
        conn.execute(
            "INSERT INTO alarms (warning_id, sensor_id, condition, active, raised_at, cleared_at) "
            "VALUES (%s, %s, %s, false, %s, %s)",
            (Data.ids[warning_name], sensor[tag], cond, at, at + timedelta(seconds=5)))

    t = S + 1 * H
    for s in (0, 20, 40):                 # 3 in 40 s: chattering
        alarm("TK1.LT", "h", t + timedelta(seconds=s))
        alarm("TK1.LT", "h", t + timedelta(seconds=s), "w2")   # same activation, other cause
    for s in (0, 40, 80):                 # 3 in 80 s: no two windows of 60 s hold 3
        alarm("TK1.TT", "hh", t + timedelta(seconds=s))
    for s in (0, 30, 60):                 # 3 in exactly 60 s: chattering (inclusive)
        alarm("TK1.PT", "h", t + timedelta(seconds=s))
    for s in (0, 10, 20, 50):             # 4 within 50 s, and once more an hour later
        alarm("TK1.LT", "l", t + 2 * H + timedelta(seconds=s))
    alarm("TK1.LT", "l", t + 3 * H)
    for s in (-20, -10, 10):              # only one of them inside the period
        alarm("TK1.TT", "ll", S + timedelta(seconds=s))


async def figures(dsn: str, enterprise_ids: list[int] | None) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        return await kpis(conn, enterprise_ids=enterprise_ids, since=S, until=U, chatter_n=3,
                          chatter_window_s=60, now=U)


async def test_kpis_for_everything(dsn):
    k = await figures(dsn, None)
    assert k["gateways"] == {"total": 3, "online": 1, "online_rate": 0.3333}
    assert k["warnings"] == {
        "by_level": {"blue": 24, "yellow": 1, "orange": 1, "red": 4},
        "by_state": {"active_unack": 4, "active_ack": 1, "cleared_unack": 1, "cleared": 0,
                     "closed": 24},
        "open": 7,                         # w2 w3 w4 w5 w6 w8 w9
    }
    assert k["mtta_s"] == (60 + 120 + 23 * 30) / 25
    assert k["mttc_s"] == (3600 + 23 * 600) / 24
    # ack: w3 (yellow, 1 h), w4 (blue, 4 h), w5, w6; dispose: w2 (orange, 4 h), w5, w6;
    # w8 shelved and w9 suppressed are not counted
    assert k["overdue"] == {"ack": 4, "dispose": 3}
    assert k["alarm_rate"] == {"max_per_10min": 12, "avg_per_hour": 1.25, "floods": 1,
                               "raised": 30, "periods": 144}
    assert [(c["tag"], c["condition"], c["count"], c["max_in_window"]) for c in k["chattering"]] == [
        ("TK1.LT", "l", 5, 4), ("TK1.LT", "h", 3, 3), ("TK1.PT", "h", 3, 3)]
    first = k["chattering"][0]
    assert (first["site"], first["enterprise"]) == ("T1", ENT1)
    assert isinstance(first["sensor_id"], int)


async def test_kpis_scoped_to_one_enterprise(dsn):
    k = await figures(dsn, [Data.ids["ent2"]])
    assert k["gateways"] == {"total": 1, "online": 0, "online_rate": 0.0}
    assert k["warnings"]["by_level"] == {"blue": 0, "yellow": 0, "orange": 0, "red": 1}
    assert k["warnings"]["by_state"]["active_unack"] == 1 and k["warnings"]["open"] == 1
    assert k["mtta_s"] is None and k["mttc_s"] is None
    assert k["overdue"] == {"ack": 1, "dispose": 1}
    assert k["alarm_rate"] == {"max_per_10min": 1, "avg_per_hour": 0.042, "floods": 0,
                               "raised": 1, "periods": 144}
    assert k["chattering"] == []
    # an empty scope (a user without enterprises) sees nothing at all
    k = await figures(dsn, [])
    assert k["gateways"] == {"total": 0, "online": 0, "online_rate": None}
    assert k["warnings"]["open"] == 0 and k["alarm_rate"]["raised"] == 0


async def test_a_shorter_period_and_chatter_settings(dsn):
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        k = await kpis(conn, enterprise_ids=[Data.ids["ent1"]], since=S + 10 * H,
                       until=S + 11 * H, chatter_n=2, chatter_window_s=10, now=U)
    assert k["warnings"]["by_level"]["blue"] == 12
    assert k["alarm_rate"] == {"max_per_10min": 12, "avg_per_hour": 12.0, "floods": 1,
                               "raised": 12, "periods": 6}
    assert k["chattering"] == []           # no alarms in that hour
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        k = await kpis(conn, enterprise_ids=None, since=S, until=U, chatter_n=2,
                       chatter_window_s=10, now=U)
    # within 10 s: LT 'l' (0, 10) only
    assert [(c["tag"], c["condition"], c["max_in_window"]) for c in k["chattering"]] == [
        ("TK1.LT", "l", 2)]


async def test_bad_periods_are_refused(dsn):
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        with pytest.raises(ValueError):
            await kpis(conn, enterprise_ids=None, since=U, until=S, chatter_n=3,
                       chatter_window_s=60)
        with pytest.raises(ValueError):
            await kpis(conn, enterprise_ids=None, since=datetime(2027, 1, 1), until=U,
                       chatter_n=3, chatter_window_s=60)
