"""Generic webhook: POST {event, warning} as JSON, signed with HMAC-SHA256.

Headers: `X-Hazardwatch-Event-Id: <event id>` (drop repeats: delivery is at-least-once) and,
when a secret is set, `X-Hazardwatch-Signature: sha256=<hex HMAC-SHA256 of the exact body
bytes, keyed with the secret>` (docs/alerting.md, Delivery). Verify on the exact bytes
received, before parsing, with a constant-time comparison.
"""

from __future__ import annotations

import hashlib
import hmac

from alerting.notification import Notification
from alerting.receivers import HttpReceiver
from hazardwatch.settings import ReceiverSettings

EVENT_HEADER = "X-Hazardwatch-Event-Id"
SIGNATURE_HEADER = "X-Hazardwatch-Signature"


def signature(secret: str, body: bytes) -> str:
    """The X-Hazardwatch-Signature value of `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiving service does (and the tests): constant-time compare."""
    return header is not None and hmac.compare_digest(signature(secret, body), header)


class WebhookReceiver(HttpReceiver):
    async def send(self, n: Notification) -> None:
        body = n.body_bytes()
        headers = {EVENT_HEADER: str(n.event_id)}
        if self.secret:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        await self.post(self.url, body, headers)


def build(cfg: ReceiverSettings) -> WebhookReceiver:
    return WebhookReceiver(cfg)
