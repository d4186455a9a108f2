"""structlog configuration: JSON lines off a terminal, readable lines on one.

Request-scoped fields (``request_id``, ``org_id``, ``actor``) are bound with
``structlog.contextvars`` and merged into every line logged while serving;
with tracing on, a line logged inside a span carries its ``trace_id`` and
``span_id`` too.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from infrastructure.json_codec import dumps_answer
from infrastructure.tracing import add_trace_ids


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    # A logged message may quote a client's input: never fail on its content.
    return dumps_answer(obj, default=default).decode()


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        # Not cached: a cached module logger keeps the configuration of its first
        # line, so a later reconfiguration (structlog's capture_logs, a CLI command
        # run in-process) would not reach it. Building one per line costs ~1 µs.
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (uvicorn, alembic) go through the same renderer.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True
    # The embedded server narrates every step of its start; keep the warnings.
    for chatty in ("pgserver", "alembic.runtime.migration"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
