"""Redis in front of the APIs: a fail-fast client, a circuit breaker, the read cache.

Redis only ever speeds reads up (and keeps rate limits, infrastructure.ratelimit);
it is never needed to answer. A Redis that is down or slow costs a few short
timeouts, then the circuit breaker skips it for a while, and answers are
computed as if there were no cache.

A cached answer is keyed by organisation, the projection position it was
computed at, and a hash of the query. Endpoints read the views' position
*before* computing (after waiting for ``X-Min-Position``, as every read
does), so an entry for the current position is exactly as fresh as a new
answer would be; once the position moves, readers look up a new key and the
old entries simply expire (``ttl_s``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson
import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from infrastructure.problems import Problem, problem_type

log = structlog.get_logger("reporunner.redis")

# What a Redis that is down, slow or confused raises.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


def connect_redis(
    url: str, timeout_s: float = 0.05, connect_timeout_s: float = 0.25, max_connections: int = 50
) -> Redis:
    """A client that gives up fast: short timeouts and no retries.

    redis-py retries failed commands by default (with backoff); in front of a
    request that would turn a dead Redis into seconds of latency. Connecting
    gets longer than a command: a burst of requests opens many connections
    at once on a busy event loop, and a stopped Redis refuses at once anyway.
    The pool blocks (up to ``timeout_s``) when all its connections are busy:
    the default pool raises at once, which a burst would mistake for an outage.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis.from_pool(pool)


class RedisBreaker:
    """Skips Redis for ``cooldown_s`` after ``threshold`` failures in a row.

    Then one caller probes it (the others keep skipping) until a success
    closes the breaker again. The warning is logged at most once per
    ``warn_every_s``, with the number of failures since the last one.
    """

    def __init__(
        self, impact: str, cooldown_s: float = 5.0, threshold: int = 3, warn_every_s: float = 60.0
    ) -> None:
        self.impact = impact  # what callers see while Redis is skipped, for the warning
        self.cooldown_s = cooldown_s
        self.threshold = threshold
        self.warn_every_s = warn_every_s
        self._failures_in_a_row = 0
        self._open_until = 0.0  # time.monotonic(); Redis is skipped before it
        self._failures_unreported = 0
        self._next_warning_at = 0.0

    @property
    def is_open(self) -> bool:
        return self._failures_in_a_row >= self.threshold

    def allow(self) -> bool:
        """Whether to try Redis now."""
        if not self.is_open:
            return True
        now = time.monotonic()
        if now < self._open_until:
            return False
        # Half-open: this caller probes, everyone else skips until it reports back.
        self._open_until = now + self.cooldown_s
        return True

    def succeeded(self) -> None:
        if self.is_open:
            log.info("redis answers again", impact_ended=self.impact)
        self._failures_in_a_row = 0

    def failed(self, error: BaseException) -> None:
        now = time.monotonic()
        self._failures_in_a_row += 1
        if self.is_open:
            self._open_until = now + self.cooldown_s
        self._failures_unreported += 1
        if now >= self._next_warning_at:
            log.warning(
                "redis unavailable",
                impact=self.impact,
                error=f"{type(error).__name__}: {error}",
                failures=self._failures_unreported,
                skipped_for_s=self.cooldown_s if self.is_open else 0,
            )
            self._failures_unreported = 0
            self._next_warning_at = now + self.warn_every_s


def _key_bytes(key_parts: Any) -> bytes:
    """The parts of a cache key as bytes, whatever they hold.

    Not orjson: it refuses integers past 64 bits and lone surrogates, which a
    request body may well carry (the query then answers 400; building its key
    must not fail first). The standard encoder prints any integer and escapes
    every non-ASCII character, and keeps the order of object keys:
    ``{"$sort": {"a": 1, "b": -1}}`` and ``{"$sort": {"b": -1, "a": 1}}`` are
    different queries. Other values (our own: the datetimes of a period) are
    keyed by ``str``; each endpoint's parts have a fixed shape, so that cannot
    make two different queries one key.
    """
    return json.dumps(key_parts, separators=(",", ":"), default=str).encode("ascii")


