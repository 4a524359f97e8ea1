"""Horizontal scale on one machine: several collector workers on one partitioned stream.

* The broker plugin stamps hwp/<k>/ into readings topics with the same hash as
  ingest/partitions.py, leaves state topics (wills) alone, refuses forged hwp/ publishes
  and announces P, retained (real mosquitto, real plugin).
* Leases in PostgreSQL: one live holder per worker slot; a standby waits; expiry and
  release hand over.
* End to end (slow): two `hazardwatch serve` workers and a standby on a partitioned
  broker, one worker killed mid-stream and restarted, the other stopped and replaced by its
  standby: every published reading stored exactly once and the warnings equal those of a
  single unpartitioned collector fed the same stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import secrets
import subprocess
import threading
import time
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from brokers import Credentials, Mosquitto
from dbutil import fresh_database
from harness import HAZARDWATCH, Gateway, Serve, wait_for
from paho.mqtt.subscribeoptions import SubscribeOptions

from hazardwatch.registry import credit_code_check_character, import_file
from hazardwatch.settings import IngestSettings
from ingest.partitions import (
    ANNOUNCE_TOPIC,
    Assignment,
    Lease,
    LeaseLost,
    Router,
    fnv1a32,
    partition_of,
)

pytestmark = pytest.mark.timeout(300)
TIMEOUT_S = 15.0


def credit_code(n: int) -> str:
    first17 = f"91370100MA{n:07d}"
    return first17 + credit_code_check_character(first17)


class Listener:
    """An auto-acknowledging MQTT v5 subscriber that records (topic, payload, retain)."""

    def __init__(self, broker: Mosquitto, creds: Credentials, *topics: str) -> None:
        self.got: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-{uuid.uuid4().hex[:10]}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(creds.username, creds.password)
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.got.put((m.topic, bytes(m.payload), m.retain))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        assert subscribed.wait(TIMEOUT_S), "no SUBACK"

    def take(self, n: int) -> list[tuple[str, bytes, bool]]:
        out = []
        deadline = time.monotonic() + TIMEOUT_S
        while len(out) < n:
            try:
                out.append(self.got.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"got {len(out)} of {n}: {out[-3:]}") from None
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_v5(client: mqtt.Client, topic: str, payload: bytes) -> int:
    """QoS 1 publish; the PUBACK reason code (0 accepted, 135 not authorized)."""
    codes: dict[int, int] = {}
    client.on_publish = lambda c, u, mid, rc, p: codes.__setitem__(mid, rc.value)
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(TIMEOUT_S)
    assert info.is_published()
    return wait_for(lambda: codes.get(info.mid) is not None and (codes[info.mid],),
                    timeout=TIMEOUT_S, what="PUBACK reason")[0]


# ---------------------------------------------------------------------------- the hash


def test_fnv1a32_known_vectors():
    # Published FNV-1a 32-bit test vectors (Fowler/Noll/Vo reference test suite).
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968
    assert partition_of("foobar", 8) == 0xBF9CF968 % 8


def test_assignment_splits_partitions_and_refuses_bad_slots():
    slots = [Assignment(8, 3, w).owned for w in range(3)]
    assert sorted(k for owned in slots for k in owned) == list(range(8))
    assert slots[1] == (1, 4, 7)
    for bad, field in (((0, 1, 0), "partitions"), ((4, 5, 0), "workers"), ((4, 2, 2), "worker")):
        with pytest.raises(ValueError, match=field):
            Assignment(*bad)
    with pytest.raises(ValueError, match="worker: 2 is not below workers"):
        IngestSettings(partitions=8, workers=2, worker=2)
    with pytest.raises(ValueError, match="need partitions > 0"):
        IngestSettings(workers=2)
    with pytest.raises(ValueError, match="at least as many partitions"):
        IngestSettings(partitions=2, workers=3)


def test_router_refuses_a_broker_that_disagrees_on_partitions():
    legacy, part = Router(None), Router(Assignment(8, 2, 1))
    assert legacy.announced(b"0") is None and legacy.confirmed
    assert "HW_INGEST__PARTITIONS=8" in legacy.announced(b"8")
    assert not part.confirmed
    assert "plugin_opt_partitions 8" in part.announced(b"0")
    assert "partitions readings 4 ways" in part.announced(b"4")
    assert "not a number" in part.announced(b"eight")
    assert not part.confirmed
    assert part.announced(b"8") is None and part.confirmed
    drop, subs = part.subscriptions(["hw/v1/+/+/readings", "hw/v1/+/+/state"], None)
    assert subs == [("$share/hw-ingest/hwp/1/hw/v1/+/+/readings", 1),
                    ("$share/hw-ingest/hwp/3/hw/v1/+/+/readings", 1),
                    ("$share/hw-ingest/hwp/5/hw/v1/+/+/readings", 1),
                    ("$share/hw-ingest/hwp/7/hw/v1/+/+/readings", 1),
                    ("hw/v1/+/+/state", 1), (ANNOUNCE_TOPIC, 0)]
    assert drop == [f"$share/hw-ingest/hwp/{k}/hw/v1/+/+/readings" for k in (0, 2, 4, 6)]
    mine = next(c for c in (credit_code(n) for n in range(100)) if partition_of(c, 8) % 2 == 1)
    theirs = next(c for c in (credit_code(n) for n in range(100)) if partition_of(c, 8) % 2 == 0)
    assert part.inbound(f"hwp/3/hw/v1/{mine}/gw/readings") == f"hw/v1/{mine}/gw/readings"
    assert part.inbound(f"hw/v1/{mine}/gw/state") == f"hw/v1/{mine}/gw/state"
    assert part.inbound(f"hw/v1/{theirs}/gw/state") is None


# ---------------------------------------------------------------------------- the broker plugin


def test_plugin_partitions_readings_like_python_and_announces_p():
    broker = Mosquitto(partitions=8)
    try:
        broker.start()
        # A probe user may write any native topic, so hundreds of enterprise ids need no
        # per-gateway users (the rewrite reads the topic, not the username).
        probe = broker.add_user("probe", secrets.token_hex(8), ["topic write hw/v1/#"])
        gw = broker.add_gateway(credit_code(7), "gw-tb")
        sub = Listener(broker, broker.collector, "hwp/#", "hw/v1/#", "tb/#")
        assert sub.take(1) == [(ANNOUNCE_TOPIC, b"8", True)]

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe",
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(probe.username, probe.password)
        client.connect(broker.host, broker.port)
        client.loop_start()
        enterprises = [credit_code(n) for n in range(300)] + ["企业", "a", "x" * 200]
        for ent in enterprises:
            assert publish_v5(client, f"hw/v1/{ent}/gw-1/readings", b"{}") == 0
        got = sub.take(len(enterprises))
        assert [t for t, _, _ in got] == [
            f"hwp/{partition_of(ent, 8)}/hw/v1/{ent}/gw-1/readings" for ent in enterprises]
        assert len({partition_of(ent, 8) for ent in enterprises}) == 8

        # state (the last-will topic) and other hw/v1 topics keep their topic
        for topic in (f"hw/v1/{enterprises[0]}/gw-1/state", "hw/v1/northbound/warnings/a/b",
                      f"hw/v1/{enterprises[0]}/gw-1/readings/extra"):
            assert publish_v5(client, topic, b"online") == 0
            assert sub.take(1)[0][0] == topic
        # nobody but the broker writes hwp/ (not even where the ACL would allow it)
        assert publish_v5(client, f"hwp/0/hw/v1/{enterprises[0]}/gw-1/readings", b"{}") == 135
        client.loop_stop()
        client.disconnect()

        tb = Gateway(broker, gw.username, gw.password)
        tb.publish("v1/gateway/telemetry", b'{"D": [{"ts": 1, "values": {"x": 1}}]}')
        k = partition_of(credit_code(7), 8)
        assert sub.take(1)[0][0] == f"hwp/{k}/tb/{credit_code(7)}/gw-tb/v1/gateway/telemetry"
        tb.close()
        sub.close()

        # the announcement follows the configuration across restarts (persistence keeps
        # retained messages; the plugin's fresh value must win)
        for p in (4, 0):
            broker.partitions = p
            broker.restart()
            sub = Listener(broker, broker.collector, ANNOUNCE_TOPIC)
            assert sub.take(1) == [(ANNOUNCE_TOPIC, str(p).encode(), True)]
            sub.close()
    finally:
        broker.close()


def test_plugin_refuses_a_bad_partitions_option():
    broker = Mosquitto()
    broker.partitions = "many"  # type: ignore[assignment]
    try:
        with pytest.raises(Exception, match="exited"):
            broker.start()
        assert "plugin_opt_partitions 'many': expected a whole number" in broker.log_tail()
    finally:
        broker.close()


# ---------------------------------------------------------------------------- leases


def test_lease_one_live_holder_per_slot_standby_takes_over():
    async def run(dsn: str) -> None:
        a = Assignment(4, 2, 1)
        first, second, other = Lease(a, 3.0), Lease(a, 3.0), Lease(Assignment(4, 2, 0), 3.0)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            assert await first.try_acquire(conn) == []
            assert first.valid()
            held = await second.try_acquire(conn)
            assert {k for k, _, _ in held} == {1, 3} and {o for _, o, _ in held} == {first.owner}
            assert not second.valid()
            with pytest.raises(LeaseLost):
                second.check()
            assert await other.try_acquire(conn) == []  # the other slot is independent
            assert await first.renew(conn)

            # a clean stop hands over at once
            await first.release(conn)
            assert not first.valid() and not await first.renew(conn)
            assert await second.try_acquire(conn) == []

            # a dead holder (no renewals) hands over when its lease runs out
            stop = asyncio.Event()
            t0 = time.monotonic()
            assert await first.acquire(conn, stop)
            assert 2.0 < time.monotonic() - t0 < 10.0
            assert not await second.renew(conn)  # the old holder learns it lost
            with pytest.raises(LeaseLost):
                second.check()
            cur = await conn.execute("SELECT partition, worker, workers, owner FROM ingest_partitions "
                                     "ORDER BY partition")
            assert await cur.fetchall() == [(0, 0, 2, other.owner), (1, 1, 2, first.owner),
                                            (2, 0, 2, other.owner), (3, 1, 2, first.owner)]

    with fresh_database("hw_test_lease") as dsn:
        asyncio.run(run(dsn))


# ---------------------------------------------------------------------------- end to end

GATEWAYS = ("gw-a", "gw-b")
ENTERPRISES = [credit_code(100 + n) for n in range(10)]  # 10 enterprises × 2 gateways
MESSAGES = 60          # per gateway
STEP_S = 1.0           # event time between a gateway's messages


def registry_yaml(path: Path) -> None:
    """Each enterprise: one tank farm whose sensors hang on both gateways (so a site's
    grading needs both gateways' readings in one engine) and long intervals (no no_data)."""
    lines = ["regions:", '  - {code: "370100", name: 济南市}', "enterprises:"]
    for ent in ENTERPRISES:
        lines += [f"  - code: {ent}", f"    name: 企业{ent[-4:]}", '    region: "370100"',
                  "    gateways: [{id: gw-a}, {id: gw-b}]", "    sites:",
                  "      - {id: T1, name: 罐区, kind: major_hazard, grade: 2, sensors: ["]
        for gw in GATEWAYS:
            lines += [
                f"          {{tag: TK1.LT.{gw}, kind: level, unit: m, range: [0, 20], "
                f"limits: {{hh: 18, h: 16, l: 1, ll: 0.5}}, interval_s: 3600, gateway: {gw}}},",
                f"          {{tag: GD.{gw}, kind: gas_lel, unit: '%LEL', range: [0, 100], "
                f"interval_s: 3600, gateway: {gw}}},",
            ]
        lines.append("        ]}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def value(ent_i: int, gw: str, tag: str, m: int) -> float:
    """Level rises through H (and HH for even enterprises); gas over 25 %LEL on both
    gateways of every third enterprise (two detectors agree: one level up)."""
    if tag.startswith("TK1"):
        top = 19.0 if ent_i % 2 == 0 else 17.0
        return round(5.0 + (top - 5.0) * min(1.0, m / 40), 3)
    return 40.0 if ent_i % 3 == 0 and 20 <= m < 50 else 2.0


def payload(ent_i: int, gw: str, m: int, base_ms: int) -> bytes:
    return orjson.dumps({"ts": base_ms + int(m * STEP_S * 1000),
                         "values": {t: value(ent_i, gw, t, m) for t in (f"TK1.LT.{gw}", f"GD.{gw}")}})


class Fleet:
    """The 20 gateways, each publishing its messages in order (QoS 1, acknowledged)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.clients = {}
        for ent in ENTERPRISES:
            for gw in GATEWAYS:
                creds = broker.add_gateway(ent, gw, password=secrets.token_hex(8))
                self.clients[(ent, gw)] = Gateway(broker, creds.username, creds.password,
                                                  client_id=f"{ent}-{gw}-{uuid.uuid4().hex[:6]}")
        self.base_ms = int(time.time() * 1000) - 20 * 60 * 1000  # 20 min ago: inside replay

    def publish(self, first: int, last: int, pause_s: float = 0.0) -> None:
        for m in range(first, last):
            time.sleep(pause_s)
            for i, ent in enumerate(ENTERPRISES):
                for gw in GATEWAYS:
                    self.clients[(ent, gw)].publish(f"hw/v1/{ent}/{gw}/readings",
                                                    payload(i, gw, m, self.base_ms))

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def stored(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM readings").fetchone()[0]


def warnings_of(dsn: str) -> dict:
    """(enterprise, site, cause) → level, active, count and the alarms (tag, condition)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT e.code, st.code, w.cause, w.level, w.active, w.count, "
            "  (SELECT array_agg(s.tag || ':' || a.condition ORDER BY s.tag, a.condition) "
            "   FROM alarms a JOIN sensors s ON s.id = a.sensor_id WHERE a.warning_id = w.id) "
            "FROM warnings w JOIN sites st ON st.id = w.site_id "
            "JOIN enterprises e ON e.id = st.enterprise_id").fetchall()
    return {(e, s, c): (lv, act, n, tuple(al or ())) for e, s, c, lv, act, n, al in rows}


def counters(serve: Serve) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in serve.metrics().splitlines():
        m = re.match(r"^(hw_ingest_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def partitions_seen(serve: Serve) -> set[int]:
    return {int(re.search(r'partition="(\d+)"', k).group(1))
            for k, v in counters(serve).items()
            if k.startswith("hw_ingest_partition_messages_total") and v > 0}


WANT = MESSAGES * len(ENTERPRISES) * len(GATEWAYS) * 2  # readings


def run_stream(dsn: str, broker: Mosquitto, serves: list[Serve], chaos) -> Fleet:
    """Publish the stream: a third, a third while `chaos` runs, the last third after it
    (so the processes standing at the end are seen to work)."""
    fleet = Fleet(broker)
    for s in serves:
        s.start(timeout=60)
    fleet.publish(0, MESSAGES // 3)
    failed: list[BaseException] = []

    def rest() -> None:
        try:
            fleet.publish(MESSAGES // 3, 2 * MESSAGES // 3, pause_s=0.2)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failed.append(exc)

    publisher = threading.Thread(target=rest, daemon=True)
    publisher.start()
    chaos()
    publisher.join(120)
    assert not publisher.is_alive() and not failed, failed
    fleet.publish(2 * MESSAGES // 3, MESSAGES)
    # Rules are written in the transaction that stores the readings: once every reading is
    # in, every warning is too (no timers fire: intervals are an hour, durations 30 min).
    wait_for(lambda: stored(dsn) >= WANT, timeout=120, interval=0.25, what=f"{WANT} readings")
    return fleet


@pytest.mark.slow
def test_two_workers_store_everything_once_and_warn_like_one_collector(tmp_path):
    want = WANT
    registry = tmp_path / "registry.yaml"
    registry_yaml(registry)
    env = {"HW_ALERTING__ENABLED": "false", "HW_LOG_LEVEL": "INFO"}

    # Reference: one unpartitioned collector on an unpartitioned broker.
    with fresh_database("hw_test_scale_ref") as ref_dsn:
        broker = Mosquitto()
        try:
            broker.start()
            import_file(ref_dsn, registry)
            one = Serve(ref_dsn, broker, tmp_path, HW_MQTT__CLIENT_ID="hw-ref", **env)
            fleet = run_stream(ref_dsn, broker, [one], lambda: None)
            assert stored(ref_dsn) == want
            reference = warnings_of(ref_dsn)
            fleet.close()
            one.stop()
        finally:
            broker.close()
    expected = {(e, "T1", "overfill") for e in ENTERPRISES} | {
        (e, "T1", "combustible_gas") for i, e in enumerate(ENTERPRISES) if i % 3 == 0}
    assert expected <= set(reference), sorted(reference)
    # both detectors of a site (one per gateway) agree: the gas warning is graded one up
    gas = [v for (_, _, c), v in reference.items() if c == "combustible_gas"]
    assert all(len(alarms) == 2 for _, _, _, alarms in gas) and gas, gas

    # Two workers (plus a standby for worker 1) on a broker partitioned 8 ways.
    with fresh_database("hw_test_scale") as dsn:
        broker = Mosquitto(partitions=8)
        try:
            broker.start()
            import_file(dsn, registry)
            penv = {**env, "HW_INGEST__PARTITIONS": "8", "HW_INGEST__WORKERS": "2",
                    "HW_INGEST__LEASE_S": "4", "HW_MQTT__CLIENT_ID": "hw-scale"}
            w0 = Serve(dsn, broker, tmp_path, HW_INGEST__WORKER="0", **penv)
            w1 = Serve(dsn, broker, tmp_path, HW_INGEST__WORKER="1", **penv)
            standby = Serve(dsn, broker, tmp_path, HW_INGEST__WORKER="1", **penv)

            def chaos() -> None:
                seen_before = {0: partitions_seen(w0), 1: partitions_seen(w1)}
                for w, seen in seen_before.items():
                    assert seen and all(k % 2 == w for k in seen), (w, seen)
                # worker 1's standby: running, but waiting for the lease, not reading
                standby.proc = subprocess.Popen([HAZARDWATCH, "serve"], env=standby.env,
                                                stdout=open(standby.log_path, "a"),  # noqa: SIM115
                                                stderr=subprocess.STDOUT)
                wait_for(lambda: "standing by" in standby.log_tail(200), timeout=30,
                         what="the standby waiting")
                w0.kill()      # a crash: its lease runs out, its session keeps the backlog
                w1.stop()      # a clean stop: releases the lease, the standby takes over
                standby.wait_ready(60)
                w0.start(timeout=60)  # the same slot again: waits out the lease, then resumes

            fleet = run_stream(dsn, broker, [w0, w1], chaos)
            wait_for(lambda: warnings_of(dsn) == reference, timeout=30, interval=0.5,
                     what="warnings equal to the single-collector run")
            assert stored(dsn) == want
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT count(DISTINCT (sensor_id, ts)) FROM readings"
                                    ).fetchone()[0] == want
                holders = dict(conn.execute("SELECT partition, worker FROM ingest_partitions"
                                            " WHERE expires_at > now()").fetchall())
            assert holders == {k: k % 2 for k in range(8)}
            for w, serve in ((0, w0), (1, standby)):
                seen = partitions_seen(serve)
                assert seen and all(k % 2 == w for k in seen), (w, seen)
                assert counters(serve).get("hw_ingest_foreign_partition_messages_total", 0) == 0
            used = {partition_of(e, 8) for e in ENTERPRISES}
            assert partitions_seen(w0) | partitions_seen(standby) <= used
            fleet.close()
        finally:
            for s in (w0, w1, standby):
                s.stop()
            broker.close()


@pytest.mark.slow
def test_serve_refuses_partitions_the_broker_does_not_have(tmp_path):
    with fresh_database("hw_test_scale_refuse") as dsn:
        broker = Mosquitto(partitions=4)
        try:
            broker.start()
            for env, message in (
                    ({"HW_INGEST__PARTITIONS": "8"}, "broker partitions readings 4 ways"),
                    ({}, "set HW_INGEST__PARTITIONS=4")):
                s = Serve(dsn, broker, tmp_path, HW_MQTT__CLIENT_ID=f"hw-{uuid.uuid4().hex[:6]}",
                          **env)
                # unpartitioned, it may look ready for the moment before the announcement
                with contextlib.suppress(RuntimeError):
                    s.start(timeout=30)
                assert s.proc.wait(30) == 1
                assert message in s.log_tail()
        finally:
            broker.close()
