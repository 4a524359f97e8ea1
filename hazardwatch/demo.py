"""`hazardwatch demo`: the whole system on one machine, fed by a simulated fleet.

Migrates, imports the demo fleet's registry, creates the console's demo users (existing
users are never changed), runs the pipeline in this process (the coroutine `serve` runs),
and publishes a simulated fleet live over MQTT with incidents on a loop, printing one
line per loop and per warning change. SIGINT/SIGTERM stop the fleet first (its gateways
publish `offline`), then the pipeline and the HTTP server, and exit 0.

Fleet time. Loop k plays fleet time [k·D, (k+1)·D) of one continuous run of the loop's
scenario (its incidents and faults repeated every D), so each sensor's readings stay
continuous and in order across loops. Re-placing every loop at "now" would not do: at N×
consecutive loops would overlap in event time, and the engine ignores a reading older than
the newest it has evaluated for that sensor (docs/rules.md). The first loop starts
D·(1 − 1/N) in the past (and after any reading already stored for the fleet) and plays
at N×, catching up with the clock as it ends; later loops play in real time. A message
goes out at max(its N× slot, its own timestamp), so no reading is ever in the future.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from rich.console import Console
from rich.markup import escape

from hazardwatch import logs
from hazardwatch.settings import Settings
from simulators.scenario import Scenario

log = logs.get("hazardwatch.demo")

DEMO_LOOP = Path(__file__).with_name("demo.yaml")
DEFAULT_PASSWORD = "hazardwatch-demo"
OFFICER_REGION = "370100"        # 济南市: every region a scenario fleet uses lies below it
CST = timezone(timedelta(hours=8), "CST")
EPOCH_S = 86400.0                # the fleet is simulated a day at a time (see _Epoch)
READY_TIMEOUT_S = 30.0
POLL_S = 1.0
OFFLINE_GRACE_S = 1.0            # lets the pipeline record the fleet going offline
LEVELS = {1: ("blue", "blue"), 2: ("yellow", "yellow"), 3: ("orange", "dark_orange"),
          4: ("red", "red")}


class DemoError(Exception):
    """The demo cannot start or go on; the message says why and what to do."""


@dataclass(frozen=True)
class DemoUser:
    username: str
    role: str
    display_name: str
    region: str | None = None
    enterprise: str | None = None


def load_loop(name: str | None = None) -> Scenario:
    """The loop scenario: the demo's own (hazardwatch/demo.yaml) or any scenario file/name."""
    from simulators.scenario import ScenarioError, load

    try:
        return load(name or DEMO_LOOP)
    except (ScenarioError, OSError, ValueError) as exc:
        raise DemoError(str(exc)) from exc


def demo_users(sc: Scenario) -> list[DemoUser]:
    """admin; an officer of 济南市 (sees the whole fleet); the enterprise user of the first
    enterprise with a tank farm (else the first enterprise)."""
    ent = next((e for e in sc.enterprises if any(s.kind == "major_hazard" for s in e.sites)),
               sc.enterprises[0])
    return [DemoUser("admin", "admin", "管理员"),
            DemoUser("officer", "officer", "济南市值班员", region=OFFICER_REGION),
            DemoUser("chem", "enterprise", ent.name, enterprise=ent.code)]


def ensure_users(dsn: str, users: list[DemoUser], password: str) -> list[tuple[object, bool]]:
    """Add the users that do not exist; returns (the user's row, created) for each."""
    from alerting.api.users import UserError, add_user, check_password, list_users

    try:
        check_password(password)
    except UserError as exc:
        raise DemoError(f"HW_DEMO_PASSWORD: {exc}") from exc
    existing = {u.username for u in list_users(dsn)}
    created = set()
    for u in users:
        if u.username in existing:
            continue
        try:
            add_user(dsn, u.username, password, u.role, region=u.region,
                     enterprise=u.enterprise, display_name=u.display_name)
            created.add(u.username)
        except UserError as exc:
            if "exists already" not in str(exc):   # another process was quicker: keep theirs
                raise DemoError(f"user {u.username}: {exc}") from exc
    rows = {u.username: u for u in list_users(dsn)}
    return [(rows[u.username], u.username in created) for u in users]


