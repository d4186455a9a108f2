"""A time-travel read (``?version=``, ``?as_of=``) refuses a malformed X-Min-Position too.

It reads the log, so it never waits; but a header the document says is an
integer is checked on every read (schemathesis found this one answered 200).
"""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import workflow_body


@pytest.mark.parametrize("query", ["version=1", "as_of=2999-01-01T00:00:00Z"])
def test_a_malformed_min_position_is_400_on_time_travel_reads(
    client: httpx.Client, owner: dict[str, str], query: str
) -> None:
    created = client.post("/v1/workflows", json=workflow_body("tt"), headers=owner)
    assert created.status_code == 201, created.text
    url = f"/v1/workflows/{created.json()['id']}?{query}"
    bad = client.get(url, headers={**owner, "X-Min-Position": ";k.#s6gb"})
    assert bad.status_code == 400, bad.text
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert "X-Min-Position" in bad.json()["detail"]
    assert client.get(url, headers={**owner, "X-Min-Position": "1"}).status_code == 200
