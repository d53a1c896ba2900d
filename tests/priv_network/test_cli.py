"""The real ``priv-network`` command, run as a user runs it: separate processes, real signals."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import alembic.command
import pytest
import sqlalchemy as sa

from priv_network import cli as cli_module
from priv_network import db
from priv_network.identity import NodeIdentity, normalize_node_id
from tests.conftest import Cli, free_port

NODE_ID_RE = re.compile(r"[A-Z2-7]{8}(-[A-Z2-7]{8}){3}")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# Never through a proxy: every request here stays on 127.0.0.1.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def no_traceback(result: subprocess.CompletedProcess[str] | tuple[str, str]) -> None:
    out, err = (result.stdout, result.stderr) if isinstance(result, subprocess.CompletedProcess) else result
    assert "Traceback" not in err and "Traceback" not in out, err


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The failure contract: the exit code, exactly one line on stderr, no traceback."""
    no_traceback(result)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].strip()
    return lines[0]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    no_traceback(result)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def healthy(port: int) -> bool:
    try:
        with _LOCAL.open(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200 and json.loads(resp.read()) == {"status": "ok"}
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def database_url_of(cli: Cli) -> str:
    return cli.env.get("PRIV_NETWORK_DATABASE_URL") or f"sqlite+aiosqlite:///{cli.data / 'node.db'}"


class Servers:
    """``serve`` processes of one test; whatever is still running at the end is killed."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, port: int, *args: str) -> subprocess.Popen[str]:
        proc = self.cli.popen("serve", *args)
        self.procs.append(proc)

        def up() -> bool:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"serve exited with {proc.returncode}:\n{out}\n{err}")
            return healthy(port)

        wait_until(up, START_TIMEOUT, f"the node on port {port} to answer /healthz")
        return proc

    def stop(self, proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[str, str]:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=STOP_TIMEOUT)
        return out, err

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=STOP_TIMEOUT)


@pytest.fixture
def servers(cli: Cli) -> Iterator[Servers]:
    s = Servers(cli)
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def initialized(cli: Cli, port: int) -> str:
    """A fresh node's data folder; returns its node ID."""
    return ok(cli.run("init", "--name", "alice", "--listen", f"127.0.0.1:{port}")).strip()


# -- init ------------------------------------------------------------------------------


def test_init_prints_only_the_node_id_and_creates_private_files(cli: Cli, port: int) -> None:
    result = cli.run("init", "--name", "alice", "--listen", f"127.0.0.1:{port}")
    out = ok(result)
    assert out.endswith("\n") and len(out.splitlines()) == 1
    node_id = out.strip()
    assert NODE_ID_RE.fullmatch(node_id), node_id
    assert normalize_node_id(node_id) == node_id  # check characters are right
    assert NodeIdentity.load(cli.data / "node.key").node_id == node_id

    config = (cli.data / "config.toml").read_text()
    assert 'name = "alice"' in config and f'listen = "127.0.0.1:{port}"' in config
    for private in ("node.key", "admin.token"):
        assert (cli.data / private).stat().st_mode & 0o777 == 0o600, private
    assert (cli.data / "admin.token").read_text().strip().startswith("pn_")
    assert (cli.data / "node.db").exists() == ("PRIV_NETWORK_DATABASE_URL" not in cli.env)
    assert cli.data.stat().st_mode & 0o077 == 0

    before = snapshot(cli.data)
    for args in (("--name", "alice"), ("--name", "bob", "--listen", f"127.0.0.1:{free_port()}")):
        again = cli.run("init", *args)
        line = one_line_error(again, 1)
        assert again.stdout == ""
        assert "already" in line and str(cli.data) in line
        assert snapshot(cli.data) == before


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--listen", "no-port-here"), "--listen: listen address must be HOST:PORT"),
        (("--url", "notaurl"), "--url: public URL must look like http(s)://HOST[:PORT][/PATH], got 'notaurl'"),
        (("--url", "ftp://media.example.org"), "--url: public URL"),
        (("--url", "http://[::1"), "--url: public URL"),
        (("--name", "  "), "--name must be 1-64 characters"),
    ],
    ids=" ".join,
)
def test_init_with_bad_values_is_bad_usage_and_leaves_nothing_behind(
    cli: Cli, args: tuple[str, ...], words: str
) -> None:
    line = one_line_error(cli.run("init", "--name", "alice", *args), 2)
    assert line.startswith("priv-network init: ") and words in line
    assert not cli.data.exists()


