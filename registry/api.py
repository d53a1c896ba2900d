"""The registry's HTTP handlers: search and sync."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from priv_network.errors import InvalidInput
from priv_network.http import int_param, json_body, principal_of, require_admin
from priv_network.identity import normalize_node_id
from priv_network.interfaces import SearchFilters, SearchHit
from priv_network.wire import KINDS, check_item_id
from registry.community import CommunityService
from registry.service import Registry
from registry.transfer import Pinner


def hit_json(hit: SearchHit) -> dict[str, Any]:
    item = hit.item
    return {
        "id": item.id,
        "title": item.title,
        "node": item.node,
        "node_name": hit.node_name,
        "online": hit.online,
        "local": hit.local,
        "kind": item.kind,
        "mime": item.mime,
        "size": item.size,
        "duration": item.duration,
        "width": item.width,
        "height": item.height,
        "content_hash": item.content_hash,
        "visibility": item.visibility if hit.local else None,
        "created_at": item.created_at,
        "content_url": f"/api/v1/items/{item.id}/content",
        "poster_url": f"/api/v1/items/{item.id}/poster" if item.has_poster else None,
        "holders": [{"node": h["node_id"], "name": h["name"], "online": h["online"]} for h in hit.holders],
        "views": hit.views,
        "source": item.source,
        "year": item.year,
        "genres": list(item.genres),
        "show": item.show,
        "season": item.season,
        "episode": item.episode,
        "description": item.description,
    }


def filters_from(request: web.Request) -> SearchFilters:
    node = request.query.get("node") or None
    kind = request.query.get("kind") or None
    if node is not None:
        node = normalize_node_id(node)
    if kind is not None and kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}")
    year = request.query.get("year") or None
    if year is not None and (not year.isdigit() or len(year) > 4):
        raise InvalidInput("year must be a number such as 1999")
    source = request.query.get("source") or None
    if source is not None and source not in SOURCES:
        raise InvalidInput(f"source must be one of {', '.join(SOURCES)}")
    genre = (request.query.get("genre") or "").strip()[:60] or None
    online = request.query.get("online", "") in ("1", "true", "yes", "on")
    return SearchFilters(
        node=node, kind=kind, genre=genre, year=int(year) if year else None, source=source, online=online
    )


SOURCES = ("local", "upload", "url", "plex", "folder")


class SearchApi:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/api/v1/search", self.search),
            web.post("/api/v1/sync", self.sync),
            web.get("/api/v1/peers", self.peers),
        ]

    async def search(self, request: web.Request) -> web.Response:
        principal_of(request)
        query = request.query.get("q", "")
        limit = int_param(request, "limit", 50, 1, 200)
        filters = filters_from(request)
        if query.strip():
            hits = await self.registry.search(query, limit, filters)
        else:
            hits = await self.registry.recent(limit, filters)
        return web.json_response({"query": query, "results": [hit_json(h) for h in hits]})

    async def sync(self, request: web.Request) -> web.Response:
        require_admin(request)
        return web.json_response({"changed": await self.registry.sync_all(force=True)})

    async def peers(self, request: web.Request) -> web.Response:
        principal_of(request)
        return web.json_response({"peers": await self.registry.peers()})


class PinsApi:
    def __init__(self, pinner: Pinner) -> None:
        self.pinner = pinner

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/api/v1/pins", self.list_pins),
            web.post("/api/v1/pins", self.pin),
            web.delete("/api/v1/pins/{id}", self.unpin),
        ]

    async def list_pins(self, request: web.Request) -> web.Response:
        principal_of(request)
        return web.json_response({"pins": await self.pinner.list()})

    async def pin(self, request: web.Request) -> web.Response:
        principal_of(request)
        body = await json_body(request)
        item_id = body.get("id")
        if not isinstance(item_id, str):
            raise InvalidInput("id must be an item ID")
        pin = await self.pinner.pin(check_item_id(item_id))
        # 202: a fetch goes on (or waits for a source) after the answer; 200: the copy is already whole.
        return web.json_response(pin, status=200 if pin["state"] == "complete" else 202)

    async def unpin(self, request: web.Request) -> web.Response:
        principal_of(request)
        await self.pinner.unpin(check_item_id(request.match_info["id"]))
        return web.json_response({"unpinned": request.match_info["id"]})


class CommunityApi:
    """Comments, progress/views and history, for any item this node knows (own or a peer's)."""

    def __init__(self, community: CommunityService) -> None:
        self.community = community

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/api/v1/items/{id}/comments", self.thread),
            web.post("/api/v1/items/{id}/comments", self.post),
            web.patch("/api/v1/comments/{id}", self.edit),
            web.delete("/api/v1/comments/{id}", self.delete),
            web.post("/api/v1/items/{id}/progress", self.progress),
            web.get("/api/v1/history", self.history),
        ]

    async def thread(self, request: web.Request) -> web.Response:
        user = principal_of(request).name
        item_id = check_item_id(request.match_info["id"])
        return web.json_response({"comments": await self.community.thread(item_id, user)})

    async def post(self, request: web.Request) -> web.Response:
        user = principal_of(request).name
        item_id = check_item_id(request.match_info["id"])
        body = await json_body(request)
        parent = body.get("parent_id")
        if parent is not None and not isinstance(parent, str):
            raise InvalidInput("parent_id must be a comment ID")
        comment = await self.community.post(user, item_id, body.get("body"), parent)
        return web.json_response(comment, status=201)

    async def edit(self, request: web.Request) -> web.Response:
        user = principal_of(request).name
        body = await json_body(request)
        return web.json_response(await self.community.edit(user, request.match_info["id"], body.get("body")))

    async def delete(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        await self.community.delete(principal.name, request.match_info["id"], admin=principal.admin)
        return web.json_response({"deleted": request.match_info["id"]})

    async def progress(self, request: web.Request) -> web.Response:
        user = principal_of(request).name
        item_id = check_item_id(request.match_info["id"])
        body = await json_body(request)
        position = body.get("position")
        watched = body.get("watched")
        if isinstance(position, bool) or not isinstance(position, int | float):
            raise InvalidInput("position must be a number of seconds")
        if watched is not None and not isinstance(watched, bool):
            raise InvalidInput("watched must be true or false")
        return web.json_response(await self.community.progress(user, item_id, float(position), watched=watched))

    async def history(self, request: web.Request) -> web.Response:
        user = principal_of(request).name
        limit = int_param(request, "limit", 50, 1, 500)
        return web.json_response({"history": await self.community.history(user, limit)})
