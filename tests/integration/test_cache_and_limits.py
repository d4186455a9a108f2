"""The read cache and the per-organisation rate limits, on real Redis and PostgreSQL.

A small app here does what the read and write endpoints do: authenticate
with a real API key, take a token (``enforce_rate_limit``, which
``authorize`` calls once wired), read the views' position from
``projection_tracking`` (waiting for ``X-Min-Position``), and answer through
``cached_json``. Only the computed answer is fake, so tests can count how
often it runs. Keys in the shared Redis carry a prefix of this run and are
deleted afterwards; tests that take Redis away start a redis-server of their
own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import redis
from fastapi import FastAPI, Request
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response
from structlog.testing import capture_logs

from infrastructure.auth import ApiKeyStore, Permission, Principal, Role
from infrastructure.cache import CacheConfig, ReadCache, cached_json, connect_redis
from infrastructure.database import PgTarget, create_engine
from infrastructure.problems import Problem
from infrastructure.ratelimit import (
    TOKEN_BUCKET_SHA,
    RateLimitConfig,
    RateLimiter,
    enforce_rate_limit,
)
from infrastructure.settings import Settings
from infrastructure.web import RequestContextMiddleware, authenticate, install_error_handlers
from read_api.routes import _views_position
from tests.helpers import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def key_prefix() -> Iterator[str]:
    """This run's corner of the shared Redis, emptied afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc!r}")
    prefix = f"reporunner-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
async def shared_redis(key_prefix: str) -> AsyncIterator[AsyncRedis]:
    # Generous timeouts: these tests are about answers, not outages, and a
    # busy test machine must not turn a hit into a bypass.
    client = connect_redis(REDIS_URL, timeout_s=2, connect_timeout_s=2)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def engine(db_target: PgTarget) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_target, pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture
async def view(engine: AsyncEngine) -> AsyncIterator[str]:
    """A view of this test's own in ``projection_tracking``, whose position tests move."""
    name = f"test-view-{uuid.uuid4().hex[:12]}"
    await set_position(engine, name, 5)
    yield name
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM projection_tracking WHERE name = :n"), {"n": name})


async def set_position(engine: AsyncEngine, view: str, position: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO projection_tracking (name, position) VALUES (:n, :p) "
                "ON CONFLICT (name) DO UPDATE SET position = :p"
            ),
            {"n": view, "p": position},
        )


async def new_org(engine: AsyncEngine) -> dict[str, str]:
    """Auth headers of a fresh organisation's real API key."""
    org_id = f"org-{uuid.uuid4().hex[:12]}"
    _, plaintext = await ApiKeyStore(engine).create(org_id, Role.OWNER, "test")
    return {"Authorization": f"Bearer {plaintext}"}


@dataclass
class RedisServer:
    """A redis-server of this test's own, to stop, pause and resume."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:  # a Redis that accepts connections but never answers
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(process, port)
    client = redis.Redis(port=port, socket_timeout=0.2)
    deadline = time.monotonic() + 5
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.01)
    client.close()
    yield server
    if process.poll() is None:
        server.stop()


@dataclass
class StubApp:
    app: FastAPI
    computed: int = 0  # how often an answer was computed rather than read from the cache

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")


def build_app(
    engine: AsyncEngine,
    view: str,
    cache: ReadCache | None = None,
    limiter: RateLimiter | None = None,
) -> StubApp:
    """Endpoints shaped like the read API's cached ones, and a command."""
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware, max_body_bytes=1024 * 1024)
    install_error_handlers(app, {})
    app.state.engine = engine
    app.state.read_engine = engine
    app.state.settings = Settings(min_position_wait_s=2)
    app.state.api_keys = ApiKeyStore(engine, cache_seconds=60)
    app.state.read_cache = cache
    app.state.rate_limiter = limiter
    stub = StubApp(app)

    async def authorize(request: Request, permission: Permission) -> Principal:
        # What infrastructure.web.authorize does once the limiter is wired in.
        principal = await authenticate(request)
        await enforce_rate_limit(request, principal, permission)
        return principal

    async def answer(request: Request, principal: Principal, *key_parts: Any) -> Response:
        position = await _views_position(request, None, [view])

        async def compute() -> dict[str, Any]:
            if key_parts and key_parts[0] == {"fail": True}:
                raise Problem(400, "a query that fails")
            stub.computed += 1
            return {"org": principal.org_id, "position": position, "n": stub.computed}

        return await cached_json(request, principal.org_id, position, compute, *key_parts)

    @app.post("/v1/report")
    async def report(request: Request) -> Response:
        principal = await authorize(request, Permission.READ_WORKFLOWS)
        return await answer(request, principal, orjson.loads(await request.body()))

    @app.get("/v1/summary")
    async def summary(request: Request) -> Response:
        return await answer(request, await authorize(request, Permission.READ_WORKFLOWS))

    @app.post("/v1/command")
    async def command(request: Request) -> Response:
        await authorize(request, Permission.WRITE_WORKFLOWS)
        return Response(b'{"ok": true}', media_type="application/json")

    @app.get("/internal/ping")
    async def ping(request: Request) -> Response:
        await authorize(request, Permission.READ_WORKFLOWS)
        return Response(b"{}", media_type="application/json")

    return stub


