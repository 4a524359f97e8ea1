"""Notification receivers: one module per type, all behind one small interface.

    class Receiver(Protocol):
        name: str
        async def send(self, n: Notification) -> None: ...   # raise to retry

Each module has `build(cfg: ReceiverSettings) -> Receiver`; `build(cfg)` here picks the
module by `cfg.type` (`TYPES`). A receiver may also have `async def aclose()` (release
connections) and `async def refresh(items: list[Notification])` (re-announce what is still
open; Alertmanager expects firing alerts to be re-sent, alerting/outbox.py calls it).
Every receiver passes the event id on, so the far end can drop a repeat (delivery is
at-least-once).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import httpx

from alerting.notification import Notification
from hazardwatch.settings import ReceiverSettings

TYPES: dict[str, str] = {
    "webhook": "alerting.receivers.webhook",
    "dingtalk": "alerting.receivers.dingtalk",
    "wecom": "alerting.receivers.wecom",
    "feishu": "alerting.receivers.feishu",
    "mqtt": "alerting.receivers.mqtt",
    "alertmanager": "alerting.receivers.alertmanager",
}

USER_AGENT = "hazardwatch-notifier/1"


@runtime_checkable
class Receiver(Protocol):
    name: str

    async def send(self, n: Notification) -> None:
        """Deliver one notification; raise on failure so the outbox retries it."""
        ...


class DeliveryError(Exception):
    """A receiver refused or could not take a notification (retried by the outbox)."""


class ConfigError(ValueError):
    """A receiver's settings cannot work (missing url, ...)."""


def build(cfg: ReceiverSettings) -> Receiver:
    """The receiver for one `[[alerting.receivers]]` entry."""
    module_name = TYPES.get(cfg.type)
    if module_name is None:
        raise ConfigError(f"receiver {cfg.name!r}: unknown type {cfg.type!r}")
    module = importlib.import_module(module_name)
    return module.build(cfg)


def build_all(configs: Iterable[ReceiverSettings]) -> dict[str, Receiver]:
    out: dict[str, Receiver] = {}
    for cfg in configs:
        if cfg.name in out:
            raise ConfigError(f"receiver name {cfg.name!r} is configured twice")
        out[cfg.name] = build(cfg)
    return out


async def close_all(receivers: Mapping[str, Any]) -> None:
    for receiver in receivers.values():
        aclose = getattr(receiver, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):  # closing one must not stop the others
                await aclose()


def require_url(cfg: ReceiverSettings) -> str:
    if not cfg.url:
        raise ConfigError(f"receiver {cfg.name!r} ({cfg.type}) needs a url")
    return cfg.url


def secret_of(cfg: ReceiverSettings) -> str | None:
    return cfg.secret.get_secret_value() if cfg.secret is not None else None


class HttpReceiver:
    """Shared part of the HTTP receivers: one pooled client, JSON POST, status check."""

    name: str

    def __init__(self, cfg: ReceiverSettings) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.url = require_url(cfg)
        self.secret = secret_of(cfg)
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.cfg.timeout_s, headers={"User-Agent": USER_AGENT})
        return self._client

    async def post(self, url: str, body: bytes, headers: Mapping[str, str] | None = None,
                   params: Mapping[str, str] | None = None) -> httpx.Response:
        target = httpx.URL(url)
        if params:  # keep the URL's own query (a robot's access_token) and add these
            target = target.copy_merge_params(params)
        try:
            resp = await self.client.post(
                target, content=body,
                headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})})
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if not resp.is_success:
            raise DeliveryError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        return resp

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def robot_result(resp: httpx.Response, code_keys: tuple[str, ...] = ("errcode",)) -> None:
    """Chat robots answer HTTP 200 with an error code in the body (0 = ok)."""
    try:
        data = resp.json()
    except ValueError as exc:
        raise DeliveryError(f"not JSON: {resp.text[:200]}") from exc
    if not isinstance(data, dict):
        raise DeliveryError(f"unexpected answer: {resp.text[:200]}")
    for key in code_keys:
        if key in data:
            if data[key] not in (0, "0"):
                msg = data.get("errmsg") or data.get("msg") or data.get("StatusMessage")
                raise DeliveryError(f"{key} {data[key]}: {msg}")
            return
    raise DeliveryError(f"answer without {'/'.join(code_keys)}: {resp.text[:200]}")
