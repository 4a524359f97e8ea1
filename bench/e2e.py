"""End-to-end benchmark: hazardwatch against its ceilings and a naive baseline, in one run.

    python bench/e2e.py                  # the full run (serve window 60 s), ~6 minutes
    python bench/e2e.py --quick          # a smoke run, ~1.5 minutes
    python bench/e2e.py --soak 600       # memory of `serve` over 10 minutes of load
    python bench/e2e.py --backlog        # 60 s queued at the broker, then time the catch-up

Everything runs on this machine, side by side, against the real broker (mosquitto with
the project's configuration, tests/brokers.py) and the real PostgreSQL (a fresh
database), with the synthetic fleet of simulators/loadgen.py (gateways of 50 sensors, one
50-reading QoS 1 message per gateway and timestamp). Phases of the main run, in order:

1. broker pass-through: LoadGen publishing as fast as the broker acknowledges → one bare
   paho subscriber (QoS 1, the collector's account) that only counts; no database.
2. hazardwatch `serve` (rules on, the shipped rule packs, alerting tasks running):
   a capacity probe, then the sustained window (--seconds) with LoadGen offering the
   probed rate; readings/s durably stored (committed, then acknowledged) and evaluated;
   CPU seconds of broker / database / hazardwatch / load generator over the window.
3. warning latency at half the sustained rate: trip readings (over HH of registered
   sensors with no on-delay) published among the load; publish → warning event
   committed (its NOTIFY reaching a LISTEN connection) and → the event received by a
   signed-in SSE client of /api/events/stream. p50 / p99.
4. PostgreSQL COPY ceiling: the very rows serve stored in its sustained window, read
   back in time order, into the same `readings` table with the same primary key, put back
   as it stood when the window began (the rows stored before it, then a checkpoint), in
   transactions of the mean batch size serve committed; each batch encoded as serve
   encodes it (ingest.store.encode_copy: numpy columns to binary COPY, rows ordered by
   sensor), copied and committed. No MQTT, no JSON, no validation, no rules.
5. naive baseline: a paho subscriber that INSERTs each reading (autocommit) as it
   arrives, fed by LoadGen with the same payloads.

Figures on a shared machine are noisy; the ratios, measured in one run, are the result.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
import paho.mqtt.client as mqtt
import psutil
import psycopg
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's broker runner and process harness

from brokers import Mosquitto  # noqa: E402
from dbutil import fresh_database  # noqa: E402
from harness import Serve  # noqa: E402

from alerting.api.users import add_user  # noqa: E402
from hazardwatch.registry import import_file  # noqa: E402
from ingest import store  # noqa: E402
from ingest.batch import Columns  # noqa: E402
from simulators.loadgen import Fleet, LoadGen, credit_code  # noqa: E402
from simulators.mqttout import PER_MESSAGE, GatewayPublisher  # noqa: E402

console = Console(stderr=True)   # progress
result = Console()               # the figures, on stdout
TRIP_ENT = credit_code(99_000)
TRIP_GATEWAY = "trip-gw"
TRIP_SENSORS = 10
TRIP_HH = 50.0
BENCH_USER = "bench-admin"
FLOOD = 5_000_000.0  # a LoadGen rate no process reaches: paced by broker PUBACKs only
PARTITIONS = 8       # the broker's plugin_opt_partitions when serve runs as several workers


# ---------------------------------------------------------------------------- the rig

def registry_yaml(fleet: Fleet) -> str:
    """The fleet (temperature sensors with H/HH far above the load's values, so limit,
    trend, rate and stuck rules all run on every reading) plus the trip sites."""
    lines = ["regions:", '  - {code: "370105", name: 天桥区}', "enterprises:"]
    by_ent: dict[str, list] = {}
    for spec in fleet.gateways:
        by_ent.setdefault(spec.enterprise, []).append(spec)
    for i, (ent, specs) in enumerate(by_ent.items()):
        lines += [f"  - code: {ent}", f"    name: 基准企业{i}", '    region: "370105"',
                  "    gateways: [" + ", ".join(f"{{id: {s.gateway}}}" for s in specs) + "]",
                  "    sites:"]
        for s in specs:
            lines += [f"      - id: S-{s.gateway}", f"        name: 装置 {s.gateway}",
                      "        kind: major_hazard", "        grade: 3", "        sensors:"]
            lines += [f"          - {{tag: {t}, kind: temperature, unit: °C, range: [-50, 500], "
                      f"limits: {{h: 300, hh: 400}}, interval_s: 10, gateway: {s.gateway}}}"
                      for t in s.tags]
    lines += [f"  - code: {TRIP_ENT}", "    name: 基准报警企业", '    region: "370105"',
              f"    gateways: [{{id: {TRIP_GATEWAY}}}]", "    sites:"]
    for k in range(TRIP_SENSORS):
        # no on/off delay: the latency measured is the pipeline's, not the rule's own delay
        lines += [f"      - id: TRIP-{k}", f"        name: 报警点 {k}", "        kind: major_hazard",
                  "        grade: 2", "        sensors:",
                  f"          - {{tag: TRIP{k:02d}.LEL, kind: gas_lel, unit: \"%LEL\", range: [0, 100], "
                  f"limits: {{h: 25, hh: {TRIP_HH:g}}}, interval_s: 3600, gateway: {TRIP_GATEWAY}, "
                  "rules: {on_delay_s: 0, off_delay_s: 0}}"]
    return "\n".join(lines) + "\n"


@dataclass
class Rig:
    broker: Mosquitto
    dsn: str
    fleet: Fleet
    password: str
    tmp: Path
    processes: int
    workers: int = 1
    acked_total: int = 0          # readings the broker acknowledged while serve was the consumer

    def loadgen(self, rate: float, duration: float) -> LoadGen:
        return LoadGen(self.fleet, self.broker.host, self.broker.port, self.password, rate=rate,
                       duration=duration, processes=self.processes, start_delay=0.5)

    def serve(self, **env: str) -> Workers:
        return Workers(self, self.workers, **env)

    def sql(self, query: str, params=()) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []


class Workers:
    """`hazardwatch serve` as one collector, or as N collector workers sharing the broker's
    partitions (MQTT v5 shared subscriptions, leases in PostgreSQL; DESIGN.md §9)."""

    def __init__(self, r: Rig, n: int, **env: str) -> None:
        if n > 1:
            env = {"HW_INGEST__PARTITIONS": str(PARTITIONS), "HW_INGEST__WORKERS": str(n), **env}
        self.procs = [Serve(r.dsn, r.broker, r.tmp, HW_MQTT__CLIENT_ID="bench-hw",
                            HW_LOG_LEVEL="WARNING", HW_INGEST__WORKER=str(i), **env)
                      for i in range(n)]

    def start(self, timeout: float = 60) -> Workers:
        for p in self.procs:
            p.start(timeout=timeout)
            SERVE_PIDS.add(p.proc.pid)
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.procs]

    @property
    def http_port(self) -> int:   # any worker serves the API (they share the database)
        return self.procs[0].http_port


@contextlib.contextmanager
def rig(gateways: int, processes: int, workers: int = 1):
    tmp = Path(tempfile.mkdtemp(prefix="hw-e2e-"))
    # one enterprise a gateway: partitions (by enterprise) then share the load evenly
    fleet = Fleet.synthetic(gateways, PER_MESSAGE, per_enterprise=1)
    password = secrets.token_hex(12)
    broker = Mosquitto(partitions=PARTITIONS if workers > 1 else 0)
    for spec in fleet.gateways:  # before start: no reload per user
        broker.add_gateway(spec.enterprise, spec.gateway, password=password)
    broker.add_gateway(TRIP_ENT, TRIP_GATEWAY, password=password)
    broker.start()
    try:
        with fresh_database("hw_e2e") as dsn:
            path = tmp / "registry.yaml"
            path.write_text(registry_yaml(fleet), encoding="utf-8")
            import_file(dsn, path)
            add_user(dsn, BENCH_USER, password, "admin")
            yield Rig(broker, dsn, fleet, password, tmp, processes, workers)
    finally:
        broker.close()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- measuring processes

@dataclass
class CpuReport:
    seconds: float
    groups: dict[str, float]            # CPU seconds per group over the window
    machine_busy: float                 # CPU seconds the whole machine was busy
    peak_rss: dict[str, int] = field(default_factory=dict)  # bytes, sampled


class CpuWatch:
    """CPU seconds per group of processes over a window, sampled every 0.5 s (psutil).

    groups: name → a function returning the group's pids now (asked every 2 s). A process
    first seen after the window opened counts from zero; one that exits keeps its last
    sample."""

    def __init__(self, groups: dict[str, callable], interval: float = 0.5) -> None:
        self.groups = groups
        self.interval = interval
        self._procs: dict[int, tuple[str, psutil.Process, float, float]] = {}  # pid → group, proc, base, last
        self._peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._first = True

    def __enter__(self) -> CpuWatch:
        self._t0 = time.monotonic()
        self._m0 = psutil.cpu_times()
        self._refresh()
        self._first = False
        self._thread.start()
        return self

    def _refresh(self) -> None:
        for name, pids in self.groups.items():
            with contextlib.suppress(Exception):
                for pid in pids():
                    if pid in self._procs:
                        continue
                    with contextlib.suppress(psutil.Error):
                        p = psutil.Process(pid)
                        t = p.cpu_times()
                        cpu = t.user + t.system
                        self._procs[pid] = (name, p, cpu if self._first else 0.0, cpu)

    def _sample(self) -> None:
        rss: dict[str, int] = {}
        for pid, (name, p, base, _) in list(self._procs.items()):
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    mem = p.memory_info().rss
                self._procs[pid] = (name, p, base, t.user + t.system)
                rss[name] = rss.get(name, 0) + mem
            except psutil.Error:
                continue
        for name, total in rss.items():
            self._peak[name] = max(self._peak.get(name, 0), total)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            if n % 4 == 0:
                self._refresh()
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        m1 = psutil.cpu_times()
        busy = sum(m1) - sum(self._m0) - ((m1.idle + m1.iowait) - (self._m0.idle + self._m0.iowait))
        groups: dict[str, float] = {}
        for name, _, base, last in self._procs.values():
            groups[name] = groups.get(name, 0.0) + max(0.0, last - base)
        self.report = CpuReport(time.monotonic() - self._t0, groups, busy, dict(self._peak))


def postgres_pids(dsn: str):
    """Two pid sources: the backends of the benchmark's database (ours alone), and the
    cluster's shared processes (postmaster, checkpointer, WAL writer, background writer,
    autovacuum launcher), which on a shared machine also work for other databases."""
    conn = psycopg.connect(dsn, autocommit=True)
    own = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    postmaster = psutil.Process(own).ppid()

    def backends() -> list[int]:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND datname = current_database()").fetchall()]

    def shared() -> list[int]:
        return [postmaster, *(r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname IS NULL "
            "AND backend_type <> 'client backend'").fetchall())]
    return backends, shared, conn


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a live process (Linux VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def metric(text: str, name: str) -> float:
    """The sum of `name` over every worker and label set; `name` may end with its labels
    (`…_count{stage="copy"}`) to pick one."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") or
                                           (name.endswith("}") and line.startswith(name))):
            total += float(line.rsplit(" ", 1)[1])
    return total


