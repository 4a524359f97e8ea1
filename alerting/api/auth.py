"""Sign-in, tokens, cookie sessions, CSRF and login rate limiting.

- Passwords: argon2id (argon2-cffi's PasswordHasher), verified off the event loop; an
  unknown user name is checked against a dummy hash so it costs the same time, and every
  failure says the same "invalid username or password".
- Tokens: 32 random bytes (URL-safe); the database keeps only sha256(token) in
  api_tokens, with an expiry (auth.token_ttl_s) and revocation (logout, a disabled user).
  Tokens are never logged.
- Cookie sessions: `hw_session` (the token; HttpOnly, SameSite=Strict, Secure when
  auth.cookie_secure) and `hw_csrf` (readable by the console's script). A
  cookie-authenticated request that changes something (POST) must echo `hw_csrf` in the
  X-CSRF-Token header; the value is derived from the session token, so a cookie planted by
  someone else does not match. Bearer-token requests need no CSRF token (a browser never
  adds an Authorization header by itself).
- Rate limiting: at most auth.login_attempts failed sign-ins per user name and client
  address within auth.login_window_s, then 429 with Retry-After until the oldest failure
  leaves the window. Kept in memory per process.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import math
import re
import secrets
from collections import deque
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from alerting.api.schemas import LoginIn, LoginOut, UserOut
from alerting.api.scope import Principal
from hazardwatch import logs

if TYPE_CHECKING:
    from alerting.api.app import Api

log = logs.get("alerting.api.auth")

SESSION_COOKIE = "hw_session"
CSRF_COOKIE = "hw_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LAST_USED_EVERY = timedelta(seconds=60)
TOKEN_KEEP = timedelta(days=30)            # expired tokens are deleted at the next sign-in after   # write api_tokens.last_used at most this often
INVALID_LOGIN = "invalid username or password"
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")   # as users.username's CHECK

_hasher = PasswordHasher()               # argon2id, the library's RFC 9106 low-memory profile


# ---------------------------------------------------------------- passwords and tokens


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return False


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


async def verify_async(password_hash: str | None, password: str,
                       limit: asyncio.Semaphore) -> bool:
    """Verify in a worker thread (at most `limit` at once: each holds 64 MiB); with no hash
    (unknown user) verify against a dummy one so the answer takes as long, and fail."""
    async with limit:
        if password_hash is None:
            await asyncio.to_thread(lambda: verify_password(_dummy_hash(), password))
            return False
        return await asyncio.to_thread(verify_password, password_hash, password)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def csrf_for(token: str) -> str:
    """The CSRF value of a session: bound to its token, useless without it."""
    digest = hashlib.sha256(b"hw-csrf\x00" + token.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# ---------------------------------------------------------------- rate limiting


class LoginLimiter:
    """Failed sign-ins per (user name, client address) in a sliding window."""

    MAX_KEYS = 100_000

    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float] | None:
        q = self._failures.get(key)
        if q is None:
            return None
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._failures[key]
            return None
        return q

    def retry_after(self, key: tuple[str, str], now: float) -> float | None:
        """Seconds to wait when the key is over its limit, else None."""
        q = self._recent(key, now)
        if q is None or len(q) < self.attempts:
            return None
        return max(q[-self.attempts] + self.window_s - now, 0.001)

    def failed(self, key: tuple[str, str], now: float) -> None:
        if len(self._failures) >= self.MAX_KEYS:
            for k in list(self._failures):
                self._recent(k, now)
        q = self._failures.setdefault(key, deque())
        q.append(now)
        while len(q) > self.attempts:
            q.popleft()

    def succeeded(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)


# ---------------------------------------------------------------- the principal of a request


def get_api(request: Request) -> Api:
    return request.app.state.api


def _unauthorized(detail: str = "not authenticated") -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail,
                         headers={"WWW-Authenticate": "Bearer"})


def credentials(request: Request) -> tuple[str | None, bool]:
    """(token, via cookie). An Authorization header wins over the cookie."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _unauthorized("malformed Authorization header")
        return value.strip(), False
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return cookie, True
    return None, False


_PRINCIPAL_SQL = """
SELECT u.id, u.username, u.display_name, u.role, u.region, rg.name, u.enterprise_id,
       e.code, e.name, t.last_used
FROM api_tokens t
JOIN users u ON u.id = t.user_id
LEFT JOIN regions rg ON rg.code = u.region
LEFT JOIN enterprises e ON e.id = u.enterprise_id
WHERE t.token_hash = %(hash)s AND t.revoked_at IS NULL AND t.expires_at > %(now)s
  AND NOT u.disabled
"""


async def resolve(api: Api, token: str) -> Principal | None:
    """The principal of a live token, or None (unknown, expired, revoked, user disabled)."""
    if len(token) > 256:
        return None
    digest = token_hash(token)
    now = api.now()
    async with api.pool.connection() as conn:
        cur = await conn.execute(_PRINCIPAL_SQL, {"hash": digest, "now": now})
        row = await cur.fetchone()
        if row is None:
            return None
        uid, username, display, role, region, region_name, ent_id, ent_code, ent_name, used = row
        if used is None or used < now - LAST_USED_EVERY:
            await conn.execute("UPDATE api_tokens SET last_used = %s WHERE token_hash = %s",
                               (now, digest))
    return Principal(uid, username, display, role, region, region_name, ent_id, ent_code,
                     ent_name, token_hash=digest)


