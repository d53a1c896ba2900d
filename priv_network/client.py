"""The admin API client the CLI (and later the REPL) uses. One session per client."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import aiohttp

from priv_network import errors
from priv_network.errors import NodeUnreachable, PrivNetworkError

_BY_STATUS: dict[int, type[PrivNetworkError]] = {
    400: errors.InvalidInput,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    416: errors.RangeNotSatisfiable,
    503: errors.NodeUnreachable,
    507: errors.InsufficientStorage,
}


class AdminClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 3600) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=5)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout, headers={"Authorization": f"Bearer {self._token}"})
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        assert self._session is not None, "use `async with AdminClient(...)`"
        url = self.base_url + path
        try:
            async with self._session.request(method, url, json=json_body, params=params) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientConnectionError, OSError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
                raise NodeUnreachable(
                    f"no node is running at {self.base_url}; start it with `priv-network serve`"
                ) from None
            raise NodeUnreachable(f"lost the connection to the node at {self.base_url}: {exc}") from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status >= 400:
            message = f"HTTP {status}"
            code = None
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                message = str(data["error"].get("message", message))
                code = data["error"].get("code")
            cls = _BY_STATUS.get(status, PrivNetworkError)
            raise cls(message, code=code if isinstance(code, str) else None)
        return data

    async def get(self, path: str, **params: str) -> Any:
        return await self.request("GET", path, params={k: v for k, v in params.items() if v is not None} or None)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.request("POST", path, json_body=body if body is not None else {})

    async def patch(self, path: str, body: Any) -> Any:
        return await self.request("PATCH", path, json_body=body)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)
