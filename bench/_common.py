"""Shared helpers of the benchmarks: processes, a real node, timing, reporting.

Not a test module and not a package: each ``bench/*.py`` script puts this
folder on ``sys.path`` by being run as a script.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
# The ``priv-network`` CLI (``priv_network.cli:main``) under a neutral process
# name: see bench/_pn.py for why.
PRIV_NETWORK = [PYTHON, str(BENCH / "_pn.py")]
HOST = "127.0.0.1"
GiB = 1024**3
MiB = 1024**2

SERVER_CORE = "0"
CLIENT_CORE = "1"


# -- processes ----------------------------------------------------------------

_children: list[subprocess.Popen[bytes]] = []
_temp_dirs: list[Path] = []


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_cleanup() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so ``finally`` blocks run, and clean up at exit."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    atexit.register(cleanup)


def spawn(cmd: Sequence[str], *, log: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child in its own session (a terminal's Ctrl-C reaches only us; we stop it)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=str(REPO)
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 15.0) -> None:
    """Stop one child we started (by its pid): ``sig`` first, SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=5)
    if proc in _children:
        _children.remove(proc)


def temp_dir(prefix: str) -> Path:
    """A temporary folder removed at exit. Same filesystem as the repo's bench/out when possible."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=OUT))
    _temp_dirs.append(path)
    return path


def cleanup() -> None:
    for proc in list(reversed(_children)):
        stop(proc, signal.SIGTERM, timeout=10)
    for path in _temp_dirs:
        if os.environ.get("PN_BENCH_KEEP"):
            print(f"kept {path} (PN_BENCH_KEEP is set)", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)
    _temp_dirs.clear()


def run_main(main: Callable[[], int]) -> int:
    """Run a benchmark's main: Ctrl-C or SIGTERM stops it with one line, after the clean-up."""
    install_cleanup()
    try:
        return main()
    except KeyboardInterrupt:
        cleanup()
        print("\ninterrupted: servers stopped, temporary folders removed", file=sys.stderr)
        return 130


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str = "/", proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://{HOST}:{port}{path}"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                resp.read()
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no answer from {url} after {timeout:.0f}s")


def taskset(core: str, cmd: Sequence[str]) -> list[str]:
    if shutil.which("taskset") is None:
        raise SystemExit("taskset is missing: apt-get install util-linux")
    return ["taskset", "-c", core, *cmd]


# -- a real node ----------------------------------------------------------------


class Node:
    """A real priv_network node in a temporary data folder, driven through its CLI."""

    def __init__(self, root: Path, *, name: str = "bench") -> None:
        self.data = root / "node"
        self.port = free_port()
        self.log = root / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        run([*PRIV_NETWORK, "--data", str(self.data), "init", "--name", name, "--listen", f"{HOST}:{self.port}"])
        self.token = (self.data / "admin.token").read_text().strip()

    def serve(
        self, *, core: str | None = None, command: Sequence[str] | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        cmd = list(command) if command else [*PRIV_NETWORK, "--data", str(self.data), "serve"]
        if core is not None:
            cmd = taskset(core, cmd)
        self.proc = spawn(cmd, log=self.log, env=env)
        try:
            wait_http(self.port, "/healthz", self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- node log (tail) ---\n{self.log_tail()}") from None
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGINT)
            self.proc = None

    def cli(self, *args: str) -> str:
        try:
            return run([*PRIV_NETWORK, "--data", str(self.data), *args])
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- node log (tail) ---\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def add(self, *paths: str | Path) -> list[dict[str, Any]]:
        out = self.cli("add", *map(str, paths), "--json")
        return list(json.loads(out))

    def blob_path(self, content_hash: str) -> Path:
        return self.data / "store" / "blobs" / content_hash[:2] / content_hash[2:4] / content_hash


def run(cmd: Sequence[str], *, timeout: float = 600) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, timeout=timeout, check=False, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])}... exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[-2000:]}"
        )
    return proc.stdout.decode()


# -- data ---------------------------------------------------------------------------


def make_random_file(path: Path, size: int, seed: int = 1) -> Path:
    """Incompressible bytes, fast (numpy's generator when installed)."""
    chunk = 16 * MiB
    try:
        import numpy as np

        rng = np.random.default_rng(seed)

        def block(n: int) -> bytes:
            return bytes(rng.bytes(n))
    except ImportError:
        block = os.urandom
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(chunk, left)
            fh.write(block(n))
            left -= n
    return path


def read_through(path: Path) -> None:
    """Pull a file into the page cache."""
    buf = bytearray(4 * MiB)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass


# -- measuring and reporting ----------------------------------------------------------


class RssSampler:
    """Peak RSS of one process, sampled every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.before = self.proc.memory_info().rss
        self.peak = self.before
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss
            except Exception:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    box: list[float] = []
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - t0)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def machine_line() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def save_result(name: str, data: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    data = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_line(), **data}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
