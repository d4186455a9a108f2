"""``reporunner import n8n FILE`` in a real subprocess against the test database."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from commands import WorkflowCommands
from infrastructure.database import PgTarget
from tests.integration.test_cli import _cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "n8n"


def test_the_cli_imports_a_file_like_the_api(
    db_target: PgTarget, org: str, commands: WorkflowCommands
) -> None:
    done = _cli(db_target, "import", "n8n", str(FIXTURES / "if_v1.json"), "--org", org)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    stored = commands.get(uuid.UUID(answer["id"]), org)
    assert [node["type"] for node in stored.nodes] == ["manual_trigger", "if", "noop", "noop"]
    assert stored.name == "IF v1"


def test_the_cli_refuses_what_the_api_refuses(db_target: PgTarget, org: str) -> None:
    done = _cli(db_target, "import", "n8n", str(FIXTURES / "refused.json"), "--org", org)
    assert done.returncode == 1
    problem = json.loads(done.stdout)
    assert problem["status"] == 422
    assert [node["name"] for node in problem["nodes"]][:2] == ["JS Code", "Py Code"]

    partial = _cli(
        db_target, "import", "n8n", str(FIXTURES / "partial.json"), "--org", org, "--partial"
    )
    assert partial.returncode == 0, partial.stderr
    assert [p["name"] for p in json.loads(partial.stdout)["placeholders"]] == [
        "Transform",
        "Check other node",
    ]


def test_the_cli_names_a_file_that_is_not_json(
    db_target: PgTarget, org: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    done = _cli(db_target, "import", "n8n", str(bad), "--org", org)
    assert done.returncode == 2
    assert "the export is not JSON" in done.stderr