def newest_fleet_reading(dsn: str, sc: Scenario) -> float | None:
    """Epoch seconds of the newest stored reading of the fleet's enterprises (or None)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(x.m)) FROM sensors s "
            "JOIN sites st ON st.id = s.site_id JOIN enterprises e ON e.id = st.enterprise_id "
            "CROSS JOIN LATERAL (SELECT max(ts) AS m FROM readings r WHERE r.sensor_id = s.id) x "
            "WHERE e.code = ANY(%s)", ([e.code for e in sc.enterprises],)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


# ---------------------------------------------------------------------------- the fleet


@dataclass
class LoopInfo:
    start: float                 # the loop's fleet time, epoch seconds (its first part may
    end: float                   # have been played by an earlier run)
    played_from: float
    wall_s: float                # about how long it takes to play
    incidents: list[tuple[str, str, float]]   # (site, kind, onset in epoch seconds)
    warmup: bool = False         # normal operation before the first loop, sent at once


@dataclass
class FleetStats:
    loops: int = 0
    messages: int = 0
    readings: int = 0
    drops: int = 0


@dataclass
class _Epoch:
    """About a day of fleet time, simulated in one piece: the models draw their noise for
    the whole horizon at once, so one horizon must serve every loop within it (a window of
    a longer run would not join the previous window smoothly)."""

    index: int
    start: float                 # epoch seconds of the scenario's time 0
    scenario: Scenario


class Fleet:
    """The loop scenario's gateways, publishing loop after loop until `stop`.

    Fleet time is pinned to the clock: loop k covers [ANCHOR + k·D, ANCHOR + (k+1)·D) and
    its readings are the same whenever it is played, so a restarted demo carries on where
    the last one stopped (sensor values joined, no reading stored twice). Playing starts at
    `begin` = max(now − D·(1 − 1/N), just after what the database already has for the
    fleet). Before that, up to WARMUP_S of the same fleet without incidents is sent at once:
    a rule engine that meets an incident with no history misreads its recovery (a gas main
    re-pressurising looks like overpressure, a cleaned filter like a blockage)."""

    ANCHOR = datetime(2024, 1, 1, tzinfo=CST).timestamp()   # a midnight in 济南
    WARMUP_S = 900.0

    def __init__(self, sc: Scenario, *, host: str, port: int,
                 passwords: Callable[[str, str], str], speed: float | None = None,
                 not_before: float | None = None, now: float | None = None) -> None:
        self.sc = sc
        self.host, self.port, self.passwords = host, port, passwords
        self.speed = max(1.0, float(speed or sc.speed))
        self.loop_s = float(sc.duration)
        self.t_start = time.time() if now is None else now
        begin = self.t_start - self.loop_s * (1.0 - 1.0 / self.speed)
        if not_before is not None:
            begin = min(self.t_start, max(begin, not_before))
        self.begin = begin
        self.warm_from = max(begin - self.WARMUP_S, not_before if not_before is not None else -1.0)
        self.loops_per_epoch = max(1, int(-(-EPOCH_S // self.loop_s)))
        self.epoch_s = self.loops_per_epoch * self.loop_s
        self.stop = threading.Event()
        self.stats = FleetStats()
        self.error: BaseException | None = None
        self.on_loop: Callable[[LoopInfo], None] | None = None
        self.gateways: dict = {}     # user -> simulators.publish._Gateway
        self._epochs: dict[tuple[int, bool], _Epoch] = {}

    def due(self, fleet_t: float) -> float:
        """Wall time (epoch s) to send what was measured at fleet time `fleet_t`: its N×
        slot, and never before its own timestamp."""
        return max(self.t_start + (fleet_t - self.begin) / self.speed, fleet_t)

    def _epoch(self, e: int, quiet: bool) -> _Epoch:
        if (e, quiet) not in self._epochs:
            self._epochs = {k: v for k, v in self._epochs.items() if k[0] >= e - 1}
            shifts = [] if quiet else [j * self.loop_s for j in range(self.loops_per_epoch)]
            start = self.ANCHOR + e * self.epoch_s
            sc = replace(
                self.sc, duration=self.epoch_s,
                start=datetime.fromtimestamp(start, CST),   # daily cycles follow the clock
                incidents=[(sid, replace(i, at=i.at + d)) for d in shifts for sid, i in self.sc.incidents],
                faults=[(sid, replace(f, at=f.at + d)) for d in shifts for sid, f in self.sc.faults])
            self._epochs[(e, quiet)] = _Epoch(e, start, sc)
        return self._epochs[(e, quiet)]

    def window(self, t0: float, t1: float, quiet: bool = False) -> tuple[list[tuple], list]:
        """Messages of fleet time [t0, t1) as (fleet time, seq, gateway user, message) in
        sending order, and the incidents starting then as (site, kind, onset)."""
        plan, incidents = [], []
        e = int((t0 - self.ANCHOR) // self.epoch_s)
        while self.ANCHOR + e * self.epoch_s < t1:
            ep = self._epoch(e, quiet)
            lo, hi = t0 - ep.start, t1 - ep.start
            for ent, gw, _site in ep.scenario.gateways():
                for m in ep.scenario.messages(ent, gw, ep.start):
                    if lo <= m.at < hi:
                        plan.append((ep.start + m.at, len(plan), f"{ent}/{gw}", m))
            incidents += [(sid, i.kind, ep.start + i.at) for sid, i in ep.scenario.incidents
                          if lo <= i.at < hi]
            e += 1
        plan.sort(key=lambda x: (x[0], x[1]))
        return plan, sorted(incidents, key=lambda x: x[2])

    def plan(self, k: int, played_from: float) -> tuple[LoopInfo, list[tuple]]:
        """Loop k from fleet time `played_from` on."""
        start = self.ANCHOR + k * self.loop_s
        end = start + self.loop_s
        plan, incidents = self.window(played_from, end)
        wall = self.due(end) - max(self.due(played_from), time.time())
        return LoopInfo(start, end, played_from, max(0.0, wall), incidents), plan

    def connect(self) -> None:
        """Connect every gateway (each publishes a retained `online`). Done before the
        pipeline subscribes, so it reads `online` rather than the last run's `offline`."""
        from simulators.publish import _Gateway

        for ent, gw, _site in self.sc.gateways():
            g = _Gateway(self.host, self.port, ent, gw, self.passwords(ent, gw))
            try:
                g.connect()
            except OSError as exc:   # ConnectionError included: refused, not authorised
                self.close()
                raise DemoError(
                    f"gateway {g.username} cannot connect to the MQTT broker "
                    f"{self.host}:{self.port}: {exc} (HW_MQTT__HOST/PORT pick the broker; one "
                    "with passwords needs the fleet's gateways and --gateway-password)") from exc
            self.gateways[g.username] = g

    def close(self) -> None:
        """Clean disconnect of every gateway, each after a retained `offline`."""
        for g in self.gateways.values():
            with contextlib.suppress(Exception):
                g.close()

    def run(self) -> None:
        """Play loops until `stop`, then close the gateways. An error ends up in
        `self.error`."""
        try:
            if self.warm_from < self.begin:
                plan, _ = self.window(self.warm_from, self.begin, quiet=True)
                if self.on_loop is not None:
                    self.on_loop(LoopInfo(self.warm_from, self.begin, self.warm_from, 0.0, [],
                                          warmup=True))
                if not self._play(plan):
                    return
            k = int((self.begin - self.ANCHOR) // self.loop_s)
            played_from = self.begin
            while not self.stop.is_set():
                info, plan = self.plan(k, played_from)
                if self.on_loop is not None:
                    self.on_loop(info)
                if not self._play(plan):
                    break
                self.stats.loops += 1
                k += 1
                played_from = info.end
        except BaseException as exc:  # reported by the caller, which stops the demo
            self.error = exc
        finally:
            self.close()

    def _play(self, plan: list[tuple]) -> bool:
        for fleet_t, _seq, user, m in plan:
            delay = self.due(fleet_t) - time.time()
            if delay > 0 and self.stop.wait(delay):
                return False
            if self.stop.is_set():
                return False
            g = self.gateways[user]
            if m.action == "drop":
                g.drop_link()
                self.stats.drops += 1
            elif m.action == "reconnect":
                g.connect()
            elif g.client is not None:
                g.publish(m.payload)
                self.stats.messages += 1
                self.stats.readings += m.readings
        return True


# ---------------------------------------------------------------------------- printing


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%H:%M:%S")


def _cause_titles() -> dict[tuple[str, str], tuple[str, str]]:
    from rules.packs import load_packs

    return {(kind, c.name): (c.title_en, c.title_zh)
            for kind, pack in load_packs().items() for c in pack.causes}


class Watcher:
    """Polls the warnings table and prints a line when one is raised, reactivated, goes up
    a level or clears."""

    def __init__(self, dsn: str, console: Console, started: float) -> None:
        self.dsn, self.console, self.started = dsn, console, started
        self.titles = _cause_titles()
        self.seen: dict[int, tuple[int, int, bool]] = {}
        self.first_id: int | None = None
        self.raised = 0
        self.reactivated = 0
        self.first_warning_s: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        conn = None
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(
                        self.dsn, autocommit=True, application_name="hw-demo")
                await self.poll(conn)
            except psycopg.Error as exc:
                log.warning("warnings poll failed", error=str(exc).strip().splitlines()[0])
                if conn is not None:
                    await conn.close()
                conn = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self.poll(conn)
            await conn.close()

    async def poll(self, conn: psycopg.AsyncConnection) -> None:
        if self.first_id is None:
            cur = await conn.execute("SELECT coalesce(max(id), 0) FROM warnings")
            self.first_id = (await cur.fetchone())[0]
        cur = await conn.execute(
            "SELECT w.id, w.cause, w.level, w.count, w.active, extract(epoch FROM w.raised_at), "
            "st.code, st.name, st.kind::text, e.name FROM warnings w "
            "JOIN sites st ON st.id = w.site_id JOIN enterprises e ON e.id = st.enterprise_id "
            "WHERE w.closed_at IS NULL OR w.id > %s ORDER BY w.id", (self.first_id,))
        for wid, cause, level, count, active, raised_at, site, site_name, kind, ent in await cur.fetchall():
            before = self.seen.get(wid)
            self.seen[wid] = (level, count, active)
            if before is None and wid <= self.first_id:
                continue                      # open before the demo started: not news
            if before is None:
                what = "raised"
                self.raised += 1
                if self.first_warning_s is None:
                    self.first_warning_s = float(raised_at) - self.started
            elif count > before[1]:
                what = "reactivated"
                self.reactivated += 1
            elif level > before[0]:
                what = "level up"
            elif before[2] and not active:
                what = "cleared"
            else:
                continue
            name, colour = LEVELS.get(level, (str(level), "white"))
            en, zh = self.titles.get((kind, cause), (cause, ""))
            extra = (f"  [dim](first warning, {self.first_warning_s:.1f} s after start)[/dim]"
                     if what == "raised" and self.raised == 1 else "")
            self.console.print(
                f"{_clock(time.time())}  warning #{wid:<4} {what:<11} [{colour}]{name:<6}[/{colour}] "
                f"{escape(en)} {escape(zh)} · {escape(site)} {escape(site_name)} "
                f"({escape(ent)}){extra}", highlight=False)


# ---------------------------------------------------------------------------- the command


@dataclass
class Options:
    serve: bool = True
    speed: float | None = None
    port: int | None = None
    scenario: str | None = None
    user_password: str = DEFAULT_PASSWORD
    gateway_password: str | None = None


def _console_url(settings: Settings) -> str:
    host = settings.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{settings.http.port}/"


def _check_port(settings: Settings) -> None:
    with socket.socket(socket.AF_INET6 if ":" in settings.http.host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((settings.http.host, settings.http.port))
        except OSError as exc:
            raise DemoError(f"HTTP port {settings.http.host}:{settings.http.port} is not free "
                            f"({exc.strerror}): is another hazardwatch serving? Give --port.") from None


def setup(settings: Settings, sc: Scenario, opts: Options, console: Console) -> None:
    """Migrate, import the fleet's registry, add the demo users; print what was done."""
    from hazardwatch.db import database_name, ensure_database
    from hazardwatch.migrate import MigrationError, migrate
    from hazardwatch.registry import RegistryError, import_file

    dsn = settings.dsn()
    created = ensure_database(dsn)
    try:
        result = migrate(dsn, timescale=settings.storage.timescale,
                         retention_days=settings.storage.retention_days,
                         compress_after_days=settings.storage.compress_after_days)
    except MigrationError as exc:
        raise DemoError(str(exc)) from exc
    state = (f"{len(result.applied)} migration(s) applied" if result.applied else "schema up to date")
    console.print(f"  database  {database_name(dsn)}{' (created)' if created else ''}: {state}, "
                  f"{'TimescaleDB' if result.mode == 'timescale' else 'plain PostgreSQL'}",
                  highlight=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "registry.yaml"
        path.write_text(sc.registry_yaml(), encoding="utf-8")
        try:
            summary = import_file(dsn, path)
        except RegistryError as exc:
            raise DemoError("demo registry: " + "; ".join(exc.errors)) from exc
    kinds = {}
    for s in sc.sites:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    console.print(f"  registry  fleet {sc.name}: {len(sc.enterprises)} enterprises, "
                  f"{len(sc.sites)} sites ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
                  f"{len(sc.gateways())} gateways, {sum(len(s.sensors) for s in sc.sites)} sensors "
                  f"[dim]({summary.describe()})[/dim]", highlight=False)
    rows = ensure_users(dsn, demo_users(sc), opts.user_password)
    for row, new in rows:
        scope = {"officer": f"region {row.region}", "enterprise": f"enterprise {row.enterprise}"}
        console.print(f"  user      {row.username:<8} {row.role:<10} "
                      f"{scope.get(row.role, 'everything'):<30} {escape(row.display_name or '')}  "
                      + ("[green]added[/green]" if new else "[dim]exists: kept as it was[/dim]"),
                      highlight=False)
    if any(new for _, new in rows):
        console.print(f"  password  {escape(opts.user_password)}  (for the users added now; "
                      "HW_DEMO_PASSWORD sets it)", highlight=False)
    else:
        console.print("  password  unchanged (the users existed already)", highlight=False)
    url = _console_url(settings)
    console.print(f"  console   {url}  (API docs: {url}docs)"
                  + ("" if opts.serve else "  [dim]served elsewhere (--no-serve)[/dim]"),
                  highlight=False)


async def _wait_ready(url: str, serve_task: asyncio.Task, stopping: asyncio.Event) -> bool:
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline and not stopping.is_set() and not serve_task.done():
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url + "readyz")).status_code == 200:
                    return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.2)
    return False


