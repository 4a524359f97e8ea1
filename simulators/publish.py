"""Publish a scenario live over MQTT as its real gateways (native contract v1).

One paho client per gateway (client id and username `<enterprise>/<gateway>`, MQTT 3.1.1,
persistent session, QoS 1), retained `online` on connect and a retained `offline` last-will;
reading batches of about 50 readings. Scenario time is shifted (`scenario.shift_base`) and
played at N× speed: a batch is sent when its last reading is due.
"""

from __future__ import annotations

import contextlib
import heapq
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from simulators.faults import Message
from simulators.scenario import Scenario, shift_base


@dataclass
class GatewayStats:
    messages: int = 0
    readings: int = 0
    malformed: int = 0
    drops: int = 0


@dataclass
class Summary:
    base_epoch: float
    messages: int = 0
    readings: int = 0
    stopped: bool = False
    gateways: dict[str, GatewayStats] = field(default_factory=dict)


class _Gateway:
    def __init__(self, host: str, port: int, enterprise: str, gateway: str, password: str,
                 keepalive: int = 30) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.username = f"{enterprise}/{gateway}"
        self.password = password
        self.state_topic = f"hw/v1/{enterprise}/{gateway}/state"
        self.readings_topic = f"hw/v1/{enterprise}/{gateway}/readings"
        self.pending: list[mqtt.MQTTMessageInfo] = []
        self.client: mqtt.Client | None = None

    def connect(self, timeout: float = 10.0) -> None:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.username,
                        protocol=mqtt.MQTTv311, clean_session=False)
        c.username_pw_set(self.username, self.password)
        c.will_set(self.state_topic, b"offline", qos=1, retain=True)
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        ok, failed = threading.Event(), []

        def on_connect(client, userdata, flags, rc, props):
            if rc.is_failure:
                failed.append(str(rc))
            ok.set()

        c.on_connect = on_connect
        c.connect(self.host, self.port, keepalive=self.keepalive)
        c.loop_start()
        if not ok.wait(timeout) or failed:
            c.loop_stop()
            raise ConnectionError(f"gateway {self.username}: "
                                  f"{failed[0] if failed else 'no CONNACK'} from {self.host}:{self.port}")
        self.client = c
        self.pending.append(c.publish(self.state_topic, b"online", qos=1, retain=True))

    def publish(self, payload: bytes) -> None:
        self.pending.append(self.client.publish(self.readings_topic, payload, qos=1))
        if len(self.pending) > 1000:
            self.pending = [i for i in self.pending if not i.is_published()]

    def drop_link(self) -> None:
        """Lose the link without DISCONNECT: the broker publishes the last-will. The socket is
        shut down before paho's loop is stopped, so the will goes out at once (stopping the
        loop first can take up to its 1-s select timeout)."""
        self.flush(5)
        c, self.client = self.client, None
        sock = c.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        c.loop_stop()
        if sock is not None:
            sock.close()

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for info in self.pending:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        done = all(i.is_published() for i in self.pending)
        self.pending = []
        return done

    def close(self) -> None:
        """Clean shutdown: retained offline first (a clean DISCONNECT fires no will)."""
        if self.client is None:
            return
        self.pending.append(self.client.publish(self.state_topic, b"offline", qos=1, retain=True))
        self.flush(10)
        self.client.disconnect()
        self.client.loop_stop()
        self.client = None


def publish(scenario: Scenario, *, host: str, port: int, passwords: Callable[[str, str], str],
            speed: float | None = None, now: float | None = None,
            progress: Callable[[float, Summary], None] | None = None,
            stop: threading.Event | None = None, base_epoch: float | None = None,
            sending: Callable[[float, str, str], None] | None = None,
            before_close: Callable[[Summary], None] | None = None) -> Summary:
    """Publish the whole scenario; returns per-gateway counts. `passwords(ent, gw)` gives each
    gateway's MQTT password. `progress(scenario_seconds_done, summary)` is called as it goes;
    setting `stop` ends it early (gateways still send their retained offline).
    `sending(at, username, action)` is called just before each message or link action
    (publish | drop | reconnect) of scenario time `at` goes out (an evaluation's clock and
    back-pressure); `before_close(summary)`, after the last message is acknowledged and
    before the gateways say `offline` (the scenario is over then)."""
    speed = float(speed or scenario.speed)
    wall0 = time.time() if now is None else now
    base = shift_base(scenario.duration, speed, wall0) if base_epoch is None else base_epoch
    summary = Summary(base_epoch=base)
    gws: dict[str, _Gateway] = {}
    heap: list[tuple[float, int, str, Message]] = []
    k = 0
    for ent, gw, _site in scenario.gateways():
        g = _Gateway(host, port, ent, gw, passwords(ent, gw))
        gws[g.username] = g
        summary.gateways[g.username] = GatewayStats()
        for m in scenario.messages(ent, gw, base):
            heap.append((m.at, k, g.username, m))
            k += 1
    heapq.heapify(heap)
    stop = stop or threading.Event()
    try:
        for g in gws.values():
            g.connect()
        mono0 = time.monotonic()
        while heap and not stop.is_set():
            at, _, user, m = heapq.heappop(heap)
            delay = at / speed - (time.monotonic() - mono0)
            if delay > 0 and stop.wait(delay):
                break
            g, st = gws[user], summary.gateways[user]
            if sending is not None and (m.action != "publish" or g.client is not None):
                sending(at, user, m.action)
            if m.action == "drop":
                g.drop_link()
                st.drops += 1
            elif m.action == "reconnect":
                g.connect()
            elif g.client is not None:
                g.publish(m.payload)
                st.messages += 1
                st.readings += m.readings
                st.malformed += m.readings == 0
                summary.messages += 1
                summary.readings += m.readings
            if progress is not None:
                progress(min(at, scenario.duration), summary)
        summary.stopped = stop.is_set()
        if before_close is not None:
            for g in gws.values():
                if g.client is not None:
                    g.flush(10)
            before_close(summary)
    finally:
        for g in gws.values():
            if g.client is not None:
                g.flush(10)
            g.close()
    if progress is not None and not summary.stopped:
        progress(scenario.duration, summary)
    return summary


def password_lookup(passwords: Mapping[str, str] | None, default: str | None) -> Callable[[str, str], str]:
    def lookup(ent: str, gw: str) -> str:
        user = f"{ent}/{gw}"
        if passwords and user in passwords:
            return passwords[user]
        if default is None:
            raise KeyError(f"no MQTT password for gateway {user} (give --passwords or --password)")
        return default
    return lookup
