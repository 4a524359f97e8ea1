"""One collector against two partitioned collector workers, draining the same backlog.

    python bench/scale_bench.py [--seconds 20] [--gateways 40] [--rate 60000]

Each configuration gets a fresh database and its own broker (the project's config and
plugin): "1 worker" is the plain single collector (no partitions); "2 workers" is
plugin_opt_partitions 8 with `hazardwatch serve` started twice (HW_INGEST__WORKER 0 and 1).
The collectors run once (so their persistent sessions exist) and stop; the load generator
(simulators/loadgen.py, 2 processes, 50 readings a message, one enterprise per gateway so
the partitions fill evenly) then queues --seconds × --rate readings in the broker; the
collectors start again and the bench times how fast they store that backlog, rules on.
Draining a backlog rather than racing a live flood keeps the load generator's own CPU out
of the measurement.

It prints readings/s for each, the ratio, and the CPU seconds used while draining
(collectors, broker, PostgreSQL, the whole machine), because on a small shared machine the
workers share the cores with everything else and the ratio says as much about the CPU left
over as about the design.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's broker runner and process harness

from brokers import Mosquitto  # noqa: E402
from dbutil import fresh_database  # noqa: E402
from harness import Serve  # noqa: E402

from hazardwatch.registry import import_file  # noqa: E402
from simulators.loadgen import Fleet, LoadGen  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_S = 4.0


def cpu_s(pids: list[int]) -> float:
    """user + system CPU seconds of these processes so far (0 for the ones gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (all cores, /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICKS


def postgres_pids() -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "postgres":
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def stored(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM readings").fetchone()[0]


def measure(workers: int, fleet: Fleet, registry: Path, seconds: float, rate: float,
            log_dir: Path) -> dict:
    """Queue a backlog in the broker while the collectors are stopped, then time how fast
    they drain it (the load generator is finished by then, so it takes no CPU from them)."""
    password = secrets.token_hex(8)
    with fresh_database("hw_bench_scale") as dsn:
        broker = Mosquitto(partitions=8 if workers > 1 else 0)
        serves: list[Serve] = []
        try:
            broker.start()
            import_file(dsn, registry)
            for spec in fleet.gateways:
                broker.add_gateway(spec.enterprise, spec.gateway, password=password)
            env = {"HW_ALERTING__ENABLED": "false", "HW_LOG_LEVEL": "WARNING",
                   "HW_MQTT__CLIENT_ID": f"hw-bench-{workers}"}
            if workers > 1:
                env |= {"HW_INGEST__PARTITIONS": "8", "HW_INGEST__WORKERS": str(workers)}
            serves = [Serve(dsn, broker, log_dir, HW_INGEST__WORKER=str(w), **env)
                      for w in range(workers)]
            for s in serves:  # once, so the persistent sessions and subscriptions exist
                s.start(60)
            for s in serves:
                s.stop()
            gen = LoadGen(fleet, broker.host, broker.port, password, rate=rate,
                          duration=seconds, processes=2)
            result = gen.wait(timeout=seconds + 120)
            gen.stop()
            backlog = result.acked
            for s in serves:
                s.start(60)
            groups = {"collectors": [s.proc.pid for s in serves], "broker": [broker.pid]}
            busy0 = machine_busy_s()
            cpu0 = {k: cpu_s(v) for k, v in groups.items()}
            pg0 = {pid: cpu_s([pid]) for pid in postgres_pids()}
            n0, t0 = stored(dsn), time.monotonic()
            n1 = n0
            while n1 < backlog and time.monotonic() - t0 < 600:
                time.sleep(0.1)
                n1 = stored(dsn)
            t1 = time.monotonic()
            cpu = {k: cpu_s(v) - cpu0[k] for k, v in groups.items()}
            pg1 = {pid: cpu_s([pid]) for pid in postgres_pids()}  # backends come and go
            cpu["postgres (whole server)"] = sum(pg1[p] - pg0[p] for p in pg0 if p in pg1)
            cpu["whole machine"] = machine_busy_s() - busy0
            return {"rate": (n1 - n0) / (t1 - t0), "backlog": backlog, "drained": n1 == backlog,
                    "measured": n1 - n0, "cpu": cpu, "window_s": t1 - t0,
                    "errors": result.errors}
        finally:
            for s in serves:
                s.stop()
            broker.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="how long the load generator fills the backlog")
    ap.add_argument("--gateways", type=int, default=40)
    ap.add_argument("--rate", type=float, default=60_000.0,
                    help="readings/s the load generator offers while the collectors are down")
    args = ap.parse_args()

    fleet = Fleet.synthetic(args.gateways, per_enterprise=1)
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "fleet.yaml"
        fleet.write_registry(registry)
        results = {}
        for workers in (1, 2):
            r = results[workers] = measure(workers, fleet, registry, args.seconds, args.rate,
                                           Path(tmp))
            print(f"{workers} worker{'s' if workers > 1 else ' '}: {r['rate']:9,.0f} readings/s "
                  f"stored ({r['measured']:,} readings in {r['window_s']:.1f} s once all were "
                  f"up; backlog {r['backlog']:,}{'' if r['drained'] else ', NOT fully drained'})"
                  + (f"  errors: {r['errors']}" if r["errors"] else ""))
            cores = os.cpu_count() or 1
            for name, used in r["cpu"].items():
                print(f"    {name:<24} {used:6.1f} CPU-s = {used / r['window_s']:4.2f} of "
                      f"{cores} cores")
    ratio = results[2]["rate"] / results[1]["rate"] if results[1]["rate"] else float("nan")
    print(f"\n2 workers / 1 worker: {ratio:.2f}x  ({os.cpu_count()} cores shared by the "
          "collectors, the broker, PostgreSQL and whatever else runs on the machine)")


if __name__ == "__main__":
    main()
