"""Tracing: one trace from a caller's request through the log to every follower.

The SDK's in-memory exporter collects the spans of a real app (uvicorn, the
projectors, a worker and, with ``REDIS_URL``, the relay) on a database of
its own.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from commands import WorkflowApplication, WorkflowCommands
from domain.meta import EventMeta
from infrastructure import tracing
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, decode_event
from infrastructure.settings import Settings
from infrastructure.tracing_setup import NoOrphanClients
from reporunner.wiring import create_app, create_workflow_application
from tests.helpers import scratch_database, serving, webhook_body, workflow_body

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for one test."""
    spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=NoOrphanClients(ParentBased(ALWAYS_ON)))
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.configure_tracing(provider)
    yield spans
    tracing.disable_tracing()
    provider.shutdown()


@pytest.fixture
def traced_db(server_target: PgTarget) -> Iterator[PgTarget]:
    with scratch_database(server_target, "reporunner_tracing") as target:
        yield target


def _request(
    method: str, url: str, key: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A plain urllib call: the httpx instrumentation would put its own traceparent in."""
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        | (headers or {}),
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
        return response.status, json.loads(text) if text else {}, dict(response.headers)


def _traceparent_of(span: Any) -> str:
    """What the W3C propagator sends for ``span``."""
    carrier: dict[str, str] = {}
    context = span.get_span_context() if hasattr(span, "get_span_context") else span.context
    TraceContextTextMapPropagator().inject(
        carrier, trace.set_span_in_context(trace.NonRecordingSpan(context))
    )
    return carrier["traceparent"]


def _hex(span_id: int) -> str:
    return f"{span_id:016x}"


def _until(predicate: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)
    return found


def _events_of(app: WorkflowApplication, target: PgTarget, aggregate_id: str) -> list[Any]:
    with psycopg.connect(target.conninfo()) as conn:
        rows = conn.execute(
            "SELECT originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE originator_id = %s ORDER BY originator_version",
            (uuid.UUID(aggregate_id),),
        ).fetchall()
    return [decode_event(app.mapper, *row) for row in rows]


def test_a_callers_trace_runs_through_the_append_the_projector_and_the_worker(
    exporter: InMemorySpanExporter,
    traced_db: PgTarget,
    app_settings: Settings,
    org: str,
) -> None:
    prefix = f"reporunner-test-tracing-{uuid.uuid4().hex[:8]}"
    settings = app_settings.model_copy(update={"bus_prefix": prefix, "projection_poll_s": 0.1})
    key = _key_on(traced_db, org)
    app = create_app(settings, traced_db)
    log_app = create_workflow_application(traced_db, settings)
    try:
        with serving(app) as url:
            _, created, _ = _request("POST", f"{url}/v1/workflows", key, workflow_body())
            status, queued, _ = _request(
                "POST",
                f"{url}/v1/workflows/{created['id']}/executions",
                key,
                {"mode": "async", "input": {"n": 1}},
                {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
            )
            assert status == 202
            execution_id = queued["execution_id"]

            def trace() -> list[ReadableSpan]:
                return [
                    span
                    for span in exporter.get_finished_spans()
                    if f"{span.context.trace_id:032x}" == CALLER_TRACE
                ]

            def names() -> set[str]:
                return {span.name for span in trace()}

            wanted = {"execution run", "apply executions", "apply workflows"}
            if settings.redis_url:
                wanted.add("publish events")
            _until(lambda: wanted <= names(), f"spans {sorted(wanted)} in the caller's trace")
            # The worker's Succeeded is applied too (a child of the run's span).
            _until(
                lambda: any(
                    s.name == "apply executions"
                    and s.attributes is not None
                    and s.attributes.get("reporunner.event.type") == "Execution.Succeeded"
                    for s in trace()
                ),
                "the run's end applied",
            )
            spans = trace()
    finally:
        log_app.close()
        _drop_streams(settings, prefix)

    # The caller's span is the server span's parent: its trace continued.
    (server,) = [s for s in spans if s.kind.name == "SERVER"]
    assert server.parent is not None and _hex(server.parent.span_id) == CALLER_SPAN
    assert server.parent.is_remote
    # The append: a client span within the request (and within the run, for its events).
    (append,) = [s for s in spans if s.name == "append events" and _child(s, server)]
    assert append.kind.name == "CLIENT"
    assert (append.attributes or {})["db.collection.name"] == EVENTS_TABLE
    # The Queued event recorded the request's span; the projector and the worker continue it.
    events = _events_of(log_app, traced_db, execution_id)
    queued_meta = events[0].meta
    assert queued_meta["traceparent"] == _traceparent_of(server)
    (run,) = [s for s in spans if s.name == "execution run"]
    assert run.parent is not None and run.parent.span_id == server.context.span_id
    assert (run.attributes or {})["reporunner.execution_id"] == execution_id
    assert [s for s in spans if s.name == "append events" and _child(s, run)]
    applied = {
        (s.attributes or {})["reporunner.event.type"]: s
        for s in spans
        if s.name == "apply executions"
    }
    assert applied["Execution.Queued"].parent.span_id == server.context.span_id  # type: ignore[union-attr]
    assert applied["Execution.Succeeded"].parent.span_id == run.context.span_id  # type: ignore[union-attr]
    # The run's own events carry the run's span.
    ended = events[-1]
    assert type(ended).__qualname__ == "Execution.Succeeded"
    assert ended.meta["traceparent"] == _traceparent_of(run)
    if settings.redis_url:
        published = [s for s in spans if s.name == "publish events"]
        assert {s.parent.span_id for s in published} >= {  # type: ignore[union-attr]
            server.context.span_id,
            run.context.span_id,
        }
    # No orphan database calls (the followers' polling) became traces of their own.
    assert not [
        s for s in exporter.get_finished_spans() if s.parent is None and s.kind.name == "CLIENT"
    ]


def test_a_webhook_callers_traceparent_reaches_the_run_it_queues(
    exporter: InMemorySpanExporter,
    traced_db: PgTarget,
    app_settings: Settings,
    org: str,
) -> None:
    key = _key_on(traced_db, org)
    app = create_app(app_settings, traced_db, roles=("write-api",))
    log_app = create_workflow_application(traced_db, app_settings)
    caller_trace = uuid.uuid4().hex
    try:
        with serving(app) as url:
            _, created, headers = _request(
                "POST", f"{url}/v1/workflows", key, webhook_body(path="traced")
            )
            _request(
                "POST",
                f"{url}/v1/workflows/{created['id']}/activate",
                key,
                headers={"If-Match": headers["etag"]},
            )
            request = urllib.request.Request(
                f"{url}/hooks/{org}/traced",
                method="POST",
                data=b'{"order": 7}',
                headers={
                    "Content-Type": "application/json",
                    "traceparent": f"00-{caller_trace}-{CALLER_SPAN}-01",
                },
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 202
                execution_id = json.loads(response.read())["execution_id"]
        queued = _events_of(log_app, traced_db, execution_id)[0]
    finally:
        log_app.close()
    trace_id = queued.meta["traceparent"].split("-")[1]
    assert trace_id == caller_trace
    (hook_span,) = [
        s
        for s in exporter.get_finished_spans()
        if s.kind.name == "SERVER" and f"{s.context.trace_id:032x}" == caller_trace
    ]
    assert hook_span.parent is not None and _hex(hook_span.parent.span_id) == CALLER_SPAN


def test_untraced_events_carry_no_traceparent_and_old_metadata_reads_the_same() -> None:
    assert not tracing.enabled()
    assert tracing.current_traceparent() is None
    meta = EventMeta(org_id="o", actor="a", correlation_id="c")
    assert "traceparent" not in meta.as_dict()
    traced = EventMeta(org_id="o", actor="a", correlation_id="c", traceparent="00-ab-cd-01")
    assert traced.as_dict()["traceparent"] == "00-ab-cd-01"


def test_log_lines_carry_the_current_span_ids(exporter: InMemorySpanExporter) -> None:
    assert tracing.add_trace_ids(None, "info", {}) == {}  # no span active
    with tracing.span("work"):
        line = tracing.add_trace_ids(None, "info", {"event": "x"})
        assert tracing.current_traceparent() == _traceparent_of(trace.get_current_span())
    (work,) = exporter.get_finished_spans()
    assert line["trace_id"] == f"{work.context.trace_id:032x}"
    assert line["span_id"] == _hex(work.context.span_id)


def test_tracing_is_off_unless_the_environment_asks() -> None:
    assert not tracing.requested({})
    assert not tracing.requested({"OTEL_SERVICE_NAME": "x"})
    assert tracing.requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert tracing.requested({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.requested(
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    )
    assert not tracing.requested(
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    )


def test_an_exporter_or_protocol_it_cannot_follow_stops_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from infrastructure.tracing_setup import exporters

    with pytest.raises(tracing.TracingConfigError, match="zipkin"):
        exporters("zipkin")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(tracing.TracingConfigError, match="http/protobuf"):
        exporters("otlp")


def _child(span: ReadableSpan, of: ReadableSpan) -> bool:
    return span.parent is not None and span.parent.span_id == of.context.span_id


def _key_on(target: PgTarget, org: str) -> str:
    """An owner key in ``target`` (the ``make_key`` fixture writes to the session's database)."""
    import asyncio

    from infrastructure.auth import ApiKeyStore, Role
    from infrastructure.database import create_engine

    async def create() -> str:
        engine = create_engine(target, pool_size=1)
        try:
            _, plaintext = await ApiKeyStore(engine).create(org, Role.OWNER, "test")
            return plaintext
        finally:
            await engine.dispose()

    return asyncio.run(create())


def _drop_streams(settings: Settings, prefix: str) -> None:
    if not settings.redis_url:
        return
    import redis

    with redis.Redis.from_url(settings.redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)


def test_a_dead_letter_log_line_names_the_events_correlation_id(
    commands: WorkflowCommands, db_target: PgTarget, org: str
) -> None:
    from commands import CommandContext, CreateWorkflow
    from projections.dead_letters import correlation_at

    ctx = CommandContext(org_id=org, actor="apikey:t", correlation_id=f"req-{uuid.uuid4().hex}")
    position = commands.create(CreateWorkflow(**workflow_body()), ctx).position
    with psycopg.connect(db_target.conninfo()) as conn:
        assert correlation_at(conn, position) == ctx.correlation_id
        assert correlation_at(conn, 10**15) is None
    assert correlation_at(None, position) is None  # type: ignore[arg-type]  # never fails the loop
