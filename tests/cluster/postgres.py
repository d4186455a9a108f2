"""A throwaway PostgreSQL primary and streaming replica on one box, for cluster tests.

``PostgresCluster.start()`` runs ``initdb`` in a temporary directory, starts the
primary on a free port of 127.0.0.1 (trust auth, ``wal_level=replica``,
``fsync=off``: the data is thrown away), then clones it with
``pg_basebackup -R`` into a hot standby streaming from a replication slot, so
the primary keeps the WAL a stopped replica still needs.

Each server is a ``postgres`` process we start ourselves (not ``pg_ctl``), so
we hold its pid: ``stop``/``restart`` send PostgreSQL's own shutdown signals
(fast: SIGINT, immediate: SIGQUIT), ``kill`` sends SIGKILL to the postmaster
alone, as a crash would. Every process whose working directory is a node's data
directory is that server's (PostgreSQL chdirs there), which is how ``kill`` and
``cleanup`` find backends a dead postmaster left behind. Nothing outlives the
cluster: ``cleanup`` runs on ``__exit__`` and, for anything still alive, at exit
(SIGTERM included: it is made to exit through ``finally`` and atexit).

PostgreSQL refuses to run as root; as root the servers run as the ``postgres``
(or ``pgserver``) user, and their directories are chowned to it.

Binaries: ``REPORUNNER_PG_BIN`` if set, else the newest
``/usr/lib/postgresql/*/bin``, else the ones bundled in the ``pgserver`` wheel.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import psycopg

from tests.helpers import free_port

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_NEEDED = ("initdb", "postgres", "pg_basebackup")
_SUPERUSER = "postgres"
_REPLICATION_SLOT = "replica"

# Settings for both servers: on the command line, so a restart cannot lose them
# and the replica's copy of postgresql.conf does not matter.
_SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",  # TCP only: no socket files to collide or leak
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    # A standby's queries never get cancelled by the primary's vacuum.
    "hot_standby_feedback": "on",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "100",
    "wal_receiver_status_interval": "1s",
    # A replica whose primary restarted reconnects within this (default 5 s).
    "wal_retrieve_retry_interval": "200ms",
    "log_min_messages": "warning",
    "logging_collector": "off",
}

_live_clusters: set[PostgresCluster] = set()


def find_pg_bin() -> Path:
    """The directory holding ``initdb``, ``postgres`` and ``pg_basebackup``."""

    def complete(directory: Path) -> bool:
        return all((directory / name).is_file() for name in _NEEDED)

    override = os.environ.get("REPORUNNER_PG_BIN")
    if override:
        if not complete(Path(override)):
            raise RuntimeError(f"REPORUNNER_PG_BIN={override} lacks one of {', '.join(_NEEDED)}")
        return Path(override)

    def major(directory: Path) -> float:
        name = directory.parent.name
        return float(name) if name.replace(".", "", 1).isdigit() else 0.0

    for directory in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True):
        if complete(directory):
            return directory
    spec = importlib.util.find_spec("pgserver")  # not imported: it touches the disk on import
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if complete(bundled):
            return bundled
    raise RuntimeError(
        "no PostgreSQL binaries with initdb, postgres and pg_basebackup: install "
        "postgresql, or set REPORUNNER_PG_BIN"
    )


def _server_user() -> pwd.struct_passwd | None:
    """Whom the servers run as: ourselves, unless we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, and no 'postgres' or 'pgserver' user to run PostgreSQL as")


