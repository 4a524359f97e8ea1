"""DingTalk (钉钉) custom robot: a markdown message, signed when a secret is set.

Format (DingTalk "自定义机器人发送群消息" / "自定义机器人安全设置",
open.dingtalk.com/document/robots/custom-robot-access and
open.dingtalk.com/document/robots/customize-robot-security-settings):
POST the webhook URL (…/robot/send?access_token=…) with
`{"msgtype": "markdown", "markdown": {"title": "…", "text": "<markdown>"}}`.
加签: timestamp = now in milliseconds; string_to_sign = timestamp + "\n" + secret;
sign = urlencode(base64(HmacSHA256(key=secret, string_to_sign))); both are added to the
URL as query parameters `timestamp` and `sign` (the timestamp must be within one hour of
DingTalk's clock). The answer is HTTP 200 with `{"errcode": 0, "errmsg": "ok"}`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import orjson

from alerting.notification import Notification
from alerting.receivers import HttpReceiver, robot_result
from hazardwatch.settings import ReceiverSettings


def sign(secret: str, timestamp_ms: int) -> str:
    """The `sign` query value before URL encoding (httpx encodes query parameters)."""
    string_to_sign = f"{timestamp_ms}\n{secret}"
    digest = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def payload(n: Notification) -> dict:
    return {"msgtype": "markdown",
            "markdown": {"title": n.headline_zh(), "text": n.markdown()}}


class DingtalkReceiver(HttpReceiver):
    async def send(self, n: Notification) -> None:
        params = None
        if self.secret:
            ts = int(time.time() * 1000)
            params = {"timestamp": str(ts), "sign": sign(self.secret, ts)}
        resp = await self.post(self.url, orjson.dumps(payload(n)), params=params)
        robot_result(resp, ("errcode",))


def build(cfg: ReceiverSettings) -> DingtalkReceiver:
    return DingtalkReceiver(cfg)
