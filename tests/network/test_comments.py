"""Comments between real nodes: the owner's thread, the durable outbox, who may change what,
hostile text, and comments following the item's access rules.

Three nodes (alpha A, beta B, gamma C) form one group; A owns a short real
video shared with the network. B and C comment through their own nodes,
which deliver to A's inbox; A publishes the thread in its feed; every node
shows A's thread. Nothing here waits blindly: each wait syncs and checks,
with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from registry.store import RegistryStore
from tests.media import make_video
from tests.network.conftest import NetNode, Network, Reply, eventually, group, signed_request

INBOX = "/federation/v1/inbox"


@pytest.fixture
async def trio(network: Network) -> tuple[NetNode, NetNode, NetNode]:
    a, b, c = [await network.node(n) for n in ("alpha", "beta", "gamma")]
    await group(a, b, c)
    return a, b, c


async def shared_video(
    owner: NetNode, folder: Path, *, title: str = "Picnic film", variant: int = 0, **kw: Any
) -> dict[str, Any]:
    """A real 3-second video of ``owner`` (visibility network unless told otherwise).

    Each ``variant`` is a different picture size, so different bytes: the same bytes
    added twice are one item.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = make_video(folder / f"{secrets.token_hex(4)}.mp4", seconds=3, width=160 + 16 * variant)
    added = await owner.add(path, title=title, **kw)
    assert len(added) == 1 and added[0]["kind"] == "video", added
    return added[0]


async def seen_by(item: dict[str, Any], *nodes: NetNode) -> None:
    """Each node has synced the owner and lists ``item``."""
    for node in nodes:
        await node.sync()
        assert item["id"] in {h["id"] for h in await node.search(node=None)}, node.name


async def as_user(node: NetNode, token: str, method: str, path: str, **kwargs: Any) -> Reply:
    headers = {"Authorization": f"Bearer {token}"}
    async with node.session.request(method, node.url + path, headers=headers, **kwargs) as resp:
        return Reply(resp.status, await resp.json())


async def local_user(node: NetNode, name: str, *, admin: bool = False) -> str:
    reply = await node.call("POST", "/api/v1/tokens", json={"name": name, "admin": admin})
    assert reply.status == 201, reply
    return str(reply.data["token"])


async def comment(node: NetNode, item_id: str, body: str, parent: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"body": body}
    if parent is not None:
        payload["parent_id"] = parent
    reply = await node.call("POST", f"/api/v1/items/{item_id}/comments", json=payload)
    assert reply.status == 201, (node.name, reply)
    return dict(reply.data)


async def try_comment(node: NetNode, item_id: str, **payload: Any) -> Reply:
    return await node.call("POST", f"/api/v1/items/{item_id}/comments", json=payload)


async def thread(node: NetNode, item_id: str) -> list[dict[str, Any]]:
    return list((await node.api("GET", f"/api/v1/items/{item_id}/comments"))["comments"])


async def published(node: NetNode, item_id: str, comment_id: str, **expect: Any) -> dict[str, Any]:
    """Sync ``node`` until it shows ``comment_id`` published (and with ``expect``); returns it."""
    found: dict[str, Any] = {}

    async def check() -> bool:
        await node.sync()
        for c in await thread(node, item_id):
            if c["id"] == comment_id and c["state"] == "published" and all(c[k] == v for k, v in expect.items()):
                found.update(c)
                return True
        return False

    await eventually(check, timeout=30, what=f"{node.name} shows comment {comment_id} published with {expect}")
    return found


async def same_thread_everywhere(item_id: str, nodes: tuple[NetNode, ...], count: int) -> list[dict[str, Any]]:
    """Sync every node until all show the same thread of ``count`` comments, all published."""
    threads: dict[str, list[dict[str, Any]]] = {}

    async def check() -> bool:
        for node in nodes:
            await node.sync()
        for node in nodes:
            threads[node.name] = await thread(node, item_id)
        first = threads[nodes[0].name]
        return (
            len(first) == count
            and all(c["state"] == "published" for c in first)
            and all(t == first for t in threads.values())
        )

    await eventually(check, timeout=30, what=f"the same {count} published comments on every node")
    return threads[nodes[0].name]


