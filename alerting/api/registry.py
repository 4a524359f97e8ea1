"""The registry as the console shows it, the onboarding list (tags that arrive but are not
registered) and the dead letters (what ingest refused, and why) — each within the user's
scope. Unregistered tags and dead letters of enterprise codes that are not in the registry
at all are seen by admins only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from psycopg.rows import dict_row

from alerting.api.auth import User, get_api
from alerting.api.schemas import DeadLetterOut, EnterpriseDetail, EnterpriseOut, UnregisteredTag
from alerting.api.scope import Principal

router = APIRouter(prefix="/api", tags=["registry"])

CODE = r"^[\w.-]{1,64}$"
EnterpriseCode = Annotated[str, Path(max_length=64, pattern=CODE,
                                     description="统一社会信用代码")]
EnterpriseFilter = Annotated[str | None, Query(max_length=64, pattern=CODE)]
ONBOARDING_LIMIT = 1000


async def _enterprises(conn, ids: list[int] | None, code: str | None = None) -> list[dict]:
    where, params = [], {}
    if ids is not None:
        where.append("e.id = ANY(%(ids)s)")
        params["ids"] = ids
    if code is not None:
        where.append("e.code = %(code)s")
        params["code"] = code
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT e.id, e.code, e.name, r.code AS region_code, r.name AS region_name "
            "FROM enterprises e JOIN regions r ON r.code = e.region" + clause + " ORDER BY e.code",
            params)
        ents = await cur.fetchall()
        found = [e["id"] for e in ents]
        await cur.execute("SELECT id, enterprise_id, code, name, kind::text AS kind, grade "
                          "FROM sites WHERE enterprise_id = ANY(%s) ORDER BY code", (found,))
        sites = await cur.fetchall()
        await cur.execute("SELECT enterprise_id, code, online, last_seen FROM gateways "
                          "WHERE enterprise_id = ANY(%s) ORDER BY code", (found,))
        gateways = await cur.fetchall()
    by_ent: dict[int, list[dict]] = defaultdict(list)
    for s in sites:
        by_ent[s["enterprise_id"]].append(
            {k: s[k] for k in ("id", "code", "name", "kind", "grade")})
    gws: dict[int, list[dict]] = defaultdict(list)
    for g in gateways:
        gws[g["enterprise_id"]].append(
            {"code": g["code"], "online": g["online"], "last_seen": g["last_seen"]})
    return [{"id": e["id"], "code": e["code"], "name": e["name"],
             "region": {"code": e["region_code"], "name": e["region_name"]},
             "sites": by_ent[e["id"]], "gateways": gws[e["id"]]} for e in ents]


@router.get("/registry/enterprises", response_model=list[EnterpriseOut],
            summary="Enterprises in scope, with their sites and gateways")
async def list_enterprises(request: Request, principal: Principal = User) -> list[dict]:
    async with get_api(request).pool.connection() as conn:
        return await _enterprises(conn, await principal.enterprise_ids(conn))


@router.get("/registry/enterprises/{code}", response_model=EnterpriseDetail,
            summary="One enterprise with its sites and their sensors",
            responses={404: {"description": "no such enterprise in your scope"}})
async def get_enterprise(code: EnterpriseCode, request: Request,
                         principal: Principal = User) -> dict:
    from alerting.notification import sensor_from_row

    async with get_api(request).pool.connection() as conn:
        found = await _enterprises(conn, await principal.enterprise_ids(conn), code)
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such enterprise")
        ent = found[0]
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT id, site_id, tag, kind, unit, range_lo, range_hi, ll, l, h, hh, interval_s "
                "FROM sensors WHERE enterprise_id = %s ORDER BY tag", (ent["id"],))
            sensors = await cur.fetchall()
    per_site: dict[int, list[dict]] = defaultdict(list)
    for s in sensors:
        per_site[s["site_id"]].append(sensor_from_row(s))
    for site in ent["sites"]:
        site["sensors"] = per_site[site["id"]]
    return ent


async def _codes(conn, principal: Principal) -> list[str] | None:
    """The codes of the enterprises in scope; None means every code (admin)."""
    ids = await principal.enterprise_ids(conn)
    if ids is None:
        return None
    cur = await conn.execute("SELECT code FROM enterprises WHERE id = ANY(%s)", (ids,))
    return [r[0] for r in await cur.fetchall()]


def _filters(codes: list[str] | None, enterprise: str | None) -> tuple[str, dict[str, Any]]:
    where, params = [], {}
    if codes is not None:
        where.append("enterprise_code = ANY(%(codes)s)")
        params["codes"] = codes
    if enterprise is not None:
        where.append("enterprise_code = %(enterprise)s")
        params["enterprise"] = enterprise
    return ((" WHERE " + " AND ".join(where)) if where else ""), params


@router.get("/onboarding", response_model=list[UnregisteredTag],
            summary="Tags that send data but are not registered")
async def onboarding(request: Request, principal: Principal = User,
                     enterprise: EnterpriseFilter = None) -> list[dict]:
    async with get_api(request).pool.connection() as conn:
        clause, params = _filters(await _codes(conn, principal), enterprise)
        params["limit"] = ONBOARDING_LIMIT
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT enterprise_code AS enterprise, gateway_code AS gateway, tag, count, "
                "first_seen, last_seen, last_value FROM unregistered_tags" + clause +
                " ORDER BY last_seen DESC, enterprise_code, gateway_code, tag LIMIT %(limit)s",
                params)
            return await cur.fetchall()


@router.get("/dead-letters", response_model=list[DeadLetterOut],
            summary="Messages ingest could not store as sent, newest first")
async def dead_letters(request: Request, principal: Principal = User,
                       enterprise: EnterpriseFilter = None,
                       limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[dict]:
    async with get_api(request).pool.connection() as conn:
        clause, params = _filters(await _codes(conn, principal), enterprise)
        params["limit"] = limit
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT id, received_at, topic, dialect, enterprise_code AS enterprise, "
                "gateway_code AS gateway, reason, errors, accepted, rejected, payload, "
                "payload_truncated FROM dead_letters" + clause +
                " ORDER BY received_at DESC, id DESC LIMIT %(limit)s", params)
            rows = await cur.fetchall()
    for row in rows:
        row["payload_text"] = bytes(row.pop("payload")).decode("utf-8", errors="replace")
    return rows
