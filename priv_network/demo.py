"""``priv-network demo``: a three-node group on 127.0.0.1/2/3 in one process, in under a minute.

Each node is a real node (own data folder, key, SQLite database, HTTP
server on its own loopback address) with a few generated sample videos;
they join by real invites through the admin API, sync, and keep running
until Ctrl-C. The data folders stay, so the CLI works against them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from aiohttp import web

from priv_network import server
from priv_network.client import AdminClient
from priv_network.config import CONFIG_FILE, load_config, render_config
from priv_network.errors import ConfigError
from priv_network.identity import NodeIdentity

NODES = (("alice", "127.0.0.1"), ("bob", "127.0.0.2"), ("carol", "127.0.0.3"))
SAMPLES = {
    "alice": [("Sunrise Over Test Mountains", (255, 140, 40)), ("Alice's Garden Tour", (60, 180, 75))],
    "bob": [("Bob's Bike Ride", (70, 110, 220)), ("Night Sky Timelapse", (20, 20, 60))],
    "carol": [("Carol Plays Amélie", (200, 60, 120)), ("Spider-Man Cosplay Parade", (220, 30, 30))],
}


def make_sample(path: Path, color: tuple[int, int, int], seconds: int = 4) -> None:
    """A small H.264 video with a moving bar on a coloured background (PyAV, no numpy, no ffmpeg)."""
    width, height, fps = 320, 180, 12
    container = av.open(str(path), mode="w")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    stream: Any = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    r, g, b = color
    row_bg = bytes((r, g, b)) * width
    for i in range(seconds * fps):
        bar = (i * 8) % width
        row = bytearray(row_bg)
        row[bar * 3 : (bar + 24) * 3] = b"\xff\xff\xff" * min(24, width - bar)
        frame = av.VideoFrame(width, height, "rgb24")
        plane = frame.planes[0]
        line = bytes(row) + b"\x00" * (plane.line_size - width * 3)
        plane.update(line * height)
        frame.pts = i
        frame.time_base = Fraction(1, fps)
        for packet in stream.encode(frame.reformat(format="yuv420p")):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()


async def _start_node(base: Path, name: str, host: str, port: int) -> tuple[web.AppRunner, str, str]:
    data = base / name
    if not (data / CONFIG_FILE).exists():
        data.mkdir(parents=True, mode=0o700)
        (data / CONFIG_FILE).write_text(
            render_config({"node": {"name": name, "listen": f"{host}:{port}"}, "sync": {"interval": "20s"}})
        )
        config = load_config(data)
        identity = NodeIdentity.generate()
        identity.save(config.key_path)
        token = await server.initialize(config, identity)
        config.admin_token_path.write_text(token + "\n")
        config.admin_token_path.chmod(0o600)
    config = load_config(data)
    identity = NodeIdentity.load(config.key_path)
    runner = web.AppRunner(server.create_app(config, identity, upgrade=True), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror} (try --port-base)") from None
    return runner, config.node.public_url, config.admin_token_path.read_text().strip()


def _prepare(base_dir: str | None) -> tuple[Path, bool]:
    base = Path(base_dir).expanduser().absolute() if base_dir else Path(tempfile.mkdtemp(prefix="priv-network-demo-"))
    (base / "sample-media").mkdir(parents=True, exist_ok=True)
    return base, not (base / "alice" / CONFIG_FILE).exists()


async def run(base_dir: str | None, port_base: int) -> int:
    base, fresh = await asyncio.get_running_loop().run_in_executor(None, _prepare, base_dir)
    media = base / "sample-media"
    runners: list[web.AppRunner] = []
    nodes: list[dict[str, Any]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for offset, (name, host) in enumerate(NODES):
            runner, url, token = await _start_node(base, name, host, port_base + offset)
            runners.append(runner)
            nodes.append({"name": name, "url": url, "token": token, "data": base / name})
        if fresh:
            await _populate(nodes, media)
        else:
            for node in nodes:
                async with AdminClient(node["url"], node["token"]) as client:
                    await client.post("/api/v1/sync")
        print(f"priv_network demo: three nodes, data in {base}", flush=True)
        for node in nodes:
            print(f"  {node['name']:6} {node['url']}/   token {node['token']}", flush=True)
        print(
            f"Log in with a token, or try: priv-network --data {base / 'carol'} search spider\n"
            "demo ready. Stop with Ctrl-C.",
            flush=True,
        )
        await stop.wait()
    finally:
        for runner in reversed(runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()
    print("demo stopped", flush=True)
    return 0


async def _populate(nodes: list[dict[str, Any]], media: Path) -> None:
    loop = asyncio.get_running_loop()
    clients = [AdminClient(n["url"], n["token"]) for n in nodes]
    for client in clients:
        await client.__aenter__()
    try:
        for node, client in zip(nodes, clients, strict=True):
            paths = []
            for title, color in SAMPLES[node["name"]]:
                path = media / f"{title}.mp4"
                await loop.run_in_executor(None, make_sample, path, color)
                paths.append(str(path))
            await client.post("/api/v1/items", {"paths": paths, "visibility": "network"})
        invite = (await clients[0].post("/api/v1/network/invites", {"ttl": "1h", "uses": 2}))["token"]
        for client in clients[1:]:
            await client.post("/api/v1/network/join", {"token": invite})
        for client in clients:
            await client.post("/api/v1/sync")
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)
