"""Chaos, for minutes: the cluster harness's run (``tests/cluster/harness.py``) at length.

Starts a PostgreSQL primary and a Redis of its own and two processes of every
role, drives CLIENTS clients' mixed load over their ports, and for MINUTES, every
INTERVAL seconds, kills -9 a process of a role (the roles in shuffled cycles;
a process only while its role's other one is up) and restarts it, with one
restart of the primary and one of Redis; then checks the log, the views and
the stream against every answer given, and prints the figures table. Exit 1
if a check failed.

    python bench/chaos.py [--minutes 10] [--interval 6] [--clients 4] [--workdir DIR]

Every process' log is kept in the work directory (printed at the start).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster.harness import run_chaos


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10, help="how long faults go on")
    parser.add_argument("--interval", type=float, default=6, help="seconds between faults")
    parser.add_argument("--clients", type=int, default=4, help="load clients (one org each)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the logs go")
    args = parser.parse_args()
    report = run_chaos(
        kills=0,  # as many as fit in the duration
        duration_s=args.minutes * 60,
        interval_s=args.interval,
        clients=args.clients,
        settle_s=120,
        workdir=args.workdir,
        out=lambda line: print(line, flush=True),
    )
    print(report.table())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
