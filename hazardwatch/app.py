"""Composition root: wires ingest → (rules → alerting) and serves HTTP beside them."""

from __future__ import annotations

import asyncio
import signal

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hazardwatch import logs
from hazardwatch.settings import Settings
from ingest.collector import Collector

log = logs.get("hazardwatch.app")


def http_app(collector: Collector) -> FastAPI:
    app = FastAPI(title="hazardwatch", version="0.1.0")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> dict:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(response: Response) -> dict:
        """Ready when the broker session is up and the last database write succeeded."""
        ready = collector.connected and collector.db_ok
        response.status_code = 200 if ready else 503
        return {"ready": ready, "mqtt": collector.connected, "database": collector.db_ok}

    return app


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    sink = None
    if settings.rules.enabled:
        from hazardwatch.pipeline import RulesSink

        sink = RulesSink(settings.rules.replay_s)
    collector = Collector(settings, sink=sink, tick_s=settings.rules.tick_s)
    config = uvicorn.Config(http_app(collector), host=settings.http.host, port=settings.http.port,
                            log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # we own SIGINT/SIGTERM
    http = asyncio.create_task(server.serve())
    log.info("serving", http=f"http://{settings.http.host}:{settings.http.port}",
             mqtt=f"{settings.mqtt.host}:{settings.mqtt.port}")
    try:
        await collector.run(stop)
    finally:
        server.should_exit = True
        await http


def run(settings: Settings) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
