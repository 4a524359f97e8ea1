"""The published MQTT contract (DESIGN.md §4) as pydantic models, and their JSON Schemas.

These models DOCUMENT the wire formats: `schema/payloads/*.schema.json` is generated from
them (`python -m ingest.contract`; a test proves the committed files are current), and
docs/gateway-guide.md is checked against those files. They are also used on the slow path
only, by `explain()`, to say precisely why a message was refused. The hot path decodes by
hand (ingest/dialects) and must accept everything these models accept:

    valid against the schema  ⇒  every reading is accepted as sent (registry permitting)

The converse does not hold: the decoder is more lenient in a few documented places (it
ignores a null `q`, accepts RFC 3339 in ThingsBoard `ts`, …) and refuses per reading what
the schema refuses per document (a string value costs that reading, not the message).

Decisions kept here so the decoder, the schema and the guide cannot disagree:
- Tag: 1..128 characters of ``A-Z a-z 0-9 _ . : / -`` (no spaces, quotes or MQTT
  wildcards: tags go unquoted through CSV, YAML keys and shells). ThingsBoard: tag = ``<device>.<key>``, device ≤ 64 and
  key ≤ 63 characters of the same alphabet, so the joined tag is ≤ 128.
- Timestamp: epoch milliseconds (any JSON number, fractions allowed) ≥ 946684800000
  (2000-01-01T00:00:00Z; smaller numbers look like epoch seconds and are refused), or an
  RFC 3339 string with an explicit offset (``T`` separator, upper-case ``Z`` or ±hh:mm, up
  to 9 fraction digits; not before 2000). No upper bound here: "more than
  ingest.max_future_s ahead" is checked against the clock at run time.
- Value: a JSON number, ``true``/``false`` (stored 1/0) or ``null`` (no value; stored with
  quality 2 unless `q` says otherwise). NaN/Infinity are not JSON and are refused.
- Integers (`q`, `seq`, ThingsBoard `ts`) follow JSON Schema: ``1.0`` is the integer 1.
- Empty arrays are refused (an array must hold at least one group/entry); an empty
  ``values`` object is valid and stores nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    StrictBool,
    StringConstraints,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticCustomError, core_schema

from ingest.reasons import Reason

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URI = "https://hazardwatch.example/schema/payloads/"

EPOCH_MS_MIN = 946_684_800_000  # 2000-01-01T00:00:00Z
TAG_PATTERN = r"^[A-Za-z0-9_.:/-]+$"
TAG_MAX = 128
TB_DEVICE_MAX = 64
TB_KEY_MAX = TAG_MAX - TB_DEVICE_MAX - 1  # "<device>.<key>" fits in a tag
SEQ_MAX = 2**63 - 1  # stored as bigint
# RFC 3339 date-time as Python's datetime.fromisoformat (3.11) reads it: ASCII digits,
# "T", an explicit offset, year 2000 or later. The after-validator also rejects impossible
# dates (Feb 30) and the first hours of 2000 with a positive offset (still 1999 in UTC),
# which a regular expression cannot see.
RFC3339_PATTERN = (
    r"^(2[0-9]{3}|[3-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)

_EXAMPLE_MS = 1_732_262_400_000  # 2024-11-22T08:00:00Z = 16:00 Beijing time
_REASONS = frozenset(str(r) for r in Reason)


# ---- reusable field types ---------------------------------------------------------------

def _kind(v: object) -> str:
    if v is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            int: "integer", float: "number"}.get(type(v), type(v).__name__)


def _error(reason: Reason | str, message: str) -> PydanticCustomError:
    # The message goes in as context so braces in it are never taken as placeholders.
    return PydanticCustomError(str(reason), "{message}", {"message": message})


def _as(reason: Reason, message: str) -> WrapValidator:
    """Re-raise any failure of the wrapped type as one error whose type is a reason code."""

    def wrap(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            inner = exc.errors()
            own = [e for e in inner if e["type"] in _REASONS]
            if own:  # one of our validators said exactly what is wrong
                raise _error(reason, own[0]["msg"]) from None
            why = f" ({inner[0]['msg']})" if len(inner) == 1 else ""
            raise _error(reason, f"{message}, got {_short(value)}{why}") from None

    return WrapValidator(wrap)


def _short(v: object) -> str:
    """A value as JSON would spell it (NaN and ±Infinity as Python does), cut short."""
    if isinstance(v, dict | list):
        return _kind(v)
    if type(v) is float and not math.isfinite(v):
        return repr(v)
    try:
        text = orjson.dumps(v).decode()
    except TypeError:
        text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _integral(v: Any) -> Any:
    """JSON has one number type: 1.0 is the integer 1 (as JSON Schema's "integer" says)."""
    if type(v) is float and v.is_integer():
        return int(v)
    return v


def _epoch_ms(v: float) -> float:
    if v < EPOCH_MS_MIN:
        shown = f"{v:.0f}" if float(v).is_integer() else repr(v)
        hint = " (looks like epoch seconds: send milliseconds)" if v > 9.4e8 else ""
        raise _error(Reason.BAD_TIMESTAMP, f"{shown} is before 2000-01-01{hint}")
    return v


def _rfc3339(v: str) -> str:
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise _error(Reason.BAD_TIMESTAMP, f"{v!r} is not a valid date-time") from None
    if dt.tzinfo is None:
        raise _error(Reason.BAD_TIMESTAMP, f"{v!r} has no UTC offset")
    if dt.timestamp() * 1000.0 < EPOCH_MS_MIN:
        raise _error(Reason.BAD_TIMESTAMP, f"{v!r} is before 2000-01-01")
    return v


EpochMs = Annotated[
    float,
    AfterValidator(_epoch_ms),
    Field(
        json_schema_extra={"minimum": EPOCH_MS_MIN},
        description="Unix epoch milliseconds (UTC), at or after 946684800000 = 2000-01-01.",
    ),
]
Rfc3339 = Annotated[
    str,
    StringConstraints(pattern=RFC3339_PATTERN),
    AfterValidator(_rfc3339),
    Field(
        json_schema_extra={"format": "date-time"},
        description="RFC 3339 date-time with an explicit offset, e.g. 2024-11-22T16:00:00+08:00.",
    ),
]
Timestamp = Annotated[
    Union[EpochMs, Rfc3339],  # noqa: UP007 - the JSON Schema is generated from this spelling
    _as(Reason.BAD_TIMESTAMP, "expected epoch milliseconds >= 946684800000 or RFC 3339 "
        "with an offset"),
]
TbTimestamp = Annotated[
    int,
    BeforeValidator(_integral),
    AfterValidator(_epoch_ms),
    Field(json_schema_extra={"minimum": EPOCH_MS_MIN}),
    _as(Reason.BAD_TIMESTAMP, "expected integer epoch milliseconds >= 946684800000"),
]

TagKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TAG_MAX, pattern=TAG_PATTERN),
    _as(Reason.SCHEMA, f"a tag is 1..{TAG_MAX} characters of A-Z a-z 0-9 _ . : / -"),
]
TbDeviceName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TB_DEVICE_MAX, pattern=TAG_PATTERN),
    _as(Reason.SCHEMA, f"a device name is 1..{TB_DEVICE_MAX} characters of A-Z a-z 0-9 _ . : / -"),
]
TbKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TB_KEY_MAX, pattern=TAG_PATTERN),
    _as(Reason.SCHEMA, f"a telemetry key is 1..{TB_KEY_MAX} characters of A-Z a-z 0-9 _ . : / -"),
]
Value = Annotated[
    Union[StrictBool, float, None],  # noqa: UP007 - bool first: true is not the number 1
    _as(Reason.NOT_A_NUMBER, "expected a finite number, true/false or null"),
]
Quality = Annotated[
    int,
    Field(ge=0, le=4),
    BeforeValidator(_integral),
    _as(Reason.BAD_QUALITY, "expected an integer quality code 0..4"),
]

