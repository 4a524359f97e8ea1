"""The HTTP application: the API routers, security headers, the console's static files.

`create_app(settings)` is a complete FastAPI app. Its lifespan opens an async connection
pool (psycopg_pool) and the LISTEN connection that wakes event streams, and closes both on
shutdown; `hazardwatch serve` runs it under uvicorn with lifespan="on" and adds its own
operational routes (/metrics, /healthz, /readyz) through `setup`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alerting.api.auth import LoginLimiter
from alerting.api.stream import EventHub
from hazardwatch import logs
from hazardwatch.settings import Settings

log = logs.get("alerting.api")

POOL_MIN = 1
POOL_MAX = 10
POOL_TIMEOUT_S = 10.0
HEARTBEAT_S = 15.0

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"

# The console: no inline script or style, no eval, nothing from other origins.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
# FastAPI's /docs and /redoc pages load Swagger UI / ReDoc from a CDN with an inline script.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
            "font-src 'self' https://fonts.gstatic.com; img-src 'self' data: https:; "
            "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Api:
    """What the routes share, kept on app.state.api while the app runs."""

    settings: Settings
    pool: AsyncConnectionPool
    hub: EventHub
    limiter: LoginLimiter
    clock: Callable[[], datetime] = utcnow
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    heartbeat_s: float = HEARTBEAT_S
    hashing: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))

    def now(self) -> datetime:
        return self.clock()


class SecurityHeaders:
    """Adds the security headers to every response, errors included (it wraps the whole
    middleware stack)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        csp = DOCS_CSP if path in DOCS_PATHS else CSP
        api = path.startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = csp
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Referrer-Policy"] = "no-referrer"
                headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
                if api:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _App(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def create_app(settings: Settings, *, clock: Callable[[], datetime] | None = None,
               stop: asyncio.Event | None = None, setup: Callable[[FastAPI], None] | None = None,
               console: bool = True, heartbeat_s: float = HEARTBEAT_S) -> FastAPI:
    """The API (+ console). `stop` ends open event streams when set (`serve` sets it
    before shutting uvicorn down); `clock` is for tests (token expiry, rate limits)."""
    from alerting.api import auth, kpis, readings, registry, stream, warnings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(
            settings.dsn(), min_size=POOL_MIN, max_size=POOL_MAX, timeout=POOL_TIMEOUT_S,
            open=False, name="hazardwatch-api",
            kwargs={"autocommit": True, "application_name": "hazardwatch-api"})
        await pool.open(wait=False)   # a database that is down now is retried, not fatal
        hub = EventHub(settings.dsn())
        hub.start()
        state = Api(settings=settings, pool=pool, hub=hub,
                    limiter=LoginLimiter(settings.auth.login_attempts,
                                         settings.auth.login_window_s),
                    clock=clock or utcnow, stop=stop or asyncio.Event(),
                    heartbeat_s=heartbeat_s)
        app.state.api = state
        try:
            yield
        finally:
            state.stop.set()
            await hub.close()
            await pool.close()

    app = _App(title="hazardwatch", version="0.1.0", lifespan=lifespan,
               description="Warnings, readings, registry and KPIs of hazardwatch "
                           "(docs/alerting.md). Sign in with POST /api/login.")

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(psycopg.OperationalError)
    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable", path=request.url.path, error=type(exc).__name__)
        return JSONResponse({"detail": "database unavailable"}, status_code=503,
                            headers={"Retry-After": "5"})

    for module in (auth, warnings, readings, kpis, registry, stream):
        app.include_router(module.router)
    if setup is not None:
        setup(app)
    if console:
        mount_console(app)
    return app


def plotly_js() -> Path | None:
    """plotly.min.js as the plotly package ships it (the console's chart library)."""
    try:
        from importlib.resources import files

        path = Path(str(files("plotly") / "package_data" / "plotly.min.js"))
    except (ImportError, ModuleNotFoundError, TypeError):
        return None
    return path if path.is_file() else None


def mount_console(app: FastAPI, directory: Path = CONSOLE_DIR) -> None:
    """The console's static files at / (index.html for /), and /vendor/plotly.min.js from
    the plotly package; mounted last, so the routes win."""
    plotly = plotly_js()
    if plotly is not None:
        @app.get("/vendor/plotly.min.js", include_in_schema=False)
        def vendor_plotly() -> FileResponse:
            return FileResponse(plotly, media_type="text/javascript",
                                headers={"Cache-Control": "public, max-age=86400"})
    if not (directory / "index.html").is_file():
        log.warning("console not installed", directory=str(directory))
        return
    app.mount("/", StaticFiles(directory=directory, html=True), name="console")
