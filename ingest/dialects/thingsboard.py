"""ThingsBoard gateway and device MQTT APIs, so off-the-shelf gateways connect unchanged.

The broker's hw_identity plugin re-publishes v1/... as tb/<enterprise>/<gateway>/v1/...
(the MQTT username is the gateway's identity), so the topic says who sent it.
gateway telemetry: {"<device>": [{"ts": ms, "values": {"<key>": v}}, {"<key>": v}]} → tag device.key
device telemetry:  {"ts": ms, "values": {...}} | {"<key>": v} | an array of either → tag key
connect/disconnect: {"device": "<name>"} — noted as the gateway being alive.
"""

from __future__ import annotations

from ingest.dialects import (
    Decoded,
    Problem,
    Undecodable,
    add_values,
    keys_shown,
    kind_of,
    loads,
    parse_ts,
    safe_text,
)
from ingest.reasons import Reason

_GATEWAY_TELEMETRY = ("v1", "gateway", "telemetry")
_DEVICE_TELEMETRY = ("v1", "devices", "me", "telemetry")
_GATEWAY_EVENTS = {("v1", "gateway", "connect"), ("v1", "gateway", "disconnect")}


class ThingsBoard:
    name = "thingsboard"
    topics = (
        "tb/+/+/v1/gateway/telemetry",
        "tb/+/+/v1/gateway/connect",
        "tb/+/+/v1/gateway/disconnect",
        "tb/+/+/v1/devices/me/telemetry",
    )

    def matches(self, topic: str) -> bool:
        return topic.startswith("tb/")

    def decode(self, topic: str, payload: bytes, received_ms: float) -> Decoded:
        out = Decoded(self.name)
        parts = topic.split("/")
        api = tuple(parts[3:])
        if len(parts) < 6 or not parts[1] or not parts[2] or (
            api not in (_GATEWAY_TELEMETRY, _DEVICE_TELEMETRY) and api not in _GATEWAY_EVENTS
        ):
            return out.refuse(Reason.BAD_TOPIC, f"not a ThingsBoard telemetry topic: {topic!r}")
        out.enterprise, out.gateway = parts[1], parts[2]
        try:
            doc = loads(payload)
        except Undecodable as exc:
            return out.refuse(Reason.UNDECODABLE, str(exc))
        if api in _GATEWAY_EVENTS:
            if type(doc) is not dict or type(doc.get("device")) is not str:
                return out.refuse(Reason.SCHEMA, 'expected {"device": "<name>"}', "$.device")
            return out
        if api == _DEVICE_TELEMETRY:
            _entries(out, doc, "", "$", received_ms)
            return out
        if type(doc) is not dict:
            return out.refuse(Reason.SCHEMA, f"expected an object of devices, got {kind_of(doc)}", "$")
        for device, entries in doc.items():
            where = f"$.{safe_text(device)}"
            if not device:
                out.problems.append(Problem(Reason.SCHEMA, "empty device name", where))
                continue
            _entries(out, entries, device + ".", where, received_ms)
        return out


def _entries(out: Decoded, doc: object, prefix: str, where: str, received_ms: float) -> None:
    items = doc if type(doc) is list else [doc]
    if type(doc) is list and not doc:
        out.problems.append(Problem(Reason.SCHEMA, "empty array", where))
    for i, item in enumerate(items):
        at = f"{where}[{i}]" if type(doc) is list else where
        if type(item) is not dict:
            out.problems.append(Problem(Reason.SCHEMA, f"expected an object, got {kind_of(item)}", at))
            continue
        if "ts" in item and "values" in item:
            values = item["values"]
            if type(values) is not dict:
                out.problems.append(Problem(Reason.SCHEMA, f"expected an object, got {kind_of(values)}",
                                            f"{at}.values"))
                continue
            if len(item) != 2:
                extra = keys_shown(item.keys() - {"ts", "values"})
                out.refuse_group(Problem(Reason.SCHEMA, f"unknown key(s) {extra}; entry refused", at),
                                 values)
                continue
            ts, problem = parse_ts(item["ts"], f"{at}.ts")
            if problem is not None:
                problem.detail += f"; {len(values)} reading(s) refused"
                out.refuse_group(problem, values)
                continue
            add_values(out, values, ts, None, prefix, at)  # type: ignore[arg-type]
        elif "ts" in item or "values" in item:
            out.refuse_group(Problem(Reason.SCHEMA, 'the timestamped form needs both "ts" and '
                                     '"values" and nothing else; entry refused', at), item)
        else:
            # Short form without ts: ThingsBoard stamps server time; so do we (broker receipt).
            add_values(out, item, received_ms, None, prefix, at)
