"""`hazardwatch replay`: CSV (one series, long form) and stored ranges, over a real broker.

A real MQTT subscriber (the collector's identity, which may read hw/v1/#) records every
message and the moment it arrived; timing is checked as proportions, never as absolute
wall-clock performance."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from click.testing import CliRunner
from dbutil import fresh_database
from harness import wait_for

from hazardwatch.cli import main
from hazardwatch.registry import import_file

ENT = "91370105MA3C000043"
PASSWORD = "replay-" + secrets.token_hex(6)


class Recorder:
    """Subscribes to hw/v1/{ENT}/+/readings; keeps (monotonic receive time, topic, doc)."""

    def __init__(self, broker, topic: str) -> None:
        self.messages: list[tuple[float, str, dict]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"replay-rec-{secrets.token_hex(4)}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(broker.collector.username, broker.collector.password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), "subscriber not subscribed"

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), msg.topic, orjson.loads(msg.payload)))

    def wait(self, n: int, timeout: float = 15) -> list[tuple[float, str, dict]]:
        wait_for(lambda: len(self.messages) >= n, timeout, what=f"{n} messages")
        time.sleep(0.2)  # and nothing more
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def gw(project_broker):
    """A fresh gateway id on the shared broker, with PASSWORD."""
    name = f"gw-rp-{secrets.token_hex(3)}"
    project_broker.add_gateway(ENT, name, password=PASSWORD)
    return name


@pytest.fixture
def recorder(project_broker):
    rec = Recorder(project_broker, f"hw/v1/{ENT}/+/readings")
    yield rec
    rec.close()


def run(broker, *args: str, dsn: str | None = None):
    env = {"HW_MQTT__HOST": broker.host, "HW_MQTT__PORT": str(broker.port),
           "HW_GATEWAY_PASSWORD": PASSWORD}
    if dsn:
        env["HW_DATABASE_URL"] = dsn
    return CliRunner().invoke(main, ["replay", *args], env=env, catch_exceptions=False)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


T0 = 1_732_262_400_000  # 2024-11-22T08:00:00Z


def test_csv_at_100x_keeps_order_and_relative_timing(project_broker, gw, recorder, tmp_path):
    gaps_s = [10, 40, 20, 60, 10, 50, 30, 20]           # source inter-arrival times
    stamps = [T0]
    for g in gaps_s:
        stamps.append(stamps[-1] + g * 1000)
    csv = tmp_path / "lt.csv"
    rows = ["timestamp,value"]
    for i, ts in enumerate(stamps):  # both timestamp forms in one file
        rows.append(f"{iso(ts) if i % 2 else ts},{10 + i * 0.5}")
    csv.write_text("\n".join(rows) + "\n")

    res = run(project_broker, str(csv), "--speed", "100", "--tag", "TK1.LT",
              "--enterprise", ENT, "--gateway", gw)
    assert res.exit_code == 0, res.output
    assert "replayed 9 readings in 9 messages" in res.stdout

    msgs = [m for m in recorder.wait(9) if m[1] == f"hw/v1/{ENT}/{gw}/readings"]
    assert [d["ts"] for _, _, d in msgs] == stamps                     # order and timestamps kept
    assert [d["values"] for _, _, d in msgs] == [{"TK1.LT": 10 + i * 0.5} for i in range(9)]
    got = [b[0] - a[0] for a, b in zip(msgs, msgs[1:], strict=False)]
    # proportions: each gap's share of the whole matches the source's share
    for g, o in zip(gaps_s, got, strict=True):
        assert abs(o / sum(got) - g / sum(gaps_s)) < 0.04, (gaps_s, got)
    # and pacing is on: not faster than 100x asked for (a slower machine may only stretch it)
    assert sum(got) >= 0.8 * sum(gaps_s) / 100


def test_long_csv_two_tags_grouped_per_timestamp(project_broker, gw, recorder, tmp_path):
    csv = tmp_path / "long.csv"
    csv.write_text(
        "ts,tag,value\n"
        f"{T0},TK1.LT,12.5\n"
        f"{T0},TK1.TT,25.0\n"
        f"{iso(T0 + 10_000)},TK1.TT,25.5\n"
        f"{T0 + 10_000},TK1.LT,12.75\n"
        f"{T0 + 20_000},TK1.LT,\n")                       # empty value: null
    res = run(project_broker, str(csv), "--speed", "max", "--enterprise", ENT, "--gateway", gw)
    assert res.exit_code == 0, res.output
    assert "replayed 5 readings in 3 messages" in res.stdout
    docs = [d for _, t, d in recorder.wait(3) if t.endswith(f"/{gw}/readings")]
    assert docs == [
        {"ts": T0, "values": {"TK1.LT": 12.5, "TK1.TT": 25.0}},
        {"ts": T0 + 10_000, "values": {"TK1.TT": 25.5, "TK1.LT": 12.75}},
        {"ts": T0 + 20_000, "values": {"TK1.LT": None}},
    ]


def test_bad_rows_reported_by_line_and_field_rest_replayed(project_broker, gw, recorder, tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text(
        "ts,tag,value\n"                                   # line 1
        f"{T0},TK1.LT,1\n"                                 # line 2
        f"{T0 + 1000},TK1.LT,abc\n"                        # line 3: value
        f"{T0 + 2000},TK1.LT,3\n"                          # line 4
        "2024-11-22 08:00:03,TK1.LT,4\n"                   # line 5: ts without offset
        f"{T0 + 4000},TK1.LT\n"                            # line 6: a field short
        f"{T0 + 5000},TK1.LT,6\n")                         # line 7
    res = run(project_broker, str(csv), "--speed", "0", "--enterprise", ENT, "--gateway", gw)
    assert res.exit_code == 1
    err = res.stderr
    assert f"{csv}: line 3: value: 'abc' is not a number" in err
    assert f"{csv}: line 5: ts:" in err and "no UTC offset" in err
    assert f"{csv}: line 6: row: 2 fields, expected 3" in err
    assert "3 bad row(s) skipped" in err
    assert "replayed 3 readings in 3 messages" in res.stdout
    docs = [d for _, t, d in recorder.wait(3) if t.endswith(f"/{gw}/readings")]
    assert [d["values"]["TK1.LT"] for d in docs] == [1, 3, 6]


def test_shift_to_now_moves_the_first_reading_to_now_and_keeps_spacing(project_broker, gw, recorder,
                                                                      tmp_path):
    csv = tmp_path / "old.csv"
    csv.write_text(f"timestamp,value\n{T0},1\n{T0 + 60_000},2\n{T0 + 90_000},3\n")
    before = int(time.time() * 1000)
    res = run(project_broker, str(csv), "--speed", "max", "--shift-to-now", "--tag", "TK1.TT",
              "--enterprise", ENT, "--gateway", gw)
    after = int(time.time() * 1000)
    assert res.exit_code == 0, res.output
    ts = [d["ts"] for _, t, d in recorder.wait(3) if t.endswith(f"/{gw}/readings")]
    assert before <= ts[0] <= after
    assert [t - ts[0] for t in ts] == [0, 60_000, 90_000]


def test_one_series_needs_a_tag(project_broker, gw, tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text(f"timestamp,value\n{T0},1\n")
    res = run(project_broker, str(csv), "--enterprise", ENT, "--gateway", gw)
    assert res.exit_code != 0 and "needs exactly one --tag" in res.output


REGISTRY = """
regions:
  - {{code: "370105", name: 天桥区}}
