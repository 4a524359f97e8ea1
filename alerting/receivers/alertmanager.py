"""Prometheus Alertmanager: POST <url>/api/v2/alerts with the warning as one alert.

Format (prometheus.io/docs/alerting/latest/clients/ and the v2 OpenAPI spec,
api/v2/openapi.yaml `postableAlert`): a JSON array of
`{labels, annotations, startsAt, endsAt, generatorURL}`; times RFC 3339. Labels identify
an alert (Alertmanager de-duplicates on them); annotations are informational and always
the most recently received. `endsAt` is set only when the end is known: here when the
warning has cleared or is closed, which resolves the alert. An alert without `endsAt` is
resolved by Alertmanager after its `resolve_timeout` unless re-sent, so the dispatcher
re-sends the firing alerts of open warnings every `resend_s` (`refresh`).

Labels: alertname hazardwatch_<cause>, warning_id, site (code), enterprise (code), level
(blue|yellow|orange|red), severity. `level` is a label, so when a warning's level rises
the alert at the old level is resolved in the same request (one alert per level the
warning's events recorded). Annotations: summary (Chinese title and site), description,
event_id (receivers drop repeats), console_url.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from alerting.notification import LEVEL_NAMES, Notification, parse_time, rfc3339
from alerting.receivers import HttpReceiver
from hazardwatch.settings import ReceiverSettings

SEVERITY = {4: "critical", 3: "major", 2: "warning", 1: "info"}


def labels(n: Notification, level: int | None = None) -> dict[str, str]:
    w = n.warning
    lvl = w["level"] if level is None else level
    return {
        "alertname": f"hazardwatch_{w['cause']}",
        "warning_id": str(w["id"]),
        "site": str(w["site"]["code"]),
        "enterprise": str(w["enterprise"]["code"]),
        "level": LEVEL_NAMES[lvl],
        "severity": SEVERITY[lvl],
    }


def ended_at(n: Notification) -> str | None:
    """When the alert ends: the warning has cleared (and is not active again) or is
    closed; None while it is active."""
    w = n.warning
    if not w["active"]:
        return w["cleared_at"] or w["closed_at"] or rfc3339(datetime.now(UTC))
    return w["closed_at"]


def _later(a: str, b: str) -> str:
    return a if parse_time(a) >= parse_time(b) else b


def alerts(n: Notification) -> list[dict]:
    """The alert of the warning at its current level, plus resolutions of the alerts it
    had at lower levels (labels differ by level)."""
    w = n.warning
    annotations = {
        "summary": f"{w['title_zh']} - {w['site']['name']}({w['enterprise']['name']})",
        "description": n.text_plain(),
        "event_id": str(n.event_id),
        "console_url": n.link,
    }
    current = {
        "labels": labels(n),
        "annotations": annotations,
        "startsAt": w["opened_at"],
        "generatorURL": n.link,
    }
    end = ended_at(n)
    if end is not None:
        current["endsAt"] = _later(end, w["opened_at"])
    out = [current]
    now = rfc3339(datetime.now(UTC))
    for level in n.levels:
        if level < w["level"]:
            out.append({"labels": labels(n, level), "annotations": annotations,
                        "startsAt": w["opened_at"], "endsAt": end or now,
                        "generatorURL": n.link})
    return out


class AlertmanagerReceiver(HttpReceiver):
    def __init__(self, cfg: ReceiverSettings) -> None:
        super().__init__(cfg)
        self.endpoint = self.url.rstrip("/") + "/api/v2/alerts"
        self.resend_s = cfg.resend_s

    async def send(self, n: Notification) -> None:
        await self.post(self.endpoint, orjson.dumps(alerts(n)))

    async def refresh(self, items: list[Notification]) -> None:
        """Re-send the firing alerts of open warnings (one request)."""
        body = [alerts(n)[0] for n in items if ended_at(n) is None]
        if body:
            await self.post(self.endpoint, orjson.dumps(body))


def build(cfg: ReceiverSettings) -> AlertmanagerReceiver:
    return AlertmanagerReceiver(cfg)
