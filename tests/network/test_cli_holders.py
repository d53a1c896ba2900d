"""What `search`, `item` and `status` print about who holds a copy, pinned copies and traffic per member."""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.network.conftest import NetNode, Network, eventually, group, write_file
from tests.network.test_cli_output import run


def cells(text: str, header: str) -> dict[str, str]:
    """A table's columns by header, for the line after the header (column starts from the header)."""
    head, line = text.splitlines()[:2]
    names = header.split()
    starts = [head.index(name) for name in names]
    ends = [*starts[1:], None]
    return {name: line[s:e].strip() for name, s, e in zip(names, starts, ends, strict=True)}


def rows(text: str) -> dict[str, str]:
    """A two-column key/value table (`status`, `item`) up to its first blank line."""
    out = {}
    for line in text.split("\n\n", maxsplit=1)[0].splitlines():
        key, _, value = line.partition("  ")
        out[key.strip()] = value.strip()
    return out


async def pin_complete(node: NetNode, item_id: str) -> None:
    await node.api("POST", "/api/v1/pins", json={"id": item_id})

    async def complete() -> bool:
        pins = (await node.api("GET", "/api/v1/pins"))["pins"]
        return [(p["id"], p["state"]) for p in pins] == [(item_id, "complete")]

    await eventually(complete, what=f"{node.name}'s pin to complete")


async def test_search_item_and_status_name_the_copies_and_members(network: Network, tmp_path: Path) -> None:
    alice, bob, carol = [await network.node(n) for n in ("alice", "bob", "carol")]
    await group(alice, bob, carol)
    data = secrets.token_bytes(300_000)
    item = (await alice.add(write_file(tmp_path, "Holiday Film.bin", data)))[0]
    await carol.sync()
    await pin_complete(carol, item["id"])
    await bob.sync()
    await alice.sync()

    # bob's search names carol as holding a copy.
    code, text = await run(bob, "search", "holiday")
    assert code == 0
    header = "ID KIND DURATION OWNER COPIES TITLE"
    assert text.splitlines()[0].split() == header.split()
    found = cells(text, header)
    assert (found["ID"], found["OWNER"], found["COPIES"], found["TITLE"]) == (
        item["id"],
        "alice",
        "carol",
        "Holiday Film",
    )

    # So does `item`, with the owner's name and state.
    code, text = await run(bob, "item", item["id"])
    assert code == 0
    shown = rows(text)
    assert (shown["node"], shown["owner"], shown["copies"]) == (alice.node_id, "alice", "carol")
    # And on the owner's node, its own item.
    code, text = await run(alice, "item", item["id"])
    assert (rows(text)["owner"], rows(text)["copies"]) == ("alice (this node)", "carol")

    # carol's status: the pinned copy and the traffic by member name.
    code, text = await run(carol, "status")
    assert code == 0
    status = rows(text)
    assert (status["items"], status["pinned copies"]) == ("0", "1 (293.0 KiB)")
    traffic = text.split("\n\n")[1].splitlines()
    assert traffic[0].split() == ["TRAFFIC", "SENT", "RECEIVED"]
    assert traffic[1].startswith(f"alice ({alice.node_id[:8]}\u2026)  ")
    assert "peer:" not in text
    code, text = await run(alice, "status")
    assert f"carol ({carol.node_id[:8]}\u2026)" in text and rows(text)["pinned copies"] == "0 (0 B)"

    # carol goes away: bob still names her, as offline.
    await carol.stop()
    await bob.sync()
    _, text = await run(bob, "search", "holiday")
    assert cells(text, header)["COPIES"] == "carol (offline)"
    _, text = await run(bob, "item", item["id"])
    assert rows(text)["copies"] == "carol (offline)"
    await alice.stop()
    await bob.sync()
    _, text = await run(bob, "item", item["id"])
    assert rows(text)["owner"] == "alice (offline)"