# the load generator publishes this long after a measuring window should end: reading the
# counters can take a while (a saturated serve answers /metrics late), and a window that ran
# past the generator's end would count its silence as a shortfall (it did: ~8 % of 6 s steps)
TAIL_S = 3.0

# the collector's batch stages, in order (ingest.metrics.STAGE_SECONDS)
STAGES = ("finalize", "evaluate", "wait", "copy", "wait_previous", "side_effects", "rules_write",
          "commit", "ack")


def scrape(serve: Workers) -> str:
    """/metrics of every worker, one after the other (metric() sums the counters); a
    saturated event loop may answer slowly, so be patient."""
    return "\n".join(_scrape_one(p.http_port) for p in serve.procs)


def _scrape_one(port: int) -> str:
    for attempt in range(5):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as r:
                return r.read().decode()
        except (TimeoutError, OSError):
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def stored(serve: Workers) -> float:
    return metric(scrape(serve), "hw_ingest_readings_stored_total")


def drain(serve: Workers, target: int, status, timeout: float = 120.0) -> float:
    """Wait until serve has stored `target` readings (since its start); seconds waited."""
    t0 = time.monotonic()
    last, idle_since = -1.0, t0
    while True:
        now = stored(serve)
        if now >= target:
            return time.monotonic() - t0
        if now != last:
            last, idle_since = now, time.monotonic()
        if time.monotonic() - idle_since > timeout:
            raise RuntimeError(f"serve stopped storing at {now:,.0f} of {target:,} readings")
        status.update(f"draining: {now:,.0f} / {target:,} stored")
        time.sleep(0.2)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


