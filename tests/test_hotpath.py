"""The ingest hot path's fast lanes (docs/performance.md) behave exactly like the slow ones.

Each shortcut is compared with the general code it bypasses, on generated input: the bulk
decode of plain groups, the one-reading-per-sensor lane of rule evaluation, and the
collector's read-ahead MQTT client against the real broker.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import ingest.dialects as dialects
from ingest.collector import _ReadAheadClient
from rules.conditions import Params, State, evaluate
from rules.model import SensorRules

# ---- decode: bulk lane == per-reading lane --------------------------------------------------

_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(10**400), max_value=10**400),
    st.booleans(), st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2))
_keys = st.one_of(st.text(min_size=0, max_size=3), st.text(min_size=120, max_size=135))


def _decode(values: dict, prefix: str, quality: dict | None, *, bulk: bool) -> tuple:
    out = dialects.Decoded("native")
    original = dialects._plain
    if not bulk:
        dialects._plain = lambda values, prefix_len: None
    try:
        dialects.add_values(out, values, 1_795_000_000_000.0, quality, prefix, "$")
    finally:
        dialects._plain = original
    vals = [("nan" if isinstance(v, float) and math.isnan(v) else v) for v in out.values]
    return (out.tags, out.ts_ms, vals, [type(v) for v in out.values], out.quality, out.dropped,
            [p.as_json() for p in out.problems])


@settings(max_examples=400, deadline=None)
@given(values=st.dictionaries(_keys, _values, max_size=8), prefix=st.sampled_from(["", "DEV."]),
       quality=st.one_of(st.none(), st.just({}), st.dictionaries(st.text(max_size=3), st.integers(-1, 5))))
def test_bulk_decode_equals_per_reading_decode(values, prefix, quality):
    assert _decode(values, prefix, quality, bulk=True) == _decode(values, prefix, quality, bulk=False)


def test_bulk_decode_is_taken_for_plain_groups_only():
    assert dialects._plain({"A.T": 1.5, "A.P": 2}, 0) is not None
    for refused in ({"A": float("nan")}, {"A": 10**400}, {"A": True}, {"A": None}, {"": 1.0},
                    {"x" * 129: 1.0}, {"A": 1e308, "B": 1e308}):
        assert dialects._plain(refused, 0) is None, refused
    assert dialects._plain({"x" * 125: 1.0}, 4) is None  # with the prefix it is too long


# ---- rules: one-reading-per-slot lane == sorted rounds --------------------------------------

def _rules(n: int) -> Params:
    rng = np.random.default_rng(n)
    rules = []
    for i in range(n):
        rules.append(SensorRules(
            hh=80.0, h=60.0, l=10.0, ll=5.0, deadband=1.0, on_delay_s=float(rng.choice([0, 5])),
            off_delay_s=float(rng.choice([0, 5])), rate_rise_per_min=30.0, rate_fall_per_min=30.0,
            rate_tau_s=20.0, trend_tau_s=60.0 if i % 2 else np.nan, trend_lead_s=120.0,
            deviation=bool(i % 3 == 0), deviation_warmup=5, stuck_window_s=30.0, stuck_eps=0.01,
            range_lo=0.0, range_hi=100.0, interval_s=1.0))
    return Params.from_rules(rules)


def test_one_reading_per_sensor_lane_matches_the_sorted_rounds(monkeypatch):
    n = 40
    params = _rules(n)
    fast, slow = State(n), State(n)
    rng = np.random.default_rng(7)
    level = rng.uniform(20, 50, n)
    fired = 0
    for step in range(300):
        slots = rng.permutation(n)[: rng.integers(1, n + 1)]     # unique, shuffled
        level[slots] += rng.normal(0, 4, len(slots))
        ts = 1_000.0 + step + rng.uniform(0, 0.5, len(slots))
        value = np.clip(level[slots], -5, 110)
        quality = rng.choice(np.array([0, 0, 0, 0, 2, 4], dtype=np.int16), len(slots))
        got = evaluate(fast, params, slots, ts, value, quality, 2_000.0 + step)
        with monkeypatch.context() as m:
            m.setattr(State, "one_per_slot", lambda self, s: False)
            want = evaluate(slow, params, slots, ts, value, quality, 2_000.0 + step)
        assert [(t.slot, t.cond, t.raised, t.ts, t.value, t.detail) for t in got] == \
               [(t.slot, t.cond, t.raised, t.ts, t.value, t.detail) for t in want]
        fired += len(got)
    assert fired > 50  # the comparison saw raises and clears, not silence
    assert np.array_equal(fast.flags, slow.flags)
    for f in State._FLOATS:
        np.testing.assert_array_equal(getattr(fast, f), getattr(slow, f))
    np.testing.assert_array_equal(fast.rate_fit.data, slow.rate_fit.data)
    np.testing.assert_array_equal(fast.trend_fit.data, slow.trend_fit.data)


def test_one_per_slot_detects_repeats():
    state = State(10)
    assert state.one_per_slot(np.array([3, 1, 7], dtype=np.int64))
    assert not state.one_per_slot(np.array([3, 1, 3], dtype=np.int64))
    assert state.one_per_slot(np.array([5], dtype=np.int64))


# ---- the collector's read-ahead MQTT client, on the real broker --------------------------------

def _subscriber(broker, client_id: str, got: list, ready: threading.Event, *, ack: bool = True):
    c = _ReadAheadClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=True)
    c.username_pw_set(broker.collector.username, broker.collector.password)

    def on_message(client, userdata, msg):
        got.append((msg.topic, msg.payload, msg.dup, msg.mid))
        if ack:
            client.ack(msg.mid, msg.qos)

    c.on_message = on_message
    c.on_subscribe = lambda *a: ready.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    props.ReceiveMaximum = 500
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    c.loop_start()
    return c


@pytest.mark.timeout(60)
def test_read_ahead_client_delivers_bursts_and_large_messages_intact(project_broker):
    ent, gw = "91370105MA3C0RDAH1", "gw-ra"
    creds = project_broker.add_gateway(ent, gw)
    topic = f"hw/v1/{ent}/{gw}/readings"
    got: list = []
    ready = threading.Event()
    sub = _subscriber(project_broker, "hotpath-readahead", got, ready)
    sub.subscribe(f"hw/v1/{ent}/+/readings", qos=1)
    assert ready.wait(10)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hotpath-pub", protocol=mqtt.MQTTv5)
    pub.username_pw_set(creds.username, creds.password)
    pub.max_inflight_messages_set(1000)
    pub.connect(project_broker.host, project_broker.port)
    pub.loop_start()
    try:
        # many small packets land in one recv(); a 200 KB one spans several
        payloads = [b'{"i":%d,"pad":"%s"}' % (i, b"x" * (i % 97)) for i in range(800)]
        payloads.insert(400, b"L" * 200_000)
        infos = [pub.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(20)
        deadline = time.monotonic() + 20
        while len(got) < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for _, p, _, _ in got] == payloads           # all, once, in order, intact
        assert not any(dup for _, _, dup, _ in got)
        # a new connection starts with an empty read-ahead buffer, and nothing acknowledged
        # comes back (the acks went out while packets were being read ahead)
        sub.disconnect()
        sub.loop_stop()
        got.clear()
        ready.clear()
        sub = _subscriber(project_broker, "hotpath-readahead", got, ready)
        time.sleep(1.0)
        pub.publish(topic, b"after-reconnect", qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for _, p, _, _ in got] == [b"after-reconnect"]
    finally:
        sub.disconnect()
        sub.loop_stop()
        pub.disconnect()
        pub.loop_stop()


@pytest.mark.timeout(60)
def test_ack_many_acknowledges_exactly_the_messages_named(project_broker):
    """The collector's batched PUBACKs: the broker forgets exactly the acknowledged
    messages and redelivers the rest (DUP set) on the persistent session."""
    ent, gw = "91370105MA3C0ACKM3", "gw-ack"
    creds = project_broker.add_gateway(ent, gw)
    topic = f"hw/v1/{ent}/{gw}/readings"
    got: list = []
    ready = threading.Event()
    sub = _subscriber(project_broker, "hotpath-ackmany", got, ready, ack=False)
    sub.subscribe(f"hw/v1/{ent}/+/readings", qos=1)
    assert ready.wait(10)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hotpath-ack-pub", protocol=mqtt.MQTTv5)
    pub.username_pw_set(creds.username, creds.password)
    pub.connect(project_broker.host, project_broker.port)
    pub.loop_start()
    try:
        payloads = [b"m%d" % i for i in range(300)]
        for info in [pub.publish(topic, p, qos=1) for p in payloads]:
            info.wait_for_publish(20)
        deadline = time.monotonic() + 20
        while len(got) < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for _, p, _, _ in got] == payloads
        acked = {p for _, p, _, _ in got[:130]} | {p for _, p, _, _ in got[200:]}
        sub.ack_many([mid for _, p, _, mid in got if p in acked])    # two runs, one write
        time.sleep(0.5)
        sub.disconnect()
        sub.loop_stop()
        got.clear()
        ready.clear()
        sub = _subscriber(project_broker, "hotpath-ackmany", got, ready)
        deadline = time.monotonic() + 10
        while len(got) < 70 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)                                            # and nothing more comes
        assert [p for _, p, _, _ in got] == payloads[130:200]
        assert all(dup for _, _, dup, _ in got)
    finally:
        sub.disconnect()
        sub.loop_stop()
        pub.disconnect()
        pub.loop_stop()
