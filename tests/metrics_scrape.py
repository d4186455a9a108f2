"""Scraping ``/metrics`` in tests: the text format parsed by prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infrastructure.auth import ApiKeyStore, Role
from infrastructure.database import PgTarget, create_engine


@dataclass(frozen=True)
class Scrape:
    samples: list[tuple[str, dict[str, str], float]]
    families: dict[str, str]  # name -> type

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def names(self) -> set[str]:
        return {sample for sample, _, _ in self.samples}


def scrape(base: str) -> Scrape:
    response = httpx.get(base + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = []
    families = {}
    for family in text_string_to_metric_families(response.text):
        families[family.name] = family.type
        samples += [(s.name, dict(s.labels), float(s.value)) for s in family.samples]
    return Scrape(samples, families)


def wait_for(
    base: str, condition: Callable[[Scrape], bool], what: str, timeout: float = 30
) -> Scrape:
    """Scrape until ``condition`` holds (values move asynchronously: projectors, workers)."""
    deadline = time.monotonic() + timeout
    while True:
        current = scrape(base)
        if condition(current):
            return current
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def create_key(target: PgTarget, org: str, role: str = "owner") -> str:
    async def create() -> str:
        engine = create_engine(target, pool_size=1)
        try:
            _, plaintext = await ApiKeyStore(engine).create(org, Role(role), "metrics test")
            return plaintext
        finally:
            await engine.dispose()

    return asyncio.run(create())
