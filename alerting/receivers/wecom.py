"""WeCom (企业微信) group robot: a markdown message.

Format (WeCom "群机器人配置说明", developer.work.weixin.qq.com/document/path/99110):
POST the robot's webhook URL (…/cgi-bin/webhook/send?key=…) with
`{"msgtype": "markdown", "markdown": {"content": "<markdown, ≤ 4096 bytes UTF-8>"}}`;
the answer is HTTP 200 with `{"errcode": 0, "errmsg": "ok"}`, another errcode on failure.
WeCom robots have no signing; the key in the URL is the secret. Its markdown knows
`<font color="info|comment|warning">`.
"""

from __future__ import annotations

import orjson

from alerting.notification import Notification
from alerting.receivers import HttpReceiver, robot_result
from hazardwatch.settings import ReceiverSettings

MAX_BYTES = 4096


def truncate_utf8(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "…"


def payload(n: Notification) -> dict:
    return {"msgtype": "markdown",
            "markdown": {"content": truncate_utf8(n.markdown(colour=True), MAX_BYTES)}}


class WecomReceiver(HttpReceiver):
    async def send(self, n: Notification) -> None:
        resp = await self.post(self.url, orjson.dumps(payload(n)))
        robot_result(resp, ("errcode",))


def build(cfg: ReceiverSettings) -> WecomReceiver:
    return WecomReceiver(cfg)
