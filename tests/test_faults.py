"""Fault tests (issue 7): a stream of readings with known content goes through a real
mosquitto (project configuration), `hazardwatch serve` and PostgreSQL while one kind of
fault is injected, and each test ends with

* the stored readings exactly equal to those published (compared as sets of
  (tag, ts, value); duplicates = rows − distinct rows), and every message PUBACKed;
* the warnings equal to a fault-free reference: the pure rule engine run in-process over
  the same readings (one warning row per site and cause, same active flag and level,
  raised once, cleared at most once);
* every outbox row of the webhook receiver delivered, and the receiver (tests/httpsink)
  having seen exactly the set of event ids the outbox holds; a repeat of an event id (an
  at-least-once re-send after a crash between send and commit) is counted, and at most
  one per injected fault.

The stream: sites F0-F3 × 3 level sensors, one message per second of event time carrying
their 12 readings, and site F4's 3 sensors in a message of their own every 150 steps (a
slower polling loop). On F0-F3 one tank rises past H and HH (overfill: trend → yellow →
orange); on F0 and F1 it stays there, on F2 and F3 it falls back and the warning clears.
The rest is flat: no other warning is due (in particular no data interruption).

Run alone: `scripts/test -m faults` (`bench/faults_report.py` runs them and prints the
table of docs/reliability.md). Each test writes its figures as JSON into $HW_FAULT_REPORT
(a directory) when set, else into its tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from harness import Site, free_port, wait_for
from httpsink import HttpSink
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

pytestmark = [pytest.mark.faults, pytest.mark.slow]

ENT, GW = "91370105MA3C000043", "gw-faults"
TOPIC = f"hw/v1/{ENT}/{GW}/readings"
SITES, TANKS = 4, 3     # sites F0-F3 in every message
SLOW_SITE = SITES       # site F4: its own message every SLOW_EVERY messages
SLOW_EVERY = 150
PROFILE = 1200          # messages (1 s of event time each) carrying the rule-tripping profile
MAX_MESSAGES = 1500     # a stream never goes past this (its newest reading stays < now + 5 min)
BACKDATE_MS = 1_300_000  # the stream starts this far in the past (within rules.replay_s)
RECEIVER = "sink"

# What the profile must raise (checked against the reference engine, then the database):
# (site, cause) → (active at the end, level 3 = orange).
DESIGN = {(f"F{s}", "overfill"): (s < 2, 3) for s in range(SITES)}


# ---------------------------------------------------------------------------- the stream


def level(site: int, tank: int, t: int) -> float:
    """Tank level (m) at second t of the stream; limits H 16, HH 18 on a 0-20 m span."""
    tiny = 0.001 * (t % 7)  # every reading distinct, no slope
    if tank != 0 or site == SLOW_SITE:
        return round(6.0 + 2 * tank + 0.1 * site + tiny, 3)
    if t < 200:
        v = 12.0
    elif t < 400:
        v = 12.0 + 7.0 * (t - 200) / 200          # 2.1 m/min up: trend, then H, then HH
    elif t < 700 or site < 2:
        v = 19.0
    elif t < 1100:
        v = 19.0 - 4.0 * (t - 700) / 400          # 0.6 m/min down (below rate_fall's 1 m/min)
    else:
        v = 15.0                                  # under H − deadband: the warning clears
    return round(v + tiny, 3)


TAGS = [(s, k, f"S{s}T{k}.LT") for s in range(SITES) for k in range(TANKS)]
SLOW_TAGS = [(SLOW_SITE, k, f"S{SLOW_SITE}T{k}.LT") for k in range(TANKS)]


def messages(base_ms: int, m: int) -> list[tuple[list[tuple[int, int, str]], int]]:
    """What the gateway sends at step m: (tags, ts) per message. Site F4's sensors report
    far less often than the others (every SLOW_EVERY steps, still well within their
    no-data window while data flows), as a slow polling loop of a real gateway would."""
    ts = base_ms + m * 1000
    return [(TAGS, ts)] + ([(SLOW_TAGS, ts)] if m % SLOW_EVERY == 0 else [])


def encode(tags: list[tuple[int, int, str]], ts: int, m: int
           ) -> tuple[bytes, list[tuple[str, int, float]]]:
    values = {tag: level(s, k, m) for s, k, tag in tags}
    return orjson.dumps({"ts": ts, "values": values}), [(t, ts, v) for t, v in values.items()]


def registry_yaml() -> str:
    lines = ["regions:", '  - {code: "370105", name: 天桥区}', "enterprises:",
             f"  - code: {ENT}", "    name: 故障测试化工厂", '    region: "370105"',
             f"    gateways: [{{id: {GW}}}]", "    sites:"]
    for s in range(SITES + 1):
        lines += [f"      - {{id: F{s}, name: 罐区{s}, kind: major_hazard, grade: 2, sensors: ["]
        lines += [f"          {{tag: S{s}T{k}.LT, kind: level, unit: m, range: [0, 20], "
                  f"limits: {{hh: 18, h: 16, l: 1, ll: 0.5}}, interval_s: 10, gateway: {GW}}},"
                  for k in range(TANKS)]
        lines += ["        ]}"]
    return "\n".join(lines) + "\n"


class Publisher:
    """The gateway: MQTT v5 persistent session (clean_start False, session expiry 10 min),
    QoS 1, paho's automatic reconnect. Publishes message m every 1/rate s from a thread,
    and keeps going past PROFILE until `finish()`; nothing is ever published twice by the
    test (paho re-sends un-acknowledged QoS 1 messages itself after a reconnect)."""

    def __init__(self, broker, username: str, password: str, rate_hz: float) -> None:
        self.base_ms = int(time.time() * 1000) - BACKDATE_MS
        self.rate_hz = rate_hz
        self.expected: set[tuple[str, int, float]] = set()
        self.messages = 0
        self.steps = 0
        self.readings = 0
        self.infos: list[mqtt.MQTTMessageInfo] = []
        self.acked: set[int] = set()      # mids the broker PUBACKed (on_publish)
        self.queued_offline = 0           # publish() calls while disconnected (paho keeps them)
        self._finish = threading.Event()
        self.done = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"faults-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.max_queued_messages_set(0)   # unbounded: the test keeps every message
        self.client.max_inflight_messages_set(50)
        connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
        self.client.on_publish = lambda c, u, mid, rc, p: self.acked.add(mid)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        if not connected.wait(10):
            raise TimeoutError("publisher could not connect")
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Publisher:
        self.thread.start()
        return self

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        next_at = time.monotonic()
        for m in range(MAX_MESSAGES):
            if m >= PROFILE and self._finish.is_set():
                break
            for tags, ts in messages(self.base_ms, m):
                payload, rows = encode(tags, ts, m)
                info = self.client.publish(TOPIC, payload, qos=1)  # paho keeps it if cut off
                with self._lock:
                    self.infos.append(info)
                    self.queued_offline += info.rc == mqtt.MQTT_ERR_NO_CONN
                    self.expected.update(rows)
                    self.messages += 1
                    self.readings += len(rows)
            self.steps = m + 1
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
        self.done.set()

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and not self.done.is_set()

    def published(self) -> int:
        with self._lock:
            return self.readings

    def finish(self, timeout: float = 180.0) -> None:
        """Stop after the profile; wait until the broker has acknowledged every message."""
        self._finish.set()
        if not self.done.wait(timeout):
            raise AssertionError("the publisher did not finish its stream")
        # info.is_published() raises for a message published while disconnected, although
        # paho keeps it and sends it after reconnecting: count the PUBACKs instead.
        wait_for(lambda: all(i.mid in self.acked for i in self.infos), timeout=60,
                 what="the broker's PUBACK for every published message")

    def close(self) -> None:
        self._finish.set()
        self.done.wait(5)
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------------------- checks


def stored_count(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        return conn.execute("SELECT count(*) FROM readings").fetchone()[0]


def wait_caught_up(dsn: str, target: int, timeout: float, since: float) -> float:
    """Seconds from `since` (monotonic) until `target` readings are stored."""
    wait_for(lambda: stored_count(dsn) >= target, timeout=timeout, interval=0.1,
             what=f"{target} readings stored")
    return time.monotonic() - since


def reference_warnings(dsn: str, pub: Publisher) -> dict[tuple[str, str], tuple[bool, int]]:
    """The fault-free expectation: the pure engine, in-process, over the published messages."""
    from hazardwatch.pipeline import load_sensor_rows
    from rules.engine import Engine
    from rules.packs import load_packs

    async def rows():
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            return await load_sensor_rows(conn)

    sensor_rows = asyncio.run(rows())
    with psycopg.connect(dsn) as conn:
        site_code = dict(conn.execute("SELECT id, code FROM sites"))
    engine = Engine(load_packs())
    engine.load(sensor_rows)
    by_tag = {r.spec.tag: r.sensor_id for r in sensor_rows}
    for m in range(pub.steps):
        for tags, ts in messages(pub.base_ms, m):
            ids = np.array([by_tag[tag] for _, _, tag in tags], dtype=np.int64)
            values = np.array([level(s, k, m) for s, k, _ in tags])
            engine.readings(ids, np.full(len(ids), ts / 1000.0), values,
                            np.zeros(len(ids), dtype=np.int16), time.time())
    return {(site_code[site], cause): (ep.active, int(ep.level))
            for (site, cause), ep in engine.episodes.items()}


def stored_warnings(dsn: str) -> dict[tuple[str, str], tuple]:
    """(site, cause) → (rows, active, level, count, raised events, cleared events)."""
    with psycopg.connect(dsn) as conn:
        return {(site, cause): rest for site, cause, *rest in conn.execute(
            "SELECT s.code, w.cause, count(*), bool_or(w.active), max(w.level), max(w.count), "
            "  sum((SELECT count(*) FROM warning_events e WHERE e.warning_id = w.id "
            "       AND e.action = 'raised'))::int, "
            "  sum((SELECT count(*) FROM warning_events e WHERE e.warning_id = w.id "
            "       AND e.action = 'cleared'))::int "
            "FROM warnings w JOIN sites s ON s.id = w.site_id GROUP BY s.code, w.cause")}


def outbox_state(dsn: str) -> tuple[set[int], int, int, int]:
    """(event ids of the receiver's rows, rows pending, rows not 'sent', sends recorded).

    Sends recorded = the sum of `attempts`: every send whose outcome (sent, or failed and
    retried) the dispatcher committed. A send cut off by a crash is not recorded."""
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        rows = conn.execute("SELECT event_id, delivered_at IS NULL AND failed_at IS NULL, "
                            "outcome IS DISTINCT FROM 'sent', attempts FROM outbox "
                            "WHERE receiver = %s", (RECEIVER,)).fetchall()
    return ({r[0] for r in rows}, sum(r[1] for r in rows), sum(r[2] and not r[1] for r in rows),
            sum(r[3] for r in rows))


def notified_actions(dsn: str) -> dict[str, int]:
    """How many of the receiver's notifications are of each action (raised, level_up, ...)."""
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(
            "SELECT e.action, count(*) FROM outbox o JOIN warning_events e ON e.id = o.event_id "
            "WHERE o.receiver = %s GROUP BY e.action ORDER BY e.action", (RECEIVER,)).fetchall())


