"""The pages. Thin: every datum comes through the manager's interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from priv_network.errors import Unauthorized
from priv_network.http import principal_of
from priv_network.interfaces import Authenticator, SearchService
from priv_network.keys import PRINCIPAL, SESSION_COOKIE

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


class Pages:
    def __init__(self, search: SearchService, authenticator: Authenticator, node_name: str) -> None:
        self.search = search
        self.auth = authenticator
        self.node_name = node_name
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=jinja2.select_autoescape(default=True),
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["duration"] = _duration
        self.env.filters["size"] = _size

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/", self.index),
            web.get("/login", self.login_form),
            web.post("/login", self.login),
            web.post("/logout", self.logout),
            web.static("/static", STATIC),
        ]

    def render(self, name: str, status: int = 200, **context: Any) -> web.Response:
        html = self.env.get_template(name).render(node_name=self.node_name, **context)
        return web.Response(text=html, status=status, content_type="text/html")

    async def index(self, request: web.Request) -> web.StreamResponse:
        if request.get(PRINCIPAL) is None:
            raise web.HTTPSeeOther("/login")
        principal_of(request)
        query = request.query.get("q", "").strip()[:200]
        hits = await (self.search.search(query, 100) if query else self.search.recent(100))
        return self.render("index.html", hits=hits, query=query, user=request[PRINCIPAL])

    async def login_form(self, request: web.Request) -> web.Response:
        return self.render("login.html", error=None)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token = str(form.get("token", "")).strip()
        principal = await self.auth.authenticate(token) if token else None
        if principal is None:
            return self.render("login.html", status=401, error="That token is not valid.")
        session = await self.auth.create_session(principal)
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            SESSION_COOKIE, session, httponly=True, samesite="Strict", secure=request.secure, max_age=30 * 86400
        )
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            await self.auth.end_session(cookie)
        if request.get(PRINCIPAL) is None and not cookie:
            raise Unauthorized("not logged in")
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE)
        raise response
