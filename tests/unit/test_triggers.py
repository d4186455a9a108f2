"""Trigger node parameters (domain/triggers.py): what a webhook or schedule trigger accepts."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from domain.triggers import ScheduleTriggerParameters, WebhookTriggerParameters


def test_webhook_defaults() -> None:
    params = WebhookTriggerParameters.model_validate(
        {"path": "orders/new", "auth": {"type": "none"}}
    )
    assert (params.method, params.response, params.dedupe) == ("POST", "immediately", None)


def test_webhook_with_every_option() -> None:
    params = WebhookTriggerParameters.model_validate(
        {
            "path": "stripe",
            "method": "PUT",
            "auth": {
                "type": "hmac_sha256",
                "signature_header": "Stripe-Signature",
                "tolerance_s": 60,
            },
            "response": "when_finished",
            "dedupe": {"source": "body", "path": "$.event.id"},
        }
    )
    assert params.auth.type == "hmac_sha256"
    assert params.auth.signature_header == "stripe-signature"  # type: ignore[union-attr]
    assert params.dedupe is not None
    assert params.dedupe.rule().key({}, {"event": {"id": "evt_1"}}) == "evt_1"


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ({"path": "/x", "auth": {"type": "none"}}, "segments"),
        ({"path": "x"}, "auth"),
        ({"path": "x", "auth": {"type": "basic"}}, "type"),
        ({"path": "x", "auth": {"type": "none"}, "method": "TRACE"}, "method"),
        ({"path": "x", "auth": {"type": "none"}, "response": "later"}, "response"),
        ({"path": "x", "auth": {"type": "header_token", "header": "bad header"}}, "header"),
        (
            {"path": "x", "auth": {"type": "none"}, "dedupe": {"source": "body", "path": "$..id"}},
            "dedupe",
        ),
        ({"path": "x", "auth": {"type": "none"}, "secret": "s"}, "secret"),
    ],
)
def test_webhook_refusals(parameters: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as raised:
        WebhookTriggerParameters.model_validate(parameters)
    assert fragment in str(raised.value)


def test_schedule_parameters_build_a_schedule() -> None:
    params = ScheduleTriggerParameters.model_validate(
        {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin", "overlap": "buffer_one"}
    )
    schedule = params.schedule()
    assert (schedule.cron, schedule.timezone, schedule.overlap) == (
        "0 9 * * 1-5",
        "Europe/Berlin",
        "buffer_one",
    )


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ({}, "exactly one"),
        ({"cron": "* * *"}, "five fields"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": "5"}, "interval_s"),
        ({"interval_s": 5, "timezone": "Nowhere/City"}, "time zone"),
        ({"interval_s": 5, "catch_up": "run_some"}, "catch_up"),
    ],
)
def test_schedule_refusals(parameters: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as raised:
        ScheduleTriggerParameters.model_validate(parameters)
    assert fragment in str(raised.value)
