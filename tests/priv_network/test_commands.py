"""What the node commands print, run in process against a real node (the CLI and the REPL share them)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from priv_network import commands
from priv_network.client import AdminClient
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
