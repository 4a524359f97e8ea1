"""Replay recorded readings over MQTT as the gateways that measured them (DESIGN.md §8).

Sources:
  * a CSV with one series, `timestamp,value`, mapped to a tag given by the caller;
  * a CSV in long form, `ts,tag,value`;
  * a time range of stored readings (`db:`), with each tag's gateway from the registry.

Timestamps are epoch milliseconds or RFC 3339 with an offset. Bad rows are reported one by
one (line and field) and skipped; the good rows are replayed. Readings of the same gateway
and timestamp go out as one group, split into messages of at most 50 readings; the time
between groups is kept, divided by the speed (0 = as fast as possible).
"""

from __future__ import annotations

import contextlib
import csv
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from simulators.mqttout import GatewayPublisher, split_group

MIN_EPOCH_MS = 946_684_800_000  # 2000-01-01: smaller numbers look like epoch seconds
_TS_NAMES = {"timestamp", "ts", "time"}


class ReplayError(Exception):
    """The source cannot be replayed at all (missing file, unknown header, unmapped tag)."""


@dataclass(frozen=True)
class Reading:
    ts_ms: int
    tag: str
    value: float | None
    quality: int = 0
    line: int = 0
    enterprise: str | None = None  # known for db: sources; CSV rows are mapped by tag
    gateway: str | None = None


@dataclass(frozen=True)
class RowError:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass
class Source:
    readings: list[Reading]
    errors: list[RowError] = field(default_factory=list)


# ---------------------------------------------------------------------------- parsing

def parse_ts(text: str) -> int:
    """Epoch milliseconds from `1732262400000` or an RFC 3339 string with an offset."""
    s = text.strip()
    if not s:
        raise ValueError("empty")
    if s.lstrip("-").replace(".", "", 1).isdigit():
        ms = float(s)
        if ms < MIN_EPOCH_MS:
            raise ValueError(f"{s!r} is before 2000-01-01 as epoch milliseconds "
                             "(epoch seconds? multiply by 1000)")
        return int(ms)
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{s!r} is neither epoch milliseconds nor RFC 3339") from None
    if dt.tzinfo is None:
        raise ValueError(f"{s!r} has no UTC offset (add Z or +08:00)")
    return int(round(dt.timestamp() * 1000))


def parse_value(text: str) -> float | None:
    s = text.strip()
    if s == "" or s.lower() == "null":
        return None
    try:
        v = float(s)
    except ValueError:
        raise ValueError(f"{s!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{s!r} is not finite (leave the field empty for no value)")
    return v


def _is_header(row: list[str]) -> bool:
    if not row:
        return False
    try:
        parse_ts(row[0])
    except ValueError:
        return True
    return False


def read_csv(path: Path, tags: Sequence[str] = ()) -> Source:
    """A one-series (`timestamp,value`, its tag the one in `tags`) or long-form
    (`ts,tag,value`, filtered by `tags` when given) CSV."""
    only = set(tags)
    tag = tags[0] if len(tags) == 1 else None
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115
    except OSError as exc:
        raise ReplayError(f"{path}: {exc.strerror}") from exc
    readings: list[Reading] = []
    errors: list[RowError] = []
    with handle:
        rows = csv.reader(handle)
        columns: list[str] | None = None
        long_form: bool | None = None
        for row in rows:
            line = rows.line_num
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if long_form is None:
                if _is_header(row):
                    columns = [c.strip().lower() for c in row]
                    long_form = _layout(path, columns)
                    if not long_form and tag is None:
                        raise ReplayError(f"{path}: a one-series CSV ({','.join(columns)}) needs "
                                          "exactly one --tag")
                    continue
                long_form = len(row) >= 3
                if not long_form and tag is None:
                    raise ReplayError(f"{path}: a one-series CSV (timestamp,value) needs exactly one --tag")
                columns = ["ts", "tag", "value"] if long_form else ["timestamp", "value"]
            assert columns is not None
            if len(row) != len(columns):
                errors.append(RowError(line, "row", f"{len(row)} fields, expected {len(columns)} "
                                                    f"({','.join(columns)})"))
                continue
            rec = dict(zip(columns, row, strict=True))
            ts_col = next(c for c in columns if c in _TS_NAMES)
            try:
                ts = parse_ts(rec[ts_col])
            except ValueError as exc:
                errors.append(RowError(line, ts_col, str(exc)))
                continue
            try:
                value = parse_value(rec["value"])
            except ValueError as exc:
                errors.append(RowError(line, "value", str(exc)))
                continue
            if long_form:
                row_tag = rec["tag"].strip()
                if not row_tag:
                    errors.append(RowError(line, "tag", "empty"))
                    continue
                if only and row_tag not in only:
                    continue  # --tag filters a long-form file
            else:
                row_tag = tag  # type: ignore[assignment]
            readings.append(Reading(ts, row_tag, value, 0, line))
    return Source(readings, errors)


