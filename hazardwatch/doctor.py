"""`hazardwatch doctor`: is this installation fit to run, and if not, what to do about it.

Each check answers one question in plain words: OK, WARN (works, but look at it), FAIL
(something is broken or will be) or SKIP (could not be asked, because an earlier check
failed), with what to do. The command exits 1 when any check FAILs, so a deploy script or
a cron job can run it. Nothing here changes anything: it reads the database and opens one
short MQTT session under its own client id (never the collector's, which would take over
the collector's persistent session).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime

import psycopg
from psycopg.conninfo import conninfo_to_dict

from hazardwatch.settings import Settings

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"

MIN_POSTGRES = 140000          # date_bin (the plain-mode roll-up views) needs PostgreSQL 14
SKEW_LIMIT_S = 2.0
TIMEOUT_S = 5.0
RECENT_GATEWAY_MIN = 15       # gateways seen this recently are compared with their readings
OVERDUE_MIN = 5                # an outbox row due longer ago than this is stuck

# Checks that need the database; SKIPped with one reason when it cannot be reached.
DATABASE_CHECKS = ("migrations", "timescaledb", "clock", "gateway clocks", "registry", "users",
                   "outbox", "dead letters")


@dataclass(frozen=True)
class Check:
    name: str
    status: str          # OK | WARN | FAIL | SKIP
    summary: str         # what is, in plain words
    action: str | None = None   # what to do about it

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<15} {self.summary}"
        return f"{text} → {self.action}" if self.action else text


@dataclass
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return not any(c.status == FAIL for c in self.checks)

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in (OK, WARN, FAIL, SKIP)}

    def as_dict(self) -> dict:
        return {"ok": self.ok, "counts": self.counts(), "checks": [asdict(c) for c in self.checks]}


def run(settings: Settings, *, clock: Callable[[], float] = time.time,
        skew_limit_s: float = SKEW_LIMIT_S, timeout_s: float = TIMEOUT_S) -> Report:
    """Every check, in order. `clock` is this host's clock (epoch seconds; tests shift it)."""
    checks: list[Check] = []
    conn, check = _connect(settings.dsn(), timeout_s)
    checks.append(check)
    if conn is None:
        checks += [Check(name, SKIP, "not checked: no database connection")
                   for name in DATABASE_CHECKS]
    else:
        with conn:
            checks += _database_checks(conn, settings, clock, skew_limit_s)
    checks.append(broker(settings, timeout_s))
    return Report(checks)


# ---------------------------------------------------------------- database


def _where(dsn: str) -> str:
    info = conninfo_to_dict(dsn)
    host = info.get("host") or "localhost"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


def _connect(dsn: str, timeout_s: float) -> tuple[psycopg.Connection | None, Check]:
    where = _where(dsn)
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, round(timeout_s)),
                               application_name="hazardwatch-doctor")
    except psycopg.Error as exc:
        text = str(exc).strip()
        lower = text.lower()
        if "does not exist" in lower and "database" in lower:
            return None, Check("database", FAIL, f"PostgreSQL at {where} has no such database",
                               "run `hazardwatch migrate` (it creates the database) or fix the "
                               "database name in HW_DATABASE_URL")
        if "password authentication failed" in lower or "no pg_hba.conf entry" in lower:
            return None, Check("database", FAIL, f"PostgreSQL at {where} refused the login",
                               "check the user and password in HW_DATABASE_URL (and pg_hba.conf)")
        if "timeout" in lower:
            reason = f"no answer within {timeout_s:g} s"
        elif "refused" in lower:
            reason = "nothing accepts connections there"
        else:
            reason = text.splitlines()[-1] if text else type(exc).__name__
        return None, Check("database", FAIL, f"cannot reach PostgreSQL at {where}: {reason}",
                           "start PostgreSQL, or fix the host and port in HW_DATABASE_URL")
    conn.execute("SET statement_timeout = '30s'")
    version = conn.info.server_version
    shown = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    if version < MIN_POSTGRES:
        return conn, Check("database", FAIL, f"PostgreSQL {shown} at {where} is too old",
                           "hazardwatch needs PostgreSQL 14 or newer")
    return conn, Check("database", OK, f"PostgreSQL {shown} at {where}")


