"""Feishu (飞书) custom bot: a rich-text ("post") message, signed when a secret is set.

Format (Feishu "自定义机器人使用指南", open.feishu.cn/document/client-docs/bot-v3/add-custom-bot):
POST the webhook URL (…/open-apis/bot/v2/hook/…) with
`{"msg_type": "post", "content": {"post": {"zh_cn": {"title": "…", "content":
[[{"tag": "text", "text": "…"}, {"tag": "a", "text": "…", "href": "…"}], …]}}}}`.
签名校验: timestamp = now in seconds; sign = base64(HmacSHA256(key = timestamp + "\n" +
secret, message = empty)); both go into the JSON body as "timestamp" (a string) and
"sign" (the timestamp must be within one hour of Feishu's clock). The answer is
`{"code": 0, "msg": "success", …}` (older deployments: `{"StatusCode": 0, …}`).
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


def sign(secret: str, timestamp_s: int) -> str:
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def payload(n: Notification) -> dict:
    paragraphs = [[{"tag": "text", "text": f"{k}:{v}"}] for k, v in n.facts_zh()]
    paragraphs.append([{"tag": "a", "text": "查看详情 / View in console", "href": n.link}])
    paragraphs.append([{"tag": "text", "text": n.line_en()}])
    return {"msg_type": "post",
            "content": {"post": {"zh_cn": {"title": n.headline_zh(), "content": paragraphs}}}}


class FeishuReceiver(HttpReceiver):
    async def send(self, n: Notification) -> None:
        body = payload(n)
        if self.secret:
            ts = int(time.time())
            body = {"timestamp": str(ts), "sign": sign(self.secret, ts), **body}
        resp = await self.post(self.url, orjson.dumps(body))
        robot_result(resp, ("code", "StatusCode"))


def build(cfg: ReceiverSettings) -> FeishuReceiver:
    return FeishuReceiver(cfg)