def cache_on(client: AsyncRedis, key_prefix: str, **config: Any) -> ReadCache:
    return ReadCache(client, CacheConfig(key_prefix=key_prefix, **config))


def limiter_on(client: AsyncRedis, key_prefix: str, **config: Any) -> RateLimiter:
    return RateLimiter(client, RateLimitConfig(key_prefix=key_prefix, **config))


# -- the read cache ------------------------------------------------------------------------


async def test_second_identical_read_is_a_hit_with_the_same_bytes(
    engine: AsyncEngine, view: str, shared_redis: AsyncRedis, key_prefix: str
) -> None:
    stub = build_app(engine, view, cache=cache_on(shared_redis, key_prefix))
    auth = await new_org(engine)
    async with stub.client() as client:
        first = await client.post("/v1/report", json={"pipeline": [1]}, headers=auth)
        second = await client.post("/v1/report", json={"pipeline": [1]}, headers=auth)
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.content == second.content
    assert first.headers["x-projection-position"] == second.headers["x-projection-position"] == "5"
    assert first.headers["content-type"] == "application/json"
    assert stub.computed == 1


async def test_key_is_the_canonical_query(
    engine: AsyncEngine, view: str, shared_redis: AsyncRedis, key_prefix: str
) -> None:
    stub = build_app(engine, view, cache=cache_on(shared_redis, key_prefix))
    auth = await new_org(engine)
    async with stub.client() as client:

        async def outcome(method: str, url: str, body: bytes | None = None) -> str:
            response = await client.request(method, url, content=body, headers=auth)
            assert response.status_code == 200, response.text
            return str(response.headers["x-cache"])

        assert await outcome("GET", "/v1/summary?a=1&b=2") == "miss"
        # Parameter order and min_position do not change the answer.
        assert await outcome("GET", "/v1/summary?b=2&a=1") == "hit"
        assert await outcome("GET", "/v1/summary?b=2&a=1&min_position=3") == "hit"
        assert await outcome("GET", "/v1/summary?a=1&b=3") == "miss"
        # Nor does a body's whitespace; the order of its keys does ($sort!).
        assert await outcome("POST", "/v1/report", b'{"a": 1, "b": -1}') == "miss"
        assert await outcome("POST", "/v1/report", b'{"a":1,\n"b":-1}') == "hit"
        assert await outcome("POST", "/v1/report", b'{"b": -1, "a": 1}') == "miss"
    assert stub.computed == 4


async def test_keys_hold_what_orjson_refuses(shared_redis: AsyncRedis, key_prefix: str) -> None:
    # Integers past 64 bits and lone surrogates: JSON a request body may carry.
    cache = cache_on(shared_redis, key_prefix)
    parts = [
        [10**400],
        [10**400 + 1],
        ["\ud800"],
        ["\ud801"],
        [{"a": 1, "b": 2}],
        [{"b": 2, "a": 1}],
    ]
    keys = [cache.key("org", part, 1) for part in parts]
    assert all(key is not None and key.startswith(f"{key_prefix}cache:org:1:") for key in keys)
    assert len(set(keys)) == len(parts)
    assert keys[0] == cache.key("org", [10**400], 1)
    # Past what Python will print there is no key: the answer is computed, uncached.
    assert cache.key("org", [10**5000], 1) is None


async def test_moved_position_means_a_new_answer(
    engine: AsyncEngine, view: str, shared_redis: AsyncRedis, key_prefix: str
) -> None:
    stub = build_app(engine, view, cache=cache_on(shared_redis, key_prefix))
    auth = await new_org(engine)
    async with stub.client() as client:
        before = await client.get("/v1/summary", headers=auth)
        await set_position(engine, view, 6)
        after = await client.get("/v1/summary", headers=auth)
        again = await client.get("/v1/summary", headers=auth)
    assert [r.headers["x-cache"] for r in (before, after, again)] == ["miss", "miss", "hit"]
    assert after.json()["position"] == 6
    assert after.headers["x-projection-position"] == "6"
    assert again.content == after.content


