"""Per-organisation rate limits: a token bucket in Redis, one per organisation and API.

Each request of an organisation takes a token from its bucket for the API it
calls (``write``: commands; ``read``: queries), which refills at ``per_s``
tokens a second up to ``burst``. The refill and the take are one Lua script,
so concurrent requests (from any number of processes) never take the same
token twice; it reads Redis's clock, so clock skew between processes cannot
mint tokens.

The limit applies where the organisation becomes known: ``authorize`` calls
``enforce_rate_limit`` right after authenticating. Every limited response
carries ``RateLimit-Limit``/``-Remaining``/``-Reset`` (IETF draft
httpapi-ratelimit-headers); a refused one is a 429 with ``Retry-After``.

When Redis is down the policy decides: fail open (no limits, the default) or
fail closed (503), logged as a rate-limited warning.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Literal, cast

from redis.asyncio import Redis
from redis.exceptions import NoScriptError
from starlette.requests import Request

from infrastructure.auth import Permission, Principal
from infrastructure.cache import REDIS_ERRORS, RedisBreaker
from infrastructure.metrics import RATE_LIMITED
from infrastructure.problems import Problem, problem_type

Api = Literal["read", "write"]

# Refill by the time elapsed since the last take (on Redis's clock), then take one token.
# KEYS[1]: the bucket. ARGV: tokens per second, burst.
# Returns {allowed 0|1, whole tokens left, ms until a token is available, ms until full}.
TOKEN_BUCKET_LUA = """
local per_s = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at_ms')
local tokens = tonumber(bucket[1]) or burst
local at_ms = tonumber(bucket[2]) or now_ms
tokens = math.min(burst, tokens + math.max(0, now_ms - at_ms) * per_s / 1000)
local allowed = 0
if tokens >= 1 then
    tokens = tokens - 1
    allowed = 1
end
local ms_until_full = math.ceil((burst - tokens) * 1000 / per_s)
local ms_until_token = 0
if tokens < 1 then
    ms_until_token = math.ceil((1 - tokens) * 1000 / per_s)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at_ms', now_ms)
-- Once full again the bucket is the same as no bucket: let Redis forget it.
redis.call('PEXPIRE', KEYS[1], ms_until_full + 1000)
return {allowed, math.floor(tokens), ms_until_token, ms_until_full}
"""
TOKEN_BUCKET_SHA = hashlib.sha1(TOKEN_BUCKET_LUA.encode()).hexdigest()

# Where enforce_rate_limit leaves the request's decision for the response's headers.
STATE_KEY = "rate_limit"

READ_PERMISSIONS = frozenset({Permission.READ_WORKFLOWS, Permission.READ_AUDIT})


def api_of(permission: Permission) -> Api:
    """Which API's bucket a request pays from: reads (the aggregate POST included)
    need a read permission, commands a write or execute one."""
    return "read" if permission in READ_PERMISSIONS else "write"


@dataclass(frozen=True)
class RateLimitConfig:
    """Tokens per second and burst per API; 0 in either disables that API's limit."""

    write_per_s: float = 50.0
    write_burst: int = 100
    read_per_s: float = 200.0
    read_burst: int = 400
    fail_open: bool = True
    key_prefix: str = "reporunner:"
    breaker_cooldown_s: float = 5.0

    def bucket(self, api: Api) -> tuple[float, int] | None:
        """(per_s, burst) of ``api``, or None when it is unlimited."""
        per_s, burst = (
            (self.read_per_s, self.read_burst)
            if api == "read"
            else (self.write_per_s, self.write_burst)
        )
        return (per_s, burst) if per_s > 0 and burst > 0 else None


@dataclass(frozen=True)
class RateLimitDecision:
    allowed: bool
    limit: int  # the burst: the most requests a full bucket allows at once
    remaining: int
    reset_s: int  # until the bucket is full again
    retry_after_s: int  # until the next token; >= 1 when not allowed

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


class RateLimiterUnavailable(Exception):
    """Redis did not answer (or the breaker skips it): the bucket is unknown."""


