"""Conformance: every real n8n export in ``../shared/n8n_samples/`` (see its SOURCES.md).

- A sample of core nodes only (SOURCES.md's "all-core", no Code) imports:
  as it is when every node maps, else its 422 names only nodes refused for
  what they hold (an expression, a field name, credentials), never for their
  type; with ``partial=true`` it always imports.
- Where its trigger is manual, the imported workflow runs through the API and
  finishes. "Runs" means the sync run ends succeeded or failed, never crashed:
  it succeeds unless it meets a placeholder (which fails the run, naming it)
  or an http_request to a host outside the test's allow-list (only 127.0.0.1
  here, so no test reaches the internet: the node fails naming the host, and
  its on_error decides the rest).
- Every other sample is a 422 naming each of its Code/Function nodes and each
  node of a type Reporunner has no equivalent for.

The folder sits next to the repository (CI has it); ``N8N_SAMPLES_DIR``
points elsewhere (a git worktree's neighbours differ). Absent, the tests skip.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from commands.n8n_import.nodes import CODE_REASON, CODE_TYPES, MAPPERS, STICKY_NOTE

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = Path(os.environ.get("N8N_SAMPLES_DIR") or ROOT.parent / "shared" / "n8n_samples")


def _table() -> dict[str, bool]:
    """sample file -> all-core, from SOURCES.md's table."""
    rows: dict[str, bool] = {}
    for line in (SAMPLES / "SOURCES.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and re.fullmatch(r"sample_\d+\.json", cells[0]):
            rows[cells[0]] = cells[5] == "yes" and "Code" not in line
    return rows


def _samples() -> list[Any]:
    if not (SAMPLES / "SOURCES.md").is_file():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"no samples at {SAMPLES}"))]
    return [pytest.param(name, core, id=name) for name, core in sorted(_table().items())]


def _import(
    client: httpx.Client, owner: dict[str, str], raw: bytes, partial: bool
) -> httpx.Response:
    return client.post(
        "/v1/import/n8n",
        content=raw,
        params={"partial": "true"} if partial else {},
        headers={**owner, "Content-Type": "application/json"},
    )


def _refused_for_their_type(export: dict[str, Any]) -> dict[str, str]:
    """Nodes that no parameters could make importable: name -> the reason's start."""
    refused = {}
    for node in export["nodes"]:
        if node["type"] in CODE_TYPES:
            refused[node["name"]] = CODE_REASON
        elif node["type"] not in MAPPERS and node["type"] != STICKY_NOTE:
            refused[node["name"]] = (
                "has no Reporunner equivalent"
                if node["type"].startswith("n8n-nodes-base.")
                else "is not a built-in n8n node"
            )
    return refused


@pytest.mark.parametrize(("sample", "all_core"), _samples())
def test_sample(client: httpx.Client, owner: dict[str, str], sample: str, all_core: bool) -> None:
    raw = (SAMPLES / sample).read_bytes()
    export = json.loads(raw)
    by_type = _refused_for_their_type(export)
    strict = _import(client, owner, raw, partial=False)
    if not all_core:
        assert strict.status_code == 422, strict.text
        named = {node["name"]: node["reason"] for node in strict.json()["nodes"]}
        assert by_type, "a sample SOURCES.md calls not all-core has a node refused by type"
        for name, reason in by_type.items():
            assert named.get(name, "").startswith(reason), (name, named.get(name))
        return

    assert by_type == {}
    if strict.status_code != 201:
        assert strict.status_code == 422, strict.text
        for node in strict.json()["nodes"]:
            assert node["type"] in MAPPERS, node  # refused for what it holds, not its type
    imported = _import(client, owner, raw, partial=True)
    assert imported.status_code == 201, imported.text
    answer = imported.json()
    manual = [node for node in export["nodes"] if node["type"] == "n8n-nodes-base.manualTrigger"]
    if not manual:
        return
    run = client.post(
        f"/v1/workflows/{answer['id']}/executions", json={"mode": "sync"}, headers=owner
    )
    assert run.status_code == 200, run.text
    result = run.json()
    calls_out = any(node["type"] == "n8n-nodes-base.httpRequest" for node in export["nodes"])
    if result["status"] == "failed":
        placeholder = "Placeholder for n8n node" in result["error"]
        blocked = "is not allowed: it is not in the HTTP allow-list" in result["error"]
        assert placeholder or (calls_out and blocked), result["error"]
    else:
        assert result["status"] == "succeeded", result
