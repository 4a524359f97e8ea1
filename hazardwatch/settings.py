"""Effective configuration: defaults < TOML file < HW_* environment variables.

Defaults work on a machine with PostgreSQL on 127.0.0.1:5432 and mosquitto on
127.0.0.1:1883, so a newcomer needs no file at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
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
    batch_readings: int = Field(default=5000, ge=1)
    batch_ms: int = Field(default=100, ge=1)
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024)
    max_readings_per_message: int = Field(default=10_000, ge=1)
    max_future_s: int = Field(default=300, ge=0)
    dead_letter_max_age_days: int = Field(default=14, ge=1)
    dead_letter_max_rows: int = Field(default=100_000, ge=100)
    dead_letter_payload_bytes: int = Field(default=64 * 1024, ge=256)
    registry_refresh_s: float = Field(default=2.0, gt=0)


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
    return data


def _mask_dsn(dsn: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":********@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
