"""``priv-network repl``: an interactive shell on a running node, through its admin API.

Every CLI command is a REPL command with the same arguments and output: the
line is split like a shell would and parsed by the same parser, and the same
command function runs (``priv_network.commands``). prompt_toolkit does the
line editing, history (kept in the data folder) and completion of command
names, item IDs and peer IDs. An error prints one line and the REPL goes on.

When standard input is not a terminal (``printf 'status\n' | priv-network
repl``), there is no prompt, echo or completion: each line is run as it is read
and the exit code is the worst of the lines' (0, 1 for a failure, 2 for bad
usage), so the REPL works as a script runner.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

from priv_network.client import AdminClient
from priv_network.commands import UsageError, build_parser, usage_hint
from priv_network.errors import PrivNetworkError

LOCAL_ONLY = {"init", "serve", "db", "repl", "backup", "restore", "demo", "doctor"}
ID_COMMANDS = {"remove", "item", "visibility", "pin", "unpin", "share", "comments", "comment"}
PEER_COMMANDS = {"peers"}


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    for action in parser._actions:  # argparse keeps sub-parsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise AssertionError("the CLI parser has no sub-commands")


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {k: v for k, v in _subparsers(parser).choices.items() if k not in LOCAL_ONLY}


def _summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {a.dest: a.help or "" for a in _subparsers(parser)._choices_actions if a.dest not in LOCAL_ONLY}


class NodeCompleter(Completer):
    """Completes command names, then item IDs or peer IDs from the node (refreshed after each command)."""

    def __init__(self, commands: Iterable[str]) -> None:
        self.commands = sorted([*commands, "help", "exit"])
        self.item_ids: list[tuple[str, str]] = []
        self.peer_ids: list[tuple[str, str]] = []

    async def refresh(self, client: AdminClient) -> None:
        try:
            hits = (await client.get("/api/v1/search", q="", limit="200"))["results"]
            self.item_ids = [(h["id"], h["title"]) for h in hits]
            peers = (await client.get("/api/v1/peers"))["peers"]
            self.peer_ids = [(p["node_id"], p["name"]) for p in peers]
        except PrivNetworkError:
            pass

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        words = text.split()
        if not words or (len(words) == 1 and not text.endswith(" ")):
            word = words[0] if words else ""
            for name in self.commands:
                if name.startswith(word):
                    yield Completion(name, start_position=-len(word))
            return
        word = "" if text.endswith(" ") else words[-1]
        if words[0] == "help":
            pool = [(c, "") for c in self.commands]
        elif words[0] in ID_COMMANDS:
            pool = self.item_ids
        elif words[0] in PEER_COMMANDS:
            pool = [("remove", ""), *self.peer_ids]
        else:
            return
        for value, label in pool:
            if value.startswith(word):
                yield Completion(value, start_position=-len(word), display_meta=label[:40])


def _usage(message: str, words: list[str]) -> str:
    """A CLI usage message as the REPL says it: no program name, `help COMMAND` rather than --help."""
    for prefix in ("priv-network: ", "priv-network "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
            break
    message = message.replace("(see --help)", f"(see `help {words[0]}`)")
    hint = usage_hint(words, message, prog="", cli=False)
    return f"{message}; {hint}" if hint else message


async def execute(client: AdminClient, line: str, out: IO[str], err: IO[str]) -> int | None:
    """Run one REPL line; returns the exit code, or None to leave the REPL."""
    parser = build_parser()
    commands = _commands(parser)
    try:
        words = shlex.split(line, comments=True)  # `# ...` is a comment, as in a shell script
    except ValueError:
        err.write("error: a quote is not closed in this line\n")
        return 2
    if not words:
        return 0
    if words[0] in ("exit", "quit"):
        return None
    if words[0] == "help":
        if len(words) == 1:
            out.write("commands (each as in the CLI; `help COMMAND` for one):\n")
            for name, summary in _summaries(parser).items():
                out.write(f"  {name:13} {summary}\n")
            return 0
        chosen = commands.get(words[1])
        if chosen is None:
            err.write(f"error: no command {words[1]!r}\n")
            return 2
        out.write(chosen.format_help())
        return 0
    if words[0] in LOCAL_ONLY:
        err.write(f"error: `{words[0]}` works only from the shell, not inside the REPL\n")
        return 2
    if words[0] not in commands:
        err.write(f"error: no command {words[0]!r}; `help` lists them ({', '.join(commands)}, exit)\n")
        return 2
    try:
        args = parser.parse_args(words)
    except UsageError as exc:
        err.write(f"error: {_usage(str(exc), words)}\n")
        return 2
    except SystemExit:  # --help inside a command printed its help
        return 0
    try:
        return int(await args.remote(client, args, out))
    except UsageError as exc:
        err.write(f"error: {_usage(str(exc), words)}\n")
        return 2
    except PrivNetworkError as exc:
        err.write(f"error: {exc.message}\n")
        return 1


async def run_lines(client: AdminClient, lines: IO[str], out: IO[str], err: IO[str]) -> int:
    """Plain line mode, for standard input that is not a terminal: read, run, print; no prompt.

    The client is open. Returns the worst exit code of the lines (0 if every one succeeded).
    """
    worst = 0
    while True:
        line = await asyncio.to_thread(lines.readline)
        if not line:
            break
        code = await execute(client, line, out, err)
        out.flush()
        if code is None:
            break
        worst = max(worst, code)
    return worst


async def run(
    client: AdminClient,
    history_file: Path | None,
    *,
    input: Input | None = None,
    output: Output | None = None,
    out: IO[str] | None = None,
    lines: IO[str] | None = None,
) -> int:
    """The REPL; with ``lines`` (standard input that is not a terminal), plain line mode (``run_lines``)."""
    out = out or sys.stdout
    async with client:
        try:
            status = await client.get("/api/v1/status")
        except PrivNetworkError as exc:
            sys.stderr.write(f"priv-network: {exc.message}\n")
            return 1
        if lines is not None:
            return await run_lines(client, lines, out, sys.stderr)
        completer = NodeCompleter(_commands(build_parser()))
        history: Any = FileHistory(str(history_file)) if history_file is not None else InMemoryHistory()
        session: PromptSession[str] = PromptSession(
            history=history, completer=completer, input=input, output=output, complete_while_typing=False
        )
        out.write(f"priv_network {status['name']} ({status['node_id']}). `help` lists commands, Ctrl-D leaves.\n")
        await completer.refresh(client)
        while True:
            try:
                line = await session.prompt_async(f"{status['name']}> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            code = await execute(client, line, out, sys.stderr)
            if code is None:
                break
            out.flush()
            await completer.refresh(client)
    return 0
