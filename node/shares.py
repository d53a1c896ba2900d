"""Share links: a signed, expiring, use-limited download link for someone outside the network.

The URL is ``{public URL}/s/{share id}.{signature}``; the signature is the
node's Ed25519 signature over ``priv-network share|node|share|item|expires``,
so a link cannot be forged or pointed at another item, and the share row
decides expiry, revocation and the number of downloads. Only the owner's
own items can be shared. A download counts when a request starts at byte 0;
resumed ranges of a started download do not use up the link.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from node.service import ContentManager
from node.store import CmaStore
from priv_network.errors import Forbidden, InvalidInput, NotFound
from priv_network.identity import NodeIdentity, PublicIdentity, b64u, b64u_decode
from priv_network.interfaces import ContentFile

MAX_SHARE_TTL = 365 * 86400
_SHARE_ID_LEN = 24


class ShareRefused(Forbidden):
    code = "share_refused"


class Shares:
    def __init__(self, *, store: CmaStore, cma: ContentManager, identity: NodeIdentity, url: str) -> None:
        self._store = store
        self._cma = cma
        self._identity = identity
        self._url = url

    def _message(self, share_id: str, item_id: str, expires_at: float) -> bytes:
        return f"priv-network share|{self._identity.node_id}|{share_id}|{item_id}|{int(expires_at)}".encode()

    def link(self, row: dict[str, Any]) -> str:
        sig = self._identity.sign(self._message(row["id"], row["item_id"], row["expires_at"]))
        return f"{self._url}/s/{row['id']}.{b64u(sig)}"

    async def create(self, item_id: str, ttl: float, downloads: int | None) -> dict[str, Any]:
        try:
            await self._cma.get_item(item_id)
        except NotFound:
            raise NotFound(f"no item {item_id} on this node (only an item's owner can share it)") from None
        if not 60 <= ttl <= MAX_SHARE_TTL:
            raise InvalidInput("--ttl must be between 1 minute and 365 days")
        if downloads is not None and not 1 <= downloads <= 1_000_000:
            raise InvalidInput("--downloads must be a positive number")
        now = time.time()
        row = {
            "id": secrets.token_hex(_SHARE_ID_LEN // 2),
            "item_id": item_id,
            "created_at": now,
            "expires_at": float(int(now + ttl)),
            "max_downloads": downloads,
            "downloads": 0,
            "revoked": False,
        }
        await self._store.insert_share(row)
        return self.to_json(row)

    def to_json(self, row: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        state = "active"
        if row["revoked"]:
            state = "revoked"
        elif row["expires_at"] < now:
            state = "expired"
        elif row["max_downloads"] is not None and row["downloads"] >= row["max_downloads"]:
            state = "used up"
        return {
            "id": row["id"],
            "item_id": row["item_id"],
            "title": row.get("title"),
            "url": self.link(row),
            "expires_at": row["expires_at"],
            "max_downloads": row["max_downloads"],
            "downloads": row["downloads"],
            "state": state,
        }

    async def list(self) -> list[dict[str, Any]]:
        return [self.to_json(r) for r in await self._store.list_shares()]

    async def revoke(self, share_id: str) -> None:
        if not await self._store.revoke_share(share_id.split(".", 1)[0].rsplit("/", 1)[-1]):
            raise NotFound(f"no share link {share_id[:40]!r}")

    async def open(self, token: str, *, counts: bool) -> tuple[str, ContentFile]:
        """Check a link and return (share id, file); ShareRefused says why not."""
        share_id, _, sig = token.partition(".")
        row = await self._store.get_share(share_id) if len(share_id) == _SHARE_ID_LEN else None
        if row is None:
            raise ShareRefused("this link is not valid")
        try:
            good = PublicIdentity.from_public_bytes(self._identity.public.public_key).verify(
                b64u_decode(sig), self._message(row["id"], row["item_id"], row["expires_at"])
            )
        except (ValueError, InvalidInput):
            good = False
        if not good:
            raise ShareRefused("this link is not valid (it was altered)")
        if row["revoked"]:
            raise ShareRefused("this link was revoked by its owner")
        if row["expires_at"] < time.time():
            raise ShareRefused("this link has expired")
        if counts and not await self._store.count_share_download(share_id):
            raise ShareRefused("this link has been used up")
        if not counts and row["max_downloads"] is not None and row["downloads"] == 0:
            # Resuming needs a download that started: else ranges would dodge the limit.
            raise ShareRefused("start this download from the beginning")
        return share_id, await self._cma.content_file(row["item_id"])
