"""The Organisation aggregate and the pure parts of its limits (no I/O)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.meta import EventMeta
from domain.organisation import LIMIT_NAMES, Organisation, clean_limits, organisation_id
from infrastructure.org_policy import OrgPolicy
from infrastructure.org_slots import OrgSlots
from infrastructure.problems import Problem
from infrastructure.ratelimit import RateLimitConfig, org_bucket
from write_api.limits import seconds_to_utc_midnight

META = EventMeta(org_id="acme", actor="cli", correlation_id="c")


def test_an_organisation_is_suspended_and_reinstated_once_each() -> None:
    org = Organisation.create(org_id="acme", name="", limits={}, meta=META)
    assert org.id == organisation_id("acme") and org.name == "acme" and not org.suspended
    assert org.suspend("unpaid", META) and org.suspended and org.suspended_reason == "unpaid"
    assert not org.suspend("again", META)  # nothing to record
    assert org.reinstate(META) and not org.suspended
    assert not org.reinstate(META)
    assert [type(e).__name__ for e in org.collect_events()] == [
        "Created",
        "Suspended",
        "Reinstated",
    ]


def test_limits_replace_and_unknown_ones_are_refused() -> None:
    org = Organisation.create(org_id="acme", name="A", limits={"max_workflows": 3}, meta=META)
    assert org.change_limits({"sync_runs": 2, "max_workflows": None}, META)
    assert org.limits == {"sync_runs": 2}
    assert not org.change_limits({"sync_runs": 2}, META)
    with pytest.raises(ValueError, match="unknown limits"):
        clean_limits({"bogus": 1})


@given(
    st.dictionaries(
        st.sampled_from(LIMIT_NAMES), st.one_of(st.none(), st.integers(min_value=1)), max_size=7
    )
)
def test_clean_limits_keeps_exactly_the_set_ones(limits: dict[str, int | None]) -> None:
    cleaned = clean_limits(limits)
    assert cleaned == {k: v for k, v in limits.items() if v is not None}
    assert list(cleaned) == [name for name in LIMIT_NAMES if name in cleaned]


def test_the_aggregate_id_follows_from_the_org_id() -> None:
    assert organisation_id("acme") == organisation_id("acme") != organisation_id("acme2")
    assert isinstance(organisation_id("acme"), uuid.UUID)


def test_a_suspended_policy_refuses_with_its_problem() -> None:
    OrgPolicy("acme").ensure_active()
    with pytest.raises(Problem) as refused:
        OrgPolicy("acme", suspended=True, suspended_reason="unpaid").ensure_active()
    assert refused.value.status == 403 and refused.value.type.endswith("organisation-suspended")


def test_the_organisations_bucket_overrides_the_global_one_field_by_field() -> None:
    config = RateLimitConfig(write_per_s=50, write_burst=100, read_per_s=0, read_burst=0)
    assert org_bucket(None, "write", config) == ((50.0, 100), "the global limit")
    own = OrgPolicy("acme", limits={"write_burst": 5, "read_per_s": 1, "read_burst": 2})
    assert org_bucket(own, "write", config) == ((50.0, 5), "the organisation's own limit")
    # Unlimited globally, limited for this organisation.
    assert org_bucket(own, "read", config) == ((1.0, 2), "the organisation's own limit")
    assert org_bucket(None, "read", config) == (None, "the global limit")


def test_an_organisations_own_slot_cap_overrides_the_global_one() -> None:
    slots = OrgSlots(4, "sync runs", "REPORUNNER_SYNC_RUNS_PER_ORG")
    with slots.hold("acme", 1):
        assert not slots.has_room("acme", 1) and slots.has_room("acme")
        with pytest.raises(Problem) as refused, slots.hold("acme", 1):
            pass
        assert "organisation's own limit" in refused.value.detail
        with slots.hold("acme"):  # the global cap of 4 has room
            pass


def test_retry_after_reaches_the_next_utc_midnight() -> None:
    from datetime import UTC, datetime

    assert seconds_to_utc_midnight(datetime(2026, 12, 2, 23, 59, 30, tzinfo=UTC)) == 30
    assert seconds_to_utc_midnight(datetime(2026, 12, 2, 0, 0, 0, tzinfo=UTC)) == 86400
