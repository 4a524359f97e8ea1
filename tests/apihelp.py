"""The API under test: a real uvicorn serving alerting.api.create_app on a free port, in
the test's event loop, over a fresh database with tests/data/registry_api.yaml, users of
every role, and warnings, alarms, events, readings, unregistered tags and dead letters
written with SQL.

    370000 山东省 ── 370100 济南市 ── 370105 天桥区: E1 (site T1, sensors E1.LT, E1.TT)
                 │                └─ 370102 历下区: E2 (site P1, sensor E2.PT)
                 └─ 370200 青岛市 ── 370211 黄岛区: E3 (site D1, sensor E3.DP)
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn
from psycopg.types.json import Jsonb

from alerting.api import create_app
from alerting.api.users import add_user
from hazardwatch.registry import import_file
from hazardwatch.settings import AuthSettings, Settings

DATA = Path(__file__).parent / "data"
REGISTRY = DATA / "registry_api.yaml"
E1, E2, E3 = "91370105MA3C10001H", "91370102MA3C200021", "91370211MA3C300032"
UNKNOWN_ENTERPRISE = "91370000MA3C99999X"
PASSWORD = "correct horse 7"

# username → (role, region, enterprise, the enterprises they see)
USERS: dict[str, tuple[str, str | None, str | None, set[str]]] = {
    "admin": ("admin", None, None, {E1, E2, E3}),
    "off_sd": ("officer", "370000", None, {E1, E2, E3}),
    "off_jn": ("officer", "370100", None, {E1, E2}),
    "off_tq": ("officer", "370105", None, {E1}),
    "off_qd": ("officer", "370200", None, {E3}),
    "ent1": ("enterprise", None, E1, {E1}),
    "ent2": ("enterprise", None, E2, {E2}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Clock:
    """The app's clock: real time plus an offset a test may move."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class World:
    dsn: str
    warnings: dict[str, int] = field(default_factory=dict)     # enterprise code → warning id
    sensors: dict[str, int] = field(default_factory=dict)      # enterprise code → sensor id
    events: dict[str, list[int]] = field(default_factory=dict)


