"""``serve`` waits at start for a PostgreSQL that is not there yet (``wait_for_database``).

Found by the chaos test: a relay restarted while the primary restarted
exited at once ("cannot connect"), and stayed down. The server here comes
up late through a TCP relay of our own in front of the machine's PostgreSQL.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import psycopg
import pytest

from infrastructure.database import PgTarget, wait_for_database


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        sink.close()


@contextmanager
def late_server(target: PgTarget, port: int, after_s: float) -> Iterator[None]:
    """``target``'s PostgreSQL on ``port``, from ``after_s`` seconds on."""
    stop = threading.Event()

    def serve() -> None:
        time.sleep(after_s)
        with socket.create_server(("127.0.0.1", port)) as listener:
            listener.settimeout(0.1)
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection((target.host, target.port))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_a_server_that_comes_up_late_is_waited_for(db_target: PgTarget) -> None:
    port = _free_port()
    waits: list[str] = []
    with late_server(db_target, port, after_s=1.0):
        started = time.monotonic()
        wait_for_database(
            replace(db_target, port=port), 30, on_wait=lambda error, _: waits.append(error)
        )
        assert time.monotonic() - started >= 0.9
    assert waits and all("refused" in error for error in waits)


def test_a_server_that_never_comes_is_given_up_after_the_wait() -> None:
    target = PgTarget.parse(f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres")
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
