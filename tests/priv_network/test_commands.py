"""What the node commands print, run in process against a real node (the CLI and the REPL share them)."""

from __future__ import annotations

import io
import json
import os
import re
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
