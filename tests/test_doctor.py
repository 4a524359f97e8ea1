"""`hazardwatch doctor` against the real PostgreSQL and the project's mosquitto: all OK on a
healthy installation, and the right FAIL/WARN words for each thing that can be wrong."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from brokers import free_port
from dbutil import SERVER, fresh_database
from harness import HAZARDWATCH
from psycopg.types.json import Jsonb

from alerting.api.users import add_user
from hazardwatch.db import with_database
from hazardwatch.doctor import DATABASE_CHECKS, EXPECTED_JOBS, Report, run
from hazardwatch.migrate import discover, migrate, plan
from hazardwatch.registry import import_file
from hazardwatch.settings import MqttSettings, Settings

DATA = Path(__file__).parent / "data"
ENTERPRISE = "91370105MA3C000043"
GATEWAY = f"{ENTERPRISE}/gw-e2e"


def settings_for(dsn: str, broker, *, password: str | None = None, port: int | None = None
                 ) -> Settings:
    """The collector's settings: its broker account, this database."""
    return Settings(database_url=dsn, mqtt=MqttSettings(
        host=broker.host, port=port or broker.port, username=broker.collector.username,
        password=password if password is not None else broker.collector.password))


@pytest.fixture
def healthy() -> Iterator[str]:
    """A migrated database with the registry imported and an admin."""
    with fresh_database("hw_doctor") as dsn:
        import_file(dsn, DATA / "registry_e2e.yaml")
        add_user(dsn, "root", "doctor's orders", "admin")
        yield dsn


