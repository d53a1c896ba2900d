"""The web app in a real browser (headless Chromium) against real in-process nodes.

What a person does, end to end: create the owner on first run, log in and get
locked out, search a peer's library as they type (and without JavaScript), play
and seek a peer's video, comment from one node and read it on the owner's,
resume an upload cut by a reload, watch a URL download progress live, and join
a group with an invite made in the UI. Along the way: the CSP holds (no inline
scripts, no violation in the console), security headers are sent, images have
alt text, and the pages fit a phone screen. Screenshots of the main pages go to
docs/screenshots/.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from aiohttp import web as aioweb
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, Request, Response, Route

from tests.network.conftest import Network, eventually
from tests.webapp.conftest import DESKTOP, PASSWORD, PHONE, Pair, Web, add_user, screenshot

MiB = 1024 * 1024


def assert_security_headers(response: Response | None) -> None:
    assert response is not None
    headers = response.headers
    csp = headers.get("content-security-policy", "")
    assert "default-src 'self'" in csp, headers
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("referrer-policy") in ("same-origin", "no-referrer", "strict-origin-when-cross-origin")


async def check_page(page: Page, path: str) -> list[str]:
    """Load ``path``: the page must send the security headers, have no inline script or handler,
    alt text on every image, and no horizontal scrolling at the viewport's width. Returns the problems."""
    response = await page.goto(path)
    assert response is not None and response.status == 200, (path, response and response.status)
    assert_security_headers(response)
    await page.wait_for_load_state("load")
    facts = await page.evaluate(
        """() => ({
            inline: [...document.scripts].filter((s) => !s.src).length,
            handlers: [...document.querySelectorAll("*")].flatMap((e) =>
                [...e.attributes].filter((a) => a.name.startsWith("on")).map((a) => e.tagName + "@" + a.name)),
            noAlt: [...document.images].filter((i) => !(i.getAttribute("alt") || "").trim()).map((i) => i.src),
            scrollWidth: document.documentElement.scrollWidth,
            innerWidth: window.innerWidth,
            text: document.body.innerText,
            wide: [...document.querySelectorAll("main *")]
                .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
                .slice(0, 3).map((e) => e.tagName + "." + e.className),
        })"""
    )
    problems = []
    leaks = [w for w in ("built-in method", "bound method", "Undefined", "None") if w in facts["text"]]
    if leaks:
        problems.append(f"{path}: template internals shown as text: {leaks}")
    if facts["inline"]:
        problems.append(f"{path}: {facts['inline']} inline scripts")
    if facts["handlers"]:
        problems.append(f"{path}: inline event handlers {facts['handlers']}")
    if facts["noAlt"]:
        problems.append(f"{path}: images without alt text {facts['noAlt']}")
    if facts["scrollWidth"] > facts["innerWidth"]:
        problems.append(
            f"{path}: {facts['scrollWidth']} px wide in a {facts['innerWidth']} px window (e.g. {facts['wide']})"
        )
    return problems


# -- 1. first run -------------------------------------------------------------------------------


async def test_first_run_creates_the_owner_and_logs_in(network: Network, web: Web) -> None:
    fresh = await network.node("fresh")
    page = await web.page(fresh)
    response = await page.goto("/")
    assert page.url == fresh.url + "/setup"
    assert_security_headers(response)
    await page.fill("#name", "maria")
    await page.fill("#password", PASSWORD)
    await page.fill("#password2", PASSWORD)
    async with page.expect_navigation():
        await page.get_by_role("button", name="Create the owner account").click()
    assert page.url == fresh.url + "/"
    await page.get_by_role("button", name="Log out maria").wait_for()
    assert await page.locator("nav a[aria-current=page]").inner_text() == "Home"
    # The owner now exists: the setup page is gone for good.
    await page.goto("/setup")
    assert page.url == fresh.url + "/login"
    users = (await fresh.api("GET", "/api/v1/users"))["users"]
    assert [(u["name"], u["admin"]) for u in users] == [("maria", True)]
    web.assert_clean()


# -- 2. login, lockout, login history -----------------------------------------------------------------


