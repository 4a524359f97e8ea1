"""`hazardwatch demo` end to end: the real command as a child process, a fresh database,
the project's broker (gateways with passwords), the console on a free port."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from dbutil import fresh_database
from harness import HAZARDWATCH, free_port

from hazardwatch.demo import demo_users, load_loop

FIRST_WARNING_S = 90.0     # the issue: a newcomer sees warnings within a minute
SETUP_S = 60.0
STOP_S = 40.0              # the gateways' offline, the collector's last batch, uvicorn


class Demo:
    """One `hazardwatch demo` process in a session of its own (so every process it might
    start can be found after it exits)."""

    def __init__(self, dsn: str, broker, gateway_password: str, log_dir: Path, *args: str,
                 user_password: str = "demo-password-1") -> None:
        self.port = free_port()
        self.stdout = log_dir / f"demo-{self.port}.out"
        self.stderr = log_dir / f"demo-{self.port}.err"
        env = {**os.environ,
               "HW_DATABASE_URL": dsn,
               "HW_MQTT__HOST": broker.host,
               "HW_MQTT__PORT": str(broker.port),
               "HW_MQTT__USERNAME": broker.collector.username,
               "HW_MQTT__PASSWORD": broker.collector.password,
               "HW_MQTT__CLIENT_ID": f"hw-demo-test-{secrets.token_hex(4)}",
               "HW_SIM_GATEWAY_PASSWORD": gateway_password,
               "HW_DEMO_PASSWORD": user_password}
        self.started = time.monotonic()
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen([HAZARDWATCH, "demo", "--port", str(self.port), *args],
                                         env=env, stdout=out, stderr=err, start_new_session=True)

    def output(self) -> str:
        return self.stdout.read_text(errors="replace")

    def log_tail(self, n: int = 40) -> str:
        out = self.output().splitlines()[-n:]
        err = self.stderr.read_text(errors="replace").splitlines()[-n:]
        return "--- stdout ---\n" + "\n".join(out) + "\n--- stderr ---\n" + "\n".join(err)

    def wait_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None:
                pytest.fail(f"demo exited with {self.proc.returncode} before printing {text!r}:\n"
                            f"{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"demo did not print {text!r} within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def session_processes(self) -> list[int]:
        """Live processes of the demo's session (its own pid included while it runs)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[3]) == self.proc.pid:   # state, ..., session id
                found.append(int(entry.name))
        return found

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"demo still running {STOP_S:g} s after {sig.name}:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def fleet_broker(fresh_broker):
    """The project's broker with every gateway of the demo fleet (one password for all)."""
    password = secrets.token_urlsafe(12)
    for ent, gw, _site in load_loop().gateways():
        fresh_broker.add_gateway(ent, gw, password=password)
    return fresh_broker, password


def _rows(dsn: str, sql: str, params=()) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def _http(url: str, data: dict | None = None, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=orjson.dumps(data) if data is not None else None,
                                 headers=headers)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, r.read()


def _retained_states(broker, topics: list[str], timeout: float = 10.0) -> dict[str, bytes]:
    """The retained payload on each state topic, read as the collector."""
    got: dict[str, bytes] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"hw-demo-test-state-{secrets.token_hex(4)}")
    client.username_pw_set(broker.collector.username, broker.collector.password)
    client.on_message = lambda c, u, msg: got.__setitem__(msg.topic, msg.payload)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while len(got) < len(topics) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    return got


