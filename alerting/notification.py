"""What a receiver is given: one event of one warning, the warning as the API shows it.

`warning_out(conn, id)` is the contract's WarningOut (docs/alerting.md) read from the
database; `event_out` is EventOut. The HTTP API reuses both, so a webhook body, an SSE
frame and `GET /api/warnings/{id}` describe a warning with exactly the same fields.

`Notification` also renders the human message shared by the robot receivers: Chinese
first (level 红色/橙色/黄色/蓝色, site, cause, value, time), then one English line, with
the console link.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

LEVEL_NAMES = {1: "blue", 2: "yellow", 3: "orange", 4: "red"}
LEVEL_ZH = {1: "蓝色", 2: "黄色", 3: "橙色", 4: "红色"}
LEVEL_ZH_MEANING = {1: "低", 2: "一般", 3: "较大", 4: "重大"}
LEVEL_EN = {1: "Blue", 2: "Yellow", 3: "Orange", 4: "Red"}

ACTION_ZH = {
    "raised": "预警发布",
    "reactivated": "再次触发",
    "level_up": "等级升高",
    "escalated": "超时升级",
    "cleared": "条件解除",
    "closed": "已闭环",
    "acknowledged": "已确认",
    "commented": "新批注",
    "disposed": "处置反馈",
    "shelved": "已搁置",
    "unshelved": "取消搁置",
    "suppressed": "已抑制",
    "alarm_raised": "报警触发",
    "alarm_cleared": "报警解除",
}
STATE_ZH = {
    "active_unack": "未确认",
    "active_ack": "已确认,处置中",
    "cleared_unack": "已解除,未确认",
    "cleared": "已解除",
    "closed": "已闭环",
}
ESCALATION_ZH = {0: "提示", 1: "警示", 2: "督办"}

# Times in messages for people: Beijing time (the national system's clock), labelled.
BEIJING = timezone(timedelta(hours=8), "北京时间")


def rfc3339(value: datetime | None) -> str | None:
    """RFC 3339 UTC with a Z, as the API's JSON shows times."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@functools.cache
def _titles() -> dict[tuple[str, str], tuple[str, str]]:
    """(site kind, cause) → (title_zh, title_en) from the shipped rule packs."""
    from rules.packs import PackError, load_packs

    try:
        packs = load_packs()
    except (PackError, OSError):
        return {}
    return {(kind, c.name): (c.title_zh, c.title_en)
            for kind, pack in packs.items() for c in pack.causes}


def cause_titles(site_kind: str, cause: str) -> tuple[str, str]:
    """The cause's Chinese and English titles; the cause name when no pack knows it."""
    return _titles().get((site_kind, cause), (cause, cause))


# ---------------------------------------------------------------------------- WarningOut

# The columns of WarningOut, for a query FROM warnings w (joins below). The API can add its
# own WHERE / ORDER BY / LIMIT to `WARNING_SELECT` and map rows with `warning_from_row`.
WARNING_SELECT = """
SELECT w.id, w.cause, w.kind, w.level, w.state, w.active, w.acknowledged, w.escalation,
       w.count, w.opened_at, w.raised_at, w.updated_at, w.cleared_at, w.closed_at,
       w.acknowledged_at, w.disposed_at, w.disposal, w.closing_note, w.shelved_until,
       w.shelved_reason, w.suppressed_by, w.peak_value, w.detail,
       s.id AS site_id, s.code AS site_code, s.name AS site_name, s.kind::text AS site_kind,
       s.grade AS site_grade,
       e.code AS enterprise_code, e.name AS enterprise_name,
       r.code AS region_code, r.name AS region_name,
       ps.id AS ps_id, ps.tag AS ps_tag, ps.kind AS ps_kind, ps.unit AS ps_unit,
       ps.range_lo AS ps_range_lo, ps.range_hi AS ps_range_hi, ps.ll AS ps_ll, ps.l AS ps_l,
       ps.h AS ps_h, ps.hh AS ps_hh, ps.interval_s AS ps_interval_s
FROM warnings w
JOIN sites s ON s.id = w.site_id
JOIN enterprises e ON e.id = s.enterprise_id
JOIN regions r ON r.code = e.region
LEFT JOIN sensors ps ON ps.id = w.peak_sensor_id
"""


