"""Browser fixtures: a real headless Chromium (Debian's, driven by Playwright) against real nodes.

The nodes run in-process on the test's event loop (``tests.network.conftest``'s
``network``: each on its own 127.0.0.x address, each with its own database), and
Playwright's async API runs on that same loop, so the browser talks to them over
real sockets. Nothing is downloaded: Playwright drives ``/usr/bin/chromium``, and
a host-resolver rule keeps the browser on loopback. Without that Chromium the
browser tests fail with a message saying how to install it; they never skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.media import make_video
from tests.network.conftest import NetNode, Network, group, network, pg_databases  # noqa: F401  (fixtures)

try:
    from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, async_playwright
except ImportError:  # pragma: no cover - the message is the point
    async_playwright = None

CHROMIUM = os.environ.get("PRIV_NETWORK_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE 127.0.0.2, EXCLUDE 127.0.0.3, "
    "EXCLUDE 127.0.0.4, EXCLUDE localhost",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PASSWORD = "correct horse battery"
CSP_WORDS = re.compile(r"content security policy|content-security-policy|refused to (execute|load|apply)", re.I)


@dataclass
class Web:
    """One browser for one test: a context per (node, user), with every console message and page error kept."""

    browser: Browser
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    contexts: list[BrowserContext] = field(default_factory=list)

    async def context(
        self, node: NetNode | None = None, *, js: bool = True, viewport: dict[str, int] | None = None
    ) -> BrowserContext:
        ctx = await self.browser.new_context(
            base_url=node.url if node is not None else None,
            java_script_enabled=js,
            viewport=viewport or DESKTOP,
            locale="en-GB",
            timezone_id="UTC",
        )
        ctx.set_default_timeout(15_000)
        ctx.on("console", self._on_console)
        ctx.on("weberror", lambda e: self.errors.append(str(e.error)))
        self.contexts.append(ctx)
        return ctx

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")

    async def page(self, node: NetNode, *, js: bool = True, viewport: dict[str, int] | None = None) -> Page:
        ctx = await self.context(node, js=js, viewport=viewport)
        return await ctx.new_page()

    async def logged_in(self, node: NetNode, name: str = "owner", password: str = PASSWORD, **kw: Any) -> Page:
        """A page in a new context, logged in to ``node`` through the login form."""
        page = await self.page(node, **kw)
        await log_in(page, name, password)
        return page

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if CSP_WORDS.search(m)]

    def assert_clean(self) -> None:
        """No CSP violation was reported and no script threw."""
        assert not self.csp_violations(), self.csp_violations()
        assert not self.errors, self.errors

    async def close(self) -> None:
        for ctx in self.contexts:
            await ctx.close()


async def log_in(page: Page, name: str, password: str) -> None:
    await page.goto("/login")
    await page.fill("#name", name)
    await page.fill("#password", password)
    async with page.expect_navigation():
        await page.click("form[action='/login'] button")
    assert page.url.endswith("/"), (page.url, await page.locator(".error").all_inner_texts())
    await page.get_by_role("button", name=f"Log out {name}").wait_for()


async def add_user(node: NetNode, name: str = "owner", *, admin: bool = True, password: str = PASSWORD) -> None:
    await node.api("POST", "/api/v1/users", json={"name": name, "password": password, "admin": admin})


async def screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    """docs/screenshots/NAME.png: the viewport (1280x800) unless ``full_page``, to keep the files small.

    Only with PRIV_NETWORK_SCREENSHOTS=1 (the pictures in docs/ are refreshed on purpose, not by every
    test run); otherwise the page is still rendered to a throwaway image, so the step keeps being exercised.
    """
    if os.environ.get("PRIV_NETWORK_SCREENSHOTS") != "1":
        await page.screenshot(animations="disabled", caret="hide", full_page=full_page)
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), animations="disabled", caret="hide", full_page=full_page)


@pytest.fixture
async def playwright() -> AsyncIterator[Playwright]:
    if async_playwright is None:
        pytest.fail("the browser tests need Playwright: .venv/bin/pip install -e '.[test]' (no `playwright install`)")
    async with async_playwright() as p:
        yield p


@pytest.fixture
async def web(network: Network, playwright: Playwright) -> AsyncIterator[Web]:  # noqa: F811
    """A headless Chromium, closed before the nodes (it depends on ``network``, so it is torn down first)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM}: install it with `apt-get install chromium` "
            "(as root; .ci/run does), or point PRIV_NETWORK_TEST_CHROMIUM at one"
        )
    browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    helper = Web(browser)
    try:
        yield helper
    finally:
        await helper.close()
        await browser.close()


@pytest.fixture(scope="session")
def spider_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-second 320x240 H.264/AAC MP4 (Debian's Chromium plays H.264), made once per session."""
    path = tmp_path_factory.mktemp("browser-media") / "Spider-Man Homecoming.mp4"
    return make_video(path, seconds=6, width=320, height=240, fps=10)


@dataclass
class Pair:
    """Two members: A (alpha) owns a network-visible video, B (beta) sees it; each has a web owner account."""

    a: NetNode
    b: NetNode
    item: dict[str, Any]


@pytest.fixture
async def pair(network: Network, spider_video: Path) -> Pair:  # noqa: F811
    a, b = await network.node("alpha"), await network.node("beta")
    await add_user(a)
    await add_user(b)
    [item] = await a.add(spider_video, visibility="network")
    await group(a, b)
    assert item["id"] in {h["id"] for h in await b.search("spider")}
    return Pair(a, b, item)
