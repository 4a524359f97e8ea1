"""Database connections. psycopg 3 throughout: binary COPY for the write path."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg


async def connect(dsn: str, *, autocommit: bool = False) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(
        dsn, autocommit=autocommit, application_name="hazardwatch"
    )


def connect_sync(dsn: str, *, autocommit: bool = False) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=autocommit, application_name="hazardwatch")


def with_database(dsn: str, dbname: str) -> str:
    """The same server, another database (for creating the target database or tests)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/") or "postgres"


def ensure_database(dsn: str) -> bool:
    """Create the target database when missing (returns True if it was created)."""
    name = database_name(dsn)
    with connect_sync(with_database(dsn, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        return True