def sensor_from_row(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any] | None:
    """SensorOut from columns id, tag, kind, unit, range_lo, range_hi, ll, l, h, hh,
    interval_s (each under `prefix`); None when the id is NULL."""
    if row.get(f"{prefix}id") is None:
        return None
    return {
        "id": row[f"{prefix}id"],
        "tag": row[f"{prefix}tag"],
        "kind": row[f"{prefix}kind"],
        "unit": row[f"{prefix}unit"],
        "range": [row[f"{prefix}range_lo"], row[f"{prefix}range_hi"]],
        "limits": {k: row[f"{prefix}{k}"] for k in ("ll", "l", "h", "hh")},
        "interval_s": row[f"{prefix}interval_s"],
    }


def warning_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """WarningOut from one row of `WARNING_SELECT`."""
    title_zh, title_en = cause_titles(row["site_kind"], row["cause"])
    return {
        "id": row["id"],
        "cause": row["cause"],
        "title_zh": title_zh,
        "title_en": title_en,
        "kind": row["kind"],
        "level": row["level"],
        "level_name": LEVEL_NAMES[row["level"]],
        "state": row["state"],
        "active": row["active"],
        "acknowledged": row["acknowledged"],
        "escalation": row["escalation"],
        "count": row["count"],
        "opened_at": rfc3339(row["opened_at"]),
        "raised_at": rfc3339(row["raised_at"]),
        "updated_at": rfc3339(row["updated_at"]),
        "cleared_at": rfc3339(row["cleared_at"]),
        "closed_at": rfc3339(row["closed_at"]),
        "acknowledged_at": rfc3339(row["acknowledged_at"]),
        "disposed_at": rfc3339(row["disposed_at"]),
        "disposal": row["disposal"],
        "closing_note": row["closing_note"],
        "shelved_until": rfc3339(row["shelved_until"]),
        "shelved_reason": row["shelved_reason"],
        "suppressed_by": row["suppressed_by"],
        "peak_value": row["peak_value"],
        "peak_sensor": sensor_from_row(row, "ps_"),
        "detail": row["detail"],
        "site": {"id": row["site_id"], "code": row["site_code"], "name": row["site_name"],
                 "kind": row["site_kind"], "grade": row["site_grade"]},
        "enterprise": {"code": row["enterprise_code"], "name": row["enterprise_name"]},
        "region": {"code": row["region_code"], "name": row["region_name"]},
    }


