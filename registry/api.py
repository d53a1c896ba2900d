"""The registry's HTTP handlers: search and sync."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from priv_network.errors import InvalidInput
from priv_network.http import int_param, json_body, principal_of, require_admin
from priv_network.identity import normalize_node_id
from priv_network.interfaces import SearchFilters, SearchHit
from priv_network.wire import KINDS, check_item_id
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
    }


def filters_from(request: web.Request) -> SearchFilters:
    node = request.query.get("node") or None
    kind = request.query.get("kind") or None
    if node is not None:
        node = normalize_node_id(node)
    if kind is not None and kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}")
    return SearchFilters(node=node, kind=kind)


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
        return web.json_response(await self.pinner.pin(check_item_id(item_id)), status=202)

    async def unpin(self, request: web.Request) -> web.Response:
        principal_of(request)
        await self.pinner.unpin(check_item_id(request.match_info["id"]))
        return web.json_response({"unpinned": request.match_info["id"]})