def sink_ids(sink: HttpSink) -> list[int]:
    return [int(r.headers["x-hazardwatch-event-id"]) for r in list(sink.requests)]


def notifications_settled(dsn: str, sink: HttpSink) -> bool:
    due, pending, _, _ = outbox_state(dsn)
    return pending == 0 and set(sink_ids(sink)) == due


@dataclass
class Outcome:
    fault: str
    injections: int
    recovery_s: list[float] = field(default_factory=list)
    notes: str = ""


def report_dir(tmp_path: Path) -> Path:
    named = os.environ.get("HW_FAULT_REPORT")
    path = Path(named) if named else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_and_record(key: str, dsn: str, pub: Publisher, sink: HttpSink, out: Outcome,
                     tmp_path: Path, *, notification_timeout: float = 90.0,
                     extra: dict | None = None) -> dict:
    """The end state every fault test must reach; writes the figures, then asserts."""
    pub.finish()
    total = pub.readings
    wait_for(lambda: stored_count(dsn) >= total, timeout=120, interval=0.2,
             what=f"all {total} published readings stored")
    time.sleep(1.0)  # anything extra (a duplicate) would show up now
    with psycopg.connect(dsn) as conn:
        stored = {(tag, round(ms), value) for tag, ms, value in conn.execute(
            "SELECT s.tag, extract(epoch FROM r.ts) * 1000, r.value "
            "FROM readings r JOIN sensors s ON s.id = r.sensor_id")}
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (sensor_id, ts, value)) FROM readings").fetchone()
    reference = reference_warnings(dsn, pub)
    warnings = stored_warnings(dsn)
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: notifications_settled(dsn, sink), timeout=notification_timeout,
                 interval=0.2, what="every outbox row delivered")
    due, pending, unsent, recorded = outbox_state(dsn)
    seen = sink_ids(sink)
    row = {
        "fault": out.fault, "injections": out.injections,
        "published": total, "stored": rows, "duplicates": rows - distinct,
        "missing": len(pub.expected - stored), "unexpected": len(stored - pub.expected),
        "messages": pub.messages, "queued_by_gateway_offline": pub.queued_offline,
        "warnings": len(warnings), "warnings_expected": len(reference),
        "notifications_due": len(due), "delivered": len(set(seen) & due),
        "actions": notified_actions(dsn),
        # a repeat is a retry after a failed or timed-out send (recorded in `attempts`), or
        # a send cut off by a crash before its outcome was committed (not recorded)
        "repeats": len(seen) - len(set(seen)), "retried": recorded - len(due),
        "cut_off_by_crash": len(seen) - recorded, "pending": pending,
        "recovery_s": round(max(out.recovery_s), 2) if out.recovery_s else None,
        "recovery_each_s": [round(r, 2) for r in out.recovery_s],
        "notes": out.notes.format(queued=pub.queued_offline), **(extra or {}),
    }
    (report_dir(tmp_path) / f"{key}.json").write_text(json.dumps(row, indent=1))

    assert stored == pub.expected, f"missing {row['missing']}, unexpected {row['unexpected']}"
    assert rows == total and rows == distinct
    assert reference == DESIGN, "the stream no longer trips the rules as designed"
    assert {k: (v[0], v[1], v[2]) for k, v in warnings.items()} == {
        k: (1, active, lvl) for k, (active, lvl) in reference.items()}
    for k, (_, active, _, count, raised, cleared) in warnings.items():
        assert (count, raised, cleared) == (1, 1, 0 if active else 1), k
    assert pending == 0 and unsent == 0, f"{pending} notifications pending, {unsent} not sent"
    assert set(seen) == due, f"sink saw {sorted(set(seen) - due)} extra, missed {sorted(due - set(seen))}"
    assert 0 <= row["cut_off_by_crash"] <= out.injections, (
        f"{row['cut_off_by_crash']} sends unaccounted for after {out.injections} faults")
    return row


