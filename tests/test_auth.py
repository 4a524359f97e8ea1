"""Sign-in and sessions (alerting/api/auth.py) against a real PostgreSQL and uvicorn:
argon2id hashes, hashed tokens, generic failures, rate limiting, expiry, revocation,
disabled users, cookie flags, CSRF; and `hazardwatch user add | list | disable`."""

from __future__ import annotations

import hashlib
import statistics
import time
from datetime import timedelta

import psycopg
import pytest
from apihelp import E1, PASSWORD, ApiServer, seed
from click.testing import CliRunner
from dbutil import fresh_database

from alerting.api.auth import csrf_for
from alerting.api.users import add_user, disable_user
from hazardwatch.cli import main

ATTEMPTS, WINDOW_S, TTL_S = 3, 60, 120


@pytest.fixture(scope="module")
async def env():
    with fresh_database("hw_auth") as dsn:
        world = seed(dsn)
        server = await ApiServer(dsn, heartbeat_s=0.5, login_attempts=ATTEMPTS,
                                 login_window_s=WINDOW_S, token_ttl_s=TTL_S).start()
        try:
            yield server, world
        finally:
            await server.stop()


@pytest.fixture
def clock(env):
    server, _ = env
    yield server.clock
    server.clock.offset = timedelta(0)


def cookie_attrs(response, name: str) -> dict[str, str | bool]:
    for header in response.headers.get_list("set-cookie"):
        first, *attrs = [p.strip() for p in header.split(";")]
        key, _, value = first.partition("=")
        if key == name:
            out: dict[str, str | bool] = {"value": value}
            for a in attrs:
                k, sep, v = a.partition("=")
                out[k.lower()] = v if sep else True
            return out
    raise AssertionError(f"no Set-Cookie for {name}")


# ------------------------------------------------------------------ sign-in


async def test_login_answer_cookies_and_hashes(env):
    server, world = env
    async with server.client() as c:
        r = await c.post("/api/login", json={"username": "off_tq", "password": PASSWORD})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"token", "expires_at", "user"}
    token = body["token"]
    assert len(token) >= 43
    assert body["user"]["username"] == "off_tq" and body["user"]["role"] == "officer"
    assert body["user"]["region"] == {"code": "370105", "name": "天桥区"}
    session = cookie_attrs(r, "hw_session")
    assert session["value"] == token and session["httponly"] is True
    assert session["samesite"].lower() == "strict" and session["path"] == "/"
    assert session["max-age"] == str(TTL_S) and "secure" not in session
    csrf = cookie_attrs(r, "hw_csrf")
    assert csrf["value"] == csrf_for(token) and "httponly" not in csrf
    assert csrf["samesite"].lower() == "strict"
    with psycopg.connect(world.dsn) as conn:
        (pw_hash,) = conn.execute("SELECT password_hash FROM users WHERE username = 'off_tq'").fetchone()
        assert pw_hash.startswith("$argon2id$")
        hashes = [bytes(h) for (h,) in conn.execute("SELECT token_hash FROM api_tokens")]
        assert hashlib.sha256(token.encode()).digest() in hashes
        dump = conn.execute("SELECT string_agg(t::text, ' ') FROM api_tokens t").fetchone()[0]
        assert token not in dump


async def test_wrong_password_and_unknown_user_look_the_same(env):
    server, _ = env
    async with server.client() as c:
        async def attempt(username: str) -> tuple[float, int, dict]:
            started = time.perf_counter()
            r = await c.post("/api/login", json={"username": username, "password": "wrong-pass"})
            return time.perf_counter() - started, r.status_code, r.json()

        known = [await attempt(f"{name}") for name in ("ent2", "off_qd")]
        unknown = [await attempt(f"ghost{i}") for i in range(2)]
        odd = await attempt("no such user with spaces")
    for _, status, body in known + unknown + [odd]:
        assert status == 401 and body == {"detail": "invalid username or password"}
    # an unknown name is checked against a dummy hash: no fast "no such user" path
    known_t = statistics.median(t for t, _, _ in known)
    assert min(t for t, _, _ in unknown + [odd]) > 0.3 * known_t