def test_init_with_a_public_url_serves_it(cli: Cli, port: int) -> None:
    ok(cli.run("init", "--name", "alice", "--listen", f"127.0.0.1:{port}", "--url", "https://media.example.org/pn"))
    assert 'url = "https://media.example.org/pn"' in (cli.data / "config.toml").read_text()


def test_a_config_file_with_a_bad_public_url_is_one_line(cli: Cli, initialized: str) -> None:
    config = cli.data / "config.toml"
    config.write_text(config.read_text().replace('url = ""', 'url = "notaurl"', 1))
    for args in (("status",), ("serve",)):
        line = one_line_error(cli.run(*args), 1)
        assert "[node] url" in line and "notaurl" in line


@pytest.mark.parametrize(
    ("where", "why"),
    [("/proc/nope", "No such file or directory"), ("FILE/sub", "Not a directory")],
)
def test_init_where_no_folder_can_be_made_says_so(cli: Cli, tmp_path: Path, where: str, why: str) -> None:
    (tmp_path / "a-file").write_text("")
    data = where.replace("FILE", str(tmp_path / "a-file"))
    result = cli.run("--data", data, "init", "--name", "alice")  # the last --data wins
    line = one_line_error(result, 1)
    assert line == f"priv-network: cannot create the data folder {data}: {why}"


