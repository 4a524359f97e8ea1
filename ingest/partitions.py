"""Partitions: several collector processes on one stream, rule state kept per enterprise.

The broker's hw_identity plugin (plugin_opt_partitions P) rewrites readings topics to
`hwp/<k>/<topic>` with k = FNV-1a-32(enterprise code) mod P; `partition_of` is the same
function. Worker i of N owns the partitions k with k mod N == i: it subscribes to them
(MQTT v5 shared subscriptions, `$share/<group>/hwp/<k>/...`), evaluates rules for the
sensors of their enterprises only, and holds them by a lease in PostgreSQL
(`ingest_partitions`), so two live processes never evaluate the same partition.

Why per enterprise and not per gateway: a site's sensors may hang on several gateways of
its enterprise and its conditions combine into one warning, so the unit of rule state is
the site, and every site belongs to one enterprise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import psycopg
from prometheus_client import Counter

from hazardwatch import logs

log = logs.get("ingest.partitions")

PREFIX = "hwp"
ANNOUNCE_TOPIC = f"{PREFIX}/partitions"   # retained by the broker plugin: its P
STATE_TOPIC = "hw/v1/+/+/state"           # not partitioned (last wills skip the plugin)
FNV_OFFSET, FNV_PRIME = 2166136261, 16777619

PARTITION_MESSAGES = Counter(
    "hw_ingest_partition_messages", "Messages received per partition (this worker)",
    ["partition"])
FOREIGN_MESSAGES = Counter(
    "hw_ingest_foreign_partition_messages",
    "Messages of a partition this worker does not own (stored; rules skip them): a queued "
    "backlog after the number of workers changed")


def fnv1a32(data: bytes) -> int:
    """FNV-1a, 32 bit (the plugin's hash, byte for byte)."""
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return h


def partition_of(enterprise: str, partitions: int) -> int:
    return fnv1a32(enterprise.encode()) % partitions


@dataclass(frozen=True)
class Assignment:
    """Worker `worker` of `workers` over `partitions` partitions."""

    partitions: int
    workers: int = 1
    worker: int = 0
    _cache: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"partitions: must be ≥ 1 (got {self.partitions})")
        if not 1 <= self.workers <= self.partitions:
            raise ValueError(f"workers: must be between 1 and partitions ({self.partitions}), "
                             f"got {self.workers}")
        if not 0 <= self.worker < self.workers:
            raise ValueError(f"worker: must be between 0 and workers - 1 ({self.workers - 1}), "
                             f"got {self.worker}")

    @cached_property
    def owned(self) -> tuple[int, ...]:
        return tuple(k for k in range(self.partitions) if k % self.workers == self.worker)

    def owns(self, k: int) -> bool:
        return k % self.workers == self.worker and 0 <= k < self.partitions

    def owns_enterprise(self, code: str) -> bool:
        owned = self._cache.get(code)
        if owned is None:
            owned = self._cache[code] = self.owns(partition_of(code, self.partitions))
        return owned

    def filters(self, topics: Iterable[str], group: str, partitions: Iterable[int]) -> list[str]:
        """Shared-subscription filters of `topics` (dialect topics) in those partitions."""
        topics = list(topics)
        return [f"$share/{group}/{PREFIX}/{k}/{t}" for k in partitions for t in topics]

    def split(self, topic: str) -> tuple[int, str] | None:
        """(k, original topic) of `hwp/<k>/<topic>`; None for anything else."""
        if not topic.startswith(PREFIX + "/"):
            return None
        head, _, rest = topic[len(PREFIX) + 1:].partition("/")
        if not head.isdigit() or not rest:
            return None
        return int(head), rest


