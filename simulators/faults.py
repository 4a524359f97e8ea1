"""Faults on a sensor (applied to its series) or on a gateway (applied to its messages).

Sensor faults: spike, drift, stuck, noise (burst), dropout.
Gateway faults: gateway_offline (the link drops without DISCONNECT, so the broker fires the
last-will; the gateway reconnects at the end), clock_skew, duplicate, out_of_order,
malformed. All deterministic from the rng handed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

SENSOR_FAULTS = ("spike", "drift", "stuck", "noise", "dropout")
GATEWAY_FAULTS = ("gateway_offline", "clock_skew", "duplicate", "out_of_order", "malformed")

# Faults that legitimately open a warning, and its cause in the rule packs; the level and
# whether the engine can see the fault at all follow from the packs (Scenario._fault_truth).
FAULT_TRUTH = {
    "gateway_offline": "data_interruption",
    "stuck": "sensor_fault",
    "dropout": "data_interruption",
    "clock_skew": "data_interruption",
}


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float
    duration: float
    target: str                   # a tag (sensor faults) or a gateway id (gateway faults)
    params: Mapping[str, float] = field(default_factory=dict)


def apply_sensor_fault(t: np.ndarray, v: np.ndarray, fault: Fault, span: float,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The series with `fault` applied (new arrays)."""
    v = v.astype(float).copy()
    win = (t >= fault.at) & (t < fault.at + fault.duration)
    if fault.kind == "spike":
        idx = np.flatnonzero(t >= fault.at)[:1]
        v[idx] += float(fault.params.get("size", 0.4 * span))
    elif fault.kind == "drift":
        total = float(fault.params.get("size", 0.1 * span))
        v[win] += total * (t[win] - fault.at) / max(fault.duration, 1.0)
    elif fault.kind == "stuck":
        idx = np.flatnonzero(win)
        if idx.size:
            v[idx] = v[idx[0]]
    elif fault.kind == "noise":
        v[win] += rng.normal(0, float(fault.params.get("sigma", 0.05 * span)), int(win.sum()))
    elif fault.kind == "dropout":
        return t[~win], v[~win]
    else:
        raise ValueError(f"{fault.kind} is not a sensor fault ({', '.join(SENSOR_FAULTS)})")
    return t, v


MALFORMED = (
    b'{"ts": 1732262400000, "values": {"X.PV": 1.0',      # truncated JSON
    b'{"ts": 1732262400, "values": {}}',                    # epoch seconds, refused
    b'{"values": {"X.PV": 1.0}}',                           # no ts
    b'{"ts": 1732262400000, "values": {"X.PV": "high"}}',   # a string value
    b'{"ts": 1732262400000, "values": {"X.PV": NaN}}',      # NaN is not JSON
    b'[]',                                                  # an empty array
)


@dataclass
class Message:
    """One MQTT publish of a gateway's plan: `at` is scenario seconds when it is sent."""

    at: float
    payload: bytes
    readings: int
    action: str = "publish"   # publish | drop (link lost, will fires) | reconnect


def apply_gateway_faults(messages: list[Message], faults: list[Fault],
                         rng: np.random.Generator) -> list[Message]:
    """Messages as the broker sees them, plus drop/reconnect actions, sorted by send time.

    clock_skew is applied while building the payloads (it changes `ts`), not here.
    """
    out: list[Message] = []
    for m in messages:
        hit = {f.kind: f for f in faults if f.at <= m.at < f.at + f.duration}
        if "gateway_offline" in hit:
            continue                            # lost: the gateway has no link
        if "malformed" in hit and rng.random() < float(hit["malformed"].params.get("share", 0.3)):
            out.append(Message(m.at, MALFORMED[int(rng.integers(len(MALFORMED)))], 0))
            continue
        out.append(m)
        if "duplicate" in hit:
            out.append(Message(m.at + 0.001, m.payload, m.readings))
    for f in faults:
        if f.kind == "out_of_order":
            idx = [i for i, m in enumerate(out) if f.at <= m.at < f.at + f.duration]
            for k in range(0, len(idx) - 1, 2):     # swap neighbours: later batch sent first
                a, b = idx[k], idx[k + 1]
                out[a].payload, out[b].payload = out[b].payload, out[a].payload
                out[a].readings, out[b].readings = out[b].readings, out[a].readings
        elif f.kind == "gateway_offline":
            out.append(Message(f.at, b"", 0, "drop"))
            out.append(Message(f.at + f.duration, b"", 0, "reconnect"))
        elif f.kind not in GATEWAY_FAULTS:
            raise ValueError(f"{f.kind} is not a gateway fault ({', '.join(GATEWAY_FAULTS)})")
    # a reconnect goes before a message of the same instant: that message is after the
    # outage window, so it is sent on the new link
    out.sort(key=lambda m: (m.at, m.action != "reconnect"))
    return out
