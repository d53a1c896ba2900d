"""What the node commands print, run in process against a real node (the CLI and the REPL share them)."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import time
from pathlib import Path

import pytest

from priv_network import commands, repl
from priv_network.client import AdminClient
from priv_network.errors import InvalidInput, NotFound
from tests.conftest import RunningNode


async def run(node: RunningNode, *line: str) -> tuple[int, str]:
    args = commands.build_parser().parse_args(list(line))
    out = io.StringIO()
    async with AdminClient(str(node.client.make_url("")).rstrip("/"), node.token) as client:
        code = await args.remote(client, args, out)
    return code, out.getvalue()


async def test_add_says_what_became_of_the_visibility_of_stored_items(node: RunningNode, media_dir: Path) -> None:
    cover = str(media_dir / "cover.png")
    code, text = await run(node, "add", cover, "--visibility", "network")
    assert code == 0 and text.startswith("added")

    code, text = await run(node, "add", cover)
    assert code == 0
    assert "existing" in text and "(kept visibility network)" in text
    assert "changed visibility" not in text

    code, text = await run(node, "add", cover, "--visibility", "private")
    assert code == 0
    assert "(visibility network -> private)" in text
    assert text.rstrip().endswith("1 already stored item changed visibility")
    item = (await node.api("GET", "/api/v1/items"))["items"][0]
    assert item["visibility"] == "private"

    # Asked for what it already has: no note, nothing changed.
    code, text = await run(node, "add", cover, "--visibility", "private")
    assert code == 0 and "->" not in text and "kept" not in text


async def test_add_sends_absolute_paths(node: RunningNode, media_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node may run in another folder: the CLI resolves relative paths before sending them."""
    monkeypatch.chdir(media_dir)
    args = commands.build_parser().parse_args(["add", "cover.png", "../media/notes.txt"])
    assert args.paths == [str(media_dir / "cover.png"), os.path.normpath(media_dir / "notes.txt")]
    code, text = await run(node, "add", "cover.png")
    assert code == 0 and "cover" in text


# -- token create, list, revoke ------------------------------------------------------------


async def test_token_commands_name_the_user_and_never_show_a_secret(
    node: RunningNode, capsys: pytest.CaptureFixture[str]
) -> None:
    await node.api("POST", "/api/v1/users", json={"name": "bob", "password": "bobs password", "admin": False})
    with pytest.raises(NotFound, match="no user named 'nobody'"):
        await run(node, "token", "create", "--user", "nobody")
    with pytest.raises(InvalidInput, match="bob is not an owner"):
        await run(node, "token", "create", "--user", "bob", "--admin")

    code, text = await run(node, "token", "create", "--user", "bob")
    token = text.strip()
    assert code == 0 and token.startswith("pn_") and "\n" not in token  # only the token, for scripts
    note = capsys.readouterr().err
    (token_id,) = re.findall(r"token revoke ([0-9a-f]+)", note)
    assert "acts as user bob, with user rights" in note

    code, table = await run(node, "token", "list")
    assert code == 0 and token not in table and node.token not in table
    header, *lines = table.splitlines()
    assert header.split() == ["ID", "USER", "KIND", "RIGHTS", "CREATED", "LAST", "USED", "EXPIRES"]
    (bob,) = [line for line in lines if line.startswith(token_id)]
    assert bob.split()[1:4] == ["bob", "api", "user"] and "never" in bob
    (own,) = [line for line in lines if "(this client)" in line]
    assert own.split()[1:4] == ["admin", "admin", "owner"]
    code, listed = await run(node, "token", "list", "--json")
    assert {t["id"]: t["user"] for t in json.loads(listed)}[token_id] == "bob"

    # The REPL has the same commands.
    out, err = io.StringIO(), io.StringIO()
    async with AdminClient(str(node.client.make_url("")).rstrip("/"), node.token) as client:
        assert await repl.execute(client, f"token revoke {token_id}", out, err) == 0
        assert out.getvalue() == f"revoked token {token_id} (bob, api); it no longer works\n"
        assert await repl.execute(client, f"token revoke {token_id}", out, err) == 1
        assert "no token" in err.getvalue() and "token list" in err.getvalue()
    async with node.client.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 401

    with pytest.raises(commands.UsageError, match="give the token's ID"):
        await run(node, "token", "revoke", token)


