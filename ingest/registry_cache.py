"""The slice of the registry ingest needs on every reading, held in memory.

Reloaded when registry_meta.version moves (one cheap query on a timer), so a freshly
imported sensor is accepted within seconds without restarting collectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import psycopg


@dataclass
class RegistryCache:
    version: int = -1
    gateways: dict[tuple[str, str], int] = field(default_factory=dict)
    tags: dict[str, dict[str, int]] = field(default_factory=dict)  # enterprise → tag → sensor id
    tag_owner: dict[str, str] = field(default_factory=dict)        # tag → some enterprise with it
    range_lo: np.ndarray = field(default_factory=lambda: np.zeros(1))
    range_hi: np.ndarray = field(default_factory=lambda: np.zeros(1))

    async def refresh(self, conn: psycopg.AsyncConnection) -> bool:
        """Reload when the registry changed since the last load; True if reloaded."""
        cur = await conn.execute("SELECT version FROM registry_meta")
        (version,) = await cur.fetchone()
        if version == self.version:
            return False
        await self._load(conn, version)
        return True

    async def _load(self, conn: psycopg.AsyncConnection, version: int) -> None:
        gateways: dict[tuple[str, str], int] = {}
        cur = await conn.execute(
            "SELECT g.id, e.code, g.code FROM gateways g JOIN enterprises e ON e.id = g.enterprise_id"
        )
        for gid, ent, code in await cur.fetchall():
            gateways[(ent, code)] = gid
        cur = await conn.execute(
            "SELECT s.id, e.code, s.tag, s.range_lo, s.range_hi "
            "FROM sensors s JOIN enterprises e ON e.id = s.enterprise_id ORDER BY s.id"
        )
        rows = await cur.fetchall()
        size = (rows[-1][0] + 1) if rows else 1
        lo = np.full(size, -np.inf)
        hi = np.full(size, np.inf)
        tags: dict[str, dict[str, int]] = {}
        owner: dict[str, str] = {}
        for sid, ent, tag, rlo, rhi in rows:
            tags.setdefault(ent, {})[tag] = sid
            owner.setdefault(tag, ent)
            lo[sid], hi[sid] = rlo, rhi
        self.gateways, self.tags, self.tag_owner = gateways, tags, owner
        self.range_lo, self.range_hi = lo, hi
        self.version = version
