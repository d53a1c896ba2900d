"""Signed requests to other nodes. One ``aiohttp.ClientSession`` per node, shared.

Every request carries an RFC 9421 signature (``priv_network.signing``); every
answer is parsed strictly and size-limited. Failures become
``PeerUnreachable`` (network) or ``InvalidInput`` (a peer that answers
garbage), so callers can back off without guessing.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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


class RelayEnded(ConnectionResetError):
    """A relayed transfer ended on this node's side: its own client left, or the relay cut it on purpose.

    Raised inside ``PeerClient.stream``'s block, it passes through unchanged: it
    is not the peer's failure. The handler then returns its response with the
    connection closed (aiohttp logs a ``ConnectionError`` raised out of a
    handler as an error, with a traceback).
    """


_BY_STATUS: dict[int, type[PrivNetworkError]] = {
    400: errors.InvalidInput,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
}


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or ``limit + 1`` bytes if it is longer (the caller refuses it).

    ``StreamReader.read(n)`` returns what is buffered so far, not n bytes: a
    body larger than one network read would arrive cut.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(256 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[: limit + 1]


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + path


def failure_reason(base_url: str, exc: BaseException) -> str:
    """What went wrong reaching a peer, in plain words ("cannot reach HOST:PORT: connection refused").

    aiohttp's own wording ("Cannot connect to host H:P ssl:default [Connect call failed ...]")
    is kept only for TLS failures, where its details matter.
    """
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(exc, aiohttp.ClientSSLError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror) or not os_error.errno:
            why = os_error.strerror or type(os_error).__name__
        else:
            why = os.strerror(os_error.errno)
        host = f"[{exc.host}]" if ":" in exc.host else exc.host
        return f"cannot reach {host}:{exc.port}: {why[:1].lower()}{why[1:]}"
    if isinstance(exc, TimeoutError):
        return f"cannot reach {base_url}: timed out"
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return f"cannot reach {base_url}: {reason}"


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
                raw = await read_body(resp, MAX_RESPONSE)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PeerUnreachable(failure_reason(base_url, exc)) from None
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

    @asynccontextmanager
    async def stream(
        self, base_url: str, path: str, *, headers: dict[str, str] | None = None, read_timeout: float | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A signed GET whose body the caller reads incrementally (content transfers)."""
        url = join_url(base_url, path)
        all_headers = dict(headers or {})
        all_headers.update(self.signer.sign("GET", url, b""))
        limit = aiohttp.ClientTimeout(
            total=None, connect=self.timeout.connect, sock_read=read_timeout or self.timeout.total
        )
        try:
            async with self.session.get(URL(url, encoded=True), headers=all_headers, timeout=limit) as resp:
                if resp.status >= 400:
                    raw = await read_body(resp, 64 * 1024)
                    message = f"{base_url} answered HTTP {resp.status}"
                    try:
                        data = json.loads(raw)
                        if isinstance(data, dict) and isinstance(data.get("error"), dict):
                            message = str(data["error"].get("message", message))[:300]
                    except (ValueError, UnicodeDecodeError):
                        pass
                    raise _BY_STATUS.get(resp.status, PeerUnreachable)(message)
                yield resp
        except RelayEnded:
            raise
        except aiohttp.ClientConnectorError as exc:  # no connection at all: say so in plain words
            raise PeerUnreachable(failure_reason(base_url, exc)) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError, OSError) as exc:
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise PeerUnreachable(f"transfer from {base_url} failed: {reason}") from None

    async def get(self, base_url: str, path: str, *, signed: bool = True) -> Any:
        return await self.request_json("GET", base_url, path, signed=signed)

    async def post(self, base_url: str, path: str, body: Any) -> Any:
        return await self.request_json("POST", base_url, path, body)
