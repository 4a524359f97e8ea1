"""The write path against the real PostgreSQL: COPY fast path, conflict fallback, side effects."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import psycopg
import pytest

from ingest import store
from ingest.batch import PG_EPOCH_MS, Batch, Columns, Message
from ingest.dialects.native import NativeV1
from ingest.registry_cache import RegistryCache

ENT = "91370105MA3C00001X"


@pytest.fixture
async def conn(db_dsn):
    async with await psycopg.AsyncConnection.connect(db_dsn) as c:
        await c.execute("TRUNCATE readings, dead_letters, unregistered_tags")
        await c.commit()
        await store.prepare(c)
        yield c


def cols(sensor, ts_ms, values, quality=None, null=None) -> Columns:
    n = len(sensor)
    v = np.array([np.nan if x is None else x for x in values], dtype=np.float64)
    return Columns(
        np.array(sensor, dtype=np.int32),
        np.round((np.array(ts_ms, dtype=np.float64) - PG_EPOCH_MS) * 1000).astype(np.int64),
        v,
        np.array([x is None for x in values]) if null is None else np.array(null),
        np.array(quality or [0] * n, dtype=np.int16),
    )


T = 1_795_000_000_000.0


async def fetch(conn):
    cur = await conn.execute(
        "SELECT sensor_id, (extract(epoch FROM ts) * 1000)::float8, value, quality "
        "FROM readings ORDER BY sensor_id, ts")
    return await cur.fetchall()


async def test_binary_copy_round_trips_values_nulls_and_quality(conn):
    c = cols([1, 2, 3], [T, T + 1, T + 2.5], [1.25, None, -3e10], quality=[0, 2, 1])
    async with conn.transaction():
        result = await store.insert_readings(conn, c)
    assert (result.inserted, result.duplicates, result.slow_path) == (3, 0, False)
    assert await fetch(conn) == [(1, T, 1.25, 0), (2, T + 1, None, 2), (3, T + 2.5, -3e10, 1)]


async def test_conflicting_batch_raises_then_the_slow_path_stores_only_new_rows(conn):
    async with conn.transaction():
        await store.insert_readings(conn, cols([1, 1], [T, T + 1000], [1.0, 2.0]))
    batch = cols([1, 1, 2], [T, T + 2000, T], [9.0, 3.0, 5.0])
    with pytest.raises(store.Conflict, match="readings_pkey"):
        async with conn.transaction():
            await conn.execute("INSERT INTO regions VALUES ('999999', 'rolled back', NULL)")
            await store.insert_readings(conn, batch)
    # the whole attempt rolled back (no savepoint): nothing of it is left
    cur = await conn.execute("SELECT count(*) FROM regions WHERE code = '999999'")
    assert (await cur.fetchone())[0] == 0
    assert await fetch(conn) == [(1, T, 1.0, 0), (1, T + 1000, 2.0, 0)]
    async with conn.transaction():
        result = await store.insert_readings(conn, batch, expect_conflict=True)
    assert (result.inserted, result.duplicates, result.slow_path) == (2, 1, True)
    assert await fetch(conn) == [(1, T, 1.0, 0), (1, T + 1000, 2.0, 0), (1, T + 2000, 3.0, 0), (2, T, 5.0, 0)]
    cur = await conn.execute("SELECT count(*) FROM readings_staging")  # empty again
    assert (await cur.fetchone())[0] == 0


async def test_encoded_rows_go_out_by_sensor_keeping_arrival_order():
    c = cols([3, 1, 3, 2, 1], [T + 5, T + 1, T + 2, T, T + 3], [1.0, None, 3.0, 4.0, 5.0],
             quality=[0, 1, 0, 2, 0])
    data = store.encode_copy(c)
    body = data[len(store._HEADER):-len(store._TRAILER)]
    decoded, pos = [], 0
    while pos < len(body):  # field count, then (length, bytes) per field
        pos += 2
        fields = []
        for _ in range(4):
            n = int.from_bytes(body[pos:pos + 4], "big", signed=True)
            pos += 4
            fields.append(None if n < 0 else body[pos:pos + n])
            pos += max(n, 0)
        value = None if fields[2] is None else struct.unpack(">d", fields[2])[0]
        decoded.append((int.from_bytes(fields[1], "big"), value))
    # non-null rows by sensor, sensor 3's two in arrival order; then the null row
    assert decoded == [(1, 5.0), (2, 4.0), (3, 1.0), (3, 3.0), (1, None)]


async def test_expected_conflict_goes_straight_to_the_slow_path(conn):
    async with conn.transaction():
        result = await store.insert_readings(conn, cols([4], [T], [1.0]), expect_conflict=True)
    assert (result.inserted, result.slow_path) == (1, True)


async def test_side_effects_dead_letters_pending_and_gateway(conn, db_dsn):
    await conn.execute("INSERT INTO regions VALUES ('370105', 'x', NULL) ON CONFLICT DO NOTHING")
    await conn.execute(
        "INSERT INTO enterprises (code, name, region) VALUES (%s, 'e', '370105') "
        "ON CONFLICT (code) DO NOTHING", (ENT,))
    cur = await conn.execute(
        "INSERT INTO gateways (enterprise_id, code, username) "
        "SELECT id, 'gw-st', %s FROM enterprises WHERE code = %s "
        "ON CONFLICT (enterprise_id, code) DO UPDATE SET name = NULL RETURNING id",
        (f"{ENT}/gw-st", ENT))
    (gid,) = await cur.fetchone()
    await conn.commit()
    reg = RegistryCache()
    await reg.refresh(conn)
    b = Batch(reg, 300_000, 100)
    topic = f"hw/v1/{ENT}/gw-st/readings"
    payload = orjson.dumps({"ts": T, "values": {"NEW.ONE": 1.5, "BAD": "x"}})
    b.add((1, 1, 1), Message(topic, payload, T, NativeV1().decode(topic, payload, T)))
    state_topic = f"hw/v1/{ENT}/gw-st/state"
    b.add((1, 2, 1), Message(state_topic, b"offline", T + 5, NativeV1().decode(state_topic, b"offline", T + 5)))
    b.finalize(T)
    async with conn.transaction():
        n = await store.write_side_effects(conn, b, dead_letter_payload_bytes=16)
    assert n == 1
    cur = await conn.execute(
        "SELECT topic, reason, errors, accepted, rejected, payload, payload_truncated FROM dead_letters")
    topic_, reason, errors, accepted, rejected, stored_payload, truncated = await cur.fetchone()
    assert (topic_, reason, accepted, rejected, truncated) == (topic, "not_a_number", 0, 2, True)
    assert [e["reason"] for e in errors] == ["not_a_number", "unknown_tag"]
    assert bytes(stored_payload) == payload[:16]
    cur = await conn.execute("SELECT gateway_code, tag, count, last_value FROM unregistered_tags")
    assert await cur.fetchall() == [("gw-st", "NEW.ONE", 1, 1.5)]
    cur = await conn.execute("SELECT online, state_at IS NOT NULL, last_seen IS NOT NULL FROM gateways WHERE id = %s", (gid,))
    assert await cur.fetchone() == (False, True, True)


async def test_prune_bounds_dead_letters_by_count_and_age(conn):
    await conn.execute(
        "INSERT INTO dead_letters (received_at, topic, dialect, reason, errors, payload) "
        "SELECT now() - make_interval(days => CASE WHEN i <= 3 THEN 30 ELSE 0 END), 't', 'native', "
        "'schema', '[]', '' FROM generate_series(1, 10) i")
    await conn.commit()
    removed = await store.prune_dead_letters(conn, max_age_days=14, max_rows=5)
    assert removed == 5
    cur = await conn.execute("SELECT count(*), min(id) FROM dead_letters")
    count, min_id = await cur.fetchone()
    cur = await conn.execute("SELECT max(id) FROM dead_letters")
    assert count == 5 and (await cur.fetchone())[0] - min_id == 4