@dataclass(frozen=True)
class CacheConfig:
    ttl_s: float = 60.0
    # Bigger answers are not stored: one huge aggregate should not evict everyone else's.
    max_entry_bytes: int = 1024 * 1024
    key_prefix: str = "reporunner:"
    breaker_cooldown_s: float = 5.0


CacheOutcome = Literal["hit", "miss", "bypass"]


@dataclass(frozen=True)
class CachedBody:
    body: bytes
    outcome: CacheOutcome  # bypass: Redis was not asked (breaker open) or failed


class ReadCache:
    """Answers (bytes) in Redis, per organisation, query and projection position."""

    def __init__(self, redis: Redis, config: CacheConfig) -> None:
        self.redis = redis
        self.config = config
        self.breaker = RedisBreaker("reads are served uncached", config.breaker_cooldown_s)

    def key(self, org_id: str, key_parts: Any, position: int) -> str | None:
        """The entry's key; None when the parts cannot be encoded (then nothing is cached)."""
        try:
            encoded = _key_bytes(key_parts)
        except (TypeError, ValueError):  # e.g. an integer of more digits than Python prints
            return None
        digest = hashlib.sha256(encoded).hexdigest()[:32]
        return f"{self.config.key_prefix}cache:{org_id}:{position}:{digest}"

    async def get_or_compute(
        self,
        org_id: str,
        key_parts: Any,
        position: int,
        compute: Callable[[], Awaitable[bytes]],
    ) -> CachedBody:
        """The cached answer for (org, query, position), else ``compute()``'s, stored.

        ``position`` must have been read before ``compute`` runs, so the answer
        holds at least everything up to it. Errors of ``compute`` propagate and
        are never cached.
        """
        key = self.key(org_id, key_parts, position)
        if key is None or not self.breaker.allow():
            return CachedBody(await compute(), "bypass")
        try:
            cached = await self.redis.get(key)
        except REDIS_ERRORS as exc:
            self.breaker.failed(exc)
            return CachedBody(await compute(), "bypass")
        self.breaker.succeeded()
        if cached is not None:
            return CachedBody(cast(bytes, cached), "hit")  # decode_responses is off: bytes
        body = await compute()
        if len(body) <= self.config.max_entry_bytes:
            try:
                await self.redis.set(key, body, px=max(1, round(self.config.ttl_s * 1000)))
            except REDIS_ERRORS as exc:
                self.breaker.failed(exc)
        return CachedBody(body, "miss")


def canonical_query_params(request: Request) -> list[tuple[str, str]]:
    """The query parameters, sorted; ``min_position`` is left out, as it does
    not change the answer (the position is part of the key anyway)."""
    return sorted(
        (name, value)
        for name, value in request.query_params.multi_items()
        if name != "min_position"
    )


async def cached_json(
    request: Request,
    org_id: str,
    position: int,
    compute: Callable[[], Awaitable[Any]],
    *key_parts: Any,
    max_bytes: int | None = None,
) -> Response:
    """``compute()``'s JSON answer, from the read cache when it has it.

    The key covers the method, path and query parameters; ``key_parts`` add
    whatever else the answer depends on (the body, the resolved period...).
    Answers ``X-Projection-Position`` and ``X-Cache: hit|miss|bypass``. With
    no ``app.state.read_cache`` (no Redis configured) every read bypasses.
    An answer longer than ``max_bytes`` is a 400 (and never cached).
    """

    async def body() -> bytes:
        encoded = orjson.dumps(await compute())
        if max_bytes is not None and len(encoded) > max_bytes:
            raise Problem(
                400,
                f"the answer would be {len(encoded)} bytes, more than {max_bytes} "
                "(REPORUNNER_QUERY_MAX_RESULT_BYTES): ask for less ($project, $limit, $match)",
                type_=problem_type("result-too-large"),
            )
        return encoded

    cache: ReadCache | None = getattr(request.app.state, "read_cache", None)
    if cache is None:
        result = CachedBody(await body(), "bypass")
    else:
        parts = [request.method, request.url.path, canonical_query_params(request), *key_parts]
        result = await cache.get_or_compute(org_id, parts, position, body)
    return Response(
        result.body,
        media_type="application/json",
        headers={"X-Projection-Position": str(position), "X-Cache": result.outcome},
    )