def _database_checks(conn: psycopg.Connection, settings: Settings,
                     clock: Callable[[], float], skew_limit_s: float) -> Iterator[Check]:
    from hazardwatch.migrate import storage_mode

    check, pending = migrations(conn)
    yield check
    try:
        mode = storage_mode(conn)
    except psycopg.Error:
        mode = None
    yield from _guarded("timescaledb", lambda: timescaledb(conn, mode, settings))
    yield from _guarded("clock", lambda: [clock_skew(conn, clock, skew_limit_s)])
    schema = _tables(conn)
    for name, needs, fn in (
            ("gateway clocks", ("gateways", "sensors", "readings", "dead_letters"),
             lambda: [gateway_clocks(conn, skew_limit_s)]),
            ("registry", ("enterprises", "sites", "sensors", "gateways"),
             lambda: [registry(conn)]),
            ("users", ("users",), lambda: [users(conn)]),
            ("outbox", ("outbox",), lambda: [outbox(conn)]),
            ("dead letters", ("dead_letters",), lambda: [dead_letters(conn)])):
        missing = [t for t in needs if t not in schema]
        if missing:
            why = "no schema yet" if pending is None else f"table {missing[0]} is missing"
            yield Check(name, SKIP, f"not checked: {why}", "run `hazardwatch migrate`")
        else:
            yield from _guarded(name, fn)


def _guarded(name: str, fn: Callable[[], list[Check] | Iterator[Check]]) -> Iterator[Check]:
    """A check whose query fails is a FAIL that says which query, not a traceback."""
    try:
        yield from list(fn())
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        yield Check(name, FAIL, f"the check's query failed: {first}",
                    "look at the PostgreSQL log; the schema may be damaged or not migrated")


def _tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm')").fetchall()
    return {r[0] for r in rows}


def migrations(conn: psycopg.Connection) -> tuple[Check, list[str] | None]:
    """(check, pending file names); pending is None when the database has no schema."""
    from hazardwatch.migrate import MigrationError, discover, plan, storage_mode

    try:
        known = discover()
    except MigrationError as exc:
        return Check("migrations", FAIL, f"the installed migrations are unreadable: {exc}",
                     "reinstall hazardwatch"), []
    mode = storage_mode(conn)
    if mode is None:
        return Check("migrations", FAIL, "the database has no schema yet (no migration applied)",
                     "run `hazardwatch migrate`"), None
    wanted = plan(known, mode)
    done = {v: (name, checksum) for v, name, checksum in conn.execute(
        "SELECT version, name, checksum FROM schema_migrations ORDER BY version")}
    files = {m.version: m for m in wanted}
    pending = [m.path.name for m in wanted if m.version not in done]
    unknown = [f"{v:04d}_{done[v][0]}" for v in sorted(done) if v not in files]
    changed = [files[v].path.name for v in sorted(done)
               if v in files and files[v].checksum() != done[v][1]]
    if unknown:
        return Check("migrations", FAIL,
                     f"the database has {len(unknown)} migration(s) this hazardwatch does not "
                     f"know: {', '.join(unknown)} (migrated by a newer version?)",
                     "run the hazardwatch version that migrated this database"), pending
    if changed:
        return Check("migrations", FAIL,
                     f"migration file(s) changed after they were applied: {', '.join(changed)}",
                     "restore the original file(s) and put the change in a new migration"), pending
    if pending:
        return Check("migrations", FAIL,
                     f"{len(pending)} of {len(wanted)} migration(s) not applied yet: "
                     f"{', '.join(pending)}", "run `hazardwatch migrate`"), pending
    return Check("migrations", OK, f"all {len(wanted)} migrations applied ({mode} mode)"), pending


# ---------------------------------------------------------------- TimescaleDB

# (relation, job procedure) pairs that migration 0003 (timescale) sets up.
EXPECTED_JOBS = (
    ("readings", "policy_compression"),
    ("readings", "policy_retention"),
    ("readings_1m", "policy_refresh_continuous_aggregate"),
    ("readings_1h", "policy_refresh_continuous_aggregate"),
    ("readings_1m", "policy_retention"),
    ("readings_1h", "policy_retention"),
)
JOB_WORDS = {"policy_compression": "compression", "policy_retention": "retention",
             "policy_refresh_continuous_aggregate": "refresh"}


