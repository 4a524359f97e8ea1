"""The project broker configuration, end to end, with the real mosquitto and real clients.

Covers deploy/mosquitto/{mosquitto.conf,acl,hw_identity.c}: authentication, per-gateway
write ACLs, the ThingsBoard identity rewrite (v1/... -> tb/<enterprise>/<gateway>/v1/...),
refusal of forged tb/ topics, and that an offline collector's persistent session keeps
its backlog (past mosquitto's default queue limit, and across a broker restart).

"Never arrives" is checked without sleeping: after the message that must be dropped, the
same client publishes a sentinel on a topic the collector does receive; MQTT keeps one
connection's messages in order, so once the sentinel is in, the dropped one never will be.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from brokers import Credentials, Mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

# The broker fixtures live in tests/brokers.py; bound here so this module runs on its own
# (harmless once tests/conftest.py imports them too).

pytestmark = pytest.mark.timeout(120)

ENT = "91370105MA3C00001X"
OTHER_ENT = "91370105MA3C00002Y"
COLLECTOR_TOPICS = ("hw/v1/#", "tb/#")
NOT_AUTHORIZED = 135
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    mid: int


def brief(messages: list[Received]) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload[:60]) for m in messages]


class Client:
    """A paho-mqtt 2.x MQTT v5 client on its own network thread, observed through
    events and a queue so every wait in a test has a timeout.

    Like the real collector (which acks after the database commit), it acknowledges a
    QoS 1 message only when the test takes it (`collect`, `until`). `close` returns only
    once the broker has processed the DISCONNECT. Both matter for exact counts: stopping
    paho's loop early drops queued PUBACKs; and if the broker forwards a new message to a
    connection the client has already closed, the write fails (EPIPE) and mosquitto drops
    the connection without reading the PUBACKs still in its socket buffer. Either way the
    broker rightly redelivers those messages to the session (at-least-once).
    """

    def __init__(
        self,
        broker: Mosquitto,
        creds: Credentials | None,
        *,
        client_id: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
    ) -> None:
        self.broker = broker
        self.client_id = client_id or f"test-{uuid.uuid4().hex[:12]}"
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connack = threading.Event()
        self.connack_reason: ReasonCode | None = None
        self.session_present: bool | None = None
        self.disconnected = threading.Event()
        self._acks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._subscribed = threading.Condition()
        self._looping = False
        self.mqtt = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if creds is not None:
            self.mqtt.username_pw_set(creds.username, creds.password)
        self.mqtt.max_inflight_messages_set(200)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_disconnect = self._on_disconnect
        self.mqtt.on_message = self._on_message
        self.mqtt.on_publish = self._on_publish
        self.mqtt.on_subscribe = self._on_subscribe

    # -- callbacks (network thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connack_reason = reason_code
        self.session_present = flags.session_present
        self.connack.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnected.set()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(msg.topic, bytes(msg.payload), msg.qos, msg.mid))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks[mid] = reason_code

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._subscribed:
            self._subacks[mid] = list(reason_codes)
            self._subscribed.notify_all()

    # -- test API

    def connect(self, *, expect_success: bool = True) -> ReasonCode:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        self.mqtt.connect(
            self.broker.host,
            self.broker.port,
            keepalive=30,
            clean_start=self.clean_start,
            properties=props,
        )
        self.mqtt.loop_start()
        self._looping = True
        assert self.connack.wait(TIMEOUT_S), f"{self.client_id}: no CONNACK"
        assert self.connack_reason is not None
        if expect_success:
            assert not self.connack_reason.is_failure, (
                f"{self.client_id}: connection refused: {self.connack_reason}\n{self.broker.log_tail()}"
            )
        return self.connack_reason

    def subscribe(self, *topics: str, qos: int = 1) -> None:
        result, mid = self.mqtt.subscribe([(t, SubscribeOptions(qos=qos)) for t in topics])
        assert result == mqtt.MQTT_ERR_SUCCESS
        with self._subscribed:
            assert self._subscribed.wait_for(lambda: mid in self._subacks, TIMEOUT_S), "no SUBACK"
            codes = self._subacks[mid]
        assert all(not code.is_failure for code in codes), codes

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> int:
        """Publish and wait for the broker's acknowledgement; returns its reason code value
        (0 = accepted, 135 = not authorized) for QoS 1."""
        info = self.mqtt.publish(topic, payload, qos=qos)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), f"{self.client_id}: no PUBACK for {topic}"
        return self._acks[info.mid].value if qos else 0

    def publish_many(self, items: list[tuple[str, bytes]], qos: int = 1) -> None:
        """Publish a burst, then wait for every acknowledgement (all must be accepted)."""
        infos = [self.mqtt.publish(topic, payload, qos=qos) for topic, payload in items]
        deadline = time.monotonic() + 60
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), f"{self.client_id}: publish {info.mid} not acknowledged"
            if qos:
                assert self._acks[info.mid].value == 0, self._acks[info.mid]

    def _take(self, timeout: float) -> Received:
        msg = self.messages.get(timeout=max(0.01, timeout))
        if msg.qos:
            self.mqtt.ack(msg.mid, msg.qos)
        return msg

    def collect(self, count: int, timeout: float = TIMEOUT_S, idle: float = 5.0) -> list[Received]:
        """Exactly the next `count` messages (acknowledged); fails after `timeout` in all,
        or as soon as nothing has arrived for `idle` seconds."""
        got: list[Received] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            try:
                got.append(self._take(min(idle, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id}: got {len(got)} of {count} messages; "
                    f"last: {brief(got[-1:])}\n{self.broker.log_tail()}"
                ) from None
        return got

    def until(self, topic: str, timeout: float = TIMEOUT_S) -> list[Received]:
        """Everything received up to and including the first message on `topic`."""
        got: list[Received] = []
        deadline = time.monotonic() + timeout
        while not got or got[-1].topic != topic:
            try:
                got.append(self._take(deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id}: no message on {topic} within {timeout} s; got {brief(got)}"
                ) from None
        return got

    def drop_connection(self) -> None:
        """Vanish without DISCONNECT (power cut, broken link): the broker sends the will."""
        self.mqtt.loop_stop()
        self._looping = False
        self.mqtt.socket().close()

    def close(self) -> None:
        if not self._looping:
            return
        connected = self.connack_reason is not None and not self.connack_reason.is_failure
        if connected and not self.disconnected.is_set():
            line = f"Client {self.client_id} disconnected."
            seen = self.broker.log_path.read_text(errors="replace").count(line)
            self.mqtt.disconnect()
            assert self.disconnected.wait(TIMEOUT_S), f"{self.client_id}: DISCONNECT not sent"
            wait_for_log(self.broker, line, occurrences=seen + 1)
        self.mqtt.loop_stop()
        self._looping = False


@pytest.fixture
def clients():
    """Factory for `Client`s that are disconnected when the test ends."""
    made: list[Client] = []

    def make(broker: Mosquitto, creds: Credentials | None, **kwargs) -> Client:
        client = Client(broker, creds, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def collector(project_broker: Mosquitto, clients) -> Client:
    client = clients(project_broker, project_broker.collector)
    client.connect()
    client.subscribe(*COLLECTOR_TOPICS)
    return client


def new_gateway(broker: Mosquitto, enterprise: str = ENT) -> tuple[str, Credentials]:
    gw = f"gw-{uuid.uuid4().hex[:8]}"
    return gw, broker.add_gateway(enterprise, gw)


def wait_for_log(
    broker: Mosquitto, text: str, occurrences: int = 1, timeout: float = TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while broker.log_path.read_text(errors="replace").count(text) < occurrences:
        assert time.monotonic() < deadline, f"not in the broker log: {text}\n{broker.log_tail()}"
        time.sleep(0.02)


def readings(ent: str, gw: str) -> str:
    return f"hw/v1/{ent}/{gw}/readings"


# --------------------------------------------------------------------------- authentication


def test_anonymous_connection_is_refused(project_broker: Mosquitto, clients) -> None:
    reason = clients(project_broker, None).connect(expect_success=False)
    assert reason.is_failure, reason


def test_wrong_password_is_refused(project_broker: Mosquitto, clients) -> None:
    _, creds = new_gateway(project_broker)
    wrong = Credentials(creds.username, creds.password + "x")
    reason = clients(project_broker, wrong).connect(expect_success=False)
    assert reason.is_failure, reason


# --------------------------------------------------------------------------- native topics


def test_gateway_readings_reach_the_collector(project_broker, collector, clients) -> None:
    gw, creds = new_gateway(project_broker)
    gateway = clients(project_broker, creds)
    gateway.connect()
    payload = json.dumps({"ts": 1732262400000, "values": {"TK101.LT": 12.31}}).encode()

    assert gateway.publish(readings(ENT, gw), payload) == 0

    [msg] = collector.collect(1)
    assert (msg.topic, msg.payload, msg.qos) == (readings(ENT, gw), payload, 1)


def test_gateway_cannot_publish_as_another_gateway(project_broker, collector, clients) -> None:
    gw_a, creds_a = new_gateway(project_broker)
    gw_b, _ = new_gateway(project_broker)
    gw_c, _ = new_gateway(project_broker, OTHER_ENT)
    gateway_a = clients(project_broker, creds_a)
    gateway_a.connect()

    assert (
        gateway_a.publish(readings(ENT, gw_b), b'{"forged": "same enterprise"}') == NOT_AUTHORIZED
    )
    assert (
        gateway_a.publish(readings(OTHER_ENT, gw_c), b'{"forged": "other enterprise"}')
        == NOT_AUTHORIZED
    )
    assert gateway_a.publish(f"hw/v1/{ENT}/{gw_b}/state", b"offline", qos=1) == NOT_AUTHORIZED
    assert gateway_a.publish(readings(ENT, gw_a), b"sentinel") == 0

    got = collector.until(readings(ENT, gw_a))
    assert [m.topic for m in got] == [readings(ENT, gw_a)]


def test_large_payload_within_limit_is_delivered(project_broker, collector, clients) -> None:
    gw, creds = new_gateway(project_broker)
    gateway = clients(project_broker, creds)
    gateway.connect()
    payload = b"x" * (256 * 1024)  # the documented payload limit

    assert gateway.publish(readings(ENT, gw), payload) == 0

    [msg] = collector.collect(1)
    assert msg.payload == payload


# --------------------------------------------------------------------------- ThingsBoard identity


def test_thingsboard_topics_arrive_stamped_with_the_publisher(
    project_broker, collector, clients
) -> None:
    gw, creds = new_gateway(project_broker)
    gateway = clients(project_broker, creds)
    gateway.connect()
    telemetry = json.dumps({"TK101": [{"ts": 1732262400000, "values": {"LT": 12.31}}]}).encode()
    sent = {
        "v1/gateway/telemetry": telemetry,
        "v1/gateway/connect": b'{"device": "TK101"}',
        "v1/devices/me/telemetry": bytes(range(256)),  # any bytes pass through untouched
    }

    for topic, payload in sent.items():
        assert gateway.publish(topic, payload) == 0

    got = collector.collect(len(sent))
    assert {m.topic: m.payload for m in got} == {
        f"tb/{ENT}/{gw}/{topic}": payload for topic, payload in sent.items()
    }


def test_direct_publish_to_tb_is_refused(project_broker, collector, clients) -> None:
    gw, creds = new_gateway(project_broker)
    victim, _ = new_gateway(project_broker, OTHER_ENT)
    gateway = clients(project_broker, creds)
    gateway.connect()

    # Someone else's identity: the ACL file refuses it.
    assert gateway.publish(f"tb/{OTHER_ENT}/{victim}/v1/gateway/telemetry", b"{}") == NOT_AUTHORIZED
    # Its own identity, which the ACL grants (see deploy/mosquitto/acl): the plugin refuses.
    assert gateway.publish(f"tb/{ENT}/{gw}/v1/gateway/telemetry", b"{}") == NOT_AUTHORIZED
    assert gateway.publish("tb", b"{}") == NOT_AUTHORIZED
    assert gateway.publish(readings(ENT, gw), b"sentinel") == 0

    got = collector.until(readings(ENT, gw))
    assert [m.topic for m in got] == [readings(ENT, gw)]


def test_acl_is_checked_before_the_rewrite(project_broker, collector, clients) -> None:
    """A user whose only grant is the fixed ThingsBoard topic (no tb/ grant) still gets
    through: mosquitto checks the ACL on the topic as sent, then runs the plugin."""
    gw = f"gw-{uuid.uuid4().hex[:8]}"
    creds = project_broker.add_user(f"{ENT}/{gw}", "pw-" + gw, [f"topic write hw/v1/{ENT}/{gw}/#"])
    gateway = clients(project_broker, creds)
    gateway.connect()

    assert gateway.publish("v1/gateway/telemetry", b"{}") == 0

    [msg] = collector.collect(1)
    assert msg.topic == f"tb/{ENT}/{gw}/v1/gateway/telemetry"


def test_thingsboard_topics_need_an_enterprise_gateway_identity(
    project_broker, collector, clients
) -> None:
    """A user whose name is not <enterprise>/<gateway> cannot use the ThingsBoard topics:
    the collector could not attribute the data."""
    name = f"ops-{uuid.uuid4().hex[:8]}"
    creds = project_broker.add_user(name, "pw-" + name, [f"topic write hw/v1/{ENT}/{name}/#"])
    client = clients(project_broker, creds)
    client.connect()

    assert client.publish("v1/gateway/telemetry", b"{}") == NOT_AUTHORIZED
    assert client.publish(readings(ENT, name), b"sentinel") == 0

    got = collector.until(readings(ENT, name))
    assert [m.topic for m in got] == [readings(ENT, name)]


def test_forged_will_is_dropped(project_broker, collector, clients) -> None:
    """Wills bypass the plugin in mosquitto 2.0; the ACL must keep them off tb/."""
    gw, creds = new_gateway(project_broker)
    victim, _ = new_gateway(project_broker, OTHER_ENT)
    forger = clients(project_broker, creds)
    forger.mqtt.will_set(f"tb/{OTHER_ENT}/{victim}/v1/gateway/disconnect", b"forged", qos=1)
    forger.connect()
    honest = clients(project_broker, creds, client_id=f"honest-{gw}")
    honest.mqtt.will_set(f"hw/v1/{ENT}/{gw}/state", b"offline", qos=1)
    honest.connect()

    # Drop both connections without DISCONNECT, so the broker sends the wills; the forged
    # one first (the broker sends a will while handling the lost connection, before it
    # handles anything else).
    forger.drop_connection()
    wait_for_log(project_broker, f"Client {forger.client_id} closed its connection.")
    honest.drop_connection()

    got = collector.until(f"hw/v1/{ENT}/{gw}/state")
    assert [(m.topic, m.payload) for m in got] == [(f"hw/v1/{ENT}/{gw}/state", b"offline")]


# --------------------------------------------------------------------------- persistence


def connect_collector(broker: Mosquitto, clients, client_id: str) -> Client:
    client = clients(
        broker, broker.collector, client_id=client_id, clean_start=False, session_expiry_s=3600
    )
    client.connect()
    return client


def test_backlog_survives_collector_absence_and_broker_restart(
    fresh_broker: Mosquitto, clients
) -> None:
    broker = fresh_broker
    gw, creds = new_gateway(broker)
    collector_id = f"hw-ingest-{uuid.uuid4().hex[:6]}"

    first = connect_collector(broker, clients, collector_id)
    assert first.session_present is False
    first.subscribe(*COLLECTOR_TOPICS)
    first.close()

    # 1. The collector is away; the broker keeps its messages.
    gateway = clients(broker, creds)
    gateway.connect()
    batch1 = [(readings(ENT, gw), f"a{i}".encode()) for i in range(50)]
    batch1 += [("v1/gateway/telemetry", f"t{i}".encode()) for i in range(50)]
    gateway.publish_many(batch1)

    second = connect_collector(broker, clients, collector_id)
    assert second.session_present is True
    got = second.collect(len(batch1))
    native = [m.payload for m in got if m.topic == readings(ENT, gw)]
    tb = [m.payload for m in got if m.topic == f"tb/{ENT}/{gw}/v1/gateway/telemetry"]
    assert native == [p for t, p in batch1 if t.startswith("hw/")]  # all of them, in order
    assert tb == [p for t, p in batch1 if t.startswith("v1/")]
    second.close()

    # 2. Collector away and the broker restarted meanwhile (clean stop writes the database).
    batch2 = [(readings(ENT, gw), f"b{i}".encode()) for i in range(100)]
    gateway.publish_many(batch2)
    gateway.close()
    broker.restart()

    third = connect_collector(broker, clients, collector_id)
    assert third.session_present is True
    got = third.collect(len(batch2))
    assert [m.payload for m in got] == [p for _, p in batch2]
    assert all(m.qos == 1 for m in got)


def test_queue_holds_far_more_than_the_default_1000(project_broker: Mosquitto, clients) -> None:
    count = 5000
    gw, creds = new_gateway(project_broker)
    collector_id = f"hw-ingest-{uuid.uuid4().hex[:6]}"
    first = connect_collector(project_broker, clients, collector_id)
    first.subscribe(readings(ENT, gw))
    first.close()

    gateway = clients(project_broker, creds)
    gateway.connect()
    body = json.dumps({"ts": 1732262400000, "values": {f"TK{i}.LT": 1.0 for i in range(50)}})
    gateway.publish_many(
        [(readings(ENT, gw), f'{{"seq": {i}, "b": {body}}}'.encode()) for i in range(count)]
    )

    back = connect_collector(project_broker, clients, collector_id)
    got = back.collect(count, timeout=60)
    assert [json.loads(m.payload)["seq"] for m in got] == list(range(count))

    # Drop the session so the shared broker does not keep it.
    back.close()
    clients(project_broker, project_broker.collector, client_id=collector_id).connect()
