"""``/docs`` and ``/redoc`` work with no network but the service's own.

Headless Chromium (Debian's, never a downloaded browser) loads the pages
with every request to any other host aborted, authorizes with a real API
key, and runs one "Try it out" call to a 200.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt-get install chromium; .ci/run does)"
)
_LOCAL = {"127.0.0.1", "localhost", "::1"}
_REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture
def offline_page() -> Iterator[tuple[Any, list[str]]]:
    """A page whose requests to anything but this machine are aborted; and those URLs."""
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []

    def only_local(route: Any) -> None:
        if urlsplit(route.request.url).hostname in _LOCAL:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            context = browser.new_context()
            context.route("**/*", only_local)
            yield context.new_page(), blocked
        finally:
            browser.close()


def test_docs_authorize_and_try_it_out(
    api_url: str,
    org: str,
    make_key: Callable[[str, str], str],
    offline_page: tuple[Any, list[str]],
) -> None:
    page, blocked = offline_page
    # Playwright's sync API holds this thread's event loop; make_key runs one of its own.
    with ThreadPoolExecutor(1) as pool:
        key = pool.submit(make_key, org, "owner").result()
    page.goto(f"{api_url}/docs")
    page.locator(".swagger-ui .info .title").wait_for(timeout=30_000)

    page.locator("button.authorize").first.click()
    dialog = page.locator(".modal-ux")
    dialog.locator("input").first.fill(key)
    dialog.locator("button.authorize").click()
    dialog.locator("button.btn-done").click()

    operation = page.locator("#operations-queries-list_workflows")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status").first
    status.wait_for(timeout=30_000)
    assert status.inner_text().strip() == "200"
    assert '"items"' in operation.locator(".live-responses-table .microlight").first.inner_text()
    assert blocked == []


def test_redoc_renders(api_url: str, offline_page: tuple[Any, list[str]]) -> None:
    page, blocked = offline_page
    page.goto(f"{api_url}/redoc")
    page.locator(".api-content h2", has_text="Create a workflow").first.wait_for(timeout=30_000)
    # The bundle's one outside request: Redocly's footer logo, which it hides when
    # the image fails to load; nothing on the page needs it.
    assert [url for url in blocked if url != _REDOCLY_LOGO] == []
