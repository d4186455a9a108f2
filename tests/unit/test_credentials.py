"""Credentials without I/O: the secret rules, sealing, how a secret is applied, the doors."""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands.credentials import (
    OpenCredential,
    apply_credential,
    credential_fingerprint,
    secret_context,
)
from domain.credentials import SECRET_FIELDS, check_name, check_secret
from domain.definition import validate_definition
from domain.engine import HttpRequest, compile_plan
from domain.errors import WorkflowInvalid
from domain.webhooks import check_signature
from infrastructure.crypto import SealBroken
from infrastructure.keyring import DataKey
from infrastructure.sealing import open_value, seal_value

# What the rules admit: visible text without control characters (not ':' in a user name).
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=64)
_header_names = st.from_regex(r"[A-Za-z0-9-]{1,32}", fullmatch=True)


@st.composite
def _secrets(draw: Any) -> tuple[str, dict[str, str]]:
    kind = draw(st.sampled_from(sorted(SECRET_FIELDS)))
    secret = {field: draw(_text) for field in SECRET_FIELDS[kind]}
    if kind == "header":
        secret["name"] = draw(_header_names)
    if kind == "basic":
        secret["username"] = secret["username"].replace(":", "") or "u"
    return kind, secret


def _key() -> DataKey:
    return DataKey(str(uuid.uuid4()), os.urandom(32))


@given(_secrets())
def test_every_admitted_secret_seals_opens_and_applies_without_injecting_headers(
    made: tuple[str, dict[str, str]],
) -> None:
    kind, secret = made
    assert check_secret(kind, secret) == []
    key, context = _key(), secret_context("org-a", uuid.uuid4())
    sealed = seal_value(secret, [key], context)
    assert open_value(sealed, [key], context) == secret
    request = HttpRequest("POST", "http://h/x", {"authorization": "old"}, {"n": 1}, 1000, "id")
    applied = apply_credential(request, OpenCredential(kind, secret), now=1_700_000_000)
    for name, value in applied.headers.items():
        assert "\r" not in value and "\n" not in value and "\x00" not in value, name
    if kind in ("bearer", "basic"):
        # The credential's Authorization replaces the node's own, whatever its case.
        assert [n for n in applied.headers if n.lower() == "authorization"] == ["Authorization"]


def test_a_sealed_secret_opens_only_where_it_belongs() -> None:
    key = _key()
    sealed = seal_value({"token": "t"}, [key], secret_context("org-a", "c1"))
    for elsewhere in (secret_context("org-b", "c1"), secret_context("org-a", "c2")):
        with pytest.raises(SealBroken):
            open_value(sealed, [key], elsewhere)


def test_each_type_is_applied_as_documented() -> None:
    request = HttpRequest("POST", "http://h/x", {"X-Trace": "1"}, {"a": [1, 2]}, 1000, "id")

    def headers(kind: str, secret: dict[str, str]) -> dict[str, str]:
        applied = apply_credential(request, OpenCredential(kind, secret), now=1_700_000_000.7)
        return dict(applied.headers)

    assert headers("bearer", {"token": "t0k"}) == {"X-Trace": "1", "Authorization": "Bearer t0k"}
    basic = headers("basic", {"username": "u", "password": "p:w"})
    assert base64.b64decode(basic["Authorization"].removeprefix("Basic ")) == b"u:p:w"
    assert headers("header", {"name": "x-trace", "value": "v"}) == {"x-trace": "v"}
    signed = headers("hmac_secret", {"secret": "s3"})
    assert signed["X-Webhook-Timestamp"] == "1700000000"
    # Our own hooks accept the signature: the body bytes are the ones sent.
    check_signature(
        b"s3",
        b'{"a": [1, 2]}',
        signature=signed["X-Webhook-Signature"],
        timestamp=signed["X-Webhook-Timestamp"],
        now=1_700_000_000,
    )


def test_a_fingerprint_is_keyed_stable_and_tells_secrets_apart() -> None:
    key, other = _key(), _key()
    one = credential_fingerprint(key, "basic", {"username": "u", "password": "hunter2"})
    assert one == credential_fingerprint(key, "basic", {"password": "hunter2", "username": "u"})
    assert one != credential_fingerprint(key, "basic", {"username": "u", "password": "hunter3"})
    assert one != credential_fingerprint(other, "basic", {"username": "u", "password": "hunter2"})


@pytest.mark.parametrize(
    ("kind", "secret", "loc"),
    [
        ("bearer", {}, "secret.token"),
        ("bearer", {"token": ""}, "secret.token"),
        ("bearer", {"token": "a\nb"}, "secret.token"),
        ("bearer", {"token": "x" * 4097}, "secret.token"),
        ("bearer", {"token": "t", "more": "m"}, "secret.more"),
        ("header", {"name": "a b", "value": "v"}, "secret.name"),
        ("basic", {"username": "a:b", "password": "p"}, "secret.username"),
        ("oauth", {"token": "t"}, "type"),
        ("hmac_secret", ["s"], "secret"),
    ],
)
def test_a_bad_secret_is_named_without_quoting_it(kind: str, secret: Any, loc: str) -> None:
    problems = check_secret(kind, secret)
    assert [p.loc for p in problems] == [loc]
    assert all("a\nb" not in p.msg and "x" * 20 not in p.msg for p in problems)


@pytest.mark.parametrize("name", ["", "   ", "\x00a", "a" * 201, 3])
def test_a_bad_name_is_refused(name: Any) -> None:
    assert [p.loc for p in check_name(name)] == ["name"]


def _definition(headers: dict[str, str]) -> dict[str, Any]:
    return {
        "name": "w",
        "description": "",
        "nodes": [
            {"id": "start", "type": "manual_trigger", "parameters": {}},
            {
                "id": "call",
                "type": "http_request",
                "parameters": {"url": "http://127.0.0.1/x", "headers": headers},
            },
        ],
        "connections": [{"from": "start", "to": "call"}],
        "tags": [],
        "settings": {},
    }


def test_an_inline_secret_header_is_refused_at_the_door_but_a_stored_one_still_runs() -> None:
    definition = _definition({"X-Api-Key": "sk-live-1"})
    with pytest.raises(WorkflowInvalid) as refused:
        validate_definition(**definition)
    (problem,) = refused.value.problems
    assert problem.loc == "nodes[1].parameters.headers.X-Api-Key"
    assert "/v1/credentials" in problem.msg and "sk-live-1" not in problem.msg
    # A workflow saved before the rule compiles and runs as it did.
    compile_plan(definition)
    validate_definition(**_definition({"X-Trace": "1"}))
