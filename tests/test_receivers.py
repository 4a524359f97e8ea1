"""Each receiver against a real far end: robot webhooks (DingTalk, WeCom, Feishu) and the
generic webhook on local HTTP servers that check payload shape and signature the way the
platforms document it; MQTT northbound through the project's mosquitto to a real
subscriber."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import queue
import secrets
import time

import paho.mqtt.client as mqtt
import pytest
from alertdata import (  # noqa: F401  (dsn_fixture: the dsn fixture)
    ENTERPRISE,
    add_event,
    alerting,
    connect,
    dsn_fixture,
    make_warning,
    webhook,
)
from httpsink import HttpSink
from paho.mqtt.enums import CallbackAPIVersion

from alerting.notification import Notification, build_notification
from alerting.outbox import dispatch_once
from alerting.receivers import (
    TYPES,
    ConfigError,
    DeliveryError,
    Receiver,
    build,
    build_all,
)
from alerting.receivers.dingtalk import DingtalkReceiver
from alerting.receivers.feishu import FeishuReceiver
from alerting.receivers.mqtt import MqttReceiver
from alerting.receivers.webhook import WebhookReceiver
from alerting.receivers.wecom import WecomReceiver
from hazardwatch.settings import ReceiverSettings

CONSOLE = "http://console.test:8080"


async def notification(dsn: str, action: str = "raised", **warning) -> Notification:
    async with await connect(dsn) as conn:
        wid = await make_warning(conn, **warning)
        eid = await add_event(conn, wid, action, ())
        n = await build_notification(conn, eid, console_url=CONSOLE)
    assert n is not None
    return n


def rs(type_: str, url: str | None = None, **kw) -> ReceiverSettings:
    return ReceiverSettings(name=f"r-{type_}", type=type_, url=url, **kw)


@pytest.fixture
def sink():
    with HttpSink() as s:
        yield s


# ---------------------------------------------------------------------------- registry


def test_build_picks_the_module_by_type():
    expected = {"webhook": WebhookReceiver, "dingtalk": DingtalkReceiver,
                "wecom": WecomReceiver, "feishu": FeishuReceiver, "mqtt": MqttReceiver}
    for type_, cls in expected.items():
        url = "mqtt://127.0.0.1:1883" if type_ == "mqtt" else "http://127.0.0.1:9/x"
        receiver = build(rs(type_, url))
        assert isinstance(receiver, cls) and isinstance(receiver, Receiver)
        assert receiver.name == f"r-{type_}"
    am = build(rs("alertmanager", "http://127.0.0.1:9093"))
    assert isinstance(am, Receiver) and hasattr(am, "refresh")
    assert set(TYPES) == {"webhook", "dingtalk", "wecom", "feishu", "mqtt", "alertmanager"}


def test_build_refuses_what_cannot_work():
    with pytest.raises(ConfigError, match="needs a url"):
        build(rs("webhook"))
    with pytest.raises(ConfigError, match="mqtt://host:port"):
        build(rs("mqtt", "http://127.0.0.1:1883"))
    with pytest.raises(ConfigError, match="configured twice"):
        build_all([rs("webhook", "http://a"), rs("webhook", "http://b")])


# ---------------------------------------------------------------------------- the message


async def test_message_is_chinese_first_with_level_site_cause_value_time_link(dsn):
    n = await notification(dsn, level=4, peak=18.6)
    text = n.text_plain()
    first = text.splitlines()[0]
    assert first.startswith("【红色预警】罐区") and "预警发布" in first
    for part in ("红色(重大)", "罐区(T1)", "测试化工一厂", n.warning["title_zh"],
                 "18.6 m(测点 TK1.LT)", "(北京时间)", "未确认",
                 f"{CONSOLE}/warning.html?id={n.warning['id']}"):
        assert part in text, part
    assert text.splitlines()[-1].startswith("Red warning: ")
    orange = await notification(dsn, level=3, cause="low_level", peak=None)
    assert orange.headline_zh().startswith("【橙色预警】") and "数值" not in orange.text_plain()


# ---------------------------------------------------------------------------- webhook


async def test_webhook_headers_and_signature(dsn, sink):
    n = await notification(dsn)
    receiver = build(rs("webhook", sink.url + "/hooks/hw", secret="k3y"))
    await receiver.send(n)
    (rec,) = sink.requests
    assert rec.path == "/hooks/hw"
    assert rec.headers["x-hazardwatch-event-id"] == str(n.event_id)
    expected = hmac.new(b"k3y", rec.body, hashlib.sha256).hexdigest()
    assert rec.headers["x-hazardwatch-signature"] == f"sha256={expected}"
    assert rec.json() == {"event": n.event, "warning": n.warning}

    unsigned = build(rs("webhook", sink.url))
    await unsigned.send(n)
    assert "x-hazardwatch-signature" not in sink.requests[-1].headers

    sink.script = [(502, b"bad gateway")]
    with pytest.raises(DeliveryError, match="HTTP 502"):
        await receiver.send(n)
    await receiver.aclose()
    await unsigned.aclose()


async def test_webhook_unreachable_is_a_delivery_error(dsn):
    n = await notification(dsn)
    receiver = build(rs("webhook", "http://127.0.0.1:9/nothing-listens", timeout_s=1))
    with pytest.raises(DeliveryError, match="Connect"):
        await receiver.send(n)


# ---------------------------------------------------------------------------- DingTalk


async def test_dingtalk_markdown_and_signature(dsn, sink):
    secret = "SEC" + secrets.token_hex(16)
    n = await notification(dsn)
    receiver = build(rs("dingtalk", sink.url + "/robot/send?access_token=tok123", secret=secret))
    await receiver.send(n)
    (rec,) = sink.requests
    assert rec.path == "/robot/send"
    assert rec.query["access_token"] == "tok123"  # the URL's own token is kept
    ts = rec.query["timestamp"]
    assert abs(int(ts) - time.time() * 1000) < 60_000  # milliseconds
    # DingTalk: base64(HmacSHA256(secret, timestamp + "\n" + secret)), URL-encoded
    digest = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    assert rec.query["sign"] == base64.b64encode(digest).decode()
    body = rec.json()
    assert body["msgtype"] == "markdown" and set(body["markdown"]) == {"title", "text"}
    assert body["markdown"]["title"].startswith("【红色预警】")
    assert "罐区" in body["markdown"]["text"] and n.link in body["markdown"]["text"]

    # DingTalk answers HTTP 200 with an error code
    sink.script = [(200, b'{"errcode": 310000, "errmsg": "sign not match"}')]
    with pytest.raises(DeliveryError, match="310000"):
        await receiver.send(n)
    # no secret: no signing parameters
    plain = build(rs("dingtalk", sink.url + "/robot/send?access_token=tok123"))
    await plain.send(n)
    assert set(sink.requests[-1].query) == {"access_token"}


# ---------------------------------------------------------------------------- WeCom


async def test_wecom_markdown(dsn, sink):
    n = await notification(dsn)
    receiver = build(rs("wecom", sink.url + "/cgi-bin/webhook/send?key=abc"))
    await receiver.send(n)
    (rec,) = sink.requests
    assert rec.query == {"key": "abc"}
    body = rec.json()
    assert body["msgtype"] == "markdown" and set(body["markdown"]) == {"content"}
    content = body["markdown"]["content"]
    assert "【红色预警】" in content and '<font color="warning">' in content
    assert n.link in content and len(content.encode()) <= 4096
    sink.script = [(200, b'{"errcode": 45009, "errmsg": "api freq out of limit"}')]
    with pytest.raises(DeliveryError, match="45009"):
        await receiver.send(n)


# ---------------------------------------------------------------------------- Feishu


async def test_feishu_post_and_signature(dsn, sink):
    secret = secrets.token_urlsafe(16)
    n = await notification(dsn)
    receiver = build(rs("feishu", sink.url + "/open-apis/bot/v2/hook/xyz", secret=secret))
    await receiver.send(n)
    (rec,) = sink.requests
    body = rec.json()
    ts = body["timestamp"]
    assert isinstance(ts, str) and abs(int(ts) - time.time()) < 60  # seconds
    # Feishu: base64(HmacSHA256(key = timestamp + "\n" + secret, message = ""))
    key = f"{ts}\n{secret}".encode()
    assert body["sign"] == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert body["msg_type"] == "post"
    post = body["content"]["post"]["zh_cn"]
    assert post["title"].startswith("【红色预警】")
    tags = [el for paragraph in post["content"] for el in paragraph]
    assert all(el["tag"] in ("text", "a") for el in tags)
    assert any(el["tag"] == "a" and el["href"] == n.link for el in tags)
    assert any("罐区" in el.get("text", "") for el in tags)

    sink.script = [(200, b'{"code": 19021, "msg": "sign match fail", "data": {}}')]
    with pytest.raises(DeliveryError, match="19021"):
        await receiver.send(n)
    plain = build(rs("feishu", sink.url + "/open-apis/bot/v2/hook/xyz"))
    await plain.send(n)
    assert "sign" not in sink.requests[-1].json()


# ---------------------------------------------------------------------------- MQTT


class Subscriber:
    """A real MQTT 5 subscriber on the broker."""

    def __init__(self, broker, creds, topic: str) -> None:
        self.messages: queue.Queue = queue.Queue()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"sub-{secrets.token_hex(4)}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(creds.username, creds.password)
        subscribed = queue.Queue()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, rc, p: subscribed.put(rc)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        (code,) = subscribed.get(timeout=10)
        assert not code.is_failure, code

    def get(self, timeout: float = 10):
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def northbound_users(broker, tag: str):
    prefix = f"hw/v1/northbound/{tag}"
    pub = broker.add_user(f"hw-northbound-{tag}", secrets.token_urlsafe(12),
                          [f"topic write {prefix}/#"])
    sub = broker.add_user(f"platform-{tag}", secrets.token_urlsafe(12),
                          [f"topic read {prefix}/#"])
    return prefix, pub, sub


async def test_mqtt_northbound_to_a_real_subscriber(dsn, project_broker):
    broker = project_broker
    prefix, pub, sub_creds = northbound_users(broker, secrets.token_hex(3))
    sub = Subscriber(broker, sub_creds, f"{prefix}/#")
    cfg = ReceiverSettings(name="north", type="mqtt", url=f"mqtt://{broker.host}:{broker.port}",
                           username=pub.username, secret=pub.password, topic=prefix,
                           client_id=f"hw-nb-{secrets.token_hex(3)}")
    settings = alerting(cfg)
    receivers = build_all(settings.receivers)
    try:
        async with await connect(dsn) as conn:
            wid = await make_warning(conn)
            eid = await add_event(conn, wid, "raised", ("north",))
            got = await dispatch_once(conn, receivers, settings)
            assert got["sent"] == 1
        msg = await asyncio.to_thread(sub.get)
        assert msg.topic == f"{prefix}/{ENTERPRISE}/T1"
        assert msg.qos == 1
        assert ("event_id", str(eid)) in msg.properties.UserProperty
        body = json.loads(msg.payload)
        assert body["event"]["id"] == eid and body["warning"]["id"] == wid
        assert body["warning"]["site"]["code"] == "T1"
    finally:
        sub.close()
        for r in receivers.values():
            await r.aclose()


async def test_mqtt_refused_publish_is_a_delivery_error(dsn, project_broker):
    broker = project_broker
    tag = secrets.token_hex(3)
    pub = broker.add_user(f"hw-northbound-{tag}", secrets.token_urlsafe(12),
                          [f"topic write hw/v1/northbound/{tag}/#"])
    n = await notification(dsn)
    receiver = build(ReceiverSettings(
        name="north", type="mqtt", url=f"mqtt://{broker.host}:{broker.port}",
        username=pub.username, secret=pub.password, topic="hw/v1/northbound/elsewhere",
        timeout_s=3))
    try:
        with pytest.raises(DeliveryError, match="refused|PUBACK"):
            await receiver.send(n)
    finally:
        await receiver.aclose()
    bad = build(ReceiverSettings(
        name="north", type="mqtt", url=f"mqtt://{broker.host}:{broker.port}",
        username=pub.username, secret="wrong-password", timeout_s=1))
    try:
        with pytest.raises(DeliveryError, match="not connected"):
            await bad.send(n)
    finally:
        await bad.aclose()


@pytest.mark.slow
async def test_mqtt_reconnects_after_the_broker_restarts(dsn, fresh_broker):
    broker = fresh_broker
    prefix, pub, sub_creds = northbound_users(broker, secrets.token_hex(3))
    n = await notification(dsn)
    receiver = build(ReceiverSettings(
        name="north", type="mqtt", url=f"mqtt://{broker.host}:{broker.port}",
        username=pub.username, secret=pub.password, topic=prefix, timeout_s=2))
    sub = Subscriber(broker, sub_creds, f"{prefix}/#")
    try:
        await receiver.send(n)  # connects lazily
        assert json.loads((await asyncio.to_thread(sub.get)).payload)["event"]["id"] == n.event_id
        sub.close()
        broker.kill()
        with pytest.raises(DeliveryError):
            await receiver.send(n)
        broker.start()
        sub = Subscriber(broker, sub_creds, f"{prefix}/#")
        for _ in range(20):  # paho reconnects in the background (1 s, then backing off)
            try:
                await receiver.send(n)
                break
            except DeliveryError:
                await asyncio.sleep(0.5)
        else:
            raise AssertionError("the receiver did not reconnect")
        msg = await asyncio.to_thread(sub.get)
        assert ("event_id", str(n.event_id)) in msg.properties.UserProperty
    finally:
        sub.close()
        await receiver.aclose()