@pytest.mark.slow
def test_demo_raises_warnings_serves_the_console_and_stops_cleanly(fleet_broker, tmp_path):
    broker, gateway_password = fleet_broker
    sc = load_loop()
    users = {u.username: u for u in demo_users(sc)}
    with fresh_database("hw_test_demo", migrated=False) as dsn:
        demo = Demo(dsn, broker, gateway_password, tmp_path, user_password="demo-password-1")
        try:
            # (a) the users are created and printed, with the password and the console URL
            demo.wait_output("fleet:", SETUP_S)
            rows = {r[0]: r[1:] for r in _rows(
                dsn, "SELECT u.username, u.role, u.region, e.code FROM users u "
                     "LEFT JOIN enterprises e ON e.id = u.enterprise_id")}
            assert rows == {"admin": ("admin", None, None),
                            "officer": ("officer", "370100", None),
                            "chem": ("enterprise", None, users["chem"].enterprise)}
            out = demo.output()
            for name in ("admin", "officer", "chem"):
                assert f"user      {name} " in out, out
            assert "demo-password-1" in out
            assert f"http://127.0.0.1:{demo.port}/" in out

            # (b) an incident of the simulated fleet becomes a warning
            deadline = demo.started + FIRST_WARNING_S
            warnings: list[tuple] = []
            while not warnings:
                warnings = _rows(dsn, "SELECT w.cause, st.code FROM warnings w "
                                      "JOIN sites st ON st.id = w.site_id WHERE w.kind = 'process'")
                if demo.proc.poll() is not None:
                    pytest.fail(f"demo exited with {demo.proc.returncode}:\n{demo.log_tail()}")
                if not warnings and time.monotonic() > deadline:
                    pytest.fail(f"no process warning within {FIRST_WARNING_S:g} s of starting "
                                f"the demo:\n{demo.log_tail()}")
                time.sleep(0.5)
            print(f"first process warning {time.monotonic() - demo.started:.1f} s after start: "
                  f"{warnings[0]}")
            assert {site for _cause, site in warnings} <= {s.id for s in sc.sites}
            demo.wait_output("raised", 10)          # and the demo says so

            # (c) the console answers, and the officer of 济南市 sees the fleet's warnings
            base = f"http://127.0.0.1:{demo.port}"
            status, page = _http(f"{base}/login.html")
            assert status == 200 and b'id="login-form"' in page
            status, body = _http(f"{base}/api/login",
                                 {"username": "officer", "password": "demo-password-1"})
            token = orjson.loads(body)["token"]
            status, body = _http(f"{base}/api/warnings", token=token)
            assert status == 200 and orjson.loads(body)["total"] >= 1, body

            # (d) SIGINT: exit 0 in bounded time, no traceback, nothing left running, and
            # every gateway of the fleet says offline (retained)
            assert demo.session_processes() == [demo.proc.pid]
            assert demo.stop(signal.SIGINT) == 0, demo.log_tail()
            assert demo.session_processes() == []
            assert "Traceback" not in demo.output() + demo.stderr.read_text(), demo.log_tail()
            assert "stopped:" in demo.output()
            topics = [f"hw/v1/{ent}/{gw}/state" for ent, gw, _ in sc.gateways()]
            states = _retained_states(broker, topics)
            assert states == {t: b"offline" for t in topics}
        finally:
            demo.kill()


@pytest.mark.slow
def test_demo_twice_keeps_existing_users(fleet_broker, tmp_path):
    broker, gateway_password = fleet_broker
    query = "SELECT username, id, password_hash, role FROM users ORDER BY username"
    with fresh_database("hw_test_demo", migrated=False) as dsn:
        first = Demo(dsn, broker, gateway_password, tmp_path, "--no-serve",
                     user_password="first-password")
        try:
            first.wait_output("fleet:", SETUP_S)
            assert first.stop(signal.SIGINT) == 0, first.log_tail()
        finally:
            first.kill()
        before = _rows(dsn, query)
        assert [r[0] for r in before] == ["admin", "chem", "officer"]

        second = Demo(dsn, broker, gateway_password, tmp_path, "--no-serve",
                      user_password="second-password")
        try:
            second.wait_output("fleet:", SETUP_S)
            assert second.stop(signal.SIGTERM) == 0, second.log_tail()
        finally:
            second.kill()
        assert _rows(dsn, query) == before            # same ids, same password hashes
        out = second.output()
        assert out.count("exists: kept as it was") == 3, out
        assert "second-password" not in out


def test_demo_loop_raises_only_its_incidents_causes():
    """Through the rule engine, straight (no pipeline): six hours of the demo fleet up to
    midnight CST and two hours into the next simulated day raise only the causes of the
    loop's incidents, site by site (no artefact of a recovery, nor of the day's seam)."""
    import numpy as np

    from hazardwatch.demo import Fleet
    from rules.engine import Engine, SensorRow
    from rules.packs import load_packs
    from simulators.models import INCIDENTS
    from simulators.scenario import sensor_spec

    sc = load_loop()
    fleet = Fleet(sc, host="127.0.0.1", port=1, passwords=lambda ent, gw: "unused")
    expected = {(sid, cause) for sid, inc in sc.incidents for cause, *_ in INCIDENTS[inc.kind][1]}
    rows, slot, site_of = [], {}, {}
    for i, site in enumerate(sc.sites, start=1):
        site_of[i] = site.id
        for x in site.sensors:
            slot[(site.id, x.tag)] = len(rows) + 1
            rows.append(SensorRow(len(rows) + 1, i, None, site.kind, site.grade, sensor_spec(x)))
    engine = Engine(load_packs())
    engine.load(rows)
    day, raised = fleet.epoch_s, set()
    for e, t0, t1 in ((0, day - 6 * 3600, day), (1, 0.0, 2 * 3600)):
        ep = fleet._epoch(e, quiet=False).scenario
        recs = sorted((t + e * day, slot[(site.id, tag)], v)
                      for site in ep.sites
                      for tag, (ts, vs) in ep.readings(site.id, t0, t1).items()
                      for t, v in zip(ts.tolist(), vs.tolist(), strict=True))
        for i in range(0, len(recs), 500):
            a = np.array(recs[i:i + 500])
            changes = engine.readings(a[:, 1].astype(np.int64), a[:, 0], a[:, 2],
                                      np.zeros(len(a), np.int16), float(a[-1, 0]))
            raised |= {(site_of[ep_.site_id], ep_.cause.name)
                       for ep_, action, _ in changes.events if action in ("raised", "reactivated")}
    assert raised - expected == set()
    assert len(raised) >= 8          # the incidents themselves are seen: five kinds, five sites
