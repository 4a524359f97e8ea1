"""`hazardwatch evaluate`: a scenario scored against its ground truth, offline (straight
through the rule engine, simulators/evaluate.py) or live (this module: through the real
pipeline - MQTT broker, collector, PostgreSQL, rule engine, warnings table).

Live: a database of its own (a throwaway `hw_eval_<scenario>_<pid>` on HW_DATABASE_URL's
server unless --database names one), migrated, with the scenario's registry imported; the
collector with the rules sink runs in this process (`ingest.collector.Collector` +
`hazardwatch.pipeline.RulesSink`, what `serve` runs); the scenario's gateways publish it at N×
speed (simulators/publish.py); when every published reading is stored the warnings are read
back from `warnings`, `alarms` and `warning_events` and scored with the same `score()`.

Processing time at N× speed. Event time is the scenario's own (shifted so the scenario ends
when publishing ends), so everything driven by event time - limits with their on/off delays,
rates, trends, flat-lines - behaves exactly as offline. The rule engine's processing-time
work (no-data timers, escalation by how long a warning has been active) would run on the
wall clock, N× slower than the scenario: a 5-minute dropout lasts 5 s at 60× and would
never reach no_data, and a warning would need 30 wall minutes to be "active for 30 min";
and any wall-clock hiccup of the machine would be N× longer in scenario time. So the
engine is handed a scenario clock instead of `time.time()` (`ScenarioClock`): the scenario
(send) time up to which every message sent has been evaluated - the offline run's "rx =
send time" made live. It waits for a slow pipeline or a lagging gateway instead of
inventing silence, so a busy machine makes the run slower, not different. Left different
from offline: rx advances per collector batch and the engine ticks every RESOLUTION_S
(10 s) of scenario time, where offline both happen per 60-s chunk; raise times are event
times in both, so detections, levels and delays agree to within that granularity. The
publisher is held back when it gets MAX_AHEAD messages ahead of the pipeline's commits, so
no broker queue limit drops a message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psycopg
from pydantic import SecretStr

from hazardwatch import logs
from hazardwatch.db import database_name, with_database
from hazardwatch.pipeline import PG_EPOCH_S, RulesSink
from hazardwatch.settings import Settings
from ingest.batch import Batch, Columns
from rules.engine import Changes
from simulators.evaluate import (
    Score,
    WarningRecord,
    build_feed,
    desks_of,
    records_from_rows,
    score,
    sensor_rows,
    site_days,
    truth_of,
)
from simulators.publish import Summary, publish
from simulators.scenario import Scenario, shift_base

log = logs.get("hazardwatch.evaluation")

Progress = Callable[[str, float, float], None]   # (phase, done, total)
RESOLUTION_S = 10.0    # live: scenario seconds a collector batch may span, and between ticks
MAX_AHEAD = 500        # live: messages the publisher may be ahead of the pipeline's commits
LIVE_MESSAGES_PER_S = 1000.0   # live: the default speed keeps the fleet's message rate at this


def default_speed(sc: Scenario) -> float:
    """The scenario's own speed, lowered so its gateways send at most LIVE_MESSAGES_PER_S
    (each gateway sends one message per scan, every interval of its fastest sensor)."""
    rate = sum(1.0 / min(x.interval_s for x in site.sensors if x.gateway == role)
               for site in sc.sites for role in site.gateways)
    return max(1.0, min(sc.speed, LIVE_MESSAGES_PER_S / rate)) if rate else sc.speed


class EvaluationError(RuntimeError):
    """The live run could not be set up or did not complete; the message says why."""


class ScenarioClock:
    """Processing time for the rule engine in a live run: the scenario time up to which every
    message the publisher has sent has been evaluated (a low watermark over the gateways,
    as stream processors keep one over partitions), as epoch seconds (base + scenario s).

    The publisher thread reports each message and link action as it goes out (`sent`), the
    collector's sink each readings message it evaluates (`evaluated`; MQTT keeps one
    client's messages in order, so the k-th evaluated message of a gateway is its k-th
    sent). A gateway whose messages lag behind the others' (its network thread starved on a
    busy machine) holds the clock back instead of looking silent. A message not evaluated
    LOST_S wall seconds after it was sent counts as lost (`lost`), so one lost message
    cannot stop the clock."""

    LOST_S = 30.0

    def __init__(self, base: float, duration: float) -> None:
        self.base, self.duration = base, duration
        self._lock = threading.Lock()
        self._latest = 0.0
        self._pending: dict[str, collections.deque[tuple[float, float]]] = {}
        self._link: dict[str, float] = {}
        self.over = False
        self.lost = 0

    def sent(self, at: float, user: str, action: str) -> None:
        with self._lock:
            self._latest = max(self._latest, min(at, self.duration))
            if action == "publish":
                self._pending.setdefault(user, collections.deque()).append((at, time.monotonic()))
            else:
                self._link[user] = at

    def evaluated(self, user: str) -> None:
        with self._lock:
            q = self._pending.get(user)
            if q:
                q.popleft()

    def finish(self) -> None:
        """Publishing is over and everything is stored: the scenario's end is now."""
        self.over = True

    def now(self) -> float:
        if self.over:
            return self.base + self.duration
        stale = time.monotonic() - self.LOST_S
        with self._lock:
            w = self._latest
            for q in self._pending.values():
                while q and q[0][1] < stale:
                    q.popleft()
                    self.lost += 1
                if q:
                    w = min(w, q[0][0])
        return self.base + w

    def link_at(self, user: str) -> float | None:
        """Scenario time (epoch) of the gateway's last link drop or reconnect, if any."""
        with self._lock:
            at = self._link.get(user)
        return None if at is None else self.base + at


