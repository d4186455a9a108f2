"""Webhook auth and dedupe decisions (domain/webhooks.py), without I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.webhooks import (
    Dedupe,
    WebhookRefused,
    check_hook_path,
    check_signature,
    check_token,
    hash_token,
    json_path,
    sign,
)

SECRET = b"s3cret"
NOW = 1_800_000_000


def test_token_is_checked_against_its_hash() -> None:
    stored = hash_token("tok-123")
    assert stored != "tok-123"
    check_token("tok-123", stored)
    with pytest.raises(WebhookRefused, match="wrong"):
        check_token("tok-124", stored)
    with pytest.raises(WebhookRefused, match="missing"):
        check_token(None, stored)


def test_a_signed_body_passes() -> None:
    body = b'{"event": {"id": "e1"}}'
    check_signature(
        SECRET, body, signature=sign(SECRET, NOW, body), timestamp=str(NOW), now=NOW + 5
    )


@pytest.mark.parametrize(
    ("signature", "timestamp", "now", "reason"),
    [
        (None, str(NOW), NOW, "signature header is missing"),
        ("sha256=00", None, NOW, "timestamp header is missing"),
        ("sha256=00", "١٢٣", NOW, "Unix seconds"),
        ("sha256=00", "-5", NOW, "Unix seconds"),
        (sign(SECRET, NOW, b"body"), str(NOW), NOW + 301, "from the server's clock"),
        (sign(SECRET, NOW, b"body"), str(NOW), NOW - 301, "from the server's clock"),
        (sign(SECRET, NOW, b"other body"), str(NOW), NOW, "does not match"),
        (sign(b"other secret", NOW, b"body"), str(NOW), NOW, "does not match"),
        # The timestamp is signed too: moving it forward breaks the signature.
        (sign(SECRET, NOW, b"body"), str(NOW + 1), NOW, "does not match"),
    ],
)
def test_bad_signatures_are_refused(
    signature: str | None, timestamp: str | None, now: int, reason: str
) -> None:
    with pytest.raises(WebhookRefused, match=reason):
        check_signature(SECRET, b"body", signature=signature, timestamp=timestamp, now=now)


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_only_the_signed_body_passes(signed: bytes, sent: bytes) -> None:
    signature = sign(SECRET, NOW, signed)
    if signed == sent:
        check_signature(SECRET, sent, signature=signature, timestamp=str(NOW), now=NOW)
    else:
        with pytest.raises(WebhookRefused):
            check_signature(SECRET, sent, signature=signature, timestamp=str(NOW), now=NOW)


@pytest.mark.parametrize("path", ["orders", "stripe/events", "a-b_c/1/2"])
def test_good_hook_paths(path: str) -> None:
    assert check_hook_path(path) is None


@pytest.mark.parametrize(
    "path", ["", "/orders", "orders/", "a//b", "a b", "ü", "../x", 5, "a/" * 9]
)
def test_bad_hook_paths(path: object) -> None:
    assert check_hook_path(path) is not None


def test_json_path() -> None:
    body = {"event": {"id": "e1", "items": [{"n": 3}]}}
    assert json_path(body, "$.event.id") == "e1"
    assert json_path(body, "$.event.items[0].n") == 3
    assert json_path(body, "$.event.items[1].n") is None
    assert json_path(body, "$.missing.id") is None
    assert json_path([1], "$.a") is None
    with pytest.raises(ValueError):
        json_path(body, "event.id")


def test_dedupe_keys() -> None:
    headers = {"idempotency-key": "k-1"}
    assert Dedupe("header").key(headers, None) == "k-1"
    assert Dedupe("header").key({}, None) is None
    by_id = Dedupe("body", "$.event.id")
    assert by_id.key({}, {"event": {"id": "e1"}}) == "e1"
    assert by_id.key({}, {"event": {"id": 42}}) == "42"
    assert by_id.key({}, {"event": {"id": {"nested": 1}}}) is None
    assert by_id.key({}, "not json") is None
    with pytest.raises(WebhookRefused):
        by_id.key({}, {"event": {"id": "x" * 256}})
    with pytest.raises(ValueError):
        Dedupe("body", "$..id")