class RateLimiter:
    def __init__(self, redis: Redis, config: RateLimitConfig) -> None:
        self.redis = redis
        self.config = config
        impact = (
            "rate limits are not enforced (fail open)"
            if config.fail_open
            else "limited requests are refused with 503 (fail closed)"
        )
        self.breaker = RedisBreaker(impact, config.breaker_cooldown_s)

    def key(self, api: Api, org_id: str) -> str:
        return f"{self.config.key_prefix}ratelimit:{api}:{org_id}"

    async def take(
        self, api: Api, org_id: str, bucket: tuple[float, int] | None = None
    ) -> RateLimitDecision | None:
        """Take a token from the organisation's bucket; None when ``api`` is unlimited.

        ``bucket``: the organisation's own (per_s, burst), overriding the config's.
        Raises ``RateLimiterUnavailable`` when Redis does not answer.
        """
        bucket = bucket or self.config.bucket(api)
        if bucket is None:
            return None
        per_s, burst = bucket
        if not self.breaker.allow():
            raise RateLimiterUnavailable()
        try:
            allowed, remaining, ms_until_token, ms_until_full = await self._run_script(
                self.key(api, org_id), per_s, burst
            )
        except REDIS_ERRORS as exc:
            self.breaker.failed(exc)
            raise RateLimiterUnavailable() from exc
        self.breaker.succeeded()
        return RateLimitDecision(
            allowed=bool(allowed),
            limit=burst,
            remaining=int(remaining),
            reset_s=math.ceil(ms_until_full / 1000),
            retry_after_s=max(1, math.ceil(ms_until_token / 1000)),
        )

    async def _run_script(self, key: str, per_s: float, burst: int) -> list[int]:
        try:
            result = await self.redis.evalsha(TOKEN_BUCKET_SHA, 1, key, per_s, burst)
        except NoScriptError:
            # A restarted or flushed Redis forgot the script; EVAL runs and caches it again.
            result = await self.redis.eval(TOKEN_BUCKET_LUA, 1, key, per_s, burst)
        return cast(list[int], result)


async def enforce_rate_limit(
    request: Request, principal: Principal, permission: Permission
) -> None:
    """Take a token for this request from its organisation's bucket, else 429.

    Call once the principal is known (``authorize`` does). Only ``/v1`` routes
    are limited; with no ``app.state.rate_limiter`` nothing is.
    """
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    state = request.scope.setdefault("state", {})
    # One token per request, however often a route authorises.
    if limiter is None or STATE_KEY in state or not request.scope["path"].startswith("/v1/"):
        return
    api = api_of(permission)
    bucket, whose = org_bucket(state.get("org_policy"), api, limiter.config)
    try:
        decision = await limiter.take(api, principal.org_id, bucket)
    except RateLimiterUnavailable:
        if limiter.config.fail_open:
            return
        raise Problem(
            503,
            "rate limits cannot be checked right now; retry shortly",
            type_=problem_type("rate-limiter-unavailable"),
            headers={"Retry-After": str(max(1, math.ceil(limiter.config.breaker_cooldown_s)))},
        ) from None
    if decision is None:
        return
    state[STATE_KEY] = decision
    if not decision.allowed:
        RATE_LIMITED.labels(api).inc()
        per_s, burst = bucket or (0, 0)
        raise Problem(
            429,
            f"organisation '{principal.org_id}' is over its {api} rate limit "
            f"({whose}: {per_s:g} requests/s, bursts of {burst}); "
            f"retry in {decision.retry_after_s} s",
            type_=problem_type("rate-limited"),
            headers=decision.headers(),
        )


def org_bucket(
    policy: object, api: Api, config: RateLimitConfig
) -> tuple[tuple[float, int] | None, str]:
    """The bucket an organisation pays from, and whose limit it is: its own limits
    (``<api>_per_s``, ``<api>_burst``) override the global settings one by one."""
    default_per_s, default_burst = (
        (config.read_per_s, config.read_burst)
        if api == "read"
        else (config.write_per_s, config.write_burst)
    )
    limits = getattr(policy, "limits", None) or {}
    per_s = limits.get(f"{api}_per_s", default_per_s)
    burst = limits.get(f"{api}_burst", default_burst)
    whose = (
        "the organisation's own limit"
        if f"{api}_per_s" in limits or f"{api}_burst" in limits
        else "the global limit"
    )
    return ((float(per_s), int(burst)) if per_s > 0 and burst > 0 else None), whose


def decision_headers(state: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The RateLimit-* headers of the request's decision, for an allowed response
    (refusals carry them already); none when no limit was applied.

    Added by ``RequestContextMiddleware`` to the response it already wraps
    (a middleware of its own cost a layer and a send wrapper per request).
    """
    decision = state.get(STATE_KEY)
    if not isinstance(decision, RateLimitDecision) or not decision.allowed:
        return []
    return [(k.lower().encode(), v.encode()) for k, v in decision.headers().items()]