VALUES_DESCRIPTION = (
    "Readings of this instant: sensor tag → value. A tag is 1..128 characters of "
    "A-Z a-z 0-9 _ . : / - and must be registered for the enterprise (unregistered tags "
    "are refused one by one as unknown_tag and listed for onboarding). A value is a finite "
    "number, true/false for digital points (stored 1/0), or null when the gateway has no "
    "value (stored empty with quality 2 = bad unless `q` gives another code)."
)
QUALITY_DESCRIPTION = (
    "Optional OPC-style quality per tag: 0 good, 1 uncertain, 2 bad, 3 sensor fault, "
    "4 maintenance. Tags not listed are 0 (good), or 2 (bad) when their value is null. "
    "Entries for tags absent from `values` are ignored."
)


# ---- native v1 --------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ReadingGroup(_Strict):
    """Readings of one instant: a timestamp, values by tag, optional quality codes and
    the gateway's message counter. Keys other than ts, values, q and seq are refused."""

    model_config = ConfigDict(
        title="ReadingGroup",
        json_schema_extra={"examples": [
            {"ts": _EXAMPLE_MS, "values": {"TK101.LT1": 12.31, "TK101.TT": 25.2}},
            {"ts": "2024-11-22T16:00:00+08:00",
             "values": {"TK101.LT1": 12.31, "TK101.TT": None, "TK101.XV1": True},
             "q": {"TK101.TT": 3}, "seq": 1042},
        ]},
    )

    ts: Timestamp = Field(
        description=(
            "When the values were measured: Unix epoch milliseconds (UTC) as a JSON number, "
            "at or after 946684800000 (2000-01-01; smaller numbers look like epoch seconds "
            "and are refused as bad_timestamp), or an RFC 3339 string with an offset. At most "
            "ingest.max_future_s (default 300 s) ahead of the server clock."
        ),
        examples=[_EXAMPLE_MS, "2024-11-22T16:00:00+08:00", "2024-11-22T08:00:00.250Z"],
    )
    values: dict[TagKey, Value] = Field(
        description=VALUES_DESCRIPTION,
        examples=[{"TK101.LT1": 12.31, "TK101.TT": 25.2, "TK101.XV1": False, "TK101.PT": None}],
    )
    q: dict[TagKey, Quality] | None = Field(
        default=None,
        description=QUALITY_DESCRIPTION,
        examples=[{"TK101.TT": 3, "TK101.PT": 4}],
    )
    seq: Annotated[int, Field(ge=0, le=SEQ_MAX), BeforeValidator(_integral)] | None = Field(
        default=None,
        description=(
            "Optional message counter kept by the gateway (non-negative 64-bit integer). "
            "Shown to operators to spot gaps; never used to drop data."
        ),
        examples=[1042],
    )


