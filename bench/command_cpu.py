"""CPU per command in the server process: what an HTTP command costs, not how many pass.

Throughput on a machine others share says more about them than about us;
the CPU a command costs the process serving it does not. This starts
``reporunner serve --only write-api`` (one process, production logging) on a
scratch database, sends creates (and, with ``--updates``, If-Match updates)
one after another over one keep-alive connection, and prints the server's
user+system CPU per command from ``/proc/<pid>/stat`` (every thread: the
event loop, the command threads, the group-commit writer). ``--py-spy FILE``
also records a profile of the server meanwhile (a speedscope or flame SVG by
the file's extension) to see where that CPU goes.

    python bench/command_cpu.py [--commands 3000] [--updates] [--py-spy prof.svg]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, _free_port, create_key, database_url, scratch_database
from bench.write_throughput import definition

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def drive(client: httpx.Client, commands: int, updates: bool) -> None:
    for i in range(commands):
        answer = client.post("/v1/workflows", json=definition(f"wf-{i}"))
        answer.raise_for_status()
        if updates:
            body = answer.json()
            client.patch(
                f"/v1/workflows/{body['id']}",
                json={"name": f"wf-{i}-renamed"},
                headers={"If-Match": answer.headers["etag"]},
            ).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--updates", action="store_true", help="an update after each create")
    parser.add_argument("--py-spy", dest="py_spy", help="record a py-spy profile to this file")
    args = parser.parse_args()
    with scratch_database() as target:
        key = create_key(target, "bench")
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env |= {"DATABASE_URL": database_url(target), "REPORUNNER_LOG_FORMAT": "json"}
        command = [sys.executable, "-m", "reporunner", "serve", "--port", str(port)]
        command += ["--no-migrate", "--only", "write-api", "--workers", "1"]
        server = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if client.get("/readyz", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the server did not start")
                    time.sleep(0.1)
                drive(client, args.warmup, args.updates)
                spy = None
                if args.py_spy:
                    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                    fmt = "speedscope" if args.py_spy.endswith(".json") else "flamegraph"
                    spy = subprocess.Popen(
                        [
                            exe,
                            "record",
                            "-p",
                            str(server.pid),
                            "-o",
                            args.py_spy,
                            "-f",
                            fmt,
                            "--threads",
                            "-r",
                            "250",
                            "--nonblocking",
                        ]
                    )
                    time.sleep(1)
                before = cpu_seconds(server.pid)
                started = time.perf_counter()
                drive(client, args.commands, args.updates)
                elapsed = time.perf_counter() - started
                after = cpu_seconds(server.pid)
                user, system = after[0] - before[0], after[1] - before[1]
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(timeout=60)
        finally:
            server.terminate()
            server.wait(timeout=15)
    sent = args.commands * (2 if args.updates else 1)
    used = user + system
    print(
        f"{sent} commands sequentially: server CPU {used * 1e6 / sent:,.0f} µs per command "
        f"(user {user * 1e6 / sent:,.0f}, system {system * 1e6 / sent:,.0f}; "
        f"{used:.2f} s CPU in {elapsed:.2f} s wall)"
    )


if __name__ == "__main__":
    main()