async def _run(settings: Settings, fleet: Fleet, opts: Options, console: Console,
               started: float) -> int:
    import signal

    from hazardwatch.app import serve

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    pipeline_stop = asyncio.Event()
    await asyncio.to_thread(fleet.connect)
    serve_task = None
    if opts.serve:
        serve_task = asyncio.create_task(serve(settings, pipeline_stop), name="hw-serve")
        ready = await _wait_ready(_console_url(settings), serve_task, stopping)
        if not ready and not serve_task.done() and not stopping.is_set():
            console.print(f"  [yellow]the pipeline is not ready after {READY_TIMEOUT_S:g} s "
                              "(MQTT or database); starting the fleet anyway[/yellow]")
    watcher = Watcher(settings.dsn(), console, started)
    watch_stop = asyncio.Event()
    watch_task = asyncio.create_task(watcher.run(watch_stop), name="hw-demo-watch")

    def on_loop(info: LoopInfo) -> None:
        if info.warmup:
            loop.call_soon_threadsafe(lambda: console.print(
                f"{_clock(time.time())}  history {_clock(info.start)}–{_clock(info.end)}: normal "
                "operation, sent at once (the rules learn each sensor's baseline)",
                highlight=False))
            return
        span = info.end - info.played_from
        pace = (f"at {span / max(info.wall_s, 1e-3):.0f}× (~{info.wall_s:.0f} s)"
                if info.wall_s < 0.9 * span else "in real time")
        part = "" if info.played_from <= info.start else f", from {_clock(info.played_from)}"
        incidents = ", ".join(f"{site} {kind} {_clock(at)}" for site, kind, at in info.incidents)
        loop.call_soon_threadsafe(lambda: console.print(
            f"{_clock(time.time())}  loop {_clock(info.start)}–{_clock(info.end)}{part} {pace}; "
            f"incidents: {incidents or 'none'}", highlight=False))

    fleet.on_loop = on_loop
    fleet_thread = threading.Thread(target=fleet.run, name="hw-demo-fleet", daemon=True)
    if not stopping.is_set() and not (serve_task and serve_task.done()):
        fleet_thread.start()
        console.print(f"{_clock(time.time())}  fleet: {len(fleet.sc.gateways())} gateways on "
                      f"{settings.mqtt.host}:{settings.mqtt.port}; Ctrl-C stops", highlight=False)
    waits = [asyncio.create_task(stopping.wait())]
    if fleet_thread.is_alive():
        waits.append(asyncio.create_task(asyncio.to_thread(fleet_thread.join)))
    if serve_task is not None:
        waits.append(serve_task)
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)

    status = 0
    fleet.stop.set()
    if fleet_thread.is_alive():
        await asyncio.to_thread(fleet_thread.join)
    elif fleet_thread.ident is None:          # stopped before the fleet started playing
        await asyncio.to_thread(fleet.close)
    if fleet.error is not None:
        status = 1
        msg = str(fleet.error) if isinstance(fleet.error, DemoError) else repr(fleet.error)
        console.print(f"[red]fleet stopped: {escape(msg)}[/red]")
    if serve_task is not None:
        if not serve_task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(serve_task), OFFLINE_GRACE_S)
        pipeline_stop.set()
        try:
            await serve_task
        except Exception as exc:  # the pipeline failed on its own: say so, exit 1
            status = 1
            console.print(f"[red]pipeline stopped: {escape(repr(exc))}[/red]")
        else:
            if not stopping.is_set() and fleet.error is None:
                status = 1
                console.print("[red]pipeline stopped by itself (see the log above)[/red]")
    watch_stop.set()
    await watch_task
    for t in waits:
        t.cancel()
    st = fleet.stats
    first = ("" if watcher.first_warning_s is None
             else f" (first {watcher.first_warning_s:.1f} s after start)")
    console.print(f"{_clock(time.time())}  stopped: {st.loops} loop(s) done, {st.messages:,} messages "
                  f"with {st.readings:,} readings published; warnings: {watcher.raised} raised"
                  f"{first}, {watcher.reactivated} reactivated; the fleet's gateways are offline",
                  highlight=False)
    return status