def timescaledb(conn: psycopg.Connection, mode: str | None, settings: Settings) -> list[Check]:
    from hazardwatch.migrate import timescale_available, timescale_installed

    installed = timescale_installed(conn)
    if mode != "timescale":
        if settings.storage.timescale == "on" and mode == "plain":
            return [Check("timescaledb", FAIL,
                          "HW_STORAGE__TIMESCALE=on, but this database was migrated in plain mode",
                          "dump, recreate with TimescaleDB, restore (docs/operations.md)")]
        available = timescale_available(conn)
        where = "this server has it available" if available else "this server does not have it"
        return [Check("timescaledb", WARN,
                      f"not in use ({where}): readings is a plain table without compression "
                      "or automatic retention; readings_1m/readings_1h are views",
                      "fine for tests and small installations; for production use a server "
                      "with TimescaleDB and a new database (docs/operations.md, Storage modes)")]
    if installed is None:
        return [Check("timescaledb", FAIL,
                      "the database was migrated in TimescaleDB mode but the extension is gone",
                      "install the same TimescaleDB version on the server and "
                      "`CREATE EXTENSION timescaledb`")]
    checks = [Check("timescaledb", OK, f"TimescaleDB {installed}")]
    row = conn.execute(
        "SELECT compression_enabled FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = current_schema() AND hypertable_name = 'readings'").fetchone()
    if row is None:
        checks.append(Check("hypertable", FAIL, "readings is not a hypertable",
                            "this database was not migrated by hazardwatch in TimescaleDB "
                            "mode; migrate a new database and copy the readings over"))
    elif not row[0]:
        checks.append(Check("hypertable", WARN, "readings is a hypertable without compression",
                            "ALTER TABLE readings SET (timescaledb.compress, "
                            "timescaledb.compress_segmentby = 'sensor_id')"))
    else:
        checks.append(Check("hypertable", OK, "readings is a compressed hypertable"))
    checks += policies(conn)
    return checks


def policies(conn: psycopg.Connection) -> list[Check]:
    """The policy jobs exist, are scheduled, and did not fail at their last run
    (timescaledb_information.jobs / job_stats)."""
    views = dict(conn.execute(
        "SELECT materialization_hypertable_name, view_name "
        "FROM timescaledb_information.continuous_aggregates "
        "WHERE view_schema = current_schema()").fetchall())
    rows = conn.execute(
        """SELECT j.job_id, j.proc_name, j.hypertable_name, j.scheduled,
                  s.last_run_status, s.total_runs, s.total_failures, s.last_successful_finish
           FROM timescaledb_information.jobs j
           LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
           WHERE j.proc_name = ANY(%s)""", (list(JOB_WORDS),)).fetchall()
    jobs = {}
    for job_id, proc, table, scheduled, status, runs, failures, last_ok in rows:
        jobs[(views.get(table, table), proc)] = (job_id, scheduled, status, runs, failures, last_ok)
    missing = [f"{JOB_WORDS[proc]} on {rel}" for rel, proc in EXPECTED_JOBS
               if (rel, proc) not in jobs]
    checks = []
    if missing:
        checks.append(Check("policies", FAIL, f"missing TimescaleDB policies: {', '.join(missing)}",
                            "`hazardwatch migrate` restores compression and retention on "
                            "readings; roll-up policies are in "
                            "schema/migrations/0003_readings_rollups.timescale.sql"))
    else:
        checks.append(Check("policies", OK, f"all {len(EXPECTED_JOBS)} TimescaleDB policies exist"))
    failing, paused = [], []
    for (rel, proc), (job_id, scheduled, status, runs, failures, last_ok) in sorted(jobs.items()):
        if (rel, proc) not in EXPECTED_JOBS:
            continue
        what = f"{JOB_WORDS[proc]} on {rel} (job {job_id})"
        if status == "Failed":
            since = (f"last success {last_ok:%Y-%m-%d %H:%M}" if isinstance(last_ok, datetime)
                     else "never succeeded")
            failing.append(f"{what}: {failures} of {runs} runs failed, {since}")
        elif not scheduled:
            paused.append(what)
    if failing:
        checks.append(Check("policy jobs", FAIL, f"failing at their last run: {'; '.join(failing)}",
                            "the error is in the PostgreSQL log (and "
                            "timescaledb_information.job_history on TimescaleDB 2.15+)"))
    elif paused:
        checks.append(Check("policy jobs", WARN, f"paused (not scheduled): {', '.join(paused)}",
                            "SELECT alter_job(<job id>, scheduled => true)"))
    else:
        checks.append(Check("policy jobs", OK, "no policy job is failing or paused"))
    return checks


