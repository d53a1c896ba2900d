"""doctor: the node-side checks (schema, public URL reachable as this node) and the CLI's local ones."""

from __future__ import annotations

import os

from tests.conftest import Cli, RunningNode


async def test_node_side_checks(node: RunningNode) -> None:
    async with node.client.get("/api/v1/doctor") as resp:
        assert resp.status == 401
    report = await node.api("GET", "/api/v1/doctor")
    by_what = {c["what"]: c for c in report["checks"]}
    schema = next(c for w, c in by_what.items() if w.startswith("database schema"))
    assert schema["ok"] is True
    url = next(c for w, c in by_what.items() if w.startswith("public URL"))
    assert url["ok"] is True, url


def test_cli_doctor_flags_loose_permissions(cli: Cli) -> None:
    assert cli.run("init", "--name", "alice", "--listen", "127.0.0.1:9").returncode == 0
    os.chmod(cli.data / "node.key", 0o644)
    result = cli.run("doctor")
    assert result.returncode == 1
    assert "FAIL  node.key permissions 644" in result.stdout and "chmod 600" in result.stdout
    assert "Traceback" not in result.stderr
