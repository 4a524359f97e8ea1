"""Effective configuration: defaults < TOML file < HW_* environment variables.

Defaults work on a machine with PostgreSQL on 127.0.0.1:5432 and mosquitto on
127.0.0.1:1883, so a newcomer needs no file at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: SecretStr | None = None
    client_id: str = "hw-ingest-1"
    # A shared-subscription group lets N collectors split the load (MQTT v5 $share).
    share_group: str | None = None
    # How many unacknowledged QoS 1 messages the broker may have in flight to us.
    # Acks wait for the database commit, so this bounds memory and caps batch size.
    receive_maximum: int = Field(default=2000, ge=1, le=65535)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    keepalive_s: int = 30
    tls_ca: Path | None = None


class IngestSettings(BaseModel):
    # Batch transactions commit one after another, so at high rates larger batches carry
    # more (docs/performance.md); the 100 ms timer still closes batches early at ordinary
    # rates.
    batch_readings: int = Field(default=20_000, ge=1)
    batch_ms: int = Field(default=100, ge=1)
    # Writer connections: with 2, a batch's COPY runs while the batch before it finishes
    # (side effects, rules output, commit, acknowledgements); commits and acknowledgements
    # stay in order. 1: each batch's transaction starts after the previous one committed.
    writers: int = Field(default=2, ge=1, le=2)
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024)
    max_readings_per_message: int = Field(default=10_000, ge=1)
    max_future_s: int = Field(default=300, ge=0)
    dead_letter_max_age_days: int = Field(default=14, ge=1)
    dead_letter_max_rows: int = Field(default=100_000, ge=100)
    dead_letter_payload_bytes: int = Field(default=64 * 1024, ge=256)
    registry_refresh_s: float = Field(default=2.0, gt=0)
    # Several collector workers (docs/architecture.md "Scaling"). partitions > 0 must equal
    # the broker's plugin_opt_partitions: readings arrive under hwp/<k>/ and this process is
    # worker `worker` of `workers`, owning partitions k with k % workers == worker, by a
    # lease of lease_s seconds in PostgreSQL. 0: one collector, topics as gateways send them.
    partitions: int = Field(default=0, ge=0, le=4096)
    workers: int = Field(default=1, ge=1)
    worker: int = Field(default=0, ge=0)
    lease_s: float = Field(default=15.0, ge=3.0)

    @model_validator(mode="after")
    def _worker_slot(self) -> IngestSettings:
        if self.partitions == 0 and (self.workers != 1 or self.worker != 0):
            raise ValueError("workers/worker: several workers need partitions > 0 "
                             "(the broker's plugin_opt_partitions)")
        if self.partitions and self.workers > self.partitions:
            raise ValueError(f"workers: {self.workers} workers need at least as many partitions "
                             f"(partitions is {self.partitions})")
        if self.worker >= self.workers:
            raise ValueError(f"worker: {self.worker} is not below workers ({self.workers}); "
                             "workers are numbered from 0")
        return self


class StorageSettings(BaseModel):
    # auto: TimescaleDB when the extension is available, plain PostgreSQL otherwise.
    timescale: Literal["auto", "on", "off"] = "auto"
    retention_days: int = Field(default=90, ge=30)  # records kept >= 30 days by regulation
    compress_after_days: int = Field(default=1, ge=1)


class RulesSettings(BaseModel):
    enabled: bool = True
    # After a restart the engine replays this much recent history to rebuild trend state.
    replay_s: float = Field(default=1800.0, ge=0)
    tick_s: float = Field(default=1.0, gt=0)   # no-data timers and duration escalation


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080


LevelName = Literal["blue", "yellow", "orange", "red"]


class EscalationSettings(BaseModel):
    """Ladder 提示 (on raise) → 警示 (not acknowledged in time) → 督办 (not disposed in time).

    No national time limits were found (STANDARDS.md): these are chosen defaults, per level."""

    ack_s: dict[LevelName, float] = {"red": 300, "orange": 900, "yellow": 3600, "blue": 4 * 3600}
    dispose_s: dict[LevelName, float] = {"red": 3600, "orange": 4 * 3600, "yellow": 24 * 3600,
                                         "blue": 72 * 3600}
    tick_s: float = Field(default=5.0, gt=0)


class ReceiverSettings(BaseModel):
    """One notification receiver. type picks the module in alerting/receivers/."""

    name: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    type: Literal["webhook", "dingtalk", "wecom", "feishu", "mqtt", "alertmanager"]
    url: str | None = None                 # webhook / robot / Alertmanager base URL
    secret: SecretStr | None = None        # HMAC key (webhook) or robot signing secret
    topic: str = "hw/v1/northbound/warnings"  # mqtt: topic prefix
    min_level: LevelName = "blue"          # route: only warnings at or above this level
    actions: list[str] = ["raised", "reactivated", "level_up", "escalated", "cleared", "closed"]
    timeout_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=10, ge=1)
    username: str | None = None            # mqtt: broker user (password in `secret`)
    client_id: str | None = None           # mqtt: default hw-northbound-<name>
    resend_s: float = Field(default=60.0, gt=0)  # alertmanager: re-send firing alerts this often


class AlertingSettings(BaseModel):
    enabled: bool = True                   # lifecycle ticker + outbox dispatcher in `serve`
    escalation: EscalationSettings = EscalationSettings()
    receivers: list[ReceiverSettings] = []
    dispatch_interval_s: float = Field(default=1.0, gt=0)
    retry_base_s: float = Field(default=2.0, gt=0)    # back-off: base × 2^attempt, capped
    retry_max_s: float = Field(default=300.0, gt=0)
    max_shelve_s: float = Field(default=7 * 24 * 3600, gt=0)
    chatter_n: int = Field(default=3, ge=2)           # EEMUA 191: >= 3 in 1 minute
    chatter_window_s: float = Field(default=60.0, gt=0)
    console_url: str = "http://127.0.0.1:8080"        # links in notifications


class BrokerSettings(BaseModel):
    """mosquitto's files that `hazardwatch gateway add|remove` maintain. The defaults are the
    paths inside the mosquitto container (docker-compose mounts its data volume there in
    the hazardwatch container too)."""

    password_file: Path = Path("/mosquitto/data/passwd")
    acl_file: Path = Path("/mosquitto/data/acl")
    gateways_file: Path | None = None      # per-gateway ACL blocks; default gateways.acl beside acl_file
    acl_template: Path | None = None       # default: deploy/mosquitto/acl as installed with hazardwatch
    pid_file: Path | None = None           # mosquitto's pid_file: SIGHUP it after a change


class AuthSettings(BaseModel):
    token_ttl_s: int = Field(default=12 * 3600, ge=60)
    login_attempts: int = Field(default=5, ge=1)      # per username and client per window
    login_window_s: int = Field(default=300, ge=1)
    cookie_secure: bool = False                       # set true behind TLS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HW_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/hazardwatch")
    log_level: str = "INFO"
    log_format: Literal["console", "json"] = "console"
    mqtt: MqttSettings = MqttSettings()
    ingest: IngestSettings = IngestSettings()
    storage: StorageSettings = StorageSettings()
    rules: RulesSettings = RulesSettings()
    http: HttpSettings = HttpSettings()
    alerting: AlertingSettings = AlertingSettings()
    auth: AuthSettings = AuthSettings()
    broker: BrokerSettings = BrokerSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def dsn(self) -> str:
        return self.database_url.get_secret_value()


def config_file() -> Path | None:
    """HW_CONFIG names the TOML file; otherwise ./hazardwatch.toml if present."""
    named = os.environ.get("HW_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise FileNotFoundError(f"HW_CONFIG={named}: no such file")
        return path
    local = Path("hazardwatch.toml")
    return local if local.is_file() else None


def masked(settings: Settings) -> dict[str, Any]:
    """Settings as plain data with every secret (and a DSN's password) masked."""
    data = settings.model_dump(mode="json")
    data["database_url"] = _mask_dsn(settings.dsn())
    if settings.mqtt.password is not None:
        data["mqtt"]["password"] = "********"
    for receiver in data["alerting"]["receivers"]:
        if receiver.get("secret") is not None:
            receiver["secret"] = "********"
    return data


def _mask_dsn(dsn: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":********@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
