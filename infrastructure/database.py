"""Where PostgreSQL is, and the connections we open to it.

One ``PgTarget`` describes the server and every libpq parameter the URL gave
(``sslmode``, ``sslrootcert``, ``application_name``, ``options``, ...); every
client (eventsourcing's psycopg pool, our psycopg followers, SQLAlchemy on
asyncpg, Alembic) is configured from it, so they always agree on which
database they talk to and how. A URL whose parameters a client could not honour
is refused up front rather than connected without them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from infrastructure.json_codec import jsonb_loads

# The schemes a user may paste: libpq's two, and SQLAlchemy's driver forms.
_SCHEMES = frozenset(
    {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2", "postgresql+asyncpg"}
)
_LOCATION = frozenset({"host", "port", "user", "password", "dbname"})
# libpq parameters asyncpg (the read API's driver) reads from its DSN too.
_ASYNCPG_DSN_PARAMS = frozenset(
    {
        "passfile",
        "service",
        "sslmode",
        "sslnegotiation",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslrootcert",
        "sslcrl",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
    }
)
# Startup parameters the server applies: asyncpg sends them as server_settings.
_SERVER_SETTINGS_PARAMS = frozenset({"application_name", "options"})
_SUPPORTED_PARAMS = (
    _ASYNCPG_DSN_PARAMS | _SERVER_SETTINGS_PARAMS | {"connect_timeout", "fallback_application_name"}
)
_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
}


class DatabaseUrlError(ValueError):
    """A database URL we cannot use as given; the message never holds the password."""


@dataclass(frozen=True)
class PgTarget:
    host: str  # a host name, an IP, or a Unix socket directory
    port: int
    user: str
    password: str
    dbname: str
    # The URL's other libpq parameters, sorted by name, passed on every connection.
    params: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def from_url(cls, url: str, *, variable: str = "DATABASE_URL") -> PgTarget:
        """Parse a PostgreSQL URL; ``DatabaseUrlError`` names ``variable`` if it is unusable."""
        try:
            return cls.parse(url)
        except DatabaseUrlError as exc:
            raise DatabaseUrlError(f"{variable}: {exc}") from None

    @classmethod
    def parse(cls, url: str) -> PgTarget:
        """Parse a PostgreSQL URL, or ``DatabaseUrlError`` saying what is wrong with it."""
        scheme, separator, rest = url.strip().partition("://")
        if not separator:
            raise DatabaseUrlError(
                "not a URL; expected postgresql://user:password@host:port/dbname?param=value"
            )
        if scheme.lower() not in _SCHEMES:
            raise DatabaseUrlError(
                f"scheme {scheme!r} is not PostgreSQL; use postgresql://"
                if scheme
                else "no scheme; use postgresql://"
            )
        libpq_url = f"postgresql://{rest}"
        try:
            parts = conninfo_to_dict(libpq_url)
        except psycopg.ProgrammingError as exc:
            # libpq quotes the URL it could not parse: never echo the password.
            reason = str(exc).replace(libpq_url, "<the URL>").strip()
            raise DatabaseUrlError(f"malformed URL: {reason}") from None
        values = {name: str(value) for name, value in parts.items()}
        host = values.pop("host", "") or "127.0.0.1"
        port_text = values.pop("port", "") or "5432"
        if "," in host or "," in port_text:
            raise DatabaseUrlError("several hosts are not supported; name one")
        if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
            raise DatabaseUrlError(f"port {port_text!r} is not a number from 1 to 65535")
        unsupported = sorted(set(values) - _LOCATION - _SUPPORTED_PARAMS)
        if unsupported:
            raise DatabaseUrlError(
                f"parameter {', '.join(unsupported)} is not supported (the read API's "
                f"driver, asyncpg, cannot honour it); supported: "
                f"{', '.join(sorted(_SUPPORTED_PARAMS))}"
            )
        for name, choices in _CHOICES.items():
            if name in values and values[name] not in choices:
                raise DatabaseUrlError(
                    f"{name}={values[name]!r} is not one of {', '.join(choices)}"
                )
        timeout = values.get("connect_timeout")
        if timeout is not None and not (timeout.isascii() and timeout.isdigit()):
            raise DatabaseUrlError(f"connect_timeout={timeout!r} is not a whole number of seconds")
        return cls(
            host=host,
            port=int(port_text),
            user=values.pop("user", "") or "postgres",
            password=values.pop("password", ""),
            dbname=values.pop("dbname", "") or "postgres",
            params=tuple(sorted(values.items())),
        )

    def with_dbname(self, dbname: str) -> PgTarget:
        return replace(self, dbname=dbname)

    def libpq_params(self) -> dict[str, str]:
        """The URL's libpq parameters beyond where the server is and who we are."""
        return dict(self.params)

    def sqlalchemy_url(self) -> URL:
        """A SQLAlchemy URL for psycopg (Alembic); the parameters travel in its query.

        Not for asyncpg, which takes libpq parameters differently: ``create_engine``.
        """
        query = self.libpq_params()
        if self.host.startswith("/"):
            # Socket directories travel as the ``host`` query arg.
            query |= {"host": self.host, "port": str(self.port)}
            return URL.create(
                "postgresql+psycopg",
                username=self.user,
                password=self.password or None,
                database=self.dbname,
                query=query,
            )
        return URL.create(
            "postgresql+psycopg",
            username=self.user,
            password=self.password or None,
            host=self.host,
            port=self.port,
            database=self.dbname,
            query=query,
        )

    def url(self) -> str:
        """The libpq URL of this target, password included (for child processes)."""
        return (
            self.sqlalchemy_url()
            .render_as_string(hide_password=False)
            .replace("postgresql+psycopg://", "postgresql://", 1)
        )

    def conninfo(self, **defaults: Any) -> str:
        """A libpq connection string for psycopg.

        ``defaults`` (e.g. ``connect_timeout``) apply unless the URL set the
        same parameter. A default ``application_name`` becomes libpq's
        ``fallback_application_name``: the URL's own name, if any, wins.
        """
        if "application_name" in defaults:
            defaults["fallback_application_name"] = defaults.pop("application_name")
        parts = {
            **{name: str(value) for name, value in defaults.items()},
            **self.libpq_params(),
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "dbname": self.dbname,
            "password": self.password,
        }
        return make_conninfo(**parts)

    def asyncpg_connect_args(self) -> dict[str, Any]:
        """``asyncpg.connect`` keyword arguments carrying every libpq parameter.

        asyncpg reads the SSL and session-target parameters from a DSN as libpq
        does (``sslmode`` included: ``require`` never falls back to plain
        text); ``application_name``/``options`` are startup parameters, which
        asyncpg sends as ``server_settings``; ``connect_timeout`` is its
        ``timeout``.
        """
        params = self.libpq_params()
        if self.host.startswith("/"):
            # A socket directory cannot sit in the netloc: asyncpg takes it as a query arg.
            netloc, query = "", {"host": self.host, "port": str(self.port)}
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
            netloc, query = f"{host}:{self.port}", {}
        query |= {name: value for name, value in params.items() if name in _ASYNCPG_DSN_PARAMS}
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        dsn = f"postgresql://{auth}@{netloc}/{quote(self.dbname, safe='')}"
        if query:
            dsn += "?" + urlencode(query)
        server_settings = {k: v for k, v in params.items() if k in _SERVER_SETTINGS_PARAMS}
        if "application_name" not in server_settings and "fallback_application_name" in params:
            server_settings["application_name"] = params["fallback_application_name"]
        args: dict[str, Any] = {"dsn": dsn, "server_settings": server_settings}
        if "connect_timeout" in params:
            # libpq: 0 means wait forever; asyncpg wants a number of seconds.
            timeout = int(params["connect_timeout"])
            args["timeout"] = timeout if timeout > 0 else None
        return args

    def display(self) -> str:
        """Where we connect, without the password, for logs."""
        user = quote(self.user)
        if self.host.startswith("/"):
            return f"postgresql://{user}@/{self.dbname}?host={self.host}&port={self.port}"
        return f"postgresql://{user}@{self.host}:{self.port}/{self.dbname}"