# ---------------------------------------------------------------------------- phase 1: broker

def readings_filter(r: Rig) -> str:
    """What the collector's account subscribes to for native readings: a partitioning
    broker delivers them under hwp/<k>/ (hw_identity's plugin_opt_partitions)."""
    return "hwp/+/hw/v1/+/+/readings" if r.workers > 1 else "hw/v1/+/+/readings"


def broker_ceiling(r: Rig, seconds: float, status) -> dict:
    counted = [0]
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        with lock:
            counted[0] += 1

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
    sub.username_pw_set(r.broker.collector.username, r.broker.collector.password)
    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(r.broker.host, r.broker.port, clean_start=True)
    sub.loop_start()
    sub.subscribe(readings_filter(r), qos=1)
    subscribed.wait(10)
    warm = 3.0
    gen = r.loadgen(FLOOD, warm + seconds + TAIL_S)
    try:
        cpu_groups = {"broker": lambda: [r.broker.pid], "load generator": lambda: gen_pids(r)}
        gen.wait_started()
        time.sleep(warm)
        with lock:
            c0 = counted[0]
        t0 = time.monotonic()
        with CpuWatch(cpu_groups) as watch:
            while time.monotonic() - t0 < seconds:
                status.update(f"broker pass-through: {(counted[0] - c0) * PER_MESSAGE / max(time.monotonic() - t0, 1e-3):,.0f} readings/s")
                time.sleep(0.5)
            with lock:
                c1 = counted[0]
            t1 = time.monotonic()
        result = gen.wait(timeout=seconds + 60)
    finally:
        gen.stop()
        sub.disconnect()
        sub.loop_stop()
    return {"rate": (c1 - c0) * PER_MESSAGE / (t1 - t0), "published_rate": result.total_rate,
            "cpu": watch.report, "errors": result.errors}


def gen_pids(r: Rig) -> list[int]:
    """Our children that are neither the broker nor a serve process: the load generator."""
    skip = {r.broker.pid, *SERVE_PIDS}
    return [p.pid for p in psutil.Process().children() if p.pid not in skip
            and "resource_tracker" not in " ".join(_cmdline(p))]


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


SERVE_PIDS: set[int] = set()


# ---------------------------------------------------------------------------- phase 2: serve

def step(r: Rig, serve: Workers, rate: float, seconds: float, status) -> tuple[float, float, float]:
    """Offer `rate` for a short window: (stored/s, published/s, seconds to drain after)."""
    warm = 2.0
    gen = r.loadgen(rate, warm + seconds + TAIL_S)
    try:
        gen.wait_started()
        time.sleep(warm)
        s0, a0, t0, x0 = stored(serve), gen.acked.value, time.monotonic(), gen.sent.value
        while time.monotonic() - t0 < seconds:
            status.update(f"capacity search: offering {rate:,.0f}/s, "
                          f"{(stored(serve) - s0) / max(time.monotonic() - t0, 1e-3):,.0f}/s stored")
            time.sleep(0.5)
        s1, a1, t1, x1 = stored(serve), gen.acked.value, time.monotonic(), gen.sent.value
        res = gen.wait(timeout=seconds + 60)
    finally:
        gen.stop()
    r.acked_total += res.acked
    console.print(f"      [dim]generator's own: {res.total_rate:,.0f}/s over {res.elapsed_s:.1f} s; "
                  f"window {t1 - t0:.1f} s, sent in it {(x1 - x0) / (t1 - t0):,.0f}/s[/dim]")
    return (s1 - s0) / (t1 - t0), (a1 - a0) / (t1 - t0), drain(serve, r.acked_total, status)