def test_init_on_a_file_says_it_is_a_file(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("keep me\n")
    line = one_line_error(cli.run("--data", str(target), "init", "--name", "alice"), 1)
    assert line == f"priv-network: {target} is a file, not a folder; nothing was changed (choose another --data folder)"
    assert target.read_text() == "keep me\n"


def test_init_says_how_to_start_the_node_with_the_command_that_ran(cli: Cli, port: int) -> None:
    result = cli.run("init", "--name", "alice", "--listen", f"127.0.0.1:{port}")
    ok(result)
    # The tests run `python -m priv_network`: that is what works here, not a bare `priv-network`.
    expected = f"start it with: {shlex.quote(sys.executable)} -m priv_network --data {shlex.quote(str(cli.data))} serve"
    assert result.stderr.splitlines()[-1] == expected


def test_invocation_is_what_the_user_can_type(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "venv" / "bin" / "priv-network"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    data = Path("/srv/my media/pn")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "argv", [".venv/bin/priv-network", "init"])
    assert cli_module._invocation(data) == ".venv/bin/priv-network --data '/srv/my media/pn'"
    monkeypatch.setenv("PATH", str(script.parent))
    monkeypatch.setattr(sys, "argv", [str(script), "init"])
    assert cli_module._invocation(data) == "priv-network --data '/srv/my media/pn'"


@pytest.mark.parametrize(
    "args",
    [
        ("frobnicate",),
        ("init",),
        ("init", "--name"),
        ("add",),
        ("search",),
        ("remove",),
        ("status", "--no-such-option"),
        ("db",),
        ("db", "sideways"),
        ("search", "x", "--limit", "many"),
        ("search", "x", "--limit", "0"),
        ("search", "x", "--limit", "-1"),
        ("search", "x", "--limit", "201"),
        ("search", "-bunny"),
        ("status", "--data", "/tmp"),
        ("init", "--name", "alice", "--url", "notaurl"),
        ("share", "X", "--ttl", "abc"),
        ("share", "X", "--ttl=-5m"),
        ("share", "X", "--ttl", "2s"),
        ("share", "X", "--downloads", "0"),
        ("share", "X", "--downloads", "99999999999999999999"),
        ("invite", "--ttl", "abc"),
        ("invite", "--uses", "0"),
        ("demo", "--port-base", "70000"),
    ],
    ids=" ".join,
)
def test_bad_usage_exits_2_with_one_line(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli.run(*args)
    line = one_line_error(result, 2)
    assert result.stdout == ""
    assert "priv-network" in line
    assert not cli.data.exists()  # not even `init` touched the folder


@pytest.mark.parametrize(
    "args", [("status",), ("serve",), ("db", "current"), ("search", "x"), ("add", ".")], ids=" ".join
)
def test_a_folder_without_a_node_exits_1_with_one_line(cli: Cli, args: tuple[str, ...]) -> None:
    cli.data.mkdir()
    line = one_line_error(cli.run(*args), 1)
    assert "init" in line and str(cli.data) in line


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "--json"), ("search", "spider"), ("add", "."), ("remove", "a" * 26), ("sync",)],
    ids=" ".join,
)
def test_node_commands_need_a_running_node(cli: Cli, initialized: str, args: tuple[str, ...]) -> None:
    result = cli.run(*args)
    line = one_line_error(result, 1)
    assert result.stdout == ""
    assert re.search(r"not running|no node is running", line), line
    assert "serve" in line


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (("status", "--data", "/tmp/x"), "global options go before the command: priv-network --data DIR status ..."),
        (("search", "x", "--data=/tmp/x"), "global options go before the command: priv-network --data DIR search ..."),
        (("search", "-bunny"), "to pass a value that starts with '-', put -- before it: priv-network search -- -bunny"),
        (("search", "x", "--limit", "0"), "--limit: must be from 1 to 200, not 0"),
        (("db",), "the following arguments are required: ACTION"),
        (
            ("share", "X", "--ttl", "abc"),
            "priv-network share: argument --ttl: not a duration: 'abc' (use e.g. 30m, 24h, 7d)",
        ),
        (("share", "X", "--downloads", "-1"), "priv-network share: argument --downloads: must be at least 1, not -1"),
        (("invite", "--uses", "5000"), "priv-network invite: argument --uses: must be at most 1000, not 5000"),
        (("add", "x", "--title", "-Intro-"), "join it to the option: --title=-Intro-"),
    ],
    ids=" ".join,
)
def test_common_usage_slips_get_a_hint(cli: Cli, args: tuple[str, ...], hint: str) -> None:
    line = one_line_error(cli.run(*args), 2)
    assert hint in line, line


def test_a_value_after_double_dash_is_not_an_option(cli: Cli, initialized: str) -> None:
    line = one_line_error(cli.run("search", "--", "-bunny"), 1)  # parsed fine; only the node is missing
    assert "no node is running" in line


def test_db_help_names_the_action_not_the_variable(cli: Cli) -> None:
    shown = ok(cli.run("db", "--help"))
    assert "ACTION" in shown and "upgrade" in shown and "db_command" not in shown


# -- serve, and the commands that talk to it ---------------------------------------


