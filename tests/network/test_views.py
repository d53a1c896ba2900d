"""View counts and watch history between real nodes.

A view counts when a user plays past the threshold (30 s, or half of a
shorter item), at most once per user and item per window. The viewer's
node delivers it to the item's owner through the durable outbox, with the
message ID as idempotency key; the owner publishes the total, which every
node then shows. The test video is 3 s long, so the threshold is 1.5 s.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from registry import community as registry_community
from tests.network.conftest import NetNode, Network, eventually, group
from tests.network.test_comments import as_user, deliver, local_user, outbox_of, seen_by, shared_video

WINDOW = 6 * 3600.0  # the default view_window


@pytest.fixture
async def trio(network: Network) -> tuple[NetNode, NetNode, NetNode]:
    a, b, c = [await network.node(n) for n in ("alpha", "beta", "gamma")]
    await group(a, b, c)
    return a, b, c


class Clock:
    """time for registry.community only: real time plus an offset a test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(registry_community, "time", fake)
    return fake


async def play(
    node: NetNode, item_id: str, position: float, *, token: str | None = None, watched: bool | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"position": position}
    if watched is not None:
        body["watched"] = watched
    reply = await as_user(node, token or node.token, "POST", f"/api/v1/items/{item_id}/progress", json=body)
    assert reply.status == 200, (node.name, reply)
    return dict(reply.data)


async def counted(node: NetNode, item_id: str, position: float = 2.0, *, token: str | None = None) -> bool:
    return bool((await play(node, item_id, position, token=token))["view_counted"])


async def shown_views(node: NetNode, item_id: str) -> tuple[int, int]:
    """The total as the item page and as search show it."""
    item = await node.api("GET", f"/api/v1/items/{item_id}")
    hits = [h for h in await node.search("picnic") if h["id"] == item_id]
    assert len(hits) == 1, (node.name, hits)
    return int(item["views"]), int(hits[0]["views"])


async def owner_total(owner: NetNode, item_id: str) -> int:
    rows = await owner.sql("SELECT total FROM item_views WHERE item_id = :i", i=item_id)
    return int(rows[0][0]) if rows else 0


async def same_total_everywhere(item_id: str, nodes: tuple[NetNode, ...], total: int) -> None:
    seen: dict[str, tuple[int, int]] = {}

    async def check() -> bool:
        for node in nodes:
            await node.sync()
        for node in nodes:
            seen[node.name] = await shown_views(node, item_id)
        return all(v == (total, total) for v in seen.values())

    await eventually(check, timeout=30, what=f"a total of {total} views on every node (last seen {seen})")


