"""Log every failed execution: a minimal consumer of the event bus.

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/notify_failed.py [--org acme]

Run it beside ``reporunner serve`` with ``REDIS_URL`` set (the relay publishes
the log to Redis). Replace ``notify`` with a call to chat, e-mail or a pager:
it may raise to have the message retried, and must tolerate seeing one twice.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading

import structlog

from infrastructure.bus import Consumer, Message
from infrastructure.logs import configure_logging

log = structlog.get_logger("notify_failed")


def notify(message: Message) -> None:
    log.warning(
        "execution failed",
        execution_id=str(message.aggregate_id),
        org_id=message.org_id,
        error=message.data.get("error"),
        failed_at=message.timestamp.isoformat(),
        position=message.position,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Log every failed execution.")
    parser.add_argument("--org", help="Only this organisation's executions.")
    parser.add_argument("--group", default="notify-failed", help="Consumer group.")
    args = parser.parse_args()
    configure_logging("info", "console")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    consumer = Consumer(
        os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        group=args.group,
        consumer_name=f"{socket.gethostname()}-{os.getpid()}",  # unique per process
        handler=notify,
        patterns=["Execution.Failed"],
        org_id=args.org,
        prefix=os.environ.get("REPORUNNER_BUS_PREFIX", "reporunner"),
    )
    consumer.run(stop)
    consumer.close()


if __name__ == "__main__":
    main()