class ScenarioSink(RulesSink):
    """The pipeline's rules sink with the scenario clock as processing time (`evaluate` and
    `tick` are RulesSink's with `ScenarioClock.now()` for `time.time()`)."""

    def __init__(self, clock: ScenarioClock, gateways: dict[int, str]) -> None:
        super().__init__(0.0)           # a fresh database: nothing to replay
        self.clock = clock
        self.gateways = gateways        # gateway id -> MQTT username
        self.watermark = clock.base
        self.ticks = 0

    def _now(self) -> float:
        self.watermark = max(self.watermark, self.clock.now())
        return self.watermark

    def evaluate(self, cols: Columns, batch: Batch) -> Changes:
        for m in batch.messages:
            parts = m.topic.split("/")
            if len(parts) == 5 and parts[0] == "hw" and parts[4] == "readings":
                self.clock.evaluated(f"{parts[2]}/{parts[3]}")
        rx = self._now()
        ts = cols.ts_us / 1e6 + PG_EPOCH_S
        changes = self.engine.readings(cols.sensor_id.astype(np.int64), ts, cols.value,
                                       cols.quality, rx)
        for gid, (online, _) in batch.states.items():
            # a last-will or a reconnect belongs to the link action that caused it
            at = self.clock.link_at(self.gateways.get(gid, ""))
            changes.merge(self.engine.gateway_state(gid, online, rx if at is None else at, rx))
        return changes

    def tick(self, now: float) -> Changes:
        self.ticks += 1
        return self.engine.tick(self._now())


@dataclass
class LiveResult:
    score: Score
    warnings: list[WarningRecord]
    published: Summary
    expected_readings: int
    stored_readings: int
    dead_letters: int
    dsn: str
    kept: bool
    seconds: float
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- helpers


