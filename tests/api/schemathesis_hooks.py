"""schemathesis hooks for tests/api/test_contract.py (loaded by its config file)."""

from __future__ import annotations

import itertools
import re
from typing import Any

import schemathesis

_VALID_KEY = re.compile(r"^[!-~]{1,255}$")
_keys = itertools.count()


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """A fresh valid Idempotency-Key per request (an invalid one stays, to be refused).

    schemathesis draws the same few keys again and again, so most keyed
    requests would be 422 idempotency-key-reused (a key sent with another
    request) and never reach the command; replays are tested in
    tests/api/test_workflow_commands.py.
    """
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and _VALID_KEY.match(key):
        headers["Idempotency-Key"] = f"contract-{next(_keys)}"