# ---------------------------------------------------------------- clocks


def clock_skew(conn: psycopg.Connection, clock: Callable[[], float], limit_s: float) -> Check:
    """This host against the database server, corrected for half the round trip."""
    best: tuple[float, float] | None = None
    for _ in range(3):
        t0 = clock()
        server = float(conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0])
        t1 = clock()
        offset, rtt = server - (t0 + t1) / 2, t1 - t0
        if best is None or rtt < best[1]:
            best = (offset, rtt)
    offset, rtt = best
    words = (f"this host's clock is {abs(offset):.1f} s "
             f"{'behind' if offset > 0 else 'ahead of'} the database server's")
    if abs(offset) - rtt / 2 > limit_s:
        return Check("clock", FAIL, f"{words} (limit {limit_s:g} s)",
                     "synchronise both with NTP (chrony or systemd-timesyncd): no-data "
                     "detection, escalation timers and token expiry compare the two")
    return Check("clock", OK, f"{words} (limit {limit_s:g} s)")


def gateway_clocks(conn: psycopg.Connection, limit_s: float) -> Check:
    """Gateways whose readings are stamped after the collector received them.

    readings has no receipt time; gateways.last_seen is when the collector last received
    anything from the gateway, so the newest reading's ts - last_seen is a lower bound on
    how far the gateway's clock is ahead. A clock that is behind looks the same as delivery
    delay and cannot be told from here (hw_ingest_event_lag_seconds shows the sum)."""
    rows = conn.execute(
        """SELECT g.username, extract(epoch FROM r.newest - g.last_seen)::float8
            FROM gateways g
            CROSS JOIN LATERAL (
                SELECT max(x.ts) AS newest FROM sensors s
                CROSS JOIN LATERAL (SELECT ts FROM readings
                                    WHERE sensor_id = s.id AND ts > now() - interval '1 day'
                                    ORDER BY ts DESC LIMIT 1) x
                WHERE s.gateway_id = g.id) r
            WHERE g.last_seen > now() - make_interval(mins => %s) AND r.newest IS NOT NULL
            ORDER BY 2 DESC""", (RECENT_GATEWAY_MIN,)).fetchall()
    future = conn.execute(
        "SELECT coalesce(enterprise_code || '/' || gateway_code, topic), count(*) "
        "FROM dead_letters WHERE reason = 'future_timestamp' "
        "AND received_at > now() - interval '1 hour' GROUP BY 1 ORDER BY 2 DESC").fetchall()
    ahead = [(name, off) for name, off in rows if off > limit_s]
    problems = [f"{name} ≥ {off:.1f} s ahead" for name, off in ahead[:5]]
    problems += [f"{name}: {n} message(s) refused as from the future in the last hour"
                 for name, n in future[:5]]
    if problems:
        more = len(ahead) + len(future) - len(problems)
        return Check("gateway clocks", WARN,
                     f"gateway clocks ahead of the collector: {'; '.join(problems)}"
                     + (f" (and {more} more)" if more > 0 else ""),
                     "ask the enterprise to synchronise the gateway with NTP; readings from "
                     "the future distort no-data detection and trend windows")
    if not rows:
        return Check("gateway clocks", OK,
                     f"nothing to compare: no gateway sent readings in the last {RECENT_GATEWAY_MIN} min")
    return Check("gateway clocks", OK,
                 f"{len(rows)} gateway(s) seen in the last {RECENT_GATEWAY_MIN} min: none stamps readings "
                 f"more than {limit_s:g} s after the collector received them")


# ---------------------------------------------------------------- content


