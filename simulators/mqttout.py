"""A gateway's publishing side of the native MQTT contract (docs/gateway-guide.md §2-§5).

One `GatewayPublisher` is one gateway: MQTT v5 with username `<enterprise>/<gateway>`,
last-will `offline` (QoS 1, retained) on its state topic, `online` published after connect,
readings as QoS 1 batches of at most `PER_MESSAGE` readings. A reading counts as delivered
only when the broker has acknowledged (PUBACK) the message that carries it.

    pub = GatewayPublisher("127.0.0.1", 1883, ENT, "gw-01", password).connect()
    pub.publish_group(ts_ms, {"TK101.LT": 12.3})     # split into ≤ 50-reading messages
    pub.flush()                                       # every PUBACK received
    pub.close()                                       # `offline`, then DISCONNECT
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

PER_MESSAGE = 50  # readings a message: the design point (DESIGN.md §10)


class PublishError(RuntimeError):
    """The broker refused the connection or did not acknowledge in time."""


def readings_topic(enterprise: str, gateway: str) -> str:
    return f"hw/v1/{enterprise}/{gateway}/readings"


def state_topic(enterprise: str, gateway: str) -> str:
    return f"hw/v1/{enterprise}/{gateway}/state"


def group_payload(ts_ms: int, values: Mapping[str, float | None],
                  q: Mapping[str, int] | None = None) -> bytes:
    doc: dict = {"ts": int(ts_ms), "values": dict(values)}
    if q:
        doc["q"] = {t: c for t, c in q.items() if t in values}
        if not doc["q"]:
            del doc["q"]
    return orjson.dumps(doc)


def split_group(values: Mapping[str, float | None], per_message: int = PER_MESSAGE
                ) -> list[dict[str, float | None]]:
    items = list(values.items())
    return [dict(items[i:i + per_message]) for i in range(0, len(items), per_message)] or [{}]


class GatewayPublisher:
    """One gateway's MQTT connection; thread-safe counting of broker-acknowledged readings."""

    def __init__(self, host: str, port: int, enterprise: str, gateway: str, password: str, *,
                 client_id: str | None = None, keepalive: int = 30, max_inflight: int = 100,
                 tls_ca: Path | None = None, per_message: int = PER_MESSAGE,
                 announce: bool = True) -> None:
        self.host, self.port = host, port
        self.enterprise, self.gateway = enterprise, gateway
        self.username = f"{enterprise}/{gateway}"
        self.topic = readings_topic(enterprise, gateway)
        self.state = state_topic(enterprise, gateway)
        self.per_message = per_message
        self.keepalive = keepalive
        self.announce = announce
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or self.username, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(self.username, password)
        if tls_ca:
            self.client.tls_set(ca_certs=str(tls_ca))
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.will_set(self.state, b"offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._connect_rc: mqtt.ReasonCode | None = None
        # mid -> readings; acknowledgements that overtake the registration wait in _early
        self._pending: dict[int, int] = {}
        self._early: set[int] = set()
        self.sent_messages = 0
        self.sent_readings = 0
        self.acked_messages = 0
        self.acked_readings = 0

    # -- connection

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connect_rc = reason_code
        self._connected.set()

    def connect(self, timeout: float = 10.0) -> GatewayPublisher:
        try:
            self.client.connect(self.host, self.port, keepalive=self.keepalive)
        except OSError as exc:
            raise PublishError(f"{self.username}: cannot reach broker {self.host}:{self.port}: {exc}") from exc
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.client.loop_stop()
            raise PublishError(f"{self.username}: no CONNACK from {self.host}:{self.port} in {timeout:g} s")
        if self._connect_rc is not None and self._connect_rc.is_failure:
            self.client.loop_stop()
            raise PublishError(f"{self.username}: broker refused the connection ({self._connect_rc})")
        if self.announce:
            self._send(self.state, b"online", 0, retain=True)
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Wait for outstanding PUBACKs, publish `offline` (retained), disconnect."""
        try:
            self.flush(timeout)
            if self.announce:
                self._send(self.state, b"offline", 0, retain=True)
                self.flush(5.0)
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    # -- publishing

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            n = self._pending.pop(mid, None)
            if n is None:
                self._early.add(mid)
            else:
                self.acked_messages += 1
                self.acked_readings += n
            self._cond.notify_all()

    def _send(self, topic: str, payload: bytes, readings: int, retain: bool = False) -> None:
        # never hold our lock across paho calls: its network thread takes paho's own locks
        # first and ours second (in on_publish)
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishError(f"{self.username}: publish failed: {mqtt.error_string(info.rc)}")
        with self._cond:
            if readings:
                self.sent_messages += 1
                self.sent_readings += readings
            if info.mid in self._early:
                self._early.discard(info.mid)
                if readings:
                    self.acked_messages += 1
                    self.acked_readings += readings
            else:
                self._pending[info.mid] = readings

    @property
    def outstanding(self) -> int:
        with self._cond:
            return len(self._pending)

    def wait_outstanding(self, at_most: int, timeout: float = 30.0) -> None:
        """Block until no more than `at_most` messages await their PUBACK."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._pending) <= at_most, timeout):
                raise PublishError(f"{self.username}: {len(self._pending)} messages unacknowledged "
                                   f"after {timeout:g} s")

    def flush(self, timeout: float = 30.0) -> None:
        self.wait_outstanding(0, timeout)

    def publish_group(self, ts_ms: int, values: Mapping[str, float | None],
                      q: Mapping[str, int] | None = None) -> int:
        """Readings of one instant, as ≤ per_message-reading messages; returns messages sent."""
        parts = split_group(values, self.per_message)
        for part in parts:
            self._send(self.topic, group_payload(ts_ms, part, q), len(part))
        return len(parts)

    def publish_payload(self, payload: bytes, readings: int) -> None:
        """A prepared readings payload carrying `readings` readings."""
        self._send(self.topic, payload, readings)


def clean_value(value: float | None) -> float | None:
    """NaN and infinities are not JSON: the contract says send null."""
    if value is None or not math.isfinite(value):
        return None
    return value


def now_ms() -> int:
    return int(time.time() * 1000)
