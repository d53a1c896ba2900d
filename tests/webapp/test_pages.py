"""The pages people use: first run, login, the media list, item pages, search, logout, escaping, headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from yarl import URL

from priv_network.keys import SESSION_COOKIE
from tests.conftest import RunningNode

XSS = "<script>alert(1)</script>"
OWNER, PASSWORD = "olivia", "correct horse battery"


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]


@dataclass
class Page(HTMLParser):
    """The elements of a page, with attributes unescaped as a browser sees them."""

    elements: list[Element] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        HTMLParser.__init__(self, convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag and all(e.attrs.get(k) == v for k, v in attrs.items())]

    @property
    def all_text(self) -> str:
        return "".join(self.text)

    @property
    def csrf(self) -> str:
        [meta] = self.find("meta", name="csrf")
        assert meta.attrs["content"]
        return meta.attrs["content"]


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def assert_security_headers(resp: ClientResponse) -> None:
    csp = resp.headers.get("Content-Security-Policy", "")
    assert "default-src 'self'" in csp, resp.headers
    assert "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[-1].split(";")[0] or "script-src" not in csp
    assert resp.headers.get("X-Content-Type-Options") == "nosniff"
    assert resp.headers.get("Referrer-Policy") in ("same-origin", "no-referrer", "strict-origin-when-cross-origin")


def assert_no_injected_markup(page: Page) -> None:
    """Only our own external scripts, and no event-handler attributes anywhere."""
    for script in page.find("script"):
        assert (script.attrs.get("src") or "").startswith("/static/"), script
    assert not [e for e in page.elements if any(a.startswith("on") for a in e.attrs)]


async def get_page(node: RunningNode, path: str, expect: int = 200) -> tuple[str, Page]:
    async with node.client.get(path, allow_redirects=False) as resp:
        text = await resp.text()
        assert resp.status == expect, text
        assert resp.content_type == "text/html"
        assert_security_headers(resp)
        return text, parse(text)


async def token_login(node: RunningNode, token: str | None = None, target: str = "/login/token") -> ClientResponse:
    async with node.client.post(target, data={"token": token or node.token}, allow_redirects=False) as resp:
        await resp.read()
        return resp


async def login(node: RunningNode) -> str:
    """Log in with the admin token through the form; returns the session cookie (kept in the client's jar)."""
    resp = await token_login(node)
    assert resp.status == 303, resp.status
    assert resp.headers["Location"] == "/"
    return resp.cookies[SESSION_COOKIE].value


@pytest.fixture
async def owner(node: RunningNode) -> RunningNode:
    """A node past its first run: it has an owner account."""
    await node.api("POST", "/api/v1/users", json={"name": OWNER, "password": PASSWORD, "admin": True})
    return node


@pytest.fixture
async def items(owner: RunningNode, media_dir: Path) -> dict[str, dict[str, Any]]:
    report = await owner.api("POST", "/api/v1/items", json={"paths": [str(media_dir)]})
    return {i["kind"]: i for i in report["added"]}


# -- first run, login --------------------------------------------------------------------


async def test_a_node_without_users_sends_people_to_setup(node: RunningNode) -> None:
    for path in ("/", "/login", "/search"):
        async with node.client.get(path, allow_redirects=False) as resp:
            assert resp.status == 303, path
            assert resp.headers["Location"] == "/setup"
    _html, page = await get_page(node, "/setup")
    assert {e.attrs["name"] for e in page.find("input")} >= {"name", "password", "password2"}


SETUP_FORM = {"name": "mallory", "password": "mallorypw1", "password2": "mallorypw1"}


async def post_setup(node: RunningNode, headers: dict[str, str], **form: str) -> tuple[int, str]:
    async with node.client.post("/setup", data={**SETUP_FORM, **form}, headers=headers, allow_redirects=False) as resp:
        return resp.status, await resp.text()


async def users(node: RunningNode) -> list[str]:
    return [u["name"] for u in (await node.api("GET", "/api/v1/users"))["users"]]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://attacker.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port or name of the same site
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},
    ],
    ids=["origin-and-fetch-site", "origin", "fetch-site", "same-site", "null-origin", "other-port"],
)
async def test_first_run_set_up_from_another_site_is_refused(node: RunningNode, headers: dict[str, str]) -> None:
    """Any page open in a browser on the node's machine must not claim a fresh node."""
    status, html = await post_setup(node, headers)
    assert status == 403
    assert "only accepted from this node's own page" in parse(html).all_text
    assert await users(node) == []


