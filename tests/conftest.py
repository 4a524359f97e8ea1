"""Shared fixtures: a fresh migrated database per test session on the real PostgreSQL."""

from __future__ import annotations

import pytest
from brokers import fresh_broker, project_broker  # noqa: F401  (fixtures)
from dbutil import SERVER, fresh_database, timescale_available

_TIMESCALE = None


def _has_timescale() -> bool:
    global _TIMESCALE
    if _TIMESCALE is None:
        _TIMESCALE = timescale_available()
    return _TIMESCALE


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("timescale")]
    if marked and not _has_timescale():
        skip = pytest.mark.skip(
            reason=f"TimescaleDB extension not available on {SERVER.split('@')[-1]}; "
            "these tests run wherever HW_DATABASE_URL points at a server that has it"
        )
        for item in marked:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def db_dsn():
    """A migrated database for the session (TimescaleDB mode when the server has it)."""
    with fresh_database("hw_test") as dsn:
        yield dsn
