"""After the whole suite: every view must equal a fresh rebuild from the log."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from infrastructure.database import PgTarget
from tests.integration.test_cli import ROOT, _url


@pytest.mark.after_all
def test_replay_check_finds_no_difference_after_the_suite(db_target: PgTarget) -> None:
    env = {**os.environ, "DATABASE_URL": _url(db_target), "REPORUNNER_LOG_FORMAT": "json"}
    done = subprocess.run(
        [sys.executable, "-m", "reporunner", "replay", "--check"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "replay check: no difference" in done.stderr
