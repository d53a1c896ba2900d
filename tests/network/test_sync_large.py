"""A feed page far larger than one network read arrives whole (a page used to be cut at ~64 KiB)."""

from __future__ import annotations

from pathlib import Path

from tests.network.conftest import Network, group


async def test_a_large_catalog_page_syncs_whole(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha")
    b = await network.node("beta")
    folder = tmp_path / "many"
    folder.mkdir()
    for n in range(400):
        (folder / f"note number {n:03d} with a fairly long title to fill the page.txt").write_text(f"note {n}\n")
    added = await a.add(folder)
    assert len(added) == 400
    await group(a, b)
    # One page of 400 entries is a few hundred KiB of JSON.
    raw = await a.call("GET", "/federation/v1/catalog?since=0&limit=1000")
    assert raw.status == 401  # unsigned, as a reminder that the sync below used signed requests
    result = await b.sync()
    assert isinstance(result[a.node_id], int), result
    found = await b.search("", node=a)
    assert len(found) >= 200  # the search API caps results at 200
    peers = await b.peers()
    assert peers[a.node_id]["items"] == 400