def read_announcement(payload: bytes) -> int | None:
    """The broker's partition count from hwp/partitions, None when unreadable."""
    text = payload.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class Router:
    """What the collector's MQTT side asks about topics: which filters to (un)subscribe,
    whether a message is this worker's, and whether the broker agrees on P.

    Unpartitioned (assignment None): the dialects' own topics (shared when `group` is set)
    and a check that the broker does not partition — else every reading would go to
    hwp/... where nobody of this configuration listens."""

    def __init__(self, assignment: Assignment | None) -> None:
        self.assignment = assignment
        self.confirmed = assignment is None  # partitioned: once the broker announced P

    @property
    def partitioned(self) -> bool:
        return self.assignment is not None

    def subscriptions(self, topics: Iterable[str], group: str | None
                      ) -> tuple[list[str], list[tuple[str, int]]]:
        """(filters to unsubscribe, (filter, QoS) to subscribe) on every connect.

        Partitioned: the owned partitions' readings topics, each a shared subscription;
        the partitions of other workers are unsubscribed, which clears what a persistent
        session kept from a run with another number of workers; the state topic unshared
        (every worker sees every gateway's state and keeps its own enterprises')."""
        topics = list(topics)
        a = self.assignment
        if a is None:
            subs = [(f"$share/{group}/{t}" if group else t, 1) for t in topics]
            return [], [*subs, (ANNOUNCE_TOPIC, 0)]
        group = group or "hw-ingest"
        partitioned = [t for t in topics if t != STATE_TOPIC]
        others = [k for k in range(a.partitions) if not a.owns(k)]
        subs = [(f, 1) for f in a.filters(partitioned, group, a.owned)]
        return (a.filters(partitioned, group, others),
                [*subs, (STATE_TOPIC, 1), (ANNOUNCE_TOPIC, 0)])

    def inbound(self, topic: str) -> str | None:
        """The topic to decode, or None when the message is another worker's (the caller
        acknowledges and drops it: its owner receives its own copy)."""
        a = self.assignment
        if a is None:
            return topic
        split = a.split(topic)
        if split is not None:
            k, original = split
            PARTITION_MESSAGES.labels(str(k)).inc()
            if not a.owns(k):
                FOREIGN_MESSAGES.inc()
            return original
        if topic.startswith("hw/v1/"):  # native state, unpartitioned
            parts = topic.split("/", 4)
            if len(parts) > 3 and not a.owns_enterprise(parts[2]):
                return None
        return topic

    def announced(self, payload: bytes) -> str | None:
        """The broker's hwp/partitions; a reason to refuse to run, or None when it agrees."""
        got = read_announcement(payload)
        want = self.assignment.partitions if self.assignment is not None else 0
        if got is None:
            return f"the broker announced partitions {payload[:32]!r}, not a number"
        if got != want:
            if want == 0:
                return (f"the broker partitions readings {got} ways (plugin_opt_partitions), "
                        f"but this collector reads unpartitioned topics: set "
                        f"HW_INGEST__PARTITIONS={got} (and HW_INGEST__WORKERS/WORKER)")
            if got == 0:
                return (f"HW_INGEST__PARTITIONS is {want} but the broker does not partition "
                        f"readings: set plugin_opt_partitions {want} in mosquitto.conf")
            return (f"HW_INGEST__PARTITIONS is {want} but the broker partitions readings "
                    f"{got} ways (plugin_opt_partitions): they must be equal")
        self.confirmed = True
        return None


@dataclass(frozen=True)
class Layout:
    """What the broker's persistent sessions were made for: P (0 unpartitioned), N and
    the base client id. Sessions of another layout keep queueing readings after a change."""

    partitions: int
    workers: int
    client_id: str

    def describe(self) -> str:
        if self.partitions == 0:
            return f"unpartitioned (client id {self.client_id})"
        ids = ", ".join(f"{self.client_id}-w{i}" for i in range(self.workers))
        return f"{self.partitions} partitions, {self.workers} workers (client ids {ids})"


RESET_HINT = (
    "the broker still holds the old layout's persistent sessions and keeps queueing "
    "readings to them. To change the layout: keep (or start again) the recorded layout's "
    "workers until the broker's queues are empty (hazardwatch doctor / the "
    "hw_ingest_lag_seconds metric, mosquitto $SYS/broker/store/messages/count), stop all "
    "workers, run `hazardwatch partitions layout --reset`, then start the new layout "
    "(docs/architecture.md \"Scaling\")")


