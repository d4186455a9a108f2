"""The bounded labels metrics use for a request's outcome."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from infrastructure.metrics import command_outcome, webhook_outcome


def test_command_outcomes_name_the_answers_that_matter() -> None:
    assert [command_outcome(s) for s in (200, 201, 202, 204)] == ["ok"] * 4
    assert command_outcome(409) == "conflict"
    assert command_outcome(410) == "gone"
    assert command_outcome(422) == "invalid"
    assert command_outcome(400) == "bad_request"
    assert command_outcome(404) == "not_found"
    assert command_outcome(429) == "rate_limited"
    assert command_outcome(503) == "error"


def test_webhook_outcomes() -> None:
    assert webhook_outcome(202) == "accepted" and webhook_outcome(204) == "accepted"
    assert webhook_outcome(401) == "refused"
    assert webhook_outcome(404) == "not_found"
    assert webhook_outcome(422) == "invalid" and webhook_outcome(413) == "invalid"
    assert webhook_outcome(500) == "error"


@given(st.integers(min_value=100, max_value=599))
def test_outcome_labels_stay_few_whatever_the_status(status: int) -> None:
    # A label per status code would be bounded too, but these are what alerts read.
    assert command_outcome(status) in {
        "ok",
        "bad_request",
        "denied",
        "not_found",
        "conflict",
        "gone",
        "too_large",
        "invalid",
        "precondition_required",
        "rate_limited",
        "rejected",
        "error",
    }
    assert webhook_outcome(status) in {
        "accepted",
        "refused",
        "not_found",
        "invalid",
        "rate_limited",
        "error",
    }


def test_the_snapshot_reads_the_log_table_the_event_store_writes() -> None:
    from infrastructure.eventstore import EVENTS_TABLE
    from infrastructure.metrics import _SNAPSHOT_SQL

    assert f"FROM {EVENTS_TABLE})" in str(_SNAPSHOT_SQL)
