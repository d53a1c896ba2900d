"""One inbox delivery carrying many messages, as a member's outbox sends them (up to 1,000).

The owner stores a delivery's comments together and counts its views
together, but the result must be what applying the messages one by one, in
order, would give: a reply may answer a comment earlier in the same
delivery (not one refused in it), an edit applies to a comment just before
it, a message twice is applied once, and the whole delivery is published as
one feed entry per comment and one total per item. Then many comments from
two members, delivered through their outboxes, show identically everywhere.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from tests.network.conftest import NetNode, Network, group
from tests.network.test_comments import deliver, owner_rows, same_thread_everywhere, seen_by, shared_video, thread
from tests.network.test_views import owner_total, same_total_everywhere


@pytest.fixture
async def trio(network: Network) -> tuple[NetNode, NetNode, NetNode]:
    a, b, c = [await network.node(n) for n in ("alpha", "beta", "gamma")]
    await group(a, b, c)
    return a, b, c


def new_comment(item_id: str, body: object, parent: str | None = None) -> dict[str, Any]:
    payload = {"item": item_id, "parent": parent, "depth": 0, "author": "admin", "body": body}
    return {"id": secrets.token_hex(16), "kind": "comment", "payload": {**payload, "created_at": time.time()}}


def view(item_id: str) -> dict[str, Any]:
    return {"id": secrets.token_hex(16), "kind": "view", "payload": {"item": item_id, "at": time.time()}}


async def test_one_delivery_applies_like_its_messages_one_by_one(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    item = await shared_video(a, tmp_path / "media")
    other = await shared_video(a, tmp_path / "media", title="Other", variant=1)
    item_id = item["id"]
    await seen_by(item, b, c)
    seq_before = (await a.sql("SELECT max(seq) FROM changes"))[0][0]

    first = new_comment(item_id, "First")
    reply = new_comment(item_id, "Reply to first", parent=first["id"])
    refused = new_comment(item_id, "")  # empty: refused
    orphan = new_comment(item_id, "Answers a refused comment", parent=refused["id"])
    elsewhere = new_comment(other["id"], "Answers a comment on another item", parent=first["id"])
    edit_payload = {"comment": first["id"], "author": "admin", "body": "First, edited"}
    edit = {"id": secrets.token_hex(16), "kind": "comment_edit", "payload": edit_payload}
    after_edit = new_comment(item_id, "After the edit", parent=reply["id"])
    views = [view(item_id) for _ in range(40)] + [view(other["id"]) for _ in range(10)]
    messages = [first, reply, first, *views[:25], refused, orphan, elsewhere, edit, after_edit, *views[25:], views[0]]

    results = await deliver(b, a, messages)
    ok = [first, reply, edit, after_edit, *views]
    assert {m["id"]: results[m["id"]] for m in ok} == {m["id"]: "ok" for m in ok}
    assert results[refused["id"]].startswith("rejected") and "empty" in results[refused["id"]]
    assert results[orphan["id"]] == "rejected: a reply must answer a comment on the same item"
    assert results[elsewhere["id"]] == "rejected: a reply must answer a comment on the same item"

    rows = await a.sql("SELECT id, parent_id, depth, body FROM comments WHERE item_id = :i", i=item_id)
    assert sorted(rows) == sorted(
        [
            (first["id"], None, 0, "First, edited"),
            (reply["id"], first["id"], 1, "Reply to first"),
            (after_edit["id"], reply["id"], 2, "After the edit"),
        ]
    )
    assert await owner_total(a, item_id) == 40 and await owner_total(a, other["id"]) == 10
    # Published: one entry per comment, one total per item, whatever the number of views.
    published = await a.sql(
        "SELECT entity, count(*) FROM changes WHERE seq > :s GROUP BY entity ORDER BY entity", s=seq_before
    )
    assert published == [("comment", 3), ("views", 2)]

    # The same delivery again (the answer was lost): every verdict is the same, nothing changes.
    assert await deliver(b, a, messages) == results
    assert await owner_total(a, item_id) == 40
    assert await a.sql("SELECT count(*) FROM comments WHERE item_id = :i", i=item_id) == [(3,)]
    # A member cannot slip another node's comment ID into its own delivery.
    stolen = {**new_comment(item_id, "Mine now"), "id": first["id"]}
    assert (await deliver(c, a, [stolen]))[first["id"]] == "rejected: that comment ID belongs to another node"
    assert (await owner_rows(a, first["id"]))[0][2:5] == ("admin", b.node_id, "First, edited")

    shown = await same_thread_everywhere(item_id, trio, 3)
    assert [(x["id"], x["depth"]) for x in shown] == [(first["id"], 0), (reply["id"], 1), (after_edit["id"], 2)]
    await same_total_everywhere(item_id, trio, 40)


async def test_many_comments_through_two_outboxes_show_the_same_everywhere(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    item = await shared_video(a, tmp_path / "media")
    item_id = item["id"]
    await seen_by(item, b, c)
    for node in (b, c):
        for n in range(30):
            reply = await node.call("POST", f"/api/v1/items/{item_id}/comments", json={"body": f"{node.name} {n}"})
            assert reply.status == 201, reply
    shown = await same_thread_everywhere(item_id, trio, 60)
    assert sorted(x["body"] for x in shown) == sorted(f"{n.name} {i}" for n in (b, c) for i in range(30))
    assert await thread(a, item_id) == shown
    assert await a.sql("SELECT count(*) FROM comments WHERE item_id = :i", i=item_id) == [(60,)]