async def current_user(request: Request) -> Principal:
    """FastAPI dependency: the signed-in principal, or 401; 403 for a cookie-authenticated
    change without the CSRF token."""
    api = get_api(request)
    token, via_cookie = credentials(request)
    if token is None:
        raise _unauthorized()
    principal = await resolve(api, token)
    if principal is None:
        raise _unauthorized("invalid or expired token")
    principal.via_cookie = via_cookie
    if via_cookie and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        expected = csrf_for(token)
        if not (sent and hmac.compare_digest(sent.encode(), cookie.encode())
                and hmac.compare_digest(sent.encode(), expected.encode())):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"CSRF check failed: send the {CSRF_COOKIE} cookie's value in "
                                f"the {CSRF_HEADER} header")
    return principal


User = Depends(current_user)


# ---------------------------------------------------------------- routes

router = APIRouter(prefix="/api", tags=["auth"])

_USER_SQL = """
SELECT u.id, u.password_hash, u.disabled
FROM users u WHERE u.username = %s
"""


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def _set_cookies(api: Api, response: Response, token: str) -> None:
    secure = api.settings.auth.cookie_secure
    max_age = api.settings.auth.token_ttl_s
    response.set_cookie(SESSION_COOKIE, token, max_age=max_age, path="/", httponly=True,
                        samesite="strict", secure=secure)
    response.set_cookie(CSRF_COOKIE, csrf_for(token), max_age=max_age, path="/",
                        httponly=False, samesite="strict", secure=secure)


def _clear_cookies(api: Api, response: Response) -> None:
    secure = api.settings.auth.cookie_secure
    for name, http_only in ((SESSION_COOKIE, True), (CSRF_COOKIE, False)):
        response.delete_cookie(name, path="/", httponly=http_only, samesite="strict",
                               secure=secure)


@router.post("/login", response_model=LoginOut, summary="Sign in",
             responses={401: {"description": "invalid username or password"},
                        429: {"description": "too many failed attempts (see Retry-After)"}})
async def login(body: LoginIn, request: Request, response: Response) -> dict:
    """Answers a bearer token and sets the `hw_session` (HttpOnly) and `hw_csrf` cookies."""
    api = get_api(request)
    key = (body.username.casefold(), _client(request))
    clock = api.now().timestamp()
    wait = api.limiter.retry_after(key, clock)
    if wait is not None:
        log.warning("login rate limited", client=key[1])
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            "too many failed sign-ins; try again later",
                            headers={"Retry-After": str(math.ceil(wait))})
    row = None
    if USERNAME.match(body.username):   # anything else cannot exist: only the dummy hash
        async with api.pool.connection() as conn:
            cur = await conn.execute(_USER_SQL, (body.username,))
            row = await cur.fetchone()
    ok = await verify_async(row[1] if row else None, body.password, api.hashing)
    if not ok or row is None or row[2]:
        api.limiter.failed(key, clock)
        log.info("login failed", client=key[1])
        raise _unauthorized(INVALID_LOGIN)
    api.limiter.succeeded(key)
    user_id, password_hash = row[0], row[1]
    token = new_token()
    now = api.now()
    expires = now + timedelta(seconds=api.settings.auth.token_ttl_s)
    async with api.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO api_tokens (token_hash, user_id, created_at, expires_at, last_used) "
            "VALUES (%s, %s, %s, %s, %s)", (token_hash(token), user_id, now, expires, now))
        await conn.execute(   # the user's long-dead tokens: keep the table small
            "DELETE FROM api_tokens WHERE user_id = %s AND expires_at < %s",
            (user_id, now - TOKEN_KEEP))
        if needs_rehash(password_hash):
            new_hash = await asyncio.to_thread(hash_password, body.password)
            await conn.execute("UPDATE users SET password_hash = %s WHERE id = %s",
                               (new_hash, user_id))
    principal = await resolve(api, token)
    if principal is None:  # disabled between the two statements
        raise _unauthorized(INVALID_LOGIN)
    _set_cookies(api, response, token)
    log.info("login", user=principal.username, role=principal.role)
    return {"token": token, "expires_at": expires, "user": principal.user_out()}


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, summary="Sign out",
             response_class=Response)
async def logout(request: Request, principal: Principal = User) -> Response:
    """Revokes the token of this request and clears the cookies."""
    api = get_api(request)
    async with api.pool.connection() as conn:
        await conn.execute(
            "UPDATE api_tokens SET revoked_at = %s WHERE token_hash = %s AND revoked_at IS NULL",
            (api.now(), principal.token_hash))
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    _clear_cookies(api, response)
    log.info("logout", user=principal.username)
    return response


@router.get("/me", response_model=UserOut, summary="The signed-in user")
async def me(principal: Principal = User) -> dict:
    return principal.user_out()


def time_range(api: Api, from_: datetime | None, to: datetime | None, default_span: timedelta,
               max_span: timedelta | None = None) -> tuple[datetime, datetime]:
    """A query's [from, to): zone-aware, ordered, bounded; `to` defaults to now."""
    for name, value in (("from", from_), ("to", to)):
        if value is not None and value.tzinfo is None:
            raise HTTPException(422, f"{name} must carry a time zone (RFC 3339, e.g. …Z)")
    until = to or api.now()
    try:
        since = from_ or until - default_span
    except OverflowError:
        raise HTTPException(422, "to is out of range") from None
    if since >= until:
        raise HTTPException(422, "from must be before to")
    if max_span is not None and until - since > max_span:
        raise HTTPException(422, f"the range may span at most {max_span.days} days")
    return since, until