@pytest.mark.parametrize("browser", [True, False], ids=["own-page", "not-a-browser"])
async def test_first_run_set_up_from_the_node_s_own_page(node: RunningNode, browser: bool) -> None:
    headers = {"Origin": node.config.node.public_url, "Sec-Fetch-Site": "same-origin"} if browser else {}
    status, _html = await post_setup(node, headers)
    assert status == 303
    assert await users(node) == ["mallory"]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "203.0.113.9"},  # a reverse proxy on the same machine
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
        {"Host": "rebound.example"},  # another site's name pointed at 127.0.0.1
    ],
    ids=["x-forwarded-for", "forwarded", "x-real-ip", "dns-rebinding"],
)
async def test_relayed_or_rebound_requests_are_not_from_this_machine(
    node: RunningNode, headers: dict[str, str]
) -> None:
    _html, page = await get_page_with(node, "/setup", headers)
    assert page.find("input", name="token")  # the form asks for the admin token
    status, html = await post_setup(node, headers)
    assert status == 403
    assert "admin token" in parse(html).all_text
    assert await users(node) == []
    status, _html = await post_setup(node, headers, token=node.token)
    assert status == 303
    assert await users(node) == ["mallory"]


async def get_page_with(node: RunningNode, path: str, headers: dict[str, str]) -> tuple[str, Page]:
    async with node.client.get(path, headers=headers, allow_redirects=False) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        return text, parse(text)