def create_engine(
    target: PgTarget,
    *,
    pool_size: int = 10,
    max_overflow: int | None = None,
    pool_timeout_s: float = 30.0,
    server_settings: Mapping[str, str] | None = None,
    statement_timeout_ms: int | None = None,
) -> AsyncEngine:
    """The async engine (asyncpg) for queries outside the event store.

    ``statement_timeout_ms`` bounds every statement on its connections
    (PostgreSQL cancels it past that, SQLSTATE 57014): the read API's queries
    are all meant to be short, so none may run on after its answer is due.
    """
    connect_args = target.asyncpg_connect_args()
    # Queries here are short and latency-bound: JIT compilation (kicked off
    # by the planner's row estimates for JSONB expansions) can cost more
    # than the query itself.
    connect_args["server_settings"] = {
        "jit": "off",
        **connect_args["server_settings"],
        **(server_settings or {}),
    }
    if statement_timeout_ms is not None:
        connect_args["server_settings"]["statement_timeout"] = str(statement_timeout_ms)
    return create_async_engine(
        # Everything travels in connect_args (the DSN): the URL only names the driver.
        "postgresql+asyncpg://",
        connect_args=connect_args,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_timeout=pool_timeout_s,
        pool_pre_ping=False,
        pool_recycle=3600,
        # Not json.loads: jsonb prints 1e20 as an integer numeral, which must
        # read back as a number the answers' encoder (orjson) can write.
        json_deserializer=jsonb_loads,
    )