async def test_rate_limit_per_user_and_client(env, clock):
    server, _ = env
    async with server.client() as c:
        async def login(username: str, password: str):
            return await c.post("/api/login", json={"username": username, "password": password})

        for _ in range(ATTEMPTS):
            assert (await login("off_jn", "nope-nope")).status_code == 401
        r = await login("off_jn", PASSWORD)                      # even the right one, now
        assert r.status_code == 429
        assert 0 < int(r.headers["retry-after"]) <= WINDOW_S
        assert "try again later" in r.json()["detail"]
        assert (await login("off_sd", PASSWORD)).status_code == 200   # another user: fine
        for _ in range(ATTEMPTS):                                 # unknown names count too
            assert (await login("nobody", "x")).status_code == 401
        assert (await login("nobody", "x")).status_code == 429
        clock.offset = timedelta(seconds=WINDOW_S + 1)            # the window passes
        assert (await login("off_jn", PASSWORD)).status_code == 200
        # a success clears the count
        for _ in range(ATTEMPTS - 1):
            assert (await login("off_jn", "nope-nope")).status_code == 401
        assert (await login("off_jn", PASSWORD)).status_code == 200
        assert (await login("off_jn", "nope-nope")).status_code == 401
        assert (await login("off_jn", PASSWORD)).status_code == 200


async def test_token_expires(env, clock):
    server, _ = env
    token = await server.login("off_qd")
    async with server.client(token) as c:
        assert (await c.get("/api/me")).status_code == 200
        clock.offset = timedelta(seconds=TTL_S - 5)
        assert (await c.get("/api/me")).status_code == 200
        clock.offset = timedelta(seconds=TTL_S + 1)
        r = await c.get("/api/me")
        assert r.status_code == 401 and r.json() == {"detail": "invalid or expired token"}


async def test_logout_revokes_the_token(env):
    server, world = env
    token = await server.login("ent2")
    async with server.client(token) as c:
        r = await c.post("/api/logout")
        assert r.status_code == 204
        assert cookie_attrs(r, "hw_session")["max-age"] == "0"
        assert cookie_attrs(r, "hw_csrf")["max-age"] == "0"
        assert (await c.get("/api/me")).status_code == 401
        assert (await c.post("/api/logout")).status_code == 401
    with psycopg.connect(world.dsn) as conn:
        revoked = conn.execute("SELECT revoked_at FROM api_tokens WHERE token_hash = %s",
                               (hashlib.sha256(token.encode()).digest(),)).fetchone()[0]
    assert revoked is not None
    other = await server.login("ent2")          # other sessions of the user are untouched
    async with server.client(other) as c:
        assert (await c.get("/api/me")).status_code == 200


async def test_disabled_user_is_refused(env):
    server, world = env
    add_user(world.dsn, "leaver", PASSWORD, "enterprise", enterprise=E1)
    token = await server.login("leaver")
    async with server.client(token) as c:
        assert (await c.get("/api/warnings")).status_code == 200
        with psycopg.connect(world.dsn, autocommit=True) as conn:   # disabled by hand: the
            conn.execute("UPDATE users SET disabled = true WHERE username = 'leaver'")  # token dies
        assert (await c.get("/api/warnings")).status_code == 401
        r = await c.post("/api/login", json={"username": "leaver", "password": PASSWORD})
        assert r.status_code == 401 and r.json() == {"detail": "invalid username or password"}
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute("UPDATE users SET disabled = false WHERE username = 'leaver'")
    token = await server.login("leaver")
    assert disable_user(world.dsn, "leaver") >= 1                     # revokes as well
    async with server.client(token) as c:
        assert (await c.get("/api/me")).status_code == 401


# ------------------------------------------------------------------ cookies and CSRF


