"""The pages. Thin: every datum comes through ``WebBackend``; no SQL, no store access.

Server-rendered with Jinja2 (autoescaping on, so user and peer text cannot
run), progressive enhancement from /static/app.js (no inline scripts: the
CSP forbids them). State-changing forms carry the session's CSRF token.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from yarl import URL

from priv_network.errors import Forbidden, InvalidInput, NotFound, PrivNetworkError
from priv_network.http import csrf_token
from priv_network.interfaces import Principal, SearchFilters, WebBackend
from priv_network.keys import CONFIG, PRINCIPAL, SESSION_COOKIE
from priv_network.wire import KINDS

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
SESSION_MAX_AGE = 30 * 86400


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _size(n: int | float | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    delta = time.time() - ts
    if delta < 0:
        return "soon"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return "just now"


class Pages:
    def __init__(self, backend: WebBackend, node_name: str, node_id: str) -> None:
        self.backend = backend
        self.node_name = node_name
        self.node_id = node_id
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters.update(duration=_duration, size=_size, ago=_ago)

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/", self.home),
            web.get("/setup", self.setup_form),
            web.post("/setup", self.setup),
            web.get("/login", self.login_form),
            web.post("/login", self.login),
            web.post("/login/token", self.login_token),
            web.post("/logout", self.logout),
            web.get("/search", self.search),
            web.get("/items/{id}", self.item),
            web.post("/items/{id}/comments", self.post_comment),
            web.get("/upload", self.simple("upload.html", "Upload")),
            web.get("/downloads", self.downloads),
            web.get("/network", self.network),
            web.get("/monitor", self.monitor),
            web.get("/settings", self.settings),
            web.post("/settings", self.save_settings),
            web.static("/static", STATIC),
        ]

    # -- helpers ------------------------------------------------------------
    async def render(self, request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
        principal: Principal | None = request.get(PRINCIPAL)
        cookie = request.cookies.get(SESSION_COOKIE)
        prefs = await self.backend.prefs(principal.name) if principal else {"theme": "auto"}
        html = self.env.get_template(name).render(
            node_name=self.node_name,
            node_id=self.node_id,
            user=principal,
            prefs=prefs,
            csrf=csrf_token(cookie) if cookie else "",
            path=request.path,
            **context,
        )
        return web.Response(text=html, status=status, content_type="text/html")

    async def _user(self, request: web.Request) -> Principal:
        principal = request.get(PRINCIPAL)
        if principal is None:
            if not await self.backend.has_users():
                raise web.HTTPSeeOther("/setup")
            raise web.HTTPSeeOther(f"/login?next={request.path_qs}" if request.path != "/" else "/login")
        return principal

    def simple(self, template: str, title: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            await self._user(request)
            return await self.render(request, template, title=title)

        return handler

    async def _start_session(self, request: web.Request, principal: Principal) -> web.HTTPSeeOther:
        session = await self.backend.create_session(principal)
        target = request.query.get("next", "/")
        response = web.HTTPSeeOther(target if target.startswith("/") and not target.startswith("//") else "/")
        response.set_cookie(
            SESSION_COOKIE, session, httponly=True, samesite="Strict", secure=request.secure, max_age=SESSION_MAX_AGE
        )
        return response

    # -- first run, login ---------------------------------------------------
    async def setup_form(self, request: web.Request) -> web.Response:
        if await self.backend.has_users():
            raise web.HTTPSeeOther("/login")
        return await self.render(
            request, "setup.html", title="Welcome", error=None, remote=not _from_this_machine(request)
        )

    async def setup(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name, password = str(form.get("name", "")).strip(), str(form.get("password", ""))
        try:
            if not _same_origin(request):
                # No session yet, so no CSRF token: the browser's own word on where the form came from.
                raise Forbidden("first-run set-up is only accepted from this node's own page, not another site's")
            if not _from_this_machine(request) and await self.backend.token_login(str(form.get("token", ""))) is None:
                # Whoever reaches a fresh node first would own it: from elsewhere, prove you run it.
                raise Forbidden("from another machine, first-run set-up needs the node's admin token (admin.token)")
            if password != str(form.get("password2", "")):
                raise InvalidInput("the two passwords differ")
            principal = await self.backend.create_owner(name, password)
        except PrivNetworkError as exc:
            return await self.render(
                request,
                "setup.html",
                status=exc.status,
                title="Welcome",
                error=exc.message,
                remote=not _from_this_machine(request),
            )
        raise await self._start_session(request, principal)

    async def login_form(self, request: web.Request) -> web.Response:
        if not await self.backend.has_users() and request.query.get("token") is None:
            raise web.HTTPSeeOther("/setup")
        return await self.render(request, "login.html", title="Log in", error=None)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        try:
            principal = await self.backend.login(
                str(form.get("name", "")).strip(), str(form.get("password", "")), request.remote or "?"
            )
        except PrivNetworkError as exc:
            return await self.render(request, "login.html", status=exc.status, title="Log in", error=exc.message)
        raise await self._start_session(request, principal)

    async def login_token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token = str(form.get("token", "")).strip()
        principal = await self.backend.token_login(token) if token else None
        if principal is None:
            return await self.render(
                request, "login.html", status=401, title="Log in", error="That token is not valid."
            )
        raise await self._start_session(request, principal)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            await self.backend.end_session(cookie)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE)
        raise response

    # -- browsing -----------------------------------------------------------
    async def home(self, request: web.Request) -> web.Response:
        user = await self._user(request)
        history = await self.backend.history(user.name)
        continuing = []
        for entry in history[:12]:
            if entry["watched"] or not entry["position"]:
                continue
            try:
                item = await self.backend.item(entry["id"])
            except NotFound:
                continue
            continuing.append({**item, "position": entry["position"]})
        recent = await self.backend.search("", 24, SearchFilters())
        rows = {}
        for kind in ("video", "audio"):
            rows[kind] = await self.backend.search("", 12, SearchFilters(kind=kind))
        own = await self.backend.search("", 50, SearchFilters(node=self.node_id))
        return await self.render(
            request, "home.html", title="Home", continuing=continuing, recent=recent, rows=rows, own=own
        )

    async def search(self, request: web.Request) -> web.Response:
        await self._user(request)
        q = request.query
        query = q.get("q", "").strip()[:200]
        kind = q.get("kind") or None
        year = q.get("year", "").strip()
        filters = SearchFilters(
            node=q.get("owner") or None,
            kind=kind if kind in KINDS else None,
            genre=(q.get("genre") or "").strip()[:60] or None,
            year=int(year) if year.isdigit() and len(year) == 4 else None,
            online=q.get("online") == "1",
        )
        results = await self.backend.search(query, 100, filters)
        owners = await self.backend.peers()
        return await self.render(
            request,
            "search.html",
            title=f"Search: {query}" if query else "Browse",
            results=results,
            query=query,
            filters=filters,
            owners=owners,
            kinds=KINDS,
        )

    async def item(self, request: web.Request) -> web.Response:
        user = await self._user(request)
        item_id = request.match_info["id"]
        item = await self.backend.item(item_id)
        comments = await self.backend.comments(item_id, user.name)
        pins = {p["id"]: p for p in await self.backend.pins()}
        return await self.render(
            request,
            "item.html",
            title=item["title"],
            item=item,
            comments=comments,
            pin=pins.get(item_id),
            error=request.query.get("error"),
        )

    async def post_comment(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        item_id = request.match_info["id"]
        form = await request.post()
        parent = str(form.get("parent_id") or "") or None
        try:
            await self.backend.post_comment(user.name, item_id, str(form.get("body", "")), parent)
        except InvalidInput as exc:
            raise web.HTTPSeeOther(f"/items/{item_id}?error={exc.message[:200]}#comments") from None
        raise web.HTTPSeeOther(f"/items/{item_id}#comments")

    async def downloads(self, request: web.Request) -> web.Response:
        await self._user(request)
        return await self.render(request, "downloads.html", title="Downloads", downloads=await self.backend.downloads())

    async def network(self, request: web.Request) -> web.Response:
        await self._user(request)
        return await self.render(request, "network.html", title="Network", peers=await self.backend.peers())

    async def monitor(self, request: web.Request) -> web.Response:
        await self._user(request)
        status = await self.backend.status()
        peers = {p["node_id"]: p["name"] for p in await self.backend.peers()}
        chart = _traffic_chart(status["traffic_history"], peers)
        low_disk = status["free_bytes"] < max(status["min_free"] * 4, 1024**3)
        return await self.render(
            request,
            "monitor.html",
            title="Monitor",
            node=status,
            peers=await self.backend.peers(),
            chart=chart,
            low_disk=low_disk,
            names=peers,
        )

    async def settings(self, request: web.Request) -> web.Response:
        user = await self._user(request)
        return await self.render(
            request,
            "settings.html",
            title="Settings",
            logins=await self.backend.login_history(user.name),
            saved=False,
            error=None,
        )

    async def save_settings(self, request: web.Request) -> web.Response:
        user = await self._user(request)
        form = await request.post()
        error = None
        try:
            await self.backend.set_prefs(
                user.name,
                {
                    "theme": str(form.get("theme", "auto")),
                    "default_visibility": str(form.get("default_visibility", "private")),
                },
            )
        except PrivNetworkError as exc:
            error = exc.message
        return await self.render(
            request,
            "settings.html",
            status=400 if error else 200,
            title="Settings",
            logins=await self.backend.login_history(user.name),
            saved=error is None,
            error=error,
        )


# Headers a reverse proxy adds: behind one, the peer address is the proxy's, not the visitor's.
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def _from_this_machine(request: web.Request) -> bool:
    """A visitor on the node's own machine: a loopback peer, not relayed by a proxy (which would be
    the loopback peer for everyone), asking for a loopback host name (a site whose name was made to
    point at 127.0.0.1, "DNS rebinding", asks for its own name)."""
    if any(header in request.headers for header in PROXY_HEADERS):
        return False
    return _is_loopback(request.remote or "") and _is_loopback(request.url.host or "")


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = URL(url)
    return (parsed.scheme.lower(), (parsed.host or "").lower(), parsed.port)


def _same_origin(request: web.Request) -> bool:
    """Was this form sent from a page of this node (the node's public URL, or the address asked for)?

    Browsers say where a form comes from: ``Sec-Fetch-Site`` and ``Origin`` (sent with every POST).
    A client that sends neither is not a browser, so no other site can have made it post.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    own = {_origin(request.app[CONFIG].node.public_url), _origin(f"{request.scheme}://{request.host}")}
    try:
        return _origin(origin) in own
    except ValueError:
        return False


def _traffic_chart(history: list[dict[str, Any]], names: dict[str, str]) -> dict[str, Any]:
    """Bytes per hour over the last 48 h, as bars for an inline SVG (server-side, no chart library)."""
    now_hour = int(time.time() // 3600)
    hours = list(range(now_hour - 47, now_hour + 1))
    sent = dict.fromkeys(hours, 0)
    received = dict.fromkeys(hours, 0)
    per_peer: dict[str, int] = {}
    for row in history:
        if row["hour"] in sent:
            (sent if row["direction"] == "sent" else received)[row["hour"]] += int(row["bytes"])
        subject = str(row["subject"])
        label = names.get(subject.removeprefix("peer:"), subject)
        per_peer[label] = per_peer.get(label, 0) + int(row["bytes"])
    peak = max([*sent.values(), *received.values(), 1])
    bars = [
        {"x": i * 10, "sent": round(60 * sent[h] / peak, 1), "received": round(60 * received[h] / peak, 1)}
        for i, h in enumerate(hours)
    ]
    return {"bars": bars, "peak": peak, "per_peer": sorted(per_peer.items(), key=lambda kv: -kv[1])}
