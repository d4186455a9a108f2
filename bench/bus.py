"""Event bus: relay throughput, and latency from an accepted command to a consumer.

1. Seeds a scratch database's log with EVENTS events (``projection_rebuild.seed``)
   and times a relay publishing all of them to Redis: events/s from the log
   to the streams (two ``XADD``s per event: its organisation's stream and
   the all-events stream). Target: >= 10,000 events/s.
2. Runs the relay (woken by LISTEN/NOTIFY) and one consumer live, sends
   RATE commands/s for SECONDS seconds (``WorkflowCommands.create`` in this
   process, as the write API runs them), and reports the p50/p95/max latency
   from "command accepted" (its save returned) to "consumer handler called".
   Target: p95 <= 50 ms.

    python bench/bus.py [--events 200000] [--rate 200] [--seconds 10]

Redis is ``REDIS_URL`` (default redis://127.0.0.1:6379/0); the streams live
under a prefix of the run's own and are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile, scratch_database
from bench.projection_rebuild import create_workflow_application, seed
from commands import CommandContext, CreateWorkflow, WorkflowCommands
from infrastructure.bus import Consumer, Message, connect, events_stream
from infrastructure.database import PgTarget
from infrastructure.logs import configure_logging
from infrastructure.settings import Settings
from projections.relay import BusConfig, Relay, start_relay_in_thread
from tests.helpers import workflow_body


def relay_throughput(target: PgTarget, redis_url: str, config: BusConfig, events: int) -> None:
    app = create_workflow_application(target, Settings(database_url="postgresql://unused"))
    relay = Relay(app, target, redis_url, config)
    with relay.connect() as conn:
        relay.ensure_tracking(conn)
        relay.reconcile(conn)
        started = time.perf_counter()
        published = relay.catch_up(conn)
        elapsed = time.perf_counter() - started
    assert published == events, (published, events)
    client = connect(redis_url)
    length = client.xlen(events_stream(config.prefix))
    client.close()
    print(
        f"relay: {published:,} events in {elapsed:.1f} s = {published / elapsed:,.0f} events/s "
        f"({2 * published / elapsed:,.0f} XADD/s, batches of {config.relay_batch}); "
        f"all-events stream holds {length:,}"
    )
    relay.redis.close()
    app.close()


def end_to_end_latency(
    target: PgTarget, redis_url: str, config: BusConfig, rate: float, seconds: float
) -> None:
    app = create_workflow_application(target, Settings(database_url="postgresql://unused"))
    commands = WorkflowCommands(app)
    org = f"latency-{uuid.uuid4().hex[:8]}"
    accepted: dict[int, float] = {}
    handled: dict[int, float] = {}

    def handler(message: Message) -> None:
        handled[message.position] = time.perf_counter()

    stop = threading.Event()
    relay, relay_thread = start_relay_in_thread(target, app, redis_url, config, stop)
    consumer = Consumer(
        redis_url, "bench", "bench-1", handler=handler, org_id=org, prefix=config.prefix
    )
    consumer_thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    consumer_thread.start()
    while relay.status().lag or not relay.status().active:  # the seeded log first
        time.sleep(0.05)
    ctx = CommandContext(org_id=org, actor="apikey:bench", correlation_id="bench")
    count = int(rate * seconds)
    started = time.perf_counter()
    for i in range(count):
        # Open loop: each command at its time, however long the previous one took.
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        result = commands.create(CreateWorkflow(**workflow_body(f"w{i}")), ctx)
        accepted[result.position] = time.perf_counter()
    sent_for = time.perf_counter() - started
    deadline = time.monotonic() + 10
    while len(handled) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    relay_thread.join(timeout=10)
    consumer_thread.join(timeout=10)
    consumer.close()
    app.close()
    # The consumer can be called before the command's thread reads the clock: 0, not less.
    latencies = sorted(max(0.0, handled[p] - accepted[p]) * 1000 for p in accepted if p in handled)
    print(
        f"end to end: {count:,} commands at {count / sent_for:,.0f}/s; {len(latencies):,} "
        f"handled; accepted -> handler called: p50 {percentile(latencies, 50):.2f} ms, "
        f"p95 {percentile(latencies, 95):.2f} ms, max {latencies[-1]:.2f} ms"
    )
    if len(latencies) < count:
        print(f"  MISSING: {count - len(latencies)} events never reached the consumer")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--workflows", type=int, default=20_000)
    parser.add_argument(
        "--batch", type=int, default=BusConfig().relay_batch, help="events per relay batch"
    )
    parser.add_argument("--rate", type=float, default=200, help="commands per second")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    configure_logging("warning", "console")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    config = BusConfig(prefix=f"reporunner-bench-{uuid.uuid4().hex[:8]}", relay_batch=args.batch)
    client = connect(redis_url)
    try:
        with scratch_database() as target:
            seed(target, args.events, args.workflows)
            relay_throughput(target, redis_url, config, args.events)
            end_to_end_latency(target, redis_url, config, args.rate, args.seconds)
    finally:
        keys = list(client.scan_iter(match=f"{config.prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


if __name__ == "__main__":
    main()
