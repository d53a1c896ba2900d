"""A bench-local prototype of the fix docs/benchmarks.md recommends for peer requests.

``priv_network.peerclient.PeerClient.request_json`` reads a peer's answer
with ``await resp.content.read(MAX_RESPONSE + 1)``. aiohttp's
``StreamReader.read(n)`` returns *up to* n bytes: whatever is buffered when
it is called (one socket read, typically 64 KiB or less), not the whole
body. Any answer larger than that arrives cut, fails ``json.loads`` and the
peer is marked offline ("answered with invalid JSON"): on loopback every
catalog page above ~100 entries (~90 KB), so the initial sync of a peer with
more than a few hundred items never completes.

This runs the real ``priv-network`` CLI (``serve`` etc.) after replacing,
in this process only, that one read with a loop that reads the body to its
end (still bounded by ``MAX_RESPONSE``). Nothing under priv_network/ is
edited.

    python bench/_proto_sync.py --data DIR serve
"""

from __future__ import annotations

import json
import sys
from typing import Any

import aiohttp
from yarl import URL

from priv_network import peerclient
from priv_network.cli import main
from priv_network.errors import InvalidInput
from priv_network.peerclient import _BY_STATUS, MAX_RESPONSE, PeerUnreachable, join_url


async def _read_all(resp: aiohttp.ClientResponse, base_url: str) -> bytes:
    raw = bytearray()
    async for chunk in resp.content.iter_any():
        raw += chunk
        if len(raw) > MAX_RESPONSE:
            raise InvalidInput(f"answer from {base_url} is larger than {MAX_RESPONSE} bytes")
    return bytes(raw)


async def request_json(
    self: peerclient.PeerClient, method: str, base_url: str, path: str, body: Any = None, *, signed: bool = True
) -> Any:
    """``PeerClient.request_json`` with the body read to its end (the only change)."""
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
            raw = await _read_all(resp, base_url)  # was: await resp.content.read(MAX_RESPONSE + 1)
            status = resp.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise PeerUnreachable(f"cannot reach {base_url}: {reason}") from None
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


peerclient.PeerClient.request_json = request_json  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
