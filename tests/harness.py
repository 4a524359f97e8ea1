"""Real processes for end-to-end tests: `hazardwatch serve` and MQTT gateway clients."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg

HAZARDWATCH = str(Path(sys.executable).parent / "hazardwatch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`hazardwatch serve` as a child process, configured only through HW_* variables."""

    def __init__(self, dsn: str, broker, log_dir: Path, **extra_env: str) -> None:
        self.http_port = free_port()
        user, password = broker.collector.username, broker.collector.password
        self.env = {
            **os.environ,
            "HW_DATABASE_URL": dsn,
            "HW_MQTT__HOST": broker.host,
            "HW_MQTT__PORT": str(broker.port),
            "HW_MQTT__USERNAME": user,
            "HW_MQTT__PASSWORD": password,
            "HW_HTTP__PORT": str(self.http_port),
            "HW_INGEST__REGISTRY_REFRESH_S": "0.5",
            **extra_env,
        }
        self.log_path = log_dir / f"serve-{self.http_port}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 20.0) -> Serve:
        self.starts += 1
        log = open(self.log_path, "a")  # noqa: SIM115 - lives as long as the process
        log.write(f"\n=== start {self.starts} ===\n")
        log.flush()
        self.proc = subprocess.Popen([HAZARDWATCH, "serve"], env=self.env, stdout=log, stderr=log)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"serve not ready in {timeout}s:\n{self.log_tail()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=2) as r:
            return r.read().decode()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""


class Gateway:
    """A gateway's MQTT client: QoS 1 publishes that wait for the broker's PUBACK."""

    def __init__(self, broker, username: str, password: str, *, client_id: str | None = None,
                 will_topic: str | None = None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or username,
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        if will_topic:
            self.client.will_set(will_topic, b"offline", qos=1, retain=True)
        connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not connected.wait(10):
            raise TimeoutError(f"gateway {username} could not connect")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 10) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic} not acknowledged")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what} (last: {value!r})")
        time.sleep(interval)


def scalar(dsn: str, sql: str, params=()):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchone()[0]


class Site:
    """A migrated database with the test registry, a running collector and gateway clients."""

    def __init__(self, dsn: str, broker, tmp: Path, client_id: str, registry: Path,
                 gateways: list[tuple[str, str]], **env: str) -> None:
        from hazardwatch.registry import import_file

        self.dsn, self.broker = dsn, broker
        import_file(dsn, registry)
        self.passwords: dict[str, str] = {}
        for ent, gw in gateways:
            creds = broker.add_gateway(ent, gw, password=secrets.token_hex(8))
            self.passwords[creds.username] = creds.password
        for ent, gw in gateways:
            self.clear_state(ent, gw)
        self.serve = Serve(dsn, broker, tmp, HW_MQTT__CLIENT_ID=client_id, **env)

    def clear_state(self, ent: str, gw: str) -> None:
        """Delete the retained state the shared broker may hold from another test (a last-will
        `offline` left behind would otherwise reach this site's collector on subscribing)."""
        g = self.gateway(ent, gw, client_id=f"clear-{gw}-{time.monotonic_ns()}")
        try:
            g.publish(f"hw/v1/{ent}/{gw}/state", b"", retain=True)
        finally:
            g.close()

    def gateway(self, ent: str, gw: str, **kw) -> Gateway:
        user = f"{ent}/{gw}"
        return Gateway(self.broker, user, self.passwords[user], **kw)

    def rows(self, ts_ms: float) -> dict[str, tuple]:
        with psycopg.connect(self.dsn) as conn:
            return {tag: (value, quality) for tag, value, quality in conn.execute(
                "SELECT s.tag, r.value, r.quality FROM readings r JOIN sensors s ON s.id = r.sensor_id "
                "WHERE r.ts = to_timestamp(%s / 1000.0)", (ts_ms,))}
