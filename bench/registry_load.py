"""Registry load at national scale: 1,000,000 sensors, from `hazardwatch serve` start to ready.

    python bench/registry_load.py [--sensors 1000000] [--import-sample 20000] [--no-serve]

Builds a fresh database, fills the registry tables directly with COPY (10,000 enterprises
of 2 gateways and 5 sites; every sensor kind of every pack; limits, no limits and per-sensor
`rules` overrides mixed), then measures:
  * each part of a collector's start, in this process: RegistryCache (ingest's tag maps),
    load_sensor_rows (the engine's registry query) and Engine.load (per-sensor rule
    resolution into parameter arrays), restore of open warnings and replay;
  * the whole thing: `hazardwatch serve` as a child process, from spawn until /readyz says
    200 (registry cache, rules start, MQTT session up), against a throw-away broker;
  * `hazardwatch registry import` of a YAML file of --import-sample sensors, as a rate
    (the YAML route is for hand-edited files, not for creating a million sensors).
Target (issue #6): 1,000,000 registered sensors load in under 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's broker runner and throw-away databases

from brokers import Mosquitto  # noqa: E402
from dbutil import fresh_database  # noqa: E402
from harness import HAZARDWATCH, free_port  # noqa: E402

from hazardwatch.pipeline import RulesSink, load_sensor_rows  # noqa: E402
from hazardwatch.registry import credit_code_check_character, import_file  # noqa: E402
from ingest.registry_cache import RegistryCache  # noqa: E402
from rules.engine import Engine  # noqa: E402
from rules.packs import SITE_KINDS, load_packs  # noqa: E402

TARGET_S = 30.0
GATEWAYS_PER_ENTERPRISE = 2
SITES_PER_ENTERPRISE = 5
# A sprinkle of per-sensor overrides, as engineers write them (every one valid).
OVERRIDES = [{"deadband": 0.5}, {"on_delay_s": 20, "off_delay_s": 60},
             {"trend_tau_s": None}, {"rate_rise_pct_per_min": 3}, {"stuck_window_s": 7200}]


def credit_code(n: int) -> str:
    """A valid 统一社会信用代码 numbered n (check character per GB 32100-2015)."""
    digits = "0123456789ABCDEFGHJKLMNPQRTUWXY"
    body, x = "", n
    for _ in range(8):
        x, r = divmod(x, len(digits))
        body = digits[r] + body
    first17 = f"91370100MA{body[1:]}"[:17]
    return first17 + credit_code_check_character(first17)


def fill_registry(dsn: str, sensors: int) -> dict[str, int]:
    """COPY a registry of `sensors` sensors into the (empty) registry tables."""
    packs = load_packs()
    kinds = {k: sorted(packs[k].sensor_kinds) for k in SITE_KINDS}
    per_ent = SITES_PER_ENTERPRISE * 20
    enterprises = max(1, sensors // per_ent)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO regions (code, name) VALUES ('370100', '济南市')")
        with conn.cursor().copy("COPY enterprises (id, code, name, region) FROM STDIN") as cp:
            for e in range(1, enterprises + 1):
                cp.write_row((e, credit_code(e), f"企业{e}", "370100"))
        with conn.cursor().copy("COPY gateways (id, enterprise_id, code, username) FROM STDIN") as cp:
            for e in range(1, enterprises + 1):
                code = credit_code(e)
                for g in range(GATEWAYS_PER_ENTERPRISE):
                    cp.write_row(((e - 1) * GATEWAYS_PER_ENTERPRISE + g + 1, e, f"gw-{g}",
                                  f"{code}/gw-{g}"))
        with conn.cursor().copy("COPY sites (id, enterprise_id, code, name, kind, grade) FROM STDIN") as cp:
            for e in range(1, enterprises + 1):
                for s in range(SITES_PER_ENTERPRISE):
                    sid = (e - 1) * SITES_PER_ENTERPRISE + s + 1
                    cp.write_row((sid, e, f"S{s}", f"场所{s}", SITE_KINDS[sid % 3], 1 + sid % 4))
        sid = 0
        with conn.cursor().copy(
                "COPY sensors (id, enterprise_id, site_id, gateway_id, tag, kind, unit, range_lo, "
                "range_hi, ll, l, h, hh, interval_s, rules) FROM STDIN") as cp:
            while sid < sensors:
                e = sid // per_ent + 1
                if e > enterprises:
                    e = enterprises
                site = (e - 1) * SITES_PER_ENTERPRISE + (sid // 20) % SITES_PER_ENTERPRISE + 1
                kind_list = kinds[SITE_KINDS[site % 3]]
                kind = kind_list[sid % len(kind_list)]
                limited = sid % 3 != 0
                rules = OVERRIDES[sid % len(OVERRIDES)] if sid % 29 == 0 else {}
                sid += 1
                cp.write_row((sid, e, site, (e - 1) * GATEWAYS_PER_ENTERPRISE + sid % 2 + 1,
                              f"S{site}.T{sid}", kind, "u", 0.0, 100.0,
                              10.0 if limited else None, 20.0 if limited else None,
                              80.0 if limited else None, 90.0 if limited else None, 10.0,
                              orjson.dumps(rules).decode()))
        for table in ("enterprises", "gateways", "sites", "sensors"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                         f"(SELECT max(id) FROM {table}))")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")  # what autovacuum does shortly after a bulk load
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("enterprises", "gateways", "sites", "sensors")}


async def parts(dsn: str) -> dict[str, float]:
    """Each part of a collector start with rules on, timed in this process."""
    out: dict[str, float] = {}
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        t = time.perf_counter()
        cache = RegistryCache()
        await cache.refresh(conn)
        out["RegistryCache.refresh"] = time.perf_counter() - t
        t = time.perf_counter()
        rows = await load_sensor_rows(conn)
        out["load_sensor_rows (query)"] = time.perf_counter() - t
        t = time.perf_counter()
        Engine(load_packs()).load(rows)
        out["Engine.load (rule resolution)"] = time.perf_counter() - t
        del rows
        t = time.perf_counter()
        sink = RulesSink(replay_s=1800.0)
        await sink.start(conn)
        out["RulesSink.start (load + restore + replay)"] = time.perf_counter() - t
    return out


def serve_to_ready(dsn: str, broker: Mosquitto, timeout: float = 300.0) -> float:
    """Wall time from spawning `hazardwatch serve` to /readyz answering 200."""
    port = free_port()
    env = {**os.environ, "HW_DATABASE_URL": dsn, "HW_MQTT__HOST": broker.host,
           "HW_MQTT__PORT": str(broker.port), "HW_MQTT__USERNAME": broker.collector.username,
           "HW_MQTT__PASSWORD": broker.collector.password, "HW_HTTP__PORT": str(port),
           "HW_MQTT__CLIENT_ID": f"hw-bench-{secrets.token_hex(4)}", "HW_LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen([HAZARDWATCH, "serve"], env=env, stdout=log, stderr=log)
        try:
            while time.perf_counter() - t0 < timeout:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"serve exited {proc.returncode}:\n{log.read().decode()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                        if r.status == 200:
                            return time.perf_counter() - t0
                except OSError:
                    pass
                time.sleep(0.05)
            raise TimeoutError(f"serve not ready in {timeout} s")
        finally:
            proc.terminate()
            proc.wait(30)


def import_rate(sensors: int) -> tuple[float, int]:
    """Seconds to `registry import` a YAML file of about `sensors` sensors, and their count."""
    packs = load_packs()
    enterprises = max(1, sensors // 100)
    lines = ["regions:", '  - {code: "370100", name: 济南市}', "enterprises:"]
    n = 0
    for e in range(1, enterprises + 1):
        lines += [f"  - code: {credit_code(e)}", f"    name: 企业{e}", '    region: "370100"',
                  "    gateways: [{id: gw-0}, {id: gw-1}]", "    sites:"]
        for s in range(SITES_PER_ENTERPRISE):
            kind = SITE_KINDS[s % 3]
            kinds = sorted(packs[kind].sensor_kinds)
            lines += [f"      - {{id: S{s}, name: 场所{s}, kind: {kind}, grade: 2, sensors: ["]
            for k in range(20):
                n += 1
                lines.append(f"          {{tag: S{s}.T{k}, kind: {kinds[k % len(kinds)]}, unit: u, "
                             f"range: [0, 100], limits: {{h: 80, hh: 90}}, interval_s: 10, "
                             f"gateway: gw-{k % 2}}},")
            lines.append("        ]}")
    with fresh_database("hw_bench_import") as dsn, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "registry.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        t = time.perf_counter()
        import_file(dsn, path)
        return time.perf_counter() - t, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sensors", type=int, default=1_000_000)
    ap.add_argument("--import-sample", type=int, default=20_000,
                    help="sensors in the YAML import measured (0 skips it)")
    ap.add_argument("--no-serve", action="store_true", help="skip the `hazardwatch serve` run")
    args = ap.parse_args()

    with fresh_database("hw_bench_registry") as dsn:
        t = time.perf_counter()
        counts = fill_registry(dsn, args.sensors)
        fill_s = time.perf_counter() - t
        print(f"registry built by COPY in {fill_s:.1f} s: " +
              ", ".join(f"{v:,} {k}" for k, v in counts.items()))
        timings = asyncio.run(parts(dsn))
        print("\nparts of a collector start (this process):")
        for name, seconds in timings.items():
            print(f"  {name:<44} {seconds:7.2f} s")
        if not args.no_serve:
            broker = Mosquitto()
            try:
                broker.start()
                wall = serve_to_ready(dsn, broker)
            finally:
                broker.close()
            verdict = "meets" if wall < TARGET_S else "MISSES"
            print(f"\nhazardwatch serve, spawn → /readyz 200: {wall:.1f} s for {counts['sensors']:,} "
                  f"sensors ({verdict} the {TARGET_S:.0f} s target; ratio {wall / TARGET_S:.2f})")
    if args.import_sample:
        seconds, n = import_rate(args.import_sample)
        print(f"\nregistry import of a YAML file: {n:,} sensors in {seconds:.1f} s "
              f"= {n / seconds:,.0f} sensors/s (1,000,000 would take ~{1e6 / (n / seconds):.0f} s)")


if __name__ == "__main__":
    main()