async def test_min_position_never_gets_an_older_answer(
    engine: AsyncEngine, view: str, shared_redis: AsyncRedis, key_prefix: str
) -> None:
    stub = build_app(engine, view, cache=cache_on(shared_redis, key_prefix))
    auth = await new_org(engine)
    async with stub.client() as client:
        cached = await client.get("/v1/summary", headers=auth)
        assert cached.json()["position"] == 5

        async def catch_up_later() -> None:
            await asyncio.sleep(0.1)
            await set_position(engine, view, 7)

        # Asks for 7 while the views are at 5 (and the cache holds 5): waits, recomputes.
        mover = asyncio.create_task(catch_up_later())
        fresh = await client.get("/v1/summary", headers={**auth, "X-Min-Position": "7"})
        await mover
        assert fresh.headers["x-cache"] == "miss"
        assert fresh.json()["position"] == 7
        # An older minimum gets the current answer, not the entry at 5.
        older = await client.get("/v1/summary", headers={**auth, "X-Min-Position": "5"})
        assert older.headers["x-cache"] == "hit"
        assert older.json()["position"] == 7


async def test_cache_is_per_organisation(
    engine: AsyncEngine, view: str, shared_redis: AsyncRedis, key_prefix: str
) -> None:
    stub = build_app(engine, view, cache=cache_on(shared_redis, key_prefix))
    org_a, org_b = await new_org(engine), await new_org(engine)
    async with stub.client() as client:
        a = await client.get("/v1/summary", headers=org_a)
        b = await client.get("/v1/summary", headers=org_b)
        a_again = await client.get("/v1/summary", headers=org_a)
    assert (a.headers["x-cache"], b.headers["x-cache"], a_again.headers["x-cache"]) == (
        "miss",
        "miss",
        "hit",
    )
    assert a.json()["org"] != b.json()["org"]
    assert a_again.json()["org"] == a.json()["org"]


async def test_entries_expire(
    engine: AsyncEngine, view: str, shared_redis: AsyncRedis, key_prefix: str
) -> None:
    cache = cache_on(shared_redis, key_prefix, ttl_s=0.2)
    stub = build_app(engine, view, cache=cache)
    auth = await new_org(engine)
    async with stub.client() as client:
        assert (await client.get("/v1/summary", headers=auth)).headers["x-cache"] == "miss"
        assert (await client.get("/v1/summary", headers=auth)).headers["x-cache"] == "hit"
        await asyncio.sleep(0.25)
        assert (await client.get("/v1/summary", headers=auth)).headers["x-cache"] == "miss"


async def test_errors_and_oversized_answers_are_not_cached(
    engine: AsyncEngine, view: str, shared_redis: AsyncRedis, key_prefix: str
) -> None:
    stub = build_app(engine, view, cache=cache_on(shared_redis, key_prefix, max_entry_bytes=10))
    auth = await new_org(engine)
    async with stub.client() as client:
        for _ in range(2):
            failed = await client.post("/v1/report", json={"fail": True}, headers=auth)
            assert failed.status_code == 400
            assert failed.headers["content-type"] == "application/problem+json"
        outcomes = [
            (await client.get("/v1/summary", headers=auth)).headers["x-cache"] for _ in "ab"
        ]
    assert outcomes == ["miss", "miss"]
    assert stub.computed == 2


async def test_no_cache_configured_bypasses(engine: AsyncEngine, view: str) -> None:
    stub = build_app(engine, view)
    auth = await new_org(engine)
    async with stub.client() as client:
        response = await client.get("/v1/summary", headers=auth)
    assert response.status_code == 200
    assert response.headers["x-cache"] == "bypass"
    assert "ratelimit-limit" not in response.headers


# -- rate limits ---------------------------------------------------------------------------


