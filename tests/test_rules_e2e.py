"""Rules end to end: readings over MQTT → graded warning rows; a restart mid-episode neither
duplicates the warning nor forgets the trend."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import psycopg
import pytest
from dbutil import fresh_database
from harness import Site, wait_for

pytestmark = pytest.mark.slow

REGISTRY = Path(__file__).parent / "data" / "registry_e2e.yaml"
ENT = "91370105MA3C000043"
TOPIC = f"hw/v1/{ENT}/gw-e2e/readings"


def warnings_of(dsn: str, cause: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT id, level, active, count, kind, detail FROM warnings WHERE cause = %s ORDER BY id",
            (cause,)).fetchall()


def alarms_of(dsn: str, warning_id: int) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT a.id, s.tag, a.condition, a.active, extract(epoch FROM a.raised_at)::float8, a.detail "
            "FROM alarms a JOIN sensors s ON s.id = a.sensor_id WHERE warning_id = %s ORDER BY a.id",
            (warning_id,)).fetchall()


def publish_series(site: Site, points: list[tuple[float, float]], tag: str = "TK1.LT") -> None:
    gw = site.gateway(ENT, "gw-e2e", client_id=f"rules-{time.monotonic_ns()}")
    try:
        for ts_s, value in points:
            gw.publish(TOPIC, orjson.dumps({"ts": int(ts_s * 1000), "values": {tag: value}}))
    finally:
        gw.close()


@pytest.fixture
def site(project_broker, tmp_path):
    with fresh_database("hw_test_rules") as dsn:
        s = Site(dsn, project_broker, tmp_path, f"hw-ingest-rules-{time.monotonic_ns()}", REGISTRY,
                 [(ENT, "gw-e2e")])
        s.serve.start()
        try:
            yield s
        finally:
            s.serve.stop()


def test_level_over_h_then_hh_raises_one_warning_that_rises_and_survives_restart(site):
    t0 = time.time() - 600
    # TK1.LT: H 16, HH 18 (registry). Above H long enough for any on-delay in the pack.
    publish_series(site, [(t0 + 10 * i, 16.5) for i in range(6)])
    (wid, level, active, count, kind, _), = wait_for(
        lambda: warnings_of(site.dsn, "overfill"), timeout=15, what="overfill warning")
    assert (level, active, count, kind) == (2, True, 1, "process")  # yellow on a grade-2 source
    h_alarm = alarms_of(site.dsn, wid)
    assert [(tag, cond, act) for _, tag, cond, act, _, _ in h_alarm] == [("TK1.LT", "h", True)]

    site.serve.stop()
    site.serve.start()

    publish_series(site, [(t0 + 100 + 10 * i, 18.6) for i in range(6)])
    wait_for(lambda: warnings_of(site.dsn, "overfill")[0][1] == 3, timeout=15, what="orange")
    rows = warnings_of(site.dsn, "overfill")
    assert len(rows) == 1 and rows[0][0] == wid and rows[0][3] == 1   # same episode, no repeat
    alarms = alarms_of(site.dsn, wid)
    conds = [(tag, cond, act) for _, tag, cond, act, _, _ in alarms]
    assert conds.count(("TK1.LT", "h", True)) == 1, conds   # the restored H alarm was not re-raised
    assert ("TK1.LT", "hh", True) in conds

    # back to normal: the alarms clear and the warning goes inactive, level kept (never falls)
    publish_series(site, [(t0 + 200 + 10 * i, 10.0) for i in range(6)])
    wait_for(lambda: warnings_of(site.dsn, "overfill")[0][2] is False, timeout=15, what="cleared")
    assert warnings_of(site.dsn, "overfill")[0][1] == 3
    assert not any(act for _, _, _, act, _, _ in alarms_of(site.dsn, wid))


def test_trend_continues_across_a_restart(site):
    """A slow ramp towards HH: the projection needs history from before the restart."""
    t0 = time.time() - 1200
    rate = 0.005  # m/s; HH 18 is reached at value 18, i.e. 2000 s after 8.0
    publish_series(site, [(t0 + t, 8.0 + rate * t) for t in range(0, 1001, 10)])
    time.sleep(1.5)
    assert warnings_of(site.dsn, "overfill") == []  # 1000 s left: beyond the 900 s lead
    site.serve.stop()
    site.serve.start()
    # three readings spanning 20 s: too little on their own to fit a slope
    publish_series(site, [(t0 + t, 8.0 + rate * t) for t in (1090, 1100, 1110)])
    (wid, level, active, _, _, detail), = wait_for(
        lambda: warnings_of(site.dsn, "overfill"), timeout=15, what="trend warning after restart")
    alarms = alarms_of(site.dsn, wid)
    assert [(tag, cond) for _, tag, cond, _, _, _ in alarms] == [("TK1.LT", "trend_hh")]
    raised_at, alarm_detail = alarms[0][4], alarms[0][5]
    hh_time = t0 + (18.0 - 8.0) / rate
    assert raised_at < hh_time                       # warned before HH
    assert abs(alarm_detail["projected_s"] - (hh_time - raised_at)) < 0.2 * (hh_time - raised_at)
    assert detail["trend"]["projected_s"] == alarm_detail["projected_s"]
    assert active and level == 1                     # blue: a projection, nothing crossed yet


def test_last_will_raises_one_interruption_warning_and_reconnect_clears_it(site):
    """联网中断: the broker's last-will marks the gateway offline → one data_interruption
    warning with an `offline` alarm of that gateway; `online` again clears it."""
    state = f"hw/v1/{ENT}/gw-e2e/state"
    gw = site.gateway(ENT, "gw-e2e", client_id="rules-will", will_topic=state)
    gw.publish(state, b"online", retain=True)
    gw.client.socket().close()  # drop the link without DISCONNECT: the broker sends the will
    gw.client.loop_stop()

    def offline_alarms():
        with psycopg.connect(site.dsn) as conn:
            return conn.execute(
                "SELECT w.id, w.level, w.kind, a.active FROM warnings w JOIN alarms a ON a.warning_id = w.id "
                "JOIN gateways g ON g.id = a.gateway_id WHERE g.code = 'gw-e2e' AND a.condition = 'offline' "
                "AND w.cause = 'data_interruption'").fetchall()

    (wid, level, kind, active), = wait_for(offline_alarms, timeout=30, what="offline alarm")
    assert (kind, active, level) == ("data_interruption", True, 2)  # yellow on a grade-2 source
    assert warnings_of(site.dsn, "overfill") == []                  # never taken for process danger

    again = site.gateway(ENT, "gw-e2e", client_id="rules-will-2", will_topic=state)
    try:
        again.publish(state, b"online", retain=True)
        wait_for(lambda: offline_alarms()[0][3] is False, timeout=15, what="offline cleared")
    finally:
        again.close()
    assert [r[0] for r in offline_alarms()] == [wid]                # one episode, one alarm row
