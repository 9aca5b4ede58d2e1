"""Structured logs: JSON lines when stderr is not a terminal (or ``log_format=json``), readable otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_state = {"json": False}


def configure(fmt: str = "auto", level: str = "info") -> None:
    """Set up structlog for this process (called once by the CLI)."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    _state["json"] = as_json
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def json_enabled() -> bool:
    """True once :func:`configure` set up JSON lines (so a traceback in the log stays one line)."""
    return _state["json"]


def get(name: str) -> Any:
    """A bound logger named after a component."""
    return structlog.get_logger(component=name)