def _expected_readings(sc: Scenario, base: float, max_future_s: float) -> int:
    """Distinct (sensor, ts) the gateways publish that ingest accepts: duplicates and
    clock-skew collisions are stored once; malformed payloads and readings stamped more
    than max_future_s ahead of their send time are refused."""
    _, sensors, _, gateway_ids = sensor_rows(sc)
    tag_ids = {(site, tag): sid for sid, (site, tag) in sensors.items()}
    feed = build_feed(sc, gateway_ids, tag_ids, base)
    ok = feed.ts - (base + feed.at) <= max_future_s
    keys = feed.sensor[ok] * (1 << 42) + np.round(feed.ts[ok] * 1000).astype(np.int64) % (1 << 42)
    return int(np.unique(keys).size)


def _clear_retained_states(sc: Scenario, settings: Settings,
                           password: Callable[[str, str], str | None]) -> None:
    """An earlier run of the same fleet on this broker left each gateway's retained
    `offline`; a new collector would read it as a link down at the start. Clear them."""
    m = settings.mqtt
    for ent, gw, _ in sc.gateways():
        user = f"{ent}/{gw}"
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-eval-{os.getpid()}",
                        protocol=mqtt.MQTTv311, clean_session=True)
        c.username_pw_set(user, password(ent, gw))
        done = threading.Event()
        failed: list[str] = []

        def on_connect(client, userdata, flags, rc, props, failed=failed, done=done):
            if rc.is_failure:
                failed.append(str(rc))
            done.set()

        c.on_connect = on_connect
        try:
            c.connect(m.host, m.port, keepalive=30)
        except OSError as exc:
            raise EvaluationError(f"broker {m.host}:{m.port}: {exc}") from exc
        c.loop_start()
        try:
            if not done.wait(10) or failed:
                raise EvaluationError(f"gateway {user}: {failed[0] if failed else 'no CONNACK'} "
                                      f"from {m.host}:{m.port} (gateway credentials: --password "
                                      "or --passwords)")
            info = c.publish(f"hw/v1/{ent}/{gw}/state", b"", qos=1, retain=True)
            info.wait_for_publish(10)
        finally:
            c.disconnect()
            c.loop_stop()


def _create_database(server_dsn: str, name: str) -> str:
    admin = with_database(server_dsn, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    return with_database(server_dsn, name)


def _drop_database(dsn: str) -> None:
    admin = with_database(dsn, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            psycopg.sql.Identifier(database_name(dsn))))


def _prepare(dsn: str, sc: Scenario, settings: Settings) -> None:
    from hazardwatch.migrate import migrate
    from hazardwatch.registry import RegistryError, import_file

    migrate(dsn, timescale=settings.storage.timescale,
            retention_days=settings.storage.retention_days,
            compress_after_days=settings.storage.compress_after_days)
    codes = [e.code for e in sc.enterprises]
    with psycopg.connect(dsn) as conn:
        known = conn.execute("SELECT count(*) FROM enterprises WHERE code = ANY(%s)", (codes,)).fetchone()[0]
    if known:
        raise EvaluationError(f"{database_name(dsn)} already holds this scenario's fleet (an earlier "
                              "run?): its open warnings would carry over; use a fresh database")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "registry.yaml"
        path.write_text(sc.registry_yaml(), encoding="utf-8")
        try:
            import_file(dsn, path)
        except RegistryError as exc:
            raise EvaluationError("registry: " + "; ".join(exc.errors)) from exc


def _stored(dsn: str, sc: Scenario, base: float) -> tuple[int, int]:
    """(readings stored for the fleet since base, dead letters)."""
    with psycopg.connect(dsn) as conn:
        n = conn.execute(
            "SELECT count(*) FROM readings r JOIN sensors s ON s.id = r.sensor_id "
            "JOIN enterprises e ON e.id = s.enterprise_id "
            "WHERE e.code = ANY(%s) AND r.ts >= to_timestamp(%s)",
            ([e.code for e in sc.enterprises], base - 1)).fetchone()[0]
        d = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return int(n), int(d)


