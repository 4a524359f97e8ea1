"""The write path: one transaction per batch, committed before any message is acknowledged.

Readings go in by binary COPY. The common case (nothing stored before) copies straight
into `readings`; only when a batch really conflicts (a redelivery) does it pay for the
staging table and INSERT … ON CONFLICT DO NOTHING, in a second attempt of the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson
import psycopg
from psycopg import errors

from ingest.batch import Batch, Columns

_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER = b"\xff\xff"
# One tuple: field count, then (length, value) per column of (ts, sensor_id, value, quality).
_ROW = np.dtype([("n", ">i2"), ("l_ts", ">i4"), ("ts", ">i8"), ("l_sid", ">i4"), ("sid", ">i4"),
                 ("l_v", ">i4"), ("v", ">f8"), ("l_q", ">i4"), ("q", ">i2")])
_ROW_NULL = np.dtype([("n", ">i2"), ("l_ts", ">i4"), ("ts", ">i8"), ("l_sid", ">i4"), ("sid", ">i4"),
                      ("l_v", ">i4"), ("l_q", ">i4"), ("q", ">i2")])
_COPY_SQL = "COPY {} (ts, sensor_id, value, quality) FROM STDIN (FORMAT BINARY)"


def encode_copy(cols: Columns) -> bytes:
    """PostgreSQL binary COPY stream for the rows, built with numpy (no per-row Python).

    Rows go out ordered by sensor (stable, so each sensor's rows keep their arrival order):
    consecutive rows then land on the same leaf of the (sensor_id, ts) index instead of
    visiting every sensor's leaf once per timestamp, which halves the backend's cost a row
    once the index outgrows the CPU caches (docs/performance.md). The order of rows in a
    COPY means nothing else to the table."""
    order = np.argsort(cols.sensor_id, kind="stable")  # radix sort: ~40 µs for 20,000 rows
    null = cols.null[order]
    parts = [_HEADER]
    for dtype, mask in ((_ROW, ~null), (_ROW_NULL, null)):
        n = int(mask.sum())
        if n == 0:
            continue
        pick = order[mask]
        rows = np.empty(n, dtype=dtype)
        rows["n"] = 4
        rows["l_ts"], rows["ts"] = 8, cols.ts_us[pick]
        rows["l_sid"], rows["sid"] = 4, cols.sensor_id[pick]
        if dtype is _ROW:
            rows["l_v"], rows["v"] = 8, cols.value[pick]
        else:
            rows["l_v"] = -1
        rows["l_q"], rows["q"] = 2, cols.quality[pick]
        parts.append(rows.tobytes())
    parts.append(_TRAILER)
    return b"".join(parts)


@dataclass
class StoreResult:
    inserted: int
    duplicates: int
    slow_path: bool


async def prepare(conn: psycopg.AsyncConnection) -> None:
    """Per-connection setup: the staging table lives as long as the session."""
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS readings_staging "
        "(LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    await conn.commit()


class Conflict(Exception):
    """The fast COPY met a row already stored. The caller's transaction is aborted: roll it
    back and write the batch again with expect_conflict=True."""


async def insert_readings(conn: psycopg.AsyncConnection, cols: Columns, *,
                          expect_conflict: bool = False) -> StoreResult:
    """Store the rows in the caller's transaction.

    Fast path: COPY straight into `readings`. A unique violation there raises Conflict with
    the transaction aborted; no savepoint guards it, because a savepoint costs every batch
    (~5 % of the backend's time a row, a subtransaction per batch) to save the rare
    redelivery that the broker did not flag a transaction retry. The collector writes the
    readings first, so a retry repeats nothing else. Slow path (expect_conflict): COPY into
    the session's staging table, then INSERT … ON CONFLICT DO NOTHING."""
    if len(cols) == 0:
        return StoreResult(0, 0, False)
    data = encode_copy(cols)
    if not expect_conflict:
        try:
            async with conn.cursor().copy(_COPY_SQL.format("readings")) as copy:
                await copy.write(data)
        except errors.UniqueViolation as exc:
            raise Conflict(str(exc)) from exc
        return StoreResult(len(cols), 0, False)
    async with conn.cursor() as cur:
        async with cur.copy(_COPY_SQL.format("readings_staging")) as copy:
            await copy.write(data)
        await cur.execute(
            "INSERT INTO readings (ts, sensor_id, value, quality) "
            "SELECT ts, sensor_id, value, quality FROM readings_staging "
            "ON CONFLICT (sensor_id, ts) DO NOTHING"
        )
        inserted = cur.rowcount
        await cur.execute("TRUNCATE readings_staging")
    return StoreResult(inserted, len(cols) - inserted, True)


def _ts(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


async def write_side_effects(conn: psycopg.AsyncConnection, batch: Batch,
                             dead_letter_payload_bytes: int) -> int:
    """Gateway liveness/state, onboarding list and dead letters of one batch."""
    async with conn.cursor() as cur:
        if batch.seen:
            ids = list(batch.seen)
            await cur.execute(
                "UPDATE gateways g SET last_seen = GREATEST(g.last_seen, v.seen) "
                "FROM unnest(%s::int[], %s::timestamptz[]) AS v(id, seen) WHERE g.id = v.id",
                (ids, [_ts(batch.seen[i]) for i in ids]),
            )
        if batch.states:
            ids = list(batch.states)
            await cur.execute(
                "UPDATE gateways g SET online = v.online, "
                "state_at = CASE WHEN g.online IS DISTINCT FROM v.online THEN v.at ELSE g.state_at END "
                "FROM unnest(%s::int[], %s::bool[], %s::timestamptz[]) AS v(id, online, at) "
                "WHERE g.id = v.id",
                (ids, [batch.states[i][0] for i in ids], [_ts(batch.states[i][1]) for i in ids]),
            )
        if batch.seq:
            ids = list(batch.seq)
            await cur.execute(
                "UPDATE gateways g SET last_seq = v.seq "
                "FROM unnest(%s::int[], %s::bigint[]) AS v(id, seq) WHERE g.id = v.id",
                (ids, [batch.seq[i] for i in ids]),
            )
        if batch.pending:
            keys = list(batch.pending)
            rows = [batch.pending[k] for k in keys]
            await cur.execute(
                "INSERT INTO unregistered_tags AS u "
                "(enterprise_code, gateway_code, tag, first_seen, last_seen, count, last_value) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], "
                "%s::timestamptz[], %s::bigint[], %s::float8[]) "
                "ON CONFLICT (enterprise_code, gateway_code, tag) DO UPDATE SET "
                "last_seen = GREATEST(u.last_seen, excluded.last_seen), "
                "count = u.count + excluded.count, last_value = excluded.last_value",
                ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
                 [_ts(r[0]) for r in rows], [_ts(r[1]) for r in rows], [r[2] for r in rows],
                 [r[3] for r in rows]),
            )
        letters = batch.dead_letters()
        if letters:
            await cur.executemany(
                "INSERT INTO dead_letters (received_at, topic, dialect, enterprise_code, "
                "gateway_code, reason, errors, accepted, rejected, payload, payload_truncated) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s)",
                [
                    (_ts(m.received_ms), m.topic, m.decoded.dialect, m.decoded.enterprise,
                     m.decoded.gateway, str(m.decoded.problems[0].reason),
                     orjson.dumps([p.as_json() for p in m.decoded.problems]).decode(),
                     m.accepted, m.rejected, m.payload[:dead_letter_payload_bytes],
                     len(m.payload) > dead_letter_payload_bytes)
                    for m in letters
                ],
            )
        return len(letters)


async def prune_dead_letters(conn: psycopg.AsyncConnection, max_age_days: int, max_rows: int) -> int:
    """Keep dead letters bounded by age and by count (oldest go first)."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "DELETE FROM dead_letters WHERE received_at < now() - make_interval(days => %s)",
            (max_age_days,),
        )
        removed = cur.rowcount
        await cur.execute(
            "DELETE FROM dead_letters WHERE id <= "
            "(SELECT id FROM dead_letters ORDER BY id DESC OFFSET %s LIMIT 1)",
            (max_rows,),
        )
        return removed + cur.rowcount