def search(r: Rig, serve: Workers, start: float, seconds: float, status) -> tuple[float, list]:
    """The highest offered rate serve keeps up with, stepping up by 1.25x.

    A flood is no probe on two cores: publishers running flat out take the CPU serve needs.
    Kept up: stored ≥ 97 % of what the broker acknowledged over the window, and the
    backlog drained within 3 s of the end."""
    rate, best, failed, steps = start, None, None, []

    def attempt(rate: float) -> bool:
        got, published, drained = step(r, serve, rate, seconds, status)
        ok = got >= 0.97 * published and drained <= 3.0
        short = published < 0.9 * rate   # below 90 %: the load generator is the limit
        steps.append({"offered": rate, "published": published, "stored": got, "drain_s": drained, "ok": ok,
                      "load_generator_short": short})
        verdict = "kept up" if ok else "fell behind"
        if short:
            verdict += f"; load generator short ({published / rate:.0%} of offered): counts as the limit"
        console.print(f"    offered {rate:>9,.0f}/s: published {published:>9,.0f}/s, stored {got:>9,.0f}/s, "
                      f"drained in {drained:4.1f} s: {verdict}")
        return ok and not short

    for _ in range(10):
        if not attempt(rate):
            failed = rate
            break
        best, rate = rate, rate * 1.25
    for _ in range(2):  # two steps of bisection between the last two: within ~6 %
        if best is None or failed is None:
            break
        mid = (best + failed) / 2
        if attempt(mid):
            best = mid
        else:
            failed = mid
    return (best if best is not None else start / 2), steps


def serve_throughput(r: Rig, serve: Workers, seconds: float, probe_s: float, rate: float | None,
                     start_rate: float, status) -> dict:
    probed, steps = None, []
    if rate is None:
        probed, steps = search(r, serve, start_rate, probe_s, status)
        rate = probed
    warm = 3.0
    prev = r.acked_total
    gen = r.loadgen(rate, warm + seconds + TAIL_S)
    backends, shared, pg_conn = postgres_pids(r.dsn)
    groups = {"broker": lambda: [r.broker.pid], "database": backends, "postgres shared": shared,
              "hazardwatch": lambda: serve.pids, "load generator": lambda: gen_pids(r)}
    try:
        gen.wait_started()
        time.sleep(warm)
        m0 = scrape(serve)
        a0, t0, w0 = gen.acked.value, time.monotonic(), time.time() * 1000.0
        with CpuWatch(groups) as watch:
            while time.monotonic() - t0 < seconds:
                done = metric(scrape(serve), "hw_ingest_readings_stored_total") - metric(m0, "hw_ingest_readings_stored_total")
                status.update(f"serve, offered {rate:,.0f}/s: {done / max(time.monotonic() - t0, 1e-3):,.0f} readings/s stored, "
                              f"{seconds - (time.monotonic() - t0):.0f} s left")
                time.sleep(1.0)
            m1 = scrape(serve)
            a1, t1, w1 = gen.acked.value, time.monotonic(), time.time() * 1000.0
        res = gen.wait(timeout=seconds + 60)
    finally:
        gen.stop()
        pg_conn.close()
    r.acked_total += res.acked
    elapsed = t1 - t0
    d = {k: metric(m1, k) - metric(m0, k) for k in (
        "hw_ingest_readings_stored_total", "hw_ingest_batch_readings_sum", "hw_ingest_batch_readings_count",
        "hw_ingest_write_seconds_sum", "hw_ingest_write_seconds_count")}
    stages = {}
    for stage in STAGES:
        sel = f'{{stage="{stage}"}}'
        n = metric(m1, f"hw_ingest_stage_seconds_count{sel}") - metric(m0, f"hw_ingest_stage_seconds_count{sel}")
        total = metric(m1, f"hw_ingest_stage_seconds_sum{sel}") - metric(m0, f"hw_ingest_stage_seconds_sum{sel}")
        stages[stage] = {"batches": n, "seconds": total}
    backlog_end = prev + a1 - metric(m1, "hw_ingest_readings_stored_total")
    t_drain = drain(serve, r.acked_total, status)
    return {
        "rate": d["hw_ingest_readings_stored_total"] / elapsed,
        "offered": rate, "published_rate": (a1 - a0) / elapsed, "probed": probed, "steps": steps,
        "seconds": elapsed, "window_ms": (w0, w1), "backlog_end": backlog_end, "drain_s": t_drain,
        "batch_mean": d["hw_ingest_batch_readings_sum"] / max(d["hw_ingest_batch_readings_count"], 1),
        "commits_per_s": d["hw_ingest_write_seconds_count"] / elapsed,
        "commit_ms_mean": 1000 * d["hw_ingest_write_seconds_sum"] / max(d["hw_ingest_write_seconds_count"], 1),
        "cpu": watch.report, "errors": res.errors, "stages": stages,
    }


# ---------------------------------------------------------------------------- phase 3: latency