def read_warnings(dsn: str, sc: Scenario, base: float) -> list[WarningRecord]:
    """The fleet's warnings as stored (one record per raise or reactivation)."""
    with psycopg.connect(dsn) as conn:
        ws = conn.execute(
            "SELECT w.id, st.code, w.cause, extract(epoch FROM w.opened_at)::float8 "
            "FROM warnings w JOIN sites st ON st.id = w.site_id "
            "JOIN enterprises e ON e.id = st.enterprise_id WHERE e.code = ANY(%s) ORDER BY w.id",
            ([e.code for e in sc.enterprises],)).fetchall()
        ids = [w[0] for w in ws]
        alarms = conn.execute(
            "SELECT a.warning_id, extract(epoch FROM a.raised_at)::float8, "
            "extract(epoch FROM a.cleared_at)::float8, "
            "coalesce(s.tag, 'gateway-' || g.code) || ':' || a.condition "
            "FROM alarms a LEFT JOIN sensors s ON s.id = a.sensor_id "
            "LEFT JOIN gateways g ON g.id = a.gateway_id WHERE a.warning_id = ANY(%s)",
            (ids,)).fetchall()
        events = conn.execute(
            "SELECT warning_id, action, level FROM warning_events WHERE warning_id = ANY(%s) "
            "ORDER BY id", (ids,)).fetchall()
    return records_from_rows(ws, alarms, events, base)


# ---------------------------------------------------------------------------- the run


@dataclass
class LiveOptions:
    speed: float
    password: Callable[[str, str], str | None]
    grace_s: float = 1800.0
    database: str | None = None      # use this database as is (never dropped)
    keep: bool = False               # keep the throwaway database
    stall_s: float = 30.0            # give up waiting for the pipeline after this long idle


def run_live(settings: Settings, sc: Scenario, opts: LiveOptions,
             progress: Progress | None = None) -> LiveResult:
    t0 = time.monotonic()
    if opts.database:
        dsn, throwaway = opts.database, False
    else:
        name = f"hw_eval_{sc.name.lower()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in name)[:63]
        dsn, throwaway = _create_database(settings.dsn(), name), True
    kept = opts.keep or not throwaway
    try:
        _prepare(dsn, sc, settings)
        _clear_retained_states(sc, settings, opts.password)
        result = asyncio.run(_live(settings, dsn, sc, opts, progress))
        result.dsn, result.kept, result.seconds = dsn, kept, time.monotonic() - t0
        return result
    finally:
        if throwaway and not opts.keep:
            _drop_database(dsn)


