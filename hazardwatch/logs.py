"""Structured logging: key=value on a console, JSON lines in production; quiet at INFO."""

from __future__ import annotations

import logging
import sys

import structlog


def setup(level: str = "INFO", fmt: str = "console") -> None:
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through stdlib; keep them at WARNING unless asked for DEBUG.
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr)


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
