"""People who sign in to the API: `hazardwatch user add | list | disable`.

Synchronous (the CLI's side). Passwords are hashed with argon2id before they reach the
database; disabling a user also revokes every token they hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import psycopg

from alerting.api.auth import hash_password
from hazardwatch import db

ROLES = ("officer", "enterprise", "admin")
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8


class UserError(Exception):
    """A user could not be added or changed; the message says why."""


@dataclass(frozen=True)
class UserRow:
    id: int
    username: str
    display_name: str | None
    role: str
    region: str | None
    enterprise: str | None
    disabled: bool
    created_at: datetime
    tokens: int              # live (unexpired, unrevoked) tokens


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise UserError("the password is too long (at most 1024 characters)")


def add_user(dsn: str, username: str, password: str, role: str, *, region: str | None = None,
             enterprise: str | None = None, display_name: str | None = None) -> int:
    """Create a user; returns its id."""
    if not USERNAME.match(username):
        raise UserError("the user name may have 1-64 letters, digits and _ . @ -")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if role == "officer" and not region:
        raise UserError("an officer needs --region (the region they supervise)")
    if role == "enterprise" and not enterprise:
        raise UserError("an enterprise user needs --enterprise (the enterprise's code)")
    if role != "officer" and region:
        raise UserError("--region is for officers only")
    if role != "enterprise" and enterprise:
        raise UserError("--enterprise is for enterprise users only")
    check_password(password)
    password_hash = hash_password(password)
    with db.connect_sync(dsn) as conn:
        if region and conn.execute("SELECT 1 FROM regions WHERE code = %s",
                                   (region,)).fetchone() is None:
            raise UserError(f"no region {region} in the registry")
        enterprise_id = None
        if enterprise:
            row = conn.execute("SELECT id FROM enterprises WHERE code = %s",
                               (enterprise,)).fetchone()
            if row is None:
                raise UserError(f"no enterprise {enterprise} in the registry")
            enterprise_id = row[0]
        try:
            row = conn.execute(
                "INSERT INTO users (username, display_name, password_hash, role, region, "
                "enterprise_id) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (username, display_name, password_hash, role, region, enterprise_id)).fetchone()
        except psycopg.errors.UniqueViolation:
            raise UserError(f"user {username} exists already") from None
        return row[0]


def list_users(dsn: str) -> list[UserRow]:
    with db.connect_sync(dsn) as conn:
        rows = conn.execute(
            "SELECT u.id, u.username, u.display_name, u.role, u.region, e.code, u.disabled, "
            "u.created_at, (SELECT count(*) FROM api_tokens t WHERE t.user_id = u.id "
            "  AND t.revoked_at IS NULL AND t.expires_at > now()) "
            "FROM users u LEFT JOIN enterprises e ON e.id = u.enterprise_id "
            "ORDER BY u.username").fetchall()
    return [UserRow(*r) for r in rows]


def disable_user(dsn: str, username: str) -> int:
    """Disable a user and revoke their tokens; returns how many tokens were revoked."""
    with db.connect_sync(dsn) as conn:
        row = conn.execute("UPDATE users SET disabled = true WHERE username = %s RETURNING id",
                           (username,)).fetchone()
        if row is None:
            raise UserError(f"no user {username}")
        cur = conn.execute("UPDATE api_tokens SET revoked_at = now() "
                           "WHERE user_id = %s AND revoked_at IS NULL", (row[0],))
        return cur.rowcount