def registry(conn: psycopg.Connection) -> Check:
    ents, sites, sensors, gateways = conn.execute(
        "SELECT (SELECT count(*) FROM enterprises), (SELECT count(*) FROM sites), "
        "(SELECT count(*) FROM sensors), (SELECT count(*) FROM gateways)").fetchone()
    what = f"{ents} enterprise(s), {sites} site(s), {sensors} sensor(s), {gateways} gateway(s)"
    if sensors == 0:
        return Check("registry", FAIL, f"nothing is monitored: {what}; every reading "
                     "would be refused as unregistered",
                     "import the registry: `hazardwatch registry import FILE.yaml`")
    bare = conn.execute(
        "SELECT count(*) FROM enterprises e WHERE NOT EXISTS "
        "(SELECT 1 FROM gateways g WHERE g.enterprise_id = e.id)").fetchone()[0]
    if bare:
        return Check("registry", WARN, f"{what}; {bare} enterprise(s) without a gateway",
                     "add their gateways to the registry file and import it again")
    return Check("registry", OK, what)


def users(conn: psycopg.Connection) -> Check:
    active, admins = conn.execute(
        "SELECT count(*) FILTER (WHERE NOT disabled), "
        "count(*) FILTER (WHERE NOT disabled AND role = 'admin') FROM users").fetchone()
    if active == 0:
        return Check("users", WARN, "no one can sign in to the API or the console",
                     "`hazardwatch user add NAME --role admin`")
    return Check("users", OK, f"{active} active user(s), {admins} admin(s)")


def outbox(conn: psycopg.Connection) -> Check:
    waiting = conn.execute(
        """SELECT receiver, count(*),
                   count(*) FILTER (WHERE next_at < now() - make_interval(mins => %s)),
                   extract(epoch FROM now() - min(next_at))::float8
            FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL
            GROUP BY receiver ORDER BY 3 DESC, 2 DESC""", (OVERDUE_MIN,)).fetchall()
    failed = conn.execute(
        "SELECT receiver, count(*), (array_agg(last_error ORDER BY failed_at DESC))[1] "
        "FROM outbox WHERE failed_at > now() - interval '1 hour' "
        "GROUP BY receiver ORDER BY 2 DESC").fetchall()
    backlog = sum(r[1] for r in waiting)
    overdue = [(name, n, age) for name, _, n, age in waiting if n]
    problems, actions = [], []
    if overdue:
        problems.append("overdue: " + ", ".join(
            f"{name} {n} (oldest due {age / 60:.0f} min ago)" for name, n, age in overdue))
        actions.append("check that `hazardwatch serve` runs with alerting enabled and can reach "
                       "the receiver")
    if failed:
        problems.append("given up in the last hour: " + ", ".join(
            f"{name} {n} (last error: {(err or '?')[:80]})" for name, n, err in failed))
        actions.append("fix the receiver (URL, secret, network); given-up notifications are "
                       "not retried")
    if problems:
        return Check("outbox", WARN, f"notifications {'; '.join(problems)}", "; ".join(actions))
    return Check("outbox", OK, f"{backlog} notification(s) waiting, none overdue; "
                 "none given up in the last hour")


def dead_letters(conn: psycopg.Connection) -> Check:
    rows = conn.execute(
        "SELECT reason, count(*) FROM dead_letters WHERE received_at > now() - interval '1 hour' "
        "GROUP BY reason ORDER BY 2 DESC, 1").fetchall()
    if not rows:
        return Check("dead letters", OK, "no message refused in the last hour")
    total = sum(n for _, n in rows)
    return Check("dead letters", WARN,
                 f"{total} message(s) refused in the last hour: "
                 + ", ".join(f"{reason} {n}" for reason, n in rows),
                 "see GET /api/dead-letters (or the console's onboarding page) and tell the "
                 "enterprise what was wrong")


# ---------------------------------------------------------------- broker

CONNACK_WORDS = {
    132: ("the broker does not accept MQTT 5", "use mosquitto ≥ 2.0 or another MQTT 5 broker"),
    133: ("the broker refused the client id", "check the broker's client id restrictions"),
    136: ("the broker says it is unavailable", "look at the broker's log"),
    137: ("the broker says it is busy", "try again; look at the broker's load"),
    138: ("the broker has banned this client", "check the broker's ban list"),
    140: ("the broker wants another authentication method", "check the broker's auth settings"),
    159: ("the broker limits the connection rate", "try again in a minute"),
}


