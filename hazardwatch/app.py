"""Composition root: wires ingest → (rules → alerting) and serves HTTP beside them.

`serve` runs, in one event loop until SIGINT/SIGTERM:
- the collector (MQTT → PostgreSQL, with the rules sink inside each batch transaction);
- when settings.alerting.enabled, the escalation ticker and the outbox dispatcher, each a
  task on its own connection, restarted after an unexpected crash;
- uvicorn with the HTTP app: the API and console (alerting.api.create_app; its lifespan
  opens and closes the connection pool and the event listener) plus /metrics, /healthz
  and /readyz.
On stop: the collector finishes its batch, open event streams end, uvicorn shuts down
(lifespan closes the pool), then the alerting tasks finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hazardwatch import logs
from hazardwatch.settings import Settings
from ingest.collector import Collector

log = logs.get("hazardwatch.app")

RESTART_DELAY_S = 2.0
GRACEFUL_HTTP_S = 5


def add_ops_routes(app: FastAPI, collector: Collector | None) -> None:
    """/metrics, /healthz, /readyz (no sign-in: for Prometheus and orchestrators)."""

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz(response: Response) -> dict:
        """Ready when the broker session is up and the last database write succeeded."""
        ready = collector is not None and collector.connected and collector.db_ok
        response.status_code = 200 if ready else 503
        return {"ready": ready,
                "mqtt": collector is not None and collector.connected,
                "database": collector is not None and collector.db_ok}


def http_app(collector: Collector | None, settings: Settings | None = None,
             stop: asyncio.Event | None = None) -> FastAPI:
    """The whole HTTP surface: API, console at /, and the operational routes."""
    from alerting.api import create_app

    return create_app(settings or Settings(), stop=stop,
                      setup=lambda app: add_ops_routes(app, collector))


async def _supervised(name: str, run: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run a long-lived service until stop; restart it if it crashes."""
    while not stop.is_set():
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("service crashed, restarting", service=name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RESTART_DELAY_S)


def alerting_tasks(settings: Settings, stop: asyncio.Event) -> list[asyncio.Task]:
    if not settings.alerting.enabled:
        return []
    from alerting.escalation import run_escalation
    from alerting.outbox import run_dispatcher

    dsn = settings.dsn()
    return [
        asyncio.create_task(_supervised(
            "escalation", lambda: run_escalation(dsn, settings.alerting, stop), stop),
            name="hw-escalation"),
        asyncio.create_task(_supervised(
            "dispatcher", lambda: run_dispatcher(dsn, settings.alerting, stop), stop),
            name="hw-dispatcher"),
    ]


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    sink = None
    if settings.rules.enabled:
        from hazardwatch.pipeline import RulesSink

        sink = RulesSink(settings.rules.replay_s, receivers=settings.alerting.receivers)
    collector = Collector(settings, sink=sink, tick_s=settings.rules.tick_s)
    config = uvicorn.Config(http_app(collector, settings, stop), host=settings.http.host,
                            port=settings.http.port, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=GRACEFUL_HTTP_S)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # we own SIGINT/SIGTERM
    http = asyncio.create_task(server.serve(), name="hw-http")
    tasks = alerting_tasks(settings, stop)
    log.info("serving", http=f"http://{settings.http.host}:{settings.http.port}",
             mqtt=f"{settings.mqtt.host}:{settings.mqtt.port}",
             alerting=settings.alerting.enabled,
             receivers=[r.name for r in settings.alerting.receivers])
    try:
        await collector.run(stop)
    finally:
        stop.set()                  # ends event streams and the alerting tasks
        server.should_exit = True
        await http
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def run(settings: Settings) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
