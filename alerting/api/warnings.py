"""/api/warnings: the board's list, one warning with its alarms and timeline, and the
lifecycle actions (alerting.lifecycle) with who may do them.

| action                          | officer, admin | enterprise (own warnings) |
|---------------------------------|----------------|---------------------------|
| comment, dispose (处置反馈)      | yes            | yes                       |
| acknowledge, close, shelve, unshelve | yes       | 403                       |

A warning outside the user's scope is 404 whatever the action. Refused transitions are the
lifecycle's LifecycleError: 409 (or 422 for bad input) with {"detail": why}.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from psycopg.rows import dict_row

from alerting.api.auth import User, get_api
from alerting.api.schemas import (
    AcknowledgeIn,
    CloseIn,
    CommentIn,
    DisposeIn,
    EventOut,
    ShelveIn,
    WarningDetail,
    WarningList,
    WarningOut,
)
from alerting.api.scope import Principal, narrowed

router = APIRouter(prefix="/api", tags=["warnings"])

MAX_ID = 2**63 - 1
WarningId = Annotated[int, Path(ge=1, le=MAX_ID, description="warning id")]
StateFilter = Literal["open", "active_unack", "active_ack", "cleared_unack", "cleared", "closed"]
LevelFilter = Literal["1", "2", "3", "4", "blue", "yellow", "orange", "red"]
SiteKind = Literal["major_hazard", "gas_pipeline", "dust_explosion"]
LEVEL_OF = {"blue": 1, "yellow": 2, "orange": 3, "red": 4}
CODE = r"^[\w.-]{1,64}$"

NOT_FOUND = "no such warning"

_COUNT = """
SELECT count(*) FROM warnings w
JOIN sites s ON s.id = w.site_id
JOIN enterprises e ON e.id = s.enterprise_id
"""

_ALARMS = """
SELECT a.id, a.condition, a.active, a.raised_at, a.cleared_at, a.value, a.peak_value, a.detail,
       sn.id AS s_id, sn.tag AS s_tag, sn.kind AS s_kind, sn.unit AS s_unit,
       sn.range_lo AS s_range_lo, sn.range_hi AS s_range_hi, sn.ll AS s_ll, sn.l AS s_l,
       sn.h AS s_h, sn.hh AS s_hh, sn.interval_s AS s_interval_s,
       g.code AS gateway_code
FROM alarms a
LEFT JOIN sensors sn ON sn.id = a.sensor_id
LEFT JOIN gateways g ON g.id = a.gateway_id
WHERE a.warning_id = %s
ORDER BY a.raised_at, a.id
"""


async def visible_warning(conn, principal: Principal, warning_id: int) -> bool:
    """Whether the warning exists and is in the principal's scope."""
    ids = await principal.enterprise_ids(conn)
    cur = await conn.execute(
        "SELECT s.enterprise_id FROM warnings w JOIN sites s ON s.id = w.site_id "
        "WHERE w.id = %s", (warning_id,))
    row = await cur.fetchone()
    return row is not None and (ids is None or row[0] in ids)


@router.get("/warnings", response_model=WarningList, summary="Warnings in scope")
async def list_warnings(
    request: Request,
    principal: Principal = User,
    state: Annotated[list[StateFilter] | None, Query(
        description="repeatable; `open` = every state but closed")] = None,
    level: Annotated[list[LevelFilter] | None, Query(
        description="repeatable; 1..4 or blue|yellow|orange|red")] = None,
    region: Annotated[str | None, Query(max_length=64, pattern=CODE,
                                        description="a region code: it and its children")] = None,
    enterprise: Annotated[str | None, Query(max_length=64, pattern=CODE,
                                            description="an enterprise code")] = None,
    site_kind: SiteKind | None = None,
    cause: Annotated[str | None, Query(max_length=64, pattern=CODE)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict:
    """Sorted by level (highest first), then raised_at (oldest first)."""
    from alerting.notification import WARNING_SELECT, warning_from_row

    api = get_api(request)
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    async with api.pool.connection() as conn:
        ids = await narrowed(conn, principal, region)
        if ids is not None:
            where.append("s.enterprise_id = ANY(%(scope)s)")
            params["scope"] = ids
        if state:
            states = sorted({s for s in state if s != "open"})
            parts = []
            if "open" in state:
                parts.append("w.closed_at IS NULL")
            if states:
                parts.append("w.state = ANY(%(states)s)")
                params["states"] = states
            where.append("(" + " OR ".join(parts) + ")")
        if level:
            where.append("w.level = ANY(%(levels)s)")
            params["levels"] = sorted({int(v) if v.isdigit() else LEVEL_OF[v] for v in level})
        if enterprise is not None:
            where.append("e.code = %(enterprise)s")
            params["enterprise"] = enterprise
        if site_kind is not None:
            where.append("s.kind = %(site_kind)s::site_kind")
            params["site_kind"] = site_kind
        if cause is not None:
            where.append("w.cause = %(cause)s")
            params["cause"] = cause
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        cur = await conn.execute(_COUNT + clause, params)
        (total,) = await cur.fetchone()
        async with conn.cursor(row_factory=dict_row) as dcur:
            await dcur.execute(WARNING_SELECT + clause + " ORDER BY w.level DESC, w.raised_at, w.id "
                               "LIMIT %(limit)s OFFSET %(offset)s", params)
            rows = await dcur.fetchall()
    return {"items": [warning_from_row(r) for r in rows], "total": total}


@router.get("/warnings/{warning_id}", response_model=WarningDetail,
            summary="One warning with its alarms and events",
            responses={404: {"description": "no such warning in your scope"}})
async def get_warning(warning_id: WarningId, request: Request, principal: Principal = User) -> dict:
    from alerting.notification import EVENT_SELECT, event_from_row, sensor_from_row, warning_out

    api = get_api(request)
    async with api.pool.connection() as conn:
        if not await visible_warning(conn, principal, warning_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
        warning = await warning_out(conn, warning_id)
        if warning is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_ALARMS, (warning_id,))
            alarms = await cur.fetchall()
            await cur.execute(EVENT_SELECT + " WHERE warning_id = %s ORDER BY id", (warning_id,))
            events = await cur.fetchall()
    warning["alarms"] = [{
        "id": a["id"], "condition": a["condition"], "active": a["active"],
        "raised_at": a["raised_at"], "cleared_at": a["cleared_at"], "value": a["value"],
        "peak_value": a["peak_value"], "detail": a["detail"],
        "sensor": sensor_from_row(a, "s_"),
        "gateway": {"code": a["gateway_code"]} if a["gateway_code"] is not None else None,
    } for a in alarms]
    warning["events"] = [event_from_row(e) for e in events]
    return warning


# ---------------------------------------------------------------- actions

_ACTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"description": "your role may not do this (enterprise users: comment and dispose only)"},
    404: {"description": "no such warning in your scope"},
    409: {"description": "not allowed from the warning's state (detail says why)"},
}


