"""Accumulate decoded messages into one columnar batch and apply the per-reading rules.

Resolution (gateway, tag → sensor) happens per message as it arrives; the checks that
need numbers (future time, physical range) and de-duplication run once per batch on
numpy arrays. Every problem stays attached to its message, so dead letters can say
exactly which reading of which message was refused and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ingest.dialects import Decoded, Problem
from ingest.reasons import Q_BAD, Reason
from ingest.registry_cache import RegistryCache

PG_EPOCH_MS = 946_684_800_000.0  # PostgreSQL timestamps count microseconds from 2000-01-01


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    received_ms: float
    decoded: Decoded
    gateway_id: int | None = None
    accepted: int = 0
    rejected: int = 0


@dataclass
class Columns:
    """Rows to store: parallel arrays, PostgreSQL-epoch microseconds for time."""

    sensor_id: np.ndarray  # int32
    ts_us: np.ndarray      # int64
    value: np.ndarray      # float64, NaN where null
    null: np.ndarray       # bool
    quality: np.ndarray    # int16

    def __len__(self) -> int:
        return len(self.sensor_id)


@dataclass
class Batch:
    registry: RegistryCache
    max_future_ms: float
    max_readings: int
    started: float = field(default_factory=time.monotonic)
    messages: list[Message] = field(default_factory=list)
    acks: list = field(default_factory=list)
    sensor_id: list[int] = field(default_factory=list)
    ts_ms: list[float] = field(default_factory=list)
    value: list[float | None] = field(default_factory=list)
    quality: list[int] = field(default_factory=list)
    msg_index: list[int] = field(default_factory=list)
    tag: list[str] = field(default_factory=list)
    states: dict[int, tuple[bool, float]] = field(default_factory=dict)
    seen: dict[int, float] = field(default_factory=dict)
    seq: dict[int, int] = field(default_factory=dict)
    pending: dict[tuple[str, str, str], list] = field(default_factory=dict)
    has_dup: bool = False  # some message is an MQTT redelivery: expect conflicts

    def __len__(self) -> int:
        return len(self.sensor_id)

    def add(self, ack: object, msg: Message) -> None:
        self.acks.append(ack)
        index = len(self.messages)
        self.messages.append(msg)
        d = msg.decoded
        n = len(d.tags)
        if d.rejected:
            msg.rejected = n + d.dropped
            return
        if n + d.dropped > self.max_readings:
            d.refuse(Reason.TOO_MANY_READINGS,
                     f"{n + d.dropped} readings; the limit is {self.max_readings}")
            msg.rejected = n + d.dropped
            return
        gid = self.registry.gateways.get((d.enterprise, d.gateway))
        if gid is None:
            d.refuse(Reason.UNKNOWN_GATEWAY,
                     f"gateway {d.gateway!r} of enterprise {d.enterprise!r} is not registered")
            msg.rejected = n + d.dropped
            for i in range(n):
                self._note_pending(d.enterprise, d.gateway, d.tags[i], msg.received_ms, d.values[i])
            return
        msg.gateway_id = gid
        self.seen[gid] = max(self.seen.get(gid, 0.0), msg.received_ms)
        if d.online is not None:
            self.states[gid] = (d.online, msg.received_ms)
        if d.seq is not None:
            self.seq[gid] = d.seq
        own = self.registry.tags.get(d.enterprise, {})
        sids = list(map(own.get, d.tags))
        if None not in sids:  # every tag registered to this enterprise: in bulk
            self.sensor_id += sids
            self.ts_ms += d.ts_ms
            self.value += d.values
            self.quality += d.quality
            self.msg_index += [index] * n
            self.tag += d.tags
            msg.accepted = n
            msg.rejected = d.dropped
            return
        accepted = 0
        for i in range(n):
            tag = d.tags[i]
            sid = own.get(tag)
            if sid is None:
                owner = self.registry.tag_owner.get(tag)
                if owner is not None:
                    d.problems.append(Problem(Reason.FOREIGN_TAG,
                                              f"tag is registered to enterprise {owner}, not {d.enterprise}",
                                              tag=tag))
                else:
                    d.problems.append(Problem(Reason.UNKNOWN_TAG, "tag is not registered", tag=tag))
                self._note_pending(d.enterprise, d.gateway, tag, msg.received_ms, d.values[i])
                continue
            self.sensor_id.append(sid)
            self.ts_ms.append(d.ts_ms[i])
            self.value.append(d.values[i])
            self.quality.append(d.quality[i])
            self.msg_index.append(index)
            self.tag.append(tag)
            accepted += 1
        msg.accepted = accepted
        msg.rejected = n - accepted + d.dropped

    def _note_pending(self, ent: str | None, gw: str | None, tag: str, at: float, value) -> None:
        key = (ent or "", gw or "", tag)
        row = self.pending.get(key)
        if row is None:
            self.pending[key] = [at, at, 1, value]
        else:
            row[1], row[2], row[3] = at, row[2] + 1, value

    def finalize(self, now_ms: float | None = None) -> Columns:
        """Apply time and range checks, drop in-batch duplicates, return the rows to store."""
        now_ms = time.time() * 1000.0 if now_ms is None else now_ms
        sid = np.array(self.sensor_id, dtype=np.int32)
        ts_ms = np.array(self.ts_ms, dtype=np.float64)
        # None (a null reading) becomes NaN; decoding refused every NaN a gateway sent, so
        # NaN here means null and nothing else.
        value = np.array(self.value, dtype=np.float64)
        null = np.isnan(value)
        quality = np.array(self.quality, dtype=np.int16)
        msg = np.array(self.msg_index, dtype=np.int32)

        keep = np.ones(len(sid), dtype=bool)
        future = ts_ms > now_ms + self.max_future_ms
        if future.any():
            for i in np.flatnonzero(future):
                ahead = (ts_ms[i] - now_ms) / 1000.0
                self._problem(msg[i], Problem(Reason.FUTURE_TIMESTAMP,
                                              f"{ahead:.0f} s ahead of the server clock",
                                              tag=self.tag[i]), stored=False)
            keep &= ~future
        with np.errstate(invalid="ignore"):
            out_of_range = ~null & ((value < self.registry.range_lo[sid]) | (value > self.registry.range_hi[sid]))
        out_of_range &= keep
        if out_of_range.any():
            for i in np.flatnonzero(out_of_range):
                s = sid[i]
                self._problem(msg[i], Problem(
                    Reason.OUT_OF_RANGE,
                    f"{value[i]:g} outside the physical range [{self.registry.range_lo[s]:g}, "
                    f"{self.registry.range_hi[s]:g}]; stored with quality bad",
                    tag=self.tag[i]), stored=True)
            quality[out_of_range] = np.maximum(quality[out_of_range], Q_BAD)

        ts_us = np.round((ts_ms - PG_EPOCH_MS) * 1000.0).astype(np.int64)
        idx = np.flatnonzero(keep)
        if len(idx) > 1:
            # First occurrence of each (sensor, time) wins, as the database's ON CONFLICT would.
            order = np.lexsort((idx, ts_us[idx], sid[idx]))
            sorted_idx = idx[order]
            dup = np.zeros(len(sorted_idx), dtype=bool)
            dup[1:] = (sid[sorted_idx[1:]] == sid[sorted_idx[:-1]]) & (
                ts_us[sorted_idx[1:]] == ts_us[sorted_idx[:-1]])
            if dup.any():
                idx = np.sort(sorted_idx[~dup])
        return Columns(sid[idx], ts_us[idx], value[idx], null[idx], quality[idx])

    def _problem(self, index: int, problem: Problem, *, stored: bool) -> None:
        m = self.messages[index]
        m.decoded.problems.append(problem)
        if not stored:
            m.accepted -= 1
            m.rejected += 1

    def dead_letters(self) -> list[Message]:
        return [m for m in self.messages if m.decoded.problems]

    def rejection_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.messages:
            for p in m.decoded.problems:
                counts[p.reason] = counts.get(p.reason, 0) + 1
        return counts


