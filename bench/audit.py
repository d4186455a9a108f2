"""Audit chain throughput: build the chain, verify the log, export one organisation.

Seeds a scratch database's log with EVENTS events (the projection benchmark's
mix over 20 organisations), then prints:

- the follower building the chain from nothing (events/s);
- ``verify_log`` over the whole log (events/s; the target is >= 20,000);
- an export of one organisation (MB/s), and its offline check;
- what the chain costs on disk.

    python bench/audit.py [--events 1000000] [--workflows 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench._common import scratch_database
from bench.projection_rebuild import ORGS, seed
from infrastructure.audit import verify_export
from projections.audit_chain import AuditChainFollower, export_org, verify_log

KEY = "bench-audit-key"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000, help="events per follower batch")
    args = parser.parse_args()
    with scratch_database() as target:
        seed(target, args.events, args.workflows)

        follower = AuditChainFollower(target, key=KEY, batch_size=args.batch)
        started = time.perf_counter()
        with follower.connect() as conn:
            chained = follower.catch_up(conn)
        elapsed = time.perf_counter() - started
        print(
            f"chain built: {chained:,} events in {elapsed:.1f} s = "
            f"{chained / elapsed:,.0f} events/s"
        )

        result = verify_log(target, KEY)
        assert result.ok, result.reason
        print(
            f"verify_log: {result.events:,} events, {result.checkpoints:,} checkpoints in "
            f"{result.elapsed_s:.1f} s = {result.events_per_s:,.0f} events/s (target >= 20,000)"
        )

        org = ORGS[3]
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / f"{org}.jsonl"
            exported = export_org(target, org, None, None, out, KEY)
            print(
                f"export of {org}: {exported.count:,} events, "
                f"{exported.bytes_written / 1e6:,.1f} MB in {exported.elapsed_s:.1f} s = "
                f"{exported.megabytes_per_s:,.1f} MB/s ({exported.count / exported.elapsed_s:,.0f} "
                "events/s, scanning the whole log)"
            )
            started = time.perf_counter()
            check = verify_export(out, KEY)
            elapsed = time.perf_counter() - started
            assert check.ok, check.reason
            print(
                f"verify_export: {check.count:,} events in {elapsed:.1f} s = "
                f"{exported.bytes_written / 1e6 / elapsed:,.1f} MB/s"
            )

        with psycopg.connect(target.conninfo()) as conn:
            sizes = conn.execute(
                "SELECT pg_total_relation_size('audit_chain'), "
                "pg_total_relation_size('audit_chain_checkpoints'), "
                "pg_total_relation_size('reporunner_events')"
            ).fetchone()
        assert sizes is not None
        links, checkpoints, events = sizes
        print(
            f"on disk: audit_chain {links / 1e6:,.0f} MB ({links / chained:.0f} bytes/event, "
            f"index included), checkpoints {checkpoints / 1e3:,.0f} kB; "
            f"the log itself {events / 1e6:,.0f} MB"
        )


if __name__ == "__main__":
    main()