# -- durations and counts: checked by the parser (exit 2), with the node's own limits ------------


def test_the_cli_limits_are_the_nodes() -> None:
    from node import network, shares

    assert commands.SHARE_TTL == (60, shares.MAX_SHARE_TTL)
    assert commands.INVITE_TTL == (60, network.MAX_INVITE_TTL)
    assert commands.MAX_INVITE_USES == network.MAX_INVITE_USES
    assert commands.MAX_SHARE_DOWNLOADS == shares.MAX_SHARE_DOWNLOADS


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("share X --ttl abc", "share: argument --ttl: not a duration: 'abc' (use e.g. 30m, 24h, 7d)"),
        ("share X --ttl=-5m", "share: argument --ttl: not a duration: '-5m' (use e.g. 30m, 24h, 7d)"),
        ("share X --ttl 0", "share: argument --ttl: must be between 1 minute and 365 days, not 0"),
        ("share X --ttl 2s", "share: argument --ttl: must be between 1 minute and 365 days, not 2s"),
        ("share X --ttl 366d", "share: argument --ttl: must be between 1 minute and 365 days, not 366d"),
        ("share X --downloads 0", "share: argument --downloads: must be at least 1, not 0"),
        ("share X --downloads -1", "share: argument --downloads: must be at least 1, not -1"),
        ("share X --downloads 1000001", "share: argument --downloads: must be at most 1000000, not 1000001"),
        (
            "share X --downloads 99999999999999999999",
            "share: argument --downloads: must be at most 1000000, not 99999999999999999999",
        ),
        (f"share X --downloads {'9' * 5000}", "share: argument --downloads: must be at most 1000000, not 9999"),
        ("share X --downloads abc", "share: argument --downloads: not a whole number: 'abc'"),
        ("share X --downloads 1.5", "share: argument --downloads: not a whole number: '1.5'"),
        ("invite --ttl abc", "invite: argument --ttl: not a duration: 'abc' (use e.g. 30m, 24h, 7d)"),
        ("invite --ttl 30s", "invite: argument --ttl: must be between 1 minute and 365 days, not 30s"),
        ("invite --uses 0", "invite: argument --uses: must be at least 1, not 0"),
        ("invite --uses 1001", "invite: argument --uses: must be at most 1000, not 1001"),
        ("import-plex --url plex.local --token t", "import-plex: argument --url: must be an http(s) address"),
        ("import-plex --url http://plex --token ' '", "import-plex: argument --token: must not be empty"),
    ],
    ids=lambda v: v[:40] if v.startswith(("share", "invite", "import")) else "",
)
async def test_bad_durations_and_counts_are_usage_errors_in_the_repl_too(
    node: RunningNode, line: str, message: str
) -> None:
    out, err = io.StringIO(), io.StringIO()
    async with AdminClient(str(node.client.make_url("")).rstrip("/"), node.token) as client:
        assert await repl.execute(client, line, out, err) == 2
    (said,) = err.getvalue().splitlines()
    assert said.startswith(f"error: {message}"), said
    assert out.getvalue() == ""
    # The CLI says the same, with its program name (one line, exit 2: see test_cli).
    with pytest.raises(commands.UsageError, match=re.escape(f"priv-network {message}")):
        commands.build_parser().parse_args(shlex.split(line))
    assert (await node.api("GET", "/api/v1/shares"))["shares"] == []


async def test_a_dashed_value_after_an_option_gets_a_hint_in_the_repl(node: RunningNode) -> None:
    out, err = io.StringIO(), io.StringIO()
    async with AdminClient(str(node.client.make_url("")).rstrip("/"), node.token) as client:
        assert await repl.execute(client, "share X --ttl -5m", out, err) == 2
    assert err.getvalue() == (
        "error: share: argument --ttl: expected one argument (see `help share`); "
        "to pass a value that starts with '-', join it to the option: --ttl=-5m\n"
    )


