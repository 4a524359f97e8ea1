"""Native v1: hw/v1/{enterprise}/{gateway}/readings and .../state (DESIGN.md §4).

readings: {"ts": ms | RFC 3339, "values": {tag: number|bool|null}, "q": {tag: 0..4}, "seq": n}
or an array of such groups. A malformed group refuses that group only.
state: retained "online" / "offline" (also the last-will), or {"state": "online"}.
"""

from __future__ import annotations

import orjson

from ingest.dialects import (
    Decoded,
    Problem,
    Undecodable,
    add_values,
    keys_shown,
    kind_of,
    loads,
    parse_ts,
)
from ingest.reasons import Reason

_GROUP_KEYS = frozenset({"ts", "values", "q", "seq"})
_STATES = {b"online": True, b"offline": False}


class NativeV1:
    name = "native"
    topics = ("hw/v1/+/+/readings", "hw/v1/+/+/state")

    def matches(self, topic: str) -> bool:
        return topic.startswith("hw/v1/")

    def decode(self, topic: str, payload: bytes, received_ms: float) -> Decoded:
        out = Decoded(self.name)
        parts = topic.split("/")
        if len(parts) != 5 or parts[4] not in ("readings", "state") or not parts[2] or not parts[3]:
            return out.refuse(Reason.BAD_TOPIC, f"expected hw/v1/<enterprise>/<gateway>/readings|state, got {topic!r}")
        out.enterprise, out.gateway = parts[2], parts[3]
        if parts[4] == "state":
            return _decode_state(out, payload)
        try:
            doc = loads(payload)
        except Undecodable as exc:
            return out.refuse(Reason.UNDECODABLE, str(exc))
        if type(doc) is dict:
            _group(out, doc, "$", received_ms)
        elif type(doc) is list:
            if not doc:
                return out.refuse(Reason.SCHEMA, "empty array", "$")
            for i, group in enumerate(doc):
                _group(out, group, f"$[{i}]", received_ms)
        else:
            return out.refuse(Reason.SCHEMA, f"expected an object or an array of objects, got {kind_of(doc)}", "$")
        return out


def _group(out: Decoded, group: object, where: str, received_ms: float) -> None:
    if type(group) is not dict:
        out.problems.append(Problem(Reason.SCHEMA, f"expected an object, got {kind_of(group)}", where))
        return
    values = group.get("values")
    if type(values) is not dict:
        detail = "missing" if values is None else f"expected an object, got {kind_of(values)}"
        out.problems.append(Problem(Reason.SCHEMA, detail, f"{where}.values"))
        return
    extra = group.keys() - _GROUP_KEYS
    if extra:
        out.refuse_group(Problem(Reason.SCHEMA, f"unknown key(s) {keys_shown(extra)}; group refused",
                                 where), values)
        return
    if "ts" not in group:
        out.refuse_group(Problem(Reason.SCHEMA, "missing", f"{where}.ts"), values)
        return
    ts, problem = parse_ts(group["ts"], f"{where}.ts")
    if problem is not None:
        problem.detail += f"; {len(values)} reading(s) refused"
        out.refuse_group(problem, values)
        return
    quality = group.get("q")
    if quality is not None and type(quality) is not dict:
        out.refuse_group(Problem(Reason.SCHEMA, f"expected an object, got {kind_of(quality)}",
                                 f"{where}.q"), values)
        return
    seq = group.get("seq")
    if type(seq) is float and seq.is_integer():
        seq = int(seq)
    if seq is not None:
        if type(seq) is int and 0 <= seq < 2**63:
            out.seq = seq
        else:
            out.problems.append(Problem(Reason.SCHEMA, "expected a non-negative integer (ignored)", f"{where}.seq"))
    add_values(out, values, ts, quality, "", where)  # type: ignore[arg-type]


def _decode_state(out: Decoded, payload: bytes) -> Decoded:
    text = payload.strip()
    if text in _STATES:
        out.online = _STATES[text]
        return out
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return out.refuse(Reason.SCHEMA, 'state must be "online" or "offline"', "$")
    state = doc.get("state") if type(doc) is dict else doc
    if state in ("online", "offline"):
        out.online = state == "online"
        return out
    return out.refuse(Reason.SCHEMA, 'state must be "online" or "offline"', "$.state")