def latency(r: Rig, serve: Workers, rate: float, seconds: float, status, trip_every: float = 0.25) -> dict:
    listen: dict[int, float] = {}
    sse: dict[int, float] = {}
    stop = threading.Event()
    ready = threading.Event()

    def listener() -> None:
        with psycopg.connect(r.dsn, autocommit=True) as conn:
            conn.execute("LISTEN hw_events")
            ready.set()
            while not stop.is_set():
                for n in conn.notifies(timeout=0.2):
                    listen.setdefault(int(n.payload), time.time())

    base = f"http://127.0.0.1:{serve.http_port}"
    token = httpx.post(f"{base}/api/login", json={"username": BENCH_USER, "password": r.password},
                       timeout=10).raise_for_status().json()["token"]
    sse_ready = threading.Event()

    def sse_reader() -> None:
        with httpx.Client(timeout=httpx.Timeout(10, read=60)) as c, c.stream(
                "GET", f"{base}/api/events/stream", headers={"Authorization": f"Bearer {token}"}) as resp:
            resp.raise_for_status()
            sse_ready.set()
            event_id = None
            for line in resp.iter_lines():
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: ") and event_id is not None:
                    sse.setdefault(event_id, time.time())
                    event_id = None
                if stop.is_set():
                    return

    threads = [threading.Thread(target=listener, daemon=True), threading.Thread(target=sse_reader, daemon=True)]
    for t in threads:
        t.start()
    ready.wait(10)
    sse_ready.wait(10)
    tags = [f"TRIP{k:02d}.LEL" for k in range(TRIP_SENSORS)]
    sensor_of = dict(r.sql("SELECT tag, id FROM sensors WHERE tag = ANY(%s)", (tags,)))
    pub = GatewayPublisher(r.broker.host, r.broker.port, TRIP_ENT, TRIP_GATEWAY, r.password,
                           client_id="bench-trip").connect()
    gen = r.loadgen(rate, seconds + 3.0)
    trips: list[tuple[int, float, float]] = []   # sensor id, value, published at
    try:
        gen.wait_started()
        time.sleep(2.0)
        t_end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < t_end:
            tag = tags[i % len(tags)]
            value = round(TRIP_HH + 10.0 + (i % 3000) * 0.01, 2)
            t_pub = time.time()
            pub.publish_group(int(t_pub * 1000), {tag: value})
            trips.append((sensor_of[tag], value, t_pub))
            time.sleep(trip_every / 2)
            pub.publish_group(int(time.time() * 1000), {tag: 5.0})  # clears, so the next trip raises
            time.sleep(trip_every / 2)
            i += 1
            status.update(f"latency at {rate:,.0f} readings/s: {i} trips published")
        res = gen.wait(timeout=seconds + 60)
        pub.flush(30)
        time.sleep(3.0)
    finally:
        gen.stop()
        pub.close()
        stop.set()
    r.acked_total += res.acked
    events = {}
    for eid, detail in r.sql("SELECT id, detail FROM warning_events WHERE action = 'alarm_raised' "
                             "AND detail->>'condition' = 'hh'"):
        events[(detail.get("sensor_id"), round(float(detail.get("value", -1)), 2))] = eid
    commit, pushed, missing = [], [], 0
    for sid, value, t_pub in trips:
        eid = events.get((sid, value))
        if eid is None or eid not in listen:
            missing += 1
            continue
        commit.append(listen[eid] - t_pub)
        if eid in sse:
            pushed.append(sse[eid] - t_pub)
    return {"rate": rate, "published_rate": res.total_rate, "trips": len(trips), "missing": missing,
            "commit": commit, "sse": pushed}


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


# ---------------------------------------------------------------------------- phase 4: COPY

def copy_ceiling(r: Rig, batch: int, window_ms: tuple[float, float], max_rows: int, status) -> dict:
    """The rows serve stored in its sustained window, re-copied into `readings` as it stood
    when that window began, in transactions of serve's mean batch size.

    The table's state decides what a row costs the backend (a bigger (sensor_id, ts) index,
    more pages evicted from shared_buffers): into an emptied table the same rows go in up
    to twice as fast as into the table serve was writing, which would measure the empty
    table rather than the pipeline. So the rows stored before the window (the load
    generator stamps readings with the wall clock: ts < the window's start) are put back
    in time order, as serve wrote them, and a checkpoint is taken, before the clock starts."""
    t0_ms, t1_ms = window_ms
    status.update("COPY ceiling: reading back the window's rows")
    buf = bytearray()
    with psycopg.connect(r.dsn) as conn, conn.cursor().copy(
            "COPY (SELECT ts, sensor_id, value, quality FROM readings "
            "WHERE ts >= to_timestamp(%s / 1000.0) AND ts < to_timestamp(%s / 1000.0) "
            f"ORDER BY ts, sensor_id LIMIT {int(max_rows)}) TO STDOUT (FORMAT BINARY)",
            (t0_ms, t1_ms)) as cp:
        for chunk in cp:
            buf += chunk
    body = memoryview(buf)[len(store._HEADER):len(buf) - len(store._TRAILER)]
    rows = np.frombuffer(body, dtype=store._ROW)  # every value non-null in the fleet's load
    n = len(rows)
    cols = Columns(rows["sid"].astype(np.int32), rows["ts"].astype(np.int64), rows["v"].astype(np.float64),
                   np.zeros(n, dtype=bool), rows["q"].astype(np.int16))
    del buf, body, rows
    status.update("COPY ceiling: putting the table back as it stood when the window began")
    with psycopg.connect(r.dsn, autocommit=True) as conn:
        conn.execute("CREATE UNLOGGED TABLE bench_before AS SELECT * FROM readings "
                     "WHERE ts < to_timestamp(%s / 1000.0)", (t0_ms,))
        conn.execute("TRUNCATE readings")
        before = conn.execute("INSERT INTO readings SELECT * FROM bench_before "
                              "ORDER BY ts, sensor_id").rowcount
        conn.execute("DROP TABLE bench_before")
        size = conn.execute("SELECT pg_total_relation_size('readings')").fetchone()[0]
        conn.execute("CHECKPOINT")
    encode_s = 0.0
    backends, shared, pg_conn = postgres_pids(r.dsn)
    try:
        with psycopg.connect(r.dsn) as conn, CpuWatch({"database": backends,
                                                       "postgres shared": shared}) as watch:
            t0 = time.perf_counter()
            for start in range(0, n, batch):
                part = Columns(*(a[start:start + batch] for a in (cols.sensor_id, cols.ts_us, cols.value,
                                                                   cols.null, cols.quality)))
                e0 = time.perf_counter()
                data = store.encode_copy(part)   # as serve encodes: ordered by sensor in the batch
                encode_s += time.perf_counter() - e0
                with conn.cursor().copy(store._COPY_SQL.format("readings")) as cp:
                    cp.write(data)
                conn.commit()
                if start // batch % 50 == 0:
                    status.update(f"COPY ceiling: {start:,} / {n:,} rows")
            elapsed = time.perf_counter() - t0
    finally:
        pg_conn.close()
    return {"rate": n / elapsed, "rows": n, "batch": batch, "encode_share": encode_s / elapsed,
            "rows_before": before, "bytes_before": size, "cpu": watch.report}


