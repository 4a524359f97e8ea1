"""The HTTP API (docs/alerting.md "HTTP API") against a real PostgreSQL and a real uvicorn:
the authorisation matrix (every role × every endpoint), the contract's shapes, filters,
lifecycle actions, readings resolution and capping, security headers, injection strings,
and the event stream (scope, Last-Event-ID, late commits, heartbeats, revocation)."""

from __future__ import annotations

import asyncio
import itertools
import os
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import psycopg
import pytest
from apihelp import (
    E1,
    E2,
    E3,
    REGISTRY,
    UNKNOWN_ENTERPRISE,
    USERS,
    ApiServer,
    Sse,
    add_event,
    make_warning,
    seed,
)
from dbutil import fresh_database

ENTERPRISES = (E1, E2, E3)
ACTIONS = ("acknowledge", "comment", "dispose", "close", "shelve", "unshelve")
SUPERVISE = {"acknowledge", "close", "shelve", "unshelve"}
WARNING_KEYS = {
    "id", "cause", "title_zh", "title_en", "kind", "level", "level_name", "state", "active",
    "acknowledged", "escalation", "count", "opened_at", "raised_at", "updated_at", "cleared_at",
    "closed_at", "acknowledged_at", "disposed_at", "disposal", "closing_note", "shelved_until",
    "shelved_reason", "suppressed_by", "peak_value", "peak_sensor", "detail", "site",
    "enterprise", "region"}
SENSOR_KEYS = {"id", "tag", "kind", "unit", "range", "limits", "interval_s"}
EVENT_KEYS = {"id", "warning_id", "at", "actor", "action", "level", "detail"}
ALARM_KEYS = {"id", "condition", "active", "raised_at", "cleared_at", "value", "peak_value",
              "detail", "sensor", "gateway"}
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


@pytest.fixture(scope="module")
async def env():
    with fresh_database("hw_api") as dsn:
        world = seed(dsn)
        server = await ApiServer(dsn, heartbeat_s=0.5).start()
        try:
            tokens = {name: await server.login(name) for name in USERS}
            yield server, world, tokens
        finally:
            await server.stop()


def sees(user: str) -> set[str]:
    return USERS[user][3]


def action_body(action: str) -> dict | None:
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    return {"acknowledge": {}, "comment": {"text": "巡检中"}, "dispose": {"note": "已关阀"},
            "close": {"note": "已处置"}, "shelve": {"reason": "检修", "until": until},
            "unshelve": None}.get(action)


