"""The first owner key reaches a person: a terminal's banner, else a 0600 file; never a log line."""

from __future__ import annotations

import io
import stat
from pathlib import Path

from structlog.testing import capture_logs

from reporunner.server import FIRST_KEY_FILE, hand_over_first_key

KEY = "rr_0123456789abcdef"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_banner_shows_the_key_and_nothing_is_written(tmp_path: Path) -> None:
    terminal = _Terminal()
    with capture_logs() as logs:
        hand_over_first_key("default", KEY, "http://127.0.0.1:8000", tmp_path, terminal)
    assert KEY in terminal.getvalue() and "curl" in terminal.getvalue()
    assert not (tmp_path / FIRST_KEY_FILE).exists()
    assert KEY not in repr(logs)


def test_off_a_terminal_the_key_goes_to_a_private_file_and_the_log_names_it(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    piped = io.StringIO()
    with capture_logs() as logs:
        hand_over_first_key("default", KEY, "http://127.0.0.1:8000", data_dir, piped)
    path = data_dir / FIRST_KEY_FILE
    assert path.read_text() == KEY + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert piped.getvalue() == ""
    assert KEY not in repr(logs)
    (line,) = logs
    assert line["key_file"] == str(path.resolve()) and line["org_id"] == "default"


def test_an_older_readable_key_file_is_replaced_and_made_private(tmp_path: Path) -> None:
    path = tmp_path / FIRST_KEY_FILE
    path.write_text("old\n")
    path.chmod(0o644)
    hand_over_first_key("default", KEY, "http://x", tmp_path, io.StringIO())
    assert path.read_text() == KEY + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