async def test_each_user_counts_once_and_every_node_shows_the_same_total(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    item = await shared_video(a, tmp_path / "media")
    item_id = item["id"]
    assert 2.9 < item["duration"] < 3.5, item
    await seen_by(item, b, c)
    bob = await local_user(b, "bob")
    assert await shown_views(b, item_id) == (0, 0)

    # Not far enough: no view.
    assert await counted(b, item_id, 1.0) is False
    # Past half the item (it is shorter than 30 s): a view per user, on every node.
    assert await counted(a, item_id) is True
    assert await counted(b, item_id) is True
    assert await counted(b, item_id, 1.5, token=bob) is True  # exactly the threshold
    assert await counted(c, item_id, 3.0) is True
    await same_total_everywhere(item_id, trio, 4)
    assert await owner_total(a, item_id) == 4
    assert await a.sql("SELECT count(*) FROM view_receipts WHERE item_id = :i", i=item_id) == [(4,)]

    # The same users again, within the window: not counted, however often.
    for _ in range(2):
        assert await counted(a, item_id) is False
        assert await counted(b, item_id, 2.5) is False
        assert await counted(b, item_id, token=bob) is False
        assert await counted(c, item_id) is False
    await same_total_everywhere(item_id, trio, 4)
    assert await outbox_of(b) == [] and await outbox_of(c) == []


async def test_a_user_counts_again_after_the_window(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path, clock: Clock
) -> None:
    a, b, c = trio
    item = await shared_video(a, tmp_path / "media")
    item_id = item["id"]
    await seen_by(item, b, c)

    assert await counted(b, item_id) is True
    assert await counted(a, item_id) is True
    clock.offset = WINDOW - 60
    assert await counted(b, item_id) is False
    assert await counted(a, item_id) is False
    clock.offset = WINDOW + 1
    assert await counted(b, item_id) is True
    assert await counted(a, item_id) is True
    # The window starts again from the view just counted.
    assert await counted(b, item_id) is False
    await same_total_everywhere(item_id, trio, 4)
    assert await owner_total(a, item_id) == 4


async def test_the_window_comes_from_the_config(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha")
    b = await network.node("beta", community={"view_window": "3s"})
    await group(a, b)
    item = await shared_video(a, tmp_path / "media")
    await seen_by(item, b)

    first = time.monotonic()
    assert await counted(b, item["id"]) is True
    assert await counted(b, item["id"]) is False
    again: list[float] = []

    async def counts_again() -> bool:
        if await counted(b, item["id"]):
            again.append(time.monotonic())
            return True
        return False

    await eventually(counts_again, timeout=30, what="a view counted again after the 3 s window")
    assert again[0] - first >= 3.0
    await same_total_everywhere(item["id"], (a, b), 2)


async def test_redelivered_views_count_once(trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path) -> None:
    a, b, c = trio
    item = await shared_video(a, tmp_path / "media")
    secret = await shared_video(a, tmp_path / "media", title="Secret", variant=1, visibility="private")
    only_b = await shared_video(a, tmp_path / "media", title="For B", variant=2, visibility=f"peers:{b.node_id}")
    await seen_by(item, b, c)

    view: dict[str, Any] = {
        "id": secrets.token_hex(16),
        "kind": "view",
        "payload": {"item": item["id"], "at": time.time()},
    }
    # The same message, delivered twice (each time freshly signed by B): one view.
    assert await deliver(b, a, [view]) == {view["id"]: "ok"}
    assert await deliver(b, a, [view]) == {view["id"]: "ok"}
    assert await owner_total(a, item["id"]) == 1
    # Twice in one batch is one view too.
    twin = {**view, "id": secrets.token_hex(16)}
    assert await deliver(b, a, [twin, twin]) == {twin["id"]: "ok"}
    assert await owner_total(a, item["id"]) == 2

    # Views of items the sender may not see are not counted (and say nothing about them).
    hidden: list[dict[str, Any]] = [
        {"id": secrets.token_hex(16), "kind": "view", "payload": {"item": secret["id"], "at": time.time()}},
        {"id": secrets.token_hex(16), "kind": "view", "payload": {"item": only_b["id"], "at": time.time()}},
        {"id": secrets.token_hex(16), "kind": "view", "payload": {"item": "a" * 26, "at": time.time()}},
    ]
    assert set((await deliver(c, a, hidden)).values()) == {"ok"}
    assert await owner_total(a, secret["id"]) == 0
    assert await owner_total(a, only_b["id"]) == 0
    # Malformed views are refused.
    bad: list[dict[str, Any]] = [
        {"id": secrets.token_hex(16), "kind": "view", "payload": {"item": item["id"]}},
        {"id": secrets.token_hex(16), "kind": "view", "payload": {"item": item["id"], "at": True}},
        {"id": secrets.token_hex(16), "kind": "view", "payload": {"at": time.time()}},
        {"id": secrets.token_hex(16), "kind": "view", "payload": "views!"},
    ]
    results = await deliver(c, a, bad)
    assert all(v.startswith("rejected") for v in results.values()) and len(results) == 4, results
    assert await owner_total(a, item["id"]) == 2
    # A view from a time to come is counted as now.
    future = {"id": secrets.token_hex(16), "kind": "view", "payload": {"item": item["id"], "at": time.time() + 1e6}}
    assert await deliver(c, a, [future]) == {future["id"]: "ok"}
    (at,) = (await a.sql("SELECT at FROM view_receipts WHERE id = :i", i=future["id"]))[0]
    assert at <= time.time()

    await same_total_everywhere(item["id"], trio, 3)


async def test_views_wait_in_the_outbox_while_the_owner_is_down(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    item = await shared_video(a, tmp_path / "media")
    item_id = item["id"]
    await seen_by(item, b, c)

    await a.stop()
    assert await counted(b, item_id) is True
    assert await counted(c, item_id) is True
    for node in (b, c):
        changed = await node.sync()  # the poll and the delivery both fail
        assert str(changed[a.node_id]).startswith("error")
    await b.restart()
    queued = await outbox_of(b)
    assert [(m[1], m[2]) for m in queued] == [(a.node_id, "view")]
    assert queued[0][5] >= 1  # tried and failed at least once
    # Within the window the same user still does not count twice, outage or not.
    assert await counted(b, item_id) is False

    await a.start()
    assert await owner_total(a, item_id) == 0
    await a.sync()  # A polls B and C, so both know it is back and deliver

    async def delivered() -> bool:
        return await owner_total(a, item_id) == 2 and await outbox_of(b) == [] and await outbox_of(c) == []

    await eventually(delivered, timeout=30, what="both queued views delivered to A")

    # B's node crashed before it saw A's answer, and delivers the same view again.
    await b.sql(
        "INSERT INTO outbox (id, node_id, kind, payload, created_at, attempts, next_attempt_at)"
        " VALUES (:id, :node, 'view', :payload, :at, 0, 0)",
        id=queued[0][0],
        node=a.node_id,
        payload=queued[0][3],
        at=queued[0][4],
    )
    await b.sync()

    async def redelivered() -> bool:
        return await outbox_of(b) == []

    await eventually(redelivered, what="B's repeated delivery accepted")
    assert await owner_total(a, item_id) == 2
    assert json.loads(queued[0][3])["item"] == item_id
    await same_total_everywhere(item_id, trio, 2)


# -- history ---------------------------------------------------------------------------


async def history(node: NetNode, token: str | None = None) -> list[dict[str, Any]]:
    reply = await as_user(node, token or node.token, "GET", "/api/v1/history")
    assert reply.status == 200, reply
    return list(reply.data["history"])


async def test_history_keeps_the_last_position_and_what_was_watched(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    film = await shared_video(a, tmp_path / "media")
    other = await shared_video(a, tmp_path / "media", title="Picnic outtakes", variant=1)
    await seen_by(film, b, c)
    duration = float(film["duration"])
    bob = await local_user(b, "bob")
    assert await history(b) == []

    await play(b, film["id"], 1.0)
    (entry,) = await history(b)
    assert (entry["id"], entry["node"], entry["position"], entry["watched"]) == (film["id"], a.node_id, 1.0, False)
    assert entry["duration"] == pytest.approx(duration)

    # 90% of the item is watched.
    assert (await play(b, film["id"], 0.89 * duration))["watched"] is False
    assert (await history(b))[0]["watched"] is False
    assert (await play(b, film["id"], 0.9 * duration))["watched"] is True
    (entry,) = await history(b)
    assert (entry["position"], entry["watched"]) == (pytest.approx(0.9 * duration), True)
    # Starting over keeps it watched, at the new position; the user may say it is not.
    await play(b, film["id"], 0.5)
    assert [(h["id"], h["position"], h["watched"]) for h in await history(b)] == [(film["id"], 0.5, True)]
    await play(b, film["id"], 0.6, watched=False)
    assert [(h["id"], h["position"], h["watched"]) for h in await history(b)] == [(film["id"], 0.6, False)]

    # Marked watched by hand, at any position; most recent first.
    assert (await play(b, other["id"], 0.2, watched=True))["watched"] is True
    assert [(h["id"], h["position"], h["watched"]) for h in await history(b)] == [
        (other["id"], 0.2, True),
        (film["id"], 0.6, False),
    ]
    # History is per user: bob has his own, and C's and A's users have theirs.
    assert await history(b, bob) == []
    await play(b, film["id"], duration, token=bob)
    assert [(h["id"], h["watched"]) for h in await history(b, bob)] == [(film["id"], True)]
    await play(a, film["id"], 2.0)
    assert [(h["id"], h["node"], h["position"]) for h in await history(a)] == [(film["id"], a.node_id, 2.0)]
    assert await history(c) == []

    # Positions outside the item, and wrong types, are refused; unknown items do not exist.
    path = f"/api/v1/items/{film['id']}/progress"
    for body in (
        {"position": -1},
        {"position": duration + 10},
        {"position": "12"},
        {"position": True},
        {},
        {"position": 1.0, "watched": "yes"},
    ):
        reply = await b.call("POST", path, json=body)
        assert reply.status == 400, (body, reply)
    assert (await b.call("POST", f"/api/v1/items/{'a' * 26}/progress", json={"position": 1.0})).status == 404
    assert [(h["id"], h["position"]) for h in await history(b)] == [(other["id"], 0.2), (film["id"], 0.6)]
