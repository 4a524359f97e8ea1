"""The collector's write chain against the real PostgreSQL: batches written on two writer
connections (a COPY beside the previous batch's commit) commit and acknowledge in order,
store a reading repeated across batches once, and never deadlock, not even when a batch
fails after its COPY and has to copy again while the next one holds a repeated row.

The batches are real (native payloads through the dialect and the registry cache); the
MQTT client is replaced by a recorder of acknowledgements, since the order of PUBACKs is
what is checked here (the broker path has its own end-to-end tests)."""

from __future__ import annotations

import asyncio

import orjson
import psycopg
import pytest
from dbutil import fresh_database

from hazardwatch.registry import import_file
from hazardwatch.settings import IngestSettings, Settings
from ingest import metrics
from ingest.batch import Batch, Message
from ingest.collector import Collector
from ingest.dialects.native import NativeV1

ENT = "91370105MA3C0WC018"
GW = "gw-wc"
T0 = 1_795_000_000_000
REGISTRY = f"""
regions:
  - {{code: "370105", name: 天桥区}}
enterprises:
  - code: {ENT}
    name: 写入链测试企业
    region: "370105"
    gateways: [{{id: {GW}}}]
    sites:
      - id: WC-1
        name: 罐区
        kind: major_hazard
        grade: 3
        sensors:
          - {{tag: WC.A, kind: temperature, unit: °C, range: [-50, 500], interval_s: 10, gateway: {GW}}}
          - {{tag: WC.B, kind: temperature, unit: °C, range: [-50, 500], interval_s: 10, gateway: {GW}}}
"""


class Acks:
    def __init__(self) -> None:
        self.order: list[int] = []

    def ack_many(self, mids: list[int]) -> None:
        self.order.extend(mids)


class FlakySink:
    """No rules: fails the write of the batches named in `fail_once` once each, after
    their COPY (as a dropped connection would), optionally holding them first."""

    def __init__(self, fail_once: set[int], hold_s: float = 0.0) -> None:
        self.fail_once = set(fail_once)
        self.hold_s = hold_s
        self.writes: list[int] = []

    def evaluate(self, cols, batch):
        return batch.tag_of_test

    def tick(self, now):
        return None

    async def write(self, conn, index):
        self.writes.append(index)
        if index in self.fail_once:
            self.fail_once.discard(index)
            await asyncio.sleep(self.hold_s)   # the next batch copies (and waits) meanwhile
            raise psycopg.OperationalError("injected: connection lost after the COPY")

    def resumed(self):
        pass


def batch_of(collector: Collector, index: int, rows: list[tuple[str, int, float]]) -> Batch:
    """One batch of one message per (tag, ms offset, value); mids index*100 + k."""
    b = Batch(collector.registry, 300_000.0, 10_000)
    for k, (tag, dt, value) in enumerate(rows):
        payload = orjson.dumps({"ts": T0 + dt, "values": {tag: value}})
        topic = f"hw/v1/{ENT}/{GW}/readings"
        b.add((collector._generation, index * 100 + k, 1),
              Message(topic, payload, T0, NativeV1().decode(topic, payload, T0)))
    b.tag_of_test = index
    return b


async def run_chain(dsn: str, batches: list[list[tuple[str, int, float]]], sink) -> tuple[Acks, Collector]:
    collector = Collector(Settings(database_url=dsn, ingest=IngestSettings(writers=2)), sink=sink)
    collector._loop = asyncio.get_running_loop()
    collector._client = acks = Acks()
    collector.YIELD_S = 0.5
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aux:
        await collector.registry.refresh(aux)
    from ingest.collector import _Writer
    collector._pool = asyncio.Queue()
    writers = [_Writer(await collector._connect_db(dsn, None)) for _ in range(2)]
    for w in writers:
        collector._pool.put_nowait(w)
    try:
        prev = None
        links = []
        for i, rows in enumerate(batches):
            link = collector._link(collector._flush, prev, batch_of(collector, i, rows))
            links.append(link)
            prev = link
        await asyncio.wait_for(asyncio.gather(*(link.task for link in links)), 30)
    finally:
        await collector._close_writers(writers)
    return acks, collector


def stored(dsn: str) -> list[tuple[str, int, float]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT s.tag, (extract(epoch FROM r.ts) * 1000)::bigint - %s, r.value "
            "FROM readings r JOIN sensors s ON s.id = r.sensor_id ORDER BY 1, 2", (T0,)).fetchall()


@pytest.fixture
def dsn(tmp_path):
    (tmp_path / "registry.yaml").write_text(REGISTRY, encoding="utf-8")
    with fresh_database("hw_test_write_chain") as dsn:
        import_file(dsn, tmp_path / "registry.yaml")
        yield dsn


def test_batches_commit_in_order_and_a_repeated_reading_is_stored_once(dsn):
    # each batch repeats the last reading of the one before (a gateway re-sending without
    # the broker's dup flag): the next COPY meets an uncommitted or committed row
    batches = [[("WC.A", 1000 * i, float(i)), ("WC.B", 1000 * i, float(i)),
                ("WC.A", 1000 * (i + 1), float(i + 1))] for i in range(6)]
    sink = FlakySink(set())
    acks, collector = asyncio.run(run_chain(dsn, batches, sink))
    assert acks.order == [i * 100 + k for i in range(6) for k in range(3)]
    assert sink.writes == list(range(6))
    expected = sorted({("WC.A", 1000 * i, float(i)) for i in range(7)}
                      | {("WC.B", 1000 * i, float(i)) for i in range(6)})
    assert stored(dsn) == expected
    assert collector.stats["stored"] == len(expected)


def test_a_batch_that_fails_after_its_copy_is_not_deadlocked_by_the_next_one(dsn):
    # Batch 0 copies, the next batch copies its repeat of batch 0's reading (and waits for
    # batch 0's rows), batch 0's write then fails and it copies again: now it waits for the
    # next batch's row while the next batch waits for it. The next batch yields.
    yields = metrics.WRITE_YIELDS._value.get()
    batches = [[("WC.A", 0, 1.0), ("WC.B", 0, 2.0)], [("WC.A", 0, 1.0), ("WC.A", 1000, 3.0)]]
    sink = FlakySink({0}, hold_s=0.3)
    acks, collector = asyncio.run(run_chain(dsn, batches, sink))
    assert acks.order == [0, 1, 100, 101]
    assert stored(dsn) == [("WC.A", 0, 1.0), ("WC.A", 1000, 3.0), ("WC.B", 0, 2.0)]
    assert sink.writes[:2] == [0, 0] and sink.writes[-1] == 1
    assert metrics.WRITE_YIELDS._value.get() == yields + 1