async def warning_out(conn: psycopg.AsyncConnection, warning_id: int) -> dict[str, Any] | None:
    """The warning in the contract's WarningOut shape, or None if there is no such warning."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(WARNING_SELECT + " WHERE w.id = %s", (warning_id,))
        row = await cur.fetchone()
    return None if row is None else warning_from_row(row)


async def warnings_out(conn: psycopg.AsyncConnection,
                       warning_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """WarningOut of several warnings at once, by id (missing ids are left out)."""
    if not warning_ids:
        return {}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(WARNING_SELECT + " WHERE w.id = ANY(%s)", (list(warning_ids),))
        rows = await cur.fetchall()
    return {row["id"]: warning_from_row(row) for row in rows}


# ---------------------------------------------------------------------------- EventOut

EVENT_SELECT = "SELECT id, warning_id, at, actor, action, level, detail FROM warning_events"


def event_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """EventOut from a warning_events row."""
    return {
        "id": row["id"],
        "warning_id": row["warning_id"],
        "at": rfc3339(row["at"]),
        "actor": row["actor"],
        "action": row["action"],
        "level": row["level"],
        "detail": row["detail"],
    }


async def event_out(conn: psycopg.AsyncConnection, event_id: int) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(EVENT_SELECT + " WHERE id = %s", (event_id,))
        row = await cur.fetchone()
    return None if row is None else event_from_row(row)


# ---------------------------------------------------------------------------- Notification


@dataclass(frozen=True)
class Notification:
    """One event of one warning, for one receiver. `warning` is the warning as it is at
    send time (a retried `raised` carries the current state, e.g. already cleared)."""

    event: dict[str, Any]          # EventOut
    warning: dict[str, Any]        # WarningOut
    console_url: str = "http://127.0.0.1:8080"
    levels: tuple[int, ...] = field(default=())  # every level the warning's events recorded

    @property
    def event_id(self) -> int:
        return int(self.event["id"])

    @property
    def action(self) -> str:
        return str(self.event["action"])

    @property
    def link(self) -> str:
        """The warning's page on the duty console."""
        return f"{self.console_url.rstrip('/')}/warning.html?id={self.warning['id']}"

    def body(self) -> dict[str, Any]:
        """{event: EventOut, warning: WarningOut}: the webhook body, the MQTT payload, and
        the data of the console's SSE frame."""
        return {"event": self.event, "warning": self.warning}

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body())

    # -- the human message (robots)

    @property
    def level(self) -> int:
        return int(self.warning["level"])

    def headline_zh(self) -> str:
        """【红色预警】罐区 储罐液位超高 · 预警发布"""
        w = self.warning
        return (f"【{LEVEL_ZH[self.level]}预警】{w['site']['name']} {w['title_zh']}"
                f" · {self._action_zh()}")

    def _action_zh(self) -> str:
        zh = ACTION_ZH.get(self.action, self.action)
        if self.action == "escalated":
            step = (self.event.get("detail") or {}).get("step")
            if step:
                zh = f"升级为{step}"
        return zh

    def value_text(self) -> str | None:
        w = self.warning
        value = w.get("peak_value")
        if value is None:
            return None
        sensor = w.get("peak_sensor")
        text = f"{value:g}"
        if sensor:
            text = f"{text} {sensor['unit']}(测点 {sensor['tag']})"
        return text

    def time_text(self) -> str:
        at = parse_time(self.event.get("at")) or parse_time(self.warning.get("updated_at"))
        if at is None:
            return "-"
        return at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S") + "(北京时间)"

    def facts_zh(self) -> list[tuple[str, str]]:
        """(label, value) lines of the Chinese message, most important first."""
        w = self.warning
        facts = [
            ("等级", f"{LEVEL_ZH[self.level]}({LEVEL_ZH_MEANING[self.level]})"),
            ("事件", self._action_zh()),
            ("场所", f"{w['site']['name']}({w['site']['code']})"),
            ("企业", f"{w['enterprise']['name']}"),
            ("原因", w["title_zh"]),
        ]
        value = self.value_text()
        if value is not None:
            facts.append(("数值", value))
        facts.append(("时间", self.time_text()))
        state = STATE_ZH.get(w["state"], w["state"])
        if w.get("escalation"):
            state += f",{ESCALATION_ZH.get(w['escalation'], '')}"
        facts.append(("状态", state))
        facts.append(("编号", f"预警 {w['id']} / 事件 {self.event_id}"))
        return facts

    def line_en(self) -> str:
        w = self.warning
        return (f"{LEVEL_EN[self.level]} warning: {w['title_en']} at {w['site']['code']}, "
                f"{w['enterprise']['code']} ({self.action})")

    def text_plain(self) -> str:
        lines = [self.headline_zh()]
        lines += [f"{k}:{v}" for k, v in self.facts_zh()]
        lines += [f"详情:{self.link}", self.line_en()]
        return "\n".join(lines)

    def markdown(self, *, colour: bool = False) -> str:
        """Markdown for DingTalk / WeCom robots (WeCom knows <font color=...>)."""
        head = self.headline_zh()
        if colour:
            tone = "warning" if self.level >= 3 and self.warning["active"] else "info"
            head = f'<font color="{tone}">{head}</font>'
        lines = [f"### {head}", ""]
        lines += [f"> **{k}**:{v}" for k, v in self.facts_zh()]
        lines += ["", f"[查看详情 / View in console]({self.link})", "", self.line_en()]
        return "\n".join(lines)


async def build_notification(conn: psycopg.AsyncConnection, event_id: int, *,
                             console_url: str) -> Notification | None:
    """The notification of one event, or None if the event or its warning is gone."""
    event = await event_out(conn, event_id)
    if event is None:
        return None
    warning = await warning_out(conn, event["warning_id"])
    if warning is None:
        return None
    cur = await conn.execute(
        "SELECT DISTINCT level FROM warning_events WHERE warning_id = %s AND level IS NOT NULL "
        "ORDER BY level", (event["warning_id"],))
    levels = tuple(r[0] for r in await cur.fetchall())
    return Notification(event=event, warning=warning, console_url=console_url, levels=levels)
