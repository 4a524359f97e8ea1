"""GET /api/sensors/{id}/readings: one sensor's series for the warning page's chart.

resolution auto picks raw readings for spans up to 6 h, the 1-minute roll-up (readings_1m)
up to 7 days, else the hourly one (readings_1h); both relations exist in either storage
mode (TimescaleDB continuous aggregates or plain views). Points are [ts_ms, value, min,
max] (raw: min = max = value; roll-ups: value is the mean), only good or uncertain
readings (quality < 2), oldest first. At most MAX_POINTS: past that the newest MAX_POINTS
are answered and `capped` is true.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from psycopg.rows import dict_row

from alerting.api.auth import User, get_api, time_range
from alerting.api.schemas import ReadingsOut
from alerting.api.scope import Principal

router = APIRouter(prefix="/api", tags=["readings"])

MAX_POINTS = 5000
DEFAULT_SPAN = timedelta(hours=6)
RAW_UP_TO = timedelta(hours=6)
MINUTE_UP_TO = timedelta(days=7)

SENSOR_SELECT = ("SELECT id, tag, kind, unit, range_lo, range_hi, ll, l, h, hh, interval_s, "
                 "enterprise_id FROM sensors WHERE id = %s")

# Fixed statements per resolution: the relation name is never built from input.
_QUERIES = {
    "raw": """
        SELECT (extract(epoch FROM ts) * 1000)::bigint, value, value, value FROM (
            SELECT ts, value FROM readings
            WHERE sensor_id = %(sensor)s AND ts >= %(from)s AND ts < %(to)s
              AND quality < 2 AND value IS NOT NULL
            ORDER BY ts DESC LIMIT %(limit)s) r
        ORDER BY ts""",
    "1m": """
        SELECT (extract(epoch FROM bucket) * 1000)::bigint, avg_value, min_value, max_value FROM (
            SELECT bucket, avg_value, min_value, max_value FROM readings_1m
            WHERE sensor_id = %(sensor)s AND bucket >= %(from)s AND bucket < %(to)s
              AND n > 0
            ORDER BY bucket DESC LIMIT %(limit)s) r
        ORDER BY bucket""",
    "1h": """
        SELECT (extract(epoch FROM bucket) * 1000)::bigint, avg_value, min_value, max_value FROM (
            SELECT bucket, avg_value, min_value, max_value FROM readings_1h
            WHERE sensor_id = %(sensor)s AND bucket >= %(from)s AND bucket < %(to)s
              AND n > 0
            ORDER BY bucket DESC LIMIT %(limit)s) r
        ORDER BY bucket""",
}


def pick_resolution(span: timedelta) -> str:
    if span <= RAW_UP_TO:
        return "raw"
    if span <= MINUTE_UP_TO:
        return "1m"
    return "1h"


@router.get("/sensors/{sensor_id}/readings", response_model=ReadingsOut,
            response_model_by_alias=True, summary="One sensor's readings",
            responses={404: {"description": "no such sensor in your scope"},
                       422: {"description": "bad time range"}})
async def sensor_readings(
    request: Request,
    sensor_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    principal: Principal = User,
    from_: Annotated[datetime | None, Query(alias="from",
                                            description="RFC 3339; default `to` − 6 h")] = None,
    to: Annotated[datetime | None, Query(description="RFC 3339; default now")] = None,
    resolution: Literal["auto", "raw", "1m", "1h"] = "auto",
) -> dict:
    from alerting.notification import sensor_from_row

    api = get_api(request)
    since, until = time_range(api, from_, to, DEFAULT_SPAN)
    chosen = pick_resolution(until - since) if resolution == "auto" else resolution
    async with api.pool.connection() as conn:
        allowed = await principal.enterprise_ids(conn)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(SENSOR_SELECT, (sensor_id,))
            sensor = await cur.fetchone()
        if sensor is None or (allowed is not None and sensor["enterprise_id"] not in allowed):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such sensor")
        cur = await conn.execute(_QUERIES[chosen], {"sensor": sensor_id, "from": since,
                                                    "to": until, "limit": MAX_POINTS + 1})
        points = [list(p) for p in await cur.fetchall()]
    capped = len(points) > MAX_POINTS
    if capped:
        points = points[1:]   # the query kept the newest MAX_POINTS + 1: drop the oldest
    return {"sensor": sensor_from_row(sensor), "resolution": chosen, "points": points,
            "from": since, "to": until, "capped": capped, "limit": MAX_POINTS}