async def test_start_page_without_login_redirects_to_login(owner: RunningNode) -> None:
    async with owner.client.get("/", allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/login"
    async with owner.client.get("/search?q=x", allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"].startswith("/login?next=")
    _html, page = await get_page(owner, "/login")
    assert page.find("form", method="post", action="/login")
    assert page.find("form", method="post", action="/login/token")
    assert page.find("input", name="token")[0].attrs["type"] == "password"
    assert page.find("input", name="password")[0].attrs["type"] == "password"


@pytest.mark.parametrize("token", ["wrong", "pn_" + "x" * 43, " ", "pn_" + "y" * 500])
async def test_login_with_a_wrong_token_is_a_401_page_and_no_session(owner: RunningNode, token: str) -> None:
    async with owner.client.post("/login/token", data={"token": token}, allow_redirects=False) as resp:
        html = await resp.text()
        assert resp.status == 401
        assert resp.content_type == "text/html"
        assert_security_headers(resp)
        assert SESSION_COOKIE not in resp.cookies
    page = parse(html)
    assert len([e for e in page.elements if e.attrs.get("role") == "alert"]) == 1
    assert "not valid" in page.all_text
    async with owner.client.get("/", allow_redirects=False) as resp:
        assert resp.status == 303


async def test_login_with_a_wrong_password_is_a_401_page(owner: RunningNode) -> None:
    async with owner.client.post(
        "/login", data={"name": OWNER, "password": "not the password"}, allow_redirects=False
    ) as resp:
        html = await resp.text()
        assert resp.status == 401
        assert SESSION_COOKIE not in resp.cookies
    assert "wrong user name or password" in parse(html).all_text
    async with owner.client.post("/login", data={"name": OWNER, "password": PASSWORD}, allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.cookies[SESSION_COOKIE]["httponly"] is True


async def test_login_sets_a_protected_session_cookie(owner: RunningNode) -> None:
    resp = await token_login(owner)
    assert resp.status == 303
    assert resp.headers["Location"] == "/"
    morsel = resp.cookies[SESSION_COOKIE]
    assert morsel.value and morsel.value != owner.token
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() in ("strict", "lax")
    assert morsel["path"] == "/"
    _html, page = await get_page(owner, "/")
    assert page.find("form", action="/logout")
    # The session also works for the API the page's media elements call.
    async with owner.client.get("/api/v1/items") as api:
        assert api.status == 200


@pytest.mark.parametrize("target", ["//evil.example/", "/\\evil.example/", "https://evil.example/", "/%5Cevil.example"])
async def test_login_never_redirects_to_another_site(owner: RunningNode, target: str) -> None:
    resp = await token_login(owner, target=f"/login/token?next={target}")
    assert resp.status == 303
    location = resp.headers["Location"]
    assert location.startswith("/"), location
    assert not location.startswith(("//", "/\\")), location
    assert URL(location).host is None, location


# -- the media on the pages --------------------------------------------------------------


async def test_start_page_lists_media_with_the_right_elements(
    owner: RunningNode, items: dict[str, dict[str, Any]], media_dir: Path
) -> None:
    await login(owner)
    _html, page = await get_page(owner, "/")
    video, audio, image = items["video"], items["audio"], items["image"]

    [video_el] = page.find("video")
    assert video_el.attrs["src"] == video["content_url"] == f"/api/v1/items/{video['id']}/content"
    assert video_el.attrs["poster"] == video["poster_url"]
    assert "controls" in video_el.attrs
    [audio_el] = page.find("audio")
    assert audio_el.attrs["src"] == audio["content_url"]
    assert "poster" not in audio_el.attrs
    [img] = page.find("img", src=image["content_url"])
    assert img.attrs["alt"] == "cover"
    for item in items.values():
        assert page.find("a", href=f"/items/{item['id']}"), item["title"]
    for title in ("Spider-Man Homecoming", "Amélie - La Valse", "cover", "notes"):
        assert title in page.all_text

    # What the page points the browser at is served to the session.
    async with owner.client.get(video_el.attrs["src"] or "", headers={"Range": "bytes=0-3"}) as resp:
        assert resp.status == 206
        assert await resp.read() == (media_dir / "Spider-Man Homecoming.mp4").read_bytes()[:4]
    async with owner.client.get(video_el.attrs["poster"] or "") as resp:
        assert (resp.status, resp.content_type) == (200, "image/jpeg")


async def test_item_pages_have_a_player(owner: RunningNode, items: dict[str, dict[str, Any]]) -> None:
    await login(owner)
    video, audio, image = items["video"], items["audio"], items["image"]
    _html, page = await get_page(owner, f"/items/{video['id']}")
    [player] = page.find("video")
    assert (player.attrs["src"], player.attrs["poster"]) == (video["content_url"], video["poster_url"])
    _html, page = await get_page(owner, f"/items/{audio['id']}")
    assert [e.attrs["src"] for e in page.find("audio")] == [audio["content_url"]]
    _html, page = await get_page(owner, f"/items/{image['id']}")
    assert page.find("img", src=image["content_url"], alt="cover")
    await get_page(owner, f"/items/{'a' * 26}", expect=404)


async def test_titles_and_queries_are_escaped(owner: RunningNode, items: dict[str, dict[str, Any]]) -> None:
    video, image = items["video"], items["image"]
    await owner.api("PATCH", f"/api/v1/items/{video['id']}", json={"title": f"Evil {XSS}"})
    await owner.api("PATCH", f"/api/v1/items/{image['id']}", json={"title": 'x" onerror="alert(2)'})
    await login(owner)
    for path in ("/", "/search?q=evil", f"/search?q={XSS}", f"/items/{video['id']}", f"/items/{image['id']}"):
        html, page = await get_page(owner, path)
        assert XSS not in html, path
        assert_no_injected_markup(page)
    html, page = await get_page(owner, "/")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert f"Evil {XSS}" in page.all_text  # shown as text, as typed
    [img] = page.find("img", src=image["content_url"])
    assert img.attrs["alt"] == 'x" onerror="alert(2)'
    _html, page = await get_page(owner, "/search?q=evil")
    assert f"Evil {XSS}" in page.all_text
    _html, page = await get_page(owner, f"/search?q={XSS}")
    [search_box] = page.find("input", id="q")
    assert search_box.attrs["value"] == XSS


async def test_search_page(owner: RunningNode, items: dict[str, dict[str, Any]]) -> None:
    await login(owner)

    def results(page: Page) -> set[str]:
        links = {e.attrs.get("href") for e in page.find("a")}
        return {i["id"] for i in items.values() if f"/items/{i['id']}" in links}

    _html, page = await get_page(owner, "/search?q=spider+man")
    assert results(page) == {items["video"]["id"]}
    assert "1 result " in page.all_text
    _html, page = await get_page(owner, "/search?q=amel")
    assert results(page) == {items["audio"]["id"]}
    _html, page = await get_page(owner, "/search?q=nothing-like-this")
    assert results(page) == set()
    assert "0 results" in page.all_text
    [search_box] = page.find("input", id="q")
    assert search_box.attrs["value"] == "nothing-like-this"
    _html, page = await get_page(owner, "/search?kind=audio")
    assert results(page) == {items["audio"]["id"]}


async def test_logout_needs_the_csrf_token_and_ends_the_session(
    owner: RunningNode, items: dict[str, dict[str, Any]]
) -> None:
    session = await login(owner)
    _html, page = await get_page(owner, "/")
    csrf = page.csrf
    [form_csrf] = [e for e in page.find("input", name="csrf")]
    assert form_csrf.attrs["value"] == csrf

    # Another site can make the browser post, but cannot know the token.
    async with owner.client.post("/logout", data={"csrf": "forged"}, allow_redirects=False) as resp:
        assert resp.status == 403
    await get_page(owner, "/")  # still logged in

    async with owner.client.post("/logout", data={"csrf": csrf}, allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/login"
    async with owner.client.get("/", allow_redirects=False) as resp:
        assert resp.status == 303
    # Replaying the old cookie does not work either: the session is gone on the server.
    owner.client.session.cookie_jar.clear()
    cookie = {"Cookie": f"{SESSION_COOKIE}={session}"}
    async with owner.client.get("/", headers=cookie, allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/login"
    async with owner.client.get(items["video"]["content_url"], headers=cookie) as resp:
        assert resp.status == 401
    async with owner.client.get("/api/v1/items", headers=cookie) as resp:
        assert resp.status == 401
    # The admin token itself still works.
    assert len((await owner.api("GET", "/api/v1/items"))["items"]) == 4


async def test_unknown_page_is_an_html_404_but_unknown_api_path_is_json(owner: RunningNode) -> None:
    await login(owner)
    html, page = await get_page(owner, "/no-such-page", expect=404)
    assert "404" in page.all_text
    assert not html.lstrip().startswith("{")
    assert page.find("a")  # a way back
    async with owner.client.get("/api/v1/no-such-thing") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        data = await resp.json()
        assert data["error"]["code"] == "not_found"
    # Without a session an unknown page is still a page, not JSON.
    owner.client.session.cookie_jar.clear()
    await get_page(owner, "/no-such-page", expect=404)
