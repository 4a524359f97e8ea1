"""MQTT northbound: publish {event, warning} to `<topic>/<enterprise code>/<site code>`.

For upper-level platforms subscribed to the broker. MQTT 5, QoS 1: `send` returns once the
broker acknowledged (PUBACK), else raises and the outbox retries. Each message carries the
user property `event_id` (subscribers drop repeats: delivery is at-least-once), content
type application/json. The client connects on the first send and paho reconnects it in the
background after a failure; a send while disconnected waits up to `timeout_s` for the
connection, then fails (and is retried).

Settings: `url` mqtt://host:port (mqtts:// for TLS with the system CAs), `username`, the
password in `secret`, `client_id` (default hw-northbound-<name>), `topic` (the prefix).
"""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from alerting.notification import Notification
from alerting.receivers import ConfigError, DeliveryError, require_url, secret_of
from hazardwatch import logs
from hazardwatch.settings import ReceiverSettings

log = logs.get("alerting.receivers.mqtt")

_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})


def topic_for(prefix: str, n: Notification) -> str:
    """`<prefix>/<enterprise code>/<site code>`; '/', '+', '#' in a code become '_' so
    each code stays one topic level."""
    w = n.warning
    ent = str(w["enterprise"]["code"]).translate(_UNSAFE)
    site = str(w["site"]["code"]).translate(_UNSAFE)
    return f"{prefix.rstrip('/')}/{ent}/{site}"


class MqttReceiver:
    def __init__(self, cfg: ReceiverSettings) -> None:
        self.name = cfg.name
        self.cfg = cfg
        url = urlsplit(require_url(cfg))
        if url.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not url.hostname:
            raise ConfigError(f"receiver {cfg.name!r}: url must be mqtt://host:port or "
                              f"mqtts://host:port, not {cfg.url!r}")
        self.tls = url.scheme in ("mqtts", "ssl")
        self.host = url.hostname
        self.port = url.port or (8883 if self.tls else 1883)
        self.username = cfg.username or url.username
        self.password = secret_of(cfg)
        self.client_id = cfg.client_id or f"hw-northbound-{cfg.name}"
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._last_error: str | None = None
        self._lock = asyncio.Lock()
        self._acks: dict[int, object] = {}  # mid → PUBACK reason code (paho's thread writes)

    # -- connection

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=self.client_id, protocol=mqtt.MQTTv5)
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set()
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if len(self._acks) > 10_000:  # answers nobody waited for (timed out)
            self._acks.clear()
        self._acks[mid] = reason_code

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._last_error = f"connect refused: {reason_code}"
            log.warning("mqtt northbound connect refused", receiver=self.name,
                        reason=str(reason_code))
            return
        self._last_error = None
        self._connected.set()
        log.debug("mqtt northbound connected", receiver=self.name)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if reason_code.is_failure:
            self._last_error = f"disconnected: {reason_code}"

    async def _ensure_connected(self) -> mqtt.Client:
        async with self._lock:
            if self._client is None:
                client = self._make_client()
                client.connect_async(self.host, self.port, keepalive=30)
                client.loop_start()  # its thread connects, and reconnects after a loss
                self._client = client
        if not self._connected.is_set():
            ok = await asyncio.to_thread(self._connected.wait, self.cfg.timeout_s)
            if not ok:
                reason = self._last_error or "no answer"
                raise DeliveryError(f"not connected to {self.host}:{self.port}: {reason}")
        return self._client

    # -- the interface

    async def send(self, n: Notification) -> None:
        client = await self._ensure_connected()
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("event_id", str(n.event_id))]
        props.ContentType = "application/json"
        props.PayloadFormatIndicator = 1
        info = client.publish(topic_for(self.cfg.topic, n), n.body_bytes(), qos=1,
                              properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise DeliveryError(f"publish failed: {mqtt.error_string(info.rc)}")
        try:
            await asyncio.to_thread(info.wait_for_publish, self.cfg.timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise DeliveryError(f"publish failed: {exc}") from exc
        if not info.is_published():
            raise DeliveryError(f"no PUBACK within {self.cfg.timeout_s:g} s")
        code = self._acks.pop(info.mid, None)
        if code is not None and getattr(code, "is_failure", False):
            raise DeliveryError(f"broker refused the message: {code}")

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        self._connected.clear()


def build(cfg: ReceiverSettings) -> MqttReceiver:
    return MqttReceiver(cfg)
