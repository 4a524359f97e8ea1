"""`hazardwatch partitions layout`: show or reset the recorded collector layout.

The layout (migration 0008, ingest/partitions.py claim_layout) is what the broker's
persistent collector sessions were made for; a worker of another layout refuses to start,
because the old sessions would keep queueing readings that nobody reads. Resetting is the
last step of a layout change, after the old layout's workers drained their queues.
"""

from __future__ import annotations

import click

from hazardwatch.settings import Settings


@click.group("partitions")
def partitions_group() -> None:
    """Collector partitions and workers (docs/architecture.md "Scaling")."""


@partitions_group.command("layout")
@click.option("--reset", is_flag=True,
              help="forget the recorded layout (only after the old workers drained the "
                   "broker's queues and were stopped); the next worker records its own")
@click.pass_obj
def layout(settings: Settings, reset: bool) -> None:
    """Show the layout the collector sessions were made for, or reset it."""
    import psycopg  # lazily: the CLI starts without the database stack

    from ingest.partitions import Layout

    try:
        with psycopg.connect(settings.dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT partitions, workers, client_id, recorded_at "
                               "FROM ingest_layout").fetchone()
            if row is None:
                click.echo("no layout recorded: the next collector worker records its own")
                return
            recorded = Layout(*row[:3])
            if reset:
                live = conn.execute("SELECT count(*) FROM ingest_partitions "
                                    "WHERE expires_at > now()").fetchone()[0]
                if live:
                    raise click.ClickException(
                        f"{live} partition lease(s) are held by running workers: stop every "
                        "collector worker first (hazardwatch serve)")
                conn.execute("DELETE FROM ingest_layout")
                click.echo(f"forgot {recorded.describe()}; start the new layout now")
            else:
                click.echo(f"{recorded.describe()}, recorded {row[3]:%Y-%m-%d %H:%M:%S%z}")
    except psycopg.errors.UndefinedTable as exc:
        raise click.ClickException("the database is not migrated: run hazardwatch migrate") from exc
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"database: {exc}") from exc
