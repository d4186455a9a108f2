"""Write-path throughput: HTTP commands vs in-process ``Application.save``.

Each client creates a workflow and updates it ``UPDATES`` times (If-Match),
over real HTTP against ``reporunner serve`` in its own process: first the
write API alone (``serve --only write-api --workers 2``), then plain
``serve`` (one process, all roles) at the top client count. In the same run:
the raw rate of the log itself (one-row transactions under the ``EXCLUSIVE``
table lock, 8 threads, one round trip each), the yardstick the HTTP rates
are judged by; and the same events saved in-process with
``Application.save``, from 1 and 8 threads, through our recorder and through
eventsourcing's stock one, so the ratios say what the HTTP layer costs.

    python bench/write_throughput.py [--commands 3000] [--clients 1,8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
import uuid
from pathlib import Path

import aiohttp
import psycopg
import uvloop  # the load generator shares the cores: keep it light

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import create_key, percentile, running_server, scratch_database
from commands import WorkflowApplication
from domain.meta import EventMeta
from domain.workflow import Workflow
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, eventsourcing_env
from infrastructure.settings import Settings

UPDATES = 3  # updates per created workflow: a 1:3 create/update mix


def definition(name: str) -> dict:
    return {
        "name": name,
        "nodes": [
            {"id": "start", "type": "manual_trigger", "parameters": {}},
            {"id": "set", "type": "set", "parameters": {"fields": {"a.b": 1}}},
            {"id": "end", "type": "noop", "parameters": {}},
        ],
        "connections": [{"from": "start", "to": "set"}, {"from": "set", "to": "end"}],
    }


async def http_round(base: str, key: str, clients: int, commands: int) -> tuple[float, list[float]]:
    """``clients`` concurrent clients, each creating then updating workflows."""
    latencies: list[float] = []
    per_client = max(1, commands // clients // (UPDATES + 1))
    connector = aiohttp.TCPConnector(limit=clients)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(base, headers=headers, connector=connector) as session:

        async def command(method: str, path: str, body: dict, extra: dict) -> dict:
            started = time.perf_counter()
            async with session.request(method, path, json=body, headers=extra) as response:
                answer = await response.json()
                if response.status >= 300:
                    raise RuntimeError(f"{method} {path}: {response.status} {answer}")
            latencies.append(time.perf_counter() - started)
            return answer  # type: ignore[no-any-return]

        async def one_client(c: int) -> None:
            for i in range(per_client):
                answer = await command("POST", "/v1/workflows", definition(f"c{c}-{i}"), {})
                for u in range(UPDATES):
                    answer = await command(
                        "PATCH",
                        f"/v1/workflows/{answer['id']}",
                        {"description": f"update {u}"},
                        {"If-Match": f'"{answer["version"]}"'},
                    )

        started = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies


# eventsourcing's own recorder, for comparison with ours (same tables).
STOCK_RECORDER = "eventsourcing.postgres:PostgresApplicationRecorder"


def raw_locked_insert_rate(target: PgTarget, threads: int, rows: int) -> float:
    """Transactions/s of one-row inserts under the log's table lock, as fast as possible.

    What any writer that keeps eventsourcing's ordering protocol pays per
    commit (lock, insert, fsync), with nothing in front of it: each thread
    sends one script per transaction on its own connection.
    """
    per_thread = max(1, rows // threads)

    def work() -> None:
        with psycopg.connect(target.conninfo(), autocommit=True) as conn:
            for _ in range(per_thread):
                conn.execute(
                    f"BEGIN; LOCK TABLE {EVENTS_TABLE} IN EXCLUSIVE MODE; "
                    f"INSERT INTO {EVENTS_TABLE} (originator_id, originator_version, topic, state) "
                    f"VALUES ('{uuid.uuid4()}', 1, 'bench:Raw', '\\x00'); COMMIT"
                )

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return per_thread * threads / (time.perf_counter() - started)


def print_round(clients: int, elapsed: float, latencies: list[float]) -> tuple[float, float]:
    """One row of the table; returns (commands/s, p99 ms)."""
    latencies.sort()
    rate = len(latencies) / elapsed
    p50, p95, p99 = (percentile(latencies, p) * 1000 for p in (50, 95, 99))
    print(f"{clients:>9} {len(latencies):>9} {rate:>9.0f} {p50:>9.2f} {p95:>9.2f} {p99:>9.2f}")
    return rate, p99


COLUMNS = ("clients", "commands", "cmd/s", "p50 ms", "p95 ms", "p99 ms")


def in_process_round(target: PgTarget, threads: int, commands: int, recorder: str | None) -> float:
    """Saves/s of the same create+update mix straight through ``Application.save``."""
    env = eventsourcing_env(target, Settings(database_url="postgresql://unused"))
    if recorder is not None:
        env["APPLICATION_RECORDER_TOPIC"] = recorder
    app = WorkflowApplication(env=env)
    meta = EventMeta(org_id="bench", actor="bench", correlation_id="bench")
    per_thread = max(1, commands // threads // (UPDATES + 1))

    def work() -> None:
        for i in range(per_thread):
            wf = Workflow.create(
                workflow_id=uuid.uuid4(), definition=definition(f"p{i}"), meta=meta
            )
            app.save(wf)
            for u in range(UPDATES):
                wf.update({"description": f"update {u}"}, meta)
                app.save(wf)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    app.close()
    return per_thread * threads * (UPDATES + 1) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=4000, help="commands per HTTP round")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument(
        "--skip-in-process", action="store_true", help="skip the in-process save rounds"
    )
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]

    with scratch_database() as target:
        key = create_key(target, "bench")
        results: dict[int, tuple[float, float]] = {}
        top = max(client_counts)
        # The raw rate right before each server's rounds: the machine's
        # fsync and CPU vary from minute to minute, so compare neighbours.
        raw = raw_locked_insert_rate(target, 8, args.commands)
        print(f"raw locked insert (one row per transaction, 8 threads): {raw:,.0f}/s")
        # The write API alone, as `serve --only write-api` scales it: the other
        # roles' followers would compete for the same two cores.
        roles = {"REPORUNNER_ROLES": "write-api"}
        print(f"serve --only write-api --workers {args.workers}:")
        with running_server(target, workers=args.workers, extra_env=roles) as base:
            uvloop.run(http_round(base, key, 4, 200))  # warm-up
            print(" ".join(f"{c:>9}" for c in COLUMNS))
            for clients in client_counts:
                elapsed, latencies = uvloop.run(http_round(base, key, clients, args.commands))
                results[clients] = print_round(clients, elapsed, latencies)
        # Plain `serve`: defaults, every role (an HTTP process per core, the
        # followers of the log it writes in one process below them).
        plain_raw = raw_locked_insert_rate(target, 8, args.commands)
        print(f"\nraw locked insert (one row per transaction, 8 threads): {plain_raw:,.0f}/s")
        print("serve (defaults: an HTTP process per core, all roles):")
        with running_server(target, workers=None) as base:
            uvloop.run(http_round(base, key, 4, 200))  # warm-up
            print(" ".join(f"{c:>9}" for c in COLUMNS))
            elapsed, latencies = uvloop.run(http_round(base, key, top, args.commands))
            plain, plain_p99 = print_round(top, elapsed, latencies)
        workers_rate, workers_p99 = results[top]
        print(
            f"\nHTTP@{top} --workers {args.workers} / raw locked insert: "
            f"{workers_rate / raw:.2f} (p99 {workers_p99:.0f} ms; target 1.0, p99 50 ms)"
        )
        print(
            f"HTTP@{top} plain serve / raw locked insert: {plain / plain_raw:.2f} "
            f"(p99 {plain_p99:.0f} ms; target 0.5)"
        )
        if args.skip_in_process:
            return
        print(f"\nin-process Application.save of the same mix (ratio = HTTP@{top} / this):")
        for label, recorder in (("our recorder", None), ("eventsourcing's", STOCK_RECORDER)):
            for threads in (1, 8):
                rate = in_process_round(target, threads, args.commands, recorder)
                print(
                    f"  {label:>16}, {threads} thread(s): {rate:>6.0f} saves/s"
                    f"   ratio {workers_rate / rate:.2f}"
                )


if __name__ == "__main__":
    main()