async def test_failed_logins_lock_the_account_and_show_in_the_history(network: Network, web: Web) -> None:
    node = await network.node("alpha")
    await add_user(node)  # the owner, never locked out here
    await add_user(node, "bob", admin=False)
    page = await web.logged_in(node, "bob")
    async with page.expect_navigation():
        await page.get_by_role("button", name="Log out bob").click()
    assert page.url == node.url + "/login"
    await screenshot(page, "login")

    async def attempt(password: str) -> str:
        await page.fill("#name", "bob")
        await page.fill("#password", password)
        async with page.expect_navigation():
            await page.click("form[action='/login'] button")
        return await page.get_by_role("alert").inner_text()

    for n in range(5):
        assert "wrong user name or password" in await attempt(f"not the password {n}")
    # The sixth attempt fails even with the right password.
    assert "too many failed logins" in await attempt(PASSWORD)
    assert await page.get_by_role("button", name="Log out bob").count() == 0

    # An API token for bob still works (lockout guards passwords), and bob sees what happened.
    token = (await node.api("POST", "/api/v1/tokens", json={"name": "bob"}))["token"]
    await page.click("summary")
    await page.fill("#token", token)
    async with page.expect_navigation():
        await page.get_by_role("button", name="Log in with the token").click()
    await page.get_by_role("button", name="Log out bob").wait_for()
    await page.goto("/settings")
    results = await page.locator("table tbody td:nth-child(3)").all_inner_texts()
    assert results.count("ok") == 1, results
    assert results.count("failed") == 6, results
    assert set(await page.locator("table tbody td:nth-child(2)").all_inner_texts()) == {"127.0.0.1"}

    # The owner is not affected by bob's lockout.
    owner = await web.logged_in(node)
    await owner.goto("/settings")
    await owner.select_option("#theme", "dark")
    async with owner.expect_navigation():
        await owner.click("form.narrow button")
    await owner.get_by_role("status").wait_for()
    assert await owner.locator("html").get_attribute("data-theme") == "dark"
    await owner.select_option("#theme", "auto")
    async with owner.expect_navigation():
        await owner.click("form.narrow button")
    await screenshot(owner, "settings")
    web.assert_clean()


# -- 3. search -----------------------------------------------------------------------------------


async def test_search_finds_a_peers_item_as_you_type_and_without_javascript(pair: Pair, web: Web) -> None:
    page = await web.logged_in(pair.b)
    await page.goto("/search")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    async with page.expect_response(lambda r: "/api/v1/search?" in r.url and "q=spi" in r.url):
        await page.locator("#q").press_sequentially("spi", delay=40)
    card = page.locator("#results .card", has_text="Spider-Man Homecoming")
    await card.wait_for()
    assert "alpha" in await card.inner_text()
    assert await page.locator("#summary").inner_text() == "1 result for “spi”"
    assert page.url.endswith("/search?q=spi&kind=&owner=&genre=&year=")  # kept in the address bar
    assert not [u for u in requests if u.startswith(pair.b.url + "/search")]  # no page load
    await card.locator("img").wait_for()
    assert await card.locator("img").get_attribute("alt") == "Poster of Spider-Man Homecoming"
    assert await card.locator("img").evaluate("(img) => img.complete && img.naturalWidth > 0")  # brokered poster
    await screenshot(page, "search")

    # The same form, plain HTML: the browser submits it and the server renders the results.
    state = await page.context.storage_state()
    ctx = await web.browser.new_context(
        base_url=pair.b.url, java_script_enabled=False, storage_state=state, viewport=DESKTOP
    )
    web.contexts.append(ctx)
    plain = await ctx.new_page()
    await plain.goto("/search")
    await plain.fill("#q", "spi")
    async with plain.expect_navigation():
        await plain.press("#q", "Enter")
    assert "/search?q=spi" in plain.url
    assert await plain.locator("#results .card .title").all_inner_texts() == ["Spider-Man Homecoming"]
    assert await plain.locator("#summary").inner_text() == "1 result for “spi”"
    web.assert_clean()


# -- 4. playing a peer's video ------------------------------------------------------------------------