def _object_or_array(v: Any) -> str | None:
    return "<object>" if type(v) is dict else "<array>" if type(v) is list else None


def _one_of(fn: Callable[[Any], str | None], expected: str) -> Discriminator:
    return Discriminator(fn, custom_error_type=str(Reason.SCHEMA), custom_error_message=expected)


class NativeReadings(RootModel[Annotated[
    Union[  # noqa: UP007
        Annotated[ReadingGroup, Tag("<object>")],
        Annotated[list[ReadingGroup], Field(min_length=1), Tag("<array>")],
    ],
    _one_of(_object_or_array, "expected a reading group object or a non-empty array of them"),
]]):
    """A reading group, or a non-empty JSON array of reading groups (e.g. one per instant).
    About 50 readings a message is the design point; at most ingest.max_readings_per_message
    (default 10,000) readings and ingest.max_payload_bytes (default 256 KiB) a message."""

    TOPICS: ClassVar[tuple[str, ...]] = ("hw/v1/{enterprise}/{gateway}/readings",)
    model_config = ConfigDict(
        title="hazardwatch native v1 readings",
        json_schema_extra={"examples": [
            {"ts": _EXAMPLE_MS, "values": {"TK101.LT1": 12.31, "TK101.TT": 25.2}},
            {"ts": _EXAMPLE_MS, "values": {"TK101.LT1": 12.31, "TK101.TT": None, "TK101.XV1": True},
             "q": {"TK101.TT": 3}, "seq": 1042},
            [
                {"ts": _EXAMPLE_MS, "values": {"TK101.LT1": 12.31, "TK101.TT": 25.2}},
                {"ts": _EXAMPLE_MS + 10_000, "values": {"TK101.LT1": 12.35, "TK101.TT": 25.3},
                 "q": {"TK101.TT": 1}},
            ],
        ]},
    )