async def owner_rows(owner: NetNode, comment_id: str) -> list[tuple[Any, ...]]:
    return await owner.sql(
        "SELECT id, item_id, author, author_node, body, deleted FROM comments WHERE id = :id", id=comment_id
    )


async def deliver(sender: NetNode, owner: NetNode, messages: list[dict[str, Any]]) -> dict[str, str]:
    """POST messages to ``owner``'s inbox, signed as ``sender`` (as its outbox would)."""
    status, raw = await signed_request(
        owner.session, sender.identity, "POST", owner.url + INBOX, body=json.dumps({"messages": messages}).encode()
    )
    assert status == 200, (status, raw)
    return dict(json.loads(raw)["results"])


async def outbox_of(node: NetNode) -> list[tuple[Any, ...]]:
    return await node.sql("SELECT id, node_id, kind, payload, created_at, attempts FROM outbox ORDER BY created_at")


async def a_comment_thread(tmp_path: Path, trio: tuple[NetNode, NetNode, NetNode]) -> dict[str, Any]:
    """A's video with one published comment from B and one from C; returns the ids."""
    a, b, c = trio
    item = await shared_video(a, tmp_path / "media")
    await seen_by(item, b, c)
    b1 = await comment(b, item["id"], "B was here")
    c1 = await comment(c, item["id"], "C was here")
    await same_thread_everywhere(item["id"], trio, 2)
    return {"item": item["id"], "b1": b1["id"], "c1": c1["id"]}


# -- one thread, the same on every node ------------------------------------------------


async def test_every_node_shows_the_owners_thread(trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path) -> None:
    a, b, c = trio
    item = await shared_video(a, tmp_path / "media")
    item_id = item["id"]
    await seen_by(item, b, c)

    b1 = await comment(b, item_id, "Great picnic!")
    assert b1["state"] in ("pending", "published")
    assert (b1["author"], b1["user"], b1["author_node"], b1["parent"], b1["depth"]) == (
        "admin@beta",
        "admin",
        b.node_id,
        None,
        0,
    )
    c1 = await comment(c, item_id, "Who brought the cake?")
    # A comments on its own item: stored by the owner at once, published.
    a1 = await comment(a, item_id, "Thanks for watching")
    assert (a1["state"], a1["author"], a1["author_node"]) == ("published", "admin@alpha", a.node_id)

    # C answers B (once C has B's comment), then B answers C's answer.
    await published(c, item_id, b1["id"])
    c2 = await comment(c, item_id, "Agreed, great day", parent=b1["id"])
    assert (c2["parent"], c2["depth"]) == (b1["id"], 1)
    await published(b, item_id, c2["id"])
    b2 = await comment(b, item_id, "Thanks, C", parent=c2["id"])
    assert (b2["parent"], b2["depth"]) == (c2["id"], 2)

    shown = await same_thread_everywhere(item_id, trio, 5)
    # Depth-first: each comment is followed by its replies; top level in time order.
    assert [(x["id"], x["parent"], x["depth"]) for x in shown] == [
        (b1["id"], None, 0),
        (c2["id"], b1["id"], 1),
        (b2["id"], c2["id"], 2),
        (c1["id"], None, 0),
        (a1["id"], None, 0),
    ]
    assert [(x["body"], x["author"], x["author_node"]) for x in shown] == [
        ("Great picnic!", "admin@beta", b.node_id),
        ("Agreed, great day", "admin@gamma", c.node_id),
        ("Thanks, C", "admin@beta", b.node_id),
        ("Who brought the cake?", "admin@gamma", c.node_id),
        ("Thanks for watching", "admin@alpha", a.node_id),
    ]
    assert all(x["item"] == item_id and not x["deleted"] and not x["former_member"] for x in shown)
    assert all(x["state"] == "published" and x["error"] is None for x in shown)
    # The owner holds the authoritative copy: exactly these five rows.
    rows = await a.sql("SELECT id, parent_id, depth, author_node FROM comments WHERE item_id = :i", i=item_id)
    assert sorted(rows) == sorted((x["id"], x["parent"], x["depth"], x["author_node"]) for x in shown)
    # Nothing is left to deliver.
    assert await outbox_of(b) == [] and await outbox_of(c) == []