async def test_over_the_limit_is_a_429_with_headers(
    engine: AsyncEngine, view: str, shared_redis: AsyncRedis, key_prefix: str
) -> None:
    limiter = limiter_on(shared_redis, key_prefix, read_per_s=0.5, read_burst=2)
    stub = build_app(engine, view, limiter=limiter)
    auth = await new_org(engine)
    async with stub.client() as client:
        allowed = [await client.get("/v1/summary", headers=auth) for _ in range(2)]
        refused = await client.get("/v1/summary", headers=auth)
    assert [r.status_code for r in allowed] == [200, 200]
    assert [r.headers["ratelimit-limit"] for r in allowed] == ["2", "2"]
    assert [r.headers["ratelimit-remaining"] for r in allowed] == ["1", "0"]
    assert "retry-after" not in allowed[0].headers
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "https://reporunner.dev/problems/rate-limited"
    # 0.5 tokens/s: the next token in 2 s, a full bucket (2 tokens) in 4 s.
    assert refused.headers["retry-after"] == "2"
    assert refused.headers["ratelimit-limit"] == "2"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-reset"] == "4"
    assert "x-request-id" in refused.headers


async def test_buckets_are_per_organisation_and_per_api(
    engine: AsyncEngine, view: str, shared_redis: AsyncRedis, key_prefix: str
) -> None:
    limiter = limiter_on(
        shared_redis, key_prefix, read_per_s=0.01, read_burst=3, write_per_s=0.01, write_burst=1
    )
    stub = build_app(engine, view, limiter=limiter)
    org_a, org_b = await new_org(engine), await new_org(engine)
    async with stub.client() as client:
        a_reads = [(await client.get("/v1/summary", headers=org_a)).status_code for _ in range(4)]
        b_read = await client.get("/v1/summary", headers=org_b)
        a_write = await client.post("/v1/command", headers=org_a)
        a_write_again = await client.post("/v1/command", headers=org_a)
        # Not a /v1 route: never limited.
        a_internal = await client.get("/internal/ping", headers=org_a)
    assert a_reads == [200, 200, 200, 429]
    assert (b_read.status_code, b_read.headers["ratelimit-remaining"]) == (200, "2")
    assert (a_write.status_code, a_write.headers["ratelimit-limit"]) == (200, "1")
    assert a_write_again.status_code == 429
    assert a_internal.status_code == 200
    assert "ratelimit-limit" not in a_internal.headers


async def test_tokens_refill_over_time(shared_redis: AsyncRedis, key_prefix: str) -> None:
    limiter = limiter_on(shared_redis, key_prefix, write_per_s=20, write_burst=2)
    org = f"org-{uuid.uuid4().hex[:12]}"
    taken = [await limiter.take("write", org) for _ in range(3)]
    assert [d.allowed if d else None for d in taken] == [True, True, False]
    await asyncio.sleep(0.06)  # one token takes 50 ms at 20/s
    refilled = [await limiter.take("write", org) for _ in range(2)]
    assert [d.allowed if d else None for d in refilled] == [True, False]
    await asyncio.sleep(0.5)  # ten tokens' worth of time, but a bucket holds only the burst
    after_a_pause = [await limiter.take("write", org) for _ in range(3)]
    assert [d.allowed if d else None for d in after_a_pause] == [True, True, False]


