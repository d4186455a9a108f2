"""The audit chain's pure formats: canonical bytes, links, signatures, export lines."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

from infrastructure.audit import (
    EXPORT_FORMAT,
    GENESIS_LINK,
    ExportWriter,
    canonical_event_bytes,
    checkpoint_message,
    export_fields,
    head_message,
    key_bytes,
    next_link,
    open_line,
    seal_line,
    sign,
    signature_ok,
    verify_export,
    verify_export_lines,
)

KEY = b"unit-test-key"
ORIGINATOR = uuid.UUID("12345678-1234-5678-1234-567812345678")
TOPIC = b"domain.workflow:Workflow.Created"
STATE = b'{"name":"wf","meta":{"org_id":"acme"}}'


# -- canonical bytes and links ----------------------------------------------------------


def test_canonical_bytes_are_the_documented_framing() -> None:
    canonical = canonical_event_bytes(7, ORIGINATOR.bytes, 3, TOPIC, STATE)
    expected = (
        struct.pack(">q", 7)
        + ORIGINATOR.bytes
        + struct.pack(">q", 3)
        + struct.pack(">q", len(TOPIC))
        + TOPIC
        + struct.pack(">q", len(STATE))
        + STATE
    )
    assert canonical == expected


def test_null_columns_differ_from_empty_ones() -> None:
    def canonical(topic: bytes | None, state: bytes | None) -> bytes:
        return canonical_event_bytes(1, ORIGINATOR.bytes, 1, topic, state)

    assert (
        len(
            {canonical(None, None), canonical(b"", b""), canonical(None, b""), canonical(b"", None)}
        )
        == 4
    )


def test_bytes_moved_between_topic_and_state_change_the_encoding() -> None:
    # Without length prefixes these two would concatenate to the same bytes.
    assert canonical_event_bytes(1, ORIGINATOR.bytes, 1, b"ab", b"c") != canonical_event_bytes(
        1, ORIGINATOR.bytes, 1, b"a", b"bc"
    )


@pytest.mark.parametrize(
    "changed",
    [
        {"position": 8},
        {"originator_id": uuid.UUID(int=ORIGINATOR.int + 1).bytes},
        {"version": 4},
        {"topic": b"domain.workflow:Workflow.Updated"},
        {"state": STATE.replace(b"acme", b"acmf")},
        {"topic": None},
        {"state": None},
    ],
)
def test_every_stored_column_is_in_the_link(changed: dict[str, Any]) -> None:
    row: dict[str, Any] = {
        "position": 7,
        "originator_id": ORIGINATOR.bytes,
        "version": 3,
        "topic": TOPIC,
        "state": STATE,
    }
    original = next_link(GENESIS_LINK, canonical_event_bytes(**row))
    assert next_link(GENESIS_LINK, canonical_event_bytes(**(row | changed))) != original


def test_a_link_hashes_the_previous_link_and_the_canonical_bytes() -> None:
    canonical = canonical_event_bytes(1, ORIGINATOR.bytes, 1, TOPIC, STATE)
    assert bytes(32) == GENESIS_LINK
    first = next_link(GENESIS_LINK, canonical)
    assert first == hashlib.sha256(bytes(32) + canonical).digest()
    # Pinned: a change of format must be deliberate (old chains would stop verifying).
    assert first.hex() == "5f9cfa005ed53e86a3f3a3f5ee7676e1b8adf946222e2b0188cb6ee7b4ed36c4"
    assert next_link(first, canonical) != first


def test_an_originator_id_must_be_sixteen_bytes() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        canonical_event_bytes(1, b"short", 1, TOPIC, STATE)


# -- signatures ------------------------------------------------------------------------


def test_signatures_need_the_key_and_the_same_fields() -> None:
    link = next_link(GENESIS_LINK, b"x")
    signature = sign(KEY, checkpoint_message(10, 10, link))
    assert signature == hmac.digest(KEY, checkpoint_message(10, 10, link), "sha256")
    assert signature_ok(KEY, checkpoint_message(10, 10, link), signature)
    assert not signature_ok(b"another key", checkpoint_message(10, 10, link), signature)
    assert not signature_ok(KEY, checkpoint_message(11, 10, link), signature)
    assert not signature_ok(KEY, checkpoint_message(10, 9, link), signature)
    assert not signature_ok(KEY, checkpoint_message(10, 10, GENESIS_LINK), signature)
    assert not signature_ok(KEY, checkpoint_message(10, 10, link), None)


def test_a_checkpoint_signature_does_not_pass_for_a_head() -> None:
    link = next_link(GENESIS_LINK, b"x")
    signature = sign(KEY, checkpoint_message(10, 10, link))
    assert not signature_ok(KEY, head_message(10, 10, link), signature)


def test_an_empty_key_setting_means_no_key() -> None:
    assert key_bytes(None) is None
    assert key_bytes("") is None
    assert key_bytes("s3cret") == b"s3cret"


# -- export lines ----------------------------------------------------------------------


def _state(org: str, at: str, **data: Any) -> dict[str, Any]:
    return {
        "timestamp": {"_type_": "datetime_iso", "_data_": at},
        "originator_topic": "domain.workflow:Workflow",
        "meta": {"org_id": org, "actor": "apikey:a", "correlation_id": "c-1"},
        **data,
    }


def _fields(position: int, at: str = "2026-11-26T10:00:00+00:00", **data: Any) -> dict[str, Any]:
    return export_fields(
        position,
        ORIGINATOR,
        position,
        "domain.workflow:Workflow.Updated",
        _state("acme", at, **data),
        next_link(GENESIS_LINK, bytes([position])),
    )


def _export(key: bytes | None = KEY, events: int = 3, **about: Any) -> bytes:
    out = io.BytesIO()
    writer = ExportWriter(out, key)
    for number in range(1, events + 1):
        writer.write_event(_fields(number * 10, f"2026-11-26T10:0{number}:00+00:00", n=number))
    writer.finish(
        org_id="acme",
        since=about.get("since"),
        until=about.get("until"),
        chained_upto=100,
        exported_at="2026-11-27T00:00:00+00:00",
    )
    return out.getvalue()


def _check(content: bytes, key: bytes | None = KEY) -> Any:
    return verify_export_lines(io.BytesIO(content), key)


def test_an_event_line_is_sorted_json_then_its_seal() -> None:
    fields = _fields(10, big=2**80, text="é\n\u0000")
    line, seal = seal_line(fields, GENESIS_LINK)
    parsed = json.loads(line)
    assert parsed.pop("seal") == seal.hex()
    assert parsed == fields
    assert parsed["data"]["big"] == 2**80  # exact, not a float
    assert parsed["type"] == "Workflow.Updated"
    assert parsed["timestamp"] == "2026-11-26T10:00:00+00:00"
    assert (parsed["org_id"], parsed["actor"], parsed["correlation_id"]) == (
        "acme",
        "apikey:a",
        "c-1",
    )
    assert list(json.loads(line)) == [*sorted(fields), "seal"]
    body, claimed = open_line(line)
    assert (
        body
        == json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert claimed == seal.hex().encode()
    assert seal == hashlib.sha256(GENESIS_LINK + body).digest()


def test_a_manifest_closes_the_export_and_is_signed() -> None:
    content = _export()
    lines = content.splitlines(keepends=True)
    manifest_line = json.loads(lines[-1])
    manifest = manifest_line["manifest"]
    assert manifest["format"] == EXPORT_FORMAT
    assert (manifest["count"], manifest["first_position"], manifest["last_position"]) == (3, 10, 30)
    assert manifest["chain_head"] == json.loads(lines[-2])["link"]
    digest = hashlib.sha256(b"".join(lines[:-1])).digest()
    assert manifest["lines_sha256"] == digest.hex()
    expected = hmac.digest(
        KEY,
        b"reporunner.audit.export.v1\0"
        + json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        + digest,
        "sha256",
    )
    assert manifest_line["hmac"] == expected.hex()


def test_an_intact_export_verifies() -> None:
    result = _check(_export())
    assert result.ok and result.signed and result.count == 3 and result.org_id == "acme"


def test_an_empty_export_verifies() -> None:
    result = _check(_export(events=0))
    assert result.ok and result.count == 0


def test_verify_export_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "acme.jsonl"
    path.write_bytes(_export())
    assert verify_export(path, KEY.decode()).ok
    assert not verify_export(path, "another key").ok


@pytest.mark.parametrize("flip", [0x01, 0x20, 0x80])
def test_any_edited_byte_fails_at_its_line(flip: int) -> None:
    content = _export()
    for index in range(len(content)):
        edited = bytearray(content)
        edited[index] ^= flip
        result = _check(bytes(edited))
        line = content.count(b"\n", 0, index) + 1
        assert not result.ok, f"edit at byte {index} passed"
        assert result.line == line, (index, result)


def test_reordered_lines_fail_where_the_order_breaks() -> None:
    lines = _export().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    result = _check(b"".join(lines))
    assert not result.ok and result.line == 2 and "seal" in (result.reason or "")


def test_a_removed_line_fails() -> None:
    lines = _export().splitlines(keepends=True)
    del lines[1]
    result = _check(b"".join(lines))
    assert not result.ok and result.line == 2


def test_a_truncated_file_fails() -> None:
    content = _export()
    lines = content.splitlines(keepends=True)
    at_a_line_end = _check(b"".join(lines[:-1]))
    assert not at_a_line_end.ok and at_a_line_end.line == 4
    assert "truncated" in (at_a_line_end.reason or "")
    mid_line = _check(content[: len(lines[0]) + 30])
    assert not mid_line.ok and mid_line.line == 2
    assert not _check(content[:-1]).ok  # only the final newline gone


def test_content_after_the_manifest_fails() -> None:
    lines = _export().splitlines(keepends=True)
    result = _check(b"".join([*lines, lines[0]]))
    assert not result.ok and result.line == 5


def test_the_wrong_key_fails_at_the_manifest() -> None:
    result = _check(_export(), b"another key")
    assert not result.ok and result.line == 4 and "signature" in (result.reason or "")


def test_without_a_key_only_accidents_are_ruled_out() -> None:
    result = _check(_export(), None)
    assert result.ok and not result.signed and "not checked" in (result.warning or "")
    # An unsigned export checked with a key is refused.
    unsigned = _export(key=None)
    assert _check(unsigned, None).ok
    refused = _check(unsigned)
    assert not refused.ok and "unsigned" in (refused.reason or "")


def test_a_manifest_rewritten_with_its_lines_needs_the_key() -> None:
    """Re-sealing every line and re-digesting is possible without the key; the HMAC is not."""
    lines = _export().splitlines(keepends=True)
    forged = io.BytesIO()
    writer = ExportWriter(forged, b"a guessed key")
    for line in lines[:-1]:
        body, _ = open_line(line)
        fields = json.loads(body)
        fields["actor"] = "apikey:someone-else"
        writer.write_event(fields)
    manifest = json.loads(lines[-1])["manifest"]
    writer.finish(
        **{k: manifest[k] for k in ("org_id", "since", "until", "chained_upto", "exported_at")}
    )
    result = _check(forged.getvalue())
    assert not result.ok and result.line == 4


def test_events_must_lie_within_since_and_until() -> None:
    inside = _export(since="2026-11-26T10:01:00+00:00", until="2026-11-26T10:04:00+00:00")
    assert _check(inside).ok
    # A writer that let an earlier event through is caught at that event's line.
    too_early = _check(_export(since="2026-11-26T10:02:00+00:00"))
    assert not too_early.ok and too_early.line == 1
    too_late = _check(_export(until="2026-11-26T10:03:00+00:00"))
    assert not too_late.ok and too_late.line == 3
