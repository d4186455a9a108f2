"""The live stream: from a command's answer to the event's arrival at each connected client.

In a scratch database, against ``reporunner serve`` (every role, one process):
``clients`` streams of one organisation (``GET /v1/stream``) are open while
workflows are created, one command after another (and then by 8 writers at
once); for every command and every client, the time from the command's
answer to the event's arrival. Then one client catches up the whole log from
``after=0`` (events/s).

    python bench/stream.py [--commands 300] [--clients 1,10,50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench._common import create_key, percentile, running_server, scratch_database

ORG = "bench"
BODY: dict[str, Any] = {
    "name": "streamed",
    "nodes": [
        {"id": "start", "type": "manual_trigger", "parameters": {}},
        {"id": "a", "type": "noop", "parameters": {}},
    ],
    "connections": [{"from": "start", "to": "a"}],
}


class Client:
    """One open stream: when each position arrived."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        self.opened = asyncio.Event()
        self.wanted: set[int] | None = None
        self.done = asyncio.Event()

    def expect(self, positions: set[int]) -> None:
        self.wanted = positions
        self._check()

    def _check(self) -> None:
        if self.wanted is not None and self.wanted <= self.arrived.keys():
            self.done.set()

    async def run(self, session: aiohttp.ClientSession, base: str, params: dict[str, str]) -> None:
        async with session.get(f"{base}/v1/stream", params=params) as response:
            assert response.status == 200, await response.text()
            self.opened.set()
            async for raw in response.content:
                line = raw.rstrip(b"\n")
                if line.startswith(b"id: "):
                    self.arrived[int(line[4:])] = time.perf_counter()
                    self._check()


async def _latencies(
    base: str, key: str, clients: int, commands: int, writers: int
) -> tuple[list[float], float]:
    auth = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(headers=auth, timeout=timeout) as session:
        streams = [Client() for _ in range(clients)]
        tasks = [
            asyncio.create_task(s.run(session, base, {"types": "Workflow.Created"}))
            for s in streams
        ]
        await asyncio.gather(*(s.opened.wait() for s in streams))
        answered: dict[int, float] = {}

        async def write(count: int) -> None:
            for _ in range(count):
                async with session.post(f"{base}/v1/workflows", json=BODY) as response:
                    body = await response.json()
                    answered[body["position"]] = time.perf_counter()

        started = time.perf_counter()
        await asyncio.gather(*(write(commands // writers) for _ in range(writers)))
        elapsed = time.perf_counter() - started
        for stream in streams:
            stream.expect(set(answered))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in streams)), 30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies = sorted(
        s.arrived[position] - at
        for s in streams
        for position, at in answered.items()
        if position in s.arrived
    )
    missing = clients * len(answered) - len(latencies)
    assert missing == 0, f"{missing} events never arrived"
    return latencies, len(answered) / elapsed


async def _catch_up(base: str, key: str) -> tuple[int, float]:
    auth = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=auth) as session:
        started = time.perf_counter()
        count = 0
        async with session.get(f"{base}/v1/stream", params={"after": "0"}) as response:
            quiet_since = time.perf_counter()
            while True:
                try:
                    raw = await asyncio.wait_for(response.content.readline(), timeout=1.0)
                except TimeoutError:
                    break  # caught up: a second without events
                if raw.startswith(b"id: "):
                    count += 1
                    quiet_since = time.perf_counter()
        return count, count / (quiet_since - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--clients", default="1,10,50")
    args = parser.parse_args()
    levels = [int(part) for part in args.clients.split(",")]
    env = {
        "REPORUNNER_STREAM_CONNECTIONS_PER_ORG": str(max(levels) + 1),
        "REPORUNNER_LOG_LEVEL": "warning",
    }
    with scratch_database() as target:
        key = create_key(target, ORG, "editor")
        with running_server(target, extra_env=env) as base:
            print(f"{args.commands} commands per run; latency = command answer -> event at client")
            for clients in levels:
                for writers in (1, 8):
                    latencies, rate = asyncio.run(
                        _latencies(base, key, clients, args.commands, writers)
                    )
                    ms = [value * 1000 for value in latencies]
                    print(
                        f"{clients:>3} clients, {writers} writer(s) ({rate:,.0f} commands/s): "
                        f"p50 {percentile(ms, 50):.1f} ms, p95 {percentile(ms, 95):.1f} ms, "
                        f"p99 {percentile(ms, 99):.1f} ms, max {ms[-1]:.1f} ms"
                    )
            count, rate = asyncio.run(_catch_up(base, key))
            print(f"catch-up from after=0: {count:,} events at {rate:,.0f} events/s")


if __name__ == "__main__":
    main()
