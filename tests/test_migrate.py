"""Migrations: ordered, idempotent, mode chosen and recorded; same relation names either way."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from dbutil import fresh_database

from hazardwatch.migrate import MigrationError, discover, migrate, plan, storage_mode
from hazardwatch.resources import migrations_dir

RELATIONS = ["regions", "enterprises", "sites", "gateways", "sensors", "readings",
             "readings_1m", "readings_1h", "dead_letters", "unregistered_tags", "warnings", "alarms"]


def test_plan_picks_one_file_per_version_per_mode():
    migs = discover()
    for mode in ("plain", "timescale"):
        chosen = plan(migs, mode)
        versions = [m.version for m in chosen]
        assert versions == sorted(set(versions))
        assert all(m.mode in (None, mode) for m in chosen)
    plain_names = {m.path.name for m in plan(migs, "plain")}
    assert "0003_readings_rollups.plain.sql" in plain_names
    assert "0003_readings_rollups.timescale.sql" not in plain_names


def test_plain_mode_is_idempotent_and_has_every_relation():
    with fresh_database("hw_test_mig", mode="off", migrated=False) as dsn:
        first = migrate(dsn, timescale="off")
        assert first.mode == "plain"
        assert [n.split("_")[0] for n in first.applied] == [
            f"{i:04d}" for i in range(1, len(first.applied) + 1)]  # in order, none skipped
        assert len(first.applied) == len(plan(discover(), "plain"))
        second = migrate(dsn, timescale="auto")  # the recorded mode wins
        assert second.applied == [] and second.mode == "plain"
        with psycopg.connect(dsn) as conn:
            assert storage_mode(conn) == "plain"
            for rel in RELATIONS:
                assert conn.execute("SELECT to_regclass(%s)", (rel,)).fetchone()[0] is not None, rel
            kinds = dict(conn.execute(
                "SELECT relname, relkind FROM pg_class WHERE relname IN ('readings_1m','readings_1h')"
            ).fetchall())
            assert kinds == {"readings_1m": "v", "readings_1h": "v"}


def test_plain_rollups_aggregate_good_readings_only():
    with fresh_database("hw_test_mig", mode="off") as dsn, psycopg.connect(dsn) as conn:
        t0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
        rows = [(t0 + timedelta(seconds=10 * i), 7, float(i), 0) for i in range(12)]  # 2 minutes
        rows.append((t0 + timedelta(seconds=5), 7, 999.0, 2))  # bad quality: counted apart
        with conn.cursor().copy("COPY readings (ts, sensor_id, value, quality) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        got = conn.execute(
            "SELECT bucket, min_value, max_value, avg_value, last_value, n, n_bad "
            "FROM readings_1m WHERE sensor_id = 7 ORDER BY bucket").fetchall()
        assert got == [
            (t0, 0.0, 5.0, 2.5, 5.0, 6, 1),
            (t0 + timedelta(minutes=1), 6.0, 11.0, 8.5, 11.0, 6, 0),
        ]
        hour = conn.execute("SELECT n, n_bad, max_value FROM readings_1h WHERE sensor_id = 7").fetchall()
        assert hour == [(12, 1, 11.0)]


def test_edited_migration_is_refused(tmp_path, monkeypatch):
    import shutil

    import hazardwatch.migrate as m

    copy = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), copy)
    monkeypatch.setattr(m, "migrations_dir", lambda: copy)
    with fresh_database("hw_test_mig", migrated=False) as dsn:
        migrate(dsn, timescale="off")
        target = copy / "0002_readings.sql"
        target.write_text(target.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            migrate(dsn, timescale="off")


def test_timescale_on_without_extension_is_a_clear_error(request):
    with fresh_database("hw_test_mig", migrated=False) as dsn:
        with psycopg.connect(dsn) as conn:
            has = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name='timescaledb'").fetchone()
        if has:
            pytest.skip("the server has TimescaleDB; this checks the error where it does not")
        with pytest.raises(MigrationError, match="no timescaledb extension"):
            migrate(dsn, timescale="on")


def test_cli_migrate_prints_mode(tmp_path):
    with fresh_database("hw_test_cli", migrated=False) as dsn:
        env = {"HW_DATABASE_URL": dsn, "HW_STORAGE__TIMESCALE": "off", "PATH": "/usr/bin:/bin"}
        out = subprocess.run([sys.executable, "-m", "hazardwatch.cli", "migrate"], env=env,
                             capture_output=True, text=True, cwd=tmp_path, check=True).stdout
        assert "mode: plain" in out and "applied 0001_registry.sql" in out
        again = subprocess.run([sys.executable, "-m", "hazardwatch.cli", "migrate"], env=env,
                               capture_output=True, text=True, cwd=tmp_path, check=True).stdout
        assert "up to date" in again


# ---- TimescaleDB path: runs wherever the server has the extension ----------------------

@pytest.mark.timescale
def test_timescale_mode_builds_hypertable_policies_and_caggs():
    with fresh_database("hw_test_ts", migrated=False) as dsn:
        result = migrate(dsn, timescale="on", retention_days=120, compress_after_days=2)
        assert result.mode == "timescale"
        with psycopg.connect(dsn) as conn:
            assert conn.execute(
                "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name='readings'"
            ).fetchone()[0] == 1
            seg = conn.execute(
                "SELECT attname FROM timescaledb_information.compression_settings "
                "WHERE hypertable_name='readings' AND segmentby_column_index IS NOT NULL").fetchall()
            assert seg == [("sensor_id",)]
            caggs = {r[0] for r in conn.execute(
                "SELECT view_name FROM timescaledb_information.continuous_aggregates")}
            assert caggs == {"readings_1m", "readings_1h"}
            jobs = dict(conn.execute(
                "SELECT proc_name, config FROM timescaledb_information.jobs "
                "WHERE hypertable_name = 'readings'").fetchall())
            assert conn.execute("SELECT %s::interval = interval '120 days'",
                                (jobs["policy_retention"]["drop_after"],)).fetchone()[0]
            assert conn.execute("SELECT %s::interval = interval '2 days'",
                                (jobs["policy_compression"]["compress_after"],)).fetchone()[0]
            refresh = conn.execute(
                "SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name = 'policy_refresh_continuous_aggregate'"
            ).fetchone()[0]
            assert refresh == 2
        again = migrate(dsn, timescale="auto", retention_days=120, compress_after_days=2)
        assert again.applied == [] and again.policies == []
        changed = migrate(dsn, timescale="auto", retention_days=365, compress_after_days=2)
        assert changed.policies == ["policy_retention: drop_after 365 days"]


@pytest.mark.timescale
def test_timescale_rollups_have_the_plain_columns():
    with fresh_database("hw_test_ts", mode="on") as dsn, psycopg.connect(dsn) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'readings_1m'::regclass AND attnum > 0 ORDER BY attnum")]
        assert cols == ["bucket", "sensor_id", "min_value", "max_value", "avg_value", "last_value", "n", "n_bad"]
        t0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
        conn.execute("INSERT INTO readings VALUES (%s, 1, 2.0, 0), (%s, 1, 4.0, 0)",
                     (t0, t0 + timedelta(seconds=10)))
        conn.commit()
        # materialized_only = false: fresh rows show without waiting for the refresh job
        row = conn.execute("SELECT avg_value, last_value, n FROM readings_1m WHERE sensor_id = 1").fetchone()
        assert row == (3.0, 4.0, 2)