# ---------------------------------------------------------------------------- phase 5: naive

def naive(r: Rig, seconds: float, rate: float, status) -> dict:
    tag_ids = dict(r.sql("SELECT tag, id FROM sensors"))
    r.sql("TRUNCATE readings")
    db = psycopg.connect(r.dsn, autocommit=True)
    count = [0]

    def on_message(client, userdata, msg):
        parts = msg.topic.split("/")[2 if r.workers > 1 else 0:]
        if len(parts) != 5:
            return
        doc = orjson.loads(msg.payload)
        for tag, value in doc["values"].items():
            db.execute("INSERT INTO readings (ts, sensor_id, value, quality) "
                       "VALUES (to_timestamp(%s / 1000.0), %s, %s, 0) ON CONFLICT DO NOTHING",
                       (doc["ts"], tag_ids[tag], value))
            count[0] += 1

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-naive", protocol=mqtt.MQTTv5)
    sub.username_pw_set(r.broker.collector.username, r.broker.collector.password)
    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(r.broker.host, r.broker.port, clean_start=True)
    sub.loop_start()
    sub.subscribe(readings_filter(r), qos=1)
    subscribed.wait(10)
    warm = 2.0
    gen = r.loadgen(rate, warm + seconds + TAIL_S)
    try:
        gen.wait_started()
        time.sleep(warm)
        c0, t0 = count[0], time.monotonic()
        while time.monotonic() - t0 < seconds:
            status.update(f"naive subscriber: {(count[0] - c0) / max(time.monotonic() - t0, 1e-3):,.0f} readings/s")
            time.sleep(0.5)
        c1, t1 = count[0], time.monotonic()
    finally:
        sub.disconnect()
        sub.loop_stop()
        gen.stop()
        db.close()
    return {"rate": (c1 - c0) / (t1 - t0)}


# ---------------------------------------------------------------------------- the main run

def main_run(args) -> dict:
    out: dict = {"load": os.getloadavg(), "gateways": args.gateways, "processes": args.processes,
                 "workers": args.workers}
    with rig(args.gateways, args.processes, args.workers) as r, console.status("starting") as status:
        console.print(f"fleet: {args.gateways} gateways x {PER_MESSAGE} sensors "
                      f"({args.gateways * PER_MESSAGE:,} sensors), {PER_MESSAGE} readings a message, "
                      f"{args.processes} load-generator processes; load average {out['load'][0]:.2f}")
        console.print(f"1/5 broker pass-through, {args.broker_seconds:g} s")
        out["broker"] = broker_ceiling(r, args.broker_seconds, status)
        console.print(f"    {fmt_rate(out['broker']['rate'])} readings/s received by a bare subscriber")

        console.print("2/5 hazardwatch serve (rules on"
                      + (f", {args.workers} workers on {PARTITIONS} partitions" if args.workers > 1 else "")
                      + f"): capacity search ({args.probe_seconds:g} s "
                      f"steps), then {args.seconds:g} s sustained at the best rate")
        serve = r.serve().start(timeout=60)
        try:
            s = serve_throughput(r, serve, args.seconds, args.probe_seconds, args.rate,
                                 args.start_rate, status)
            out["serve"] = s
            console.print(f"    {fmt_rate(s['rate'])} readings/s stored (offered {fmt_rate(s['offered'])}/s; "
                          f"backlog at the end {s['backlog_end']:,.0f}, drained in {s['drain_s']:.1f} s)")
            console.print(f"3/5 warning latency at half that rate, {args.latency_seconds:g} s")
            lat = latency(r, serve, s["rate"] / 2, args.latency_seconds, status)
            out["latency"] = lat
            console.print(f"    commit p50 {pct(lat['commit'], 50) * 1000:.0f} ms p99 {pct(lat['commit'], 99) * 1000:.0f} ms; "
                          f"SSE p50 {pct(lat['sse'], 50) * 1000:.0f} ms p99 {pct(lat['sse'], 99) * 1000:.0f} ms "
                          f"({len(lat['commit'])} of {lat['trips']} trips)")
            drain(serve, r.acked_total, status)
            out["serve"]["peak_rss"] = sum(vm_hwm(pid) for pid in serve.pids)
        finally:
            serve.stop()
        rows = r.sql("SELECT count(*) FROM readings WHERE sensor_id IN "
                     "(SELECT id FROM sensors WHERE tag NOT LIKE 'TRIP%%')")[0][0]
        out["exact"] = {"acked": r.acked_total, "stored": rows}
        console.print(f"    published (broker-acknowledged) {r.acked_total:,} readings, stored {rows:,} rows")

        batch = max(1, round(s["batch_mean"]))
        console.print(f"4/5 PostgreSQL COPY ceiling: the window's rows, {batch:,} a transaction, into "
                      "the table as it stood when the window began")
        out["copy"] = copy_ceiling(r, batch, s["window_ms"], args.copy_rows, status)
        c = out["copy"]
        console.print(f"    {fmt_rate(c['rate'])} rows/s ({c['rows']:,} rows onto {c['rows_before']:,} "
                      f"rows, {c['bytes_before'] / 2**20:,.0f} MiB with the index)")

        console.print(f"5/5 naive subscriber (one INSERT per reading), {args.naive_seconds:g} s")
        out["naive"] = naive(r, args.naive_seconds, args.naive_rate, status)
        console.print(f"    {fmt_rate(out['naive']['rate'])} readings/s")
    return out


