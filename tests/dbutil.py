"""Throw-away databases on the server named by HW_DATABASE_URL (tests never share one)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg

from hazardwatch.db import with_database
from hazardwatch.migrate import migrate

SERVER = os.environ.get("HW_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def admin_dsn() -> str:
    return with_database(SERVER, "postgres")


def timescale_available() -> bool:
    with psycopg.connect(admin_dsn()) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
        return row is not None


@contextlib.contextmanager
def fresh_database(prefix: str = "hw_test", *, mode: str = "auto", migrated: bool = True) -> Iterator[str]:
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(SERVER, name)
    try:
        if migrated:
            migrate(dsn, timescale=mode)
        yield dsn
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
