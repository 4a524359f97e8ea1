"""Ingest throughput, measured side by side in one run on this machine.

    python bench/ingest_bench.py [--seconds 30] [--gateways 40] [--publishers 2]

Prints, for the same rows (gateways batching 50 readings a message):
  * the PostgreSQL COPY ceiling (binary COPY of those rows, no MQTT);
  * a naive subscriber: one INSERT (autocommit) per reading;
  * `hazardwatch serve`: readings/s durably stored while publishers flood the project's
    broker, over the measurement window;
and the ratios between them. Broker and database are the real ones, co-located.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's broker runner and process harness

from brokers import Mosquitto  # noqa: E402
from dbutil import fresh_database  # noqa: E402
from harness import Serve  # noqa: E402

from hazardwatch.registry import import_file  # noqa: E402
from ingest import store  # noqa: E402
from ingest.batch import PG_EPOCH_MS, Columns  # noqa: E402

ENT = "91370105MA3C000043"
PER_MESSAGE = 50
SENSORS_PER_GATEWAY = 250


def registry_yaml(path: Path, gateways: int) -> None:
    lines = ["regions:", '  - {code: "370105", name: 天桥区}', "enterprises:",
             f"  - code: {ENT}", "    name: 基准测试企业", '    region: "370105"',
             "    gateways: [" + ", ".join(f"{{id: gw-{g:03d}}}" for g in range(gateways)) + "]",
             "    sites:"]
    for g in range(gateways):
        lines += [f"      - id: S{g:03d}", f"        name: 装置{g}", "        kind: major_hazard",
                  "        grade: 2", "        sensors:"]
        for s in range(SENSORS_PER_GATEWAY):
            lines.append(f"          - {{tag: G{g:03d}.T{s:03d}, kind: temperature, unit: °C, "
                         f"range: [-50, 500], interval_s: 10, gateway: gw-{g:03d}}}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def message(g: int, k: int, base_ms: int) -> tuple[str, bytes]:
    """The k-th message of gateway g: 50 sensors at one timestamp, unique (sensor, ts)."""
    start = (k * PER_MESSAGE) % SENSORS_PER_GATEWAY
    cycle = (k * PER_MESSAGE) // SENSORS_PER_GATEWAY
    values = {f"G{g:03d}.T{s:03d}": 20.0 + ((s * 7 + cycle) % 100) / 10.0
              for s in range(start, start + PER_MESSAGE)}
    return f"hw/v1/{ENT}/gw-{g:03d}/readings", orjson.dumps({"ts": base_ms + cycle, "values": values})


# ---- publishers -----------------------------------------------------------------------

def publisher(host: str, port: int, creds: dict[str, str], gateways: list[int], base_ms: int,
              seconds: float, issued, acked, allowed) -> None:
    """Publish QoS 1 batches while the readings issued stay under the controller's budget;
    count a reading as published only once the broker acknowledged it."""
    clients = []
    lock = threading.Lock()
    cond = threading.Condition(lock)
    my_acked = 0

    def on_publish(client, userdata, mid, reason_code, properties):
        nonlocal my_acked
        with cond:
            my_acked += 1
            cond.notify_all()

    for g in gateways:
        user = f"{ENT}/gw-{g:03d}"
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{g}", protocol=mqtt.MQTTv5)
        c.username_pw_set(user, creds[user])
        c.max_inflight_messages_set(100)
        c.on_publish = on_publish
        c.connect(host, port)
        c.loop_start()
        clients.append((g, c))
    deadline = time.monotonic() + seconds
    k = 0
    my_issued = 0
    reported = 0
    while time.monotonic() < deadline:
        with lock:
            done = my_acked
        if done > reported:
            with acked.get_lock():
                acked.value += (done - reported) * PER_MESSAGE
            reported = done
        if issued.value >= allowed.value:
            time.sleep(0.001)
            continue
        for g, c in clients:
            topic, payload = message(g, k, base_ms)
            c.publish(topic, payload, qos=1)
        my_issued += len(clients)
        with issued.get_lock():
            issued.value += len(clients) * PER_MESSAGE
        k += 1
    with cond:  # every issued publish acknowledged by the broker before leaving
        cond.wait_for(lambda: my_acked >= my_issued, timeout=60)
        done = my_acked
    with acked.get_lock():
        acked.value += (done - reported) * PER_MESSAGE
    for _, c in clients:
        c.disconnect()
        c.loop_stop()


class Flood:
    """Publisher processes paced by a budget: published may run `window` readings ahead
    of stored (or of nothing, for an open-loop run)."""

    def __init__(self, broker, creds, gateways: int, publishers: int, base_ms: int, seconds: float,
                 window: int = 100_000) -> None:
        self.issued = mp.Value("q", 0)
        self.acked = mp.Value("q", 0)
        self.allowed = mp.Value("q", window)
        self.window = window
        split = [list(range(gateways))[i::publishers] for i in range(publishers)]
        self.procs = [mp.Process(target=publisher, args=(broker.host, broker.port, creds, part, base_ms,
                                                         seconds, self.issued, self.acked, self.allowed))
                      for part in split]
        for p in self.procs:
            p.start()

    def pace(self, stored: float) -> None:
        self.allowed.value = int(stored) + self.window

    def join(self) -> None:
        for p in self.procs:
            p.join()


# ---- measurements -----------------------------------------------------------------------

def copy_ceiling(dsn: str, gateways: int, rows: int) -> float:
    """Binary COPY of the same rows the gateways send, 5,000 a transaction."""
    with psycopg.connect(dsn) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM sensors ORDER BY id")]
        conn.execute("TRUNCATE readings")
        conn.commit()
    sid = np.array(ids, dtype=np.int32)
    n_batches = rows // 5000
    base_us = int((time.time() * 1000 - 86_400_000 - PG_EPOCH_MS) * 1000)

    def batch(b: int) -> Columns:
        idx = np.arange(b * 5000, (b + 1) * 5000)
        return Columns(sid[idx % len(sid)], base_us + (idx // len(sid)) * 1000,
                       20.0 + (idx % 100) / 10.0, np.zeros(5000, bool), np.zeros(5000, np.int16))

    encoded = [store.encode_copy(batch(b)) for b in range(n_batches)]
    with psycopg.connect(dsn) as conn:
        t0 = time.perf_counter()
        for data in encoded:
            with conn.cursor().copy("COPY readings (ts, sensor_id, value, quality) FROM STDIN (FORMAT BINARY)") as cp:
                cp.write(data)
            conn.commit()
        elapsed = time.perf_counter() - t0
        conn.execute("TRUNCATE readings")
        conn.commit()
    return n_batches * 5000 / elapsed


def naive_subscriber(broker, dsn: str, creds, gateways: int, seconds: float, base_ms: int) -> float:
    """What a first attempt looks like: json per message, one INSERT per reading."""
    with psycopg.connect(dsn) as conn:
        tag_ids = dict(conn.execute("SELECT tag, id FROM sensors"))
        conn.execute("TRUNCATE readings")
        conn.commit()
    db = psycopg.connect(dsn, autocommit=True)
    stored = 0
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        nonlocal stored
        doc = orjson.loads(msg.payload)
        for tag, value in doc["values"].items():
            db.execute("INSERT INTO readings (ts, sensor_id, value, quality) "
                       "VALUES (to_timestamp(%s / 1000.0), %s, %s, 0) ON CONFLICT DO NOTHING",
                       (doc["ts"], tag_ids[tag], value))
            with lock:
                stored += 1

    user, password = broker.collector.username, broker.collector.password
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-naive", protocol=mqtt.MQTTv5)
    sub.username_pw_set(user, password)
    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe("hw/v1/+/+/readings", qos=1)
    sub.loop_start()
    time.sleep(0.5)
    flood = Flood(broker, creds, gateways, 1, base_ms, seconds + 2, window=5_000)
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:
        flood.pace(stored)
        time.sleep(0.05)
    s0, t0 = stored, time.perf_counter()
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        flood.pace(stored)
        time.sleep(0.05)
    rate = (stored - s0) / (time.perf_counter() - t0)
    flood.allowed.value = 1 << 62
    flood.join()
    sub.disconnect()
    sub.loop_stop()
    db.close()
    return rate


def stored_total(serve: Serve) -> float:
    m = re.search(r"^hw_ingest_readings_stored_total (\S+)$", serve.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def hazardwatch_serve(broker, dsn: str, creds, gateways: int, publishers: int, seconds: float,
                      base_ms: int, tmp: Path) -> tuple[float, float, dict]:
    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE readings")
        conn.commit()
    serve = Serve(dsn, broker, tmp, HW_MQTT__CLIENT_ID="bench-hw", HW_LOG_LEVEL="WARNING")
    serve.start()
    try:
        flood = Flood(broker, creds, gateways, publishers, base_ms, seconds + 5)

        def run_for(duration: float) -> float:
            end = time.monotonic() + duration
            stored = 0.0
            while time.monotonic() < end:
                stored = stored_total(serve)
                flood.pace(stored)
                time.sleep(0.05)
            return stored

        run_for(3.0)  # warm-up
        s0, p0, t0 = stored_total(serve), flood.acked.value, time.perf_counter()
        s1 = run_for(seconds)
        p1, t1 = flood.acked.value, time.perf_counter()
        flood.allowed.value = 1 << 62
        flood.join()
        rate = (s1 - s0) / (t1 - t0)
        offered = (p1 - p0) / (t1 - t0)
        # drain: everything the broker acknowledged ends up stored exactly once
        total = flood.acked.value
        last, idle_since = -1.0, time.monotonic()
        while time.monotonic() - idle_since < 10:
            now = stored_total(serve)
            if now >= total:
                break
            if now != last:
                last, idle_since = now, time.monotonic()
            time.sleep(0.5)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        return rate, offered, {"published": total, "stored_rows": rows}
    finally:
        serve.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="measurement window for serve")
    ap.add_argument("--naive-seconds", type=float, default=10.0)
    ap.add_argument("--gateways", type=int, default=40)
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--copy-rows", type=int, default=1_000_000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hw-bench-"))
    base_ms = int(time.time() * 1000) - 86_400_000
    broker = Mosquitto().start()
    try:
        creds = {}
        for g in range(args.gateways):
            user = f"{ENT}/gw-{g:03d}"
            creds[user] = broker.add_gateway(ENT, f"gw-{g:03d}", password=os.urandom(8).hex()).password
        with fresh_database("hw_bench", mode="off") as dsn:
            path = tmp / "registry.yaml"
            registry_yaml(path, args.gateways)
            import_file(dsn, path)
            print(f"registry: {args.gateways} gateways x {SENSORS_PER_GATEWAY} sensors; "
                  f"{PER_MESSAGE} readings/message", flush=True)
            print("1/3 PostgreSQL COPY ceiling ...", flush=True)
            ceiling = copy_ceiling(dsn, args.gateways, args.copy_rows)
            print(f"    {ceiling:,.0f} rows/s", flush=True)
            print(f"2/3 naive subscriber (one INSERT per reading), {args.naive_seconds:.0f} s ...", flush=True)
            naive = naive_subscriber(broker, dsn, creds, args.gateways, args.naive_seconds, base_ms)
            print(f"    {naive:,.0f} readings/s", flush=True)
            print(f"3/3 hazardwatch serve, {args.seconds:.0f} s window ...", flush=True)
            rate, offered, check = hazardwatch_serve(broker, dsn, creds, args.gateways, args.publishers,
                                                     args.seconds, base_ms + 10_000_000, tmp)
            print(f"    {rate:,.0f} readings/s stored (offered {offered:,.0f}/s)", flush=True)
    finally:
        broker.close()

    print()
    print(f"{'path':<44}{'readings/s':>14}{'ratio':>10}")
    print(f"{'PostgreSQL binary COPY (ceiling)':<44}{ceiling:>14,.0f}{1.0:>10.2f}")
    print(f"{'naive: one INSERT per reading':<44}{naive:>14,.0f}{naive / ceiling:>10.3f}")
    print(f"{'hazardwatch serve (stored, durable)':<44}{rate:>14,.0f}{rate / ceiling:>10.2f}")
    print()
    print(f"hazardwatch / COPY ceiling = {rate / ceiling:.2f}")
    print(f"hazardwatch / naive        = {rate / naive:.1f}x")
    print(f"published {check['published']:,} readings, stored {check['stored_rows']:,} rows "
          f"({'exact' if check['published'] == check['stored_rows'] else 'MISMATCH'})")


if __name__ == "__main__":
    main()
