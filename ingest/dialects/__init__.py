"""Payload dialects: one module per wire format behind one small interface.

A dialect turns (topic, payload) into a `Decoded`: who sent it and flat lists of
(tag, time, value, quality), plus the problems it found. It knows nothing of the
registry or the database; `ingest.batch` resolves tags and applies the limits.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import orjson

from ingest.reasons import Q_BAD, Reason

EPOCH_MS_MIN = 946_684_800_000  # 2000-01-01T00:00:00Z: smaller numbers look like seconds
EPOCH_MS_MAX = 253_402_300_800_000  # 10000-01-01T00:00:00Z: no calendar date past it
MAX_TAG = 128
_SHOWN = 60  # characters of a payload string quoted in a problem's detail
# What a tag (and any payload text a problem names) must not contain: control characters
# (NUL cannot be stored in PostgreSQL text or jsonb at all) and lone surrogates (not
# encodable as UTF-8). JSON escapes (\u0000, \ud800) smuggle both past UTF-8 validation.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


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
    as one bad reading instead of sinking its good neighbours. The stdlib gets text, not
    bytes: given bytes it would guess UTF-16/32 and skip a byte order mark, accepting what
    the contract (UTF-8 JSON, RFC 8259 §8.1) and orjson refuse.
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(bytes(payload).decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise Undecodable(f"not UTF-8 JSON: {exc}") from None


def show(raw: object) -> str:
    """A payload value quoted in a problem's detail: short, escaped, never recursive
    (a repr of a value nested 1000 deep raises, and of a 200 kB string is useless)."""
    t = type(raw)
    if t is str:
        if len(raw) <= _SHOWN:  # type: ignore[arg-type]
            return repr(raw)    # repr escapes control characters and lone surrogates
        return f"{raw[:_SHOWN]!r}… ({len(raw)} characters)"  # type: ignore[index,arg-type]
    if t is int and abs(raw) >= 10**18:  # type: ignore[arg-type]
        return f"an integer of {len(str(abs(raw)))} digits"  # type: ignore[arg-type]
    if raw is None or t in (int, float, bool):
        return repr(raw)
    return kind_of(raw)


def keys_shown(keys: object, most: int = 5) -> str:
    """Unexpected keys named in a detail: the first few, escaped, and how many more."""
    names = sorted(keys)  # type: ignore[call-overload]
    shown = ", ".join(show(k) for k in names[:most])
    return f"[{shown}{f', … {len(names) - most} more' if len(names) > most else ''}]"


def safe_text(text: str, limit: int = MAX_TAG) -> str:
    """Payload text (a tag, a device name) fit for a problem's tag or field: control
    characters and lone surrogates written as \\uXXXX escapes, at most `limit` characters."""
    if len(text) <= limit and text.isprintable():
        return text
    text = _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def bad_tag(tag: str) -> bool:
    """Empty, longer than 128 characters, or holding what storage cannot keep."""
    return not tag or len(tag) > MAX_TAG or (not tag.isprintable() and _UNSAFE.search(tag) is not None)

def parse_ts(raw: object, where: str) -> tuple[float | None, Problem | None]:
    """Epoch milliseconds or an RFC 3339 string with an offset → epoch ms."""
    t = type(raw)
    if t is int or t is float:
        try:
            ms = float(raw)  # type: ignore[arg-type]
        except OverflowError:  # an integer past a double's range
            ms = math.inf
        if not math.isfinite(ms):
            return None, Problem(Reason.BAD_TIMESTAMP, f"not a finite number: {show(raw)}", where)
        if ms < EPOCH_MS_MIN:
            hint = " (looks like epoch seconds; send milliseconds)" if ms > 9.4e8 else ""
            return None, Problem(Reason.BAD_TIMESTAMP, f"{show(raw)} is before 2000-01-01{hint}", where)
        if ms >= EPOCH_MS_MAX:
            return None, Problem(Reason.BAD_TIMESTAMP, f"{show(raw)} is after 9999-12-31", where)
        return ms, None
    if t is str:
        try:
            dt = datetime.fromisoformat(raw)  # type: ignore[arg-type]
        except ValueError:
            return None, Problem(Reason.BAD_TIMESTAMP, f"{show(raw)} is not RFC 3339", where)
        if dt.tzinfo is None:
            return None, Problem(Reason.BAD_TIMESTAMP, f"{show(raw)} has no UTC offset", where)
        try:
            ms = dt.timestamp() * 1000.0
        except (OverflowError, ValueError):  # year 1 or 9999 pushed past the calendar by its offset
            ms = -math.inf
        if not EPOCH_MS_MIN <= ms < EPOCH_MS_MAX:
            return None, Problem(Reason.BAD_TIMESTAMP, f"{show(raw)} is before 2000-01-01 or after "
                                 "9999-12-31", where)
        return ms, None
    return None, Problem(Reason.BAD_TIMESTAMP, f"expected epoch ms or RFC 3339, got {_kind(raw)}", where)


def add_values(out: Decoded, values: dict, ts_ms: float, quality: dict | None,
               prefix: str, where: str) -> None:
    """Append one group's readings; a bad value refuses that reading only."""
    plain = not quality and (not prefix or prefix.isprintable()) and _plain(values, len(prefix))
    if plain:
        # The common message (finite numbers, sane tags, no quality codes) in bulk: the
        # per-reading checks below would find nothing, at ~0.5 µs a reading.
        n = len(values)
        out.tags.extend([prefix + k for k in values] if prefix else values)
        out.ts_ms.extend([ts_ms] * n)
        out.values.extend(values.values() if plain is _FLOATS else map(float, values.values()))
        out.quality.extend([0] * n)
        return
    tags, tss, vals, qs, problems = out.tags, out.ts_ms, out.values, out.quality, out.problems
    before = len(tags)
    for key, v in values.items():
        tag = prefix + key if prefix else key
        if not key or bad_tag(tag):
            problems.append(Problem(Reason.SCHEMA, "tag must be 1..128 characters, without control "
                                    "characters or lone surrogates", f"{where}.values", safe_text(tag)))
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
                problems.append(Problem(Reason.BAD_QUALITY, f"quality must be an integer 0..4, got {show(raw_q)}",
                                        f"{where}.q", tag))
                continue
            q = raw_q
        tags.append(tag)
        tss.append(ts_ms)
        vals.append(v)
        qs.append(q)
    out.dropped += len(values) - (len(tags) - before)


_FLOATS = frozenset({float})
_NUMBERS = frozenset({float, int})


def _plain(values: dict, prefix_len: int) -> frozenset | None:
    """_FLOATS or _NUMBERS when every value is a finite float (or an int that fits one)
    and every tag is 1..128 characters with the prefix; None otherwise (bool is not int
    here: type() is exact)."""
    if not values or "" in values:
        return None
    kinds = set(map(type, values.values()))
    if not _NUMBERS.issuperset(kinds) or max(map(len, values)) + prefix_len > 128:
        return None
    if not "".join(values).isprintable():  # a control character or lone surrogate: see bad_tag
        return None
    try:  # NaN or ±inf anywhere, or an overflowing sum, makes the sum non-finite
        if not math.isfinite(sum(values.values())):
            return None
    except OverflowError:  # an int too large for a double
        return None
    return _FLOATS if kinds == _FLOATS else _NUMBERS


def _kind(v: object) -> str:
    if v is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(v), type(v).__name__)


kind_of = _kind


def all_dialects() -> list[Dialect]:
    from ingest.dialects.native import NativeV1
    from ingest.dialects.thingsboard import ThingsBoard

    return [NativeV1(), ThingsBoard()]