def rfc3339(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# ------------------------------------------------------------------ authentication required


async def test_every_endpoint_needs_a_token(env):
    server, world, _ = env
    wid, sid = world.warnings[E1], world.sensors[E1]
    gets = ["/api/me", "/api/warnings", f"/api/warnings/{wid}", f"/api/sensors/{sid}/readings",
            "/api/kpis", "/api/registry/enterprises", f"/api/registry/enterprises/{E1}",
            "/api/onboarding", "/api/dead-letters", "/api/events/stream"]
    async with server.client() as anon, server.client("not-a-token") as bogus:
        for path in gets:
            for client in (anon, bogus):
                r = await client.get(path)
                assert r.status_code == 401, (path, r.status_code, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
        for action in ACTIONS + ("logout",):
            path = "/api/logout" if action == "logout" else f"/api/warnings/{wid}/{action}"
            for client in (anon, bogus):
                r = await client.post(path, json=action_body(action) or {})
                assert r.status_code == 401, (path, r.status_code)
        r = await anon.get("/api/me", headers={"Authorization": "Basic YWRtaW46eA=="})
        assert r.status_code == 401


@pytest.mark.parametrize("user", list(USERS))
async def test_me(env, user):
    server, _, tokens = env
    async with server.client(tokens[user]) as c:
        r = await c.get("/api/me")
    assert r.status_code == 200
    me = r.json()
    role, region, enterprise, _ = USERS[user]
    assert me["username"] == user and me["role"] == role
    assert me["display_name"] == f"用户 {user}"
    assert (me["region"] or {}).get("code") == region
    assert (me["enterprise"] or {}).get("code") == enterprise


# ------------------------------------------------------------------ scope: warnings


@pytest.mark.parametrize("user", list(USERS))
async def test_warning_list_is_filtered_to_scope(env, user):
    server, world, tokens = env
    async with server.client(tokens[user]) as c:
        r = await c.get("/api/warnings", params={"limit": 500})
    assert r.status_code == 200
    body = r.json()
    codes = {w["enterprise"]["code"] for w in body["items"]}
    assert codes <= sees(user)
    seeded = {world.warnings[code] for code in sees(user)}
    assert seeded <= {w["id"] for w in body["items"]}
    assert body["total"] == len(body["items"])
    for w in body["items"]:
        assert set(w) == WARNING_KEYS


@pytest.mark.parametrize(("user", "enterprise"), list(itertools.product(USERS, ENTERPRISES)))
async def test_warning_detail_in_scope_or_404(env, user, enterprise):
    server, world, tokens = env
    wid = world.warnings[enterprise]
    async with server.client(tokens[user]) as c:
        r = await c.get(f"/api/warnings/{wid}")
    if enterprise in sees(user):
        assert r.status_code == 200
        w = r.json()
        assert set(w) == WARNING_KEYS | {"alarms", "events"}
        assert w["enterprise"]["code"] == enterprise
        assert set(w["peak_sensor"]) == SENSOR_KEYS
        assert [set(a) for a in w["alarms"]] == [ALARM_KEYS]
        assert w["alarms"][0]["sensor"]["id"] == world.sensors[enterprise]
        assert w["alarms"][0]["gateway"] is None
        assert w["events"][0]["action"] == "raised" and set(w["events"][0]) == EVENT_KEYS
        assert w["level_name"] == {1: "blue", 2: "yellow", 3: "orange", 4: "red"}[w["level"]]
        for key in ("opened_at", "raised_at", "updated_at"):
            rfc3339(w[key])
    else:
        assert r.status_code == 404
        assert r.json() == {"detail": "no such warning"}


async def test_missing_warning_is_404_like_out_of_scope(env):
    server, _, tokens = env
    async with server.client(tokens["admin"]) as c:
        assert (await c.get("/api/warnings/999999")).json() == {"detail": "no such warning"}
        assert (await c.post("/api/warnings/999999/comment", json={"text": "x"})).status_code == 404


@pytest.fixture(scope="module")
def matrix_warnings(env):
    """One fresh warning per enterprise for the action matrix."""
    _, world, _ = env
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        return {code: make_warning(conn, code, "matrix", level=3) for code in ENTERPRISES}


@pytest.mark.parametrize(("user", "enterprise", "action"),
                         list(itertools.product(USERS, ENTERPRISES, ACTIONS)))
async def test_action_matrix(env, matrix_warnings, user, enterprise, action):
    """Out of scope → 404; in scope but the role may not → 403; else the lifecycle decides
    (200, or 409/422 when the warning's state does not allow it)."""
    server, world, tokens = env
    wid = matrix_warnings[enterprise]
    role = USERS[user][0]
    def trail() -> int:
        with psycopg.connect(world.dsn) as conn:
            return conn.execute("SELECT count(*) FROM warning_events WHERE warning_id = %s",
                                (wid,)).fetchone()[0]

    before = trail()
    async with server.client(tokens[user]) as c:
        r = await c.post(f"/api/warnings/{wid}/{action}", json=action_body(action))
    if enterprise not in sees(user):
        assert r.status_code == 404, r.text
    elif role == "enterprise" and action in SUPERVISE:
        assert r.status_code == 403, r.text
    else:
        assert r.status_code in (200, 409), r.text
        if r.status_code == 200:
            out = r.json()
            if action == "comment":
                assert set(out) == EVENT_KEYS and out["actor"] == user
            else:
                assert set(out) == WARNING_KEYS
    # only a done action leaves a trace
    assert trail() == before + (1 if r.status_code == 200 else 0)


async def test_lifecycle_through_the_api(env):
    server, world, tokens = env
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        wid = make_warning(conn, E1, "lifecycle", level=4)
    async with server.client(tokens["off_tq"]) as off, server.client(tokens["ent1"]) as ent:
        r = await off.post(f"/api/warnings/{wid}/acknowledge", json={"note": "收到"})
        assert r.status_code == 200 and r.json()["state"] == "active_ack"
        assert r.json()["acknowledged_at"] is not None
        r = await off.post(f"/api/warnings/{wid}/acknowledge")
        assert r.status_code == 409 and "already acknowledged" in r.json()["detail"]
        r = await ent.post(f"/api/warnings/{wid}/comment", json={"text": "正在处理"})
        assert r.status_code == 200
        event = r.json()
        assert event["action"] == "commented" and event["actor"] == "ent1"
        assert event["detail"] == {"text": "正在处理"} and event["warning_id"] == wid
        r = await ent.post(f"/api/warnings/{wid}/dispose", json={"note": "已关闭进料阀"})
        assert r.status_code == 200 and r.json()["disposal"] == "已关闭进料阀"
        r = await off.post(f"/api/warnings/{wid}/close", json={})
        assert r.status_code == 409 and "still active" in r.json()["detail"]
        # shelve: bad times are refused
        soon = datetime.now(UTC) + timedelta(hours=1)
        r = await off.post(f"/api/warnings/{wid}/shelve",
                           json={"reason": "检修", "until": soon.replace(tzinfo=None).isoformat()})
        assert r.status_code == 422
        r = await off.post(f"/api/warnings/{wid}/shelve",
                           json={"reason": "检修", "until": (soon + timedelta(days=30)).isoformat()})
        assert r.status_code == 422 and "longer than" in r.json()["detail"]
        r = await off.post(f"/api/warnings/{wid}/shelve", json={"reason": "检修", "until": soon.isoformat()})
        assert r.status_code == 200 and r.json()["shelved_reason"] == "检修"
        r = await off.post(f"/api/warnings/{wid}/unshelve")
        assert r.status_code == 200 and r.json()["shelved_until"] is None
        r = await off.post(f"/api/warnings/{wid}/unshelve")
        assert r.status_code == 409
        r = await ent.post(f"/api/warnings/{wid}/comment", json={"text": ""})
        assert r.status_code == 422
        with psycopg.connect(world.dsn, autocommit=True) as conn:   # the engine clears it
            conn.execute("UPDATE warnings SET active = false, cleared_at = now() WHERE id = %s",
                         (wid,))
        r = await off.post(f"/api/warnings/{wid}/close", json={})
        assert r.status_code == 200
        closed = r.json()
        assert closed["state"] == "closed" and closed["closing_note"] == "已关闭进料阀"
        r = await ent.post(f"/api/warnings/{wid}/comment", json={"text": "again"})
        assert r.status_code == 409
        r = await off.get(f"/api/warnings/{wid}")
        actions = [e["action"] for e in r.json()["events"]]
    assert actions == ["raised", "acknowledged", "commented", "disposed", "shelved",
                       "unshelved", "closed"]


# ------------------------------------------------------------------ list filters


async def test_list_filters_and_order(env):
    server, world, tokens = env
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        closed = make_warning(conn, E2, "filters_closed", level=1, active=False,
                              acknowledged=True, closed_at=datetime.now(UTC))
    async with server.client(tokens["admin"]) as c:
        async def ids(**params) -> list[int]:
            r = await c.get("/api/warnings", params={"limit": 500, **params})
            assert r.status_code == 200, r.text
            return [w["id"] for w in r.json()["items"]]

        every = (await c.get("/api/warnings", params={"limit": 500})).json()["items"]
        keys = [(-w["level"], w["raised_at"], w["id"]) for w in every]
        assert keys == sorted(keys)
        assert closed in await ids()
        assert closed not in await ids(state="open")
        assert closed in await ids(state="closed")
        assert {w["state"] for w in every if w["id"] in await ids(state="closed")} == {"closed"}
        assert set(await ids(state=["closed", "open"])) == {w["id"] for w in every}
        assert world.warnings[E1] in await ids(level="red")
        assert await ids(level="red") == await ids(level="4")
        assert set(await ids(level=["2", "orange"])) == {
            w["id"] for w in every if w["level"] in (2, 3)}
        assert {w for w in await ids(region="370102")} == {
            w["id"] for w in every if w["enterprise"]["code"] == E2}
        assert {w for w in await ids(region="370100")} == {
            w["id"] for w in every if w["enterprise"]["code"] in (E1, E2)}
        assert set(await ids(enterprise=E3)) == {
            w["id"] for w in every if w["enterprise"]["code"] == E3}
        assert set(await ids(site_kind="dust_explosion")) == set(await ids(enterprise=E3))
        assert closed in await ids(cause="filters_closed")
        assert await ids(cause="nope") == []
        page = (await c.get("/api/warnings", params={"limit": 2, "offset": 1})).json()
        assert page["total"] == len(every)
        assert [w["id"] for w in page["items"]] == [w["id"] for w in every[1:3]]
        for bad in ({"limit": 501}, {"limit": 0}, {"offset": -1}, {"level": "5"},
                    {"state": "bogus"}, {"site_kind": "volcano"}):
            assert (await c.get("/api/warnings", params=bad)).status_code == 422, bad
    # a region filter never widens an officer's scope
    async with server.client(env[2]["off_qd"]) as c:
        r = await c.get("/api/warnings", params={"region": "370100"})
        assert r.json() == {"items": [], "total": 0}
        r = await c.get("/api/warnings", params={"enterprise": E1})
        assert r.json() == {"items": [], "total": 0}


# ------------------------------------------------------------------ readings


@pytest.mark.parametrize(("user", "enterprise"), list(itertools.product(USERS, ENTERPRISES)))
async def test_readings_scope(env, user, enterprise):
    server, world, tokens = env
    sid = world.sensors[enterprise]
    async with server.client(tokens[user]) as c:
        r = await c.get(f"/api/sensors/{sid}/readings")
    if enterprise in sees(user):
        assert r.status_code == 200
        body = r.json()
        assert set(body["sensor"]) == SENSOR_KEYS and body["sensor"]["id"] == sid
        assert body["resolution"] == "raw" and len(body["points"]) == 100
    else:
        assert r.status_code == 404 and r.json() == {"detail": "no such sensor"}


async def test_readings_resolution_and_points(env):
    server, world, tokens = env
    sid = world.sensors[E1]
    now = datetime.now(UTC)
    async with server.client(tokens["admin"]) as c:
        async def get(**params):
            r = await c.get(f"/api/sensors/{sid}/readings", params=params)
            assert r.status_code == 200, r.text
            return r.json()

        raw = await get()
        points = raw["points"]
        assert [p[0] for p in points] == sorted(p[0] for p in points)
        assert all(p[1] == p[2] == p[3] for p in points)
        assert raw["capped"] is False and raw["limit"] == 5000
        assert rfc3339(raw["to"]) - rfc3339(raw["from"]) == timedelta(hours=6)
        day = await get(**{"from": (now - timedelta(days=3)).isoformat(), "to": now.isoformat()})
        assert day["resolution"] == "1m"
        assert sum(1 for _ in day["points"]) in range(16, 19)    # 1000 s of readings
        for p in day["points"]:
            assert p[2] <= p[1] <= p[3]
        month = await get(**{"from": (now - timedelta(days=30)).isoformat(), "to": now.isoformat()})
        assert month["resolution"] == "1h" and 1 <= len(month["points"]) <= 2
        hourly = await get(resolution="1h")
        assert hourly["resolution"] == "1h"
        six_h = await get(**{"from": (now - timedelta(hours=6)).isoformat(), "to": now.isoformat()})
        assert six_h["resolution"] == "raw"
        seven_d = await get(**{"from": (now - timedelta(days=7)).isoformat(), "to": now.isoformat()})
        assert seven_d["resolution"] == "1m"
        for bad in ({"from": now.isoformat(), "to": (now - timedelta(hours=1)).isoformat()},
                    {"from": "2024-01-01T00:00:00"},                    # no time zone
                    {"from": "yesterday"}, {"resolution": "5m"}):
            r = await c.get(f"/api/sensors/{sid}/readings", params=bad)
            assert r.status_code == 422, (bad, r.text)
        assert (await c.get("/api/sensors/999999/readings")).status_code == 404


async def test_readings_are_capped(env):
    server, world, tokens = env
    sid = world.sensors[E3]
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO readings (ts, sensor_id, value) "
                     "SELECT now() - interval '1 hour' + make_interval(secs => g * 0.5), %s, g "
                     "FROM generate_series(1, 6000) g ON CONFLICT DO NOTHING", (sid,))
    async with server.client(tokens["off_qd"]) as c:
        r = await c.get(f"/api/sensors/{sid}/readings", params={"resolution": "raw"})
    body = r.json()
    assert body["capped"] is True and len(body["points"]) == 5000
    values = [p[1] for p in body["points"] if p[1] >= 1 and p[1] == int(p[1])]
    assert max(values) == 6000          # the newest are kept
    assert [p[0] for p in body["points"]] == sorted(p[0] for p in body["points"])


# ------------------------------------------------------------------ registry, onboarding, dead letters


@pytest.mark.parametrize("user", list(USERS))
async def test_registry_scope(env, user):
    server, world, tokens = env
    async with server.client(tokens[user]) as c:
        listed = (await c.get("/api/registry/enterprises")).json()
        assert {e["code"] for e in listed} == sees(user)
        for e in listed:
            assert set(e) == {"code", "name", "region", "sites", "gateways"}
            assert set(e["region"]) == {"code", "name"}
            assert all(set(g) == {"code", "online", "last_seen"} for g in e["gateways"])
        for code in ENTERPRISES:
            r = await c.get(f"/api/registry/enterprises/{code}")
            if code in sees(user):
                assert r.status_code == 200
                detail = r.json()
                sensors = [s for site in detail["sites"] for s in site["sensors"]]
                assert world.sensors[code] in {s["id"] for s in sensors}
                assert all(set(s) == SENSOR_KEYS for s in sensors)
            else:
                assert r.status_code == 404 and r.json() == {"detail": "no such enterprise"}
        assert (await c.get(f"/api/registry/enterprises/{UNKNOWN_ENTERPRISE}")).status_code == 404


@pytest.mark.parametrize("user", list(USERS))
async def test_onboarding_and_dead_letters_scope(env, user):
    server, _, tokens = env
    expected = sees(user) | ({UNKNOWN_ENTERPRISE} if user == "admin" else set())
    async with server.client(tokens[user]) as c:
        tags = (await c.get("/api/onboarding")).json()
        assert {t["enterprise"] for t in tags} == expected
        assert all(set(t) == {"enterprise", "gateway", "tag", "count", "first_seen", "last_seen",
                              "last_value"} for t in tags)
        letters = (await c.get("/api/dead-letters")).json()
        assert {d["enterprise"] for d in letters} == expected
        for d in letters:
            assert {"id", "received_at", "topic", "reason", "errors", "accepted", "rejected",
                    "payload_text"} <= set(d)
            assert d["payload_text"] == f'{{"from": "{d["enterprise"]}"'
        for code in ENTERPRISES:
            narrowed = (await c.get("/api/onboarding", params={"enterprise": code})).json()
            assert {t["enterprise"] for t in narrowed} == ({code} & expected)
            narrowed = (await c.get("/api/dead-letters",
                                    params={"enterprise": code, "limit": 1})).json()
            assert {d["enterprise"] for d in narrowed} == ({code} & expected)


# ------------------------------------------------------------------ KPIs


@pytest.mark.parametrize("user", list(USERS))
async def test_kpis_scope(env, user):
    server, world, tokens = env
    with psycopg.connect(world.dsn) as conn:
        open_now = conn.execute(
            "SELECT count(*) FROM warnings w JOIN sites s ON s.id = w.site_id "
            "JOIN enterprises e ON e.id = s.enterprise_id "
            "WHERE w.closed_at IS NULL AND e.code = ANY(%s)", (sorted(sees(user)),)).fetchone()[0]
    async with server.client(tokens[user]) as c:
        r = await c.get("/api/kpis")
        assert r.status_code == 200, r.text
        k = r.json()
        assert {"gateways", "warnings", "mtta_s", "mttc_s", "overdue", "alarm_rate",
                "chattering"} <= set(k)
        assert k["warnings"]["open"] == open_now
        assert k["gateways"]["total"] == len(sees(user))
        # a region outside the scope adds nothing
        r = await c.get("/api/kpis", params={"region": "370211"})
        assert r.json()["gateways"]["total"] == len(sees(user) & {E3})
        r = await c.get("/api/kpis", params={"from": "2030-01-02T00:00:00Z",
                                             "to": "2030-01-01T00:00:00Z"})
        assert r.status_code == 422


# ------------------------------------------------------------------ security headers


async def test_security_headers_on_every_kind_of_response(env):
    server, world, tokens = env
    async with server.client() as anon, server.client(tokens["admin"]) as c:
        responses = {
            "api 200": await c.get("/api/me"),
            "api 401": await anon.get("/api/warnings"),
            "api 404": await c.get("/api/warnings/999999"),
            "api 422": await c.get("/api/warnings", params={"limit": "x"}),
            "login 401": await anon.post("/api/login", json={"username": "x", "password": "y"}),
            "console /": await anon.get("/"),
            "console page": await anon.get("/login.html"),
            "console missing": await anon.get("/no-such-page.html"),
            "healthz-like unknown": await anon.get("/api/nope"),
            "openapi": await anon.get("/openapi.json"),
        }
        docs = await anon.get("/docs")
    assert responses["console /"].status_code == 200
    assert "text/html" in responses["console /"].headers["content-type"]
    for name, r in {**responses, "docs": docs}.items():
        for header, value in SECURITY_HEADERS.items():
            assert r.headers.get(header) == value, (name, header)
        csp = r.headers["content-security-policy"]
        assert csp.startswith("default-src 'self'"), name
        assert "frame-ancestors 'none'" in csp
        if name != "docs":
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, name
            assert "script-src 'self';" in csp
    assert responses["api 200"].headers["cache-control"] == "no-store"


async def test_openapi_documents_the_contract(env):
    server, _, _ = env
    async with server.client() as c:
        paths = (await c.get("/openapi.json")).json()["paths"]
    for path in ("/api/login", "/api/logout", "/api/me", "/api/warnings",
                 "/api/warnings/{warning_id}", "/api/warnings/{warning_id}/acknowledge",
                 "/api/warnings/{warning_id}/comment", "/api/warnings/{warning_id}/dispose",
                 "/api/warnings/{warning_id}/close", "/api/warnings/{warning_id}/shelve",
                 "/api/warnings/{warning_id}/unshelve", "/api/sensors/{sensor_id}/readings",
                 "/api/kpis", "/api/registry/enterprises", "/api/registry/enterprises/{code}",
                 "/api/onboarding", "/api/dead-letters", "/api/events/stream"):
        assert path in paths, path


# ------------------------------------------------------------------ injection strings

INJECTIONS = [
    "' OR '1'='1",
    "1 OR 1=1",
    "1; DROP TABLE users; --",
    "370105' OR 1=1 --",
    "\" OR \"\"=\"",
    "') UNION SELECT password_hash, 1 FROM users --",
    "%",
    "_",
    "\\",
    "\x00",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "{{7*7}}",
    "$(id)",
    "天桥区'--",
    "9" * 40,
    "-1",
    "a" * 5000,
]


async def test_injection_strings_are_data(env):
    """Every query and path parameter, with hostile values: never a 500, never someone
    else's data, and the database is intact afterwards."""
    server, world, tokens = env
    wid, sid = world.warnings[E1], world.sensors[E1]
    with psycopg.connect(world.dsn) as conn:
        users_before = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    query_params = {
        "/api/warnings": ["state", "level", "region", "enterprise", "site_kind", "cause",
                          "limit", "offset"],
        f"/api/sensors/{sid}/readings": ["from", "to", "resolution"],
        "/api/kpis": ["from", "to", "region"],
        "/api/onboarding": ["enterprise"],
        "/api/dead-letters": ["enterprise", "limit"],
    }
    path_templates = ["/api/warnings/{}", "/api/sensors/{}/readings",
                      "/api/registry/enterprises/{}", "/api/warnings/{}/comment"]
    async with server.client(tokens["ent1"]) as c:
        for value in INJECTIONS:
            for path, names in query_params.items():
                for name in names:
                    r = await c.get(path, params={name: value})
                    assert r.status_code in (200, 404, 422), (path, name, value, r.status_code)
                    if r.status_code == 200:
                        text = r.text
                        for other in (E2, E3, UNKNOWN_ENTERPRISE):
                            assert other not in text, (path, name, value)
                        assert "argon2" not in text
            for template in path_templates:
                path = template.format(quote(value, safe=""))
                if template.endswith("comment"):
                    r = await c.post(path, json={"text": value})
                else:
                    r = await c.get(path)
                assert r.status_code in (404, 405, 422), (path, r.status_code)
            # bodies: stored as text, returned as text
            r = await c.post(f"/api/warnings/{wid}/comment", json={"text": value[:4000]})
            assert r.status_code in (200, 422), (value, r.text)
            if r.status_code == 200:
                assert r.json()["detail"]["text"] == value[:4000].strip()
            r = await c.post("/api/login", json={"username": value[:100], "password": value})
            assert r.status_code in (401, 422), (value, r.text)
        r = await c.post("/api/login", json={"username": INJECTIONS[0], "password": INJECTIONS[2]})
        assert r.status_code == 401
    with psycopg.connect(world.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == users_before
        assert conn.execute("SELECT count(*) FROM warnings WHERE id = %s", (wid,)).fetchone()[0] == 1


# ------------------------------------------------------------------ the event stream


async def test_stream_delivers_events_in_scope_and_resumes(env):
    server, world, tokens = env
    dsn = world.dsn
    async with server.client(tokens["ent1"]) as c, c.stream("GET", "/api/events/stream") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-content-type-options"] == "nosniff"
        sse = Sse(r)
        hello = await sse.frame()
        assert hello["retry"] == "3000"
        with psycopg.connect(dsn, autocommit=True) as conn:
            foreign = add_event(conn, world.warnings[E2], "commented", 3, {"text": "E2"})
            mine = add_event(conn, world.warnings[E1], "commented", 4, {"text": "E1"})
        frame = await sse.data()
        assert frame["event"] == "warning" and int(frame["id"]) == mine
        assert foreign < mine
        data = frame["data"]
        assert set(data) == {"event", "warning"}
        assert set(data["event"]) == EVENT_KEYS and data["event"]["id"] == mine
        assert data["event"]["detail"] == {"text": "E1"}
        assert set(data["warning"]) == WARNING_KEYS
        assert data["warning"]["id"] == world.warnings[E1]
    # while disconnected: two more; resume after the last one seen
    with psycopg.connect(dsn, autocommit=True) as conn:
        missed = [add_event(conn, world.warnings[E1], "commented", 4, {"n": i}) for i in range(2)]
        add_event(conn, world.warnings[E3], "commented", 2)
    async with server.client(tokens["ent1"]) as c:
        async with c.stream("GET", "/api/events/stream",
                            headers={"Last-Event-ID": str(mine)}) as r:
            sse = Sse(r)
            got = [int((await sse.data())["id"]) for _ in missed]
            assert got == missed
        # the same with ?after= for clients that cannot set the header
        async with c.stream("GET", "/api/events/stream", params={"after": str(missed[0])}) as r:
            assert int((await Sse(r).data())["id"]) == missed[1]
        # a new client starts at the newest event: it gets the next one, nothing older
        async with c.stream("GET", "/api/events/stream") as r:
            sse = Sse(r)
            await sse.frame()
            with psycopg.connect(dsn, autocommit=True) as conn:
                nxt = add_event(conn, world.warnings[E1], "commented", 4)
            assert int((await sse.data())["id"]) == nxt


async def test_stream_scope_per_role(env):
    server, world, tokens = env
    for user in ("admin", "off_jn", "off_qd", "ent2"):
        async with server.client(tokens[user]) as c, c.stream("GET", "/api/events/stream") as r:
            sse = Sse(r)
            await sse.frame()
            with psycopg.connect(world.dsn, autocommit=True) as conn:
                ids = {code: add_event(conn, world.warnings[code], "commented", 1)
                       for code in ENTERPRISES}
            expected = sorted(ids[code] for code in sees(user))
            got = [int((await sse.data())["id"]) for _ in expected]
            assert got == expected, user
            # nothing out of scope slipped in before the marker
            with psycopg.connect(world.dsn, autocommit=True) as conn:
                marker = add_event(conn, world.warnings[sorted(sees(user))[0]], "commented", 1)
            assert int((await sse.data())["id"]) == marker


async def test_stream_delivers_an_event_that_commits_late(env):
    """Event ids are taken in one order and committed in another: the stream still sends
    the earlier id once its transaction commits."""
    server, world, tokens = env
    async with server.client(tokens["admin"]) as c, c.stream("GET", "/api/events/stream") as r:
        sse = Sse(r)
        await sse.frame()
        slow = psycopg.connect(world.dsn)
        try:
            early = add_event(slow, world.warnings[E1], "commented", 4, {"slow": True})
            with psycopg.connect(world.dsn, autocommit=True) as fast:
                late = add_event(fast, world.warnings[E2], "commented", 3, {"fast": True})
            assert early < late
            assert int((await sse.data())["id"]) == late
            await asyncio.sleep(0.7)
            slow.commit()
        finally:
            slow.close()
        frame = await sse.data(timeout=5)
        assert int(frame["id"]) == early and frame["data"]["event"]["detail"] == {"slow": True}


async def test_stream_heartbeat_and_revocation(env):
    server, _, _ = env
    token = await server.login("off_sd")
    async with server.client(token) as c, c.stream("GET", "/api/events/stream") as r:
        sse = Sse(r)
        await sse.frame()
        beat = await sse.frame(timeout=3)
        assert beat["comments"] == ["ping"]
        assert (await c.post("/api/logout")).status_code == 204
        with pytest.raises(EOFError):      # the stream ends at the next heartbeat
            for _ in range(10):
                await sse.frame(timeout=3)


async def test_stream_ignores_a_hostile_last_event_id(env):
    server, world, tokens = env
    async with server.client(tokens["admin"]) as c:
        hostile = ("1 OR 1=1", "-5", "١٢", "²", "9" * 30, "abc")
        for header, value in itertools.product(("Last-Event-ID", None), hostile):
            request = ({"headers": {header: value.encode()}} if header
                       else {"params": {"after": value}})
            async with c.stream("GET", "/api/events/stream", **request) as r:
                assert r.status_code == 200
                sse = Sse(r)
                await sse.frame()
                with psycopg.connect(world.dsn, autocommit=True) as conn:
                    nxt = add_event(conn, world.warnings[E1], "commented", 4)
                assert int((await sse.data())["id"]) == nxt, value


# ------------------------------------------------------------------ `hazardwatch serve`


@pytest.mark.slow
async def test_serve_wires_api_console_escalation_and_dispatcher(project_broker, tmp_path):
    """The real process: a user added with the CLI signs in; the console is served with the
    security headers; the escalation ticker and the outbox dispatcher run beside the
    collector (an overdue warning escalates, the event reaches a webhook and the SSE
    stream); SIGTERM ends it promptly even with a stream open."""
    import json
    import subprocess
    import time

    import httpx
    from harness import HAZARDWATCH, Serve
    from httpsink import HttpSink

    from hazardwatch.registry import import_file

    with fresh_database("hw_api_serve") as dsn, HttpSink() as sink:
        import_file(dsn, REGISTRY)
        added = subprocess.run(
            [HAZARDWATCH, "user", "add", "root", "--role", "admin", "--password-stdin"],
            input="serve-pass-1\n", text=True, capture_output=True,
            env={**os.environ, "HW_DATABASE_URL": dsn}, timeout=60)
        assert added.returncode == 0, added.stderr + added.stdout
        receivers = [{"name": "hook", "type": "webhook", "url": sink.url,
                      "actions": ["escalated"]}]
        serve = Serve(dsn, project_broker, tmp_path, HW_MQTT__CLIENT_ID="hw-ingest-api-serve",
                      HW_ALERTING__ESCALATION__TICK_S="0.2",
                      HW_ALERTING__RECEIVERS=json.dumps(receivers))
        await asyncio.to_thread(serve.start)
        try:
            base = f"http://127.0.0.1:{serve.http_port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as c:
                page = await c.get("/")
                assert page.status_code == 200 and "<html" in page.text
                assert page.headers["content-security-policy"].startswith("default-src 'self'")
                assert (await c.get("/login.html")).status_code == 200
                assert (await c.get("/readyz")).status_code == 200
                r = await c.post("/api/login", json={"username": "root", "password": "serve-pass-1"})
                assert r.status_code == 200, r.text
                c.headers["Authorization"] = f"Bearer {r.json()['token']}"
                async with c.stream("GET", "/api/events/stream") as stream:
                    sse = Sse(stream)
                    await sse.frame()
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        wid = make_warning(conn, E1, "overfill", level=4,
                                           raised_at=datetime.now(UTC) - timedelta(minutes=10))
                    raised = await sse.data()
                    assert raised["data"]["event"]["action"] == "raised"
                    escalated = await sse.data(timeout=15)
                    assert escalated["data"]["event"]["action"] == "escalated"
                    assert escalated["data"]["warning"]["escalation"] == 1
                    hook = await asyncio.to_thread(sink.wait_for, 1, 15)
                    assert hook[0].headers["x-hazardwatch-event-id"] == escalated["id"]
                    w = (await c.get(f"/api/warnings/{wid}")).json()
                    assert [e["action"] for e in w["events"]] == ["raised", "escalated"]
                    started = time.monotonic()
                    serve.proc.terminate()           # SIGTERM with the stream still open
                    await asyncio.to_thread(serve.proc.wait, 15)
                    assert time.monotonic() - started < 12
            assert serve.proc.returncode == 0, serve.log_tail()
            log = serve.log_path.read_text()
            assert "Traceback" not in log and "rror" not in log, log
        finally:
            serve.stop()
