"""The `hazardwatch` command. Heavy imports stay inside each command."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from hazardwatch import logs
from hazardwatch.settings import Settings, masked


class _Group(click.Group):
    """Turns an unreachable database into one plain sentence instead of a traceback."""

    def invoke(self, ctx: click.Context):
        import psycopg

        try:
            return super().invoke(ctx)
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise click.ClickException(
                f"database unavailable: {first} (check HW_DATABASE_URL and that PostgreSQL runs)"
            ) from exc


@click.group(cls=_Group)
@click.pass_context
def main(ctx: click.Context) -> None:
    """hazardwatch: IoT risk monitoring and early warning (安全生产风险监测预警)."""
    try:
        settings = Settings()
    except Exception as exc:  # a bad HW_* variable or TOML file: say which, stop
        raise click.ClickException(f"configuration: {exc}") from exc
    logs.setup(settings.log_level, settings.log_format)
    ctx.obj = settings


@main.command()
@click.pass_obj
def config(settings: Settings) -> None:
    """Print the effective settings (secrets masked)."""
    click.echo(orjson.dumps(masked(settings), option=orjson.OPT_INDENT_2).decode())


@main.command()
@click.pass_obj
def migrate(settings: Settings) -> None:
    """Create or upgrade the database schema (idempotent)."""
    from hazardwatch.db import database_name, ensure_database
    from hazardwatch.migrate import MigrationError
    from hazardwatch.migrate import migrate as run

    if ensure_database(settings.dsn()):
        click.echo(f"created database {database_name(settings.dsn())}")
    try:
        result = run(
            settings.dsn(),
            timescale=settings.storage.timescale,
            retention_days=settings.storage.retention_days,
            compress_after_days=settings.storage.compress_after_days,
        )
    except MigrationError as exc:
        raise click.ClickException(str(exc)) from exc
    if result.mode == "timescale":
        click.echo(f"mode: timescale (TimescaleDB {result.timescale_version}: hypertable, "
                   "compression, retention, continuous aggregates)")
    else:
        click.echo("mode: plain (PostgreSQL without TimescaleDB: readings_1m/readings_1h are views)")
    for name in result.applied:
        click.echo(f"applied {name}")
    for line in result.policies:
        click.echo(f"policy {line}")
    if not result.applied and not result.policies:
        click.echo("up to date")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the checks as JSON")
@click.option("--max-skew", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="seconds of clock difference to the database server that count as a fault")
@click.pass_obj
def doctor(settings: Settings, as_json: bool, max_skew: float) -> None:
    """Check database, migrations, TimescaleDB, clocks, broker, registry, outbox; exit 1 on FAIL."""
    from hazardwatch.doctor import run

    report = run(settings, skew_limit_s=max_skew)
    if as_json:
        click.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        colours = {"OK": "green", "WARN": "yellow", "FAIL": "red", "SKIP": "bright_black"}
        for check in report.checks:
            click.echo(click.style(check.line(), fg=colours[check.status]))
        click.echo(", ".join(f"{n} {s}" for s, n in report.counts().items() if n))
    sys.exit(0 if report.ok else 1)


@main.group()
def registry() -> None:
    """Regions, enterprises, sites, gateways and sensors."""


@registry.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def registry_import(settings: Settings, file: Path) -> None:
    """Upsert the registry from a YAML file; a wrong file changes nothing."""
    from hazardwatch.registry import RegistryError, import_file

    try:
        summary = import_file(settings.dsn(), file)
    except RegistryError as exc:
        click.echo(f"{file}: {len(exc.errors)} error(s), nothing imported", err=True)
        for err in exc.errors:
            click.echo(f"  {err}", err=True)
        sys.exit(1)
    click.echo(summary.describe())


@registry.command("pending")
@click.option("--enterprise", help="only this enterprise (统一社会信用代码)")
@click.pass_obj
def registry_pending(settings: Settings, enterprise: str | None) -> None:
    """List tags and gateways that send data but are not registered."""
    from hazardwatch.registry import pending

    rows = pending(settings.dsn(), enterprise)
    if not rows:
        click.echo("no unregistered tags")
        return
    click.echo(f"{'enterprise':<20} {'gateway':<16} {'tag':<24} {'count':>8}  last seen")
    for r in rows:
        click.echo(f"{r.enterprise_code:<20} {r.gateway_code:<16} {r.tag:<24} {r.count:>8}  "
                   f"{r.last_seen.isoformat(timespec='seconds')}")


@main.group("rules")
def rules_group() -> None:
    """Rule packs (rules/packs/*.yaml) and the sensors they apply to."""


_PACKS_OPTION = click.option(
    "--packs", "packs_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="directory of rule packs (default: the packs installed with hazardwatch)")
_REGISTRY_OPTION = click.option(
    "--registry", "registry_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="registry YAML file (default: the registry in the database)")


def _load_packs(packs_dir: Path | None) -> dict:
    from rules.packs import PackError, load_packs

    try:
        return load_packs(packs_dir)
    except PackError as exc:
        for err in exc.errors:
            click.echo(err)
        click.echo(f"rule packs: {len(exc.errors)} error(s)")
        sys.exit(1)


def _registry_sensors(settings: Settings, registry_file: Path | None,
                      tag: str | None = None) -> tuple[list, str]:
    """(sensors, source name); a wrong registry file prints its errors and exits 1."""
    from hazardwatch.registry import RegistryError
    from hazardwatch.rulecheck import sensors_from_database, sensors_from_file

    if registry_file is None:
        return sensors_from_database(settings.dsn(), tag), "database"
    try:
        return sensors_from_file(registry_file), str(registry_file)
    except RegistryError as exc:
        for err in exc.errors:
            click.echo(f"{registry_file}: {err}")
        click.echo(f"{registry_file}: {len(exc.errors)} error(s) in the registry file")
        sys.exit(1)


@rules_group.command("check")
@_PACKS_OPTION
@_REGISTRY_OPTION
@click.pass_obj
def rules_check(settings: Settings, packs_dir: Path | None, registry_file: Path | None) -> None:
    """Validate the rule packs and every registry sensor's rules against them."""
    from hazardwatch.rulecheck import check

    packs = _load_packs(packs_dir)
    sensors, source = _registry_sensors(settings, registry_file)
    report = check(packs, sensors, source)
    for line in report.errors + report.warnings:
        click.echo(line)
    click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


@rules_group.command("explain")
@click.argument("tag")
@click.option("--enterprise", help="the enterprise's code (统一社会信用代码) when the tag is not unique")
@_REGISTRY_OPTION
@_PACKS_OPTION
@click.pass_obj
def rules_explain(settings: Settings, tag: str, enterprise: str | None,
                  registry_file: Path | None, packs_dir: Path | None) -> None:
    """Print one sensor's effective rules, where each value came from, and what it feeds."""
    from hazardwatch.rulecheck import ExplainError, all_tags_from_database, explain, pick

    packs = _load_packs(packs_dir)
    sensors, source = _registry_sensors(settings, registry_file, tag)
    if registry_file is None and not sensors:
        known = all_tags_from_database(settings.dsn())
    else:
        known = [s.spec.tag for s in sensors]
    try:
        sensor = pick(sensors, tag, enterprise, source, known)
    except ExplainError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in explain(packs, sensor, source):
        click.echo(line)


def _gateway_commands() -> None:
    from hazardwatch.gateways import gateway_group  # stdlib + click only

    main.add_command(gateway_group)


_gateway_commands()


def _partitions_commands() -> None:
    from hazardwatch.partitions_cmd import partitions_group  # click only at import

    main.add_command(partitions_group)


_partitions_commands()


@main.group("user")
def user_group() -> None:
    """People who sign in to the API and console (officers, enterprises, admins)."""


@user_group.command("add")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice(["officer", "enterprise", "admin"]),
              help="officer: a region and its children; enterprise: its own; admin: all")
@click.option("--region", help="officer: the region code they supervise")
@click.option("--enterprise", help="enterprise user: the enterprise's code (统一社会信用代码)")
@click.option("--name", "display_name", help="the name shown in the console")
@click.option("--password-stdin", is_flag=True,
              help="read the password from standard input (first line) instead of prompting")
@click.pass_obj
def user_add(settings: Settings, username: str, role: str, region: str | None,
             enterprise: str | None, display_name: str | None, password_stdin: bool) -> None:
    """Add a user; the password is hashed (argon2id), never stored or shown."""
    from alerting.api.users import UserError, add_user, check_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        check_password(password)
        user_id = add_user(settings.dsn(), username, password, role, region=region,
                           enterprise=enterprise, display_name=display_name)
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    scope = {"officer": f" of region {region}", "enterprise": f" of enterprise {enterprise}"}
    click.echo(f"added user {username} (id {user_id}): {role}{scope.get(role, '')}")


@user_group.command("list")
@click.pass_obj
def user_list(settings: Settings) -> None:
    """List users, their role and scope, and how many live tokens they hold."""
    from alerting.api.users import list_users

    rows = list_users(settings.dsn())
    if not rows:
        click.echo("no users (add one with: hazardwatch user add NAME --role admin)")
        return
    click.echo(f"{'username':<24} {'role':<10} {'scope':<20} {'tokens':>6}  status  name")
    for u in rows:
        scope = u.region or u.enterprise or "all"
        status = "disabled" if u.disabled else "active"
        click.echo(f"{u.username:<24} {u.role:<10} {scope:<20} {u.tokens:>6}  {status:<7} "
                   f"{u.display_name or ''}")


@user_group.command("disable")
@click.argument("username")
@click.pass_obj
def user_disable(settings: Settings, username: str) -> None:
    """Disable a user: they cannot sign in, and their tokens stop working at once."""
    from alerting.api.users import UserError, disable_user

    try:
        revoked = disable_user(settings.dsn(), username)
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"disabled user {username} ({revoked} token(s) revoked)")


def _speed(text: str) -> float:
    if text.strip().lower() in ("max", "0"):
        return 0.0
    try:
        value = float(text.rstrip("xX×"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: a number (e.g. 100) or max", param_hint="--speed") from None
    if value < 0:
        raise click.BadParameter("must be ≥ 0 (0 or max: as fast as possible)", param_hint="--speed")
    return value


def _time_ms(text: str | None, option: str) -> int | None:
    from simulators.replay import parse_ts

    if text is None:
        return None
    try:
        return parse_ts(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


_PASSWORD_OPTION = click.option(
    "--password", envvar="HW_GATEWAY_PASSWORD", show_envvar=True,
    help="MQTT password of the gateways (one for all)")


@main.command()
@click.argument("source")
@click.option("--speed", default="1", show_default=True,
              help="N× real time: inter-arrival times divided by N; 0 or max = as fast as possible")
@click.option("--shift-to-now", is_flag=True, help="move the first reading to now (all keep their spacing)")
@click.option("--tag", "tags", multiple=True,
              help="one-series CSV: the tag of its values; long CSV or db: only these tags (repeatable)")
@click.option("--enterprise", help="publish as this enterprise (统一社会信用代码); db: only this enterprise")
@click.option("--gateway", help="publish everything as this gateway (default: each tag's gateway in the registry)")
@click.option("--from", "start", help="db: first instant (RFC 3339 or epoch ms), inclusive")
@click.option("--to", "end", help="db: last instant (RFC 3339 or epoch ms), exclusive")
@_PASSWORD_OPTION
@click.option("--credentials", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="file of username:password lines, one per gateway")
@click.pass_obj
def replay(settings: Settings, source: str, speed: str, shift_to_now: bool, tags: tuple[str, ...],
           enterprise: str | None, gateway: str | None, start: str | None, end: str | None,
           password: str | None, credentials: Path | None) -> None:
    """Replay a CSV or a stored time range over MQTT, as the gateways that measured it.

    SOURCE is a CSV with one series (timestamp,value; give its --tag), a CSV in long form
    (ts,tag,value), or db: for stored readings between --from and --to. Timestamps are
    epoch milliseconds or RFC 3339 with an offset. Bad rows are reported and skipped
    (exit status 1 after the good rows are replayed)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from simulators import replay as rp
    from simulators.mqttout import GatewayPublisher, PublishError

    factor = _speed(speed)
    if gateway and not enterprise:
        raise click.UsageError("--gateway needs --enterprise")
    try:
        if source.startswith("db:"):
            t_from, t_to = _time_ms(start, "--from"), _time_ms(end, "--to")
            if t_from is None or t_to is None:
                raise click.UsageError("db: needs --from and --to")
            if t_to <= t_from:
                raise click.UsageError("--to must be after --from")
            src = rp.read_db(source[3:] or settings.dsn(), t_from, t_to, tags, enterprise)
        else:
            if start or end:
                raise click.UsageError("--from/--to apply to db: sources only")
            src = rp.read_csv(Path(source), tags)
        for line in rp.iter_lines(src.errors, source):
            click.echo(line, err=True)
        if gateway:
            def where(r):
                return (enterprise, gateway)
        else:
            unmapped = {r.tag for r in src.readings if r.gateway is None}
            mapping = rp.registry_gateways(settings.dsn(), unmapped, enterprise) if unmapped else {}

            def where(r):
                return (r.enterprise, r.gateway) if r.gateway else mapping[r.tag]
        groups = rp.schedule(src.readings, where)
        creds = rp.read_credentials(credentials) if credentials else {}
    except rp.ReplayError as exc:
        raise click.ClickException(str(exc)) from exc

    def connect(ent: str, gw: str) -> GatewayPublisher:
        user = f"{ent}/{gw}"
        secret = creds.get(user, password)
        if secret is None:
            raise click.ClickException(f"no password for gateway {user}: give --password "
                                       "(or HW_GATEWAY_PASSWORD) or --credentials")
        return GatewayPublisher(settings.mqtt.host, settings.mqtt.port, ent, gw, secret,
                                client_id=f"{user}-replay", tls_ca=settings.mqtt.tls_ca).connect()

    total = sum(len(g.values) for g in groups)
    console = Console(stderr=True)
    with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("readings"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("replay", total=total)
        try:
            summary = rp.replay(groups, connect, speed=factor, shift_to_now=shift_to_now,
                                progress=lambda n: bar.advance(task, n))
        except PublishError as exc:
            raise click.ClickException(str(exc)) from exc
    eff = summary.effective_speed
    click.echo(f"replayed {summary.readings:,} readings in {summary.messages:,} messages from "
               f"{summary.gateways} gateway(s) in {summary.duration_s:.2f} s; source span "
               f"{summary.span_ms / 1000:.1f} s, effective speed "
               + (f"{eff:,.1f}x" if eff is not None else "n/a"))
    if src.errors:
        click.echo(f"{len(src.errors)} bad row(s) skipped (listed above)", err=True)
        sys.exit(1)


@main.command()
@click.option("--rate", type=click.FloatRange(min=1), default=10_000, show_default=True,
              help="target readings/s, all processes together")
@click.option("--duration", type=click.FloatRange(min=0.1), default=10, show_default=True, help="seconds")
@click.option("--gateways", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--sensors", type=click.IntRange(min=1), default=50, show_default=True,
              help="sensors per gateway")
@click.option("--processes", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="picks the synthetic enterprise codes (separate fleets per seed)")
@click.option("--registry-out", type=click.Path(dir_okay=False, path_type=Path),
              help="write the fleet's registry YAML (for hazardwatch registry import)")
@click.option("--credentials-out", type=click.Path(dir_okay=False, path_type=Path),
              help="write username:password lines (mosquitto_passwd -U input)")
@click.option("--write-only", is_flag=True, help="write the files and exit without publishing")
@_PASSWORD_OPTION
@click.pass_obj
def loadgen(settings: Settings, rate: float, duration: float, gateways: int, sensors: int,
            processes: int, seed: int, registry_out: Path | None, credentials_out: Path | None,
            write_only: bool, password: str | None) -> None:
    """Publish a synthetic fleet at a target rate from several processes; report the
    broker-acknowledged readings/s per process and in total."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from simulators.loadgen import Fleet, LoadGen

    fleet = Fleet.synthetic(gateways, sensors, seed=seed)
    if registry_out:
        fleet.write_registry(registry_out)
        click.echo(f"wrote {registry_out}: {gateways} gateways x {sensors} sensors")
    if credentials_out:
        if password is None:
            raise click.UsageError("--credentials-out needs --password (or HW_GATEWAY_PASSWORD)")
        fleet.write_credentials(credentials_out, password)
        click.echo(f"wrote {credentials_out}")
    if write_only:
        return
    if password is None:
        raise click.UsageError("give the gateways' --password (or HW_GATEWAY_PASSWORD)")
    gen = LoadGen(fleet, settings.mqtt.host, settings.mqtt.port, password, rate=rate,
                  duration=duration, processes=processes)
    try:
        target = int(rate * duration)
        with Progress(TextColumn("loadgen"), BarColumn(), MofNCompleteColumn(), TextColumn("acked"),
                      TimeElapsedColumn(), console=Console(stderr=True)) as bar:
            task = bar.add_task("loadgen", total=target)
            while gen.running:
                bar.update(task, completed=min(gen.acked.value, target))
                time.sleep(0.2)
            result = gen.wait(timeout=30)
            bar.update(task, completed=min(result.acked, target))
    finally:
        gen.stop()
    click.echo(f"{'process':>7} {'gateways':>8} {'sent':>12} {'acked':>12} {'seconds':>8} {'acked/s':>12}")
    for p in result.processes:
        click.echo(f"{p.index:>7} {p.gateways:>8} {p.sent:>12,} {p.acked:>12,} {p.elapsed_s:>8.2f} "
                   f"{p.rate:>12,.0f}")
    click.echo(f"{'total':>7} {gateways:>8} {result.sent:>12,} {result.acked:>12,} "
               f"{result.elapsed_s:>8.2f} {result.total_rate:>12,.0f}")
    click.echo(f"target {rate:,.0f} readings/s, achieved {result.total_rate:,.0f} readings/s "
               f"({result.total_rate / rate:.0%}), broker-acknowledged")
    for err in result.errors:
        click.echo(err, err=True)
    if result.errors:
        sys.exit(1)


@main.command()
@click.argument("scenario")
@click.option("--speed", type=float, help="N× real time (default: the scenario's speed)")
@click.option("--registry-only", is_flag=True, help="import the fleet's registry and stop")
@click.option("--truth", "truth_file", type=click.Path(dir_okay=False, path_type=Path),
              help="write the ground truth JSON here (default: <scenario>.truth.json)")
@click.option("--registry-out", type=click.Path(dir_okay=False, path_type=Path),
              help="also write the fleet's registry YAML here")
@click.option("--passwords", "passwords_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML/JSON mapping of MQTT username (<code>/<gateway>) to password")
@click.option("--password", envvar="HW_SIM_GATEWAY_PASSWORD",
              help="one MQTT password for every gateway (env HW_SIM_GATEWAY_PASSWORD)")
@click.pass_obj
def simulate(settings: Settings, scenario: str, speed: float | None, registry_only: bool,
             truth_file: Path | None, registry_out: Path | None, passwords_file: Path | None,
             password: str | None) -> None:
    """Publish a scenario (scenarios/NAME.yaml or a file) live over MQTT as its gateways."""
    import signal
    import tempfile
    import threading
    import time

    import yaml
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from hazardwatch.registry import RegistryError, import_file
    from simulators import publish as pub
    from simulators.scenario import ScenarioError, load, shift_base

    try:
        sc = load(scenario)
    except (ScenarioError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    console = Console()
    speed = float(speed or sc.speed)
    with tempfile.TemporaryDirectory() as tmp:
        reg_path = registry_out or Path(tmp) / "registry.yaml"
        reg_path.write_text(sc.registry_yaml(), encoding="utf-8")
        try:
            summary = import_file(settings.dsn(), reg_path)
        except RegistryError as exc:
            raise click.ClickException("registry: " + "; ".join(exc.errors)) from exc
    console.print(f"registry: {summary.describe()}")
    if registry_only:
        return
    base = shift_base(sc.duration, speed, time.time())
    truth_path = truth_file or Path(f"{sc.name}.truth.json")
    truth_path.write_bytes(sc.truth_json(base))
    console.print(f"ground truth: {truth_path} ({len(sc.truth())} entries)")
    mapping = yaml.safe_load(passwords_file.read_text()) if passwords_file else None
    lookup = pub.password_lookup(mapping, password)

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    last = [0.0]
    try:
        with Progress(TextColumn(f"{sc.name} ×{speed:g}"), BarColumn(),
                      TextColumn("{task.fields[msgs]} msgs {task.fields[rd]} readings"),
                      TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("publish", total=sc.duration, msgs=0, rd=0)

            def progress(done: float, s: pub.Summary) -> None:
                now = time.monotonic()
                if now - last[0] > 0.1 or done >= sc.duration:
                    last[0] = now
                    bar.update(task, completed=done, msgs=s.messages, rd=s.readings)

            try:
                result = pub.publish(sc, host=settings.mqtt.host, port=settings.mqtt.port,
                                     passwords=lookup, speed=speed, stop=stop, base_epoch=base,
                                     progress=progress)
            except (ConnectionError, KeyError, OSError) as exc:
                raise click.ClickException(str(exc)) from exc
    finally:
        signal.signal(signal.SIGINT, previous)
    table = Table(title=f"{sc.name}: {'stopped' if result.stopped else 'done'}")
    for col in ("gateway", "messages", "readings", "malformed", "link drops"):
        table.add_column(col, justify="left" if col == "gateway" else "right")
    for user, st in result.gateways.items():
        table.add_row(user, str(st.messages), str(st.readings), str(st.malformed), str(st.drops))
    table.add_row("total", str(result.messages), str(result.readings), "", "")
    console.print(table)


@main.command()
@click.argument("scenario")
@click.option("--offline", is_flag=True,
              help="straight through the rule engine in event time (no broker, no database)")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path),
              help="also write the scores as JSON here ('-' for stdout)")
@click.option("--grace", default="30m", show_default=True,
              help="a warning raised up to this long after an incident's end still detects it")
@click.option("--chunk", default="60s", show_default=True,
              help="offline: feed the engine this much send time at once (rx = the chunk's end)")
@click.option("--batch-readings", type=int,
              help="offline: readings per gateway message (default: as `simulate` publishes)")
@click.option("--speed", type=click.FloatRange(min=1),
              help="live: N× real time (default: the scenario's speed)")
@click.option("--database", help="live: use this database (DSN) as is; default: a throwaway "
                                 "hw_eval_<scenario>_<pid> on HW_DATABASE_URL's server")
@click.option("--keep", is_flag=True, help="live: keep the throwaway database (its DSN is printed)")
@click.option("--passwords", "passwords_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="live: YAML/JSON mapping of MQTT username (<code>/<gateway>) to password")
@click.option("--password", envvar="HW_SIM_GATEWAY_PASSWORD",
              help="live: one MQTT password for every gateway (env HW_SIM_GATEWAY_PASSWORD); "
                   "none: username only (an anonymous broker)")
@click.pass_obj
def evaluate(settings: Settings, scenario: str, offline: bool, json_file: Path | None, grace: str,
             chunk: str, batch_readings: int | None, speed: float | None, database: str | None,
             keep: bool, passwords_file: Path | None, password: str | None) -> None:
    """Score a scenario's warnings against its ground truth: recall, precision, detection
    delay, level accuracy, false warnings per site-day and the most warnings raised in any
    10 minutes per desk (EEMUA 191 flood line: 10).

    Live by default: the scenario's gateways publish it over MQTT at N× speed into the real
    pipeline (collector, PostgreSQL, rule engine) and the stored warnings are scored.
    --offline feeds it straight through the rule engine, much faster than real time."""
    from hazardwatch.evaluation import run_command

    run_command(settings, scenario, offline=offline, json_file=json_file, grace=grace,
                chunk=chunk, batch_readings=batch_readings, speed=speed, database=database,
                keep=keep, passwords_file=passwords_file, password=password)


@main.command()
@click.option("--worker", type=click.IntRange(min=0),
              help="this collector worker's number, from 0 (default: HW_INGEST__WORKER)")
@click.option("--workers", type=click.IntRange(min=1),
              help="collector workers sharing the partitions (default: HW_INGEST__WORKERS)")
@click.pass_obj
def serve(settings: Settings, worker: int | None, workers: int | None) -> None:
    """Run the pipeline: MQTT collectors, storage, rules, alerting; HTTP API and console."""
    from hazardwatch.app import run
    from hazardwatch.settings import IngestSettings

    if worker is not None or workers is not None:
        slot = {k: v for k, v in (("worker", worker), ("workers", workers)) if v is not None}
        try:
            ingest = IngestSettings(**{**settings.ingest.model_dump(), **slot})
        except ValueError as exc:
            raise click.BadParameter(str(exc).splitlines()[-1].strip(),
                                     param_hint="--worker/--workers") from exc
        settings = settings.model_copy(update={"ingest": ingest})
    run(settings)


@main.command()
@click.option("--no-serve", is_flag=True, help="only the fleet: the pipeline runs elsewhere")
@click.option("--speed", type=click.FloatRange(min=1), help="the first loop's N× (default: the loop's)")
@click.option("--port", type=click.IntRange(1, 65535), help="HTTP port (default: HW_HTTP__PORT or 8080)")
@click.option("--scenario", help="loop this scenario instead (scenarios/NAME.yaml or a file)")
@click.option("--user-password", envvar="HW_DEMO_PASSWORD", show_envvar=True,
              default="hazardwatch-demo", show_default=True, help="password of the users it adds")
@click.option("--gateway-password", envvar="HW_SIM_GATEWAY_PASSWORD", show_envvar=True,
              help="MQTT password of the fleet's gateways (default: the user password)")
@click.pass_obj
def demo(settings: Settings, no_serve: bool, speed: float | None, port: int | None,
         scenario: str | None, user_password: str, gateway_password: str | None) -> None:
    """Migrate, import a demo fleet, add demo users, serve, and run the fleet with incidents
    on a loop (hazardwatch/demo.yaml): warnings arrive within a minute. Ctrl-C stops."""
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C while starting
    try:
        from hazardwatch.demo import DemoError, Options, run

        status = run(settings, Options(serve=not no_serve, speed=speed, port=port,
                                       scenario=scenario, user_password=user_password,
                                       gateway_password=gateway_password))
    except KeyboardInterrupt:
        status = 0      # stopped while starting: nothing runs yet
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(status)


if __name__ == "__main__":
    main()