@asynccontextmanager
async def single_statement(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for statements each whole in itself (a read, or one
    write that commits alone), in autocommit.

    Without a transaction there are no BEGIN and ROLLBACK (or COMMIT) round
    trips around the statement: two of a short query's three.
    """
    async with engine.connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


# SQLSTATE classes and codes that mean "the server, not the statement": class
# 08 (connection exceptions), 57P01-57P03 (admin/crash shutdown, cannot connect
# now: starting up or shutting down), 53300 (too many connections).
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08"})
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means PostgreSQL is unreachable or going away (a 503, not a bug).

    One answer for every client we use, however deeply it wraps the driver's
    error: SQLAlchemy's ``DBAPIError`` (``.orig``, ``connection_invalidated``)
    and its pool timeout, eventsourcing's ``OperationalError``/``InterfaceError``,
    psycopg and psycopg_pool, asyncpg (``connection is closed``, ``cannot switch
    to state 15`` after the server closed the socket mid-exchange), and the
    ``OSError`` of a refused or reset connection. The chain is walked through
    ``__cause__`` and ``.orig`` (not ``__context__``: a bug raised while handling
    a lost connection is still a bug).
    """
    return any(_unavailable_itself(error) for error in _error_chain(exc))


def _error_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending and len(seen) < 32:
        error = pending.pop()
        if error is None or any(error is known for known in seen):
            continue
        seen.append(error)
        orig = getattr(error, "orig", None)
        pending += [error.__cause__, orig if isinstance(orig, BaseException) else None]
    return seen


def _unavailable_itself(error: BaseException) -> bool:
    import asyncpg
    import psycopg_pool
    import sqlalchemy.exc
    from eventsourcing import persistence

    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and (
        sqlstate in _UNAVAILABLE_SQLSTATES or sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    ):
        return True
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(
        error,
        (
            sqlalchemy.exc.TimeoutError,  # QueuePool: no connection within pool_timeout
            sqlalchemy.exc.DisconnectionError,
            persistence.OperationalError,
            persistence.InterfaceError,
            psycopg.OperationalError,
            psycopg.InterfaceError,
            psycopg_pool.PoolTimeout,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            asyncpg.ConnectionDoesNotExistError,
            OSError,  # refused, reset, unreachable, timed out (TimeoutError is one)
        ),
    )


def starting_or_refused(exc: BaseException) -> bool:
    """PostgreSQL is not there yet (refused) or is starting or stopping: worth waiting for,
    however wrapped (SQLAlchemy's ``.orig``). A wrong password, a refused SSL, an unknown
    database are not."""
    for error in _error_chain(exc):
        if not isinstance(error, psycopg.OperationalError):
            continue
        text = str(error)
        if (
            error.sqlstate in _UNAVAILABLE_SQLSTATES
            or "Connection refused" in text
            or "the database system is" in text
        ):
            return True
    return False


def wait_for_database(
    target: PgTarget, wait_s: float, *, on_wait: Callable[[str, float], None] | None = None
) -> None:
    """Return once PostgreSQL accepts a connection, waiting at most ``wait_s`` seconds while
    it is refused or starting: a process started before its database (a deployment's start
    order, a restart of the primary) waits for it instead of exiting. Any other failure, or
    the wait's end, raises ``psycopg.OperationalError``."""
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        try:
            with psycopg.connect(target.conninfo(), connect_timeout=5):
                return
        except psycopg.OperationalError as exc:
            if not starting_or_refused(exc) or time.monotonic() + delay > deadline:
                raise
            if on_wait is not None:
                on_wait(str(exc).strip().splitlines()[0], delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