class GatewayState(BaseModel):
    """JSON object form of the gateway state. Keys other than `state` are ignored; the
    state change is stamped with the broker receipt time."""

    model_config = ConfigDict(
        strict=True, extra="allow", title="GatewayState",
        json_schema_extra={"examples": [{"state": "online"}, {"state": "offline"}]},
    )

    state: Literal["online", "offline"] = Field(
        description="online after connecting; offline as the MQTT last-will or before a clean stop.",
        examples=["online", "offline"],
    )


def _string_or_object(v: Any) -> str | None:
    return "<string>" if type(v) is str else "<object>" if type(v) is dict else None


class NativeState(RootModel[Annotated[
    Union[  # noqa: UP007
        Annotated[Literal["online", "offline"], Tag("<string>")],
        Annotated[GatewayState, Tag("<object>")],
    ],
    _one_of(_string_or_object, 'expected online, offline or {"state": "online"|"offline"}'),
]]):
    """Gateway link state, published RETAINED. Recommended payload: the bare text `online`
    or `offline` (not JSON; surrounding whitespace is ignored). Also accepted: the JSON
    string "online"/"offline" or the object {"state": "online"|"offline"}; this schema
    describes those JSON forms. Set the MQTT last-will to `offline` (retained, QoS 1) on
    this topic and publish `online` (retained) right after connecting."""

    TOPICS: ClassVar[tuple[str, ...]] = ("hw/v1/{enterprise}/{gateway}/state",)
    model_config = ConfigDict(
        title="hazardwatch native v1 gateway state",
        json_schema_extra={"examples": ["online", "offline", {"state": "online"}]},
    )


# ---- ThingsBoard gateway and device APIs ------------------------------------------------
# Payloads as in ThingsBoard's MQTT gateway API and device API references; an object with
# both "ts" and "values" is the timestamped form, any other object the short form (the
# rule ThingsBoard's own converter applies).

TB_VALUES_DESCRIPTION = (
    "{what} → finite number, true/false (stored 1/0) or null (no value, stored with "
    "quality 2). Strings and JSON objects, which ThingsBoard itself would store, are "
    "refused one by one as not_a_number."
)
TB_TS_DESCRIPTION = (
    "Unix epoch milliseconds (UTC) as an integer, at or after 946684800000 (2000-01-01; "
    "epoch seconds are refused as bad_timestamp)."
)


def _no_ts_values(d: dict[str, Any]) -> dict[str, Any]:
    reserved = [k for k in ("ts", "values") if k in d]
    if reserved:
        raise _error(
            Reason.SCHEMA,
            f"{' and '.join(reserved)} in a short-form entry: send exactly "
            '{"ts": <ms>, "values": {...}}, or key/value pairs without ts and values',
        )
    return d


_NOT_TS_VALUES = {"not": {"anyOf": [{"required": ["ts"]}, {"required": ["values"]}]}}


def _tb_entry_kind(v: Any) -> str | None:
    if type(v) is not dict:
        return None
    return "<ts-values>" if "ts" in v and "values" in v else "<short>"


class TbTsEntry(_Strict):
    """Timestamped entry of the gateway API: {"ts": epoch ms, "values": {key: value}}.
    No other keys."""

    model_config = ConfigDict(
        title="TbTsEntry",
        json_schema_extra={"examples": [{"ts": _EXAMPLE_MS, "values": {"LT1": 12.31, "TT": 25.2}}]},
    )

    ts: TbTimestamp = Field(description=TB_TS_DESCRIPTION, examples=[_EXAMPLE_MS])
    values: dict[TbKey, Value] = Field(
        description=TB_VALUES_DESCRIPTION.format(
            what=f"Telemetry key (1..{TB_KEY_MAX} characters of A-Z a-z 0-9 _ . : / -)"),
        examples=[{"LT1": 12.31, "TT": 25.2, "XV1": True}],
    )


class TbShortEntry(RootModel[Annotated[
    dict[TbKey, Value], AfterValidator(_no_ts_values)]]):
    """Short entry of the gateway API without a timestamp: {key: value, ...}, stamped with
    the broker receipt time (ThingsBoard uses server time). `ts` and `values` are not
    allowed as keys here: they belong to the timestamped form."""

    model_config = ConfigDict(
        strict=True, allow_inf_nan=False, title="TbShortEntry",
        json_schema_extra={"examples": [{"LT1": 12.31, "TT": 25.2}], **_NOT_TS_VALUES},
    )


