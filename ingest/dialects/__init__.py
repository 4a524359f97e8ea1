"""Payload dialects: one module per wire format behind one small interface.

A dialect turns (topic, payload) into a `Decoded`: who sent it and flat lists of
(tag, time, value, quality), plus the problems it found. It knows nothing of the
registry or the database; `ingest.batch` resolves tags and applies the limits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import orjson

from ingest.reasons import Q_BAD, Reason

EPOCH_MS_MIN = 946_684_800_000  # 2000-01-01T00:00:00Z: smaller numbers look like seconds


@dataclass(slots=True)
class Problem:
    reason: Reason
    detail: str
    field: str | None = None
    tag: str | None = None

    def as_json(self) -> dict:
        out: dict = {"reason": str(self.reason), "detail": self.detail}
        if self.field is not None:
            out["field"] = self.field
        if self.tag is not None:
            out["tag"] = self.tag
        return out


@dataclass(slots=True)
class Decoded:
    """One message, flattened. Values are floats; null readings have value None."""

    dialect: str
    enterprise: str | None = None
    gateway: str | None = None
    tags: list[str] = field(default_factory=list)
    ts_ms: list[float] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    quality: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rejected: bool = False           # the whole message is refused
    dropped: int = 0                 # readings refused while decoding
    online: bool | None = None       # a gateway state message
    seq: int | None = None

    def refuse(self, reason: Reason, detail: str, field: str | None = None) -> Decoded:
        """Refuse the whole message: every reading in it counts as refused."""
        self.rejected = True
        self.problems.append(Problem(reason, detail, field))
        return self

    def refuse_group(self, problem: Problem, readings: object) -> None:
        """Refuse one group of a message; the other groups stand."""
        self.problems.append(problem)
        self.dropped += len(readings) if type(readings) is dict else 0


class Dialect(Protocol):
    name: str
    topics: tuple[str, ...]  # MQTT subscription filters

    def matches(self, topic: str) -> bool: ...

    def decode(self, topic: str, payload: bytes, received_ms: float) -> Decoded: ...


# ---- helpers every dialect shares -------------------------------------------------------

class Undecodable(ValueError):
    pass


def loads(payload: bytes) -> object:
    """orjson on the hot path; the stdlib parser only when orjson refuses.

    orjson refuses NaN/Infinity literals and numbers that overflow a double; gateways
    written in C print those. The stdlib reads them as floats, so such a value is refused
    as one bad reading instead of sinking its good neighbours.
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(payload)
        except (ValueError, RecursionError):
            raise Undecodable(f"not UTF-8 JSON: {exc}") from None

def parse_ts(raw: object, where: str) -> tuple[float | None, Problem | None]:
    """Epoch milliseconds or an RFC 3339 string with an offset → epoch ms."""
    t = type(raw)
    if t is int or t is float:
        ms = float(raw)  # type: ignore[arg-type]
        if not math.isfinite(ms):
            return None, Problem(Reason.BAD_TIMESTAMP, "not a finite number", where)
        if ms < EPOCH_MS_MIN:
            hint = " (looks like epoch seconds; send milliseconds)" if ms > 9.4e8 else ""
            return None, Problem(Reason.BAD_TIMESTAMP, f"{raw!r} is before 2000-01-01{hint}", where)
        return ms, None
    if t is str:
        try:
            dt = datetime.fromisoformat(raw)  # type: ignore[arg-type]
        except ValueError:
            return None, Problem(Reason.BAD_TIMESTAMP, f"{raw!r} is not RFC 3339", where)
        if dt.tzinfo is None:
            return None, Problem(Reason.BAD_TIMESTAMP, f"{raw!r} has no UTC offset", where)
        ms = dt.timestamp() * 1000.0
        if ms < EPOCH_MS_MIN:
            return None, Problem(Reason.BAD_TIMESTAMP, f"{raw!r} is before 2000-01-01", where)
        return ms, None
    return None, Problem(Reason.BAD_TIMESTAMP, f"expected epoch ms or RFC 3339, got {_kind(raw)}", where)


def add_values(out: Decoded, values: dict, ts_ms: float, quality: dict | None,
               prefix: str, where: str) -> None:
    """Append one group's readings; a bad value refuses that reading only."""
    tags, tss, vals, qs, problems = out.tags, out.ts_ms, out.values, out.quality, out.problems
    before = len(tags)
    for key, v in values.items():
        tag = prefix + key if prefix else key
        if not key or len(tag) > 128:
            problems.append(Problem(Reason.SCHEMA, "tag must be 1..128 characters", f"{where}.values", tag[:128]))
            continue
        t = type(v)
        if t is float:
            if v != v or v in (math.inf, -math.inf):
                problems.append(Problem(Reason.NOT_A_NUMBER, "NaN or infinite", f"{where}.values", tag))
                continue
        elif t is int:
            try:
                v = float(v)
            except OverflowError:
                problems.append(Problem(Reason.NOT_A_NUMBER, "integer too large", f"{where}.values", tag))
                continue
        elif t is bool:
            v = 1.0 if v else 0.0
        elif v is not None:
            problems.append(Problem(Reason.NOT_A_NUMBER, f"expected a number or null, got {_kind(v)}",
                                    f"{where}.values", tag))
            continue
        q = 0 if v is not None else Q_BAD
        if quality is not None and key in quality:
            raw_q = quality[key]
            if type(raw_q) is float and raw_q.is_integer():  # JSON Schema: 1.0 is the integer 1
                raw_q = int(raw_q)
            if type(raw_q) is not int or not 0 <= raw_q <= 4:
                problems.append(Problem(Reason.BAD_QUALITY, f"quality must be an integer 0..4, got {raw_q!r}",
                                        f"{where}.q", tag))
                continue
            q = raw_q
        tags.append(tag)
        tss.append(ts_ms)
        vals.append(v)
        qs.append(q)
    out.dropped += len(values) - (len(tags) - before)


def _kind(v: object) -> str:
    if v is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(v), type(v).__name__)


kind_of = _kind


def all_dialects() -> list[Dialect]:
    from ingest.dialects.native import NativeV1
    from ingest.dialects.thingsboard import ThingsBoard

    return [NativeV1(), ThingsBoard()]