async def test_concurrent_requests_take_exactly_the_burst(
    engine: AsyncEngine, view: str, shared_redis: AsyncRedis, key_prefix: str
) -> None:
    limiter = limiter_on(shared_redis, key_prefix, read_per_s=0.001, read_burst=10)
    stub = build_app(engine, view, limiter=limiter)
    auth = await new_org(engine)
    async with stub.client() as client:
        await client.get("/internal/ping", headers=auth)  # the key lookup, once
        responses = await asyncio.gather(
            *(client.get("/v1/summary", headers=auth) for _ in range(50))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 10 + [429] * 40
    remaining = sorted(int(r.headers["ratelimit-remaining"]) for r in responses if r.is_success)
    assert remaining == list(range(10))  # every token handed out exactly once


async def test_zero_disables_a_limit(
    engine: AsyncEngine, view: str, shared_redis: AsyncRedis, key_prefix: str
) -> None:
    limiter = limiter_on(shared_redis, key_prefix, read_per_s=0, read_burst=1)
    stub = build_app(engine, view, limiter=limiter)
    auth = await new_org(engine)
    async with stub.client() as client:
        responses = [await client.get("/v1/summary", headers=auth) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert "ratelimit-limit" not in responses[0].headers


async def test_script_is_sent_again_when_redis_forgot_it(own_redis: RedisServer) -> None:
    client = connect_redis(own_redis.url)
    try:
        limiter = RateLimiter(client, RateLimitConfig(read_per_s=1, read_burst=5))
        first = await limiter.take("read", "org-a")  # a fresh Redis: NOSCRIPT, then EVAL
        await client.script_flush()
        second = await limiter.take("read", "org-a")
        third = await limiter.take("read", "org-a")  # EVALSHA hits
        assert [d.remaining if d else None for d in (first, second, third)] == [4, 3, 2]
        assert await client.script_exists(TOKEN_BUCKET_SHA) == [True]
        stats = await client.info("commandstats")
        assert stats["cmdstat_eval"]["calls"] == 2
        assert stats["cmdstat_evalsha"]["calls"] == 3
    finally:
        await client.aclose()


# -- without Redis -------------------------------------------------------------------------


async def test_dead_redis_reads_work_uncached_and_limits_fail_open(
    engine: AsyncEngine, view: str, own_redis: RedisServer
) -> None:
    client = connect_redis(own_redis.url)
    try:
        stub = build_app(
            engine,
            view,
            cache=ReadCache(client, CacheConfig()),
            limiter=RateLimiter(client, RateLimitConfig(read_per_s=1, read_burst=100)),
        )
        auth = await new_org(engine)
        async with stub.client() as http:
            up = await http.get("/v1/summary", headers=auth)
            assert (up.headers["x-cache"], up.headers["ratelimit-remaining"]) == ("miss", "99")
            own_redis.stop()
            with capture_logs() as logs:
                down = [await http.get("/v1/summary", headers=auth) for _ in range(10)]
    finally:
        await client.aclose()
    assert {r.status_code for r in down} == {200}
    assert {r.headers["x-cache"] for r in down} == {"bypass"}
    assert not any("ratelimit-limit" in r.headers for r in down)
    assert stub.computed == 11
    # One warning per feature, not one per request.
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert sorted(entry["impact"] for entry in warnings) == [
        "rate limits are not enforced (fail open)",
        "reads are served uncached",
    ]


async def test_dead_redis_with_fail_closed_refuses_limited_requests(
    engine: AsyncEngine, view: str, own_redis: RedisServer
) -> None:
    own_redis.stop()
    client = connect_redis(own_redis.url)
    try:
        config = RateLimitConfig(fail_open=False, breaker_cooldown_s=2)
        stub = build_app(engine, view, limiter=RateLimiter(client, config))
        auth = await new_org(engine)
        async with stub.client() as http:
            responses = [await http.get("/v1/summary", headers=auth) for _ in range(5)]
            internal = await http.get("/internal/ping", headers=auth)
    finally:
        await client.aclose()
    assert {r.status_code for r in responses} == {503}
    assert responses[0].headers["content-type"] == "application/problem+json"
    assert responses[0].json()["type"] == "https://reporunner.dev/problems/rate-limiter-unavailable"
    assert responses[0].headers["retry-after"] == "2"
    assert internal.status_code == 200


async def test_hung_redis_costs_one_timeout_then_nothing_until_it_returns(
    engine: AsyncEngine, view: str, own_redis: RedisServer
) -> None:
    client = connect_redis(own_redis.url)  # 50 ms timeouts
    try:
        cache = ReadCache(client, CacheConfig(breaker_cooldown_s=0.3))
        limiter = RateLimiter(client, RateLimitConfig(breaker_cooldown_s=0.3))
        stub = build_app(engine, view, cache=cache, limiter=limiter)
        auth = await new_org(engine)
        async with stub.client() as http:
            assert (await http.get("/v1/summary", headers=auth)).headers["x-cache"] == "miss"
            own_redis.pause()
            timings = []
            for _ in range(8):
                started = time.perf_counter()
                response = await http.get("/v1/summary", headers=auth)
                timings.append(time.perf_counter() - started)
                assert (response.status_code, response.headers["x-cache"]) == (200, "bypass")
            # Until the breakers open (3 failures in a row) a request waits out
            # the 50 ms timeouts; then Redis is not asked at all.
            assert cache.breaker.is_open and limiter.breaker.is_open
            assert max(timings[:3]) < 0.5, timings
            assert max(timings[3:]) < 0.05, timings  # less than one timeout
            own_redis.resume()
            await asyncio.sleep(0.35)  # the cooldown: the next request probes Redis
            back = await http.get("/v1/summary", headers=auth)
            assert back.headers["x-cache"] in ("hit", "miss")
            assert "ratelimit-limit" in back.headers
            assert not cache.breaker.is_open and not limiter.breaker.is_open
    finally:
        await client.aclose()
