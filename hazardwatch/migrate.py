"""Ordered SQL migrations from schema/migrations with a version table.

Files are NNNN_name.sql (every mode) or NNNN_name.{timescale,plain}.sql (one mode).
The storage mode is chosen once, on the first migration, and recorded: a database
never switches between a hypertable and a plain table under the same name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from hazardwatch.resources import migrations_dir

_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<mode>timescale|plain))?\.sql$")
MIN_TIMESCALE = (2, 13)


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    mode: str | None  # None: applies in every mode
    path: Path

    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass
class MigrateResult:
    mode: str
    applied: list[str]
    policies: list[str]
    timescale_version: str | None


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: not NNNN_name[.timescale|.plain].sql")
        found.append(Migration(int(m["version"]), m["name"], m["mode"], path))
    return found


def plan(migrations: list[Migration], mode: str) -> list[Migration]:
    """The migrations of one mode, one per version, in order."""
    chosen: dict[int, Migration] = {}
    for mig in migrations:
        if mig.mode not in (None, mode):
            continue
        if mig.version in chosen:
            raise MigrationError(f"two migrations for version {mig.version:04d} in mode {mode}")
        chosen[mig.version] = mig
    return [chosen[v] for v in sorted(chosen)]


def timescale_available(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    return row[0] if row else None


def timescale_installed(conn: psycopg.Connection) -> str | None:
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return row[0] if row else None


def storage_mode(conn: psycopg.Connection) -> str | None:
    """The mode recorded by an earlier migration, or None on an empty database."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return None
    row = conn.execute("SELECT mode FROM schema_migrations ORDER BY version LIMIT 1").fetchone()
    return row[0] if row else None


def _choose_mode(conn: psycopg.Connection, wanted: str) -> str:
    recorded = storage_mode(conn)
    available = timescale_available(conn)
    if recorded is not None:
        if wanted == "on" and recorded != "timescale":
            raise MigrationError(
                "this database was migrated in plain mode; TimescaleDB cannot be switched on "
                "in place (dump, recreate with HW_STORAGE__TIMESCALE=on, restore)"
            )
        return recorded
    if wanted == "off":
        return "plain"
    if available is None:
        if wanted == "on":
            raise MigrationError("HW_STORAGE__TIMESCALE=on but the server has no timescaledb extension")
        return "plain"
    return "timescale"


def _parse_version(text: str) -> tuple[int, int]:
    major, minor, *_ = (int(p) for p in re.findall(r"\d+", text)[:2] + ["0", "0"])
    return major, minor


def migrate(dsn: str, *, timescale: str = "auto", retention_days: int = 90,
            compress_after_days: int = 1) -> MigrateResult:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('hazardwatch.migrate'))")
        try:
            mode = _choose_mode(conn, timescale)
            ts_version = None
            if mode == "timescale":
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                ts_version = timescale_installed(conn)
                if ts_version and _parse_version(ts_version) < MIN_TIMESCALE:
                    raise MigrationError(
                        f"TimescaleDB {ts_version} is too old: hazardwatch needs >= "
                        f"{MIN_TIMESCALE[0]}.{MIN_TIMESCALE[1]}"
                    )
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    int PRIMARY KEY,
                       name       text NOT NULL,
                       mode       text NOT NULL,
                       checksum   text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                v: (name, checksum)
                for v, name, checksum in conn.execute(
                    "SELECT version, name, checksum FROM schema_migrations"
                )
            }
            applied: list[str] = []
            for mig in plan(discover(), mode):
                if mig.version in done:
                    name, checksum = done[mig.version]
                    if checksum != mig.checksum():
                        raise MigrationError(
                            f"migration {mig.path.name} changed after it was applied "
                            "(add a new migration instead of editing an applied one)"
                        )
                    continue
                with conn.transaction():
                    conn.execute(mig.path.read_text(encoding="utf-8"))
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, mode, checksum) "
                        "VALUES (%s, %s, %s, %s)",
                        (mig.version, mig.name, mode, mig.checksum()),
                    )
                applied.append(mig.path.name)
            policies = (
                apply_policies(conn, retention_days, compress_after_days)
                if mode == "timescale"
                else []
            )
            return MigrateResult(mode, applied, policies, ts_version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('hazardwatch.migrate'))")


def apply_policies(conn: psycopg.Connection, retention_days: int, compress_after_days: int) -> list[str]:
    """Bring the TimescaleDB job settings in line with the configured ages (idempotent)."""
    changed: list[str] = []
    wanted = {
        "policy_retention": ("drop_after", f"{retention_days} days", "add_retention_policy",
                             "remove_retention_policy"),
        "policy_compression": ("compress_after", f"{compress_after_days} days",
                               "add_compression_policy", "remove_compression_policy"),
    }
    for proc, (key, interval, add_fn, remove_fn) in wanted.items():
        row = conn.execute(
            """SELECT config ->> %s FROM timescaledb_information.jobs
               WHERE proc_name = %s AND hypertable_name = 'readings'""",
            (key, proc),
        ).fetchone()
        current = row[0] if row else None
        same = current is not None and conn.execute(
            "SELECT %s::interval = %s::interval", (current, interval)
        ).fetchone()[0]
        if same:
            continue
        with conn.transaction():
            conn.execute(
                sql.SQL("SELECT {}('readings', if_exists => true)").format(sql.Identifier(remove_fn))
            )
            conn.execute(
                sql.SQL("SELECT {}('readings', {} => %s::interval)").format(
                    sql.Identifier(add_fn), sql.Identifier(key)
                ),
                (interval,),
            )
        changed.append(f"{proc}: {key} {interval}")
    return changed
