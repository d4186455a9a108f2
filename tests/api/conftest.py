from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client


@pytest.fixture
def owner(org: str, make_key: Callable[[str, str], str]) -> dict[str, str]:
    """Auth headers of an owner of this test's organisation."""
    return {"Authorization": f"Bearer {make_key(org, 'owner')}"}
