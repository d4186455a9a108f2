"""Where PostgreSQL is, and the connections we open to it.

One ``PgTarget`` describes the server; every client (eventsourcing's psycopg
pool, SQLAlchemy on asyncpg, Alembic) is configured from it, so they always
agree on which database they talk to.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from infrastructure.json_codec import jsonb_loads


@dataclass(frozen=True)
class PgTarget:
    host: str  # a host name, an IP, or a Unix socket directory
    port: int
    user: str
    password: str
    dbname: str

    @classmethod
    def from_url(cls, url: str) -> PgTarget:
        parsed = make_url(url)
        host = parsed.host or str(parsed.query.get("host") or "") or "127.0.0.1"
        return cls(
            host=host,
            port=int(parsed.port or parsed.query.get("port") or 5432),  # type: ignore[arg-type]
            user=parsed.username or "postgres",
            password=parsed.password or "",
            dbname=parsed.database or "postgres",
        )

    def with_dbname(self, dbname: str) -> PgTarget:
        return replace(self, dbname=dbname)

    def sqlalchemy_url(self, driver: str) -> URL:
        """A SQLAlchemy URL; socket directories travel as the ``host`` query arg."""
        if self.host.startswith("/"):
            return URL.create(
                f"postgresql+{driver}",
                username=self.user,
                password=self.password or None,
                database=self.dbname,
                query={"host": self.host, "port": str(self.port)},
            )
        return URL.create(
            f"postgresql+{driver}",
            username=self.user,
            password=self.password or None,
            host=self.host,
            port=self.port,
            database=self.dbname,
        )

    def conninfo(self) -> str:
        """A libpq connection string for psycopg."""
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "dbname": self.dbname,
            "password": self.password,
        }
        return " ".join(f"{k}='{_escape(v)}'" for k, v in parts.items())

    def display(self) -> str:
        """Where we connect, without the password, for logs."""
        user = quote(self.user)
        if self.host.startswith("/"):
            return f"postgresql://{user}@/{self.dbname}?host={self.host}&port={self.port}"
        return f"postgresql://{user}@{self.host}:{self.port}/{self.dbname}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def create_engine(
    target: PgTarget, *, pool_size: int = 10, statement_timeout_ms: int | None = None
) -> AsyncEngine:
    """The async engine (asyncpg) for queries outside the event store.

    ``statement_timeout_ms`` bounds every statement on its connections
    (PostgreSQL cancels it past that, SQLSTATE 57014): the read API's queries
    are all meant to be short, so none may run on after its answer is due.
    """
    # Queries here are short and latency-bound: JIT compilation (kicked off
    # by the planner's row estimates for JSONB expansions) can cost more than
    # the query itself.
    server_settings = {"jit": "off"}
    if statement_timeout_ms is not None:
        server_settings["statement_timeout"] = str(statement_timeout_ms)
    return create_async_engine(
        target.sqlalchemy_url("asyncpg"),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        pool_recycle=3600,
        connect_args={"server_settings": server_settings},
        # Not json.loads: jsonb prints 1e20 as an integer numeral, which must
        # read back as a number the answers' encoder (orjson) can write.
        json_deserializer=jsonb_loads,
    )
