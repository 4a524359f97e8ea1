"""The HTTP API's shapes (docs/alerting.md, "HTTP API"): pydantic models, so the OpenAPI
document at /docs says exactly what the console and other clients get.

Warnings and events are built as plain dicts by `alerting.notification` (the same shape a
webhook or an SSE frame carries); these models validate and document them. Times are
RFC 3339 UTC ("…Z").
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

LevelName = Literal["blue", "yellow", "orange", "red"]
State = Literal["active_unack", "active_ack", "cleared_unack", "cleared", "closed"]
Role = Literal["officer", "enterprise", "admin"]

NOTE_MAX = 4000


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# Text that reaches the database: PostgreSQL text and jsonb cannot hold NUL.
Text = Annotated[str, AfterValidator(_no_nul)]


class Limits(BaseModel):
    ll: float | None = None
    l: float | None = None  # noqa: E741 - the contract's name
    h: float | None = None
    hh: float | None = None


class SensorOut(BaseModel):
    id: int
    tag: str
    kind: str
    unit: str
    range: tuple[float, float]
    limits: Limits
    interval_s: float


class SiteRef(BaseModel):
    id: int
    code: str
    name: str
    kind: str
    grade: int


class CodeName(BaseModel):
    code: str
    name: str


class GatewayRef(BaseModel):
    code: str


class WarningOut(BaseModel):
    id: int
    cause: str
    title_zh: str
    title_en: str
    kind: str
    level: int = Field(ge=1, le=4)
    level_name: LevelName
    state: State
    active: bool
    acknowledged: bool
    escalation: int = Field(ge=0, le=2)
    count: int
    opened_at: datetime
    raised_at: datetime
    updated_at: datetime
    cleared_at: datetime | None
    closed_at: datetime | None
    acknowledged_at: datetime | None
    disposed_at: datetime | None
    disposal: str | None
    closing_note: str | None
    shelved_until: datetime | None
    shelved_reason: str | None
    suppressed_by: int | None
    peak_value: float | None
    peak_sensor: SensorOut | None
    detail: dict[str, Any]
    site: SiteRef
    enterprise: CodeName
    region: CodeName


class EventOut(BaseModel):
    id: int
    warning_id: int
    at: datetime
    actor: str
    action: str
    level: int | None
    detail: dict[str, Any]


class AlarmOut(BaseModel):
    id: int
    condition: str
    active: bool
    raised_at: datetime
    cleared_at: datetime | None
    value: float | None
    peak_value: float | None
    detail: dict[str, Any]
    sensor: SensorOut | None
    gateway: GatewayRef | None


class WarningDetail(WarningOut):
    alarms: list[AlarmOut]
    events: list[EventOut]


class WarningList(BaseModel):
    items: list[WarningOut]
    total: int


class StreamFrame(BaseModel):
    """The data of one SSE frame (`event: warning`)."""

    event: EventOut
    warning: WarningOut


# ---------------------------------------------------------------- action bodies


class AcknowledgeIn(BaseModel):
    note: Text | None = Field(default=None, max_length=NOTE_MAX)


class CommentIn(BaseModel):
    text: Text = Field(min_length=1, max_length=NOTE_MAX)


class DisposeIn(BaseModel):
    note: Text = Field(min_length=1, max_length=NOTE_MAX)


class CloseIn(BaseModel):
    note: Text | None = Field(default=None, max_length=NOTE_MAX)


class ShelveIn(BaseModel):
    reason: Text = Field(min_length=1, max_length=NOTE_MAX)
    until: AwareDatetime


# ---------------------------------------------------------------- auth


class LoginIn(BaseModel):
    username: Text = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class UserOut(BaseModel):
    id: int
    username: str
    display_name: str | None
    role: Role
    region: CodeName | None
    enterprise: CodeName | None


class LoginOut(BaseModel):
    token: str
    expires_at: datetime
    user: UserOut


# ---------------------------------------------------------------- readings


class ReadingsOut(BaseModel):
    sensor: SensorOut
    resolution: Literal["raw", "1m", "1h"]
    points: list[tuple[int, float | None, float | None, float | None]] = Field(
        description="[ts_ms, value, min, max]; raw: min = max = value; roll-ups: value = mean")
    from_: datetime = Field(alias="from", serialization_alias="from")
    to: datetime
    capped: bool = Field(description="true when there were more points than `limit`: "
                                     "the newest `limit` points are returned")
    limit: int

    model_config = {"populate_by_name": True}


# ---------------------------------------------------------------- registry


class GatewayOut(BaseModel):
    code: str
    online: bool | None
    last_seen: datetime | None


class SiteOut(SiteRef):
    pass


class SiteWithSensors(SiteRef):
    sensors: list[SensorOut]


class EnterpriseOut(BaseModel):
    code: str
    name: str
    region: CodeName
    sites: list[SiteOut]
    gateways: list[GatewayOut]


class EnterpriseDetail(EnterpriseOut):
    sites: list[SiteWithSensors]  # type: ignore[assignment]


class UnregisteredTag(BaseModel):
    enterprise: str
    gateway: str
    tag: str
    count: int
    first_seen: datetime
    last_seen: datetime
    last_value: float | None


class DeadLetterOut(BaseModel):
    id: int
    received_at: datetime
    topic: str
    dialect: str
    enterprise: str | None
    gateway: str | None
    reason: str
    errors: list[dict[str, Any]] | dict[str, Any]
    accepted: int
    rejected: int
    payload_text: str
    payload_truncated: bool


# ---------------------------------------------------------------- KPIs


class KpisOut(BaseModel):
    """Computed by alerting.kpis; the keys are the contract's, the inner shapes are its own."""

    model_config = {"extra": "allow"}

    gateways: dict[str, Any]
    warnings: dict[str, Any]
    mtta_s: float | None
    mttc_s: float | None
    overdue: dict[str, Any]
    alarm_rate: dict[str, Any]
    chattering: list[Any]
