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
import psycopg

from alerting import store as warnings_store
from hazardwatch import logs
from hazardwatch.settings import ReceiverSettings
from ingest.batch import PG_EPOCH_MS, Batch, Columns
from rules.engine import Changes, Engine, SensorRow
from rules.packs import SensorSpec, load_packs

log = logs.get("hazardwatch.pipeline")
PG_EPOCH_S = PG_EPOCH_MS / 1000.0


async def load_sensor_rows(conn: psycopg.AsyncConnection) -> list[SensorRow]:
    cur = await conn.execute(
        "SELECT s.id, s.site_id, s.gateway_id, st.kind::text, st.grade, s.tag, s.kind, s.unit, "
        "s.range_lo, s.range_hi, s.ll, s.l, s.h, s.hh, s.interval_s, s.rules "
        "FROM sensors s JOIN sites st ON st.id = s.site_id ORDER BY s.id")
    rows = []
    for (sid, site_id, gateway_id, site_kind, grade, tag, kind, unit, lo, hi, ll, low, high, hh,
         interval_s, rules) in await cur.fetchall():
        spec = SensorSpec(tag=tag, kind=kind, unit=unit, range_lo=lo, range_hi=hi, ll=ll, l=low,
                          h=high, hh=hh, interval_s=interval_s, rules=rules or {})
        rows.append(SensorRow(sid, site_id, gateway_id, site_kind, grade, spec))
    return rows


class RulesSink:
    """Collector sink: evaluate once per batch (pure), write per transaction attempt.

    receivers: the configured notification receivers (settings.alerting.receivers); the
    events the engine writes get an outbox row for each receiver whose route matches.
    closed_poll_s: how often write() asks the database which of the engine's cleared
    episodes the officers have closed (闭环), so the engine forgets them and the next
    condition of that site and cause opens a new warning. 0 asks on every write."""

    def __init__(self, replay_s: float = 1800.0, *, receivers: Sequence[ReceiverSettings] = (),
                 closed_poll_s: float = 1.0) -> None:
        self.engine = Engine(load_packs())
        self.replay_s = replay_s
        self.receivers = list(receivers)
        self.closed_poll_s = closed_poll_s
        self._next_closed_poll = 0.0

    async def start(self, conn: psycopg.AsyncConnection) -> None:
        await self.reload(conn)
        restored = await warnings_store.restore_open(conn, self.engine)
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
        self.engine.load(await load_sensor_rows(conn))

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

    async def write(self, conn: psycopg.AsyncConnection, changes: Changes) -> None:
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
