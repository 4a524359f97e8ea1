"""The MQTT collector: receive (QoS 1, persistent session) → batch → commit → acknowledge.

paho-mqtt runs its network loop in its own thread with manual acknowledgement; messages
cross into asyncio through a deque. A message is acknowledged only after the transaction
holding its readings has committed, so a crash anywhere before that makes the broker
redeliver it, and the idempotent write makes the redelivery harmless. The broker's
Receive Maximum (our setting) caps how many unacknowledged messages we hold, which is
the collector's memory bound when the database stalls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from hazardwatch import logs
from hazardwatch.settings import Settings
from ingest import metrics, store
from ingest.batch import Batch, Columns, Message
from ingest.dialects import Decoded, Dialect, all_dialects
from ingest.partitions import (
    ANNOUNCE_TOPIC,
    Assignment,
    Layout,
    Lease,
    LeaseLost,
    Router,
    claim_layout,
)
from ingest.reasons import Reason
from ingest.registry_cache import RegistryCache

log = logs.get("ingest.collector")


class BatchSink(Protocol):
    """What the composition root plugs in after storage (the rules stage).

    evaluate() runs once per batch and must not do I/O; write() runs inside the batch
    transaction and may run again if that transaction is retried; tick() is processing-time
    work whose result is written the same way. resumed() follows the first commit after a
    database outage: meanwhile the broker held the gateways' messages, so silence measured
    across the outage is the collector's, not theirs.
    """

    async def start(self, conn: psycopg.AsyncConnection) -> None: ...
    async def reload(self, conn: psycopg.AsyncConnection) -> None: ...
    def evaluate(self, cols: Columns, batch: Batch) -> Any: ...
    def tick(self, now: float) -> Any: ...
    async def write(self, conn: psycopg.AsyncConnection, result: Any) -> None: ...
    def resumed(self) -> None: ...


PUBACK = 0x40
_PUBACK = (PUBACK << 8) | 2  # a PUBACK's fixed header: packet type, remaining length 2


class _ReadAheadClient(mqtt.Client):
    """paho's client, reading ahead: one recv() of up to 256 KiB serves many packets, and
    loop_read handles every buffered packet before paho goes back to select().

    Stock paho reads each packet with three or more recv() calls and returns to select()
    after every packet: at thousands of messages a second that was most of the network
    thread's CPU (docs/performance.md). Only how bytes are fetched changes; parsing,
    acknowledgement and callbacks are paho's own.
    """

    _READ = 256 * 1024
    _PACKETS = 64   # then let paho write (acknowledgements) before reading on

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ahead_sock: object = None
        self._ahead = b""
        self._ahead_pos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._ahead_sock is not self._sock:  # a new connection: nothing carries over
            self._ahead_sock, self._ahead, self._ahead_pos = self._sock, b"", 0
        if self._ahead_pos >= len(self._ahead):
            data = super()._sock_recv(self._READ)  # BlockingIOError when there is nothing
            if not data:
                return data                         # the connection closed
            self._ahead, self._ahead_pos = data, 0
        start = self._ahead_pos
        self._ahead_pos = min(start + bufsize, len(self._ahead))
        return self._ahead[start:self._ahead_pos]

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK many QoS 1 messages in one write, in the order given.

        paho's ack() queues each 4-byte PUBACK as its own packet: a wake-up write to its
        socket pair and a send() on the connection per message, a few thousand syscalls a
        second under load. These are the same packets paho builds (`_send_command_with_mid`:
        type, remaining length 2, packet id; MQTT v5 lets a success PUBACK omit its reason
        code), concatenated and queued once; paho writes them like any packet."""
        if mids:
            packet = np.empty(2 * len(mids), dtype=">u2")
            packet[0::2], packet[1::2] = _PUBACK, mids
            self._packet_queue(PUBACK, packet.tobytes(), 0, 0)

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        # The collector registers no per-topic callbacks (message_callback_add), so paho's
        # topic matcher, run for every message, finds none: go straight to on_message
        # (~5 % of the collector's CPU at 4,000 messages/s, docs/performance.md).
        with self._in_callback_mutex:
            try:
                self.on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        # Returns only with the read-ahead buffer empty: select() cannot see bytes we hold.
        packets = 0
        while True:
            if self._sock is None:
                return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
            packets += 1
            if packets >= self._PACKETS and self._ahead_pos >= len(self._ahead):
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


