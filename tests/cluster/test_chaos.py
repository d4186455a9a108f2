"""The chaos test: a whole deployment under load while its processes are killed.

Bounded by its number of faults: 20 kills -9 over every role (a process only
while its role's other one is up), one restart of the primary and one of
Redis, at least 5 s apart, then every check of ``tests/cluster/harness.py``.
Its wall time is mostly how fast 12 Python processes start and restart on the
box. The figures table is printed (``-s``) and is the failure message.
``bench/chaos.py`` runs the same for minutes.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.cluster.harness import run_chaos
from tests.cluster.postgres import find_pg_bin


def _has_pg_binaries() -> bool:
    try:
        find_pg_bin()
    except RuntimeError:
        return False
    return True


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="the harness runs Linux processes"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(not _has_pg_binaries(), reason="needs PostgreSQL's initdb and postgres"),
]


def test_nothing_acknowledged_is_lost_duplicated_or_stuck_under_kills(tmp_path: Path) -> None:
    report = run_chaos(kills=20, interval_s=5, clients=3, settle_s=60, workdir=tmp_path)
    print(report.table())
    kills = [fault for fault in report.faults if fault.kind.startswith("kill")]
    assert len(kills) >= 20
    assert not report.failed, "\n" + report.table()
