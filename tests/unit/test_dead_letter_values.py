"""What a dead letter and a stale marker keep: pure functions, no I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from projections.dead_letters import describe, event_name, stale_marker, storable


def test_the_marker_holds_only_what_the_log_and_the_code_decide() -> None:
    error = describe(TypeError("Integer exceeds 64-bit range"))
    marker = stale_marker(1234, "domain.workflow:Workflow.Updated", error)
    assert marker == {
        "position": 1234,
        "event": "Workflow.Updated",
        "error": "TypeError: Integer exceeds 64-bit range",
    }
    assert marker == stale_marker(1234, "domain.workflow:Workflow.Updated", error)


def test_event_names_come_from_the_stored_topic() -> None:
    assert event_name("domain.execution:Execution.Queued") == "Execution.Queued"
    assert event_name("no-module") == "no-module"


@given(st.text())
def test_any_error_text_is_storable_as_postgresql_text(text: str) -> None:
    stored = storable(text)
    assert "\x00" not in stored
    stored.encode("utf-8")  # no lone surrogate: PostgreSQL's UTF-8 takes it
    assert len(describe(ValueError(text * 1000))) <= 2000