TbEntry = Annotated[
    Union[  # noqa: UP007
        Annotated[TbTsEntry, Tag("<ts-values>")],
        Annotated[TbShortEntry, Tag("<short>")],
    ],
    _one_of(_tb_entry_kind, 'expected {"ts": <ms>, "values": {...}} or {"<key>": <value>, ...}'),
]


class TbGatewayTelemetry(RootModel[dict[
    TbDeviceName, Annotated[list[TbEntry], Field(min_length=1)],
]]):
    """ThingsBoard gateway API telemetry: device name → non-empty array of entries, each
    {"ts": epoch ms, "values": {key: value}} or the short form {key: value} (stamped with
    the broker receipt time). A reading's tag is "<device>.<key>" (TK101 + LT1 → TK101.LT1):
    device names are 1..64 and keys 1..63 characters of A-Z a-z 0-9 _ . : / -. The gateway
    is known by its MQTT username, not by the payload."""

    TOPICS: ClassVar[tuple[str, ...]] = ("v1/gateway/telemetry",)
    model_config = ConfigDict(
        strict=True, title="ThingsBoard gateway API telemetry",
        json_schema_extra={"examples": [
            {"TK101": [{"ts": _EXAMPLE_MS, "values": {"LT1": 12.31, "TT": 25.2}},
                       {"ts": _EXAMPLE_MS + 10_000, "values": {"LT1": 12.35, "TT": 25.3}}],
             "TK102": [{"ts": _EXAMPLE_MS, "values": {"LT1": 7.9, "XV1": False}}]},
            {"TK101": [{"LT1": 12.31, "TT": 25.2}]},
        ]},
    )


class TbGatewayConnect(BaseModel):
    """ThingsBoard gateway API device connect / disconnect notice. hazardwatch takes it as
    a sign of life of the gateway and creates nothing (sensors come from the registry).
    `type` (ThingsBoard device type or profile) is accepted and unused; other keys are
    ignored."""

    TOPICS: ClassVar[tuple[str, ...]] = ("v1/gateway/connect", "v1/gateway/disconnect")
    model_config = ConfigDict(
        strict=True, extra="allow", title="ThingsBoard gateway API device connect/disconnect",
        json_schema_extra={"examples": [{"device": "TK101"}, {"device": "TK101", "type": "default"}]},
    )

    device: TbDeviceName = Field(
        description="Device name, as used in v1/gateway/telemetry (the first part of its tags).",
        examples=["TK101"],
    )
    type: str | None = Field(
        default=None,
        description="ThingsBoard device type or profile name: accepted, not used.",
        examples=["default"],
    )


class TbDeviceTsEntry(_Strict):
    """Timestamped entry of the device API: {"ts": epoch ms, "values": {tag: value}}.
    No other keys."""

    model_config = ConfigDict(
        title="TbDeviceTsEntry",
        json_schema_extra={"examples": [{"ts": _EXAMPLE_MS, "values": {"TK101.LT1": 12.31}}]},
    )

    ts: TbTimestamp = Field(description=TB_TS_DESCRIPTION, examples=[_EXAMPLE_MS])
    values: dict[TagKey, Value] = Field(
        description=TB_VALUES_DESCRIPTION.format(
            what=f"Tag (1..{TAG_MAX} characters of A-Z a-z 0-9 _ . : / -)"),
        examples=[{"TK101.LT1": 12.31, "TK101.TT": 25.2}],
    )


class TbDeviceShortEntry(RootModel[Annotated[
    dict[TagKey, Value], AfterValidator(_no_ts_values)]]):
    """Short entry of the device API without a timestamp: {tag: value, ...}, stamped with
    the broker receipt time. `ts` and `values` are not allowed as keys here."""

    model_config = ConfigDict(
        strict=True, allow_inf_nan=False, title="TbDeviceShortEntry",
        json_schema_extra={"examples": [{"TK101.LT1": 12.31, "TK101.TT": 25.2}], **_NOT_TS_VALUES},
    )


TbDeviceEntry = Annotated[
    Union[  # noqa: UP007
        Annotated[TbDeviceTsEntry, Tag("<ts-values>")],
        Annotated[TbDeviceShortEntry, Tag("<short>")],
    ],
    _one_of(_tb_entry_kind, 'expected {"ts": <ms>, "values": {...}} or {"<tag>": <value>, ...}'),
]


