"""An embedded PostgreSQL (the ``pgserver`` wheel) for laptops and tests.

Several processes may share one data directory: pgserver reference-counts
them and stops the server when the last one exits.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import structlog

from infrastructure.database import PgTarget

log = structlog.get_logger(__name__)

_servers: dict[Path, object] = {}


class EmbeddedPostgresMissing(RuntimeError):
    """No ``DATABASE_URL``, and this installation has no embedded PostgreSQL (the image's)."""


def start_embedded_postgres(data_dir: Path, *, delete_at_exit: bool = False) -> PgTarget:
    """Start (or join) the embedded server whose data lives in ``data_dir/pgdata``.

    The server stops when the last process using it exits; with
    ``delete_at_exit`` (throwaway servers, e.g. for tests) its data goes too.
    """
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset and falls back to /tmp: fine.
        warnings.simplefilter("ignore")
        try:
            import pgserver  # imported lazily: it touches the file system on import
        except ImportError:
            raise EmbeddedPostgresMissing(
                "DATABASE_URL is not set and this installation has no embedded PostgreSQL "
                "(the pgserver package): set DATABASE_URL"
            ) from None

    pgdata = (data_dir / "pgdata").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _servers.get(pgdata)
    if server is None:
        server = pgserver.get_server(pgdata, cleanup_mode="delete" if delete_at_exit else "stop")
        _servers[pgdata] = server
    info = server.get_postmaster_info()  # type: ignore[attr-defined]
    target = PgTarget(
        host=str(info.socket_dir),
        port=int(info.port),
        user="postgres",
        password="",
        dbname="postgres",
    )
    log.info("embedded postgres ready", pgdata=str(pgdata), socket_dir=target.host)
    return target
