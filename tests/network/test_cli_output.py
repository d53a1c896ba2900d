"""What the shared CLI/REPL commands print about other members: names, failures, exit codes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from priv_network import commands
from priv_network.client import AdminClient
from priv_network.errors import PrivNetworkError
from tests.network.conftest import NetNode, Network, join, write_file


async def run(node: NetNode, *line: str) -> tuple[int, str]:
    args = commands.build_parser().parse_args(list(line))
    out = io.StringIO()
    async with AdminClient(node.url, node.token) as client:
        code = await args.remote(client, args, out)
    return code, out.getvalue()


async def run_failing(node: NetNode, *line: str) -> tuple[PrivNetworkError, str]:
    """Run a command that must fail; returns the error and what it printed before it."""
    args = commands.build_parser().parse_args(list(line))
    out = io.StringIO()
    async with AdminClient(node.url, node.token) as client:
        with pytest.raises(PrivNetworkError) as excinfo:
            await args.remote(client, args, out)
    return excinfo.value, out.getvalue()


async def test_sync_names_nodes_and_fails_when_a_peer_does(network: Network, tmp_path: Path) -> None:
    alice, bob = await network.node("alice"), await network.node("bob")
    await join(alice, bob)
    await bob.add(write_file(tmp_path, "song.txt"))
    code, text = await run(alice, "sync")
    assert code == 0
    assert [" ".join(line.split()) for line in text.splitlines()] == ["alice (this node) 0 changes", "bob 1 change"]
    assert alice.node_id not in text and bob.node_id not in text

    await bob.stop()
    error, text = await run_failing(alice, "sync")
    assert error.message == "could not sync with bob (see above)"
    assert [" ".join(line.split()) for line in text.splitlines()] == [
        "alice (this node) 0 changes",
        f"bob error: cannot reach {bob.host}:{bob.port}: connection refused",
    ]


async def test_sync_tells_apart_members_with_the_same_name(network: Network) -> None:
    alice, other = await network.node("alice"), await network.node("alice")
    await join(alice, other)
    code, text = await run(alice, "sync")
    assert code == 0
    assert text.splitlines()[0].startswith(f"alice ({alice.node_id}) (this node)")
    assert text.splitlines()[1].startswith(f"alice ({other.node_id})")


async def test_remove_explains_every_id_it_cannot_remove(network: Network, tmp_path: Path) -> None:
    alice, bob = await network.node("alice"), await network.node("bob")
    await join(alice, bob)
    cover, notes = (i["id"] for i in await bob.add(write_file(tmp_path, "a.txt"), write_file(tmp_path, "b.txt")))
    await alice.sync()
    await alice.api("POST", "/api/v1/pins", json={"id": cover})
    (mine,) = await alice.add(write_file(tmp_path / "mine", "mine.txt"), visibility="private")

    error, text = await run_failing(alice, "remove", "nosuch1", cover, mine["id"], notes, "a" * 26, "nosuch1")
    assert text == f"removed {mine['id']}\n"  # what can be removed is, whatever else fails
    assert error.message == (
        f"no items 'nosuch1', '{'a' * 26}' on this node; "
        f"item '{cover}' belongs to bob; use `unpin {cover}` to drop this node's copy; "
        f"item '{notes}' belongs to bob; only its owner can remove it"
    )

    error, text = await run_failing(alice, "remove", "nosuch1")
    assert (error.message, text) == ("no item 'nosuch1' on this node", "")
