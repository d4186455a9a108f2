"""Query parameters and headers: a bad value is a 4xx naming it, never a 500.

Non-ASCII digits (which ``int()`` and ``str.isdigit()`` accept), tampered
cursors on every paged list, NUL and out-of-range instants in what reaches SQL.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.values import check_value
from infrastructure.problems import Problem
from read_api.params import CursorKey, decode_cursor, encode_cursor
from tests.helpers import workflow_body

pytestmark = pytest.mark.usefixtures("live_projector")


def _problem(answer: httpx.Response, status: int, names: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert names in body["detail"], body
    return body


@pytest.fixture
def workflow(client: httpx.Client, owner: dict[str, str]) -> dict[str, Any]:
    created = client.post("/v1/workflows", json=workflow_body(name="p"), headers=owner)
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    # Wait for the views, so list endpoints see it (versions 404 without it).
    seen = client.get(
        f"/v1/workflows/{body['id']}",
        headers={**owner, "X-Min-Position": str(body["position"])},
    )
    assert seen.status_code == 200, seen.text
    return body


def _reads(workflow_id: str) -> list[str]:
    """Every read endpoint that waits on X-Min-Position."""
    return [
        "/v1/workflows",
        f"/v1/workflows/{workflow_id}",
        f"/v1/workflows/{workflow_id}/versions",
        f"/v1/workflows/{workflow_id}/versions/1",
        "/v1/executions",
        f"/v1/workflows/{workflow_id}/executions",
    ]


# -- X-Min-Position and other positions ---------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\xb2",  # '²' in latin-1, how HTTP headers decode: isdigit() but not int()
        "١٢".encode(),
        "１２".encode(),
        b"-1",
        b"1_0",
        b"1e3",
        b"99999999999999999999",  # past bigint
        b"9" * 5000,  # past int()'s digit limit
        b"",
    ],
)
def test_a_bad_min_position_header_is_400_naming_it(
    client: httpx.Client, owner: dict[str, str], workflow: dict[str, Any], raw: bytes
) -> None:
    for path in _reads(workflow["id"]):
        answer = client.get(path, headers={**owner, "X-Min-Position": raw})  # type: ignore[dict-item]
        body = _problem(answer, 400, "X-Min-Position")
        assert body["type"].endswith("/bad-position"), path


def test_a_good_min_position_header_still_reads(
    client: httpx.Client, owner: dict[str, str], workflow: dict[str, Any]
) -> None:
    answer = client.get(
        "/v1/workflows", headers={**owner, "X-Min-Position": str(workflow["position"])}
    )
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("raw", ["١٢", "²", "-1", "99999999999999999999"])
def test_bad_position_query_parameters_are_4xx_naming_them(
    client: httpx.Client, owner: dict[str, str], workflow: dict[str, Any], raw: str
) -> None:
    _problem(
        client.get("/v1/workflows", params={"min_position": raw}, headers=owner),
        422,
        "min_position",
    )
    _problem(
        client.get("/v1/audit/events", params={"after_position": raw}, headers=owner),
        422,
        "after_position",
    )
    _problem(
        client.get(f"/v1/workflows/{workflow['id']}", params={"version": raw}, headers=owner),
        422,
        "version",
    )


@pytest.mark.parametrize("raw", ["²", "١٢", "１２", "-1", "x", "99999999999999999999", "1" * 5000])
def test_a_bad_history_cursor_is_400_naming_it(
    client: httpx.Client, owner: dict[str, str], workflow: dict[str, Any], raw: str
) -> None:
    answer = client.get(
        f"/v1/workflows/{workflow['id']}/history", params={"cursor": raw}, headers=owner
    )
    _problem(answer, 400, "cursor")


# -- tampered list cursors -------------------------------------------------------------------


def _b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_INSTANTS = [
    "0000-01-01T00:00:00+00:00",
    "10000-01-01T00:00:00+00:00",
    "0001-01-01T00:00:00+14:00",  # no UTC form
    "9999-12-31T23:59:59-14:00",
    "2026-01-01T00:00:00",  # no offset
    "2026-01-01\x00",
    123,
    None,
]
# Bad whatever the sort keys are.
_GARBAGE = [
    "!!!!",
    "a",
    "é",
    "A" * 10_000,
    _b64(b"not json"),
    _b64(b'["\\ud800", "x"]'),  # a lone surrogate: orjson refuses it
    _b64({"a": 1}),
    _b64([]),
    _b64(["2026-01-01T00:00:00+00:00"]),  # too short
    _b64(["2026-01-01T00:00:00+00:00", "a", "b"]),  # too long
    _b64(["2026-01-01T00:00:00+00:00", 7]),  # _id not a string
    _b64(["2026-01-01T00:00:00+00:00", "a\x00b"]),  # NUL in _id
]
# Cursors over a timestamp sort key (created_at, updated_at).
_TAMPERED_INSTANT = [_b64([instant, "x"]) for instant in _INSTANTS]
# Cursors over a JSON sort key (a document field, compared as jsonb).
_TAMPERED_JSON = [
    _b64(["a\x00b", "x"]),
    _b64([{"k\x00": 1}, "x"]),
    _b64(b'[18446744073709551616, "x"]'),  # orjson reads a float too big for an int64
    _b64(b"[" + b"[" * 70 + b"1" + b"]" * 70 + b', "x"]'),  # nested past the depth limit
    _b64(["name", 1, "x"]),
]


def _lists(workflow_id: str) -> list[tuple[str, dict[str, str], list[str]]]:
    """Every keyset-paged list, the sort it is asked for, and its tampered cursors."""
    by_instant, by_json = [*_GARBAGE, *_TAMPERED_INSTANT], [*_GARBAGE, *_TAMPERED_JSON]
    return [
        ("/v1/workflows", {}, by_instant),
        ("/v1/workflows", {"sort": "name"}, by_json),
        ("/v1/executions", {}, by_instant),
        ("/v1/executions", {"sort": "status"}, by_json),
        (f"/v1/workflows/{workflow_id}/executions", {}, by_instant),
        (f"/v1/workflows/{workflow_id}/versions", {}, by_json),
    ]


def test_a_tampered_cursor_is_400_on_every_paged_list(
    client: httpx.Client, owner: dict[str, str], workflow: dict[str, Any]
) -> None:
    for path, params, cursors in _lists(workflow["id"]):
        for cursor in cursors:
            answer = client.get(path, params={**params, "cursor": cursor}, headers=owner)
            body = _problem(answer, 400, "cursor")
            assert body["type"].endswith("/bad-cursor"), (path, params, cursor)


def test_the_cursors_the_lists_return_still_page(
    client: httpx.Client, owner: dict[str, str], workflow: dict[str, Any]
) -> None:
    for _ in range(2):
        created = client.post("/v1/workflows", json=workflow_body(name="p"), headers=owner)
    fresh = {**owner, "X-Min-Position": str(created.json()["position"])}
    for params in ({}, {"sort": "name"}, {"sort": "-created_at,name"}):
        first = client.get("/v1/workflows", params={**params, "limit": 1}, headers=fresh)
        assert first.status_code == 200, first.text
        cursor = first.json()["next_cursor"]
        assert cursor is not None
        second = client.get(
            "/v1/workflows", params={**params, "limit": 1, "cursor": cursor}, headers=owner
        )
        assert second.status_code == 200, second.text


@given(
    values=st.lists(
        st.one_of(st.text(), st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none()),
        max_size=3,
    ),
    last_id=st.text(),
)
def test_decode_cursor_reads_back_what_encode_cursor_wrote_or_refuses_it(
    values: list[Any], last_id: str
) -> None:
    keys = [CursorKey.JSON] * len(values)
    cursor = encode_cursor([*values, last_id])
    if check_value([*values, last_id]):  # e.g. a NUL: refused, as the database would
        with pytest.raises(Problem) as refused:
            decode_cursor(cursor, keys)
        assert refused.value.status == 400
    else:
        assert decode_cursor(cursor, keys) == (values, last_id)


# -- NUL and instants in what reaches SQL --------------------------------------------------


@pytest.mark.parametrize(
    ("params", "status", "names"),
    [
        ({"actor": "\x00"}, 400, "actor"),
        ({"actor": "a\x00b"}, 400, "actor"),
        ({"type": "Workflow.Created\x00"}, 400, "type"),
        ({"actor": "a" * 5000}, 400, "actor"),
        ({"aggregate_id": "\x00"}, 422, "aggregate_id"),
        ({"since": "\x00"}, 400, "since"),
        ({"until": "2026-01-01T00:00:00+00:00\x00"}, 400, "until"),
        ({"since": "0001-01-01T00:00:00+14:00"}, 400, "since"),
        ({"until": "9999-12-31T23:59:59-14:00"}, 400, "until"),
    ],
)
def test_audit_event_filters_refuse_what_sql_cannot_take(
    client: httpx.Client, owner: dict[str, str], params: dict[str, str], status: int, names: str
) -> None:
    _problem(client.get("/v1/audit/events", params=params, headers=owner), status, names)


def test_audit_event_filters_still_filter(
    client: httpx.Client, owner: dict[str, str], workflow: dict[str, Any]
) -> None:
    answer = client.get(
        "/v1/audit/events", params={"type": "Workflow.Created", "actor": "nobody"}, headers=owner
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == []


@pytest.mark.parametrize(
    "as_of", ["0001-01-01T00:00:00+14:00", "2026-01-01T00:00:00+00:00\x00", "١٢"]
)
def test_time_travel_refuses_an_instant_sql_cannot_take(
    client: httpx.Client, owner: dict[str, str], workflow: dict[str, Any], as_of: str
) -> None:
    answer = client.get(f"/v1/workflows/{workflow['id']}", params={"as_of": as_of}, headers=owner)
    _problem(answer, 400, "as_of")


@pytest.mark.parametrize("if_match", ['"١٢"', "١٢", '"²"'])
def test_if_match_takes_ascii_digits_only(
    client: httpx.Client, owner: dict[str, str], workflow: dict[str, Any], if_match: str
) -> None:
    answer = client.delete(
        f"/v1/workflows/{workflow['id']}",
        headers={**owner, "If-Match": if_match.encode()},  # type: ignore[dict-item]
    )
    _problem(answer, 400, "If-Match")
