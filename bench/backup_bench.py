"""Backup and restore sizes and times, the two recipes of docs/operations.md side by side.

    python bench/backup_bench.py [--readings 2000000] [--warnings 5000]

Builds a throw-away database on HW_DATABASE_URL's server (default the local one): the
example registry, `--readings` readings spread over its sensors, `--warnings` closed
warnings with six events and two outbox rows each, and a few users. Then times
  * pg_dump -Fc of the whole database, and pg_restore of it into an empty database;
  * pg_dump -Fc --data-only of the registry, warnings and users, and pg_restore of it into
    a freshly migrated database;
and prints sizes, wall times, and the ratios between the two recipes. Drops its databases.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from alerting.api.users import add_user
from hazardwatch.db import with_database
from hazardwatch.migrate import migrate
from hazardwatch.registry import import_file

SERVER = os.environ.get("HW_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "registry.yaml"
SMALL = ["regions", "enterprises", "sites", "gateways", "sensors",
         "warnings", "alarms", "warning_events", "outbox", "users"]


def admin(statement: sql.Composable) -> None:
    with psycopg.connect(with_database(SERVER, "postgres"), autocommit=True) as conn:
        conn.execute(statement)


def create(name: str) -> str:
    admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(SERVER, name)


def drop(name: str) -> None:
    admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def fill(dsn: str, readings: int, warnings: int) -> None:
    import_file(dsn, EXAMPLE)
    for i, role in enumerate(("admin", "officer", "admin")):
        add_user(dsn, f"user{i}", "bench password", role,
                 region="370100" if role == "officer" else None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        sensors = [r[0] for r in conn.execute("SELECT id FROM sensors ORDER BY id")]
        per = readings // len(sensors)
        conn.execute(
            "INSERT INTO readings (ts, sensor_id, value, quality) "
            "SELECT now() - make_interval(secs => g * 10), s, 20 + sin(g / 100.0), 0 "
            "FROM unnest(%s::int[]) s CROSS JOIN generate_series(1, %s) g", (sensors, per))
        conn.execute(
            """WITH w AS (
                   INSERT INTO warnings (site_id, cause, kind, level, active, acknowledged,
                                         opened_at, raised_at, cleared_at, closed_at,
                                         acknowledged_at, acknowledged_by, disposal, closed_by,
                                         closing_note)
                   SELECT (SELECT id FROM sites ORDER BY id OFFSET g %% (SELECT count(*) FROM sites)
                           LIMIT 1), 'overfill', 'process', 1 + g %% 4, false, true,
                          now() - make_interval(hours => g), now() - make_interval(hours => g),
                          now() - make_interval(hours => g) + interval '20 min',
                          now() - make_interval(hours => g) + interval '2 hours',
                          now() - make_interval(hours => g) + interval '5 min', 'user1',
                          '已关闭进料阀, 液位回落', 'user1', '已处置'
                   FROM generate_series(1, %s) g RETURNING id, level),
               e AS (
                   INSERT INTO warning_events (warning_id, actor, action, level, detail)
                   SELECT w.id, a.actor, a.action, w.level, '{"note": "bench"}'
                   FROM w CROSS JOIN (VALUES ('system', 'raised'), ('system', 'cleared'),
                       ('user1', 'acknowledged'), ('user2', 'commented'),
                       ('user2', 'disposed'), ('user1', 'closed')) AS a(actor, action)
                   RETURNING id)
               INSERT INTO outbox (event_id, receiver, delivered_at, attempts, outcome)
               SELECT e.id, r, now(), 1, 'sent' FROM e CROSS JOIN (VALUES ('hook'), ('mqtt')) x(r)
               WHERE e.id %% 3 = 0""", (warnings,))
        conn.execute("VACUUM ANALYZE")


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, timeout=3600)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=2_000_000)
    parser.add_argument("--warnings", type=int, default=5000)
    a = parser.parse_args()
    pg_dump, pg_restore = shutil.which("pg_dump"), shutil.which("pg_restore")
    if not pg_dump or not pg_restore:
        raise SystemExit("pg_dump / pg_restore not found (apt-get install postgresql-client)")
    tag = uuid.uuid4().hex[:8]
    names = [f"hw_bench_backup_{k}_{tag}" for k in ("src", "whole", "small")]
    tmp = Path(tempfile.mkdtemp(prefix="hw-backup-bench-"))
    try:
        src = create(names[0])
        migrate(src, timescale="auto")
        t0 = time.perf_counter()
        fill(src, a.readings, a.warnings)
        print(f"filled {names[0]} in {time.perf_counter() - t0:.1f} s")
        with psycopg.connect(src) as conn:
            db_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            rows = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(t))).fetchone()[0] for t in ["readings", *SMALL]}
        whole, small = tmp / "whole.dump", tmp / "small.dump"
        t_dump_whole = run([pg_dump, "-Fc", "-f", str(whole), src])
        t_dump_small = run([pg_dump, "-Fc", "--data-only", *[f"--table={t}" for t in SMALL],
                            "-f", str(small), src])
        dst = create(names[1])
        t_restore_whole = run([pg_restore, "--exit-on-error", "--no-owner", "-d", dst, str(whole)])
        dst_small = create(names[2])
        migrate(dst_small, timescale="auto")
        t_restore_small = run([pg_restore, "--data-only", "--disable-triggers",
                               "--single-transaction", "--exit-on-error", "-d", dst_small,
                               str(small)])
        ver = subprocess.run([pg_dump, "--version"], capture_output=True, text=True).stdout.strip()
        print(f"{ver}; source database {db_size / 2**20:.1f} MiB: "
              + ", ".join(f"{t} {n}" for t, n in rows.items()))
        print(f"{'recipe':<28} {'dump MiB':>9} {'dump s':>7} {'restore s':>10}")
        for name, path, td, tr in (("whole database", whole, t_dump_whole, t_restore_whole),
                                   ("registry+warnings+users", small, t_dump_small,
                                    t_restore_small)):
            print(f"{name:<28} {path.stat().st_size / 2**20:>9.2f} {td:>7.2f} {tr:>10.2f}")
        print(f"ratios small/whole: size {small.stat().st_size / whole.stat().st_size:.3f}, "
              f"dump {t_dump_small / t_dump_whole:.2f}, restore {t_restore_small / t_restore_whole:.2f}; "
              f"whole dump / database size {whole.stat().st_size / db_size:.3f}")
    finally:
        for name in names:
            drop(name)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