async def test_the_player_plays_and_seeks_a_peers_video(pair: Pair, web: Web) -> None:
    page = await web.logged_in(pair.b)
    ranges: list[str] = []
    page.on("request", lambda r: ranges.append(r.headers.get("range", "")) if "/content" in r.url else None)
    await page.goto(f"/items/{pair.item['id']}")
    player = page.locator("#player")
    assert await player.get_attribute("src") == f"/api/v1/items/{pair.item['id']}/content"
    assert await player.evaluate("(v) => v.canPlayType('video/mp4; codecs=\"avc1.42E01E\"')") != ""
    await player.evaluate("(v) => { v.muted = true; return v.play(); }")
    await page.wait_for_function(
        "() => { const v = document.getElementById('player'); return v.readyState >= 3 && v.currentTime > 0.3; }"
    )
    duration = await player.evaluate("(v) => v.duration")
    assert 5.5 < duration < 6.5, duration
    middle = duration / 2
    await player.evaluate(
        """(v) => new Promise((resolve) => {
            v.addEventListener("seeked", resolve, { once: true });
            v.currentTime = v.duration / 2;
        })"""
    )
    await page.wait_for_function(
        "(middle) => { const v = document.getElementById('player'); "
        "return !v.seeking && v.readyState >= 3 && v.currentTime > middle + 0.3; }",
        arg=middle,
    )
    assert await player.evaluate("(v) => v.error") is None
    assert any(r.startswith("bytes=") for r in ranges), ranges  # the browser asked for ranges
    web.assert_clean()


# -- 5. comments reach the owner ------------------------------------------------------------------


async def test_a_comment_posted_on_a_peer_shows_on_the_owners_page(pair: Pair, web: Web) -> None:
    item_id = pair.item["id"]
    page = await web.logged_in(pair.b)
    await page.goto(f"/items/{item_id}")
    await page.fill("#body", "Great swing at 0:03 <b>not bold</b>")
    async with page.expect_navigation():
        await page.click("#comment-form button")
    assert page.url.endswith(f"/items/{item_id}#comments")
    mine = page.locator(".comment", has_text="Great swing at 0:03")
    await mine.wait_for()
    assert await mine.locator(".body").inner_text() == "Great swing at 0:03 <b>not bold</b>"  # text, not HTML

    async def owner_has_it() -> bool:
        thread = (await pair.a.api("GET", f"/api/v1/items/{item_id}/comments"))["comments"]
        return any("Great swing" in c["body"] for c in thread)

    await eventually(owner_has_it, what="B's outbox delivered the comment to A")
    await pair.b.sync()
    owner = await web.logged_in(pair.a)
    await owner.goto(f"/items/{item_id}")
    theirs = owner.locator(".comment", has_text="Great swing at 0:03")
    await theirs.wait_for()
    assert await theirs.locator(".by strong").inner_text() == "owner@beta"  # B's user, named with B's node
    # A reply from the owner's page, threaded under B's comment.
    await theirs.get_by_role("button", name="Reply").click()
    assert "replying to owner@beta" in await owner.locator("#replying").inner_text()
    await owner.fill("#body", "Thanks! Watch the end too.")
    async with owner.expect_navigation():
        await owner.click("#comment-form button")
    await owner.locator(".comment.depth-1", has_text="Thanks!").wait_for()

    async def reply_reached_b() -> bool:
        await pair.b.sync()
        thread = (await pair.b.api("GET", f"/api/v1/items/{item_id}/comments"))["comments"]
        return any(c["body"].startswith("Thanks!") for c in thread)

    await eventually(reply_reached_b, what="B sees A's reply after a sync")
    await page.reload()
    await page.locator(".comment.depth-1", has_text="Thanks!").wait_for()
    await page.wait_for_function("() => document.getElementById('player').readyState >= 2")
    await screenshot(page, "item", full_page=True)
    web.assert_clean()


# -- 6. resumable upload --------------------------------------------------------------------------