async def test_cookie_session_needs_csrf_for_posts(env):
    server, world = env
    wid = world.warnings[E1]
    async with server.client() as c:
        r = await c.post("/api/login", json={"username": "ent1", "password": PASSWORD})
        token = r.json()["token"]
        csrf = c.cookies["hw_csrf"]
        assert (await c.get("/api/me")).status_code == 200          # reads need no token
        comment = f"/api/warnings/{wid}/comment"
        r = await c.post(comment, json={"text": "no csrf"})
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        r = await c.post(comment, json={"text": "wrong"}, headers={"X-CSRF-Token": "x" * 43})
        assert r.status_code == 403
        r = await c.post(comment, json={"text": "ok"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200
        assert (await c.post("/api/logout")).status_code == 403      # logout is a POST too
    # a planted pair (cookie and header agree, but not with the session) is refused
    async with server.client(cookies={"hw_session": token, "hw_csrf": "planted"}) as c:
        r = await c.post(comment, json={"text": "x"}, headers={"X-CSRF-Token": "planted"})
        assert r.status_code == 403
    # the cookie alone (no hw_csrf cookie) with the right header is refused too
    async with server.client(cookies={"hw_session": token}) as c:
        r = await c.post(comment, json={"text": "x"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 403
    # bearer requests need no CSRF token
    async with server.client(token) as c:
        assert (await c.post(comment, json={"text": "bearer"})).status_code == 200


async def test_secure_cookies_behind_tls(env):
    _, world = env
    server = await ApiServer(world.dsn, cookie_secure=True).start()
    try:
        async with server.client() as c:
            r = await c.post("/api/login", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 200
        assert cookie_attrs(r, "hw_session")["secure"] is True
        assert cookie_attrs(r, "hw_csrf")["secure"] is True
    finally:
        await server.stop()


async def test_tokens_and_passwords_are_never_logged(env, capfd):
    server, world = env
    token = await server.login("admin")
    async with server.client(token) as c:
        await c.get("/api/warnings")
        await c.post("/api/login", json={"username": "admin", "password": "wrong-secret-99"})
        await c.post("/api/logout")
    out, err = capfd.readouterr()
    assert "login" in out + err
    for secret in (token, PASSWORD, "wrong-secret-99", csrf_for(token)):
        assert secret not in out + err


# ------------------------------------------------------------------ hazardwatch user …


def cli(dsn: str, *args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input,
                              env={"HW_DATABASE_URL": dsn, "HW_LOG_LEVEL": "WARNING"})


async def test_cli_user_add_list_disable(env):
    server, world = env
    dsn = world.dsn
    r = cli(dsn, "user", "add", "duty.li", "--role", "officer", "--region", "370100",
            "--name", "李值班", "--password-stdin", input="s3cret-pass-1\n")
    assert r.exit_code == 0, r.output
    assert "added user duty.li" in r.output and "370100" in r.output
    # prompted, hidden and confirmed (a mismatch asks again)
    r = cli(dsn, "user", "add", "ent.wang", "--role", "enterprise", "--enterprise", E1,
            input="first-pass-1\nsecond-pass-2\nagreed-pass-3\nagreed-pass-3\n")
    assert r.exit_code == 0, r.output
    assert "agreed-pass-3" not in r.output
    r = cli(dsn, "user", "add", "root2", "--role", "admin", "--password-stdin",
            input="admin-pass-9\n")
    assert r.exit_code == 0, r.output
    token = await server.login("duty.li", "s3cret-pass-1")
    async with server.client(token) as c:
        me = (await c.get("/api/me")).json()
        assert me["display_name"] == "李值班" and me["region"]["code"] == "370100"
    assert await server.login("ent.wang", "agreed-pass-3")
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT password_hash FROM users WHERE username = 'duty.li'").fetchone()[0]
    assert stored.startswith("$argon2id$") and "s3cret" not in stored

    refused = {
        ("duty.li", "--role", "admin"): "exists already",
        ("x1", "--role", "officer"): "needs --region",
        ("x2", "--role", "officer", "--region", "999999"): "no region 999999",
        ("x3", "--role", "enterprise"): "needs --enterprise",
        ("x4", "--role", "enterprise", "--enterprise", "91370000MA3C99999X"): "no enterprise",
        ("x5", "--role", "admin", "--region", "370100"): "for officers only",
        ("bad name", "--role", "admin"): "user name may have",
        ("x6", "--role", "boss"): "Invalid value for '--role'",
    }
    for args, message in refused.items():
        r = cli(dsn, "user", "add", *args, "--password-stdin", input="long-enough-1\n")
        assert r.exit_code != 0 and message in r.output, (args, r.output)
    r = cli(dsn, "user", "add", "x7", "--role", "admin", "--password-stdin", input="short\n")
    assert r.exit_code != 0 and "at least 8" in r.output

    r = cli(dsn, "user", "list")
    assert r.exit_code == 0
    lines = {line.split()[0]: line for line in r.output.splitlines()[1:]}
    assert "officer" in lines["duty.li"] and "370100" in lines["duty.li"]
    assert E1 in lines["ent.wang"] and "active" in lines["ent.wang"]
    assert "x1" not in lines

    r = cli(dsn, "user", "disable", "duty.li")
    assert r.exit_code == 0 and "disabled user duty.li (1 token(s) revoked)" in r.output
    async with server.client(token) as c:
        assert (await c.get("/api/me")).status_code == 401
    assert "disabled" in cli(dsn, "user", "list").output
    r = cli(dsn, "user", "disable", "nobody")
    assert r.exit_code != 0 and "no user nobody" in r.output
