"""Who may see what: the signed-in principal and the enterprises in their scope.

officer    → enterprises whose region is the officer's region or a descendant of it
enterprise → its own enterprise
admin      → everything

Every query the API runs about enterprises, warnings, sensors, tags or dead letters filters
by `Principal.enterprise_ids()` (None: no filter). A single object outside the scope is
answered 404, exactly as one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

# The region and every region below it (UNION, not UNION ALL: a cycle cannot loop).
REGION_TREE = """
WITH RECURSIVE tree(code) AS (
    SELECT code FROM regions WHERE code = %(region)s
    UNION
    SELECT r.code FROM regions r JOIN tree t ON r.parent = t.code
)
"""


@dataclass
class Principal:
    user_id: int
    username: str
    display_name: str | None
    role: str                         # officer | enterprise | admin
    region: str | None                # officer's region code
    region_name: str | None
    enterprise_id: int | None         # enterprise user's enterprise
    enterprise_code: str | None
    enterprise_name: str | None
    token_hash: bytes = b""
    via_cookie: bool = False
    _ids: list[int] | None = field(default=None, repr=False)
    _loaded: bool = field(default=False, repr=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def may_supervise(self) -> bool:
        """acknowledge, close, shelve, unshelve: officers and admins."""
        return self.role in ("officer", "admin")

    async def enterprise_ids(self, conn: psycopg.AsyncConnection) -> list[int] | None:
        """The ids of the enterprises this principal may see; None means all (admin)."""
        if not self._loaded:
            self._ids = await _visible(conn, self)
            self._loaded = True
        return self._ids

    def user_out(self) -> dict:
        return {
            "id": self.user_id,
            "username": self.username,
            "display_name": self.display_name,
            "role": self.role,
            "region": ({"code": self.region, "name": self.region_name or self.region}
                       if self.region else None),
            "enterprise": ({"code": self.enterprise_code, "name": self.enterprise_name or ""}
                           if self.enterprise_code else None),
        }


async def _visible(conn: psycopg.AsyncConnection, p: Principal) -> list[int] | None:
    if p.role == "admin":
        return None
    if p.role == "enterprise":
        return [p.enterprise_id] if p.enterprise_id is not None else []
    if p.role == "officer" and p.region:
        return await region_enterprises(conn, p.region)
    return []


async def region_enterprises(conn: psycopg.AsyncConnection, region: str) -> list[int]:
    """Enterprises of `region` and of every region below it."""
    cur = await conn.execute(
        REGION_TREE + "SELECT e.id FROM enterprises e JOIN tree t ON t.code = e.region ORDER BY e.id",
        {"region": region})
    return [r[0] for r in await cur.fetchall()]


async def narrowed(conn: psycopg.AsyncConnection, p: Principal,
                   region: str | None = None) -> list[int] | None:
    """The principal's enterprises, narrowed to a region's subtree when one is asked for."""
    ids = await p.enterprise_ids(conn)
    if region is None:
        return ids
    in_region = await region_enterprises(conn, region)
    if ids is None:
        return in_region
    allowed = set(ids)
    return [i for i in in_region if i in allowed]
