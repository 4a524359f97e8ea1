"""The alertmanager receiver against the real Prometheus Alertmanager (Debian package
prometheus-alertmanager), started on a free loopback port with a minimal configuration.

Alertmanager is also configured with a webhook receiver pointing at a local HTTP server,
so the test sees what Alertmanager itself notifies: firing, then resolved with endsAt.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from alertdata import (  # noqa: F401  (dsn_fixture: the dsn fixture)
    ENTERPRISE,
    add_event,
    alerting,
    connect,
    db_now,
    dsn_fixture,
    make_warning,
)
from brokers import free_port
from httpsink import HttpSink

from alerting.notification import parse_time
from alerting.outbox import dispatch_once, refresh_open
from alerting.receivers import build_all
from hazardwatch.settings import ReceiverSettings

BINARY = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"

pytestmark = pytest.mark.skipif(
    not os.access(BINARY, os.X_OK),
    reason=f"{BINARY} not installed (apt-get install -y prometheus-alertmanager; .ci/run does)")


class Alertmanager:
    def __init__(self, tmp: Path, webhook_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "alertmanager.yml"
        config.write_text(
            "route:\n"
            "  receiver: sink\n"
            "  group_by: [warning_id]\n"
            "  group_wait: 0s\n"
            "  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            "receivers:\n"
            "  - name: sink\n"
            "    webhook_configs:\n"
            f"      - url: {webhook_url}/am\n"
            "        send_resolved: true\n")
        self.log = open(tmp / "alertmanager.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [BINARY, f"--config.file={config}", f"--storage.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
             "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(
                    f"alertmanager did not start:\n{(tmp / 'alertmanager.log').read_text()}")
            time.sleep(0.1)

    def alerts(self, **params) -> list[dict]:
        resp = httpx.get(f"{self.url}/api/v2/alerts", params=params, timeout=5)
        resp.raise_for_status()
        return resp.json()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def am_sink():
    with HttpSink(default=(200, b"{}")) as sink:
        yield sink


@pytest.fixture
def am(tmp_path, am_sink):
    manager = Alertmanager(tmp_path, am_sink.url)
    try:
        yield manager
    finally:
        manager.close()


def notified(sink: HttpSink, status: str, timeout: float = 15) -> dict:
    """The first notification Alertmanager sent to the sink with this status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rec in list(sink.requests):
            body = rec.json()
            if body.get("status") == status:
                return body
        time.sleep(0.1)
    raise AssertionError(f"alertmanager sent no {status} notification: "
                         f"{[r.body for r in sink.requests]}")


async def test_warning_fires_and_resolves_in_alertmanager(dsn, am, am_sink):
    settings = alerting(ReceiverSettings(name="am", type="alertmanager", url=am.url))
    receivers = build_all(settings.receivers)
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, cause="overfill", level=4)
        raised = await add_event(conn, wid, "raised", ("am",))
        assert (await dispatch_once(conn, receivers, settings))["sent"] == 1

        (alert,) = am.alerts()
        assert alert["labels"] == {
            "alertname": "hazardwatch_overfill", "warning_id": str(wid), "site": "T1",
            "enterprise": ENTERPRISE, "level": "red", "severity": "critical"}
        ann = alert["annotations"]
        assert ann["event_id"] == str(raised)
        assert ann["console_url"] == f"http://console.test:8080/warning.html?id={wid}"
        assert "罐区" in ann["summary"] and ann["description"].startswith("【红色预警】")
        assert alert["generatorURL"] == ann["console_url"]
        assert alert["status"]["state"] == "active"
        opened = (await (await conn.execute(
            "SELECT opened_at FROM warnings WHERE id = %s", (wid,))).fetchone())[0]
        assert abs(parse_time(alert["startsAt"]) - opened) < timedelta(milliseconds=1)
        assert parse_time(alert["endsAt"]) > await db_now(conn)  # firing
        firing = notified(am_sink, "firing")
        assert firing["alerts"][0]["labels"]["warning_id"] == str(wid)

        # the engine clears the warning; the cleared event resolves the alert
        cleared_at = await db_now(conn)
        await conn.execute("UPDATE warnings SET active = false, cleared_at = %s WHERE id = %s",
                           (cleared_at, wid))
        cleared = await add_event(conn, wid, "cleared", ("am",))
        assert (await dispatch_once(conn, receivers, settings))["sent"] == 1

    assert am.alerts() == []  # resolved alerts are not active any more
    resolved = notified(am_sink, "resolved")
    (alert,) = resolved["alerts"]
    assert alert["status"] == "resolved"
    assert alert["labels"]["warning_id"] == str(wid)
    assert abs(parse_time(alert["endsAt"]) - cleared_at) < timedelta(milliseconds=1)
    assert alert["annotations"]["event_id"] == str(cleared)
    for r in receivers.values():
        await r.aclose()


async def test_level_up_resolves_the_lower_level_alert(dsn, am):
    settings = alerting(ReceiverSettings(name="am", type="alertmanager", url=am.url))
    receivers = build_all(settings.receivers)
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, cause="overpressure", level=2)
        await add_event(conn, wid, "raised", ("am",))
        await dispatch_once(conn, receivers, settings)
        assert [a["labels"]["level"] for a in am.alerts()] == ["yellow"]

        await conn.execute("UPDATE warnings SET level = 4 WHERE id = %s", (wid,))
        await add_event(conn, wid, "level_up", ("am",))
        assert (await dispatch_once(conn, receivers, settings))["sent"] == 1
        alerts = am.alerts()
        assert [(a["labels"]["level"], a["labels"]["severity"]) for a in alerts] == [
            ("red", "critical")]

        # open warnings are re-sent (Alertmanager resolves alerts that are not)
        before = alerts[0]["updatedAt"]
        time.sleep(0.05)
        assert await refresh_open(conn, receivers["am"], "am", settings,
                                  await db_now(conn)) == 1
        (after,) = am.alerts()
        assert after["updatedAt"] > before and after["labels"]["level"] == "red"
    for r in receivers.values():
        await r.aclose()


async def test_alertmanager_down_is_retried(dsn):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    settings = alerting(ReceiverSettings(name="am", type="alertmanager", url=url, timeout_s=1))
    receivers = build_all(settings.receivers)
    async with await connect(dsn) as conn:
        wid = await make_warning(conn)
        await add_event(conn, wid, "raised", ("am",))
        assert (await dispatch_once(conn, receivers, settings))["retried"] == 1
        cur = await conn.execute("SELECT last_error FROM outbox")
        assert "Connect" in (await cur.fetchone())[0]
    json.dumps(settings.model_dump(mode="json"))