async def _act(request: Request, principal: Principal, warning_id: int, supervise: bool,
               action: Callable[..., Awaitable[dict[str, Any]]], *args: Any) -> dict[str, Any]:
    """Scope (404), role (403), then the lifecycle action; returns the action's result."""
    from alerting.lifecycle import LifecycleError

    api = get_api(request)
    async with api.pool.connection() as conn:
        if not await visible_warning(conn, principal, warning_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
        if supervise and not principal.may_supervise:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                "enterprise users may comment and dispose, not "
                                "acknowledge, close or shelve")
        try:
            return await action(conn, warning_id, principal.username, *args,
                                receivers=api.settings.alerting.receivers, now=api.now())
        except LifecycleError as exc:
            raise HTTPException(exc.status, exc.message) from None


async def _warning(request: Request, warning_id: int) -> dict[str, Any]:
    from alerting.notification import warning_out

    async with get_api(request).pool.connection() as conn:
        warning = await warning_out(conn, warning_id)
    if warning is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    return warning


@router.post("/warnings/{warning_id}/acknowledge", response_model=WarningOut,
             responses=_ACTION_RESPONSES, summary="Acknowledge (确认)")
async def acknowledge(warning_id: WarningId, request: Request, body: AcknowledgeIn | None = None,
                      principal: Principal = User) -> dict:
    from alerting import lifecycle

    note = body.note if body else None
    await _act(request, principal, warning_id, True, lifecycle.acknowledge, note)
    return await _warning(request, warning_id)


@router.post("/warnings/{warning_id}/comment", response_model=EventOut,
             responses=_ACTION_RESPONSES, summary="Comment on the timeline")
async def comment(warning_id: WarningId, body: CommentIn, request: Request,
                  principal: Principal = User) -> dict:
    from alerting import lifecycle

    out = await _act(request, principal, warning_id, False, lifecycle.comment, body.text)
    return out["event"]


@router.post("/warnings/{warning_id}/dispose", response_model=WarningOut,
             responses=_ACTION_RESPONSES, summary="Disposal feedback (处置反馈)")
async def dispose(warning_id: WarningId, body: DisposeIn, request: Request,
                  principal: Principal = User) -> dict:
    from alerting import lifecycle

    await _act(request, principal, warning_id, False, lifecycle.dispose, body.note)
    return await _warning(request, warning_id)


@router.post("/warnings/{warning_id}/close", response_model=WarningOut,
             responses=_ACTION_RESPONSES, summary="Close (闭环)")
async def close(warning_id: WarningId, request: Request, body: CloseIn | None = None,
                principal: Principal = User) -> dict:
    from alerting import lifecycle

    note = body.note if body else None
    await _act(request, principal, warning_id, True, lifecycle.close, note)
    return await _warning(request, warning_id)


@router.post("/warnings/{warning_id}/shelve", response_model=WarningOut,
             responses=_ACTION_RESPONSES, summary="Shelve (maintenance) until a time")
async def shelve(warning_id: WarningId, body: ShelveIn, request: Request,
                 principal: Principal = User) -> dict:
    from alerting import lifecycle

    max_s = get_api(request).settings.alerting.max_shelve_s
    await _act(request, principal, warning_id, True, lifecycle.shelve, body.reason, body.until, max_s)
    return await _warning(request, warning_id)


@router.post("/warnings/{warning_id}/unshelve", response_model=WarningOut,
             responses=_ACTION_RESPONSES, summary="Return a shelved warning to service")
async def unshelve(warning_id: WarningId, request: Request, principal: Principal = User) -> dict:
    from alerting import lifecycle

    await _act(request, principal, warning_id, True, lifecycle.unshelve)
    return await _warning(request, warning_id)