class TbDeviceTelemetry(RootModel[Annotated[
    Union[  # noqa: UP007
        Annotated[TbDeviceEntry, Tag("<object>")],
        Annotated[list[TbDeviceEntry], Field(min_length=1), Tag("<array>")],
    ],
    _one_of(_object_or_array, "expected an object or a non-empty array of objects"),
]]):
    """ThingsBoard device API telemetry, for a gateway that speaks the device API:
    {"ts": epoch ms, "values": {tag: value}}, the short form {tag: value} (stamped with
    the broker receipt time), or a non-empty array of either. Keys are whole tags
    (TK101.LT1), 1..128 characters of A-Z a-z 0-9 _ . : / -."""

    TOPICS: ClassVar[tuple[str, ...]] = ("v1/devices/me/telemetry",)
    model_config = ConfigDict(
        title="ThingsBoard device API telemetry",
        json_schema_extra={"examples": [
            {"ts": _EXAMPLE_MS, "values": {"TK101.LT1": 12.31, "TK101.TT": 25.2}},
            {"TK101.LT1": 12.31, "TK101.TT": 25.2},
            [{"ts": _EXAMPLE_MS, "values": {"TK101.LT1": 12.31}},
             {"ts": _EXAMPLE_MS + 10_000, "values": {"TK101.LT1": 12.35}}],
        ]},
    )


# ---- the published set ------------------------------------------------------------------

SCHEMAS: dict[str, type[BaseModel]] = {
    "native-readings": NativeReadings,
    "native-state": NativeState,
    "thingsboard-gateway-telemetry": TbGatewayTelemetry,
    "thingsboard-gateway-connect": TbGatewayConnect,
    "thingsboard-device-telemetry": TbDeviceTelemetry,
}

# Models that appear inside the published ones (their examples are checked too).
NESTED: tuple[type[BaseModel], ...] = (
    ReadingGroup, GatewayState, TbTsEntry, TbShortEntry, TbDeviceTsEntry, TbDeviceShortEntry,
)

_HEAD = ("$schema", "$id", "title", "description")


class _Generator(GenerateJsonSchema):
    """pydantic's generator, tidied for a published contract."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # property titles would only repeat the property names

    def sort(self, value: Any, parent_key: str | None = None) -> Any:
        return value  # _tidy orders keys, and leaves examples exactly as written

    def dict_schema(self, schema: core_schema.DictSchema) -> dict[str, Any]:
        # pydantic puts a key pattern into patternProperties, which leaves keys that do
        # NOT match unconstrained. The contract means "every key matches": propertyNames.
        out = super().dict_schema(schema)
        patterns = out.pop("patternProperties", None)
        if patterns:
            ((pattern, value_schema),) = patterns.items()
            out["propertyNames"] = {**out.get("propertyNames", {}), "pattern": pattern}
            out["additionalProperties"] = value_schema
        return out


def schema_of(stem: str) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one published payload, as plain data."""
    model = SCHEMAS[stem]
    body = model.model_json_schema(schema_generator=_Generator)
    topics: tuple[str, ...] = model.TOPICS  # type: ignore[attr-defined]
    label = "MQTT topic" if len(topics) == 1 else "MQTT topics"
    head = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"{SCHEMA_BASE_URI}{stem}.schema.json",
        "title": body.pop("title"),
        "description": f"{label} {', '.join(topics)}. {body.pop('description', '')}".strip(),
    }
    return _tidy({**head, **body}, top=True)


def _tidy(node: Any, *, top: bool = False, keep_order: bool = False) -> Any:
    """Stable output: keys sorted (the head first; property order as declared) and
    descriptions on one line."""
    if isinstance(node, list):
        return [_tidy(v) for v in node]
    if not isinstance(node, dict):
        return node
    if keep_order:
        keys = list(node)
    else:
        keys = sorted(node)
        if top:
            keys = [k for k in _HEAD if k in node] + [k for k in keys if k not in _HEAD]
    out: dict[str, Any] = {}
    for key in keys:
        value = node[key]
        if key == "description" and isinstance(value, str) and not keep_order:
            out[key] = " ".join(value.split())
        elif key == "examples" and not keep_order:
            out[key] = value  # examples are data: keep them exactly as written
        else:
            out[key] = _tidy(value, keep_order=(key == "properties" and not keep_order))
    return out