# ---------------------------------------------------------------------------- fixtures


@dataclass
class Rig:
    site: Site
    sink: HttpSink
    pub: Publisher | None = None

    @property
    def dsn(self) -> str:
        return self.site.dsn


def receivers_env(sink: HttpSink, **extra) -> dict[str, str]:
    receiver = {"name": RECEIVER, "type": "webhook", "url": sink.url, "timeout_s": 2, **extra}
    return {"HW_ALERTING__RECEIVERS": json.dumps([receiver]),
            "HW_ALERTING__DISPATCH_INTERVAL_S": "0.2"}


@contextlib.contextmanager
def rig(dsn: str, broker, tmp_path: Path, *, receiver: dict | None = None, **env: str):
    registry = tmp_path / "registry.yaml"
    registry.write_text(registry_yaml(), encoding="utf-8")
    with HttpSink() as sink:
        site = Site(dsn, broker, tmp_path, f"hw-faults-{uuid.uuid4().hex[:6]}", registry,
                    [(ENT, GW)], **receivers_env(sink, **(receiver or {})), **env)
        r = Rig(site, sink)
        try:
            yield r
        finally:
            if r.pub is not None:
                r.pub.close()
            site.serve.stop()


def publisher(r: Rig, rate_hz: float) -> Publisher:
    user = f"{ENT}/{GW}"
    r.pub = Publisher(r.site.broker, user, r.site.passwords[user], rate_hz)
    return r.pub