def report(out: dict) -> None:
    s, c, n, b = out["serve"], out["copy"], out["naive"], out["broker"]
    ceiling = c["rate"]
    t = Table(title="hazardwatch end to end (one run, this machine)")
    t.add_column("path")
    t.add_column("readings/s", justify="right")
    t.add_column("/ COPY ceiling", justify="right")
    t.add_column("/ naive", justify="right")
    for name, rate in (("broker pass-through (bare subscriber)", b["rate"]),
                       (f"PostgreSQL COPY, same rows, same table, {c['batch']:,}/tx (ceiling)", ceiling),
                       ("hazardwatch serve, rules on (sustained)" if out.get("workers", 1) == 1 else
                        f"hazardwatch serve as {out['workers']} workers, rules on (sustained)", s["rate"]),
                       ("naive: one INSERT per reading", n["rate"])):
        t.add_row(name, fmt_rate(rate), f"{rate / ceiling:.2f}", f"{rate / n['rate']:.1f}x")
    result.print(t)
    lat = out["latency"]
    result.print(f"serve: offered {fmt_rate(s['offered'])}/s"
                  + (" (the highest step of the capacity search that kept up)" if s.get("probed") else "")
                  + f", {s['seconds']:.0f} s window, mean batch {s['batch_mean']:,.0f} readings, "
                  f"{s['commits_per_s']:.1f} commits/s, {s['commit_ms_mean']:.1f} ms a transaction; "
                  f"backlog at the end {s['backlog_end']:,.0f} readings, drained in {s['drain_s']:.1f} s")
    result.print(f"warning latency at {fmt_rate(lat['rate'])} readings/s ({len(lat['commit'])} trips"
                  f"{', ' + str(lat['missing']) + ' unmatched' if lat['missing'] else ''}): "
                  f"publish → committed p50 {pct(lat['commit'], 50) * 1000:.0f} ms, p99 {pct(lat['commit'], 99) * 1000:.0f} ms; "
                  f"publish → SSE p50 {pct(lat['sse'], 50) * 1000:.0f} ms, p99 {pct(lat['sse'], 99) * 1000:.0f} ms")
    if s.get("stages"):
        st = Table(title=f"serve's batch stages over the window (wall time; {out.get('workers', 1)} "
                         f"worker(s), hw_ingest_stage_seconds)")
        for col in ("stage", "batches", "ms a batch", "share of the window"):
            st.add_column(col, justify="left" if col == "stage" else "right")
        for stage in STAGES:
            v = s["stages"].get(stage)
            if v and v["batches"]:
                st.add_row(stage, f"{v['batches']:,.0f}", f"{1000 * v['seconds'] / v['batches']:.1f}",
                           f"{v['seconds'] / s['seconds'] / out.get('workers', 1):.0%}")
        result.print(st)
        result.print("wait = for the batch before to finish its COPY (the writers copy in order); "
                     "wait_previous = for it to commit (acks in order); share > 100 % in sum: "
                     "stages of consecutive batches overlap")
    cpu: CpuReport = s["cpu"]
    t = Table(title=f"CPU over the serve window ({cpu.seconds:.0f} s, 2 cores = {2 * cpu.seconds:.0f} CPU s)")
    t.add_column("process group")
    t.add_column("CPU s", justify="right")
    t.add_column("cores", justify="right")
    t.add_column("µs / reading", justify="right")
    readings = s["rate"] * cpu.seconds
    known = 0.0
    for name in ("hazardwatch", "database", "postgres shared", "broker", "load generator"):
        v = cpu.groups.get(name, 0.0)
        known += v
        t.add_row(name, f"{v:.1f}", f"{v / cpu.seconds:.2f}", f"{v / readings * 1e6:.1f}")
    other = max(0.0, cpu.machine_busy - known)
    t.add_row("everything else on the machine", f"{other:.1f}", f"{other / cpu.seconds:.2f}", "")
    t.add_row("idle", f"{max(0.0, 2 * cpu.seconds - cpu.machine_busy):.1f}", "", "")
    result.print(t)
    result.print("database = the benchmark database's backends; postgres shared = postmaster, "
                  "checkpointer, WAL and background writers (they also work for other databases "
                  "on a shared machine)")
    result.print(f"peak RSS of hazardwatch serve: {s['peak_rss'] / 2**20:.0f} MiB; "
                  f"COPY ceiling includes binary encoding from numpy columns ({c['encode_share']:.0%} of its time); "
                  f"backend CPU {c['cpu'].groups.get('database', 0) / (c['rows'] / 1e6):.2f} s per million rows "
                  f"in the ceiling vs {cpu.groups.get('database', 0) / (readings / 1e6):.2f} under serve")
    ex = out["exact"]
    result.print(f"every broker-acknowledged reading stored exactly once: "
                  f"{'yes' if ex['acked'] == ex['stored'] else 'NO'} ({ex['acked']:,} acknowledged, {ex['stored']:,} rows)")
    result.print(f"load average at start {out['load'][0]:.2f} {out['load'][1]:.2f} {out['load'][2]:.2f}")
    result.print()
    result.print(f"hazardwatch / COPY ceiling = {s['rate'] / ceiling:.2f}  (target ≥ 0.60)")
    result.print(f"hazardwatch / naive        = {s['rate'] / n['rate']:.0f}x  (target ≥ 50x)")
    kept = s["backlog_end"] <= 2 * s["offered"]   # at most 2 s of load left behind
    result.print(f"hazardwatch sustained      = {fmt_rate(s['rate'])} readings/s  (target ≥ 100,000)"
                 + ("" if kept else f"; NOT kept up: {s['backlog_end']:,.0f} readings behind at the end"))
    result.print(f"warning latency p99        = {pct(lat['sse'], 99) * 1000:.0f} ms to SSE  (target ≤ 500 ms)")