def render(stem: str) -> str:
    """The file text of `<stem>.schema.json`: 2-space indent, UTF-8, trailing newline."""
    return json.dumps(schema_of(stem), indent=2, ensure_ascii=False) + "\n"


def export(directory: Path) -> list[Path]:
    """Write every `<stem>.schema.json` into directory (files already current are left
    untouched); return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem in SCHEMAS:
        path = directory / f"{stem}.schema.json"
        data = render(stem).encode("utf-8")
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        paths.append(path)
    return paths


def stale(directory: Path) -> list[str]:
    """What differs between directory and freshly generated schemas, one line each."""
    problems = []
    for stem in SCHEMAS:
        path = directory / f"{stem}.schema.json"
        if not path.is_file():
            problems.append(f"missing: {path}")
        elif path.read_bytes() != render(stem).encode("utf-8"):
            problems.append(f"stale: {path}")
    expected = {f"{stem}.schema.json" for stem in SCHEMAS}
    for path in sorted(directory.glob("*.schema.json")):
        if path.name not in expected:
            problems.append(f"unexpected: {path} (no model in ingest/contract.py)")
    return problems


# ---- slow path: say why a payload does not meet the contract ----------------------------

_PER_TAG = frozenset({str(Reason.NOT_A_NUMBER), str(Reason.BAD_QUALITY)})


def explain(stem: str, payload: bytes | str | Any) -> list[dict[str, str]]:
    """Every way payload breaks the contract of `stem`, as dead-letter errors
    ([{reason, field, tag?, detail}], the shape of dead_letters.errors); [] when valid.

    bytes/str are decoded as the broker delivered them; anything else is taken as the
    decoded JSON value. For slow paths (dead letters, tooling), not per message.
    """
    model = SCHEMAS[stem]
    data = payload
    if isinstance(payload, bytes | bytearray | memoryview | str):
        raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        if stem == "native-state" and raw.strip() in (b"online", b"offline"):
            return []
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return [{"reason": str(Reason.UNDECODABLE), "field": "$", "detail": f"not UTF-8 JSON: {exc}"}]
    try:
        model.model_validate(data)
    except ValidationError as exc:
        out: list[dict[str, str]] = []
        for err in exc.errors():
            problem = _problem(stem, err)
            if problem not in out:
                out.append(problem)
        return out
    return []


def _problem(stem: str, err: Any) -> dict[str, str]:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("<"))]
    reason = err["type"] if err["type"] in _REASONS else str(Reason.SCHEMA)
    is_key = bool(loc) and loc[-1] == "[key]"
    if is_key:
        loc = loc[:-1]
    tag = None
    if (is_key or reason in _PER_TAG) and loc and isinstance(loc[-1], str):
        tag = loc.pop()
        if stem == "thingsboard-gateway-telemetry":
            tag = f"{loc[0]}.{tag}" if loc else None  # no loc left: the device name itself
    field = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    detail = err["msg"]
    if err["type"] == "extra_forbidden":
        detail = f"unknown key {loc[-1]!r}" if loc else detail
    elif err["type"] == "missing":
        detail = "required"
    problem = {"reason": reason, "field": field, "detail": detail}
    if tag is not None:
        problem["tag"] = tag
    return problem


# ---- command line -----------------------------------------------------------------------

def _default_dir() -> Path:
    from hazardwatch.resources import payloads_dir

    return payloads_dir()


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingest.contract",
        description="Write the MQTT payload JSON Schemas generated from ingest/contract.py.",
    )
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 listing files that are missing or stale")
    parser.add_argument("directory", nargs="?", type=Path,
                        help="target directory (default: the project's schema/payloads)")
    args = parser.parse_args(None if argv is None else list(argv))
    directory: Path = args.directory or _default_dir()
    if args.check:
        problems = stale(directory)
        for line in problems:
            print(line)
        if problems:
            print("regenerate with: python -m ingest.contract", file=sys.stderr)
            return 1
        print(f"{len(SCHEMAS)} schemas current in {directory}")
        return 0
    for path in export(directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
