"""The OpenTelemetry SDK as the ``OTEL_*`` variables configure it; loaded only when tracing is on.

The SDK's own reading of the variables wherever it has one (resource,
sampler, the OTLP exporter's endpoint, headers and timeout); what this
module adds: the exporters named by ``OTEL_TRACES_EXPORTER`` (``otlp`` over
HTTP/protobuf, ``console``), ``service.name`` ``reporunner`` unless set, and
a sampler that drops orphan client spans (see ``infrastructure/tracing.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    Sampler,
    SamplingResult,
    _get_from_env_or_default,
)
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

from infrastructure.tracing import TracingConfigError


class NoOrphanClients(Sampler):
    """Drops a client span (a database, Redis or HTTP call) that has no parent; else ``inner``.

    The followers and workers poll PostgreSQL every second outside any
    span: traced, each poll would be a trace of its own.
    """

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        orphan = not trace.get_current_span(parent_context).get_span_context().is_valid
        if orphan and kind == SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoOrphanClients{{{self.inner.get_description()}}}"


def provider_from_env() -> TracerProvider:
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "reporunner"}))
    # The sampler OTEL_TRACES_SAMPLER names, as the SDK reads it (by default
    # parentbased_always_on: a caller's sampling decision stands).
    provider = TracerProvider(
        resource=resource, sampler=NoOrphanClients(_get_from_env_or_default())
    )
    for exporter in exporters(os.environ.get("OTEL_TRACES_EXPORTER", "otlp")):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def exporters(names: str) -> list[SpanExporter]:
    found: list[SpanExporter] = []
    for name in (part.strip() for part in names.split(",")):
        if name in ("", "none"):
            continue
        if name == "otlp":
            found.append(_otlp_exporter())
        elif name == "console":
            found.append(ConsoleSpanExporter())
        else:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported: use otlp, console or none"
            )
    return found


def _otlp_exporter() -> SpanExporter:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol != "http/protobuf":
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use http/protobuf "
            "(a collector's port 4318)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*


def instrument_clients(provider: TracerProvider) -> list[Any]:
    """Trace every PostgreSQL (asyncpg, psycopg), Redis and httpx call from now on."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentors: list[Any] = [
        AsyncPGInstrumentor(),
        PsycopgInstrumentor(),
        RedisInstrumentor(),
        HTTPXClientInstrumentor(),
    ]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    return instrumentors
