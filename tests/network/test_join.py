"""Joining a group by invite, over real HTTP between nodes on 127.0.0.x.

A join is refused with one clear line and a 4xx for every bad invite, and a
refused join leaves no trace: no member on either side, no invite use spent,
no roster event.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from node import network as network_module
from priv_network.identity import NodeIdentity, b64u, b64u_decode
from priv_network.wire import RosterEvent
from tests.network.conftest import NetNode, Network, group, ids, join, write_file

PREFIX = "pninv1_"


def decode(token: str) -> dict[str, str]:
    return dict(json.loads(b64u_decode(token[len(PREFIX) :])))


def encode(payload: dict[str, str]) -> str:
    return PREFIX + b64u(json.dumps(payload, separators=(",", ":")).encode())


async def trace(node: NetNode) -> tuple[Any, ...]:
    """What a join records on a node: members, invite uses, roster events."""
    members = sorted((m["node_id"], m["active"]) for m in (await node.members()).values())
    invites = await node.sql("SELECT id, uses_left FROM invites ORDER BY id")
    events = await node.sql("SELECT id FROM roster_events ORDER BY id")
    return members, invites, events


def assert_refusal(reply: Any, status: int, words: str) -> None:
    assert reply.status == status, reply
    message = reply.message
    assert "\n" not in message and len(message) < 300, message
    assert words in message, message


def self_add(identity: NodeIdentity, name: str, url: str, at: float | None = None) -> RosterEvent:
    event = RosterEvent(
        id=secrets.token_hex(16),
        type="add",
        subject=identity.node_id,
        name=name,
        url=url,
        public_key=b64u(identity.public.public_key),
        signer=identity.node_id,
        at=time.time() if at is None else at,
    )
    return RosterEvent(**{**event.__dict__, "sig": b64u(identity.sign(event.signing_bytes()))})


async def test_invite_and_join_make_both_nodes_peers(network: Network) -> None:
    a = await network.node("alpha")
    b = await network.node("beta")
    assert await a.peers() == {} and await b.peers() == {}
    answer = await join(a, b)
    assert answer["inviter"]["node_id"] == a.node_id
    assert set(await a.peers()) == {b.node_id}
    assert set(await b.peers()) == {a.node_id}
    assert (await a.peers())[b.node_id]["url"] == b.url
    assert (await b.peers())[a.node_id]["name"] == "alpha"
    members = await a.members()
    assert members[b.node_id]["active"] is True and members[b.node_id]["name"] == "beta"


async def test_third_node_joining_via_second_gives_a_full_mesh_in_one_sync(network: Network) -> None:
    a, b, c = [await network.node(n) for n in ("alpha", "beta", "gamma")]
    await join(a, b)
    await join(b, c)
    await a.sync()
    for node in (a, b, c):
        others = {n.node_id for n in (a, b, c)} - {node.node_id}
        assert set(await node.peers()) == others, node.name


async def test_members_learn_of_a_new_member_through_the_feed_alone(
    network: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the joiner's direct announcement, the roster event travels in the inviter's feed."""

    async def no_announcement(self: Any, inviter_id: str, events: list[RosterEvent]) -> None:
        return None

    monkeypatch.setattr(network_module.Network, "_announce", no_announcement)
    a, b, c = [await network.node(n) for n in ("alpha", "beta", "gamma")]
    await join(a, b)
    await join(b, c)
    item = (await c.add(write_file(tmp_path, "gamma-clip.txt")))[0]
    await a.sync()
    assert set(await a.peers()) == {b.node_id, c.node_id}
    assert ids(await a.search("gamma", node=c)) == {item["id"]}


async def test_expired_invite_is_refused_and_leaves_no_trace(network: Network) -> None:
    a = await network.node("alpha")
    b = await network.node("beta")
    token = await a.invite(ttl="60s")
    await a.sql("UPDATE invites SET expires_at = :t", t=time.time() - 1)
    before = (await trace(a), await trace(b))
    assert_refusal(await b.join(token), 403, "expired")
    assert (await trace(a), await trace(b)) == before
    assert await a.peers() == {} and await b.peers() == {}


async def test_used_up_invite_is_refused_and_leaves_no_trace(network: Network) -> None:
    a, b, c = [await network.node(n) for n in ("alpha", "beta", "gamma")]
    token = await a.invite(uses=1)
    assert (await b.join(token)).status == 200
    await a.sync()
    await b.sync()  # settle: every roster event the join made is known on both sides
    before = (await trace(a), await trace(c))
    assert before[0][1][0][1] == 0  # the one use is spent
    assert_refusal(await c.join(token), 403, "used up")
    assert (await trace(a), await trace(c)) == before
    assert set(await a.peers()) == {b.node_id}
    assert await c.peers() == {}


