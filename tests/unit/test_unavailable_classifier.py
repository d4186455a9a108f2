"""What counts as "the database is unavailable" (503) and what stays a bug (500)."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy.exc

from infrastructure.database import is_database_unavailable, starting_or_refused


def _wrapped(orig: BaseException) -> sqlalchemy.exc.DBAPIError:
    """As SQLAlchemy raises it: the driver's error as ``.orig`` and ``__cause__``."""
    try:
        raise sqlalchemy.exc.DBAPIError("SELECT 1", None, orig) from orig  # type: ignore[arg-type]
    except sqlalchemy.exc.DBAPIError as exc:
        return exc


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize("sqlstate", ["57P01", "57P02", "57P03", "53300", "08006", "08001"])
def test_server_going_away_is_unavailable_however_wrapped(sqlstate: str) -> None:
    assert is_database_unavailable(_wrapped(_PgError(sqlstate)))


def test_a_refused_connection_deep_in_a_chain_is_unavailable() -> None:
    try:
        try:
            raise ConnectionRefusedError("refused")
        except OSError as exc:
            raise RuntimeError("while connecting") from exc
    except RuntimeError as exc:
        assert is_database_unavailable(exc)


def test_a_bad_statement_and_a_bug_while_handling_an_outage_are_not() -> None:
    assert not is_database_unavailable(_wrapped(_PgError("42601")))  # syntax error
    assert not is_database_unavailable(ValueError("bug"))
    try:
        try:
            raise psycopg.OperationalError("server closed the connection")
        except psycopg.OperationalError:
            raise KeyError("a bug in the handler")  # noqa: B904 (context, not cause)
    except KeyError as exc:
        assert not is_database_unavailable(exc)


def test_what_a_start_waits_for_is_a_server_refusing_or_coming_and_going_however_wrapped() -> None:
    going = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        "FATAL:  the database system is shutting down"
    )
    refused = psycopg.OperationalError("connection failed: Connection refused")
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, going)
    assert starting_or_refused(going) and starting_or_refused(refused)
    assert starting_or_refused(wrapped)
    password = psycopg.OperationalError("FATAL:  password authentication failed for user 'x'")
    assert not starting_or_refused(password)
    assert not starting_or_refused(RuntimeError("the database system is shutting down"))