@dataclass(eq=False)
class _Writer:
    """One writer connection; a reconnect replaces `conn` in place."""

    conn: psycopg.AsyncConnection
    delay: float = 0.1  # back-off before the next reconnect; doubles up to 5 s


@dataclass(eq=False)
class _Link:
    """One step of the write chain: a batch, or a tick's rules output.

    `copied` resolves once the batch's readings are in (uncommitted, its writer held), or
    the step ended; the next batch takes a writer and starts its COPY then. So a writer is
    only ever taken behind a step that holds one or is done: two writers, no deadlock. `task` ends after the commit and the
    acknowledgements, and the next step's commit waits for it."""

    copied: asyncio.Future
    task: asyncio.Task | None = None


class _Yield(Exception):
    """A batch holding uncommitted rows gave up waiting for the batch before it."""


def _stage_timer(name: str):
    """observe(since[, now]) → now: one stage's histogram child, bound once."""
    child = metrics.STAGE_SECONDS.labels(name)

    def observe(since: float, now: float | None = None) -> float:
        now = time.perf_counter() if now is None else now
        child.observe(now - since)
        return now
    return observe


class Collector:
    def __init__(self, settings: Settings, *, sink: BatchSink | None = None,
                 dialects: list[Dialect] | None = None, tick_s: float = 1.0) -> None:
        self.settings = settings
        self.sink = sink
        self.tick_s = tick_s
        self.dialects = dialects or all_dialects()
        self.registry = RegistryCache()
        self._inbox: collections.deque = collections.deque()
        self._wake = asyncio.Event()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0
        self._client: mqtt.Client | None = None
        self.connected = False
        self._disconnected = threading.Event()
        self.db_ok = False
        self.stats = collections.Counter()
        # Several workers (settings.ingest.partitions > 0): this one's partitions, held by
        # lease; the rules sink evaluates only their enterprises (ingest/partitions.py).
        ing, m = settings.ingest, settings.mqtt
        assignment = Assignment(ing.partitions, ing.workers, ing.worker) if ing.partitions else None
        self.router = Router(assignment)
        self.lease = Lease(assignment, ing.lease_s) if assignment is not None else None
        # one persistent session per worker slot: a restarted worker gets its backlog
        self.client_id = f"{m.client_id}-w{ing.worker}" if assignment is not None else m.client_id
        if sink is not None and hasattr(sink, "lease"):
            sink.lease = self.lease
        self.fatal: str | None = None
        self._layout: Layout | None = None
        self._stop: asyncio.Event | None = None
        self._messages_metric: dict[str, Any] = {}
        self._stage = {name: _stage_timer(name) for name in (
            "finalize", "evaluate", "wait", "copy", "wait_previous", "side_effects",
            "rules_write", "commit", "ack")}
        self._db_failed = False  # a write failed; the first commit after it calls resumed()

    # ---- MQTT thread side ------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        m = self.settings.mqtt
        client = _ReadAheadClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if m.username:
            client.username_pw_set(m.username, m.password.get_secret_value() if m.password else None)
        if m.tls_ca:
            client.tls_set(ca_certs=str(m.tls_ca))
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("mqtt connect refused", reason=str(reason_code))
            return
        self._generation += 1
        self.connected = self.router.confirmed  # partitioned: once the broker agrees on P
        metrics.CONNECTED.set(1)
        drop, subscribe = self.router.subscriptions(
            (t for d in self.dialects for t in d.topics), self.settings.mqtt.share_group)
        if drop:
            client.unsubscribe(drop)
        topics = [(t, SubscribeOptions(qos=qos)) for t, qos in subscribe]
        client.subscribe(topics)
        log.info("mqtt connected", session_present=bool(flags.session_present),
                 generation=self._generation, subscriptions=len(topics))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False
        self._disconnected.set()
        metrics.CONNECTED.set(0)
        log.warning("mqtt disconnected", reason=str(reason_code))

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if self.router.partitioned or topic == ANNOUNCE_TOPIC:
            if topic == ANNOUNCE_TOPIC:
                self._announced(msg.payload)
                return
            topic = self.router.inbound(topic)
            if topic is None:  # another worker's gateway state: its owner has its own copy
                if msg.qos:
                    client.ack(msg.mid, msg.qos)
                return
        self._inbox.append((self._generation, msg.mid, msg.qos, topic, msg.payload, msg.dup,
                            time.time() * 1000.0))
        if not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._wake.set)

    def _announced(self, payload: bytes) -> None:
        """The broker's partition count (retained hwp/partitions): run only if it agrees."""
        problem = self.router.announced(payload)
        if problem is None:
            if not self.connected and self._client is not None and self._client.is_connected():
                self.connected = True
            return
        if self.fatal is None:
            self.fatal = problem
            log.error("refusing to run", reason=problem)
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)

    # ---- asyncio side ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = stop
        dsn = self.settings.dsn()
        conn = await self._connect_db(dsn, stop)
        if conn is None:
            return
        writers = [_Writer(conn)]
        for _ in range(self.settings.ingest.writers - 1):
            writers.append(_Writer(await self._connect_db(dsn, None)))
        self._pool: asyncio.Queue[_Writer] = asyncio.Queue()
        for w in writers:
            self._pool.put_nowait(w)
        aux = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        self._layout = None  # recorded by _upkeep once the broker agreed (ingest_layout)
        if self.settings.mqtt.session_expiry_s > 0:  # sessions outlive us: one layout only
            a, m = self.router.assignment, self.settings.mqtt
            layout = Layout(a.partitions, a.workers, m.client_id) if a else Layout(0, 1, m.client_id)
            self._layout = layout
            if (problem := await claim_layout(aux, layout, record=False)) is not None:
                await aux.close()
                await self._close_writers(writers)
                raise SystemExit(f"hazardwatch serve: {problem}")
        keeper = None
        if self.lease is not None:  # a standby waits here until the partitions are free
            if not await self.lease.acquire(aux, stop):
                await aux.close()
                await self._close_writers(writers)
                return
            keeper = asyncio.create_task(self.lease.keep(dsn, stop), name="hw-lease")
        await self.registry.refresh(aux)
        log.info("registry loaded", gateways=len(self.registry.gateways),
                 enterprises=len(self.registry.tags))
        if self.sink is not None:
            await self.sink.start(aux)  # before subscribing: state restored first
        m = self.settings.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = m.session_expiry_s
        props.ReceiveMaximum = m.receive_maximum
        self._client = client = self._make_client()
        client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False,
                             properties=props)
        client.loop_start()
        upkeep = asyncio.create_task(self._upkeep(aux, stop))
        lost = None
        try:
            await self._consume(stop)
        except LeaseLost as exc:  # the batch rolled back, unacknowledged: its new owner gets it
            lost = exc
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            # Let paho flush the last PUBACKs and the DISCONNECT before its loop stops;
            # otherwise committed messages would come back (harmless, but wasted work).
            self._disconnected.clear()
            client.disconnect()
            await asyncio.to_thread(self._disconnected.wait, 5.0)
            client.loop_stop()
            self.connected = False
            metrics.CONNECTED.set(0)
            if self.lease is not None and self.lease.valid():
                with contextlib.suppress(psycopg.Error):
                    await self.lease.release(aux)  # a standby may take over at once
            await aux.close()
            await self._close_writers(writers)
            log.info("collector stopped", **dict(self.stats))
        if lost is not None or self.fatal is not None:
            raise SystemExit(f"hazardwatch serve: {lost or self.fatal}")
        if self.lease is not None and self.lease.lost:
            raise SystemExit("hazardwatch serve: the partition lease was lost; stopped")

    def _link(self, step, prev: _Link | None, *args) -> _Link:
        link = _Link(self._loop.create_future())
        link.task = asyncio.create_task(step(prev, link, *args))
        link.task.add_done_callback(lambda _t: link.copied.done() or link.copied.set_result(None))
        return link

    async def _consume(self, stop: asyncio.Event) -> None:
        ing = self.settings.ingest
        batch: Batch | None = None
        # The write chain: each step commits after the one before it, so transactions commit
        # and acknowledgements go out in order. At most two batches are outstanding: one
        # finishing its write, the next one evaluated and copying (or waiting to copy).
        chain: collections.deque[_Link] = collections.deque()
        next_tick = time.monotonic() + self.tick_s
        try:
            while True:
                while chain and chain[0].task.done():
                    if (exc := chain[0].task.exception()) is not None:
                        raise exc  # an unexpected write error: stop; the broker redelivers
                    chain.popleft()
                if self.sink is not None and time.monotonic() >= next_tick:
                    chain.append(self._link(self._tick, chain[-1] if chain else None))
                    next_tick = time.monotonic() + self.tick_s
                if not self._inbox:
                    timeout = self.tick_s if self.sink is not None else None
                    if batch is not None:
                        timeout = max(0.0, ing.batch_ms / 1000.0 - (time.monotonic() - batch.started))
                    stopper = asyncio.ensure_future(stop.wait())
                    waker = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait({stopper, waker}, timeout=timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
                    stopper.cancel()
                    waker.cancel()
                self._wake.clear()
                self._wake_pending = False
                accepted = 0
                while self._inbox and (batch is None or len(batch) < ing.batch_readings):
                    item = self._inbox.popleft()
                    if batch is None:
                        batch = Batch(self.registry, ing.max_future_s * 1000.0, ing.max_readings_per_message)
                    self._accept(batch, item)
                    accepted += 1
                    if accepted % 32 == 0 and chain and not chain[-1].task.done():
                        # the write in flight needs the loop for its I/O: decode beside it, not
                        # in front of it
                        await asyncio.sleep(0)
                due = batch is not None and (
                    len(batch) >= ing.batch_readings
                    or time.monotonic() - batch.started >= ing.batch_ms / 1000.0
                    or stop.is_set()
                )
                if due:
                    while sum(not link.task.done() for link in chain) >= 2:
                        # Under a flood, decoding further ahead only piles up batches and
                        # starves the rest of the loop.
                        await asyncio.wait({next(link.task for link in chain if not link.task.done())})
                    chain.append(self._link(self._flush, chain[-1] if chain else None, batch))
                    batch = None
                    await asyncio.sleep(0)  # let it start (and HTTP be served) before decoding on
                if stop.is_set() and batch is None:
                    if chain:
                        await chain[-1].task
                    return
        finally:
            # an error left steps behind: stop them (their batches stay unacknowledged)
            tasks = [link.task for link in chain]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _accept(self, batch: Batch, item: tuple) -> None:
        generation, mid, qos, topic, payload, dup, received_ms = item
        dialect = None
        for d in self.dialects:
            if d.matches(topic):
                dialect = d
                break
        name = dialect.name if dialect else "unknown"
        counter = self._messages_metric.get(name)
        if counter is None:  # labels() takes a lock and a dict lookup: once per dialect
            counter = self._messages_metric[name] = metrics.MESSAGES.labels(name)
        counter.inc()
        if len(payload) > self.settings.ingest.max_payload_bytes:
            decoded = Decoded(name).refuse(
                Reason.OVERSIZE,
                f"{len(payload)} bytes; the limit is {self.settings.ingest.max_payload_bytes}")
        elif dialect is None:
            decoded = Decoded(name).refuse(Reason.BAD_TOPIC, f"no dialect serves topic {topic!r}")
        else:
            try:
                decoded = dialect.decode(topic, payload, received_ms)
            except Exception as exc:  # a decoder bug must not stop the stream
                log.exception("decoder failed", topic=topic)
                decoded = Decoded(name).refuse(Reason.UNDECODABLE, f"decoder error: {exc!r}")
        batch.has_dup = batch.has_dup or dup
        batch.add((generation, mid, qos), Message(topic, payload, received_ms, decoded))

    YIELD_S = 2.0  # a batch holding uncommitted rows waits this long for the one before it

    async def _flush(self, prev: _Link | None, link: _Link, batch: Batch) -> None:
        """Write one batch until it commits (reconnecting as needed), then acknowledge.

        Its columns and rule evaluation overlap the previous batch's write (the engine's
        state advances batch by batch in order either way; a retried write reuses its
        evaluation). With two writer connections its COPY starts once the previous batch's
        COPY is in, and runs while that batch finishes; everything after the COPY (gateway
        side effects, rules output, commit, acknowledgements) waits for the previous batch
        to be done, so commits and acknowledgements stay in order.

        Why that cannot deadlock: the previous batch's remaining statements touch no
        reading, so it never waits for this one's rows (this one may wait for its rows: a
        duplicate across batches, resolved by its commit). Only a previous batch that fails
        after its COPY and copies again could meet this one's rows; so this one gives up
        after YIELD_S (rolls back, waits, writes again alone), and every retry is alone."""
        stage = self._stage
        t = time.perf_counter()
        cols = batch.finalize()
        t = stage["finalize"](t)
        evaluated = self.sink.evaluate(cols, batch) if self.sink is not None else None
        t = stage["evaluate"](t)
        slow = batch.has_dup  # a flagged redelivery: expect stored rows, take the slow path
        overlap = prev is not None and not slow
        if prev is not None:
            await (prev.copied if overlap else prev.task)
        stage["wait"](t)
        outcome: dict = {}

        async def work(c: psycopg.AsyncConnection) -> None:
            t = time.perf_counter()
            outcome["readings"] = await store.insert_readings(c, cols, expect_conflict=slow)
            t = stage["copy"](t)
            if not link.copied.done():
                link.copied.set_result(None)
            if prev is not None:
                if overlap and not prev.task.done():
                    finished, _ = await asyncio.wait({prev.task}, timeout=self.YIELD_S)
                    if not finished:
                        raise _Yield
                await prev.task  # its failure fails this batch too (rolled back, unacknowledged)
                t = stage["wait_previous"](t)
            outcome["letters"] = await store.write_side_effects(
                c, batch, self.settings.ingest.dead_letter_payload_bytes)
            t = stage["side_effects"](t)
            if evaluated is not None:
                await self.sink.write(c, evaluated)
                stage["rules_write"](t)

        writer = await self._pool.get()
        try:
            while True:
                try:
                    await self._commit(writer, work, len(batch.messages), retry=False)
                    break
                except store.Conflict:
                    if slow:  # cannot happen on the slow path; never loop
                        raise
                    slow = True  # rolled back with nothing else written: again, slow path
                except _Yield:
                    metrics.WRITE_YIELDS.inc()
                    log.info("batch rolled back to let the one before it finish",
                             messages=len(batch.messages))
                except psycopg.OperationalError as exc:
                    await self._reconnect(writer, exc, len(batch.messages))
                overlap = False  # every retry is alone: after the previous batch is done
                if prev is not None:
                    await prev.task
        finally:
            self._pool.put_nowait(writer)
        t = time.perf_counter()
        self._acknowledge(batch)
        stage["ack"](t)
        self._count(batch, cols, outcome["readings"], outcome["letters"])

    async def _tick(self, prev: _Link | None, link: _Link) -> None:
        """Processing-time rule work (no-data timers, escalation by duration), in the chain
        after the step before it."""
        if prev is not None:
            await prev.task
        changes = self.sink.tick(time.time())
        if changes:
            async def work(c) -> None:
                await self.sink.write(c, changes)

            writer = await self._pool.get()
            try:
                await self._commit(writer, work, 0)
            finally:
                self._pool.put_nowait(writer)

    async def _commit(self, writer: _Writer, work, messages: int, *, retry: bool = True) -> None:
        """Run `work` in one transaction on the writer; with retry, until it commits
        (reconnecting on database loss), else an OperationalError goes to the caller."""
        while True:
            try:
                conn = writer.conn
                t0 = time.perf_counter()
                async with conn.transaction():
                    await work(conn)
                    t1 = time.perf_counter()
                t2 = time.perf_counter()
                self._stage["commit"](t1, t2)
                metrics.WRITE_SECONDS.observe(t2 - t0)
                self.db_ok = True
                writer.delay = 0.1
                if self._db_failed:
                    self._db_failed = False
                    if self.sink is not None:
                        self.sink.resumed()
                return
            except psycopg.OperationalError as exc:
                if not retry:
                    raise
                await self._reconnect(writer, exc, messages)

    async def _reconnect(self, writer: _Writer, exc: Exception, messages: int) -> None:
        """The database went away under a write: hold the acknowledgements, back off, and
        replace the writer's connection."""
        self._db_failed = True
        self.db_ok = False
        metrics.WRITE_FAILURES.inc()
        delay = writer.delay = min(writer.delay * 2, 5.0)
        log.warning("database unavailable; holding acknowledgements", error=str(exc),
                    retry_in=delay, messages=messages)
        await asyncio.sleep(delay)
        with contextlib.suppress(psycopg.Error):
            await writer.conn.close()
        writer.conn = await self._connect_db(self.settings.dsn(), None)

    async def _close_writers(self, writers: list[_Writer]) -> None:
        for w in writers:
            with contextlib.suppress(psycopg.Error):
                await w.conn.close()

    def _acknowledge(self, batch: Batch) -> None:
        current = self._generation
        # A message from an earlier connection will be redelivered; acking its old packet id
        # on the new connection could acknowledge something else. QoS 2 is not subscribed.
        mids = [mid for generation, mid, qos in batch.acks if qos == 1 and generation == current]
        self._client.ack_many(mids)

    def _count(self, batch: Batch, cols: Columns, result: store.StoreResult, letters: int) -> None:
        now_ms = time.time() * 1000.0
        received = sum(len(m.decoded.tags) + m.decoded.dropped for m in batch.messages)
        rejected = sum(m.rejected for m in batch.messages)
        metrics.READINGS_RECEIVED.inc(received)
        metrics.READINGS_STORED.inc(result.inserted)
        metrics.READINGS_DUPLICATE.inc(received - rejected - result.inserted)
        metrics.READINGS_REJECTED.inc(rejected)
        metrics.DEAD_LETTERS.inc(letters)
        for reason, n in batch.rejection_counts().items():
            metrics.REJECTIONS.labels(reason).inc(n)
        metrics.BATCH_READINGS.observe(len(cols))
        for m in batch.messages:
            metrics.LAG_SECONDS.observe(max(0.0, now_ms - m.received_ms) / 1000.0)
        if len(cols):
            newest_ms = cols.ts_us.max() / 1000.0 + 946_684_800_000.0
            metrics.EVENT_LAG.set(max(0.0, now_ms - newest_ms) / 1000.0)
        self.stats["messages"] += len(batch.messages)
        self.stats["stored"] += result.inserted
        self.stats["rejected"] += rejected
        log.debug("batch committed", messages=len(batch.messages), rows=len(cols),
                  inserted=result.inserted, slow_path=result.slow_path, dead_letters=letters)

    async def _connect_db(self, dsn: str, stop: asyncio.Event | None):
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(dsn, application_name="hw-ingest")
                await store.prepare(conn)
                self.db_ok = True
                return conn
            except psycopg.OperationalError as exc:
                self.db_ok = False
                log.warning("database connect failed", error=str(exc), retry_in=delay)
                if stop is not None and stop.is_set():
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _upkeep(self, aux, stop: asyncio.Event) -> None:
        """Registry refresh and dead-letter pruning on a second connection."""
        ing = self.settings.ingest
        last_prune = 0.0
        while not stop.is_set():
            try:
                if self._layout is not None and self.connected and self.fatal is None:
                    problem = await claim_layout(aux, self._layout)  # None: recorded (or same)
                    self._layout = None
                    if problem is not None:  # another layout started meanwhile
                        self.fatal = problem
                        log.error("refusing to run", reason=problem)
                        stop.set()
                if await self.registry.refresh(aux):
                    log.info("registry reloaded", version=self.registry.version)
                    if self.sink is not None:
                        await self.sink.reload(aux)
                if time.monotonic() - last_prune > 60:
                    await store.prune_dead_letters(aux, ing.dead_letter_max_age_days,
                                                   ing.dead_letter_max_rows)
                    last_prune = time.monotonic()
            except psycopg.OperationalError as exc:
                log.warning("upkeep: database unavailable", error=str(exc))
                with contextlib.suppress(psycopg.Error):
                    await aux.close()
                with contextlib.suppress(psycopg.OperationalError):
                    aux = await psycopg.AsyncConnection.connect(self.settings.dsn(), autocommit=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), ing.registry_refresh_s)