async def claim_layout(conn: psycopg.AsyncConnection, layout: Layout, *,
                       record: bool = True) -> str | None:
    """A reason to refuse to run when another layout is recorded, else None; with record,
    `layout` is recorded when none is. The collector checks before it connects and records
    only once the broker agreed on P, so a refused misconfiguration records nothing."""
    if record:
        # two statements: in READ COMMITTED the SELECT then sees a row a concurrent first
        # worker inserted (one statement's snapshot could miss it)
        await conn.execute("INSERT INTO ingest_layout (partitions, workers, client_id) "
                           "VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
                           (layout.partitions, layout.workers, layout.client_id))
    cur = await conn.execute("SELECT partitions, workers, client_id FROM ingest_layout")
    row = await cur.fetchone()
    if row is None:
        return None
    recorded = Layout(*row)
    if recorded == layout:
        return None
    return (f"this collector's layout is {layout.describe()}, but the database records "
            f"{recorded.describe()}: {RESET_HINT}")


class LeaseLost(RuntimeError):
    """This process no longer holds its partitions; another may evaluate them now."""


class Lease:
    """The worker's partitions, held in `ingest_partitions` until expires_at.

    All or nothing: a worker claims every partition of its slot in one statement, or none
    (another live process holds one: this one waits as a standby and tries again). The
    database's clock decides expiry; locally the lease counts as held until the moment the
    last successful renewal was *sent* plus the lease time, less a margin, which is never
    later than what the database granted."""

    def __init__(self, assignment: Assignment, lease_s: float) -> None:
        self.assignment = assignment
        self.lease_s = lease_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._valid_until = 0.0
        self.lost = False  # set when the lease was lost or ran out (not on a clean release)

    @property
    def margin_s(self) -> float:
        return max(1.0, 0.1 * self.lease_s)

    def valid(self) -> bool:
        return time.monotonic() < self._valid_until

    def check(self) -> None:
        if not self.valid():
            raise LeaseLost(f"partitions {list(self.assignment.owned)} are no longer held by "
                            f"{self.owner}; refusing to evaluate rules for them")

    async def confirm(self, conn: psycopg.AsyncConnection) -> None:
        """Prove, inside the caller's write transaction, that the database still grants
        this process every owned partition; raise LeaseLost otherwise (the caller's
        transaction rolls back, its messages stay unacknowledged).

        check() alone trusts the local clock: a process that stalls between check() and
        commit could commit rules output after a standby took over. The FOR SHARE row
        locks, held until this transaction ends, also make a takeover (an UPDATE of these
        rows) wait until the commit, so the write and the lease cannot overlap another
        owner's. clock_timestamp(), not now(): the transaction may have begun a while ago."""
        self.check()
        ks = list(self.assignment.owned)
        cur = await conn.execute(
            "SELECT partition FROM ingest_partitions WHERE owner = %s AND partition = ANY(%s) "
            "AND expires_at > clock_timestamp() FOR SHARE", (self.owner, ks))
        held = {k for (k,) in await cur.fetchall()}
        if held != set(ks):
            self._valid_until = 0.0
            self.lost = True
            raise LeaseLost(f"partitions {sorted(set(ks) - held)} are no longer held by "
                            f"{self.owner} in the database; refusing to write rules output")

    async def try_acquire(self, conn: psycopg.AsyncConnection) -> list[tuple[int, str, float]]:
        """Claim every owned partition, or none. Returns the holders in the way: (partition,
        owner, seconds left) — empty when the claim succeeded."""
        ks = list(self.assignment.owned)
        sent = time.monotonic()
        try:
            async with conn.transaction():
                cur = await conn.execute(
                    "INSERT INTO ingest_partitions AS p (partition, partitions, workers, worker, "
                    "owner, expires_at) SELECT k, %(p)s, %(n)s, %(w)s, %(owner)s, "
                    "now() + make_interval(secs => %(ttl)s) FROM unnest(%(ks)s::int[]) AS k "
                    "ORDER BY k "
                    "ON CONFLICT (partition) DO UPDATE SET partitions = excluded.partitions, "
                    "workers = excluded.workers, worker = excluded.worker, owner = excluded.owner, "
                    "acquired_at = now(), expires_at = excluded.expires_at "
                    "WHERE p.owner = excluded.owner OR p.expires_at < now() RETURNING partition",
                    {"p": self.assignment.partitions, "n": self.assignment.workers,
                     "w": self.assignment.worker, "owner": self.owner, "ttl": self.lease_s,
                     "ks": ks})
                if len(await cur.fetchall()) == len(ks):
                    self._valid_until = sent + self.lease_s - self.margin_s
                    return []
                cur = await conn.execute(
                    "SELECT partition, owner, extract(epoch FROM expires_at - now())::float8 "
                    "FROM ingest_partitions WHERE partition = ANY(%s) AND owner <> %s "
                    "AND expires_at >= now() ORDER BY partition", (ks, self.owner))
                held = [tuple(row) for row in await cur.fetchall()]
                raise _Held(held)
        except _Held as refused:
            return refused.held or [(-1, "(a concurrent claim)", 0.0)]

    async def acquire(self, conn: psycopg.AsyncConnection, stop: asyncio.Event) -> bool:
        """Wait (as a standby) until every owned partition is ours; False if stopped first."""
        waited = False
        while not stop.is_set():
            held = await self.try_acquire(conn)
            if not held:
                log.info("partitions acquired", partitions=list(self.assignment.owned),
                         worker=self.assignment.worker, workers=self.assignment.workers,
                         owner=self.owner)
                return True
            if not waited:
                log.warning("partitions held by another live process; standing by",
                            held={k: owner for k, owner, _ in held}, worker=self.assignment.worker)
                waited = True
            wait = min(max(left for _, _, left in held) + 0.2, self.lease_s / 3)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.2, wait))
        return False

    async def renew(self, conn: psycopg.AsyncConnection) -> bool:
        """Extend the lease; False when any partition is no longer ours."""
        ks = list(self.assignment.owned)
        sent = time.monotonic()
        cur = await conn.execute(
            "UPDATE ingest_partitions SET expires_at = now() + make_interval(secs => %s) "
            "WHERE owner = %s AND partition = ANY(%s) AND expires_at >= now() RETURNING partition",
            (self.lease_s, self.owner, ks))
        if len(await cur.fetchall()) != len(ks):
            self._valid_until = 0.0
            return False
        self._valid_until = sent + self.lease_s - self.margin_s
        return True

    async def release(self, conn: psycopg.AsyncConnection) -> None:
        """Give the partitions up at once (a clean stop), so a standby need not wait."""
        self._valid_until = 0.0
        await conn.execute("UPDATE ingest_partitions SET expires_at = '-infinity' "
                           "WHERE owner = %s", (self.owner,))

    async def keep(self, dsn: str, stop: asyncio.Event) -> None:
        """Renew every lease_s / 3 on a connection of its own (a registry reload on the
        upkeep connection can take seconds). A lost lease, or one that runs out because the
        database cannot be reached, stops the process: its rules may be someone else's now."""
        conn = None
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.lease_s / 3)
                if stop.is_set():
                    break
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            dsn, autocommit=True, application_name="hw-lease")
                    if not await self.renew(conn):
                        log.error("partition lease lost; stopping", owner=self.owner,
                                  partitions=list(self.assignment.owned))
                        self.lost = True
                        stop.set()
                        return
                except psycopg.OperationalError as exc:
                    log.warning("lease renewal failed", error=str(exc))
                    with contextlib.suppress(psycopg.Error):
                        if conn is not None:
                            await conn.close()
                    conn = None
                if not self.valid():
                    log.error("partition lease ran out (database unreachable); stopping",
                              owner=self.owner)
                    self.lost = True
                    stop.set()
                    return
        finally:
            if conn is not None:
                await conn.close()


class _Held(Exception):
    def __init__(self, held: list[tuple[int, str, float]]) -> None:
        self.held = held