def _probe_topics() -> list[str]:
    """One concrete topic under each filter the collector subscribes to."""
    from ingest.dialects import all_dialects

    topics = []
    for dialect in all_dialects():
        for pattern in dialect.topics:
            topics.append("/".join("hw-doctor" if p in ("+", "#") else p
                                   for p in pattern.split("/")))
    return topics


def broker(settings: Settings, timeout_s: float = TIMEOUT_S) -> Check:
    """Connect with the collector's credentials (own client id, clean start, no session
    kept) and subscribe under each of the collector's topic filters.

    mosquitto 2.0 grants every SUBSCRIBE and applies the ACL when delivering, so a granted
    subscription shows the broker took the request, not that messages will be delivered."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    m = settings.mqtt
    where = f"{m.host}:{m.port}"
    user = m.username
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"hw-doctor-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    client.connect_timeout = timeout_s
    if user:
        client.username_pw_set(user, m.password.get_secret_value() if m.password else None)
    if m.tls_ca:
        client.tls_set(ca_certs=str(m.tls_ca))
    done = threading.Event()
    result: dict = {}

    def on_connect(_c, _u, _flags, reason, _props) -> None:
        result["connack"] = reason
        done.set()

    def on_subscribe(_c, _u, _mid, reasons, _props) -> None:
        result["suback"] = reasons
        done.set()

    def on_disconnect(_c, _u, _flags, reason, _props) -> None:
        result.setdefault("closed", reason)
        done.set()

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_disconnect = on_disconnect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    try:
        client.connect(m.host, m.port, keepalive=max(5, int(timeout_s) * 2), clean_start=True,
                       properties=props)
    except ConnectionRefusedError:
        return Check("broker", FAIL, f"nothing accepts connections at {where}",
                     "start the broker (mosquitto), or fix HW_MQTT__HOST / HW_MQTT__PORT")
    except (TimeoutError, OSError) as exc:
        return Check("broker", FAIL, f"cannot reach the broker at {where}: {exc}",
                     "check HW_MQTT__HOST / HW_MQTT__PORT, the network and, with TLS, "
                     "HW_MQTT__TLS_CA")
    client.loop_start()
    try:
        if not done.wait(timeout_s) or "connack" not in result:
            closed = "closed the connection" if "closed" in result else \
                f"did not answer within {timeout_s:g} s"
            return Check("broker", FAIL, f"something listens at {where} but {closed} "
                         "instead of accepting an MQTT 5 session",
                         "check that HW_MQTT__PORT is the broker's MQTT port (TLS or not)")
        reason = result["connack"]
        if reason.is_failure:
            return _refused(reason.value, str(reason), where, user)
        done.clear()
        topics = _probe_topics()
        client.subscribe([(t, 1) for t in topics])
        if not done.wait(timeout_s) or "suback" not in result:
            return Check("broker", FAIL, f"the broker at {where} did not answer a subscription "
                         f"within {timeout_s:g} s", "look at the broker's log")
        refused = [t for t, r in zip(topics, result["suback"], strict=False) if r.is_failure]
        if refused:
            return Check("broker", FAIL,
                         f"the broker refused the collector's subscriptions to "
                         f"{', '.join(refused)} (not authorised)",
                         f"give {user or 'the collector'} read access to hw/v1/# and tb/# in "
                         "the broker's ACL (deploy/mosquitto/acl)")
        return Check("broker", OK, f"connected to {where} as {user or '(anonymous)'} and "
                     f"subscribed under the collector's {len(topics)} topic filters")
    finally:
        client.disconnect()
        client.loop_stop()


def _refused(code: int, text: str, where: str, user: str | None) -> Check:
    if code in (134, 135):
        if not user:
            return Check("broker", FAIL, f"the broker at {where} refused an anonymous client "
                         f"({text}: not authorised)",
                         "set HW_MQTT__USERNAME / HW_MQTT__PASSWORD to the collector's account")
        return Check("broker", FAIL, f"the broker at {where} refused the login of {user} "
                     f"({text}: not authorised)",
                     "check HW_MQTT__USERNAME / HW_MQTT__PASSWORD against the broker's password "
                     "file (mosquitto_passwd)")
    words, action = CONNACK_WORDS.get(code, (f"the broker refused the connection ({text})",
                                             "look at the broker's log"))
    return Check("broker", FAIL, f"{words} at {where} ({text})", action)
