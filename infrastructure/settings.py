"""Process settings, read once from the environment.

Every setting is an environment variable with the ``REPORUNNER_`` prefix, plus
the conventional ``DATABASE_URL`` and ``REDIS_URL``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from infrastructure.database import PgTarget

# What ``serve`` can run in one process (``--only`` picks one).
ROLES = ("write-api", "read-api", "projections", "worker", "relay", "scheduler")


@dataclass(frozen=True)
class PoolSizes:
    """The PostgreSQL connections one process opens (README: "Connections").

    ``events``: eventsourcing's psycopg pool (commands, aggregate loads, the
    execution queue), which keeps ``events`` connections open from its first
    use and opens up to ``events_overflow`` more under load. ``queries``:
    SQLAlchemy's asyncpg pool (read API queries, API-key lookups, readiness,
    gauges), which keeps up to ``queries`` idle and ``queries_overflow`` more
    under load. ``dedicated``: connections outside both pools, each follower
    of the log holding its lock, work and LISTEN connections (3; 1 standing by),
    a worker's LISTEN connection, the scheduler's lock and work connections.
    """

    events: int
    events_overflow: int
    queries: int
    queries_overflow: int
    dedicated: int

    def most(self) -> int:
        """The most connections the process may hold at once."""
        return (
            self.events
            + self.events_overflow
            + self.queries
            + self.queries_overflow
            + self.dedicated
        )

    def __add__(self, other: PoolSizes) -> PoolSizes:
        return PoolSizes(
            self.events + other.events,
            self.events_overflow + other.events_overflow,
            self.queries + other.queries,
            self.queries_overflow + other.queries_overflow,
            self.dedicated + other.dedicated,
        )


# Each role's share; a process running several roles adds theirs up. The write
# API's commands run on REPORUNNER_COMMAND_THREADS (8) threads, so its event
# pool tops out at 8; the read API's queries run on the event loop.
ROLE_POOLS: dict[str, PoolSizes] = {
    "write-api": PoolSizes(4, 4, 2, 2, 0),
    "read-api": PoolSizes(1, 1, 4, 4, 0),
    # 5 followers (2 projectors, runs recorder, auto-retrier, audit chain) x 3.
    "projections": PoolSizes(1, 1, 1, 1, 15),
    "worker": PoolSizes(2, 2, 1, 1, 1),
    "relay": PoolSizes(1, 0, 1, 1, 3),
    "scheduler": PoolSizes(1, 1, 1, 1, 2),
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REPORUNNER_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "REPORUNNER_DATABASE_URL"),
        description="PostgreSQL URL; unset means an embedded PostgreSQL under data_dir.",
    )
    read_database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL of a streaming replica of DATABASE_URL's server: the "
        "read API queries its views there. Unset: the primary.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "REPORUNNER_REDIS_URL"),
        description="Redis URL; unset disables the Redis-backed features.",
    )
    data_dir: Path = Field(default=Path(".reporunner"), description="Embedded PostgreSQL data.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    auth_cache_seconds: float = Field(default=2.0, ge=0, le=300)
    command_threads: int = Field(default=8, ge=1, le=256)
    min_position_wait_s: float = Field(default=5.0, ge=0, le=60)
    startup_wait_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="How long serve waits at start for a PostgreSQL that refuses or is starting.",
    )
    projection_batch_size: int = Field(default=1000, ge=1, le=100_000)
    projection_poll_s: float = Field(default=1.0, gt=0, le=60)
    roles: str = Field(
        default="write-api,read-api,projections,worker,relay,scheduler",
        description="Comma-separated roles this process runs (serve --only sets one).",
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    master_key: SecretStr | None = Field(
        default=None,
        description="The master key wrapping every data key: 32 random bytes as 64 hex digits "
        "or base64 (`reporunner keys generate`). Unset: REPORUNNER_MASTER_KEY_FILE, else on "
        "the embedded database a key generated into data_dir (README: Keys).",
    )
    seal_payloads: bool = Field(
        default=True,
        description="Seal execution inputs, outputs and errors in the log under day and "
        "data-subject keys (README: Personal data). false: new payloads are recorded in clear "
        "(filters and pipelines over them work; erasure and retention cannot remove them).",
    )
    master_key_file: Path | None = Field(
        default=None, description="A file holding the master key (for secret mounts)."
    )
    console_write_api_url: str = Field(
        default="",
        description="Base URL of the write API for the console at /ui, when another process "
        "serves it (e.g. https://write.example.com); empty: the console's own origin.",
    )
    db_pool_size: int | None = Field(
        default=None,
        ge=1,
        le=200,
        description="Connections kept in each of this process's two pools; unset: the sum "
        "of its roles' shares (README: Connections).",
    )
    db_max_overflow: int | None = Field(
        default=None,
        ge=0,
        le=200,
        description="Extra connections each pool may open under load; unset: per role.",
    )
    db_pool_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How long a request waits for a pooled (or new) connection before it "
        "is answered 503.",
    )
    db_connections_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Warn at start when this process may hold more than this share of "
        "PostgreSQL's max_connections.",
    )
    db_lock_timeout_s: int = Field(default=5, ge=1, le=600)
    db_idle_in_transaction_timeout_s: int = Field(default=10, ge=1, le=3600)
    # Executions
    worker_concurrency: int = Field(default=4, ge=1, le=256)
    execution_lease_s: float = Field(default=30.0, ge=1, le=3600)
    execution_output_max_bytes: int = Field(default=64 * 1024, ge=256, le=16 * 1024 * 1024)
    execution_max_ms: int = Field(default=30_000, ge=1, le=3_600_000)
    wait_max_ms: int = Field(default=60_000, ge=0, le=3_600_000)
    http_allowed_hosts: str = Field(
        default="", description="Comma-separated host names http_request nodes may call."
    )
    http_max_response_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # Issue 11, items 4 and 5 (engine): what one execution may build in memory,
    # and sync runs' own thread pool with a per-organisation share of it.
    execution_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024 * 1024, le=4 * 1024 * 1024 * 1024
    )
    sync_run_threads: int = Field(default=16, ge=1, le=256)
    sync_runs_per_org: int = Field(default=4, ge=1, le=256)
    # Tenancy (issue 18): global limits an organisation's own override, and how
    # long a process trusts an organisation's standing and limits.
    max_workflows_per_org: int = Field(
        default=0, ge=0, description="Workflows an organisation may hold; 0: no limit."
    )
    executions_per_org_per_day: int = Field(
        default=0, ge=0, description="Runs an organisation may start per UTC day; 0: no limit."
    )
    org_policy_cache_s: float = Field(
        default=2.0,
        ge=0,
        le=300,
        description="How long a process trusts an organisation's standing and limits.",
    )
    # The scheduler (issue 12): one active process fires the schedule triggers.
    scheduler_tick_s: float = Field(
        default=0.5, gt=0, le=60, description="How often the scheduler looks for due instants."
    )
    scheduler_grace_s: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="How late an instant may fire and still count as on time (catch-up).",
    )
    scheduler_max_fires_per_tick: int = Field(default=100, ge=1, le=10_000)
    # Retention (issue 17): run by the scheduler role's leader (commands/retention.py).
    execution_retention_days: int = Field(
        default=0,
        ge=0,
        le=36_500,
        description="Days an execution's payload and document are kept (0: for ever); "
        "a workflow's settings.retention_days wins.",
    )
    retention_interval_s: float = Field(
        default=3600.0, ge=1, le=86_400, description="How often the scheduler runs retention."
    )
    retention_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="Executions expired (or keys destroyed) at once."
    )
    # Audit chain (tamper evidence over the log)
    audit_key: str | None = Field(
        default=None,
        description="Secret that signs the audit chain and exports (HMAC-SHA256); "
        "unset stores them unsigned.",
    )
    audit_checkpoint_every: int = Field(default=10_000, ge=1, le=10_000_000)
    # Event bus (Redis Streams; on when REDIS_URL is set)
    bus_prefix: str = Field(
        default="reporunner",
        min_length=1,
        description="Prefix of the bus' stream names: one per deployment sharing a Redis.",
    )
    bus_stream_maxlen: int = Field(default=1_000_000, ge=1_000, le=100_000_000)
    bus_relay_batch: int = Field(default=500, ge=1, le=10_000)
    # Redis in front of the APIs: the read cache and per-organisation rate limits
    # (tokens per second and burst; 0 turns a limit off). Both off without REDIS_URL.
    redis_timeout_ms: int = Field(default=50, ge=1, le=10_000)
    redis_connect_timeout_ms: int = Field(default=250, ge=1, le=10_000)
    redis_breaker_cooldown_s: float = Field(default=5.0, gt=0, le=600)
    redis_key_prefix: str = "reporunner:"
    cache_ttl_s: float = Field(default=60.0, ge=0, le=86_400, description="0 disables the cache.")
    cache_max_entry_bytes: int = Field(default=1024 * 1024, ge=0)
    rate_limit_write_per_s: float = Field(default=50.0, ge=0)
    rate_limit_write_burst: int = Field(default=100, ge=0)
    rate_limit_read_per_s: float = Field(default=200.0, ge=0)
    rate_limit_read_burst: int = Field(default=400, ge=0)
    rate_limit_fail_open: bool = Field(
        default=True, description="Without Redis: allow (true) or refuse with 503 (false)."
    )
    # Bounded reads (issue 11 item 3): every query of the read API's connections
    # ends within the timeout; a pipeline's $unwind stages and its answer are
    # capped; each process runs at most this many pipelines per organisation.
    query_timeout_ms: int = Field(default=5_000, ge=1, le=600_000)
    query_max_unwind_rows: int = Field(default=1_000_000, ge=1)
    query_max_results: int = Field(default=10_000, ge=1)
    query_max_result_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    pipelines_per_org: int = Field(default=4, ge=1, le=1_000)
    # The live event stream (GET /v1/stream, issue 16): each process tails the
    # log once and fans events out to its streams, each with a bounded queue.
    stream_heartbeat_s: float = Field(default=15.0, gt=0, le=300)
    stream_connections_per_org: int = Field(default=8, ge=1, le=10_000)
    stream_connections_max: int = Field(default=500, ge=1, le=100_000)
    stream_queue_events: int = Field(default=1000, ge=1, le=1_000_000)
    stream_poll_s: float = Field(default=1.0, gt=0, le=60)

    @field_validator("database_url", "read_database_url")
    @classmethod
    def _usable_database_url(cls, url: str | None) -> str | None:
        # Refused here, at start, like every other bad setting: a URL whose
        # parameters would be dropped or misread must never be connected to.
        if not url:
            return None  # set but empty, as in many compose files: unset
        PgTarget.parse(url)
        return url

    @field_validator("read_database_url")
    @classmethod
    def _replica_of_a_server(cls, url: str | None, info: ValidationInfo) -> str | None:
        # database_url is declared (so validated) first.
        if url and not info.data.get("database_url"):
            raise ValueError(
                "needs DATABASE_URL: a read replica copies a server you run, and the "
                "embedded PostgreSQL has none"
            )
        return url

    # Followers of the log (issue 11, item 2: one loop, dead letters). A batch
    # that fails is tried this many times, then the one event at fault as
    # often, before it becomes a dead letter and the follower goes on.
    follower_retry_attempts: int = Field(default=3, ge=1, le=100)
    dead_letters_fail_readyz: bool = Field(
        default=False,
        description="Unresolved dead letters make /readyz answer 503 (true) or 200 with "
        "status 'degraded' (false).",
    )

    # Operability (issue 13): readiness past a stalled projection, and /metrics
    # on a port of its own (roles without an API; `serve`/`worker --metrics-port`).
    ready_max_projection_lag_s: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="A projection behind the log that has not moved for this long makes "
        "/readyz fail (0: never).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Also serve /metrics, /healthz and /readyz on this port.",
    )

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, roles: str) -> str:
        named = [role.strip() for role in roles.split(",") if role.strip()]
        unknown = sorted(set(named) - set(ROLES))
        if unknown or not named:
            raise ValueError(f"unknown roles {unknown}; choose from {', '.join(ROLES)}")
        return roles

    def role_list(self) -> list[str]:
        return [role.strip() for role in self.roles.split(",") if role.strip()]

    def pool_sizes(self) -> PoolSizes:
        """This process's pools: its roles' shares added up, unless set explicitly."""
        total = PoolSizes(0, 0, 0, 0, 0)
        for role in self.role_list():
            total += ROLE_POOLS[role]
        events, queries = max(1, total.events), max(1, total.queries)
        events_overflow, queries_overflow = total.events_overflow, total.queries_overflow
        if self.db_pool_size is not None:
            events = queries = self.db_pool_size
        if self.db_max_overflow is not None:
            events_overflow = queries_overflow = self.db_max_overflow
        return PoolSizes(events, events_overflow, queries, queries_overflow, total.dedicated)

    def allowed_http_hosts(self) -> frozenset[str]:
        return frozenset(
            host.strip().lower() for host in self.http_allowed_hosts.split(",") if host.strip()
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
