"""Signed requests to other nodes. One ``aiohttp.ClientSession`` per node, shared.

Every request carries an RFC 9421 signature (``priv_network.signing``); every
answer is parsed strictly and size-limited. Failures become
``PeerUnreachable`` (network) or ``InvalidInput`` (a peer that answers
garbage), so callers can back off without guessing.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from yarl import URL

from priv_network import errors
from priv_network.errors import InvalidInput, PrivNetworkError
from priv_network.signing import Signer

MAX_RESPONSE = 64 * 1024 * 1024


class PeerUnreachable(PrivNetworkError):
    status = 502
    code = "peer_unreachable"


_BY_STATUS: dict[int, type[PrivNetworkError]] = {
    400: errors.InvalidInput,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
}


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + path


class PeerClient:
    def __init__(self, session: aiohttp.ClientSession, signer: Signer, *, timeout: float = 30.0) -> None:
        self.session = session
        self.signer = signer
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=min(10.0, timeout))

    async def request_json(
        self, method: str, base_url: str, path: str, body: Any = None, *, signed: bool = True
    ) -> Any:
        url = join_url(base_url, path)
        raw_body = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if signed:
            headers.update(self.signer.sign(method, url, raw_body))
        try:
            async with self.session.request(
                method, URL(url, encoded=True), data=raw_body or None, headers=headers, timeout=self.timeout
            ) as resp:
                raw = await resp.content.read(MAX_RESPONSE + 1)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise PeerUnreachable(f"cannot reach {base_url}: {reason}") from None
        if len(raw) > MAX_RESPONSE:
            raise InvalidInput(f"answer from {base_url} is larger than {MAX_RESPONSE} bytes")
        try:
            data = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            if status >= 400:
                raise PeerUnreachable(f"{base_url} answered HTTP {status}") from None
            raise InvalidInput(f"{base_url} answered with invalid JSON") from None
        if status >= 400:
            message = f"{base_url} answered HTTP {status}"
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                message = str(data["error"].get("message", message))[:300]
            raise _BY_STATUS.get(status, PeerUnreachable)(message)
        return data

    async def get(self, base_url: str, path: str, *, signed: bool = True) -> Any:
        return await self.request_json("GET", base_url, path, signed=signed)

    async def post(self, base_url: str, path: str, body: Any) -> Any:
        return await self.request_json("POST", base_url, path, body)