async def _live(settings: Settings, dsn: str, sc: Scenario, opts: LiveOptions,
                progress: Progress | None) -> LiveResult:
    from ingest.collector import Collector

    speed = float(opts.speed)
    # Processing-time resolution in scenario time: a batch closes after, and the engine
    # ticks every, RESOLUTION_S / speed wall seconds (at most the pipeline's own 100 ms / 1 s).
    wall_step = RESOLUTION_S / speed
    mine = settings.model_copy(update={
        "database_url": SecretStr(dsn),
        "mqtt": settings.mqtt.model_copy(update={
            # never a deployed collector's persistent session; nothing left behind
            "client_id": f"hw-eval-{os.getpid()}-{uuid.uuid4().hex[:6]}", "session_expiry_s": 0,
            "share_group": None}),
        "ingest": settings.ingest.model_copy(update={
            "batch_ms": int(max(5, min(settings.ingest.batch_ms, wall_step * 1000)))}),
    })
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    published = asyncio.Event()
    scored, halt = threading.Event(), threading.Event()
    base = round(shift_base(sc.duration, speed, time.time()), 3)    # whole milliseconds
    clock = ScenarioClock(base, sc.duration)
    with psycopg.connect(dsn) as conn:
        gateways = dict(conn.execute("SELECT id, username FROM gateways").fetchall())
    sink = ScenarioSink(clock, gateways)
    collector = Collector(mine, sink=sink, tick_s=min(settings.rules.tick_s, max(0.005, wall_step)))
    running = asyncio.create_task(collector.run(stop), name="hw-eval-collector")
    deadline = time.monotonic() + 30
    while not collector.connected:
        if running.done():
            await running
            raise EvaluationError("the collector stopped before it connected")
        if time.monotonic() > deadline:
            stop.set()
            await running
            raise EvaluationError(f"the collector could not connect to the broker "
                                  f"{settings.mqtt.host}:{settings.mqtt.port} in 30 s")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)            # the subscription's SUBACK

    expected = _expected_readings(sc, base, settings.ingest.max_future_s)
    last = [0.0]

    def on_progress(done: float, summary: Summary) -> None:
        now = time.monotonic()
        if progress is not None and (now - last[0] > 0.2 or done >= sc.duration):
            last[0] = now
            progress("publish", done, sc.duration)

    def before_close(summary: Summary) -> None:
        loop.call_soon_threadsafe(published.set)
        scored.wait(opts.stall_s * 10 + 600)

    sent = [0]

    def sending(at: float, user: str, action: str) -> None:
        """Back-pressure: never more than MAX_AHEAD messages ahead of the pipeline's commits,
        so no broker queue limit (mosquitto's default is 1,000 a client) ever drops one;
        the scenario clock follows the publisher, so waiting changes nothing but the wall
        time."""
        deadline = time.monotonic() + opts.stall_s
        while (sent[0] - collector.stats["messages"] > MAX_AHEAD and not halt.is_set()
               and time.monotonic() < deadline):
            time.sleep(0.005)
        clock.sent(at, user, action)
        sent[0] += 1

    publisher = asyncio.create_task(asyncio.to_thread(
        publish, sc, host=settings.mqtt.host, port=settings.mqtt.port,
        passwords=lambda e, g: opts.password(e, g), speed=speed, base_epoch=base,
        sending=sending, progress=on_progress, before_close=before_close, stop=halt))
    notes: list[str] = []
    warnings: list[WarningRecord] = []
    stored = dead = 0
    try:
        waiter = asyncio.create_task(published.wait())
        await asyncio.wait({waiter, publisher, running}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            waiter.cancel()
            halt.set()
            running.result()                        # raises what stopped the pipeline
            raise EvaluationError("the collector stopped before the scenario was published")
        if not published.is_set():
            waiter.cancel()
            try:
                await publisher
            except (ConnectionError, OSError, KeyError) as exc:
                raise EvaluationError(f"publishing failed: {exc}") from exc
            raise EvaluationError("publishing ended early")
        stored, dead = await asyncio.to_thread(_stored, dsn, sc, base)
        idle_since, best = time.monotonic(), stored
        while stored < expected and not running.done():
            if progress is not None:
                progress("store", stored, expected)
            await asyncio.sleep(0.5)
            stored, dead = await asyncio.to_thread(_stored, dsn, sc, base)
            if stored > best:
                idle_since, best = time.monotonic(), stored
            elif time.monotonic() - idle_since > opts.stall_s:
                notes.append(f"stopped waiting: {stored} of {expected} readings stored after "
                             f"{opts.stall_s:g} s without progress ({dead} dead letters)")
                break
        if progress is not None:
            progress("store", stored, expected)
        if clock.lost:
            notes.append(f"{clock.lost} messages were never evaluated within "
                         f"{clock.LOST_S:g} s of being sent")
        clock.finish()                              # the final tick at the scenario's end
        ticks = sink.ticks
        deadline = time.monotonic() + 10
        while sink.ticks < ticks + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        stop.set()
        await running
        warnings = await asyncio.to_thread(read_warnings, dsn, sc, base)
    finally:
        stop.set()
        halt.set()
        scored.set()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        try:
            summary = await publisher
        except (ConnectionError, OSError, KeyError) as exc:
            raise EvaluationError(f"publishing failed: {exc}") from exc
    result = score(truth_of(sc), warnings, site_days=site_days(sc), grace_s=opts.grace_s,
                   desks=desks_of(sc))
    return LiveResult(result, warnings, summary, expected, stored, dead, dsn, False, 0.0, notes)


# ---------------------------------------------------------------------------- report


def render(console, sc: Scenario, result: Score, rows: list[tuple[str, str]]) -> None:
    """The incidents table and the scores table (rich), as `hazardwatch evaluate` prints."""
    from rich.table import Table

    from simulators.evaluate import FLOOD_LINE

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    table = Table(title=f"{sc.name}: incidents")
    for col in ("site", "cause", "source", "window", "detected", "delay", "level (expected)"):
        table.add_column(col)
    for m in result.matches:
        t = m.truth
        table.add_row(t.site, t.cause, t.source, f"{t.start_s / 60:g}-{t.end_s / 60:g} min",
                      "yes" if m.detected else "[red]no[/red]",
                      "-" if m.delay_s is None else f"{m.delay_s:.0f} s",
                      f"{m.level_found or '-'} ({t.level})" + ("" if m.level_ok else " [red]✗[/red]"))
    if result.matches:
        console.print(table)
    if result.false_list:
        false = Table(title=f"{sc.name}: warnings no incident explains")
        for col in ("site", "cause", "raised", "level", "alarms"):
            false.add_column(col)
        for w in result.false_list[:20]:
            false.add_row(w.site, w.cause, f"{w.raised_s / 3600:.2f} h", w.level, ", ".join(w.alarms[:4]))
        console.print(false)
    d = result.delays
    summary = Table(title=f"{sc.name}: scores")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    flood = result.max_desk
    desks = ", ".join(f"{k} {v}" for k, v in result.max_per_desk.items())
    for name, value in (
            ("recall", pct(result.recall)), ("precision", pct(result.precision)),
            ("detection delay median / max",
             f"{float(np.median(d)):.0f} / {max(d):.0f} s" if d else "-"),
            ("level accuracy", pct(result.level_accuracy)),
            ("warnings (matched / false)",
             f"{result.warnings} ({result.matched_warnings} / {result.false_warnings})"),
            ("false per site-day", f"{result.false_per_site_day:.3g} ({result.site_days:.3g} site-days)"),
            ("max raised in 10 min, per desk", f"{flood} ({desks})" + (
                f" [red]> flood line {FLOOD_LINE}[/red]" if flood > FLOOD_LINE else "")),
            ("max raised in 10 min, centre", str(result.max_per_10min)),
            *rows):
        summary.add_row(name, value)
    console.print(summary)


def run_command(settings: Settings, scenario: str, *, offline: bool, json_file: Path | None,
                grace: str, chunk: str, batch_readings: int | None, speed: float | None,
                database: str | None, keep: bool, passwords_file: Path | None,
                password: str | None) -> None:
    """The body of `hazardwatch evaluate` (hazardwatch/cli.py registers it)."""
    import sys

    import click
    import orjson
    import yaml
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from simulators.evaluate import evaluate as run_offline
    from simulators.scenario import ScenarioError, load, seconds

    try:
        sc = load(scenario)
        grace_s, chunk_s = seconds(grace, "--grace"), seconds(chunk, "--chunk")
    except (ScenarioError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if chunk_s <= 0:
        raise click.BadParameter("must be positive", param_hint="--chunk")
    if offline and (speed or database or keep or passwords_file):
        raise click.UsageError("--speed, --database, --keep and --passwords are for the live run, "
                               "not --offline")
    if not offline and batch_readings is not None:
        raise click.UsageError("--batch-readings is for --offline (live gateways publish as "
                               "`simulate` does)")
    console = Console(stderr=json_file == Path("-"))
    doc: dict = {"scenario": sc.name, "mode": "offline" if offline else "live", "grace_s": grace_s}
    t0 = time.monotonic()
    if offline:
        with Progress(TextColumn(f"{sc.name} offline"), BarColumn(), TimeRemainingColumn(),
                      console=console, transient=True, disable=sc.duration < 6 * 3600) as bar:
            task = bar.add_task("evaluate", total=sc.duration)
            result, run = run_offline(sc, grace_s=grace_s, chunk_s=chunk_s,
                                      batch_readings=batch_readings,
                                      progress=lambda done: bar.update(task, completed=done))
        seconds_ = time.monotonic() - t0
        records = run.warnings
        rows = [("readings / malformed messages", f"{run.readings} / {run.malformed}"),
                ("run time", f"{seconds_:.1f} s offline")]
        doc.update(chunk_s=chunk_s, batch_readings=batch_readings, readings=run.readings,
                   malformed=run.malformed)
    else:
        speed = float(speed or default_speed(sc))
        try:
            mapping = yaml.safe_load(passwords_file.read_text()) if passwords_file else None
        except (OSError, yaml.YAMLError) as exc:
            raise click.ClickException(f"--passwords {passwords_file}: {exc}") from exc
        if mapping is not None and not isinstance(mapping, dict):
            raise click.ClickException(f"--passwords {passwords_file}: expected a mapping of "
                                       "<code>/<gateway> to password")

        def lookup(ent: str, gw: str) -> str | None:
            return (mapping or {}).get(f"{ent}/{gw}", password)

        if settings.log_level.upper() == "INFO":    # the pipeline's start/stop lines: noise here
            from hazardwatch import logs as logs_mod

            logs_mod.setup("WARNING", settings.log_format)

        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed:,.0f}/{task.total:,.0f}"), TimeRemainingColumn(),
                      console=console, transient=True) as bar:
            tasks: dict[str, object] = {}

            def progress(phase: str, done: float, total: float) -> None:
                if phase not in tasks:
                    label = (f"{sc.name} ×{speed:g} publish (scenario s)" if phase == "publish"
                             else "readings stored")
                    tasks[phase] = bar.add_task(label, total=total)
                bar.update(tasks[phase], completed=done, total=total)

            try:
                live = run_live(settings, sc, LiveOptions(speed=speed, password=lookup,
                                                          grace_s=grace_s, database=database,
                                                          keep=keep), progress)
            except EvaluationError as exc:
                raise click.ClickException(str(exc)) from exc
        result, records = live.score, live.warnings
        rows = [("readings published / stored",
                 f"{live.published.readings} / {live.stored_readings} (expected {live.expected_readings})"),
                ("run time", f"{live.seconds:.1f} s live at ×{speed:g}")]
        for note in live.notes:
            console.print(f"[yellow]{note}[/yellow]")
        if live.kept:
            console.print(f"database kept: {live.dsn}")
        doc.update(speed=speed, resolution_s=RESOLUTION_S, published_readings=live.published.readings,
                   expected_readings=live.expected_readings, stored_readings=live.stored_readings,
                   dead_letters=live.dead_letters, database=live.dsn if live.kept else None,
                   notes=live.notes)
        seconds_ = live.seconds
    render(console, sc, result, rows)
    if json_file is not None:
        doc.update(run_s=seconds_, **result.as_dict())
        doc["warning_list"] = [{"site": w.site, "cause": w.cause, "raised_s": w.raised_s,
                                "level": w.level, "cleared_s": w.cleared_s, "alarms": w.alarms}
                               for w in records]
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
        if json_file == Path("-"):
            sys.stdout.buffer.write(data + b"\n")
        else:
            json_file.write_bytes(data + b"\n")
    if not offline and live.stored_readings < live.expected_readings:
        raise click.ClickException(
            f"incomplete run: {live.expected_readings - live.stored_readings} of "
            f"{live.expected_readings} readings never reached the database, so the scores above "
            "do not measure the rules (see dead_letters; a broker that drops messages for a "
            "slow subscriber?)")
