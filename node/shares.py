"""Share links: a signed, expiring, use-limited download link for someone outside the network.

The URL is ``{public URL}/s/{share id}.{signature}``; the signature is the
node's Ed25519 signature over ``priv-network share|node|share|item|expires``,
so a link cannot be forged or pointed at another item, and the share row
decides expiry, revocation and the number of downloads. Only the owner's
own items can be shared.

A link limited to N downloads may send N times the file's size in bytes,
whatever the requests look like: one download from byte 0, a resume with
``Range: bytes=X-``, or a download manager's parallel pieces. The bytes are
counted as they are handed to the network, piece by piece (``CHUNK``); a
download is counted each time the bytes of the downloads counted so far run
out. On top of that, one small margin per link (an eighth of the file, at
most ``MARGIN``) covers what a broken connection may have lost in flight, so
a resumed download can finish. Once the downloads are all counted and their
bytes sent, every request (ranges too) is refused as used up. A request that
asks for more than the link has left is refused up front (403), before a
status and length go out that it could not keep to; one that races another
past the allowance is still cut off where the allowance ends. The bytes
left of a counted download are kept in memory: after a restart of the node, a
resume counts as a new download.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from node.service import ContentManager
from node.serving import FileServe, OpenFiles
from node.store import CmaStore
from priv_network.errors import Forbidden, InvalidInput, NotFound
from priv_network.identity import NodeIdentity, PublicIdentity, b64u, b64u_decode
from priv_network.interfaces import ContentFile
from priv_network.ranges import ByteRange

log = logging.getLogger(__name__)

MAX_SHARE_TTL = 365 * 86400
MAX_SHARE_DOWNLOADS = 1_000_000
_SHARE_ID_LEN = 24
CHUNK = 1024 * 1024  # a share download is sent, and counted, in pieces of at most this many bytes
MARGIN = 16 * 1024 * 1024  # at most this (and an eighth of the file) beyond N downloads, for broken connections


class ShareRefused(Forbidden):
    code = "share_refused"


class ShareCut(ConnectionResetError):
    """A response ran past its link's allowance: the connection was closed where the allowance ended."""


@dataclass
class _Allowance:
    """What a link may still send (in memory)."""

    credit: int  # bytes left of the downloads counted so far
    margin: int  # bytes it may still send beyond them (what broken connections lost in flight)


@dataclass(frozen=True)
class SharedFile:
    """What a valid link opens: the file, and the name a browser should save it under."""

    share_id: str
    file: ContentFile
    name: str
    left: int | None  # bytes the link may still send (None: no limit)


# The name of the member owning a peer's item this node knows (from its registry), or None.
OwnerName = Callable[[str], Awaitable[str | None]]


