"""API tokens over the admin API: tokens acting as a user, listing, revoking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningNode
from tests.node.test_content import assert_json_error

PASSWORD = "correct horse battery"


async def call(node: RunningNode, method: str, path: str, token: str | None = None, **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token or node.token}"}
    async with node.client.request(method, path, headers=headers, **kwargs) as resp:
        return resp.status, await resp.json()


async def tokens(node: RunningNode) -> list[dict[str, Any]]:
    return list((await node.api("GET", "/api/v1/tokens"))["tokens"])


@pytest.fixture
async def users(node: RunningNode) -> RunningNode:
    """The node with an owner (alice) and a user who is not one (bob)."""
    await node.api("POST", "/api/v1/users", json={"name": "alice", "password": PASSWORD, "admin": True})
    await node.api("POST", "/api/v1/users", json={"name": "bob", "password": PASSWORD, "admin": False})
    return node


async def test_a_token_for_an_unknown_user_is_refused_and_nothing_is_recorded(users: RunningNode) -> None:
    before = await tokens(users)
    for body, status, code in [
        ({"user": "nobody"}, 404, "not_found"),
        ({"user": "nobody", "admin": True}, 404, "not_found"),
        ({"user": "no body"}, 400, "invalid_input"),
        ({"user": ""}, 400, "invalid_input"),
        ({"user": 7}, 400, "invalid_input"),
        ({"user": "bob", "name": "bob"}, 400, "invalid_input"),
        ({"user": "bob", "admin": "yes"}, 400, "invalid_input"),
    ]:
        got, data = await call(users, "POST", "/api/v1/tokens", json=body)
        assert got == status, (body, data)
        assert_json_error(data, code)
        assert "token" not in data
    got, data = await call(users, "POST", "/api/v1/tokens", json={"user": "nobody"})
    assert "no user named 'nobody'" in data["error"]["message"] and "user add" in data["error"]["message"]
    assert await tokens(users) == before


async def test_a_token_for_a_user_acts_as_that_user_with_only_that_users_rights(
    users: RunningNode, tmp_path: Path
) -> None:
    note = tmp_path / "note.txt"
    note.write_text("hello\n")
    item = (await users.api("POST", "/api/v1/items", json={"paths": [str(note)]}))["added"][0]

    created = await users.api("POST", "/api/v1/tokens", json={"user": "bob"})
    assert (created["user"], created["admin"]) == ("bob", False)
    assert created["token"].startswith("pn_") and created["id"]
    bob = created["token"]

    # It acts as bob: what bob writes is bob's.
    got, comment = await call(users, "POST", f"/api/v1/items/{item['id']}/comments", bob, json={"body": "hi"})
    assert got == 201, comment
    assert comment["author"] == "bob@alice"  # user@node
    got, _ = await call(users, "GET", "/api/v1/items", bob)
    assert got == 200

    # And can do no more than bob may: no owner endpoint answers it.
    for method, path, body in [
        ("GET", "/api/v1/tokens", None),
        ("POST", "/api/v1/tokens", {"name": "escalate", "admin": True}),
        ("POST", "/api/v1/tokens", {"user": "alice"}),
        ("DELETE", f"/api/v1/tokens/{created['id']}", None),
        ("POST", "/api/v1/users", {"name": "carol", "password": PASSWORD, "admin": True}),
        ("GET", "/api/v1/users", None),
        ("DELETE", f"/api/v1/items/{item['id']}", None),
        ("POST", "/api/v1/network/invites", {}),
    ]:
        got, data = await call(users, method, path, bob, json=body)
        assert got == 403, (method, path, data)
        assert_json_error(data, "forbidden")

    # Owner rights are not granted to a token of a user who has none.
    before = await tokens(users)
    got, data = await call(users, "POST", "/api/v1/tokens", json={"user": "bob", "admin": True})
    assert got == 400 and "bob is not an owner" in data["error"]["message"], data
    assert await tokens(users) == before

    # An owner's token has the owner's rights, asked for or not.
    for body in ({"user": "alice"}, {"user": "alice", "admin": True}):
        alice = await users.api("POST", "/api/v1/tokens", json=body)
        assert (alice["user"], alice["admin"]) == ("alice", True)
        got, _ = await call(users, "GET", "/api/v1/tokens", alice["token"])
        assert got == 200


async def test_a_token_without_a_user_is_a_label_as_before(users: RunningNode) -> None:
    created = await users.api("POST", "/api/v1/tokens", json={"name": "script", "admin": False})
    assert (created["name"], created["user"], created["admin"]) == ("script", "script", False)
    assert [t["user"] for t in await tokens(users) if t["id"] == created["id"]] == ["script"]


async def test_the_list_shows_every_working_token_but_never_a_secret(users: RunningNode) -> None:
    bob = await users.api("POST", "/api/v1/tokens", json={"user": "bob"})
    async with users.client.get("/api/v1/tokens", headers=users.auth) as resp:
        assert resp.status == 200
        text = await resp.text()
        listed = (await resp.json())["tokens"]
    assert bob["token"] not in text and users.token not in text
    assert "token_hash" not in text and '"token"' not in text
    by_id = {t["id"]: t for t in listed}
    assert set(by_id[bob["id"]]) == {
        "id",
        "user",
        "kind",
        "admin",
        "created_at",
        "last_used_at",
        "expires_at",
        "current",
    }
    assert (by_id[bob["id"]]["user"], by_id[bob["id"]]["kind"], by_id[bob["id"]]["admin"]) == ("bob", "api", False)
    assert by_id[bob["id"]]["last_used_at"] is None and by_id[bob["id"]]["current"] is False
    # The CLI's own credential, marked as the caller's.
    (own,) = [t for t in listed if t["current"]]
    assert (own["kind"], own["admin"], own["user"]) == ("admin", True, "admin")
    assert own["last_used_at"] is not None

    got, _ = await call(users, "GET", "/api/v1/status", bob["token"])
    assert got == 200
    used = {t["id"]: t for t in await tokens(users)}[bob["id"]]
    assert used["last_used_at"] is not None


async def test_a_revoked_token_is_refused_at_once(users: RunningNode) -> None:
    bob = await users.api("POST", "/api/v1/tokens", json={"user": "bob"})
    # Used just before: the node remembers a verified token for a few seconds; revoking forgets it.
    got, _ = await call(users, "GET", "/api/v1/status", bob["token"])
    assert got == 200

    revoked = await users.api("DELETE", f"/api/v1/tokens/{bob['id']}")
    assert revoked == {"id": bob["id"], "user": "bob", "kind": "api", "admin": False, "current": False}
    for method, path in [("GET", "/api/v1/status"), ("GET", "/api/v1/items"), ("GET", "/api/v1/search?q=x")]:
        got, data = await call(users, method, path, bob["token"])
        assert got == 401, (path, data)
        assert_json_error(data, "unauthorized")
    assert bob["id"] not in {t["id"] for t in await tokens(users)}
    # The web app refuses it too.
    async with users.client.post("/login/token", data={"token": bob["token"]}, allow_redirects=False) as resp:
        assert resp.status == 401


async def test_revoking_a_session_ends_that_web_login(users: RunningNode) -> None:
    bob = await users.api("POST", "/api/v1/tokens", json={"user": "bob"})
    async with users.client.post("/login/token", data={"token": bob["token"]}, allow_redirects=False) as resp:
        assert resp.status == 303
    async with users.client.get("/api/v1/status") as resp:  # with the session cookie only
        assert resp.status == 200
    (session,) = [t for t in await tokens(users) if t["kind"] == "session"]
    assert session["user"] == "bob" and session["expires_at"] is not None

    await users.api("DELETE", f"/api/v1/tokens/{session['id']}")
    async with users.client.get("/api/v1/status") as resp:
        assert resp.status == 401
    got, _ = await call(users, "GET", "/api/v1/status", bob["token"])  # the token itself still works
    assert got == 200


async def test_revoking_an_unknown_token_is_a_clear_404(users: RunningNode) -> None:
    before = await tokens(users)
    for token_id in ("0123456789abcdef", "x" * 33, "pn_notanid"):
        got, data = await call(users, "DELETE", f"/api/v1/tokens/{token_id}")
        assert got == 404, (token_id, data)
        assert_json_error(data, "not_found")
        assert "token list" in data["error"]["message"]
    bob = await users.api("POST", "/api/v1/tokens", json={"user": "bob"})
    await users.api("DELETE", f"/api/v1/tokens/{bob['id']}")
    got, data = await call(users, "DELETE", f"/api/v1/tokens/{bob['id']}")
    assert got == 404
    assert await tokens(users) == before


async def test_the_last_owner_token_is_kept_but_another_one_lets_it_go(users: RunningNode) -> None:
    (own,) = [t for t in await tokens(users) if t["current"]]
    # A session of an owner is no way back for the CLI: it does not count.
    got, data = await call(users, "DELETE", f"/api/v1/tokens/{own['id']}")
    assert got == 409, data
    assert_json_error(data, "conflict")
    assert "last owner" in data["error"]["message"] and "token create --admin" in data["error"]["message"]
    got, _ = await call(users, "GET", "/api/v1/status")
    assert got == 200

    spare = await users.api("POST", "/api/v1/tokens", json={"user": "alice"})
    revoked = await users.api("DELETE", f"/api/v1/tokens/{own['id']}")
    assert revoked["current"] is True and revoked["kind"] == "admin"
    got, _ = await call(users, "GET", "/api/v1/status")
    assert got == 401
    # The spare is now the last one.
    got, data = await call(users, "DELETE", f"/api/v1/tokens/{spare['id']}", spare["token"])
    assert got == 409, data
    got, _ = await call(users, "GET", "/api/v1/tokens", spare["token"])
    assert got == 200