async def test_good_durations_and_counts_reach_the_node(node: RunningNode, media_dir: Path) -> None:
    added = await node.api("POST", "/api/v1/items", json={"paths": [str(media_dir / "cover.png")]})
    item_id = added["added"][0]["id"]
    before = time.time()
    code, text = await run(node, "share", item_id, "--ttl", "90m", "--downloads", "3")
    assert code == 0 and "/s/" in text
    (share,) = (await node.api("GET", "/api/v1/shares"))["shares"]
    assert share["max_downloads"] == 3
    assert before + 5400 - 1 <= share["expires_at"] <= time.time() + 5400
    size = (await node.api("GET", f"/api/v1/items/{item_id}"))["size"]
    assert share["bytes_left"] == 3 * size + size // 8  # three downloads and the margin for broken ones
    code, text = await run(node, "shares")
    assert code == 0 and f"0/3, {commands._human_size(share['bytes_left'])} left" in text, text
    code, text = await run(node, "invite", "--ttl", "1h", "--uses", "1000")
    assert code == 0 and text.strip()


async def test_the_api_still_refuses_bad_values_without_cli_flag_names(node: RunningNode) -> None:
    for body, words in (
        ({"ttl": "10s"}, "ttl must be between 1 minute and 365 days"),
        ({"ttl": "soon"}, "ttl must be a duration"),
        ({"uses": 0}, "uses must be between 1 and 1000"),
        ({"uses": 1001}, "uses must be between 1 and 1000"),
    ):
        async with node.client.post("/api/v1/network/invites", json=body, headers=node.auth) as resp:
            assert resp.status == 400, body
            message = (await resp.json())["error"]["message"]
        assert words in message and "--" not in message, (body, message)


# -- search, item and status ---------------------------------------------------------------


def test_the_copies_column_stays_narrow() -> None:
    def holder(name: str, online: bool = True) -> dict[str, object]:
        return {"node": name.upper(), "name": name, "online": online}

    assert commands._copies([]) == ""
    assert commands._copies([holder("carol")]) == "carol"
    assert commands._copies([holder("carol", False)]) == "carol (offline)"
    # Online holders first; what does not fit is counted.
    assert commands._copies([holder("dave", False), holder("carol"), holder("eve")]) == "carol, eve +1"
    many = [holder(f"member{i}") for i in range(40)]
    shown = commands._copies(many)
    assert shown == "member0, member1 +38" and len(shown) <= commands.COPIES_WIDTH
    # A long name is cut, never the column's only entry dropped.
    assert commands._copies([holder("a-very-long-member-name-indeed")]) == "a-very-long-mem\u2026"


def test_traffic_names_members_and_keeps_share_links() -> None:
    node_id = "M3RDO7AM-QSNF7THO-BFTUDVC7-7SL2YCCI"
    names = {node_id: "alice"}
    assert commands._traffic_label(f"peer:{node_id}", names) == "alice (M3RDO7AM\u2026)"
    assert commands._traffic_label("peer:UNKNOWN", names) == "peer:UNKNOWN"
    assert commands._traffic_label("share:19da2a946dfa2aedc6b95fce", names) == "share:19da2a946dfa2aedc6b95fce"


async def test_search_item_and_status_of_a_lone_node(node: RunningNode, media_dir: Path) -> None:
    added = await node.api("POST", "/api/v1/items", json={"paths": [str(media_dir / "cover.png")]})
    item_id = added["added"][0]["id"]
    code, text = await run(node, "search", "cover")
    header, line = text.splitlines()
    assert header.split() == ["ID", "KIND", "DURATION", "OWNER", "COPIES", "TITLE"]
    assert line.split() == [item_id, "image", "alice", "cover"]  # nobody else holds a copy

    code, text = await run(node, "item", item_id)
    shown = {key: value.strip() for key, _, value in (line.partition(" ") for line in text.splitlines())}
    assert (shown["owner"], shown["copies"]) == ("alice (this node)", "none")
    assert list(shown)[:4] == ["id", "node", "owner", "copies"]
    code, text = await run(node, "item", item_id, "--json")
    assert "owner" not in json.loads(text)  # --json is the API's answer as it is

    code, text = await run(node, "status")
    assert code == 0
    assert "pinned copies  0 (0 B)\n" in text