def _processes_in(directory: Path) -> list[int]:
    """Pids of the live processes whose working directory is ``directory``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == directory:
                pids.append(int(entry.name))
        except OSError:
            continue  # gone, a zombie, or not ours to look at
    return pids


class PostgresNode:
    """One PostgreSQL server (the primary or a replica) we start and stop ourselves."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        bin_dir: Path,
        user: pwd.struct_passwd | None,
        server_settings: dict[str, str],
    ):
        self.name = name
        self.server_settings = server_settings
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = data_dir.parent / f"{name}.log"
        self._bin_dir = bin_dir
        # Whom the server runs as (None: as we do); see _server_user.
        self._uid = None if user is None else user.pw_uid
        self._gid = None if user is None else user.pw_gid
        self._extra_groups: list[int] | None = None if user is None else []
        self._process: subprocess.Popen[bytes] | None = None

    # -- where it is -------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def is_running(self) -> bool:
        return self.pid is not None

    # -- life cycle --------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections (a standby: read-only ones)."""
        if self.is_running():
            return
        self._reap_leftovers()
        command = [str(self._bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for name, value in self.server_settings.items():
            command += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.data_dir,
                # Its own session: a ^C meant for pytest does not shut it down
                # behind the harness's back (cleanup does that).
                start_new_session=True,
                user=self._uid,
                group=self._gid,
                extra_groups=self._extra_groups,
            )
        self._wait_accepting(timeout)

    def stop(self, mode: StopMode = "fast", timeout: float = 60.0) -> None:
        """Shut down the way ``pg_ctl stop -m MODE`` would, and wait until every process exited."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(_STOP_SIGNALS[mode])
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        self._reap_leftovers()

    def restart(self, mode: StopMode = "fast", timeout: float = 60.0) -> None:
        self.stop(mode, timeout)
        self.start(timeout)

    def kill(self) -> None:
        """SIGKILL the postmaster alone, as a crash would; its backends then exit on their own.

        Returns once they have (or been killed), so ``start`` can follow at once.
        """
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()
        self._process = None
        self._reap_leftovers(grace=10.0)

    # -- queries -----------------------------------------------------------

    def query(self, sql: str, params: tuple[object, ...] = ()) -> object:
        """Run ``sql`` (autocommit); the first column of its first row, or None."""
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql, params)
            row = cursor.fetchone() if cursor.description is not None else None
        return None if row is None else row[0]

    # -- internals ---------------------------------------------------------

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                raise RuntimeError(f"{self.name} exited while starting:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop("immediate")
                    raise TimeoutError(
                        f"{self.name} did not accept connections in {timeout}s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.05)

    def _reap_leftovers(self, grace: float = 0.0) -> None:
        """Wait ``grace`` seconds for processes left in the data directory, then SIGKILL them."""
        deadline = time.monotonic() + grace
        while (pids := _processes_in(self.data_dir)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _processes_in(self.data_dir) and time.monotonic() < deadline:
            time.sleep(0.02)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class PostgresCluster:
    """A primary and (optionally) a streaming hot-standby replica in one temporary directory."""

    def __init__(
        self,
        base_dir: Path,
        bin_dir: Path,
        user: pwd.struct_passwd | None,
        server_settings: dict[str, str],
    ):
        self.base_dir = base_dir
        self.bin_dir = bin_dir
        self._user = user
        self._server_settings = server_settings
        self.primary = PostgresNode("primary", base_dir / "primary", bin_dir, user, server_settings)
        self.replica: PostgresNode | None = None

    @classmethod
    def start(
        cls,
        *,
        with_replica: bool = True,
        base_dir: Path | None = None,
        server_settings: dict[str, str] | None = None,
    ) -> PostgresCluster:
        """Initialise and start a primary (and its replica); ``cleanup`` removes it all.

        ``server_settings`` (e.g. ``{"max_connections": "200"}``) override ours on both.
        """
        user = _server_user()
        _exit_cleanly_on_sigterm()
        base = Path(base_dir or tempfile.mkdtemp(prefix="reporunner-cluster-pg-")).resolve()
        base.mkdir(parents=True, exist_ok=True)
        if user is not None:
            os.chown(base, user.pw_uid, user.pw_gid)
        cluster = cls(base, find_pg_bin(), user, _SERVER_SETTINGS | (server_settings or {}))
        _live_clusters.add(cluster)
        try:
            cluster._init_primary()
            cluster.primary.start()
            if with_replica:
                cluster.add_replica()
        except BaseException:
            cluster.cleanup()
            raise
        return cluster

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    def add_replica(self) -> PostgresNode:
        """Clone the running primary into a hot standby that streams from it, and start it."""
        if self.replica is not None:
            raise RuntimeError("this cluster already has a replica")
        replica = PostgresNode(
            "replica", self.base_dir / "replica", self.bin_dir, self._user, self._server_settings
        )
        self._run(
            "pg_basebackup",
            "--host=127.0.0.1",
            f"--port={self.primary.port}",
            f"--username={_SUPERUSER}",
            f"--pgdata={replica.data_dir}",
            "--write-recovery-conf",  # standby.signal + primary_conninfo
            "--wal-method=stream",
            "--checkpoint=fast",
            "--create-slot",
            f"--slot={_REPLICATION_SLOT}",
            "--no-sync",
        )
        self.replica = replica
        replica.start()
        return replica

    # -- replication ---------------------------------------------------------

    def pause_replay(self, timeout: float = 30.0) -> None:
        """Stop the replica applying WAL (it still receives it); returns once replay has paused."""
        replica = self._require_replica()
        replica.query("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + timeout
        while replica.query("SELECT pg_get_wal_replay_pause_state()") != "paused":
            if time.monotonic() > deadline:
                raise TimeoutError(f"replay did not pause within {timeout}s")
            time.sleep(0.02)

    def resume_replay(self) -> None:
        self._require_replica().query("SELECT pg_wal_replay_resume()")

    def wait_replayed(self, timeout: float = 30.0) -> str:
        """Wait until the replica replayed all the primary committed so far; returns that LSN."""
        replica = self._require_replica()
        lsn = str(self.primary.query("SELECT pg_current_wal_lsn()"))
        deadline = time.monotonic() + timeout
        while not replica.query(
            "SELECT coalesce(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn) >= 0, false)",
            (lsn,),
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica did not replay {lsn} within {timeout}s")
            time.sleep(0.02)
        return lsn

    # -- teardown ------------------------------------------------------------

    def cleanup(self) -> None:
        """Kill both servers (and anything left in their directories), delete every file."""
        for node in (self.replica, self.primary):
            if node is not None:
                with contextlib.suppress(Exception):
                    node.stop("immediate", timeout=10)
        shutil.rmtree(self.base_dir, ignore_errors=True)
        _live_clusters.discard(self)

    # -- internals -----------------------------------------------------------

    def _require_replica(self) -> PostgresNode:
        if self.replica is None:
            raise RuntimeError("this cluster has no replica (start it with with_replica=True)")
        return self.replica

    def _init_primary(self) -> None:
        self._run(
            "initdb",
            f"--pgdata={self.primary.data_dir}",
            f"--username={_SUPERUSER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bin_dir / program), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.base_dir,
            user=None if self._user is None else self._user.pw_uid,
            group=None if self._user is None else self._user.pw_gid,
            extra_groups=None if self._user is None else [],
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr.strip()}")


def _exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM exit through ``finally`` blocks and atexit (by default it skips both)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def exit_on_sigterm(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, exit_on_sigterm)


@atexit.register
def _cleanup_at_exit() -> None:
    # Whatever a test forgot (or a crash skipped): no server outlives the run.
    for cluster in list(_live_clusters):
        cluster.cleanup()