def seed(dsn: str) -> World:
    """Registry, users and one open red/orange/yellow warning per enterprise."""
    import_file(dsn, REGISTRY)
    for name, (role, region, enterprise, _) in USERS.items():
        add_user(dsn, name, PASSWORD, role, region=region, enterprise=enterprise,
                 display_name=f"用户 {name}")
    world = World(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for level, code in zip((4, 3, 2), (E1, E2, E3), strict=True):
            site_id, sensor_id = conn.execute(
                "SELECT s.id, (SELECT min(id) FROM sensors WHERE site_id = s.id) FROM sites s "
                "JOIN enterprises e ON e.id = s.enterprise_id WHERE e.code = %s",
                (code,)).fetchone()
            world.sensors[code] = sensor_id
            wid = conn.execute(
                "INSERT INTO warnings (site_id, cause, kind, level, opened_at, raised_at, "
                "peak_value, peak_sensor_id, detail) VALUES (%s, 'overfill', 'process', %s, "
                "now() - interval '10 min', now() - interval '9 min', 18.5, %s, %s) RETURNING id",
                (site_id, level, sensor_id, Jsonb({"source": "test"}))).fetchone()[0]
            world.warnings[code] = wid
            conn.execute(
                "INSERT INTO alarms (warning_id, sensor_id, condition, raised_at, value, "
                "peak_value) VALUES (%s, %s, 'hh', now() - interval '10 min', 18.2, 18.5)",
                (wid, sensor_id))
            world.events[code] = [add_event(conn, wid, "raised", level)]
            conn.execute(
                "INSERT INTO readings (ts, sensor_id, value, quality) "
                "SELECT now() - make_interval(secs => g * 10), %s, 10 + g / 100.0, 0 "
                "FROM generate_series(1, 100) g", (sensor_id,))
        for code in (E1, E2, E3, UNKNOWN_ENTERPRISE):
            conn.execute(
                "INSERT INTO unregistered_tags (enterprise_code, gateway_code, tag, first_seen, "
                "last_seen, count, last_value) VALUES (%s, 'gw-x', %s, now(), now(), 3, 1.5)",
                (code, f"NEW.{code[-4:]}"))
            conn.execute(
                "INSERT INTO dead_letters (topic, dialect, enterprise_code, gateway_code, reason, "
                "errors, payload) VALUES (%s, 'hw1', %s, 'gw-x', 'bad_json', %s, %s)",
                (f"hw/v1/{code}/gw-x/data", code,
                 Jsonb([{"reason": "bad_json", "field": None, "tag": None, "detail": "x"}]),
                 f'{{"from": "{code}"'.encode()))
    return world


def add_event(conn: psycopg.Connection, warning_id: int, action: str = "commented",
              level: int | None = None, detail: dict[str, Any] | None = None) -> int:
    return conn.execute(
        "INSERT INTO warning_events (warning_id, actor, action, level, detail) "
        "VALUES (%s, 'system', %s, %s, %s) RETURNING id",
        (warning_id, action, level, Jsonb(detail or {}))).fetchone()[0]


class ApiServer:
    """uvicorn running the app in this event loop; `client()` talks to it over HTTP."""

    def __init__(self, dsn: str, *, clock: Clock | None = None, heartbeat_s: float = 15.0,
                 **auth: Any) -> None:
        self.dsn = dsn
        self.clock = clock or Clock()
        self.settings = Settings(database_url=dsn, auth=AuthSettings(**auth))
        self.stop_event = asyncio.Event()
        self.app = create_app(self.settings, clock=self.clock, stop=self.stop_event,
                              heartbeat_s=heartbeat_s)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, lifespan="on", log_level="warning",
            timeout_graceful_shutdown=2))
        self.task: asyncio.Task | None = None

    async def start(self) -> ApiServer:
        self.task = asyncio.create_task(self.server.serve())
        for _ in range(200):
            if self.server.started:
                return self
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.025)
        raise TimeoutError("uvicorn did not start")

    async def stop(self) -> None:
        self.stop_event.set()
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)

    def client(self, token: str | None = None, **kw: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=10, **kw)

    async def login(self, username: str, password: str = PASSWORD) -> str:
        async with self.client() as c:
            r = await c.post("/api/login", json={"username": username, "password": password})
            assert r.status_code == 200, r.text
            return r.json()["token"]


def make_warning(conn: psycopg.Connection, enterprise: str, cause: str, level: int = 3, *,
                 active: bool = True, **columns: Any) -> int:
    """Another warning at the enterprise's site (`cause` must be unique among open ones)."""
    site_id = conn.execute(
        "SELECT s.id FROM sites s JOIN enterprises e ON e.id = s.enterprise_id "
        "WHERE e.code = %s ORDER BY s.id LIMIT 1", (enterprise,)).fetchone()[0]
    values = {"site_id": site_id, "cause": cause, "kind": "process", "level": level,
              "active": active, "opened_at": datetime.now(UTC) - timedelta(minutes=5), **columns}
    names = ", ".join(values)
    marks = ", ".join(f"%({k})s" for k in values)
    wid = conn.execute(f"INSERT INTO warnings ({names}) VALUES ({marks}) RETURNING id",
                       values).fetchone()[0]
    add_event(conn, wid, "raised", level)
    return wid


class Sse:
    """Frames of a text/event-stream response: {"id", "event", "data", "comments"}."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def frame(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self._frame(), timeout)

    async def data(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame that carries data (skips comment-only frames)."""
        async def next_data() -> dict[str, Any]:
            while True:
                f = await self._frame()
                if f.get("data") is not None:
                    return f
        return await asyncio.wait_for(next_data(), timeout)

    async def _frame(self) -> dict[str, Any]:
        import orjson

        frame: dict[str, Any] = {"comments": []}
        async for line in self.lines:
            if line == "":
                if len(frame) > 1 or frame["comments"]:
                    if "data" in frame:
                        frame["data"] = orjson.loads(frame["data"])
                    return frame
                continue
            if line.startswith(":"):
                frame["comments"].append(line[1:].strip())
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data" and "data" in frame:
                frame["data"] += "\n" + value
            else:
                frame[key] = value
        raise EOFError("stream ended")