@pytest.fixture
def shared_db():
    from dbutil import fresh_database

    with fresh_database("hw_test_faults") as dsn:
        yield dsn


# ---------------------------------------------------------------------------- 1. SIGKILL


@pytest.mark.timeout(420)
def test_collector_sigkilled_five_times(shared_db, project_broker, tmp_path):
    """SIGKILL `hazardwatch serve` (collector, rules, dispatcher) five times mid-stream;
    each time restart it and measure how long until the backlog is stored."""
    with rig(shared_db, project_broker, tmp_path) as r:
        r.site.serve.start()
        pub = publisher(r, rate_hz=20).start()
        out = Outcome("collector SIGKILL", 5)
        down_s = []
        for _ in range(out.injections):
            time.sleep(1.5)
            assert pub.running, "the stream ended before the fault: slow machine?"
            r.site.serve.kill()
            killed = time.monotonic()
            time.sleep(0.3)  # the broker queues for the persistent session meanwhile
            r.site.serve.start(timeout=60)
            ready, target = time.monotonic(), pub.published()
            down_s.append(ready - killed)
            out.recovery_s.append(wait_caught_up(r.dsn, target, 90, ready))
        assert r.site.serve.starts == 1 + out.injections
        out.notes = ("`hazardwatch serve` ready again " + ", ".join(f"{d:.1f}" for d in down_s)
                     + " s after each kill (restart included)")
        check_and_record("1-collector-sigkill", r.dsn, pub, r.sink, out, tmp_path)