def statuses(report: Report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def expected_ok(report: Report) -> dict[str, str]:
    """Everything OK; plain mode (no TimescaleDB on the server) is a WARN-level note."""
    plain = report.get("timescaledb").summary.startswith("not in use")
    return {name: ("WARN" if name == "timescaledb" and plain else "OK") for name in statuses(report)}


def test_healthy_installation_is_all_ok(healthy, project_broker):
    report = run(settings_for(healthy, project_broker))
    assert statuses(report) == expected_ok(report), [c.line() for c in report.checks]
    assert report.ok
    names = [c.name for c in report.checks]
    assert names[0] == "database" and names[-1] == "broker"
    assert set(DATABASE_CHECKS) <= set(names)
    assert report.get("database").summary.startswith("PostgreSQL ")
    mode = "plain" if report.get("timescaledb").status == "WARN" else "timescale"
    assert report.get("migrations").summary == \
        f"all {len(plan(discover(), mode))} migrations applied ({mode} mode)"
    assert report.get("registry").summary == \
        "2 enterprise(s), 2 site(s), 5 sensor(s), 3 gateway(s)"
    assert f"as {project_broker.collector.username}" in report.get("broker").summary
    if report.get("timescaledb").status == "WARN":
        assert report.get("timescaledb").action   # says what to do about it


def test_cli_json_and_exit_codes(healthy, project_broker):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HW_")}
    env.update(HW_DATABASE_URL=healthy, HW_MQTT__HOST=project_broker.host,
               HW_MQTT__PORT=str(project_broker.port),
               HW_MQTT__USERNAME=project_broker.collector.username,
               HW_MQTT__PASSWORD=project_broker.collector.password)
    ok = subprocess.run([HAZARDWATCH, "doctor", "--json"], env=env, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["ok"] is True and doc["counts"]["FAIL"] == 0
    assert {c["name"] for c in doc["checks"]} >= {"database", "migrations", "broker"}
    assert project_broker.collector.password not in ok.stdout + ok.stderr

    env["HW_MQTT__PASSWORD"] = "not-the-password"
    bad = subprocess.run([HAZARDWATCH, "doctor"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    broker_line = next(line for line in bad.stdout.splitlines() if "broker" in line)
    assert broker_line.startswith("FAIL") and "not authorised" in broker_line
    assert "1 FAIL" in bad.stdout.splitlines()[-1]
    assert "not-the-password" not in bad.stdout + bad.stderr


def test_database_down(project_broker):
    port = free_port()   # nothing listens here
    dsn = f"postgresql://postgres@127.0.0.1:{port}/hazardwatch"
    report = run(settings_for(dsn, project_broker), timeout_s=3)
    db = report.get("database")
    assert db.status == "FAIL"
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port}/hazardwatch" in db.summary
    assert "nothing accepts connections" in db.summary
    assert "HW_DATABASE_URL" in db.action
    for name in DATABASE_CHECKS:
        assert report.get(name).status == "SKIP", name
    assert report.get("broker").status == "OK"     # checked all the same
    assert not report.ok


def test_missing_database_says_migrate_creates_it(project_broker):
    dsn = with_database(SERVER, "hw_doctor_no_such_database")
    db = run(settings_for(dsn, project_broker)).get("database")
    assert db.status == "FAIL" and "no such database" in db.summary
    assert "hazardwatch migrate" in db.action


def test_unmigrated_database(project_broker):
    with fresh_database("hw_doctor", migrated=False) as dsn:
        report = run(settings_for(dsn, project_broker))
    mig = report.get("migrations")
    assert mig.status == "FAIL"
    assert mig.summary == "the database has no schema yet (no migration applied)"
    assert mig.action == "run `hazardwatch migrate`"
    for name in ("registry", "users", "outbox", "dead letters", "gateway clocks"):
        check = report.get(name)
        assert check.status == "SKIP" and "no schema yet" in check.summary, check


def _apply(dsn: str, migrations) -> None:
    """What an older hazardwatch (one that knew only these migrations) did."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""CREATE TABLE schema_migrations (
                            version int PRIMARY KEY, name text NOT NULL, mode text NOT NULL,
                            checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())""")
        for mig in migrations:
            with conn.transaction():
                conn.execute(mig.path.read_text(encoding="utf-8"))
                conn.execute("INSERT INTO schema_migrations (version, name, mode, checksum) "
                             "VALUES (%s, %s, 'plain', %s)", (mig.version, mig.name, mig.checksum()))


def test_pending_migration_then_migrate_fixes_it(project_broker):
    wanted = plan(discover(), "plain")
    with fresh_database("hw_doctor", migrated=False) as dsn:
        _apply(dsn, wanted[:-1])
        import_file(dsn, DATA / "registry_e2e.yaml")
        settings = settings_for(dsn, project_broker)
        mig = run(settings).get("migrations")
        assert mig.status == "FAIL"
        assert mig.summary == (f"1 of {len(wanted)} migration(s) not applied yet: "
                               f"{wanted[-1].path.name}")
        assert mig.action == "run `hazardwatch migrate`"
        assert migrate(dsn, timescale="off").applied == [wanted[-1].path.name]
        after = run(settings).get("migrations")
        assert after.status == "OK" and f"all {len(wanted)} migrations applied" in after.summary


def test_unknown_and_edited_migrations(healthy, project_broker):
    settings = settings_for(healthy, project_broker)
    with psycopg.connect(healthy, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, mode, checksum) "
                     "VALUES (9999, 'from_the_future', 'plain', 'x')")
        mig = run(settings).get("migrations")
        assert mig.status == "FAIL"
        assert "does not know: 9999_from_the_future" in mig.summary
        conn.execute("DELETE FROM schema_migrations WHERE version = 9999")
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        mig = run(settings).get("migrations")
        assert mig.status == "FAIL"
        assert "changed after they were applied: 0001_registry.sql" in mig.summary


def test_broker_wrong_password(healthy, project_broker):
    check = run(settings_for(healthy, project_broker, password="wrong")).get("broker")
    assert check.status == "FAIL"
    assert f"refused the login of {project_broker.collector.username}" in check.summary
    assert "not authorised" in check.summary
    assert "HW_MQTT__USERNAME / HW_MQTT__PASSWORD" in check.action


def test_broker_down(healthy, project_broker):
    port = free_port()
    report = run(settings_for(healthy, project_broker, port=port), timeout_s=3)
    check = report.get("broker")
    assert check.status == "FAIL"
    assert check.summary == f"nothing accepts connections at 127.0.0.1:{port}"
    assert "HW_MQTT__HOST / HW_MQTT__PORT" in check.action
    assert report.get("database").status == "OK"
    assert not report.ok


@pytest.mark.parametrize("shift, words", [(30.0, "ahead of"), (-30.0, "behind")])
def test_clock_skew(healthy, project_broker, shift, words):
    report = run(settings_for(healthy, project_broker), clock=lambda: time.time() + shift)
    check = report.get("clock")
    assert check.status == "FAIL"
    found = re.fullmatch(r"this host's clock is ([0-9.]+) s (ahead of|behind) the database "
                         r"server's \(limit 2 s\)", check.summary)
    assert found and found[2] == words, check.summary
    assert abs(float(found[1]) - 30) < 1
    assert "NTP" in check.action
    assert not report.ok
    # within the limit: OK
    assert run(settings_for(healthy, project_broker),
               clock=lambda: time.time() + shift / 100).get("clock").status == "OK"


def test_gateway_clock_ahead(healthy, project_broker):
    with psycopg.connect(healthy, autocommit=True) as conn:
        sensor = conn.execute("SELECT s.id FROM sensors s JOIN gateways g ON g.id = s.gateway_id "
                              "WHERE g.username = %s ORDER BY s.id LIMIT 1", (GATEWAY,)).fetchone()[0]
        conn.execute("UPDATE gateways SET last_seen = now() WHERE username = %s", (GATEWAY,))
        conn.execute("INSERT INTO readings (ts, sensor_id, value) VALUES "
                     "(now() + interval '40 seconds', %s, 1.0)", (sensor,))
        conn.execute(
            "INSERT INTO dead_letters (topic, dialect, enterprise_code, gateway_code, reason, "
            "errors, payload) VALUES ('hw/v1/x/gw-tb/readings', 'hw1', %s, 'gw-tb', "
            "'future_timestamp', '[]', '{}')", (ENTERPRISE,))
    check = run(settings_for(healthy, project_broker)).get("gateway clocks")
    assert check.status == "WARN"
    found = re.search(re.escape(GATEWAY) + r" ≥ ([0-9.]+) s ahead", check.summary)
    assert found and 38 < float(found[1]) <= 40, check.summary
    assert f"{ENTERPRISE}/gw-tb: 1 message(s) refused as from the future" in check.summary
    assert "NTP" in check.action


def test_gateway_clock_in_step(healthy, project_broker):
    with psycopg.connect(healthy, autocommit=True) as conn:
        sensor = conn.execute("SELECT s.id FROM sensors s JOIN gateways g ON g.id = s.gateway_id "
                              "WHERE g.username = %s ORDER BY s.id LIMIT 1", (GATEWAY,)).fetchone()[0]
        conn.execute("UPDATE gateways SET last_seen = now() WHERE username = %s", (GATEWAY,))
        conn.execute("INSERT INTO readings (ts, sensor_id, value) VALUES "
                     "(now() - interval '1 second', %s, 1.0)", (sensor,))
    check = run(settings_for(healthy, project_broker)).get("gateway clocks")
    assert check.status == "OK"
    assert check.summary.startswith("1 gateway(s) seen in the last 15 min")


def _event(conn: psycopg.Connection) -> int:
    site = conn.execute("SELECT id FROM sites WHERE code = 'T1'").fetchone()[0]
    wid = conn.execute("INSERT INTO warnings (site_id, cause, kind, level, opened_at) "
                       "VALUES (%s, 'overfill', 'process', 3, now()) RETURNING id",
                       (site,)).fetchone()[0]
    return conn.execute("INSERT INTO warning_events (warning_id, actor, action, level, detail) "
                        "VALUES (%s, 'system', 'raised', 3, %s) RETURNING id",
                        (wid, Jsonb({}))).fetchone()[0]


def test_outbox_overdue_and_given_up(healthy, project_broker):
    settings = settings_for(healthy, project_broker)
    with psycopg.connect(healthy, autocommit=True) as conn:
        event = _event(conn)
        conn.execute("INSERT INTO outbox (event_id, receiver) VALUES (%s, 'soon')", (event,))
        assert run(settings).get("outbox").status == "OK"    # due now: not overdue yet
        conn.execute("INSERT INTO outbox (event_id, receiver, next_at) "
                     "VALUES (%s, 'hook', now() - interval '12 minutes')", (event,))
        check = run(settings).get("outbox")
        assert check.status == "WARN"
        assert "overdue: hook 1 (oldest due 12 min ago)" in check.summary
        assert "hazardwatch serve" in check.action
        conn.execute("UPDATE outbox SET failed_at = now(), outcome = 'failed', "
                     "last_error = 'HTTP 503 from receiver' WHERE receiver = 'hook'")
    check = run(settings).get("outbox")
    assert check.status == "WARN"
    assert "given up in the last hour: hook 1 (last error: HTTP 503 from receiver)" in check.summary
    assert "overdue" not in check.summary


def test_dead_letters_in_the_last_hour(healthy, project_broker):
    settings = settings_for(healthy, project_broker)
    with psycopg.connect(healthy, autocommit=True) as conn:
        for reason, n, age in (("bad_json", 2, "1 minute"), ("unknown_tag", 1, "2 minutes"),
                               ("bad_json", 5, "2 hours")):
            for _ in range(n):
                conn.execute(
                    "INSERT INTO dead_letters (received_at, topic, dialect, reason, errors, "
                    "payload) VALUES (now() - %s::interval, 't', 'hw1', %s, '[]', '')",
                    (age, reason))
    check = run(settings).get("dead letters")
    assert check.status == "WARN"
    assert check.summary == "3 message(s) refused in the last hour: bad_json 2, unknown_tag 1"


def test_empty_registry_and_no_users(project_broker):
    with fresh_database("hw_doctor") as dsn:
        report = run(settings_for(dsn, project_broker))
    reg = report.get("registry")
    assert reg.status == "FAIL" and reg.summary.startswith("nothing is monitored")
    assert "hazardwatch registry import" in reg.action
    users = report.get("users")
    assert users.status == "WARN" and "no one can sign in" in users.summary


@pytest.mark.timescale
def test_timescaledb_policies_and_jobs(project_broker):
    with fresh_database("hw_doctor_ts", mode="on") as dsn:
        import_file(dsn, DATA / "registry_e2e.yaml")
        add_user(dsn, "root", "doctor's orders", "admin")
        settings = settings_for(dsn, project_broker)
        report = run(settings)
        for name in ("timescaledb", "hypertable", "policies", "policy jobs"):
            assert report.get(name).status == "OK", report.get(name)
        assert report.get("policies").summary == \
            f"all {len(EXPECTED_JOBS)} TimescaleDB policies exist"
        assert report.ok
        with psycopg.connect(dsn, autocommit=True) as conn:
            job = conn.execute(
                "SELECT job_id FROM timescaledb_information.jobs "
                "WHERE proc_name = 'policy_retention' AND hypertable_name = 'readings'").fetchone()[0]
            conn.execute("SELECT alter_job(%s, scheduled => false)", (job,))
            paused = run(settings).get("policy jobs")
            assert paused.status == "WARN"
            assert f"retention on readings (job {job})" in paused.summary
            conn.execute("SELECT remove_compression_policy('readings')")
        missing = run(settings).get("policies")
        assert missing.status == "FAIL"
        assert "missing TimescaleDB policies: compression on readings" in missing.summary
