"""The CMA's HTTP handlers: parse, call the ContentManager, serialize."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import hdrs, web

from node.service import ContentManager
from priv_network import __version__
from priv_network.errors import InvalidInput, NotFound
from priv_network.http import int_param, json_body, principal_of, require_admin
from priv_network.identity import NodeIdentity, b64u
from priv_network.interfaces import ContentFile, IngestReport, NodeStatus
from priv_network.wire import ItemInfo

# One satisfiable-looking byte range. Anything else (other units, several
# ranges, garbage) is ignored and the whole file is sent with 200, as RFC 9110
# section 14.2 allows; a well-formed range past the end gets 416.
_SINGLE_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d+-\d*|-\d+)\s*$")


def item_json(item: ItemInfo) -> dict[str, Any]:
    out = item.to_json()
    out["content_url"] = f"/api/v1/items/{item.id}/content"
    out["poster_url"] = f"/api/v1/items/{item.id}/poster" if item.has_poster else None
    return out


def status_json(status: NodeStatus) -> dict[str, Any]:
    return dict(status.__dict__)


def report_json(report: IngestReport) -> dict[str, Any]:
    return {
        "added": [item_json(i) for i in report.added],
        "existing": [item_json(i) for i in report.existing],
        "skipped_unchanged": report.skipped_unchanged,
        "failed": [{"path": p, "error": e} for p, e in report.failed],
        "warnings": [{"path": p, "warning": w} for p, w in report.warnings],
    }


class _RangeSafeFileResponse(web.FileResponse):
    """FileResponse that serves 200 for a Range header it should ignore."""

    async def prepare(self, request: web.BaseRequest) -> Any:
        value = request.headers.get(hdrs.RANGE)
        if value is not None and not _SINGLE_RANGE.match(value):
            headers = request.headers.copy()
            del headers[hdrs.RANGE]
            headers.pop(hdrs.IF_RANGE, None)
            request = request.clone(headers=headers)
        return await super().prepare(request)


def file_response(f: ContentFile, *, immutable: bool = False) -> web.FileResponse:
    headers = {hdrs.CONTENT_TYPE: f.mime}
    if immutable:
        headers[hdrs.CACHE_CONTROL] = "private, max-age=31536000, immutable"
    return _RangeSafeFileResponse(f.path, chunk_size=256 * 1024, headers=headers)


class ItemsApi:
    def __init__(self, cma: ContentManager) -> None:
        self.cma = cma

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/api/v1/items", self.list_items),
            web.post("/api/v1/items", self.add_items),
            web.get("/api/v1/items/{id}", self.get_item),
            web.patch("/api/v1/items/{id}", self.update_item),
            web.delete("/api/v1/items/{id}", self.remove_item),
            web.get("/api/v1/items/{id}/content", self.content),
            web.get("/api/v1/items/{id}/poster", self.poster),
            web.get("/api/v1/status", self.status),
            web.post("/api/v1/tokens", self.create_token),
        ]

    async def list_items(self, request: web.Request) -> web.Response:
        limit = int_param(request, "limit", 100, 1, 1000)
        offset = int_param(request, "offset", 0, 0, 10**9)
        items = await self.cma.list_items(limit, offset)
        return web.json_response({"items": [item_json(i) for i in items]})

    async def add_items(self, request: web.Request) -> web.Response:
        require_admin(request)
        body = await json_body(request)
        paths = body.get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
            raise InvalidInput("paths must be a list of file or folder paths")
        title = body.get("title")
        if title is not None and not isinstance(title, str):
            raise InvalidInput("title must be a string")
        visibility = body.get("visibility", "private")
        if not isinstance(visibility, str):
            raise InvalidInput("visibility must be a string")
        report = await self.cma.ingest_paths(paths, title, visibility)
        status = 201 if report.added else 200
        return web.json_response(report_json(report), status=status)

    async def get_item(self, request: web.Request) -> web.Response:
        return web.json_response(item_json(await self.cma.get_item(request.match_info["id"])))

    async def update_item(self, request: web.Request) -> web.Response:
        require_admin(request)
        item_id = request.match_info["id"]
        await self.cma.get_item(item_id)
        body = await json_body(request)
        unknown = set(body) - {"title", "visibility"}
        if unknown:
            raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}")
        item = None
        if "title" in body:
            if not isinstance(body["title"], str):
                raise InvalidInput("title must be a string")
            item = await self.cma.set_title(item_id, body["title"])
        if "visibility" in body:
            if not isinstance(body["visibility"], str):
                raise InvalidInput("visibility must be a string")
            item = await self.cma.set_visibility(item_id, body["visibility"])
        return web.json_response(item_json(item or await self.cma.get_item(item_id)))

    async def remove_item(self, request: web.Request) -> web.Response:
        require_admin(request)
        await self.cma.remove_item(request.match_info["id"])
        return web.json_response({"removed": request.match_info["id"]})

    async def content(self, request: web.Request) -> web.StreamResponse:
        principal_of(request)
        f = await self.cma.content_file(request.match_info["id"])
        if not f.path.exists():
            raise NotFound("the item's content is missing from the store")
        return file_response(f, immutable=True)

    async def poster(self, request: web.Request) -> web.StreamResponse:
        principal_of(request)
        f = await self.cma.poster_file(request.match_info["id"])
        if not f.path.exists():
            raise NotFound("the poster is missing from the store")
        return file_response(f, immutable=True)

    async def status(self, request: web.Request) -> web.Response:
        principal_of(request)
        return web.json_response(status_json(await self.cma.status()))

    async def create_token(self, request: web.Request) -> web.Response:
        require_admin(request)
        body = await json_body(request)
        name = body.get("name", "api")
        admin = body.get("admin", False)
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise InvalidInput("name must be a short non-empty string")
        if not isinstance(admin, bool):
            raise InvalidInput("admin must be true or false")
        token = await self.cma.create_token(name.strip(), admin=admin)
        return web.json_response({"token": token, "name": name.strip(), "admin": admin}, status=201)


class FederationApi:
    """Public (unsigned) federation endpoints. Signed ones come with the network."""

    def __init__(self, cma: ContentManager, identity: NodeIdentity) -> None:
        self.cma = cma
        self.identity = identity

    def routes(self) -> list[web.AbstractRouteDef]:
        return [web.get("/federation/v1/node", self.node_document)]

    async def node_document(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "node_id": self.identity.node_id,
                "name": self.cma.node_name,
                "public_key": b64u(self.identity.public.public_key),
                "key_type": "ed25519",
                "url": self.cma.node_url,
                "software": "priv_network",
                "version": __version__,
                "protocol": 1,
            }
        )