@pytest.mark.parametrize(
    ("tamper", "status", "words"),
    [
        pytest.param(
            lambda p: {**p, "s": p["s"][:-1] + ("A" if p["s"][-1] != "A" else "B")}, 403, "secret", id="secret"
        ),
        pytest.param(lambda p: {**p, "i": secrets.token_hex(16)}, 403, "unknown invite", id="unknown-id"),
        pytest.param(lambda p: {**p, "n": NodeIdentity.generate().node_id}, 403, "not the one", id="other-node-id"),
    ],
)
async def test_tampered_or_unknown_invite_is_refused_and_leaves_no_trace(
    network: Network, tamper: Any, status: int, words: str
) -> None:
    a = await network.node("alpha")
    b = await network.node("beta")
    token = await a.invite(uses=3)
    bad = encode(tamper(decode(token)))
    before = (await trace(a), await trace(b))
    assert_refusal(await b.join(bad), status, words)
    assert (await trace(a), await trace(b)) == before
    # The genuine token still works afterwards: the refusal did not spend it.
    assert (await b.join(token)).status == 200


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param(PREFIX + "!!!not-base64!!!", id="bad-base64"),
        pytest.param(PREFIX + b64u(b'{"u": "http://127.0.0.2:1"}'), id="missing-fields"),
        pytest.param(PREFIX + b64u(b"[1, 2, 3]"), id="not-an-object"),
    ],
)
async def test_malformed_token_is_refused_locally(network: Network, token: str) -> None:
    b = await network.node("beta")
    before = await trace(b)
    assert_refusal(await b.join(token), 400, "not a valid invite token")
    assert await trace(b) == before


async def test_flipped_base64_character_is_refused(network: Network) -> None:
    a = await network.node("alpha")
    b = await network.node("beta")
    token = await a.invite()
    i = len(PREFIX)
    bad = token[:i] + ("f" if token[i] != "f" else "g") + token[i + 1 :]
    before = (await trace(a), await trace(b))
    assert_refusal(await b.join(bad), 400, "not a valid invite token")
    assert (await trace(a), await trace(b)) == before


async def test_a_node_cannot_use_its_own_invite(network: Network) -> None:
    a = await network.node("alpha")
    token = await a.invite()
    before = await trace(a)
    assert_refusal(await a.join(token), 400, "made by this node")
    assert await trace(a) == before


async def test_two_nodes_with_the_same_name_are_fine(network: Network, tmp_path: Path) -> None:
    a = await network.node("home")
    b = await network.node("home")
    await group(a, b)
    item_a = (await a.add(write_file(tmp_path / "a", "shared-name.txt")))[0]
    item_b = (await b.add(write_file(tmp_path / "b", "shared-name.txt")))[0]
    await a.sync()
    hits = await a.search("shared name")
    assert {(h["id"], h["node"]) for h in hits} == {(item_a["id"], a.node_id), (item_b["id"], b.node_id)}
    assert ids(await a.search("shared", node=b)) == {item_b["id"]}
    assert {p["name"] for p in (await a.peers()).values()} == {"home"}


async def test_removed_node_needs_a_new_invite_to_come_back(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha")
    b = await network.node("beta")
    old = await a.invite(uses=2)
    assert (await b.join(old)).status == 200
    item = (await b.add(write_file(tmp_path, "beta-film.txt")))[0]
    await a.sync()
    assert ids(await a.search("beta film")) == {item["id"]}

    await a.api("DELETE", f"/api/v1/network/members/{b.node_id}")
    assert await a.peers() == {}
    assert await a.search("beta film") == []

    reply = await b.join(old)
    assert 400 <= reply.status < 500, reply
    assert "\n" not in reply.message
    assert await a.peers() == {}
    assert not (await a.members())[b.node_id]["active"]

    assert (await b.join(await a.invite())).status == 200
    assert set(await a.peers()) == {b.node_id}
    await a.sync()
    assert ids(await a.search("beta film")) == {item["id"]}


async def test_a_self_signed_announcement_does_not_make_a_stranger_a_member(network: Network) -> None:
    """The roster endpoint is unsigned; a stranger's signed "add" of itself must not let it in."""
    a = await network.node("alpha")
    stranger = NodeIdentity.generate()
    event = self_add(stranger, "mallory", "http://127.0.0.9:9")
    async with a.session.post(a.url + "/federation/v1/roster", json={"events": [event.to_json()]}) as resp:
        assert resp.status < 500
    assert stranger.node_id not in await a.members()
    assert await a.peers() == {}


async def test_a_removed_member_cannot_announce_itself_back_in(network: Network) -> None:
    a = await network.node("alpha")
    b = await network.node("beta")
    await join(a, b)
    await a.api("DELETE", f"/api/v1/network/members/{b.node_id}")
    event = self_add(b.identity, "beta again", b.url)
    async with a.session.post(a.url + "/federation/v1/roster", json={"events": [event.to_json()]}) as resp:
        assert resp.status < 500
    assert (await a.members())[b.node_id]["active"] is False
    assert await a.peers() == {}


async def test_a_removal_outranks_a_newer_self_introduction(network: Network) -> None:
    """C hears B introduce itself (dated after its removal) before it hears A remove B: B stays out."""
    a = await network.node("alpha")
    b = await network.node("beta")
    c = await network.node("gamma")
    await group(a, b, c)
    later = self_add(b.identity, "beta", b.url, at=time.time() + 30)
    async with c.session.post(c.url + "/federation/v1/roster", json={"events": [later.to_json()]}) as resp:
        assert resp.status < 300
    assert (await c.members())[b.node_id]["active"] is True

    await a.api("DELETE", f"/api/v1/network/members/{b.node_id}")
    await c.sync()
    assert (await c.members())[b.node_id]["active"] is False
    assert b.node_id not in await c.peers()
    # And B cannot talk itself back in afterwards either.
    again = self_add(b.identity, "beta", b.url)
    async with c.session.post(c.url + "/federation/v1/roster", json={"events": [again.to_json()]}) as resp:
        assert resp.status < 500
    assert (await c.members())[b.node_id]["active"] is False