def _layout(path: Path, columns: list[str]) -> bool:
    """True for long form; the header must name the columns this reader knows."""
    if len(columns) == 3 and columns[0] in _TS_NAMES and columns[1] == "tag" and columns[2] == "value":
        return True
    if len(columns) == 2 and columns[0] in _TS_NAMES and columns[1] == "value":
        return False
    raise ReplayError(f"{path}: header {','.join(columns)!r} is neither timestamp,value "
                      "nor ts,tag,value")


def read_db(dsn: str, start_ms: int, end_ms: int, tags: Iterable[str] = (),
            enterprise: str | None = None) -> Source:
    """Stored readings with start <= ts < end, each with its registered gateway."""
    import psycopg

    tags = list(tags)
    sql = ("SELECT (extract(epoch FROM r.ts) * 1000)::bigint, s.tag, r.value, r.quality, "
           "e.code, g.code FROM readings r JOIN sensors s ON s.id = r.sensor_id "
           "JOIN enterprises e ON e.id = s.enterprise_id LEFT JOIN gateways g ON g.id = s.gateway_id "
           "WHERE r.ts >= to_timestamp(%s / 1000.0) AND r.ts < to_timestamp(%s / 1000.0)")
    params: list = [start_ms, end_ms]
    if tags:
        sql += " AND s.tag = ANY(%s)"
        params.append(tags)
    if enterprise:
        sql += " AND e.code = %s"
        params.append(enterprise)
    sql += " ORDER BY r.ts, e.code, g.code, s.tag"
    src = Source([])
    unmapped: set[str] = set()
    with psycopg.connect(dsn) as conn:
        for ts, tag, value, quality, ent, gw in conn.execute(sql, params):
            if gw is None:
                unmapped.add(f"{ent} {tag}")
                continue
            src.readings.append(Reading(int(ts), tag, value, int(quality), 0, ent, gw))
    if unmapped:
        src.errors.append(RowError(0, "gateway", f"no gateway registered for {', '.join(sorted(unmapped))}"))
    return src


def registry_gateways(dsn: str, tags: Iterable[str], enterprise: str | None = None
                      ) -> dict[str, tuple[str, str]]:
    """tag -> (enterprise, gateway) from the registry; ReplayError if unknown or ambiguous."""
    import psycopg

    tags = sorted(set(tags))
    sql = ("SELECT s.tag, e.code, g.code FROM sensors s JOIN enterprises e ON e.id = s.enterprise_id "
           "JOIN gateways g ON g.id = s.gateway_id WHERE s.tag = ANY(%s)")
    params: list = [tags]
    if enterprise:
        sql += " AND e.code = %s"
        params.append(enterprise)
    found: dict[str, list[tuple[str, str]]] = {}
    with psycopg.connect(dsn) as conn:
        for tag, ent, gw in conn.execute(sql, params):
            found.setdefault(tag, []).append((ent, gw))
    missing = [t for t in tags if t not in found]
    if missing:
        raise ReplayError(f"not in the registry (or no gateway): {', '.join(missing)}; "
                          "give --enterprise and --gateway")
    ambiguous = [t for t in tags if len(found[t]) > 1]
    if ambiguous:
        raise ReplayError(f"registered in several enterprises: {', '.join(ambiguous)}; give --enterprise")
    return {t: found[t][0] for t in tags}


