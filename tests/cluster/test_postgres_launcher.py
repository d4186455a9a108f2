"""The cluster launcher itself: what the chaos harness relies on, checked on real servers."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from tests.cluster.postgres import PostgresCluster


def _count(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM probe").fetchone()
    assert row is not None
    return int(row[0])


def _servers_in(base: Path) -> list[int]:
    """Pids of processes working in ``base`` (a server's data directory is under it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(Path(os.readlink(entry / "cwd"))).startswith(str(base)):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_the_replica_follows_the_primary_through_a_crash_and_a_pause_and_nothing_outlives_it() -> (
    None
):
    with PostgresCluster.start() as cluster:
        replica = cluster.replica
        assert replica is not None
        base = cluster.base_dir
        cluster.primary.query("CREATE TABLE probe (x int)")
        cluster.primary.query("INSERT INTO probe VALUES (1)")
        cluster.wait_replayed()
        assert _count(replica.url()) == 1

        cluster.pause_replay()
        cluster.primary.query("INSERT INTO probe VALUES (2)")
        assert _count(cluster.primary.url()) == 2
        assert _count(replica.url()) == 1  # replay paused: the replica stays behind
        cluster.resume_replay()
        cluster.wait_replayed()
        assert _count(replica.url()) == 2

        old_pid = cluster.primary.pid
        cluster.primary.kill()  # SIGKILL: crash recovery on the next start
        assert not cluster.primary.is_running()
        cluster.primary.start()
        assert cluster.primary.pid != old_pid
        cluster.primary.query("INSERT INTO probe VALUES (3)")
        cluster.wait_replayed()  # the replica reconnected by itself
        assert _count(replica.url()) == 3

        replica.stop("immediate")
        cluster.primary.query("INSERT INTO probe VALUES (4)")  # kept for it by the slot
        replica.start()
        cluster.wait_replayed()
        assert _count(replica.url()) == 4
        assert _servers_in(base)

    assert not base.exists()
    assert _servers_in(base) == []