# -- the durable outbox ----------------------------------------------------------------


async def test_comment_waits_for_its_owner_and_is_stored_exactly_once(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    item = await shared_video(a, tmp_path / "media")
    item_id = item["id"]
    await seen_by(item, b, c)

    await a.stop()
    sent = await comment(c, item_id, "Posted while alpha sleeps")
    cid = sent["id"]
    assert (sent["state"], sent["author"], sent["body"]) == ("pending", "admin@gamma", "Posted while alpha sleeps")
    changed = await c.sync()  # fails for A, and retries the outbox (which fails too)
    assert str(changed[a.node_id]).startswith("error")
    assert [(x["id"], x["state"]) for x in await thread(c, item_id)] == [(cid, "pending")]
    assert await thread(b, item_id) == []

    # The outbox is a table: C restarts and the comment is still waiting.
    await c.restart()
    assert [(x["id"], x["state"]) for x in await thread(c, item_id)] == [(cid, "pending")]
    queued = await outbox_of(c)
    assert [(m[0], m[1], m[2]) for m in queued] == [(cid, a.node_id, "comment")]
    assert queued[0][5] >= 1  # it has been tried and failed

    # A comes back; once A speaks to C, C delivers at once.
    await a.start()
    assert await owner_rows(a, cid) == []
    await a.sync()
    shown = await published(c, item_id, cid)
    assert (shown["body"], shown["author_node"]) == ("Posted while alpha sleeps", c.node_id)
    assert await outbox_of(c) == []
    assert await owner_rows(a, cid) == [(cid, item_id, "admin", c.node_id, "Posted while alpha sleeps", False)]
    seq_before = await a.sql("SELECT max(seq) FROM changes")

    # The owner's answer got lost (C crashed before marking it done): C delivers again.
    await c.sql(
        "INSERT INTO outbox (id, node_id, kind, payload, created_at, attempts, next_attempt_at)"
        " VALUES (:id, :node, :kind, :payload, :at, 0, 0)",
        id=cid,
        node=a.node_id,
        kind="comment",
        payload=queued[0][3],
        at=queued[0][4],
    )
    await c.sync()  # the round ends by delivering what is due

    async def redelivered() -> bool:
        return await outbox_of(c) == []

    await eventually(redelivered, what="C's second delivery is accepted")
    # A replayed message, freshly signed by C, even with other text: "ok", and nothing changes.
    payload = json.loads(queued[0][3])
    results = await deliver(c, a, [{"id": cid, "kind": "comment", "payload": {**payload, "body": "rewritten"}}])
    assert results == {cid: "ok"}
    results = await deliver(c, a, [{"id": cid, "kind": "comment", "payload": payload}])
    assert results == {cid: "ok"}
    assert await owner_rows(a, cid) == [(cid, item_id, "admin", c.node_id, "Posted while alpha sleeps", False)]
    assert await a.sql("SELECT count(*) FROM comments WHERE item_id = :i", i=item_id) == [(1,)]
    assert await a.sql("SELECT max(seq) FROM changes") == seq_before  # not even republished
    # Another node cannot claim C's comment ID.
    results = await deliver(b, a, [{"id": cid, "kind": "comment", "payload": payload}])
    assert results[cid].startswith("rejected")

    shown_everywhere = await same_thread_everywhere(item_id, trio, 1)
    assert [(x["id"], x["body"]) for x in shown_everywhere] == [(cid, "Posted while alpha sleeps")]


async def test_a_comment_delivered_while_its_author_posts_it_is_still_shown(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivery can finish while the author's node reads the thread back to answer the
    POST: the comment must then be found in the registry or in the outbox, never in neither."""
    a, b, _c = trio
    item = await shared_video(a, tmp_path / "media")
    await seen_by(item, b)
    real_thread = RegistryStore.thread
    outbox_after_read: list[int] = []

    async def thread_then_delivery(self: RegistryStore, node_id: str, item_id: str) -> list[dict[str, Any]]:
        rows = await real_thread(self, node_id, item_id)
        if not outbox_after_read and b.database_url.endswith(str(self.engine.url.database)):
            # B read its registry; now let the delivery finish before B reads on.
            deadline = time.monotonic() + 15
            while await self.outbox_all() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            outbox_after_read.append(len(await self.outbox_all()))
        return rows

    monkeypatch.setattr(RegistryStore, "thread", thread_then_delivery)
    reply = await try_comment(b, item["id"], body="Delivered before you knew it")
    assert outbox_after_read == [0]  # the delivery did finish in between
    assert reply.status == 201, reply
    assert (reply.data["body"], reply.data["author_node"]) == ("Delivered before you knew it", b.node_id)
    await published(b, item["id"], reply.data["id"])


# -- who may change a comment ----------------------------------------------------------


async def test_authors_edit_and_delete_their_own_comments_everywhere(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, _c = trio
    ids = await a_comment_thread(tmp_path, trio)
    item_id = ids["item"]

    edited = await b.api("PATCH", f"/api/v1/comments/{ids['b1']}", json={"body": "B was here (edited)"})
    assert (edited["id"], edited["body"]) == (ids["b1"], "B was here (edited)")
    shown = await same_thread_everywhere(item_id, trio, 2)
    b1 = next(x for x in shown if x["id"] == ids["b1"])
    assert (b1["body"], b1["deleted"]) == ("B was here (edited)", False)
    assert b1["edited_at"] is not None and b1["edited_at"] >= b1["created_at"]
    assert next(x for x in shown if x["id"] == ids["c1"])["edited_at"] is None

    await b.api("DELETE", f"/api/v1/comments/{ids['b1']}")

    async def deleted_everywhere() -> bool:
        for node in trio:
            await node.sync()
        rows = [next(x for x in await thread(node, item_id) if x["id"] == ids["b1"]) for node in trio]
        return all(r["deleted"] is True and r["body"] == "" and r["state"] == "published" for r in rows)

    await eventually(deleted_everywhere, timeout=30, what="B's deleted comment shown deleted on every node")
    assert await owner_rows(a, ids["b1"]) == [(ids["b1"], item_id, "admin", b.node_id, "", True)]
    # A deleted comment cannot be edited back to life.
    reply = await b.call("PATCH", f"/api/v1/comments/{ids['b1']}", json={"body": "back again"})
    assert reply.status == 400 and "deleted" in reply.message, reply
    assert await outbox_of(b) == []
    # Nor through A's inbox.
    mid = secrets.token_hex(16)
    edit = {"comment": ids["b1"], "author": "admin", "body": "back again"}
    results = await deliver(b, a, [{"id": mid, "kind": "comment_edit", "payload": edit}])
    assert results[mid].startswith("rejected") and "deleted" in results[mid]
    assert await owner_rows(a, ids["b1"]) == [(ids["b1"], item_id, "admin", b.node_id, "", True)]


async def test_only_the_author_or_the_owner_changes_a_comment(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    ids = await a_comment_thread(tmp_path, trio)
    item_id = ids["item"]
    original = await thread(a, item_id)

    # B (even B's admin) cannot touch C's comment.
    for method, kwargs in (("PATCH", {"json": {"body": "hijacked"}}), ("DELETE", {})):
        reply = await b.call(method, f"/api/v1/comments/{ids['c1']}", **kwargs)
        assert reply.status == 403, (method, reply)
    # Nor by forging a message to A in C's name: A checks which node signed it.
    results = await deliver(
        b,
        a,
        [
            {
                "id": secrets.token_hex(16),
                "kind": "comment_delete",
                "payload": {"comment": ids["c1"], "author": "admin"},
            },
            {
                "id": secrets.token_hex(16),
                "kind": "comment_edit",
                "payload": {"comment": ids["c1"], "author": "admin", "body": "hijacked"},
            },
        ],
    )
    assert all(v.startswith("rejected") for v in results.values()), results
    # A's owner may delete, but not rewrite, what others wrote.
    reply = await a.call("PATCH", f"/api/v1/comments/{ids['b1']}", json={"body": "owner's words"})
    assert reply.status == 403, reply
    # A local user of A who is not an admin cannot delete B's comment.
    bob = await local_user(a, "bob")
    for method, kwargs in (("DELETE", {}), ("PATCH", {"json": {"body": "bob was here"}})):
        reply = await as_user(a, bob, method, f"/api/v1/comments/{ids['b1']}", **kwargs)
        assert reply.status == 403, (method, reply)
    # Another user of B is not B's admin either.
    carol = await local_user(b, "carol")
    reply = await as_user(b, carol, "DELETE", f"/api/v1/comments/{ids['b1']}")
    assert reply.status == 403, reply
    for node in trio:
        await node.sync()
    assert await thread(a, item_id) == original
    assert await thread(c, item_id) == original

    # bob may comment on A's item and remove his own comment.
    reply = await as_user(a, bob, "POST", f"/api/v1/items/{item_id}/comments", json={"body": "bob's note"})
    assert reply.status == 201 and reply.data["author"] == "bob@alpha", reply
    reply = await as_user(a, bob, "DELETE", f"/api/v1/comments/{reply.data['id']}")
    assert reply.status == 200, reply

    # The owner's admin deletes B's comment on its item; it is gone on every node.
    await a.api("DELETE", f"/api/v1/comments/{ids['b1']}")
    assert await owner_rows(a, ids["b1"]) == [(ids["b1"], item_id, "admin", b.node_id, "", True)]
    for node in (b, c):
        shown = await published(node, item_id, ids["b1"], deleted=True)
        assert shown["body"] == ""
    # C's comment is untouched everywhere.
    for node in trio:
        c1 = next(x for x in await thread(node, item_id) if x["id"] == ids["c1"])
        assert (c1["body"], c1["deleted"]) == ("C was here", False)
    # Unknown or malformed comment IDs are simply not there.
    for bad in ("0" * 32, "nope", "../../etc"):
        assert (await b.call("DELETE", f"/api/v1/comments/{bad}")).status == 404, bad


# -- hostile and invalid text -----------------------------------------------------------


HOSTILE = [
    "<script>alert('owned')</script>",
    '<img src=x onerror="alert(1)"> <a href="javascript:alert(2)" onclick=steal()>click</a>',
    "{{7*7}} ${7*7} <!-- x --> &lt;b&gt; &amp;",
]


async def test_markup_is_stored_as_the_literal_text(trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path) -> None:
    a, b, c = trio
    item = await shared_video(a, tmp_path / "media")
    await seen_by(item, b, c)
    sent = [await comment(node, item["id"], text) for node, text in zip((b, a, c), HOSTILE, strict=True)]
    shown = await same_thread_everywhere(item["id"], trio, 3)
    assert {x["id"]: x["body"] for x in shown} == {s["id"]: text for s, text in zip(sent, HOSTILE, strict=True)}
    for s, text in zip(sent, HOSTILE, strict=True):
        assert (await owner_rows(a, s["id"]))[0][4] == text


async def test_invalid_comments_are_refused_with_a_reason(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    item = await shared_video(a, tmp_path / "media")
    item_id = item["id"]
    await seen_by(item, b, c)
    path = f"/api/v1/items/{item_id}/comments"

    for node in (a, b):  # the owner's own path and a member's outbox path
        reply = await try_comment(node, item_id, body="x" * 5001)
        assert reply.status == 400 and "5000" in reply.message, (node.name, reply)
        for empty in ("", "   ", "\n\t\r\n ", "\x00\x07"):
            reply = await try_comment(node, item_id, body=empty)
            assert reply.status == 400 and "empty" in reply.message, (node.name, empty, reply)
        for wrong in (None, 42, ["text"], {"text": "hi"}):
            reply = await try_comment(node, item_id, body=wrong)
            assert reply.status == 400, (node.name, wrong, reply)
        reply = await try_comment(node, item_id, body="hi", parent_id=7)
        assert reply.status == 400, (node.name, reply)
        # A lone surrogate is valid JSON but not valid UTF-8 text.
        async with node.session.post(
            node.url + path, data=b'{"body": "half \\ud800 a pair"}', headers=node.auth
        ) as resp:
            assert resp.status == 400, node.name
            assert "UTF-8" in (await resp.json())["error"]["message"]
        # Bytes that are not UTF-8 at all.
        async with node.session.post(node.url + path, data=b'{"body": "\xff\xfe"}', headers=node.auth) as resp:
            assert resp.status == 400, node.name

    # Control characters are stripped, newlines and tabs kept, on either path.
    raw = "line one\x00\x07\x1b[2J\r\n\tindented\x7f\u202e end  "
    for node in (b, a):
        sent = await comment(node, item_id, raw)
        assert sent["body"] == "line one[2J\n\tindented end", node.name
        await published(a, item_id, sent["id"])
        assert (await owner_rows(a, sent["id"]))[0][4] == "line one[2J\n\tindented end"
    # Exactly at the limit is fine.
    at_limit = await comment(b, item_id, "y" * 5000)
    await same_thread_everywhere(item_id, trio, 3)
    assert len((await owner_rows(a, at_limit["id"]))[0][4]) == 5000
    assert await outbox_of(b) == []

    # The owner checks again what members deliver (a member's node need not be honest).
    bad = {
        "control": ("ctl\x00\x1b ok", "ok"),
        "long": ("z" * 5001, "rejected"),
        "empty": (" \x00 ", "rejected"),
        "not text": (["list"], "rejected"),
    }
    mids = {key: secrets.token_hex(16) for key in bad}
    results = await deliver(
        b,
        a,
        [
            {"id": mids[key], "kind": "comment", "payload": {"item": item_id, "author": "admin", "body": body}}
            for key, (body, _verdict) in bad.items()
        ],
    )
    for key, (_body, verdict) in bad.items():
        assert results[mids[key]].startswith(verdict), (key, results)
    assert (await owner_rows(a, mids["control"]))[0][4] == "ctl ok"
    for key in ("long", "empty", "not text"):
        assert await owner_rows(a, mids[key]) == [], key


async def test_private_items_and_replies_across_items_and_too_deep(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    item = await shared_video(a, tmp_path / "media")
    other = await shared_video(a, tmp_path / "media", title="Other film", variant=1)
    secret = await shared_video(a, tmp_path / "media", title="Secret film", variant=2, visibility="private")
    assert len({item["id"], other["id"], secret["id"]}) == 3
    await seen_by(item, b, c)

    # A's private item does not exist for B: not its thread, not a comment on it.
    note = await comment(a, secret["id"], "note to self")
    assert note["state"] == "published"
    await b.sync()
    for method, kwargs in (("GET", {}), ("POST", {"json": {"body": "let me in"}})):
        reply = await b.call(method, f"/api/v1/items/{secret['id']}/comments", **kwargs)
        assert reply.status == 404, (method, reply)
    assert await b.sql("SELECT count(*) FROM registry_comments WHERE item_id = :i", i=secret["id"]) == [(0,)]
    # Delivered straight to A's inbox, it is refused the same way.
    mid = secrets.token_hex(16)
    results = await deliver(
        b, a, [{"id": mid, "kind": "comment", "payload": {"item": secret["id"], "author": "admin", "body": "x"}}]
    )
    assert results[mid].startswith("rejected") and "no item" in results[mid]
    assert await owner_rows(a, mid) == []

    # A reply must answer a comment on the same item.
    on_other = await comment(a, other["id"], "about the other film")
    await published(b, other["id"], on_other["id"])
    for node in (a, b):
        reply = await try_comment(node, item["id"], body="wrong thread", parent_id=on_other["id"])
        assert reply.status == 400 and "same item" in reply.message, (node.name, reply)
        reply = await try_comment(node, item["id"], body="no such parent", parent_id="f" * 32)
        assert reply.status == 400, (node.name, reply)
    mid = secrets.token_hex(16)
    results = await deliver(
        b,
        a,
        [
            {
                "id": mid,
                "kind": "comment",
                "payload": {"item": item["id"], "parent": on_other["id"], "author": "admin", "body": "x"},
            }
        ],
    )
    assert results[mid].startswith("rejected") and "same item" in results[mid]

    # Replies nest five deep; the sixth nested reply is refused, on the owner and on a member.
    chain = [await comment(a, item["id"], "level 0")]
    for level in range(1, 6):
        chain.append(await comment(a, item["id"], f"level {level}", parent=chain[-1]["id"]))
    assert [x["depth"] for x in chain] == [0, 1, 2, 3, 4, 5]
    reply = await try_comment(a, item["id"], body="level 6", parent_id=chain[-1]["id"])
    assert reply.status == 400 and "at most 5" in reply.message, reply
    await published(b, item["id"], chain[-1]["id"])
    reply = await try_comment(b, item["id"], body="level 6 from B", parent_id=chain[-1]["id"])
    assert reply.status == 400 and "at most 5" in reply.message, reply
    # B may still answer one level up.
    sibling = await comment(b, item["id"], "level 5 from B", parent=chain[-2]["id"])
    assert sibling["depth"] == 5
    shown = await same_thread_everywhere(item["id"], trio, 7)
    assert [x["depth"] for x in shown] == [0, 1, 2, 3, 4, 5, 5]
    assert await outbox_of(b) == []


# -- comments follow the item's access rules -------------------------------------------


async def test_comments_follow_the_items_visibility(trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path) -> None:
    a, b, c = trio
    ids = await a_comment_thread(tmp_path, trio)
    item_id = ids["item"]
    before = await thread(c, item_id)
    assert len(before) == 2

    await a.api("PATCH", f"/api/v1/items/{item_id}", json={"visibility": f"peers:{b.node_id}"})
    await b.sync()
    await c.sync()
    for path in (f"/api/v1/items/{item_id}/comments", f"/api/v1/items/{item_id}"):
        reply = await c.call("GET", path)
        assert reply.status == 404, (path, reply)
    assert (await try_comment(c, item_id, body="still here?")).status == 404
    assert await c.search("picnic") == []
    assert await c.sql("SELECT count(*) FROM registry_comments WHERE item_id = :i", i=item_id) == [(0,)]
    # B still sees it all, and may still comment.
    assert await thread(b, item_id) == before
    b2 = await comment(b, item_id, "just between us")
    await published(b, item_id, b2["id"])
    # C's node cannot deliver a comment on it either.
    mid = secrets.token_hex(16)
    results = await deliver(c, a, [{"id": mid, "kind": "comment", "payload": {"item": item_id, "body": "x"}}])
    assert results[mid].startswith("rejected")

    # Shared with the network again: C gets the whole thread back.
    await a.api("PATCH", f"/api/v1/items/{item_id}", json={"visibility": "network"})
    shown = await same_thread_everywhere(item_id, trio, 3)
    assert [x["id"] for x in shown] == [ids["b1"], ids["c1"], b2["id"]]
    assert {x["id"]: x["body"] for x in shown} == {
        ids["b1"]: "B was here",
        ids["c1"]: "C was here",
        b2["id"]: "just between us",
    }


async def test_a_removed_members_comments_stay_marked_former_member(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    ids = await a_comment_thread(tmp_path, trio)
    item_id = ids["item"]
    c2 = await comment(c, item_id, "C answers B", parent=ids["b1"])
    before = await same_thread_everywhere(item_id, trio, 3)
    assert not any(x["former_member"] for x in before)

    await a.api("DELETE", f"/api/v1/network/members/{c.node_id}")

    async def marked(node: NetNode) -> bool:
        await node.sync()
        shown = await thread(node, item_id)
        return {x["id"]: x["former_member"] for x in shown} == {ids["b1"]: False, ids["c1"]: True, c2["id"]: True}

    for node in (a, b):
        await eventually(partial(marked, node), timeout=30, what=f"{node.name} marks C a former member")
    # The comments themselves are unchanged, and still C's.
    for node in (a, b):
        shown = await thread(node, item_id)
        strip = [{k: v for k, v in x.items() if k != "former_member"} for x in shown]
        assert strip == [{k: v for k, v in x.items() if k != "former_member"} for x in before], node.name
    assert await owner_rows(a, ids["c1"]) == [(ids["c1"], item_id, "admin", c.node_id, "C was here", False)]