# ---------------------------------------------------------------------------- schedule

@dataclass(frozen=True)
class Group:
    """One message's worth: readings of one gateway at one instant (≤ 50)."""
    ts_ms: int
    enterprise: str
    gateway: str
    values: dict[str, float | None]
    q: dict[str, int]


def schedule(readings: list[Reading], gateways: Callable[[Reading], tuple[str, str]],
             per_message: int = 50) -> list[Group]:
    """Messages in time order; readings of one gateway and timestamp share messages.

    Order within a timestamp follows the source (a stable sort on ts only)."""
    ordered = sorted(readings, key=lambda r: r.ts_ms)
    out: list[Group] = []
    i = 0
    while i < len(ordered):
        ts = ordered[i].ts_ms
        j = i
        by_gw: dict[tuple[str, str], dict[str, Reading]] = {}
        while j < len(ordered) and ordered[j].ts_ms == ts:
            r = ordered[j]
            by_gw.setdefault(gateways(r), {})[r.tag] = r  # a repeated (tag, ts): last one wins
            j += 1
        for (ent, gw), rs in by_gw.items():
            values = {t: r.value for t, r in rs.items()}
            for part in split_group(values, per_message):
                q = {t: rs[t].quality for t in part if rs[t].quality}
                out.append(Group(ts, ent, gw, part, q))
        i = j
    return out


# ---------------------------------------------------------------------------- publishing

@dataclass
class Summary:
    readings: int = 0
    messages: int = 0
    gateways: int = 0
    duration_s: float = 0.0
    span_ms: int = 0
    bad_rows: int = 0

    @property
    def effective_speed(self) -> float | None:
        """Source time covered / wall time taken."""
        if self.duration_s <= 0 or self.span_ms <= 0:
            return None
        return self.span_ms / 1000.0 / self.duration_s


Connect = Callable[[str, str], GatewayPublisher]


def replay(groups: list[Group], connect: Connect, *, speed: float = 1.0, shift_to_now: bool = False,
           progress: Callable[[int], None] | None = None, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Summary:
    """Publish `groups` in order, paced by their timestamps / speed (0 = no pacing).

    `connect(enterprise, gateway)` returns a connected publisher. Waits for every PUBACK."""
    summary = Summary()
    if not groups:
        return summary
    first_ts = groups[0].ts_ms
    summary.span_ms = groups[-1].ts_ms - first_ts
    shift = int(time.time() * 1000) - first_ts if shift_to_now else 0
    publishers: dict[tuple[str, str], GatewayPublisher] = {}
    try:
        for ent, gw in dict.fromkeys((g.enterprise, g.gateway) for g in groups):
            publishers[(ent, gw)] = connect(ent, gw)
        summary.gateways = len(publishers)
        t0 = clock()
        for g in groups:
            if speed > 0:
                due = t0 + (g.ts_ms - first_ts) / 1000.0 / speed
                wait = due - clock()
                if wait > 0:
                    sleep(wait)
            pub = publishers[(g.enterprise, g.gateway)]
            pub.publish_group(g.ts_ms + shift, g.values, g.q)
            pub.wait_outstanding(200)
            summary.messages += 1
            summary.readings += len(g.values)
            if progress:
                progress(len(g.values))
        for pub in publishers.values():
            pub.flush()
        summary.duration_s = clock() - t0
    finally:
        for pub in publishers.values():
            with contextlib.suppress(Exception):  # closing the rest matters more
                pub.close(timeout=10)
    return summary


def read_credentials(path: Path) -> dict[str, str]:
    """`username:password` lines (mosquitto_passwd's plain-text input); # comments."""
    creds: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReplayError(f"{path}: {exc.strerror}") from exc
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.rpartition(":")
        if not sep or not user:
            raise ReplayError(f"{path}:{n}: expected username:password")
        creds[user] = password
    return creds


def iter_lines(errors: list[RowError], source_name: str) -> Iterator[str]:
    for err in errors:
        yield f"{source_name}: {err}" if err.line else f"{source_name}: {err.field}: {err.message}"
