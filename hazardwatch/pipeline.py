"""The rules stage of the pipeline: what the collector calls inside each batch transaction.

Lives in the composition layer because it does I/O for the pure engine: it loads the
registry slice the engine needs, restores open warnings and recent history after a
restart, hands the engine's Changes to alerting.store (warnings, alarms, events and their
notifications), and lets the engine forget warnings the officers have closed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import orjson
import psycopg
from psycopg import sql

from alerting import store as warnings_store
from hazardwatch import logs
from hazardwatch.settings import ReceiverSettings
from ingest.batch import PG_EPOCH_MS, Batch, Columns
from ingest.partitions import Lease
from rules.engine import Changes, Engine
from rules.packs import load_packs
from rules.sensor_table import Group, SensorTable, rules_key

log = logs.get("hazardwatch.pipeline")
PG_EPOCH_S = PG_EPOCH_MS / 1000.0


# The numeric columns as one bytea of fixed-width big-endian records, which numpy reads in
# one call (a row-by-row fetch of a million sensors costs ~10 s of Python; so does a binary
# COPY, which psycopg hands over one row at a time). NULLs become -1 (no gateway) or NaN
# (no limit) so every record has the same layout.
_INTS = ("sensor_id", "site_id", "gateway_id", "site_grade")
_FLOATS = ("range_lo", "range_hi", "ll", "l", "h", "hh", "interval_s")
_RECORD = np.dtype([(name, ">i4") for name in _INTS] + [(name, ">f8") for name in _FLOATS])
_NUMERIC = (
    "SELECT coalesce(string_agg(int4send(s.id) || int4send(s.site_id) "
    "|| int4send(coalesce(s.gateway_id, -1)) || int4send(st.grade::int4) "
    "|| float8send(s.range_lo) || float8send(s.range_hi) || float8send(coalesce(s.ll, 'NaN')) "
    "|| float8send(coalesce(s.l, 'NaN')) || float8send(coalesce(s.h, 'NaN')) "
    "|| float8send(coalesce(s.hh, 'NaN')) || float8send(s.interval_s::float8), ''::bytea "
    "ORDER BY s.id), ''::bytea), coalesce(array_agg(s.tag ORDER BY s.id), '{{}}') "
    "FROM sensors s JOIN sites st ON st.id = s.site_id {where}")
_GROUPS = ("SELECT st.kind::text, s.kind, s.unit, s.rules::text, array_agg(s.id) "
           "FROM sensors s JOIN sites st ON st.id = s.site_id {where} GROUP BY 1, 2, 3, 4")


async def load_sensor_rows(conn: psycopg.AsyncConnection,
                           enterprises: Sequence[int] | None = None) -> SensorTable:
    """The engine's registry slice (a Sequence[SensorRow], held as columns).

    `enterprises` restricts it to those enterprise ids (a collector worker's partitions).
    Two reads in one snapshot: the numeric columns and tags, then the rule groups with
    their sensor ids."""
    where = sql.SQL("")
    if enterprises is not None:
        where = sql.SQL("WHERE s.enterprise_id = ANY({})").format(
            sql.Literal([int(e) for e in enterprises]))
    own = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    async with conn.transaction(), conn.cursor(binary=True) as cur:
        if own:  # our transaction (not a caller's savepoint): one snapshot for both reads
            await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        await cur.execute(sql.SQL(_NUMERIC).format(where=where))
        blob, tags = await cur.fetchone()
        await cur.execute(sql.SQL(_GROUPS).format(where=where))
        grouped = await cur.fetchall()
    records = np.frombuffer(blob, dtype=_RECORD)
    ids = records["sensor_id"].astype(np.int64)
    if len(tags) != len(ids):
        raise RuntimeError(f"registry read: {len(ids)} sensors but {len(tags)} tags")
    group = np.full(len(ids), -1, dtype=np.int64)
    groups = []
    for code, (site_kind, kind, unit, rules_text, members) in enumerate(grouped):
        rules = orjson.loads(rules_text)
        groups.append(Group(site_kind, kind, unit, rules_key(rules), rules))
        group[np.searchsorted(ids, np.asarray(members, dtype=np.int64))] = code
    if (group < 0).any():
        raise RuntimeError("registry read: sensors without a rule group")
    columns = {name: records[name] for name in (*_INTS, *_FLOATS)}
    return SensorTable({**columns, "group": group}, tags, groups)


class RulesSink:
    """Collector sink: evaluate once per batch (pure), write per transaction attempt.

    receivers: the configured notification receivers (settings.alerting.receivers); the
    events the engine writes get an outbox row for each receiver whose route matches.
    closed_poll_s: how often write() asks the database which of the engine's cleared
    episodes the officers have closed (闭环), so the engine forgets them and the next
    condition of that site and cause opens a new warning. 0 asks on every write.
    lease: set by the collector when it is one of several workers (ingest/partitions.py):
    the engine then holds only the sensors, warnings and gateways of its partitions'
    enterprises, and write() refuses to run once the lease is no longer held."""

    def __init__(self, replay_s: float = 1800.0, *, receivers: Sequence[ReceiverSettings] = (),
                 closed_poll_s: float = 1.0) -> None:
        self.engine = Engine(load_packs())
        self.replay_s = replay_s
        self.receivers = list(receivers)
        self.closed_poll_s = closed_poll_s
        self._next_closed_poll = 0.0
        self.lease: Lease | None = None

    async def _enterprises(self, conn: psycopg.AsyncConnection) -> list[int] | None:
        """Ids of the enterprises of this worker's partitions; None: all (one collector)."""
        if self.lease is None:
            return None
        cur = await conn.execute("SELECT id, code FROM enterprises")
        owns = self.lease.assignment.owns_enterprise
        return [eid for eid, code in await cur.fetchall() if owns(code)]

    async def start(self, conn: psycopg.AsyncConnection) -> None:
        await self.reload(conn)
        restored = await warnings_store.restore_open(conn, self.engine)
        if self.lease is not None:  # adopt only the warnings of this worker's sites
            cur = await conn.execute("SELECT id FROM sites WHERE enterprise_id = ANY(%s)",
                                     (await self._enterprises(conn),))
            mine = {site_id for (site_id,) in await cur.fetchall()}
            self.engine.episodes = {key: ep for key, ep in self.engine.episodes.items()
                                    if ep.site_id in mine}
            restored = len(self.engine.episodes)
        replayed = 0
        if self.replay_s > 0 and self.engine.rows:
            async for rows in warnings_store.recent_readings(conn, list(self.engine.slot_of),
                                                             self.replay_s):
                arr = np.array(rows, dtype=np.float64)
                self.engine.readings(arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2],
                                     arr[:, 3].astype(np.int16), time.time(), emit=False)
                replayed += len(rows)
        self.engine.align()
        log.info("rules ready", sensors=len(self.engine.rows), open_warnings=restored,
                 replayed_readings=replayed)

    async def reload(self, conn: psycopg.AsyncConnection) -> None:
        self.engine.load(await load_sensor_rows(conn, await self._enterprises(conn)))

    def evaluate(self, cols: Columns, batch: Batch) -> Changes:
        rx = time.time()
        ts = cols.ts_us / 1e6 + PG_EPOCH_S
        changes = self.engine.readings(cols.sensor_id.astype(np.int64), ts, cols.value,
                                       cols.quality, rx)
        for gid, (online, at_ms) in batch.states.items():
            changes.merge(self.engine.gateway_state(gid, online, at_ms / 1000.0, rx))
        return changes

    def tick(self, now: float) -> Changes:
        return self.engine.tick(now)

    def resumed(self) -> None:
        """The database is back after an outage: restart the no-data clocks, as at start-up.
        The broker held the gateways' messages meanwhile, so the gap is ours, not theirs;
        a sensor that really fell silent is still called so one full window later."""
        self.engine.state.last_rx[:] = np.nan
        log.info("database back: no-data clocks restarted", sensors=len(self.engine.rows))

    async def write(self, conn: psycopg.AsyncConnection, changes: Changes) -> None:
        if self.lease is not None:
            # raises LeaseLost (the transaction rolls back, nothing acked) unless the
            # database still grants our partitions; row-locks them until commit
            await self.lease.confirm(conn)
        await self.forget_closed(conn)
        await warnings_store.apply(conn, changes, self.receivers)

    async def forget_closed(self, conn: psycopg.AsyncConnection, *, force: bool = False) -> list[int]:
        """Forget the engine's episodes whose warnings have been closed; returns their ids.

        Only cleared episodes can have been closed (closing needs the condition cleared), so
        only those are asked about: one indexed query, at most every closed_poll_s. An
        episode that became active again before the engine heard of the closing is kept;
        alerting.store.apply re-homes it as a new warning instead of writing to the closed
        one. Forgetting is right whether or not the caller's transaction commits: the
        closing itself has committed."""
        now = time.monotonic()
        if not force and now < self._next_closed_poll:
            return []
        self._next_closed_poll = now + self.closed_poll_s
        ids = [ep.id for ep in self.engine.episodes.values() if not ep.active and ep.id is not None]
        if not ids:
            return []
        cur = await conn.execute(
            "SELECT id FROM warnings WHERE id = ANY(%s) AND closed_at IS NOT NULL", (ids,))
        forgotten = [wid for (wid,) in await cur.fetchall() if self.engine.forget(wid)]
        if forgotten:
            log.info("closed warnings forgotten by the engine", warnings=forgotten)
        return forgotten