class Shares:
    def __init__(
        self,
        *,
        store: CmaStore,
        cma: ContentManager,
        identity: NodeIdentity,
        url: str,
        owner_name: OwnerName | None = None,
    ) -> None:
        self._store = store
        self._cma = cma
        self._identity = identity
        self._url = url
        self._owner_name = owner_name
        self._allowances: dict[str, _Allowance] = {}
        self._counting = asyncio.Lock()  # one download counted at a time, so two requests do not both count one

    def _message(self, share_id: str, item_id: str, expires_at: float) -> bytes:
        return f"priv-network share|{self._identity.node_id}|{share_id}|{item_id}|{int(expires_at)}".encode()

    def link(self, row: dict[str, Any]) -> str:
        sig = self._identity.sign(self._message(row["id"], row["item_id"], row["expires_at"]))
        return f"{self._url}/s/{row['id']}.{b64u(sig)}"

    async def create(self, item_id: str, ttl: float, downloads: int | None) -> dict[str, Any]:
        try:
            item = await self._cma.get_item(item_id)
        except NotFound:
            owner = await self._owner_name(item_id) if self._owner_name is not None else None
            if owner is not None:  # a peer's item (pinned here, or known from the registry)
                raise Forbidden(
                    f"{item_id} belongs to {owner}: only its owner can share it", code="not_owner"
                ) from None
            raise NotFound(f"no item {item_id} on this node (only an item's owner can share it)") from None
        if not 60 <= ttl <= MAX_SHARE_TTL:
            raise InvalidInput("ttl must be between 1 minute and 365 days")
        if downloads is not None and not 1 <= downloads <= MAX_SHARE_DOWNLOADS:
            raise InvalidInput(f"downloads must be between 1 and {MAX_SHARE_DOWNLOADS}")
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
        return self.to_json({**row, "title": item.title})

    def to_json(self, row: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        state = "active"
        if row["revoked"]:
            state = "revoked"
        elif row["expires_at"] < now:
            state = "expired"
        elif self._used_up(row):
            state = "used up"
        return {
            "id": row["id"],
            "item_id": row["item_id"],
            "title": row.get("title"),
            "url": self.link(row),
            "expires_at": row["expires_at"],
            "max_downloads": row["max_downloads"],
            "downloads": row["downloads"],
            "bytes_left": self.bytes_left(row, int(row["size"])) if "size" in row else None,
            "state": state,
        }

    async def list(self) -> list[dict[str, Any]]:
        return [self.to_json(r) for r in await self._store.list_shares()]

    async def revoke(self, share_id: str) -> None:
        if not await self._store.revoke_share(share_id.split(".", 1)[0].rsplit("/", 1)[-1]):
            raise NotFound(f"no share link {share_id[:40]!r}")

    def _used_up(self, row: dict[str, Any]) -> bool:
        """Every download counted and nothing left of their bytes (a resume of the last one may go on)."""
        if row["max_downloads"] is None or row["downloads"] < row["max_downloads"]:
            return False
        allowance = self._allowances.get(row["id"])
        return allowance is None or allowance.credit <= 0

    async def take(self, share_id: str, size: int, n: int) -> int:
        """How many of the next ``n`` bytes of a ``size``-byte file the link may send now (0: none).

        From the bytes left of the downloads counted so far; when they do not cover ``n``, one more
        download is counted (if the link has one left); beyond that, from the link's margin.
        """
        allowance = self._allowances.get(share_id)
        if allowance is None:
            allowance = self._allowances[share_id] = _Allowance(credit=0, margin=min(size // 8, MARGIN))
        if allowance.credit < n:
            async with self._counting:
                if allowance.credit < n and await self._store.count_share_download(share_id):
                    allowance.credit += size
        allowed = max(0, min(n, allowance.credit + allowance.margin))
        from_credit = min(allowed, max(allowance.credit, 0))
        allowance.credit -= from_credit
        allowance.margin -= allowed - from_credit
        return allowed

    def interrupted(self, share_id: str, taken: int) -> None:
        """A response broke off after ``taken`` bytes were handed to the network: the last of them may
        never have arrived. Give them back from the link's margin, so that a resume is let in."""
        allowance = self._allowances.get(share_id)
        if allowance is not None:
            back = min(taken, allowance.margin)
            allowance.credit += back
            allowance.margin -= back

    async def open(self, token: str) -> SharedFile:
        """Check a link and return what it opens; ShareRefused says why not."""
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
        if self._used_up(row):
            raise ShareRefused("this link has been used up")
        try:
            f, name = await self._cma.download(row["item_id"])
        except NotFound:  # removed meanwhile (its links go with it)
            raise ShareRefused("this link is not valid") from None
        return SharedFile(share_id, f, name, self.bytes_left(row, f.size))

    def bytes_left(self, row: dict[str, Any], size: int) -> int | None:
        """What a link may still send: the downloads not yet counted, the rest of those that were
        (a resume), and its margin. None for a link without a download limit."""
        if row["max_downloads"] is None:
            return None
        allowance = self._allowances.get(row["id"])
        credit, margin = (allowance.credit, allowance.margin) if allowance else (0, min(size // 8, MARGIN))
        return max(0, row["max_downloads"] - row["downloads"]) * size + max(credit, 0) + max(margin, 0)


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


class ShareServe(FileServe):
    """A share link's file: every piece of the body is first drawn from the link's allowance.

    Conditional requests and Range are FileServe's; only the sending of the body is overridden
    (``FileServe._sendfile``, this project's own method), to send it piece by piece.
    """

    def __init__(
        self,
        f: ContentFile,
        files: OpenFiles,
        shares: Shares,
        share_id: str,
        *,
        headers: dict[str, str],
        left: int | None = None,
    ) -> None:
        super().__init__(f.path, files, headers=headers)
        self._shares = shares
        self._share_id = share_id
        self._size = f.size
        self._left = left
        self.taken = 0  # bytes of the body drawn from the allowance (handed to the network, or about to be)

    def _admit(self, request: web.BaseRequest, span: ByteRange) -> None:
        """Refuse up front (403, with the link's page) a request the link has not enough left for,
        rather than send a status and a length it cannot keep to."""
        if self._left is not None and span.length > self._left:
            raise ShareRefused(
                f"this link has {_mib(self._left)} left, not enough for this request ({_mib(span.length)});"
                " it can still finish an interrupted download"
            )

    async def _sendfile(self, request: web.BaseRequest, f: io.BufferedReader, span: ByteRange) -> None:
        offset = span.start
        try:
            while offset < span.stop:
                n = await self._shares.take(self._share_id, self._size, min(CHUNK, span.stop - offset))
                if n == 0:
                    log.info("share link %s used up: response cut after %d bytes", self._share_id, self.taken)
                    if request.transport is not None:
                        request.transport.close()
                    raise ShareCut(f"share link {self._share_id} used up")
                self.taken += n
                await super()._sendfile(request, f, ByteRange(offset, offset + n, partial=True))
                offset += n
        except ShareCut:
            raise
        except BaseException:
            self._shares.interrupted(self._share_id, self.taken)
            raise
