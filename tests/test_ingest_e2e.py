"""End to end: gateways publish over a real mosquitto (project config), `hazardwatch serve`
stores into the real PostgreSQL. No mocks anywhere on the path."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import orjson
import psycopg
import pytest
from dbutil import fresh_database
from harness import Serve, Site, scalar, wait_for

pytestmark = pytest.mark.slow

REGISTRY = Path(__file__).parent / "data" / "registry_e2e.yaml"
ENT, OTHER = "91370105MA3C000043", "91370105MA3C000056"
GATEWAYS = [(ENT, "gw-e2e"), (ENT, "gw-tb"), (OTHER, "gw-other"), (ENT, "gw-ghost")]


@pytest.fixture(scope="module")
def site(project_broker, tmp_path_factory):
    with fresh_database("hw_test_e2e") as dsn:
        s = Site(dsn, project_broker, tmp_path_factory.mktemp("e2e"), "hw-ingest-e2e", REGISTRY, GATEWAYS)
        s.serve.start()
        try:
            yield s
        finally:
            s.serve.stop()


def now_ms() -> int:
    return int(time.time() * 1000)


def test_native_readings_are_stored_with_sensor_time_value_quality(site):
    ts = now_ms()
    gw = site.gateway(ENT, "gw-e2e")
    try:
        gw.publish(f"hw/v1/{ENT}/gw-e2e/readings", orjson.dumps(
            {"ts": ts, "values": {"TK1.LT": 12.31, "TK1.TT": 25.2}, "q": {"TK1.TT": 1}}))
    finally:
        gw.close()
    rows = wait_for(lambda: len(site.rows(ts)) == 2 and site.rows(ts), what="2 readings")
    assert rows == {"TK1.LT": (12.31, 0), "TK1.TT": (25.2, 1)}


def test_thingsboard_gateway_payload_is_stored_under_device_key_tags(site):
    ts = now_ms()
    gw = site.gateway(ENT, "gw-tb")
    try:
        # An off-the-shelf ThingsBoard gateway publishes here; the broker stamps who it is.
        gw.publish("v1/gateway/telemetry", orjson.dumps(
            {"TK1": [{"ts": ts, "values": {"PT": 3.5}}], "TK2": [{"ts": ts, "values": {"LT": 7.0}}]}))
    finally:
        gw.close()
    rows = wait_for(lambda: len(site.rows(ts)) == 2 and site.rows(ts), what="2 readings")
    assert rows == {"TK1.PT": (3.5, 0), "TK2.LT": (7.0, 0)}


def test_same_message_twice_stores_each_reading_once(site):
    ts = now_ms()
    payload = orjson.dumps([{"ts": ts, "values": {"TK1.LT": 1.0}}, {"ts": ts + 1, "values": {"TK1.LT": 2.0}}])
    gw = site.gateway(ENT, "gw-e2e")
    try:
        gw.publish(f"hw/v1/{ENT}/gw-e2e/readings", payload)
        wait_for(lambda: site.rows(ts), what="first copy stored")
        gw.publish(f"hw/v1/{ENT}/gw-e2e/readings", payload)
        marker = now_ms() + 5
        gw.publish(f"hw/v1/{ENT}/gw-e2e/readings", orjson.dumps({"ts": marker, "values": {"TK1.TT": 1}}))
    finally:
        gw.close()
    wait_for(lambda: site.rows(marker), what="marker after the repeat")  # the repeat was processed
    n = scalar(site.dsn, "SELECT count(*) FROM readings r JOIN sensors s ON s.id = r.sensor_id "
               "WHERE s.tag = 'TK1.LT' AND r.ts BETWEEN to_timestamp(%s/1000.0) AND to_timestamp(%s/1000.0)",
               (ts, ts + 1))
    assert n == 2


def dead_letters(dsn: str, since_ms: int) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT gateway_code, reason, errors, accepted, rejected, topic FROM dead_letters "
            "WHERE received_at >= to_timestamp(%s / 1000.0) ORDER BY id", (since_ms,)).fetchall()


def test_bad_input_lands_in_dead_letters_and_good_neighbours_are_stored(site):
    t0 = now_ms() - 1000
    ts = now_ms()
    gw = site.gateway(ENT, "gw-e2e")
    ghost = site.gateway(ENT, "gw-ghost")
    try:
        topic = f"hw/v1/{ENT}/gw-e2e/readings"
        gw.publish(topic, b'{"ts": %d, "values": {"TK1.LT": 5.5, "NEW.TAG": 1, "TK9.LT": 2, '
                          b'"TK1.TT": NaN}}' % ts)
        gw.publish(topic, orjson.dumps([{"ts": ts + 1, "values": {"TK1.LT": 99.0}},          # out of range
                                        {"ts": ts + 3_600_000, "values": {"TK1.TT": 20}}]))  # future
        gw.publish(topic, b"\x00garbage")
        gw.publish(topic, b'{"ts": %d, "values": {"TK1.LT": 1}, "pad": "%s"}' % (ts + 2, b"x" * 270_000))
        ghost.publish(f"hw/v1/{ENT}/gw-ghost/readings", orjson.dumps({"ts": ts, "values": {"G.1": 1}}))
    finally:
        gw.close()
        ghost.close()
    def ours():  # the broker is shared by the session's tests: only these two gateways'
        # letters, by topic (an oversize message is refused unread: no gateway_code)
        return [r[:5] for r in dead_letters(site.dsn, t0)
                if r[5].startswith((f"hw/v1/{ENT}/gw-e2e/", f"hw/v1/{ENT}/gw-ghost/"))]

    letters = wait_for(lambda: len(ours()) >= 5 and ours(), what="5 dead letters")
    by_reason = {}
    for gateway, reason, errors, accepted, rejected in letters:
        by_reason[reason] = (gateway, [(e["reason"], e.get("tag")) for e in errors], accepted, rejected)
    # decoder problems come first, then registry resolution, then the batch-wide checks
    assert by_reason["not_a_number"] == ("gw-e2e", [("not_a_number", "TK1.TT"), ("unknown_tag", "NEW.TAG"),
                                                    ("foreign_tag", "TK9.LT")], 1, 3)
    assert by_reason["future_timestamp"] == ("gw-e2e", [("future_timestamp", "TK1.TT"),
                                                        ("out_of_range", "TK1.LT")], 1, 1)
    assert by_reason["undecodable"][2:] == (0, 0)
    assert "oversize" in by_reason
    assert by_reason["unknown_gateway"][0] == "gw-ghost"
    # the good neighbours: the plain good reading, and the out-of-range one stored as bad
    assert site.rows(ts) == {"TK1.LT": (5.5, 0)}
    assert site.rows(ts + 1) == {"TK1.LT": (99.0, 2)}
    assert site.rows(ts + 3_600_000) == {}
    with psycopg.connect(site.dsn) as conn:
        pending = {r[0] for r in conn.execute("SELECT gateway_code || ':' || tag FROM unregistered_tags")}
    assert {"gw-e2e:NEW.TAG", "gw-e2e:TK9.LT", "gw-ghost:G.1"} <= pending
    metrics = site.serve.metrics()
    for reason in ("unknown_tag", "foreign_tag", "not_a_number", "out_of_range", "future_timestamp",
                   "undecodable", "oversize", "unknown_gateway"):
        assert f'hw_ingest_rejections_total{{reason="{reason}"}}' in metrics, reason


def test_gateway_state_and_last_will_update_online_flag(site):
    state = f"hw/v1/{ENT}/gw-e2e/state"
    gw = site.gateway(ENT, "gw-e2e", client_id="will-test", will_topic=state)
    gw.publish(state, b"online", retain=True)
    wait_for(lambda: scalar(site.dsn, "SELECT online FROM gateways WHERE code = 'gw-e2e'") is True,
             what="online")
    gw.client.socket().close()  # drop the link without DISCONNECT: the broker sends the will
    gw.client.loop_stop()
    wait_for(lambda: scalar(site.dsn, "SELECT online FROM gateways WHERE code = 'gw-e2e'") is False,
             timeout=30, what="last will marks offline")
    assert scalar(site.dsn, "SELECT state_at IS NOT NULL AND last_seen IS NOT NULL FROM gateways "
                  "WHERE code = 'gw-e2e'")


def test_mosquitto_pub_command_line_reading_is_stored_within_a_second(site):
    ts = now_ms()
    user = f"{ENT}/gw-e2e"
    subprocess.run(
        ["mosquitto_pub", "-h", site.broker.host, "-p", str(site.broker.port), "-q", "1",
         "-u", user, "-P", site.passwords[user], "-t", f"hw/v1/{ENT}/gw-e2e/readings",
         "-m", f'{{"ts": {ts}, "values": {{"TK1.LT": 12.31}}}}'], check=True, timeout=10)
    sent = time.monotonic()
    wait_for(lambda: site.rows(ts), timeout=5, what="the reading")
    assert time.monotonic() - sent < 1.0


def test_collector_killed_mid_stream_ends_with_exactly_the_published_readings(project_broker, tmp_path):
    """SIGKILL the collector three times while a gateway streams QoS 1 batches."""
    with fresh_database("hw_test_kill") as dsn:
        s = Site(dsn, project_broker, tmp_path, "hw-ingest-kill", REGISTRY, GATEWAYS)
        s.serve.start()
        gw = s.gateway(ENT, "gw-e2e", client_id="kill-publisher")
        base = now_ms() - 3_600_000
        n_messages, per_message = 400, 25
        expected: set[tuple[str, int, float]] = set()
        tags = ["TK1.LT", "TK1.TT"]
        done = threading.Event()

        def stream() -> None:
            for m in range(n_messages):
                ts = base + m * 1000
                values = {}
                for k in range(per_message):
                    tag = tags[k % 2]
                    values.setdefault(ts + k, {})[tag] = float(m * 100 + k) / 10.0
                groups = [{"ts": t, "values": v} for t, v in values.items()]
                gw.publish(f"hw/v1/{ENT}/gw-e2e/readings", orjson.dumps(groups))
                for t, v in values.items():
                    for tag, val in v.items():
                        expected.add((tag, t, val))
                time.sleep(0.008)
            done.set()

        publisher = threading.Thread(target=stream, daemon=True)
        try:
            publisher.start()
            for delay in (0.6, 0.9, 0.9):
                time.sleep(delay)
                s.serve.kill()
                time.sleep(0.3)  # the broker queues for the persistent session meanwhile
                s.serve.start()
            assert done.wait(60), "publisher did not finish"
            total = len(expected)
            wait_for(lambda: scalar(dsn, "SELECT count(*) FROM readings") >= total, timeout=30,
                     what=f"{total} readings")
            time.sleep(1.0)  # anything extra (a duplicate) would show up now
            with psycopg.connect(dsn) as conn:
                stored = {(tag, int(round(ms)), value) for tag, ms, value in conn.execute(
                    "SELECT s.tag, extract(epoch FROM r.ts) * 1000, r.value "
                    "FROM readings r JOIN sensors s ON s.id = r.sensor_id")}
                count = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
            assert count == total == n_messages * per_message
            assert stored == expected
            assert s.serve.starts == 4
        finally:
            gw.close()
            s.serve.stop()


def test_health_and_readiness_endpoints(site, project_broker, tmp_path):
    import json
    import urllib.error
    import urllib.request

    base = f"http://127.0.0.1:{site.serve.http_port}"
    with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
        assert r.status == 200
    with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
        assert json.load(r) == {"ready": True, "mqtt": True, "database": True}
    assert "hw_ingest_write_seconds_bucket" in site.serve.metrics()
    # a collector the broker refuses is alive but not ready
    # no persistent session: a second layout on this database would be refused before
    # it ever reached the broker (ingest_layout); this one has to meet the broker's refusal
    refused = Serve(site.dsn, project_broker, tmp_path, HW_MQTT__CLIENT_ID="hw-refused",
                    HW_MQTT__PASSWORD="wrong", HW_MQTT__SESSION_EXPIRY_S="0")
    try:
        with pytest.raises(TimeoutError):
            refused.start(timeout=4)
        url = f"http://127.0.0.1:{refused.http_port}"
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "/readyz", timeout=2)
        assert err.value.code == 503 and json.load(err.value)["mqtt"] is False
    finally:
        refused.stop()