# ---------------------------------------------------------------------------- soak and backlog

def soak(args) -> dict:
    with rig(args.gateways, args.processes, args.workers) as r, console.status("soak") as status:
        serve = r.serve().start(timeout=60)
        procs = [psutil.Process(pid) for pid in serve.pids]

        def rss() -> int:
            return sum(p.memory_info().rss for p in procs)
        samples: list[tuple[float, int]] = []
        gen = r.loadgen(args.soak_rate, args.soak + 2)
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.soak:
                samples.append((time.monotonic() - t0, rss()))
                status.update(f"soak at {args.soak_rate:,.0f}/s: {samples[-1][0]:.0f} s, "
                              f"RSS {samples[-1][1] / 2**20:.0f} MiB, stored {stored(serve):,.0f}")
                time.sleep(10.0)
            samples.append((time.monotonic() - t0, rss()))
            res = gen.wait(timeout=120)
            r.acked_total += res.acked
            drain(serve, r.acked_total, status)
            peak = sum(vm_hwm(pid) for pid in serve.pids)
        finally:
            gen.stop()
            serve.stop()
    t = np.array([s[0] for s in samples])
    m = np.array([s[1] for s in samples]) / 2**20
    half = t >= t[-1] / 2
    slope = float(np.polyfit(t[half], m[half], 1)[0] * 60) if half.sum() >= 2 else float("nan")
    for ts, mb in zip(t, m, strict=True):
        result.print(f"  {ts:6.0f} s  {mb:7.1f} MiB")
    result.print(f"soak: {args.soak:g} s at {args.soak_rate:,.0f} readings/s offered "
                  f"({res.total_rate:,.0f}/s acknowledged); RSS {m[0]:.0f} → {m[-1]:.0f} MiB, peak "
                  f"{peak / 2**20:.0f} MiB; slope over the second half {slope:+.2f} MiB/min")
    return {"samples": samples, "slope_mib_per_min": slope, "peak": peak, "rate": res.total_rate}


def backlog(args) -> dict:
    with rig(args.gateways, args.processes, args.workers) as r, console.status("backlog") as status:
        serve = r.serve()
        serve.start(timeout=60)  # subscribes with a persistent session, then goes away
        serve.stop()
        console.print(f"collector stopped; publishing {args.backlog_rate:,.0f} readings/s for "
                      f"{args.backlog_seconds:g} s (the broker queues)")
        gen = r.loadgen(args.backlog_rate, args.backlog_seconds)
        try:
            while gen.running:
                status.update(f"queued at the broker: {gen.acked.value:,} readings")
                time.sleep(0.5)
            res = gen.wait(timeout=60)
        finally:
            gen.stop()
        t0 = time.monotonic()
        serve.start(timeout=60)
        ready = time.monotonic() - t0
        try:
            drain(serve, res.acked, status, timeout=60)
            caught = time.monotonic() - t0
            peak = sum(vm_hwm(pid) for pid in serve.pids)
        finally:
            serve.stop()
        rows = r.sql("SELECT count(*) FROM readings")[0][0]
    result.print(f"backlog: {res.acked:,} readings queued in {args.backlog_seconds:g} s "
                  f"({res.total_rate:,.0f}/s); after restart ready in {ready:.1f} s, caught up in "
                  f"{caught:.1f} s (target ≤ 30 s) = {res.acked / (caught - ready):,.0f} readings/s; "
                  f"{rows:,} rows stored; peak RSS of serve {peak / 2**20:.0f} MiB")
    return {"queued": res.acked, "ready_s": ready, "caught_up_s": caught, "rows": rows, "peak_rss": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="serve's sustained window")
    ap.add_argument("--probe-seconds", type=float, default=6.0,
                    help="window of each step of the capacity search")
    ap.add_argument("--start-rate", type=float, default=40_000.0, help="first step of the search")
    ap.add_argument("--rate", type=float, help="offer this rate to serve instead of searching")
    ap.add_argument("--broker-seconds", type=float, default=15.0)
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--naive-seconds", type=float, default=15.0)
    ap.add_argument("--naive-rate", type=float, default=6_000.0, help="offered to the naive subscriber")
    ap.add_argument("--copy-rows", type=int, default=20_000_000,
                    help="at most this many of the window's rows re-copied (the earliest)")
    ap.add_argument("--gateways", type=int, default=200)
    ap.add_argument("--processes", type=int, default=2, help="load-generator processes")
    ap.add_argument("--workers", type=int, default=1,
                    help="run serve as this many collector workers (partitioned broker)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: short windows, small fleet")
    ap.add_argument("--soak", type=float, metavar="SECONDS", help="memory of serve under load instead")
    ap.add_argument("--soak-rate", type=float, default=50_000.0)
    ap.add_argument("--backlog", action="store_true", help="time the catch-up after a queued backlog instead")
    ap.add_argument("--backlog-rate", type=float, default=20_000.0)
    ap.add_argument("--backlog-seconds", type=float, default=60.0)
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.probe_seconds, args.broker_seconds = 10.0, 3.0, 5.0
        args.latency_seconds, args.naive_seconds = 8.0, 5.0
        args.gateways = min(args.gateways, 60)
        args.backlog_seconds, args.soak = min(args.backlog_seconds, 15.0), args.soak and min(args.soak, 60.0)

    if args.soak:
        out = soak(args)
    elif args.backlog:
        out = backlog(args)
    else:
        out = main_run(args)
        report(out)
    if args.json:
        def default(o):
            if isinstance(o, CpuReport):
                return o.__dict__
            raise TypeError
        args.json.write_bytes(orjson.dumps(out, default=default, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
