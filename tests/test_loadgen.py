"""The load generator: a synthetic fleet whose registry imports, and readings that land.

`hazardwatch loadgen` runs as a real process against the project broker while
`hazardwatch serve` stores what arrives; every broker-acknowledged reading must be stored
exactly once. Rates are reported, never asserted as performance; only the pacing's upper
bound (it must not send more than asked) is checked."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time

import orjson
import pytest
from dbutil import fresh_database
from harness import HAZARDWATCH, Serve, scalar, wait_for

from hazardwatch.registry import credit_code_problem, import_file, load_file
from simulators.loadgen import VALUE_CYCLE, Fleet, MessageStream, credit_code


def test_synthetic_credit_codes_are_valid_and_distinct():
    codes = [credit_code(n) for n in range(0, 5000, 7)]
    assert all(credit_code_problem(c) is None for c in codes)
    assert len(set(codes)) == len(codes)


def test_fleet_registry_validates(tmp_path):
    fleet = Fleet.synthetic(23, sensors=60, seed=3)
    path = tmp_path / "fleet.yaml"
    fleet.write_registry(path)
    reg = load_file(path)
    assert len(reg.enterprises) == 3                            # 10 gateways an enterprise
    sensors = [s for e in reg.enterprises for site in e.sites for s in site.sensors]
    assert len(sensors) == 23 * 60
    assert {s.gateway for s in sensors} == {g.gateway for g in fleet.gateways}


def test_message_stream_payloads_follow_the_contract():
    """Pre-encoded payloads: every message carries its chunk of tags with valid values and a
    timestamp strictly after the previous one, even when the clock stands still."""
    spec = Fleet.synthetic(1, sensors=120, seed=5).gateways[0]
    stream = MessageStream(spec, per_message=50)
    seen_ts, seen_tags, bodies = [], [], set()
    for i in range(3 * VALUE_CYCLE * 3):
        payload, n = stream.next(1_700_000_000_000 + i // 7)   # the clock lags the messages
        doc = orjson.loads(payload)
        assert set(doc) == {"ts", "values"}
        assert len(doc["values"]) == n and n in (50, 20)
        assert all(isinstance(v, float) and 20.0 <= v < 40.0 for v in doc["values"].values())
        seen_ts.append(doc["ts"])
        seen_tags.append(tuple(doc["values"]))
        bodies.add(orjson.dumps(doc["values"]))
    assert all(b > a for a, b in zip(seen_ts, seen_ts[1:], strict=False))
    assert seen_tags[:3] == [spec.tags[:50], spec.tags[50:100], spec.tags[100:]]
    assert len(bodies) == VALUE_CYCLE * 3                       # values change message to message


@pytest.mark.slow
def test_loadgen_readings_land_through_serve_exactly(project_broker, tmp_path):
    gateways, processes, rate, duration = 6, 2, 2000, 3
    seed = secrets.randbelow(10_000) + 1                         # own gateway names on the shared broker
    password = secrets.token_hex(8)
    fleet = Fleet.synthetic(gateways, seed=seed)
    for g in fleet.gateways:
        project_broker.add_gateway(g.enterprise, g.gateway, password=password)
    env = {**os.environ, "HW_MQTT__HOST": project_broker.host, "HW_MQTT__PORT": str(project_broker.port),
           "HW_GATEWAY_PASSWORD": password}
    with fresh_database("hw_test_loadgen") as dsn:
        reg = tmp_path / "fleet.yaml"
        out = subprocess.run([HAZARDWATCH, "loadgen", "--gateways", str(gateways), "--seed", str(seed),
                              "--registry-out", str(reg), "--write-only"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert reg.read_text() == fleet.registry_yaml()
        import_file(dsn, reg)
        serve = Serve(dsn, project_broker, tmp_path, HW_MQTT__CLIENT_ID=f"hw-loadgen-{seed}",
                      HW_LOG_LEVEL="WARNING")
        serve.start()
        try:
            t0 = time.monotonic()
            out = subprocess.run([HAZARDWATCH, "loadgen", "--rate", str(rate), "--duration", str(duration),
                                  "--gateways", str(gateways), "--processes", str(processes),
                                  "--seed", str(seed)],
                                 env={**env, "HW_DATABASE_URL": dsn}, capture_output=True, text=True,
                                 timeout=120)
            assert out.returncode == 0, out.stdout + out.stderr
            assert time.monotonic() - t0 >= duration
            lines = out.stdout.splitlines()
            per_process = [ln.split() for ln in lines if re.match(r"^\s+\d+\s", ln)]
            assert [int(p[0]) for p in per_process] == [0, 1]
            assert all(float(p[5].replace(",", "")) > 0 for p in per_process)  # acked/s per process
            total = next(ln.split() for ln in lines if ln.strip().startswith("total"))
            sent, acked = (int(x.replace(",", "")) for x in total[2:4])
            assert sent == acked > 0 and sent % 50 == 0
            assert sent == sum(int(p[3].replace(",", "")) for p in per_process)
            assert sent <= rate * duration * 1.05 + processes * 100   # paced: not more than asked
            m = re.search(r"achieved ([\d,]+) readings/s", out.stdout)
            assert m and int(m.group(1).replace(",", "")) > 0
            # every acknowledged reading is stored, exactly once
            wait_for(lambda: scalar(dsn, "SELECT count(*) FROM readings") >= acked, timeout=30,
                     what=f"{acked} readings stored")
            time.sleep(0.5)
            assert scalar(dsn, "SELECT count(*) FROM readings") == acked
            assert scalar(dsn, "SELECT count(DISTINCT sensor_id) FROM readings") == gateways * 50
            # (the shared broker may hold other tests' retained states: look at ours only)
            ours = sorted({g.enterprise for g in fleet.gateways})
            assert scalar(dsn, "SELECT count(*) FROM dead_letters WHERE enterprise_code = ANY(%s)",
                          (ours,)) == 0
        finally:
            serve.stop()


def test_wait_started_returns_once_every_process_publishes_and_fails_when_one_cannot(project_broker):
    """The benchmarks measure from wait_started(): before it, gateways may still be connecting."""
    from brokers import free_port

    from simulators.loadgen import LoadGen
    from simulators.mqttout import PublishError

    seed = secrets.randbelow(10_000) + 20_000
    password = secrets.token_hex(8)
    fleet = Fleet.synthetic(4, seed=seed)
    for g in fleet.gateways:
        project_broker.add_gateway(g.enterprise, g.gateway, password=password)
    gen = LoadGen(fleet, project_broker.host, project_broker.port, password, rate=2000, duration=1.5,
                  processes=2, start_delay=0.1)
    gen.wait_started(timeout=60)
    assert gen.started.value == 2
    res = gen.wait(timeout=60)
    assert res.errors == [] and res.acked > 0

    nowhere = LoadGen(fleet, "127.0.0.1", free_port(), password, rate=2000, duration=1.5, processes=2)
    with pytest.raises(PublishError, match="load-generator processes publishing"):
        nowhere.wait_started(timeout=60)
    assert nowhere.started.value == 0
    nowhere.wait(timeout=30)
