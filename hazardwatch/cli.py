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


@main.command()
@click.pass_obj
def serve(settings: Settings) -> None:
    """Run the pipeline: MQTT collectors, storage, rules, alerting; HTTP API and console."""
    from hazardwatch.app import run

    run(settings)


if __name__ == "__main__":
    main()
