"""Many lightweight peers in one process, each behind a byte-counting TCP proxy (for bench/sync_idle.py).

    python bench/_peer_farm.py --root DIR --count 20 --ready FILE --ctl-port PORT

Each peer is a complete node app (``priv_network.server.create_app``, its own
data folder, SQLite database and key) served by aiohttp on its own loopback
address 127.0.0.(FIRST+i). The address peers publish (``[node] url``) is a
proxy on the same address that relays every byte to the app and counts them
per direction, so that the bytes another node's requests cost on the wire
(request and response, headers included; TCP/IP overhead not) can be read
from the control endpoint:

* ``GET http://127.0.0.1:PORT/counters``: ``{name: {"up": bytes to the peer,
  "down": bytes from it, "conns": connections opened}}``
* ``POST http://127.0.0.1:PORT/reset``: zero them.

When every peer is up, FILE gets a JSON list of ``{name, node_id, url
(the proxy), direct_url, token}``. SIGINT/SIGTERM stop everything cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from priv_network.config import config_from_dict
from priv_network.identity import NodeIdentity
from priv_network.server import create_app, initialize

counters: dict[str, dict[str, int]] = {}
DUMP = os.environ.get("PN_FARM_DUMP")  # debugging: append every relayed chunk to this file


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, box: dict[str, int], key: str) -> None:
    try:
        while data := await reader.read(256 * 1024):
            box[key] += len(data)
            if DUMP:
                with open(DUMP, "ab") as fh:
                    fh.write(f"\n==== {key} {len(data)}\n".encode() + data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def start_proxy(name: str, host: str, port: int, target: int) -> asyncio.Server:
    box = counters.setdefault(name, {"up": 0, "down": 0, "conns": 0})

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        box["conns"] += 1
        try:
            s_reader, s_writer = await asyncio.open_connection(host, target)
        except OSError:
            c_writer.close()
            return
        await asyncio.gather(pump(c_reader, s_writer, box, "up"), pump(s_reader, c_writer, box, "down"))

    return await asyncio.start_server(handle, host, port)


async def run(args: argparse.Namespace) -> None:
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    runners: list[web.AppRunner] = []
    proxies: list[asyncio.Server] = []
    ready: list[dict[str, Any]] = []
    for i in range(args.count):
        host = f"127.0.0.{args.first + i}"
        name = f"peer{i:02d}"
        port, proxy_port = free_port(host), free_port(host)
        data = root / name
        data.mkdir()
        raw = {
            "node": {"name": name, "listen": f"{host}:{port}", "url": f"http://{host}:{proxy_port}"},
            "store": {"min_free": 0},
            "sync": {"interval": args.interval},
            "log": {"level": "WARNING"},
        }
        config = config_from_dict(data, raw)
        identity = NodeIdentity.generate()
        identity.save(config.key_path)
        token = await initialize(config, identity)
        runner = web.AppRunner(create_app(config, identity), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
        proxies.append(await start_proxy(name, host, proxy_port, port))
        ready.append(
            {
                "name": name,
                "node_id": identity.node_id,
                "url": f"http://{host}:{proxy_port}",
                "direct_url": f"http://{host}:{port}",
                "token": token,
            }
        )

    async def get_counters(_request: web.Request) -> web.Response:
        return web.json_response(counters)

    async def reset(_request: web.Request) -> web.Response:
        for box in counters.values():
            for k in box:
                box[k] = 0
        return web.json_response(counters)

    ctl = web.Application()
    ctl.router.add_get("/counters", get_counters)
    ctl.router.add_post("/reset", reset)
    ctl_runner = web.AppRunner(ctl, access_log=None)
    await ctl_runner.setup()
    await web.TCPSite(ctl_runner, "127.0.0.1", args.ctl_port).start()
    Path(args.ready).write_text(json.dumps(ready))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for proxy in proxies:
        proxy.close()
    await ctl_runner.cleanup()
    for runner in runners:
        await runner.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--first", type=int, default=3, help="first host: 127.0.0.FIRST")
    ap.add_argument("--ready", required=True)
    ap.add_argument("--ctl-port", type=int, required=True)
    ap.add_argument("--interval", default="1h", help="[sync] interval of every peer")
    args = ap.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
