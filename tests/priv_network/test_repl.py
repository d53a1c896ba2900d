"""The REPL driven through prompt_toolkit's pipe input against a real node."""

from __future__ import annotations

import io
from pathlib import Path

from prompt_toolkit.application import create_app_session
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from priv_network import commands, repl
from priv_network.client import AdminClient
from tests.conftest import RunningNode


def client_for(node: RunningNode) -> AdminClient:
    return AdminClient(str(node.client.make_url("")).rstrip("/"), node.token)


async def run_lines(node: RunningNode, lines: list[str], history: Path) -> str:
    out = io.StringIO()
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        pipe.send_text("".join(line + "\n" for line in lines))
        pipe.close()
        code = await repl.run(client_for(node), history, input=pipe, output=DummyOutput(), out=out)
    assert code == 0
    return out.getvalue()


async def test_commands_errors_and_history(node: RunningNode, media_dir: Path, tmp_path: Path) -> None:
    await node.api("POST", "/api/v1/items", json={"paths": [str(media_dir)]})
    history = tmp_path / "repl_history"
    text = await run_lines(node, ["status", "bogus-command", "remove nope", "search spider", "exit"], history)
    assert "node ID" in text and node.identity.node_id in text
    assert "Spider-Man Homecoming" in text  # the REPL went on after two errors
    saved = history.read_text()
    assert "bogus-command" in saved and "search spider" in saved


async def test_output_equals_the_cli(node: RunningNode, media_dir: Path) -> None:
    await node.api("POST", "/api/v1/items", json={"paths": [str(media_dir)]})
    parser = commands.build_parser()
    for line in (["search", "amel"], ["status", "--json"], ["peers"], ["pins"], ["downloads"]):
        args = parser.parse_args(line)
        direct = io.StringIO()
        async with client_for(node) as client:
            await args.remote(client, args, direct)
        via_repl, err = io.StringIO(), io.StringIO()
        async with client_for(node) as client:
            assert await repl.execute(client, " ".join(line), via_repl, err) == 0
        if line[0] == "status":  # free disk moves between two calls
            continue
        assert via_repl.getvalue() == direct.getvalue(), line


async def test_errors_are_one_line_and_local_commands_refused(node: RunningNode) -> None:
    out, err = io.StringIO(), io.StringIO()
    async with client_for(node) as client:
        assert await repl.execute(client, "serve", out, err) == 2
        assert await repl.execute(client, "item " + "a" * 26, out, err) == 1
        assert await repl.execute(client, 'search "unbalanced', out, err) == 2
        assert await repl.execute(client, "exit", out, err) is None
    lines = err.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert "only from the shell" in lines[0]


async def test_help_and_completion(node: RunningNode, media_dir: Path) -> None:
    added = await node.api("POST", "/api/v1/items", json={"paths": [str(media_dir / "cover.png")]})
    item_id = added["added"][0]["id"]
    out, err = io.StringIO(), io.StringIO()
    async with client_for(node) as client:
        await repl.execute(client, "help", out, err)
        await repl.execute(client, "help pin", out, err)
        completer = repl.NodeCompleter(repl._commands(commands.build_parser()))
        await completer.refresh(client)
    assert "search" in out.getvalue() and "usage: priv-network pin" in out.getvalue()
    names = [c.text for c in completer.get_completions(Document("se"), CompleteEvent())]
    assert "search" in names and "serve" not in names
    ids = [c.text for c in completer.get_completions(Document("item " + item_id[:3]), CompleteEvent())]
    assert ids == [item_id]


async def test_a_node_that_went_away_keeps_the_repl(node: RunningNode) -> None:
    out, err = io.StringIO(), io.StringIO()
    gone = AdminClient("http://127.0.0.1:9", node.token)
    async with gone:
        assert await repl.execute(gone, "status", out, err) == 1
    assert "no node is running" in err.getvalue()


async def test_unknown_commands_and_usage_errors_speak_repl(node: RunningNode) -> None:
    out, err = io.StringIO(), io.StringIO()
    async with client_for(node) as client:
        assert await repl.execute(client, "bogus", out, err) == 2
        assert await repl.execute(client, "search -bunny", out, err) == 2
        assert await repl.execute(client, "search x --limit 0", out, err) == 2
        assert await repl.execute(client, "share revoke", out, err) == 2
        assert await repl.execute(client, "search 'spider", out, err) == 2
        # A comment, or a line that is only one, is passed over.
        assert await repl.execute(client, "# list the peers", out, err) == 0
        assert await repl.execute(client, "status  # and this node", out, err) == 0
    lines = err.getvalue().splitlines()
    assert len(lines) == 5, lines
    assert lines[4] == "error: a quote is not closed in this line"
    assert all(line.startswith("error: ") and "priv-network" not in line for line in lines), lines
    unknown = lines[0]
    assert unknown.startswith("error: no command 'bogus'; `help` lists them (")
    for local in repl.LOCAL_ONLY:
        assert f" {local}," not in unknown and f"({local}," not in unknown
    assert "search" in unknown and "exit" in unknown
    assert lines[1].endswith(
        "(see `help search`); to pass a value that starts with '-', put -- before it: search -- -bunny"
    )
    assert lines[2] == "error: search: argument --limit: must be from 1 to 200, not 0 (see `help search`)"
    assert lines[3].startswith("error: share revoke: needs the share link")


async def test_plain_line_mode_for_piped_input(node: RunningNode, media_dir: Path, tmp_path: Path) -> None:
    await node.api("POST", "/api/v1/items", json={"paths": [str(media_dir)]})
    history = tmp_path / "repl_history"
    out = io.StringIO()
    lines = io.StringIO("status\n\nsearch spider\nitem " + "a" * 26 + "\nexit\nstatus\n")
    code = await repl.run(client_for(node), history, out=out, lines=lines)
    assert code == 1  # the worst line: a failure
    text = out.getvalue()
    assert text.count("node ID") == 1  # nothing after `exit` ran
    assert "Spider-Man Homecoming" in text and "`help` lists commands" not in text and ">" not in text
    assert not history.exists()  # a script's lines are not the user's history

    ok = await repl.run(client_for(node), history, out=io.StringIO(), lines=io.StringIO("status\n"))
    assert ok == 0
