"""`priv-network demo` comes up with three joined nodes, search works across them, Ctrl-C stops it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, free_port


def test_demo_up_search_and_down(tmp_path: Path) -> None:
    base = free_port()
    while any(free_port() == base + i for i in (1, 2)):
        base = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "priv_network", "demo", "--dir", str(tmp_path / "demo"), "--port-base", str(base)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "demo ready" in line:
                break
        assert any("demo ready" in line for line in lines), "".join(lines) + (demo.stderr.read() if demo.poll() else "")
        assert sum("token pn_" in line for line in lines) == 3
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "priv_network",
                "--data",
                str(tmp_path / "demo" / "carol"),
                "search",
                "sunrise",
                "--json",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "Sunrise Over Test Mountains" in result.stdout  # alice's item, found on carol
        peers = subprocess.run(
            [sys.executable, "-m", "priv_network", "--data", str(tmp_path / "demo" / "bob"), "peers", "--json"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert peers.stdout.count('"node_id"') == 2
    finally:
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=60)
    assert demo.returncode == 0, err
    assert "demo stopped" in out
    assert "Traceback" not in err