def test_a_running_node_serves_the_commands(
    cli: Cli, initialized: str, port: int, servers: Servers, media_dir: Path
) -> None:
    node_id = initialized
    server = servers.start(port)

    table = ok(cli.run("status"))
    assert node_id in table and "alice" in table and f"http://127.0.0.1:{port}" in table
    status = json.loads(ok(cli.run("status", "--json")))
    assert (status["node_id"], status["name"], status["items"]) == (node_id, "alice", 0)
    assert status["url"] == f"http://127.0.0.1:{port}"

    added = json.loads(ok(cli.run("add", str(media_dir), "--json")))
    assert isinstance(added, list) and len(added) == 4
    for entry in added:
        assert {"id", "title", "node"} <= set(entry)
        assert entry["node"] == node_id
    by_title = {e["title"]: e for e in added}
    spider = by_title["Spider-Man Homecoming"]
    assert json.loads(ok(cli.run("status", "--json")))["items"] == 4
    empty = media_dir / "empty"
    empty.mkdir()
    (empty / "Thumbs.db").write_bytes(b"x")
    nothing = cli.run("add", str(empty))
    assert nothing.returncode == 0 and "0 added" in nothing.stdout
    assert "no files found" in nothing.stderr and len(nothing.stderr.splitlines()) == 1

    hits = json.loads(ok(cli.run("search", "spider man", "--json")))
    assert [h["title"] for h in hits] == ["Spider-Man Homecoming"]
    assert (hits[0]["id"], hits[0]["node"]) == (spider["id"], node_id)
    text = ok(cli.run("search", "amel"))
    assert "Amélie - La Valse" in text and by_title["Amélie - La Valse"]["id"] in text
    assert "Spider-Man" not in text

    assert spider["id"] in ok(cli.run("remove", spider["id"]))
    assert json.loads(ok(cli.run("search", "spider man", "--json"))) == []
    assert "no results" in ok(cli.run("search", "spider man"))
    line = one_line_error(cli.run("remove", spider["id"]), 1)
    assert spider["id"] in line

    # A second node on the same folder is refused while the first runs.
    second = cli.run("serve", timeout=STOP_TIMEOUT)
    assert "locked" in one_line_error(second, 1)
    assert healthy(port)

    out, err = servers.stop(server, signal.SIGTERM)
    no_traceback((out, err))
    assert server.returncode == 0, err
    assert node_id in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_serve_stops_cleanly_on_a_signal(
    cli: Cli, initialized: str, port: int, servers: Servers, sig: signal.Signals
) -> None:
    server = servers.start(port)
    out, err = servers.stop(server, sig)
    no_traceback((out, err))
    assert server.returncode == 0, err
    assert "stopped" in err.splitlines()[-1], err
    assert not healthy(port)
    # The folder lock is released: another process can take it at once.
    fd = os.open(cli.data / "node.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    # And the node starts again on the same folder.
    servers.start(port)
    assert ok(cli.run("status", "--json"))


# -- schema out of date ---------------------------------------------------------------


async def downgrade_to_base(url: str) -> None:
    engine = db.create_engine(url)
    try:

        def downgrade(conn: sa.Connection) -> None:
            cfg = db.alembic_config()
            cfg.attributes["connection"] = conn
            alembic.command.downgrade(cfg, "base")

        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
        assert await db.current_revision(engine) is None
    finally:
        await engine.dispose()


async def test_serve_refuses_an_old_schema_until_db_upgrade(
    cli: Cli, initialized: str, port: int, servers: Servers
) -> None:
    await downgrade_to_base(database_url_of(cli))

    refused = cli.run("serve", timeout=START_TIMEOUT)
    no_traceback(refused)
    assert refused.returncode == 1, refused.stderr
    last = refused.stderr.splitlines()[-1]
    assert "priv-network db upgrade" in last, refused.stderr
    assert not healthy(port)
    current = ok(cli.run("db", "current"))
    assert "revision none" in current

    upgraded = ok(cli.run("db", "upgrade"))
    head = db.head_revision()
    assert f"revision {head} (latest: {head})" in upgraded
    servers.start(port)


class SilentServer:
    """A TCP server that accepts connections and never answers (a stalled media site)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.conns.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_serve_exits_promptly_while_a_download_is_stuck(
    cli: Cli, initialized: str, port: int, servers: Servers
) -> None:
    """yt-dlp waits on a server that never answers: the stopped node must not wait for it."""
    config = cli.data / "config.toml"
    text = config.read_text()
    # A long socket timeout: a node that waits for yt-dlp would outlive STOP_TIMEOUT.
    text = text.replace("allow_private = false", "allow_private = true").replace(
        "socket_timeout = 30.0", 'socket_timeout = "300s"'
    )
    config.write_text(text)
    silent = SilentServer()
    try:
        server = servers.start(port)
        url = f"http://127.0.0.1:{silent.port}/slow.mp4"
        assert url in ok(cli.run("download", url))
        assert silent.accepted.wait(timeout=START_TIMEOUT), "yt-dlp never connected"
        started = time.monotonic()
        out, err = servers.stop(server, signal.SIGTERM)
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    no_traceback((out, err))
    assert server.returncode == 0, err
    assert elapsed < 10.0, f"the node took {elapsed:.1f}s to exit (shutdown_timeout is 10s)"
    assert "left 1 running download(s) to be taken up at the next start" in err
    assert err.splitlines()[-1].endswith("node stopped cleanly"), err


def test_repl_with_piped_input_runs_lines_plainly(cli: Cli, initialized: str, port: int, servers: Servers) -> None:
    servers.start(port)
    result = cli.run("repl", input="status\nbogus\nsearch -bunny\nserve\nsearch nothing-like-this\n")
    no_traceback(result)
    assert result.returncode == 2, result  # the worst line was bad usage
    assert "Warning" not in result.stderr and "alice>" not in result.stdout
    assert initialized in result.stdout and "no results" in result.stdout
    errors = result.stderr.splitlines()
    assert len(errors) == 3, errors
    assert all(line.startswith("error: ") and "priv-network" not in line for line in errors), errors
    assert errors[0].startswith("error: no command 'bogus'") and "status" in errors[0]
    assert not any(name in errors[0] for name in ("init", "serve", "backup", "doctor", "demo"))
    assert "put -- before it: search -- -bunny" in errors[1]
    assert "only from the shell" in errors[2]

    assert cli.run("repl", input="status\n").returncode == 0


# -- API tokens -------------------------------------------------------------------------


def api_status(port: int, path: str, token: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with _LOCAL.open(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_tokens_act_as_their_user_and_can_be_listed_and_revoked(
    cli: Cli, initialized: str, port: int, servers: Servers
) -> None:
    servers.start(port)
    before = ok(cli.run("token", "list", "--json"))

    unknown = cli.run("token", "create", "--user", "nobody")
    line = one_line_error(unknown, 1)
    assert unknown.stdout == "" and "no user named 'nobody'" in line
    assert ok(cli.run("token", "list", "--json")) == before  # nothing recorded

    ok(cli.run("user", "add", "bob", "--password-stdin", input="bobs password\n"))
    created = cli.run("token", "create", "--user", "bob")
    token = ok(created).strip()
    assert token.startswith("pn_") and "\n" not in token
    assert len(created.stderr.splitlines()) == 1 and "acts as user bob" in created.stderr
    assert api_status(port, "/api/v1/status", token) == 200
    assert api_status(port, "/api/v1/tokens", token) == 403  # bob is no owner

    listed = json.loads(ok(cli.run("token", "list", "--json")))
    (bob,) = [t for t in listed if t["user"] == "bob"]
    (own,) = [t for t in listed if t["current"]]
    assert (bob["kind"], bob["admin"], own["kind"]) == ("api", False, "admin")
    table = ok(cli.run("token", "list"))
    assert bob["id"] in table and "(this client)" in table and token not in table

    assert f"revoked token {bob['id']}" in ok(cli.run("token", "revoke", bob["id"]))
    assert api_status(port, "/api/v1/status", token) == 401
    assert "no token" in one_line_error(cli.run("token", "revoke", bob["id"]), 1)
    assert "ID" in one_line_error(cli.run("token", "revoke", token), 2)
    # The CLI's own token, the only owner token: kept, and the CLI goes on working.
    assert "last owner" in one_line_error(cli.run("token", "revoke", own["id"]), 1)
    assert initialized in ok(cli.run("status"))