async def test_an_upload_cut_by_a_reload_resumes(network: Network, web: Web, tmp_path: Path) -> None:
    node = await network.node("alpha")
    await add_user(node)
    big = tmp_path / "holiday archive.bin"
    big.write_bytes(os.urandom(12 * MiB))
    page = await web.logged_in(node)
    await page.goto("/upload")

    patches: list[dict[str, str]] = []
    held: list[Route] = []
    released = asyncio.Event()

    async def hold_second_patch(route: Route, request: Request) -> None:
        if request.method != "PATCH":
            await route.continue_()
            return
        patches.append(request.headers)
        if len(patches) == 1:
            await route.continue_()
            return
        held.append(route)  # the second chunk never leaves the browser: the reload cuts it
        await released.wait()
        with contextlib.suppress(Exception):
            await route.abort()

    await page.route("**/api/v1/uploads/**", hold_second_patch)
    await page.set_input_files("#files", str(big))
    row = page.locator("#uploads li", has_text="holiday archive.bin")
    await row.locator(".hint", has_text="8.0 MiB of 12.0 MiB").wait_for()

    async def second_patch_held() -> bool:
        return len(held) == 1

    await eventually(second_patch_held, what="the second PATCH is on hold")
    assert await row.locator("progress").evaluate("(p) => [p.value, p.max]") == [8 * MiB, 12 * MiB]
    await screenshot(page, "upload")

    await page.reload()
    released.set()
    await page.unroute("**/api/v1/uploads/**")
    assert await page.locator("#uploads li").count() == 0
    sent: list[dict[str, str]] = []
    page.on("request", lambda r: sent.append({"method": r.method, **r.headers}) if "/api/v1/uploads" in r.url else None)
    await page.set_input_files("#files", str(big))
    done = page.locator("#uploads li", has_text="holiday archive.bin").locator("a", has_text="open")
    await done.wait_for()
    methods = [r["method"] for r in sent]
    assert methods[0] == "HEAD" and "POST" not in methods, methods  # the same upload, resumed
    first_patch = next(r for r in sent if r["method"] == "PATCH")
    assert int(first_patch["upload-offset"]) == 8 * MiB
    href = await done.get_attribute("href")
    assert href is not None and href.startswith("/items/")
    item = await node.api("GET", "/api/v1" + href)
    assert item["size"] == 12 * MiB and item["title"] == "holiday archive"
    assert not await page.evaluate("() => Object.keys(localStorage).filter((k) => k.startsWith('tus:'))")
    web.assert_clean()


# -- 7. URL downloads, live ------------------------------------------------------------------------