# ---------------------------------------------------------------------------- 2. PostgreSQL


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                  key=lambda p: int(re.search(r"/(\d+)/bin", p).group(1)))
    return Path(dirs[-1]).parent if dirs else None


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb into a temp dir, a free port, its own
    socket dir), so it can be stopped for a minute without touching the machine's shared
    server. As root, the server binaries run as the OS user `postgres` (initdb refuses root)."""

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="hw-faults-pg-"))
        self.data, self.log = self.dir / "data", self.dir / "server.log"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        cmd = [*self.as_user, str(self.bindir / tool), *args]
        result = subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr}{result.stdout}"
                               f"\n{self.log_tail()}")

    def init(self) -> PrivatePostgres:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        return self.start()

    def start(self) -> PrivatePostgres:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c shared_buffers=32MB -c max_connections=40")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w",
                  "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg():
    pg = PrivatePostgres()
    try:
        yield pg.init()
    finally:
        pg.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class BrokerStore:
    """How many messages the broker holds: mosquitto's `$SYS/broker/store/messages/count`
    (published every 10 s), read by a user whose ACL allows `$SYS`."""

    def __init__(self, broker) -> None:
        creds = broker.add_user(f"faults-sys-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex,
                                ["topic read $SYS/broker/store/#"])
        self.samples: list[tuple[float, int]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(creds.username, creds.password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            "$SYS/broker/store/messages/count")
        self.client.on_message = lambda c, u, m: self.samples.append(
            (time.monotonic(), int(m.payload)))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def between(self, start: float, end: float) -> list[int]:
        return [n for t, n in list(self.samples) if start <= t <= end]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


OUTAGE_S = 60.0
RECEIVE_MAXIMUM = 100


@pytest.mark.timeout(600)
def test_postgresql_down_for_a_minute(private_pg, fresh_broker, tmp_path):
    """Stop the collector's PostgreSQL (fast shutdown) for 60 s while the stream goes on.
    The collector stops acknowledging, so it holds at most Receive Maximum messages and the
    broker keeps the rest; its memory stays flat; it catches up once the server is back,
    and the minute it could not write is not taken for the gateways' silence (no
    data-interruption warning)."""
    from hazardwatch.migrate import migrate

    with psycopg.connect(private_pg.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE hw_faults")
    dsn = private_pg.dsn("hw_faults")
    migrate(dsn, timescale="off")
    store = BrokerStore(fresh_broker)
    try:
        with rig(dsn, fresh_broker, tmp_path,
                 HW_MQTT__RECEIVE_MAXIMUM=str(RECEIVE_MAXIMUM)) as r:
            serve = r.site.serve.start()
            pub = publisher(r, rate_hz=10).start()
            time.sleep(10)
            wait_caught_up(dsn, pub.published(), 30, time.monotonic())  # flowing before the fault
            rss = [rss_kib(serve.proc.pid)]
            before = time.monotonic()
            wait_for(lambda: store.between(before - 11, before), timeout=15,
                     what="a $SYS store count before the outage")
            held_before = store.between(before - 11, before)[-1]
            published_before = pub.messages

            private_pg.stop("fast")
            down = time.monotonic()
            while time.monotonic() - down < OUTAGE_S:
                assert serve.proc.poll() is None, f"serve died:\n{serve.log_tail()}"
                rss.append(rss_kib(serve.proc.pid))
                time.sleep(0.5)
            published_during = pub.messages - published_before
            ready_during = json.loads(httpx.get(
                f"http://127.0.0.1:{serve.http_port}/readyz", timeout=5).text)["database"]
            assert pub.running, "the stream ended during the outage: slow machine?"
            private_pg.start()
            up, target = time.monotonic(), pub.published()
            out = Outcome("PostgreSQL stopped 60 s", 1)
            out.recovery_s.append(wait_caught_up(dsn, target, 120, up))
            held = max(store.between(down, up), default=held_before) - held_before
            growth_mib = (max(rss) - rss[0]) / 1024
            out.notes = (f"{published_during} messages published while the database was down; "
                         f"the broker held up to {held} more than before (the collector at most "
                         f"{RECEIVE_MAXIMUM}, its Receive Maximum); collector RSS "
                         f"{rss[0] / 1024:.0f} MiB, +{growth_mib:.1f} MiB at most during the outage")
            check_and_record("2-postgresql-outage", dsn, pub, r.sink, out, tmp_path,
                             notification_timeout=120, extra={
                                 "published_during_outage": published_during,
                                 "held_by_broker": held, "rss_start_mib": round(rss[0] / 1024, 1),
                                 "rss_max_mib": round(max(rss) / 1024, 1)})
    finally:
        store.close()
    assert ready_during is False
    # $SYS is sampled every 10 s, so the last sample may miss up to 10 s of the backlog
    assert held >= published_during - RECEIVE_MAXIMUM - 10 * 10 - 20, \
        f"the broker held only {held} of {published_during} messages"
    assert growth_mib < 32, f"collector RSS grew {growth_mib:.1f} MiB during the outage"


def test_resumed_restarts_no_data_clocks_but_silence_is_still_caught():
    """What the collector's resumed() call does to the rules (no processes: the sink alone).
    Across a 65 s outage a 10 s sensor (no data after 60 s) is not called silent; if it
    sends nothing after the outage either, it is, one full window later."""
    from hazardwatch.pipeline import RulesSink
    from rules.engine import SensorRow
    from rules.packs import SensorSpec

    sink = RulesSink(0.0)
    sink.engine.load([SensorRow(1, 1, None, "major_hazard", 2,
                                SensorSpec("T1.LT", "level", "m", 0, 20, 0.5, 1, 16, 18, 10))])
    one = (np.array([1]), np.array([1000.0]), np.array([5.0]), np.zeros(1, dtype=np.int16))
    sink.engine.readings(*one, 1000.0)
    assert not sink.tick(1050.0)
    sink.resumed()                           # the database came back at t = 1065
    assert not sink.tick(1065.0)             # silence across the outage is not the sensor's
    assert not sink.tick(1124.0)
    events = [action for _, action, _ in sink.tick(1125.0).events]
    assert "raised" in events                # still silent a full window after the outage


# ---------------------------------------------------------------------------- 3. mosquitto


@pytest.mark.timeout(420)
def test_mosquitto_restarted_three_times(shared_db, fresh_broker, tmp_path):
    """Restart the broker (clean stop: it writes its persistence file) three times while the
    gateway streams; both the gateway's and the collector's persistent sessions resume. The
    third time the collector is down first, so the broker carries a queue for the
    collector's session across its restart."""
    with rig(shared_db, fresh_broker, tmp_path) as r:
        serve = r.site.serve.start()
        pub = publisher(r, rate_hz=20).start()
        out = Outcome("mosquitto restarted", 3)
        queued_for_collector = 0
        for i in range(out.injections):
            time.sleep(3)
            assert pub.running, "the stream ended before the fault: slow machine?"
            collector_down = i == out.injections - 1
            if collector_down:
                serve.stop()
                stopped_at = pub.messages
                time.sleep(2)      # the broker queues for the collector's session
                queued_for_collector = pub.messages - stopped_at
            fresh_broker.restart()
            if collector_down:
                serve.start(timeout=60)
            back, target = time.monotonic(), pub.published()
            out.recovery_s.append(wait_caught_up(r.dsn, target, 90, back))
        out.notes = ("the gateway published {queued} messages while cut off (kept by paho, "
                     "sent after reconnecting); before the 3rd restart the collector was stopped "
                     f"and {queued_for_collector} messages queued for its session")
        check_and_record("3-mosquitto-restart", r.dsn, pub, r.sink, out, tmp_path)


