"""Reference server for bench/stream.py: a bare aiohttp FileResponse, nothing else.

Serves FILE at ``/api/v1/items/{id}/content`` (the node's URL shape) with the
same chunk size the node uses, no middlewares, no database. It shows how much
of the node's gap to nginx is aiohttp itself.

    python bench/_bare_server.py PORT FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web


def main() -> None:
    port, path = int(sys.argv[1]), Path(sys.argv[2])

    async def content(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path, chunk_size=256 * 1024)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/api/v1/items/{id}/content", content)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