enterprises:
  - code: {ent}
    name: 回放测试企业
    region: "370105"
    gateways: [{{id: {a}}}, {{id: {b}}}]
    sites:
      - id: R1
        name: 罐区
        kind: major_hazard
        grade: 2
        sensors:
          - {{tag: R1.LT, kind: level, unit: m, range: [0, 20], interval_s: 10, gateway: {a}}}
          - {{tag: R1.TT, kind: temperature, unit: °C, range: [-40, 120], interval_s: 10, gateway: {a}}}
          - {{tag: R1.PT, kind: pressure, unit: kPa, range: [-5, 50], interval_s: 10, gateway: {b}}}
"""


@pytest.fixture
def stored(project_broker, tmp_path):
    """A database with a registry of two gateways and readings stored straight into it."""
    a, b = f"gw-rda-{secrets.token_hex(3)}", f"gw-rdb-{secrets.token_hex(3)}"
    for g in (a, b):
        project_broker.add_gateway(ENT, g, password=PASSWORD)
    with fresh_database("hw_test_replay") as dsn:
        reg = tmp_path / "registry.yaml"
        reg.write_text(REGISTRY.format(ent=ENT, a=a, b=b))
        import_file(dsn, reg)
        rows = [(T0 + 10_000 * i, tag, v, q) for i in range(6)
                for tag, v, q in (("R1.LT", 5.0 + i, 0), ("R1.TT", 20.0 + i / 4, 0),
                                  ("R1.PT", None if i == 3 else 1.5 * i, 3 if i == 3 else 0))]
        rows.append((T0 + 3_600_000, "R1.LT", 99.0, 0))    # outside the replayed range
        with psycopg.connect(dsn) as conn:
            ids = dict(conn.execute("SELECT tag, id FROM sensors"))
            conn.cursor().executemany(
                "INSERT INTO readings (ts, sensor_id, value, quality) VALUES (to_timestamp(%s / 1000.0), %s, %s, %s)",
                [(ts, ids[tag], v, q) for ts, tag, v, q in rows])
        yield dsn, a, b


def test_db_range_republishes_the_stored_values(project_broker, recorder, stored):
    dsn, a, b = stored
    res = run(project_broker, "db:", "--from", iso(T0), "--to", str(T0 + 60_000), "--speed", "max",
              dsn=dsn)
    assert res.exit_code == 0, res.output
    assert "replayed 18 readings in 12 messages from 2 gateway(s)" in res.stdout
    msgs = recorder.wait(12)
    got = set()
    for _, topic, d in msgs:
        gw = topic.split("/")[3]
        if gw not in (a, b):
            continue
        for tag, v in d["values"].items():
            got.add((gw, d["ts"], tag, v, d.get("q", {}).get(tag, 0)))
    with psycopg.connect(dsn) as conn:
        want = set(conn.execute(
            "SELECT g.code, (extract(epoch FROM r.ts) * 1000)::bigint, s.tag, r.value, r.quality "
            "FROM readings r JOIN sensors s ON s.id = r.sensor_id JOIN gateways g ON g.id = s.gateway_id "
            "WHERE r.ts < to_timestamp(%s / 1000.0)", (T0 + 60_000,)))
    assert len(want) == 18 and got == want

    # --tag narrows the range to one sensor; a CSV without --gateway goes to the registry's
    res = run(project_broker, "db:", "--from", str(T0), "--to", str(T0 + 60_000), "--tag", "R1.PT",
              "--speed", "max", dsn=dsn)
    assert "replayed 6 readings in 6 messages from 1 gateway(s)" in res.stdout, res.output


def test_csv_tags_are_sent_by_their_registered_gateways(project_broker, recorder, stored, tmp_path):
    dsn, a, b = stored
    csv = tmp_path / "two.csv"
    csv.write_text(f"ts,tag,value\n{T0},R1.LT,1\n{T0},R1.PT,2\n{T0},R1.TT,3\n")
    res = run(project_broker, str(csv), "--speed", "max", dsn=dsn)
    assert res.exit_code == 0, res.output
    by_gw = {t.split("/")[3]: d["values"] for _, t, d in recorder.wait(2) if t.split("/")[3] in (a, b)}
    assert by_gw == {a: {"R1.LT": 1, "R1.TT": 3}, b: {"R1.PT": 2}}
