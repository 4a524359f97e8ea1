"""Hot-path decoders: accepted shapes, and a precise reason for everything refused."""

from __future__ import annotations

import orjson
import pytest

from ingest.dialects.native import NativeV1
from ingest.dialects.thingsboard import ThingsBoard
from ingest.reasons import Reason

NOW = 1_795_000_000_000.0
ENT, GW = "91370105MA3C00001X", "gw-01"
READINGS = f"hw/v1/{ENT}/{GW}/readings"
TB_GW = f"tb/{ENT}/{GW}/v1/gateway/telemetry"
TB_DEV = f"tb/{ENT}/{GW}/v1/devices/me/telemetry"


def native(doc, topic=READINGS):
    return NativeV1().decode(topic, doc if isinstance(doc, bytes) else orjson.dumps(doc), NOW)


def reasons(d):
    return [(str(p.reason), p.tag) for p in d.problems]


def test_native_group_with_quality_null_and_bool():
    d = native({"ts": 1_795_000_000_123, "values": {"A.LT": 12.31, "A.TT": None, "A.RUN": True},
                "q": {"A.LT": 1}, "seq": 7})
    assert (d.enterprise, d.gateway, d.seq) == (ENT, GW, 7)
    assert d.tags == ["A.LT", "A.TT", "A.RUN"]
    assert d.values == [12.31, None, 1.0]
    assert d.quality == [1, 2, 0]  # null without q: bad
    assert d.ts_ms == [1_795_000_000_123.0] * 3
    assert not d.problems and not d.rejected


def test_native_rfc3339_and_array_of_groups():
    d = native([{"ts": "2026-11-22T08:00:00Z", "values": {"A": 1}},
                {"ts": "2026-11-22T16:00:00.5+08:00", "values": {"A": 2}}])
    assert d.ts_ms == [1_795_334_400_000.0, 1_795_334_400_500.0]


def test_native_bad_reading_keeps_neighbours():
    d = native({"ts": 1_795_000_000_000, "values": {"A": 1.5, "B": "12", "C": [1], "D": 2},
                "q": {"D": 9}})
    assert d.tags == ["A"]
    assert reasons(d) == [("not_a_number", "B"), ("not_a_number", "C"), ("bad_quality", "D")]
    assert d.dropped == 3 and not d.rejected


@pytest.mark.parametrize("raw", [b"1e400", b"NaN", b"-Infinity"])
def test_non_finite_literal_refuses_that_reading_only(raw):
    d = native(b'{"ts": 1795000000000, "values": {"A": ' + raw + b', "B": 1}}')
    assert d.tags == ["B"]
    assert reasons(d) == [("not_a_number", "A")]


@pytest.mark.parametrize("ts, hint", [
    (1_795_000_000, "looks like epoch seconds"),
    ("2026-11-22T08:00:00", "no UTC offset"),
    ("yesterday", "not RFC 3339"),
    ({"a": 1}, "expected epoch ms or RFC 3339"),
    (12, "before 2000-01-01"),
])
def test_native_bad_timestamp_refuses_group_only(ts, hint):
    d = native([{"ts": ts, "values": {"A": 1, "B": 2}}, {"ts": 1_795_000_000_000, "values": {"C": 3}}])
    assert d.tags == ["C"]
    assert [str(p.reason) for p in d.problems] == ["bad_timestamp"]
    assert hint in d.problems[0].detail and d.problems[0].field == "$[0].ts"
    assert d.dropped == 2


@pytest.mark.parametrize("payload, reason, field", [
    (b"\xff\xfe not json", Reason.UNDECODABLE, None),
    (b'{"ts": 1795000000000, "values": {"A": 1', Reason.UNDECODABLE, None),
    (b'"online"', Reason.SCHEMA, "$"),
    (b"[]", Reason.SCHEMA, "$"),
])
def test_native_message_level_refusals(payload, reason, field):
    d = native(payload)
    assert d.rejected and d.problems[0].reason == reason and d.problems[0].field == field


@pytest.mark.parametrize("group, field", [
    ({"values": {"A": 1}}, "$.ts"),
    ({"ts": 1_795_000_000_000}, "$.values"),
    ({"ts": 1_795_000_000_000, "values": [1, 2]}, "$.values"),
    ({"ts": 1_795_000_000_000, "values": {"A": 1}, "extra": 1}, "$"),
    ({"ts": 1_795_000_000_000, "values": {"A": 1}, "q": [0]}, "$.q"),
])
def test_native_group_shape_errors_name_the_field(group, field):
    d = native(group)
    assert d.tags == [] and d.problems[0].reason == Reason.SCHEMA and d.problems[0].field == field


def test_native_topic_and_state():
    assert native({"ts": 1, "values": {}}, topic="hw/v1/x/readings").problems[0].reason == Reason.BAD_TOPIC
    on = NativeV1().decode(f"hw/v1/{ENT}/{GW}/state", b"online", NOW)
    off = NativeV1().decode(f"hw/v1/{ENT}/{GW}/state", b'{"state": "offline"}', NOW)
    bad = NativeV1().decode(f"hw/v1/{ENT}/{GW}/state", b"maybe", NOW)
    assert on.online is True and off.online is False
    assert bad.rejected and bad.problems[0].reason == Reason.SCHEMA


def test_thingsboard_gateway_telemetry_maps_device_key_to_tag():
    doc = {"TK101": [{"ts": 1_795_000_000_000, "values": {"LT": 12.3, "TT": 25}},
                     {"PT": 101.2}],
           "TK102": [{"ts": 1_795_000_001_000, "values": {"LT": 3}}]}
    d = ThingsBoard().decode(TB_GW, orjson.dumps(doc), NOW)
    assert (d.enterprise, d.gateway) == (ENT, GW)
    assert d.tags == ["TK101.LT", "TK101.TT", "TK101.PT", "TK102.LT"]
    assert d.ts_ms == [1_795_000_000_000.0, 1_795_000_000_000.0, NOW, 1_795_000_001_000.0]
    assert not d.problems


def test_thingsboard_device_telemetry_forms():
    tb = ThingsBoard()
    a = tb.decode(TB_DEV, b'{"ts": 1795000000000, "values": {"LT": 1}}', NOW)
    b = tb.decode(TB_DEV, b'{"LT": 2, "TT": false}', NOW)
    c = tb.decode(TB_DEV, b'[{"ts": 1795000000000, "values": {"LT": 3}}, {"PT": 4}]', NOW)
    assert a.tags == ["LT"] and b.tags == ["LT", "TT"] and b.values == [2.0, 0.0]
    assert c.tags == ["LT", "PT"] and c.ts_ms == [1_795_000_000_000.0, NOW]


def test_thingsboard_refusals():
    tb = ThingsBoard()
    assert tb.decode("tb/x/v1/gateway/telemetry", b"{}", NOW).problems[0].reason == Reason.BAD_TOPIC
    arr = tb.decode(TB_GW, b"[1]", NOW)
    assert arr.rejected and arr.problems[0].reason == Reason.SCHEMA
    mixed = tb.decode(TB_GW, b'{"D": [{"ts": 5, "values": {"A": 1}}, {"ts": 1795000000000, "values": {"B": 1}}]}', NOW)
    assert mixed.tags == ["D.B"] and mixed.problems[0].reason == Reason.BAD_TIMESTAMP
    conn = tb.decode(f"tb/{ENT}/{GW}/v1/gateway/connect", b'{"device": "TK101"}', NOW)
    assert not conn.problems and conn.tags == []