# ---------------------------------------------------------------------------- 4. API/outbox


PASSWORD = "faults pass 7"


@pytest.mark.timeout(420)
def test_serve_killed_between_state_change_and_notification(shared_db, project_broker, tmp_path):
    """The receiver holds every request unanswered, so notifications stay undelivered; an
    acknowledge through the API commits (event + outbox row) and `hazardwatch serve` is
    SIGKILLed right after the answer, three times. Once the receiver answers again, every
    event must arrive. Repeats are retries of sends that timed out while the receiver held
    them (recorded as attempts) or sends cut off by a kill (at most one per kill)."""
    from alerting.api.users import add_user

    actions = ["raised", "reactivated", "level_up", "escalated", "cleared", "closed",
               "acknowledged"]
    with rig(shared_db, project_broker, tmp_path,
             receiver={"actions": actions}) as r:
        add_user(r.dsn, "duty", PASSWORD, "admin")
        r.sink.holding = True
        serve = r.site.serve.start()
        pub = publisher(r, rate_hz=40).start()
        with psycopg.connect(r.dsn, autocommit=True) as conn:
            warning_ids = wait_for(lambda: len(ids := [w for (w,) in conn.execute(
                "SELECT id FROM warnings ORDER BY id")]) == SITES and ids, timeout=60,
                what="a warning per site")
        r.sink.wait_for(1, timeout=30)  # a notification is in flight, held by the receiver
        out = Outcome("serve SIGKILL after a state change", 3)
        acked_events = []
        for wid in warning_ids[:out.injections]:
            base = f"http://127.0.0.1:{serve.http_port}"
            token = httpx.post(base + "/api/login", json={"username": "duty", "password": PASSWORD},
                               timeout=10).json()["token"]
            answer = httpx.post(f"{base}/api/warnings/{wid}/acknowledge", json={},
                                headers={"Authorization": f"Bearer {token}"}, timeout=10)
            serve.kill()
            assert answer.status_code == 200, answer.text
            with psycopg.connect(r.dsn) as conn:
                (eid, delivered), = conn.execute(
                    "SELECT e.id, o.delivered_at FROM warning_events e JOIN outbox o "
                    "ON o.event_id = e.id AND o.receiver = %s "
                    "WHERE e.warning_id = %s AND e.action = 'acknowledged'", (RECEIVER, wid))
            assert delivered is None  # committed, not yet notified: the crash lands here
            acked_events.append(eid)
            if len(acked_events) == out.injections:
                r.sink.holding = False
                r.sink.hold.set()
            serve.start(timeout=60)
        back = time.monotonic()
        wait_for(lambda: notifications_settled(r.dsn, r.sink), timeout=120, interval=0.2,
                 what="every outbox row delivered")
        out.recovery_s.append(time.monotonic() - back)
        out.notes = "receiver held requests unanswered until the last restart"
        check_and_record("4-serve-kill-outbox", r.dsn, pub, r.sink, out, tmp_path)
        seen = sink_ids(r.sink)
        assert all(seen.count(e) >= 1 for e in acked_events)
