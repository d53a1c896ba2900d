"""Helpers for the federation benchmarks: several real nodes on 127.0.0.x, joined into one group.

Used by bench/sync_initial.py, sync_idle.py, convergence.py, broker.py,
community.py, upload.py and rescan.py (on top of bench/_common.py). A
``FedNode`` is a real ``priv-network`` node: ``init`` through the CLI (under
its neutral process name, bench/_pn.py), config overrides written into its
``config.toml``, ``serve`` as a child process (optionally pinned to a core),
driven through its admin API (Bearer token) like the CLI drives it.
"""

from __future__ import annotations

import json
import socket
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import BENCH, PRIV_NETWORK, PYTHON, run, spawn, stop, taskset

from priv_network.config import render_config


def free_port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def set_config(data: Path, sections: dict[str, dict[str, Any]]) -> None:
    """Merge ``sections`` into a node's config.toml (the file is re-rendered with every option)."""
    path = data / "config.toml"
    raw = tomllib.loads(path.read_text())
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    path.write_text(render_config(raw))


class HttpError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


def http_json(url: str, *, method: str = "GET", token: str = "", body: Any = None, timeout: float = 600) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise HttpError(exc.code, exc.read().decode(errors="replace")) from None
    return json.loads(raw) if raw else None


class FedNode:
    """A real node in ``root/name`` listening on ``host`` (a 127.0.0.x address)."""

    def __init__(
        self,
        root: Path,
        name: str,
        host: str,
        *,
        sections: dict[str, dict[str, Any]] | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port or free_port_on(host)
        self.data = root / name
        self.log = root / f"{name}.log"
        self.proc: Any = None
        out = run([*PRIV_NETWORK, "--data", str(self.data), "init", "--name", name, "--listen", f"{host}:{self.port}"])
        self.node_id = out.strip().splitlines()[-1]
        self.token = (self.data / "admin.token").read_text().strip()
        if sections:
            set_config(self.data, sections)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data / "node.db"

    def serve(
        self, *, core: str | None = None, env: dict[str, str] | None = None, timeout: float = 60, entry: str = ""
    ) -> Any:
        """Run ``serve``; ``entry`` names a bench/_proto_*.py prototype to run instead of the plain CLI."""
        prog = [PYTHON, str(BENCH / entry)] if entry else PRIV_NETWORK
        cmd = [*prog, "--data", str(self.data), "serve"]
        if core is not None:
            cmd = taskset(core, cmd)
        self.proc = spawn(cmd, log=self.log, env=env)
        deadline = time.monotonic() + timeout
        while True:  # wait_http speaks to 127.0.0.1 only
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:
                    resp.read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer at {self.url}\n{self.log_tail()}") from None
                time.sleep(0.1)
        return self.proc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return int(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def api(self, method: str, path: str, body: Any = None, *, timeout: float = 600) -> Any:
        return http_json(self.url + path, method=method, token=self.token, body=body, timeout=timeout)

    def get(self, path: str) -> Any:
        return self.api("GET", path)

    def cli(self, *args: str, timeout: float = 600) -> str:
        try:
            return run([*PRIV_NETWORK, "--data", str(self.data), *args], timeout=timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- {self.name} log (tail) ---\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def invite(self, uses: int = 1) -> str:
        return str(self.api("POST", "/api/v1/network/invites", {"ttl": "24h", "uses": uses})["token"])

    def join(self, token: str) -> Any:
        return self.api("POST", "/api/v1/network/join", {"token": token})

    def peers(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/peers")["peers"])

    def search(self, q: str, limit: int = 50) -> list[dict[str, Any]]:
        from urllib.parse import urlencode

        return list(self.get("/api/v1/search?" + urlencode({"q": q, "limit": str(limit)}))["results"])

    def sync(self) -> dict[str, Any]:
        return dict(self.api("POST", "/api/v1/sync")["changed"])


def wait_for(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll ``check`` until true; returns the seconds it took. Raises after ``timeout``."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - t0


def all_peers_synced(node: FedNode, expected: int) -> bool:
    peers = node.peers()
    return len(peers) >= expected and all(p["online"] and p["last_sync_at"] for p in peers)


# -- profiling a running node with py-spy ----------------------------------------------------


# Leaf frames of threads that wait (py-spy's idle detection misses them in a container).
IDLE_LEAVES = (
    "_connection_worker_thread (aiosqlite/core.py:59)",
    "_worker (concurrent/futures/thread.py:81)",
    "EpollSelector.select",
    "select (selectors.py",
    "wait (threading.py",
    "_wait_for_tstate_lock",
)


class PySpy:
    """``py-spy record`` of one process (collapsed stacks), summarized by function.

    ``py-spy`` comes from PyPI (``.venv/bin/pip install py-spy``); without it
    (or without ptrace permission) ``start`` returns False and nothing is recorded.
    """

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.proc: Any = None

    def start(self) -> bool:
        exe = Path(PYTHON).parent / "py-spy"
        if not exe.exists():
            return False
        cmd = [str(exe), "record", "--pid", str(self.pid), "--rate", str(self.rate), "--format", "raw"]
        cmd += ["--nonblocking", "-o", str(self.out)]
        self.proc = spawn(cmd, log=self.out.with_suffix(".log"))
        time.sleep(1.0)
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            import signal

            stop(self.proc, signal.SIGINT, timeout=30)
            self.proc = None

    def summary(self, top: int = 25, inclusive: tuple[str, ...] = ()) -> str:
        """Top functions by own samples, and the share of samples under each ``inclusive`` pattern."""
        if not self.out.exists():
            return "(no py-spy output)"
        own: dict[str, int] = {}
        under: dict[str, int] = dict.fromkeys(inclusive, 0)
        total = 0
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            if not frames or frames[-1].startswith(IDLE_LEAVES):
                continue
            total += n
            leaf = frames[-1]
            own[leaf] = own.get(leaf, 0) + n
            for pat in inclusive:
                if any(pat in f for f in frames):
                    under[pat] += n
        if not total:
            return "(no samples)"
        lines = [f"{total} busy samples at {self.rate} Hz = {total / self.rate:.1f} s (all threads, waits excluded)"]
        for pat, n in under.items():
            lines.append(f"  {n / total:6.1%} under {pat}")
        lines.append("  own time, top functions:")
        for leaf, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {n / total:6.1%}  {leaf[:150]}")
        return "\n".join(lines)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), from /proc."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)
