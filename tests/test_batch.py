"""Batch assembly: tag resolution, future/range checks, duplicates, problems per message."""

from __future__ import annotations

import numpy as np
import orjson

from ingest.batch import PG_EPOCH_MS, Batch, Message
from ingest.dialects.native import NativeV1
from ingest.reasons import Reason
from ingest.registry_cache import RegistryCache

NOW = 1_795_000_000_000.0
A, B = "91370105MA3C00001X", "91370112MA3C00002Y"


def cache() -> RegistryCache:
    c = RegistryCache(version=1)
    c.gateways = {(A, "gw-01"): 1, (B, "gw-01"): 2}
    c.tags = {A: {"LT": 1, "TT": 2}, B: {"PT": 3}}
    c.tag_owner = {"LT": A, "TT": A, "PT": B}
    c.range_lo = np.array([0, 0, -40, 0.0])
    c.range_hi = np.array([0, 20, 120, 1.6])
    return c


def message(ent: str, doc, gw: str = "gw-01") -> Message:
    topic = f"hw/v1/{ent}/{gw}/readings"
    payload = orjson.dumps(doc)
    return Message(topic, payload, NOW, NativeV1().decode(topic, payload, NOW))


def batch() -> Batch:
    return Batch(cache(), max_future_ms=300_000, max_readings=10)


def test_resolves_tags_and_converts_time():
    b = batch()
    b.add("m1", message(A, {"ts": NOW, "values": {"LT": 5.0, "TT": 20.0}}))
    cols = b.finalize(NOW)
    assert cols.sensor_id.tolist() == [1, 2]
    assert cols.ts_us.tolist() == [int((NOW - PG_EPOCH_MS) * 1000)] * 2
    assert cols.quality.tolist() == [0, 0]
    assert b.dead_letters() == [] and b.seen == {1: NOW}


def test_unknown_and_foreign_tags_are_refused_and_listed_pending():
    b = batch()
    b.add("m1", message(A, {"ts": NOW, "values": {"LT": 1.0, "PT": 0.3, "NEW.TAG": 4}}))
    cols = b.finalize(NOW)
    assert cols.sensor_id.tolist() == [1]
    m = b.messages[0]
    assert [(p.reason, p.tag) for p in m.decoded.problems] == [
        (Reason.FOREIGN_TAG, "PT"), (Reason.UNKNOWN_TAG, "NEW.TAG")]
    assert (m.accepted, m.rejected) == (1, 2)
    assert set(b.pending) == {(A, "gw-01", "PT"), (A, "gw-01", "NEW.TAG")}


def test_unknown_gateway_refuses_message_and_lists_its_tags():
    b = batch()
    b.add("m1", message(A, {"ts": NOW, "values": {"LT": 1.0}}, gw="gw-99"))
    assert len(b.finalize(NOW)) == 0
    assert b.messages[0].decoded.problems[0].reason == Reason.UNKNOWN_GATEWAY
    assert (A, "gw-99", "LT") in b.pending


def test_future_refused_out_of_range_stored_bad():
    b = batch()
    b.add("m1", message(A, {"ts": NOW + 600_000, "values": {"LT": 1.0}}))
    b.add("m2", message(A, {"ts": NOW, "values": {"LT": 25.0, "TT": 20.0}}))
    cols = b.finalize(NOW)
    assert cols.sensor_id.tolist() == [1, 2]
    assert cols.value.tolist() == [25.0, 20.0]
    assert cols.quality.tolist() == [2, 0]
    m1, m2 = b.messages
    assert m1.decoded.problems[0].reason == Reason.FUTURE_TIMESTAMP and (m1.accepted, m1.rejected) == (0, 1)
    assert m2.decoded.problems[0].reason == Reason.OUT_OF_RANGE and (m2.accepted, m2.rejected) == (2, 0)
    assert b.rejection_counts() == {Reason.FUTURE_TIMESTAMP: 1, Reason.OUT_OF_RANGE: 1}


def test_duplicates_in_a_batch_keep_the_first():
    b = batch()
    b.add("m1", message(A, {"ts": NOW, "values": {"LT": 1.0}}))
    b.add("m2", message(A, [{"ts": NOW, "values": {"LT": 9.0}}, {"ts": NOW + 1000, "values": {"LT": 2.0}}]))
    cols = b.finalize(NOW)
    assert cols.value.tolist() == [1.0, 2.0]


def test_null_values_and_too_many_readings():
    b = batch()
    b.add("m1", message(A, {"ts": NOW, "values": {"LT": None}}))
    b.add("m2", message(A, {"ts": NOW, "values": {f"X{i}": 1 for i in range(11)}}))
    cols = b.finalize(NOW)
    assert cols.null.tolist() == [True] and np.isnan(cols.value[0]) and cols.quality.tolist() == [2]
    assert b.messages[1].decoded.problems[0].reason == Reason.TOO_MANY_READINGS
    assert b.messages[1].rejected == 11
