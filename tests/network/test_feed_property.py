"""Property: whatever A does to its items, and however its feed is paged,
B's and C's registries end up holding exactly the items of A each may see.

Three nodes are started once for the test; every Hypothesis example then
restarts B and C with its own page sizes, applies a random interleaving of
adds, renames, deletions, visibility changes and intermediate syncs on A,
syncs, and compares. Examples build on what earlier ones left behind, which
only widens the starting states the property is checked from.
"""

from __future__ import annotations

import secrets
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import pg_admin_dsn
from tests.network.conftest import NetNode, Network, group, write_file

RULES = ("private", "network", "peers:B", "peers:C", "peers:B,C")
MAX_ITEMS = 60

titles = st.text(alphabet="abcxyz éÜ-", min_size=1, max_size=12).filter(lambda t: t.strip(" -"))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(RULES)),
        st.tuples(st.just("rename"), st.integers(0, 10**6), titles),
        st.tuples(st.just("visibility"), st.integers(0, 10**6), st.sampled_from(RULES)),
        st.tuples(st.just("delete"), st.integers(0, 10**6)),
        st.tuples(st.just("sync"), st.sampled_from("BC")),
    ),
    max_size=14,
)


@pytest.fixture
async def trio(network: Network) -> tuple[NetNode, NetNode, NetNode]:
    a, b, c = [await network.node(n) for n in ("alpha", "beta", "gamma")]
    await group(a, b, c)
    return a, b, c


def may_see(rule: str, viewer: str) -> bool:
    if rule == "network":
        return True
    return rule.startswith("peers:") and viewer in rule[len("peers:") :].split(",")


async def items_of(a: NetNode) -> list[dict[str, Any]]:
    return list((await a.api("GET", "/api/v1/items", params={"limit": "1000"}))["items"])


@settings(
    max_examples=20 if pg_admin_dsn() is None else 8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=ops, page_b=st.integers(1, 7), page_c=st.integers(1, 7))
async def test_registries_hold_exactly_what_each_peer_may_see(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path, actions: list[tuple[Any, ...]], page_b: int, page_c: int
) -> None:
    a, b, c = trio
    names = {"B": b.node_id, "C": c.node_id}
    await b.restart(sync={"page_size": page_b})
    await c.restart(sync={"page_size": page_c})
    serial = count()

    def rule_of(choice: str) -> str:
        if not choice.startswith("peers:"):
            return choice
        return "peers:" + ",".join(names[p] for p in choice[len("peers:") :].split(","))

    existing = sorted(i["id"] for i in await items_of(a))
    for stale in existing[: max(0, len(existing) - MAX_ITEMS)]:
        await a.api("DELETE", f"/api/v1/items/{stale}")
    for action in actions:
        current = sorted(i["id"] for i in await items_of(a))
        kind = action[0]
        if kind == "add":
            path = write_file(tmp_path / "media", f"{secrets.token_hex(4)}-{next(serial)}.txt")
            await a.add(path, visibility=rule_of(action[1]))
        elif kind == "sync":
            await (b if action[1] == "B" else c).sync()
        elif current:
            target = current[action[1] % len(current)]
            if kind == "rename":
                await a.api("PATCH", f"/api/v1/items/{target}", json={"title": action[2]})
            elif kind == "visibility":
                await a.api("PATCH", f"/api/v1/items/{target}", json={"visibility": rule_of(action[2])})
            else:
                await a.api("DELETE", f"/api/v1/items/{target}")

    truth = await items_of(a)
    for viewer in (b, c):
        changed = await viewer.sync()
        assert isinstance(changed[a.node_id], int), changed
        rows = {h["id"]: h["title"] for h in await viewer.search(node=a)}
        expected = {i["id"]: i["title"] for i in truth if may_see(i["visibility"], viewer.node_id)}
        assert rows == expected, viewer.name
    # A's own registry holds every one of its items, private ones included.
    assert {h["id"]: h["title"] for h in await a.search(node=a)} == {i["id"]: i["title"] for i in truth}