def run(settings: Settings, opts: Options) -> int:
    """The `hazardwatch demo` command; returns the exit status."""
    import signal

    from simulators.publish import password_lookup

    started = time.time()
    console = Console(highlight=False, soft_wrap=True)
    if opts.port is not None:
        settings = settings.model_copy(update={
            "http": settings.http.model_copy(update={"port": opts.port})})
    sc = load_loop(opts.scenario)
    # Until the event loop owns the signals, SIGTERM interrupts like Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if opts.serve:
            _check_port(settings)
        console.print(f"hazardwatch demo: {escape(sc.description or sc.name)}", highlight=False)
        setup(settings, sc, opts, console)
        fleet = Fleet(sc, host=settings.mqtt.host, port=settings.mqtt.port,
                      passwords=password_lookup(None, opts.gateway_password or opts.user_password),
                      speed=opts.speed, not_before=_after(newest_fleet_reading(settings.dsn(), sc)))
    except KeyboardInterrupt:
        console.print("stopped before the demo started")
        return 0
    try:
        return asyncio.run(_run(settings, fleet, opts, console, started))
    except KeyboardInterrupt:   # a signal in the instant before the loop took them over
        fleet.stop.set()
        return 0


def _after(epoch: float | None) -> float | None:
    return None if epoch is None else epoch + 1.0
