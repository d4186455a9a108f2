"""The README's walk-through, pasted as one script against a live ``reporunner serve``.

The first release's walk-through failed at its last DELETE when run this way;
this keeps the README true.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infrastructure.database import PgTarget
from tests.helpers import free_port, scratch_database

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the walk-through uses curl")


def walkthrough_script() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A walk through with curl", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the walk-through's shell block is missing"
    return match.group(1)


@pytest.fixture
def own_database(server_target: PgTarget) -> Iterator[PgTarget]:
    """Empty: ``serve`` migrates it, as on a user's first start."""
    with scratch_database(server_target, "reporunner_walk", migrate=False) as target:
        yield target


def test_the_walkthrough_runs_as_one_script(own_database: PgTarget, tmp_path: Path) -> None:
    port = free_port()
    server_log = (tmp_path / "serve.log").open("wb")
    env = {
        **os.environ,
        "DATABASE_URL": own_database.url(),
        "REPORUNNER_LOG_FORMAT": "json",
        "REPORUNNER_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("REDIS_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "reporunner", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(server, f"http://127.0.0.1:{port}", tmp_path / "serve.log")
        script = walkthrough_script().replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
        if not (ROOT / ".venv/bin/reporunner").exists():
            script = script.replace(".venv/bin/reporunner", f"{sys.executable} -m reporunner")
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.terminate()
        server.wait(timeout=40)
        server_log.close()
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    # No terminal: the first start's key went to a private file, and the log names only it.
    key_file = tmp_path / "data" / "first-owner-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    logged = (tmp_path / "serve.log").read_text()
    assert str(key_file) in logged and key_file.read_text().strip() not in logged
    assert '"status":"succeeded"' in done.stdout
    assert '"greeting":"hello"' in done.stdout
    # The DELETE's answer, last: revision 3, although a run came between.
    assert re.search(r'"version":3,"position":\d+\}\s*$', done.stdout), done.stdout


def _wait_ready(server: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not become ready")
