"""GET /api/kpis: the supervision KPIs (alerting.kpis) over the user's scope and a time range."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request

from alerting.api.auth import User, get_api, time_range
from alerting.api.schemas import KpisOut
from alerting.api.scope import Principal, narrowed

router = APIRouter(prefix="/api", tags=["kpis"])

DEFAULT_SPAN = timedelta(hours=24)
MAX_SPAN = timedelta(days=366)


@router.get("/kpis", response_model=KpisOut, summary="KPIs over a time range",
            responses={422: {"description": "bad time range"}})
async def get_kpis(
    request: Request,
    principal: Principal = User,
    from_: Annotated[datetime | None, Query(alias="from",
                                            description="RFC 3339; default `to` − 24 h")] = None,
    to: Annotated[datetime | None, Query(description="RFC 3339; default now")] = None,
    region: Annotated[str | None, Query(max_length=64, pattern=r"^[\w.-]{1,64}$",
                                        description="a region code: it and its children")] = None,
) -> dict:
    from alerting.kpis import kpis

    api = get_api(request)
    since, until = time_range(api, from_, to, DEFAULT_SPAN, MAX_SPAN)
    alerting = api.settings.alerting
    async with api.pool.connection() as conn:
        ids = await narrowed(conn, principal, region)
        return await kpis(conn, enterprise_ids=ids, since=since, until=until,
                          chatter_n=alerting.chatter_n,
                          chatter_window_s=alerting.chatter_window_s,
                          escalation=alerting.escalation, now=api.now())
