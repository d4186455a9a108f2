"""``serve`` waits at start for a PostgreSQL that is not there yet (``wait_for_database``).

Found by the chaos test: a relay restarted while the primary restarted
exited at once ("cannot connect"), and stayed down. The server here comes
up late: a TCP proxy of our own (``tests/pg_proxy.py``) in front of the
machine's PostgreSQL starts listening only after a while.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import psycopg
import pytest

from infrastructure.database import PgTarget, wait_for_database
from tests.helpers import free_port
from tests.pg_proxy import PgProxy


@contextmanager
def late_server(target: PgTarget, port: int, after_s: float) -> Iterator[None]:
    """``target``'s PostgreSQL on ``port``, from ``after_s`` seconds on."""
    proxies: list[PgProxy] = []
    timer = threading.Timer(after_s, lambda: proxies.append(PgProxy(target, port)))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        for proxy in proxies:
            proxy.close()


def test_a_server_that_comes_up_late_is_waited_for(db_target: PgTarget) -> None:
    port = free_port()
    waits: list[str] = []
    with late_server(db_target, port, after_s=1.0):
        started = time.monotonic()
        wait_for_database(
            replace(db_target, port=port), 30, on_wait=lambda error, _: waits.append(error)
        )
        assert time.monotonic() - started >= 0.9
    assert waits and all("refused" in error for error in waits)


def test_a_server_that_never_comes_is_given_up_after_the_wait() -> None:
    target = PgTarget.parse(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="refused"):
        wait_for_database(target, 1.0)
    assert 0.5 <= time.monotonic() - started < 10


def test_a_failure_that_waiting_cannot_mend_is_raised_at_once(db_target: PgTarget) -> None:
    waits: list[str] = []
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        wait_for_database(
            db_target.with_dbname("no_such_database"), 30, on_wait=lambda e, _: waits.append(e)
        )
    assert waits == []
