"""Tracing with the OpenTelemetry SDK: off unless the standard ``OTEL_*`` variables ask for it.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``),
or, with it unset, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its ``_TRACES_``
form) is set; ``OTEL_SDK_DISABLED=true`` wins. Off, nothing of the SDK is
imported and every helper here returns at its first line: a log line pays
one attribute check, an event no bytes.

How a command's trace goes on past the HTTP answer: every event records the
W3C ``traceparent`` of the span that caused it in its metadata (beside the
correlation id). A follower that applies the event later starts its span as
a *child* of that context, not a linked root: one command, one trace, from
the HTTP span through the append to each projector's apply, the relay's
publish and the worker's run, and the run's own events continue it further.
Span links would serve a batch that folds many commands into one span, but
they leave each command's story spread over as many traces as it has
followers. A follower's batch therefore gets one short span per event that
carries a context, all ending when the batch does (``event_spans``).

The instrumentations (ASGI/FastAPI, asyncpg, psycopg, redis, httpx) trace
every call, but a database or Redis call outside any span (the followers'
and workers' polling, every second) would be a trace of its own: the
sampler drops those orphans (``tracing_setup.NoOrphanClients``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


class TracingConfigError(ValueError):
    """An ``OTEL_*`` setting this service cannot follow."""


@dataclass
class _Tracing:
    provider: TracerProvider
    tracer: Tracer
    instrumentors: list[Any]


_state: _Tracing | None = None
_INSTRUMENTATION_NAME = "reporunner"


def requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return any(name.strip() not in ("", "none") for name in exporters.split(","))
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def enabled() -> bool:
    return _state is not None


def configure_tracing(provider: TracerProvider | None = None) -> bool:
    """Start tracing as the environment says (or into ``provider``); True if on.

    Call once per process, before connections are made: the database and
    Redis clients are instrumented when they connect. A test passes its own
    provider (with an in-memory exporter); that replaces the one before.
    """
    global _state
    if provider is None and not requested():
        return False
    from infrastructure import tracing_setup

    if provider is None:
        provider = tracing_setup.provider_from_env()
        from opentelemetry import trace

        trace.set_tracer_provider(provider)
    disable_tracing()
    _state = _Tracing(
        provider=provider,
        tracer=provider.get_tracer(_INSTRUMENTATION_NAME),
        instrumentors=tracing_setup.instrument_clients(provider),
    )
    return True


def disable_tracing() -> None:
    """Stop tracing in this process (tests); apps instrumented before keep their middleware."""
    global _state
    if _state is None:
        return
    for instrumentor in _state.instrumentors:
        instrumentor.uninstrument()
    _state = None


def instrument_app(app: FastAPI) -> None:
    """Trace the app's requests, continuing a caller's ``traceparent``."""
    if _state is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # Probes every few seconds would each be a trace; the variables can say otherwise.
    named = {"OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS"} & set(os.environ)
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_state.provider,
        excluded_urls=None if named else "/healthz,/readyz",
        exclude_spans=["receive", "send"],
    )


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, for an event's metadata; None if none."""
    if _state is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


@functools.cache
def _w3c() -> TraceContextTextMapPropagator:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def _parent(traceparent: Any) -> Context | None:
    """The context a stored ``traceparent`` names; None if it names none (or is no string)."""
    if not isinstance(traceparent, str):
        return None
    from opentelemetry import trace

    context = _w3c().extract({"traceparent": traceparent})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


@contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    client: bool = False,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """A current span, a child of the ``parent`` traceparent if given (else of the current one).

    ``client``: a call to a database or service (dropped outside any trace, as
    the instrumentations' are).
    """
    if _state is None:
        yield
        return
    from opentelemetry.trace import SpanKind

    kind = SpanKind.CLIENT if client else SpanKind.CONSUMER if parent else SpanKind.INTERNAL
    with _state.tracer.start_as_current_span(
        name, context=_parent(parent), kind=kind, attributes=dict(attributes or {})
    ):
        yield


@contextmanager
def event_spans(name: str, follower: str, events: Iterable[tuple[int, str, Any]]) -> Iterator[None]:
    """A span ``name`` per event ``(position, type, meta)`` with a stored context, all
    ending with the batch.

    Each is a child of the context its event recorded; events without one
    (recorded untraced, or before tracing existed) get none. An error in the
    batch marks every span. Off, ``events`` is never iterated: pass a generator.
    """
    if _state is None:
        yield
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode

    spans: list[Span] = []
    for position, event_type, meta in events:
        parent = _parent(meta.get("traceparent")) if isinstance(meta, Mapping) else None
        if parent is None:
            continue
        attributes: dict[str, Any] = {
            "reporunner.follower": follower,
            "reporunner.log.position": position,
            "reporunner.event.type": event_type,
        }
        correlation_id = meta.get("correlation_id")
        if isinstance(correlation_id, str):
            attributes["reporunner.correlation_id"] = correlation_id
        spans.append(
            _state.tracer.start_span(
                name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
            )
        )
    try:
        yield
    except BaseException as exc:
        for each in spans:
            each.record_exception(exc)
            each.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        for each in spans:
            each.end()


def add_trace_ids(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the current span's trace and span ids, while one is active."""
    if _state is None:
        return event_dict
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", f"{ctx.trace_id:032x}")
        event_dict.setdefault("span_id", f"{ctx.span_id:016x}")
    return event_dict