async def test_the_downloads_page_shows_live_progress(network: Network, web: Web, spider_video: Path) -> None:
    data = spider_video.read_bytes()
    chunk = max(len(data) // 30, 4096)

    async def clip(request: aioweb.Request) -> aioweb.StreamResponse:
        headers = {"Content-Type": "video/mp4", "Content-Length": str(len(data)), "Accept-Ranges": "none"}
        if request.method == "HEAD":
            return aioweb.Response(headers=headers)
        response = aioweb.StreamResponse(headers=headers)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for start in range(0, len(data), chunk):
                await response.write(data[start : start + chunk])
                await asyncio.sleep(0.08)  # slow on purpose: the progress is what the test watches
        return response

    app = aioweb.Application()
    app.router.add_get("/films/skyline.mp4", clip)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        node = await network.node("alpha", downloads={"allow_private": True})
        await add_user(node)
        page = await web.logged_in(node)
        await page.goto("/downloads")
        # Watch the row's states as they arrive (SSE), without reloading.
        await page.evaluate(
            """() => {
                window.seen = [];
                new MutationObserver(() => {
                    const row = document.querySelector("#download-rows tr");
                    if (!row) return;
                    const bar = row.querySelector("progress");
                    window.seen.push([row.querySelector(".state").textContent, bar.value, bar.max]);
                }).observe(document.getElementById("download-rows"), { subtree: true, childList: true,
                    characterData: true, attributes: true });
            }"""
        )
        url = str(server.make_url("/films/skyline.mp4"))
        await page.fill("#url", url)
        await page.fill("#dl-visibility", "network")
        await page.click("#download-form button")
        await page.locator("#download-result", has_text="Queued.").wait_for()
        row = page.locator("#download-rows tr").first
        await row.locator(".state", has_text="processing").wait_for()
        assert await row.get_by_role("button", name="Cancel").count() == 1  # a live row can be canceled
        await page.wait_for_function(
            "() => { const p = document.querySelector('#download-rows tr progress'); "
            "return p.value > 0 && p.value < p.max; }"
        )
        await screenshot(page, "downloads")
        await row.locator(".state", has_text="downloaded").wait_for(timeout=30_000)
        link = row.locator(".title a")
        assert await link.inner_text() == "skyline"
        seen = await page.evaluate("() => window.seen")
        partial = [s for s in seen if s[0] == "processing" and 0 < s[1] < s[2]]
        assert partial, seen  # progress arrived live, between the start and the end
        assert seen[-1][0] == "downloaded" and seen[-1][1] == len(data), seen[-1]
        href = await link.get_attribute("href")
        assert href is not None
        async with page.expect_navigation():
            await link.click()
        assert await page.locator("h1").inner_text() == "skyline"
        item = await node.api("GET", "/api/v1" + href)
        assert item["size"] == len(data) and item["visibility"] == "network"
        web.assert_clean()
    finally:
        await server.close()


# -- 8. invites in the UI ----------------------------------------------------------------------


async def test_an_invite_made_in_the_ui_joins_a_new_node(network: Network, web: Web) -> None:
    a, c = await network.node("alpha"), await network.node("gamma")
    await add_user(a)
    await add_user(c)
    inviter = await web.logged_in(a)
    await inviter.goto("/network")
    await inviter.fill("#uses", "1")
    await inviter.get_by_role("button", name="Create invite").click()
    token_box = inviter.locator("#invite-token")
    await token_box.wait_for()
    token = await token_box.input_value()
    assert token

    joiner = await web.logged_in(c)
    await joiner.goto("/network")
    assert await joiner.locator("td.empty").inner_text() == "No other members yet."
    await joiner.fill("#join-token", token)
    await joiner.click("#join-form button")
    await joiner.locator("#network-result", has_text="Joined the group of alpha").wait_for()
    await joiner.wait_for_load_state()
    await joiner.locator("tbody tr", has_text="alpha").wait_for()  # after the page's own reload
    await joiner.reload()
    row = joiner.locator("tbody tr", has_text="alpha")
    assert a.node_id in await row.inner_text()

    await inviter.reload()
    await inviter.locator("tbody tr", has_text="gamma").wait_for()
    await a.sync()
    await inviter.reload()
    await screenshot(inviter, "network")
    web.assert_clean()


# -- the pages, on a desktop and on a phone ------------------------------------------------------


async def test_pages_are_safe_accessible_and_fit_a_phone(pair: Pair, web: Web) -> None:
    await pair.b.api("POST", f"/api/v1/items/{pair.item['id']}/comments", json={"body": "Seen it twice!"})
    await pair.b.sync()
    pages = [
        "/",
        "/search?q=spider",
        f"/items/{pair.item['id']}",
        "/upload",
        "/downloads",
        "/network",
        "/monitor",
        "/settings",
    ]
    desktop = await web.logged_in(pair.b)
    problems = [p for path in pages for p in await check_page(desktop, path)]
    await desktop.goto("/")
    await desktop.locator(".card img").first.evaluate("(img) => img.decode()")
    await screenshot(desktop, "home")
    await desktop.goto("/monitor")
    assert (await desktop.locator(".facts dd").first.inner_text()).isdigit()  # the item count
    await screenshot(desktop, "monitor")
    await desktop.goto("/network")
    assert await desktop.locator("tbody tr td:nth-child(5)").all_inner_texts() == ["1"]  # alpha's items

    phone = await web.logged_in(pair.b, viewport=PHONE)
    problems += [f"phone {p}" for path in pages for p in await check_page(phone, path)]
    anonymous = await web.page(pair.b, viewport=PHONE)
    problems += [f"phone {p}" for p in await check_page(anonymous, "/login")]
    assert not problems, "\n".join(problems)
    web.assert_clean()
