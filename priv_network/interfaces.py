"""The small interfaces the parts meet through.

``node`` (the CMA), ``registry`` (manager + search) and ``webapp`` never import
each other. Each depends only on these protocols; ``priv_network.server`` is
the one place that wires real objects into them. A part could later run as
its own process behind the same protocol, served over HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from priv_network.wire import CommentInfo, FeedPage, ItemInfo, RosterEvent

# Called by the CMA after any change to its feed; the manager uses it to pull
# the node's own feed into the registry at once.
ChangeListener = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Principal:
    """Who is making an API request."""

    name: str
    admin: bool
    token_id: str


@dataclass(frozen=True)
class ContentFile:
    """A local file the HTTP layer may stream (with sendfile)."""

    path: Path
    mime: str
    size: int
    etag: str


@dataclass
class IngestReport:
    added: list[ItemInfo] = field(default_factory=list)
    existing: list[ItemInfo] = field(default_factory=list)
    skipped_unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    # Items whose file changed in place (watched folders, Plex): same ID, new content.
    updated: list[ItemInfo] = field(default_factory=list)


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    name: str
    url: str
    version: str
    items: int
    store_bytes: int
    free_bytes: int
    feed_id: str
    feed_seq: int


@dataclass(frozen=True)
class SearchHit:
    item: ItemInfo
    online: bool
    node_name: str
    local: bool
    holders: tuple[dict[str, object], ...] = ()
    views: int = 0


@dataclass(frozen=True)
class SearchFilters:
    node: str | None = None
    kind: str | None = None
    genre: str | None = None
    year: int | None = None
    source: str | None = None
    online: bool = False


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Principal | None: ...

    async def create_session(self, principal: Principal) -> str: ...

    async def end_session(self, token: str) -> None: ...


class CatalogSource(Protocol):
    """A node's changes feed, as seen by one reader (filtered for it)."""

    node_id: str

    async def fetch_changes(self, since: int, limit: int) -> FeedPage: ...


class SearchService(Protocol):
    async def search(self, query: str, limit: int, filters: SearchFilters | None = None) -> list[SearchHit]: ...

    async def recent(self, limit: int, filters: SearchFilters | None = None) -> Sequence[SearchHit]: ...

    async def sync_all(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Peer:
    """A member node as the manager needs it: who, and where to poll."""

    node_id: str
    name: str
    url: str


class PeerDirectory(Protocol):
    """The CMA's roster, as the manager sees it."""

    async def active_peers(self) -> list[Peer]: ...

    async def apply_roster_events(self, events: Sequence[RosterEvent], source: str) -> int: ...


@dataclass(frozen=True)
class FederationGate:
    """What the signature middleware needs: a verifier, this node's URL, and whom to tell."""

    verify: Callable[[str, str, Mapping[str, str], bytes], str]
    own_url: str
    peer_seen: Callable[[str], Awaitable[None]]


class ContentBroker(Protocol):
    """The manager's side of watching a peer's item through this node."""

    async def item(self, item_id: str) -> ItemInfo: ...

    async def views(self, item: ItemInfo) -> int: ...

    async def stream(self, request: web.Request, item_id: str) -> web.StreamResponse: ...

    async def poster(self, item_id: str) -> web.Response: ...


class PinStore(Protocol):
    """The CMA's side of pinning: the only writer of pinned copies."""

    async def begin(self, item: ItemInfo, manifest: bytes) -> int: ...

    # A pin nobody can serve now: recorded as waiting, without its manifest (``begin`` stores it later).
    async def wait(self, item: ItemInfo, reason: str) -> None: ...

    # ``data``: the block, or the network chunks it arrived in, in order (not joined).
    async def write_block(self, content_hash: str, index: int, data: bytes | Sequence[bytes | memoryview]) -> int: ...

    async def finish(self, content_hash: str) -> None: ...

    async def fail(self, content_hash: str, error: str) -> None: ...

    async def remove(self, content_hash: str) -> None: ...

    async def list(self) -> list[dict[str, Any]]: ...

    async def get(self, content_hash: str) -> dict[str, Any] | None: ...

    async def set_visibility(self, content_hash: str, visibility: str) -> None: ...

    async def local_file(self, content_hash: str) -> ContentFile | None: ...


class TrafficMeter(Protocol):
    """Counts bytes moved per subject ("peer:ID", "share:ID") and direction ("sent", "received")."""

    async def add(self, subject: str, direction: str, n: int) -> None: ...


class LocalCommunity(Protocol):
    """The CMA's comments and view totals on this node's own items."""

    async def add(
        self,
        *,
        comment_id: str,
        item_id: str,
        parent_id: str | None,
        author: str,
        author_node: str,
        author_node_name: str,
        body: str,
        viewer: str | None,
        created_at: float | None = None,
    ) -> CommentInfo: ...

    async def edit(self, comment_id: str, body: str, *, author: str, author_node: str) -> CommentInfo: ...

    async def delete(self, comment_id: str, *, author: str | None, author_node: str | None, owner: bool) -> None: ...

    async def add_views(self, receipts: list[tuple[str, str, float]], viewer: str | None) -> dict[str, int]: ...


class WebBackend(Protocol):
    """Everything the web app's pages read or change, as plain data (JSON-shaped dicts).

    The composition root implements it over the CMA and the manager, so the
    web app has no SQL and no store access, and sees the same rules and
    errors as the API.
    """

    async def has_users(self) -> bool: ...

    async def create_owner(self, name: str, password: str) -> Principal: ...

    async def login(self, name: str, password: str, address: str) -> Principal: ...

    async def token_login(self, token: str) -> Principal | None: ...

    async def create_session(self, principal: Principal) -> str: ...

    async def end_session(self, token: str) -> None: ...

    async def prefs(self, user: str) -> dict[str, Any]: ...

    async def set_prefs(self, user: str, changes: dict[str, Any]) -> dict[str, Any]: ...

    async def login_history(self, user: str) -> list[dict[str, Any]]: ...

    async def search(self, query: str, limit: int, filters: SearchFilters) -> list[dict[str, Any]]: ...

    async def item(self, item_id: str) -> dict[str, Any]: ...

    async def comments(self, item_id: str, user: str) -> list[dict[str, Any]]: ...

    async def post_comment(self, user: str, item_id: str, body: str, parent: str | None) -> dict[str, Any]: ...

    async def history(self, user: str) -> list[dict[str, Any]]: ...

    async def peers(self) -> list[dict[str, Any]]: ...

    async def downloads(self) -> list[dict[str, Any]]: ...

    async def pins(self) -> list[dict[str, Any]]: ...

    async def status(self) -> dict[str, Any]: ...
