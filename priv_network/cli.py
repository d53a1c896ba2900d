"""The ``priv-network`` command line.

``init`` and ``serve`` (and ``db``) act on the data folder; every other
command talks to the running node's admin API with the admin credential from
the data folder, never to the database directly. Each command is one
function over (client, args), so the REPL can reuse the same definitions.

The commands themselves live in ``priv_network.commands`` (shared with the
REPL); this module is the entry point and the local commands.

Exit codes: 0 success, 1 a failure the message explains, 2 bad usage.
Errors are one line on stderr; a traceback goes to the log only for bugs.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import importlib
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from priv_network import observability
from priv_network.client import AdminClient
from priv_network.commands import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    Command,
    UsageError,
    admin_client,
    build_parser,
    data_dir,
    local_url,
    usage_hint,
)
from priv_network.config import CONFIG_FILE, check_public_url, load_config, parse_listen, render_config
from priv_network.errors import ConfigError, DataFolderLocked, NodeUnreachable, PrivNetworkError
from priv_network.identity import NodeIdentity

log = logging.getLogger("priv_network.cli")


def _server() -> ModuleType:
    """The composition root, imported only by the commands that need it.

    It pulls in FFmpeg (PyAV), yt-dlp and plexapi: importing it at the top
    would make every client command (status, search, ...) take seconds. The
    same goes for the database layer (SQLAlchemy, alembic) and the REPL
    (prompt_toolkit): client commands load only the HTTP client.
    """
    return importlib.import_module("priv_network.server")


def _db() -> ModuleType:
    return importlib.import_module("priv_network.db")


def cmd_init(args: argparse.Namespace) -> int:
    target = data_dir(args)
    name = args.name.strip()
    if not name or len(name) > 64:
        raise UsageError("priv-network init: --name must be 1-64 characters")
    listen = args.listen or "127.0.0.1:8700"
    for option, check, value in (("--listen", parse_listen, listen), ("--url", check_public_url, args.url)):
        try:
            if value:
                check(value)
        except ConfigError as exc:
            raise UsageError(f"priv-network init: {option}: {exc.message}") from None
    try:
        exists = target.exists()
        if exists and not target.is_dir():
            raise ConfigError(f"{target} is a file, not a folder; nothing was changed (choose another --data folder)")
        if exists and any(target.iterdir()):
            what = "a node" if (target / CONFIG_FILE).exists() else "files"
            raise ConfigError(f"{target} already holds {what}; nothing was changed (choose another --data folder)")
    except OSError as exc:
        raise ConfigError(f"cannot use {target} as the data folder: {exc.strerror or exc}") from None
    overrides: dict[str, dict[str, Any]] = {"node": {"name": name, "listen": listen, "url": args.url or ""}}
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create the data folder {target}: {exc.strerror or exc}") from None
    created_dir = not exists
    try:
        os.chmod(target, 0o700)
        _write_private(target / CONFIG_FILE, render_config(overrides).encode())
        config = load_config(target)
        identity = NodeIdentity.generate()
        identity.save(config.key_path)
        token = asyncio.run(_server().initialize(config, identity))
        _write_private(config.admin_token_path, (token + "\n").encode())
    except BaseException:
        # Leave nothing half-made behind.
        if created_dir:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in target.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    print(identity.node_id)
    sys.stderr.write(f"initialised node {name!r} in {target}\nstart it with: {_invocation(target)} serve\n")
    return EXIT_OK


def _invocation(data: Path) -> str:
    """How to run this very command again on ``data``, as the user can type it.

    ``priv-network`` when that is what PATH finds; else the program as it was started
    (``.venv/bin/priv-network``, as the README has it), or ``python -m priv_network``.
    """
    program = sys.argv[0] if sys.argv and sys.argv[0] else "priv-network"
    if Path(program).name == "__main__.py":
        command = f"{shlex.quote(sys.executable)} -m priv_network"
    else:
        on_path = shutil.which("priv-network")
        same = on_path is not None and Path(on_path).resolve() == Path(program).resolve()
        command = "priv-network" if same else shlex.quote(program)
    return f"{command} --data {shlex.quote(str(data))}"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class DataLock:
    """An exclusive lock on the data folder, so that one node runs per folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DataFolderLocked(
                f"another node is already running on {self.path.parent} (the folder is locked)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def setup_logging(level: str) -> None:
    observability.setup_logging(level)


def cmd_serve(args: argparse.Namespace) -> int:
    server = _server()

    config = load_config(data_dir(args))
    setup_logging(config.log.level)
    identity = NodeIdentity.load(config.key_path)
    lock = DataLock(config.lock_path)
    lock.acquire()
    try:
        app = server.create_app(config, identity, upgrade=args.upgrade)
        url = local_url(config)

        def announce(_msg: str) -> None:
            print(
                f"priv_network node {config.node.name!r} ({identity.node_id}) is running.\n"
                f"Open {url}/ in a browser (the first visit creates the owner account).\n"
                f"The CLI's admin token is in {config.admin_token_path}. Stop the node with Ctrl-C.",
                flush=True,
            )

        host, port = parse_listen(config.node.listen)
        try:
            server.web.run_app(
                app,
                host=host,
                port=port,
                shutdown_timeout=config.http.shutdown_timeout,
                print=announce,
                access_log=None,
                handle_signals=True,
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {config.node.listen}: {exc.strerror or exc}") from None
    finally:
        lock.release()
    logging.getLogger("priv_network").info("node stopped cleanly")
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    config = load_config(data_dir(args))

    db = _db()

    async def run() -> str:
        engine = db.create_engine(config.database_url)
        try:
            if args.db_command == "upgrade":
                await db.upgrade(engine)
            current = await db.current_revision(engine)
        finally:
            await engine.dispose()
        return f"schema at revision {current or 'none'} (latest: {db.head_revision()})"

    if args.db_command == "upgrade":
        lock = DataLock(config.lock_path)
        lock.acquire()
        try:
            print(asyncio.run(run()))
        finally:
            lock.release()
    else:
        print(asyncio.run(run()))
    return EXIT_OK


# -- commands on a running node ----------------------------------------------


async def _run_remote(command: Command, args: argparse.Namespace) -> int:
    async with admin_client(args) as client:
        return await command(client, args, sys.stdout)


def cmd_repl(args: argparse.Namespace) -> int:
    if bool(args.url) != bool(args.token):
        raise UsageError("priv-network repl: --url and --token go together (see --help)")
    client = AdminClient(args.url, args.token) if args.url else admin_client(args)
    history = None if args.url else data_dir(args) / "repl_history"
    lines = None if sys.stdin.isatty() else sys.stdin  # piped: plain line mode, no prompt or echo
    return int(asyncio.run(importlib.import_module("priv_network.repl").run(client, history, lines=lines)))


def cmd_backup(args: argparse.Namespace) -> int:
    """Through the running node if there is one; otherwise directly, holding the folder's lock."""
    target = Path(args.path).expanduser().absolute()

    async def through_node() -> dict[str, Any]:
        async with admin_client(args) as client:
            result: dict[str, Any] = await client.post("/api/v1/backup", {"path": str(target), "store": args.store})
            return result

    try:
        result = asyncio.run(through_node())
    except NodeUnreachable:
        config = load_config(data_dir(args))
        lock = DataLock(config.lock_path)
        lock.acquire()
        try:
            result = _server().backup_offline(config, target, with_store=args.store)
        finally:
            lock.release()
    print(f"wrote {result['path']} ({result['files']} files, {result['bytes']} bytes)")
    for note in result["notes"]:
        sys.stderr.write(f"note: {note}\n")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    result = _server().restore(Path(args.archive), data_dir(args))
    print(result["node_id"])
    start = f"{_invocation(Path(result['path']))} serve"
    sys.stderr.write(f"restored node {result['node_id']} into {result['path']}; start it with: {start}\n")
    for note in result["notes"]:
        sys.stderr.write(f"note: {note}\n")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("WARNING")
    demo = importlib.import_module("priv_network.demo")
    return int(asyncio.run(demo.run(args.dir, args.port_base)))


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check a node's set-up; print what is wrong and how to fix it. Exit 1 if anything fails."""
    results: list[tuple[str, str, str]] = []

    def check(ok: bool | None, what: str, fix: str = "") -> None:
        results.append(("OK" if ok else ("WARN" if ok is None else "FAIL"), what, fix))

    folder = data_dir(args)
    try:
        config = load_config(folder)
    except PrivNetworkError as exc:
        print(f"FAIL  {exc.message}")
        return EXIT_FAIL
    mode = folder.stat().st_mode & 0o777
    check(not mode & 0o077, f"data folder permissions {mode:o}", f"chmod 700 {folder}")
    for secret in (config.key_path, config.admin_token_path):
        if secret.exists():
            smode = secret.stat().st_mode & 0o777
            check(not smode & 0o077, f"{secret.name} permissions {smode:o}", f"chmod 600 {secret}")
        else:
            check(False, f"{secret.name} is missing", "restore it from a backup (`priv-network restore`)")
    try:
        NodeIdentity.load(config.key_path)
        check(True, "node key loads")
    except PrivNetworkError as exc:
        check(False, exc.message)
    store = config.store_path if config.store_path.exists() else folder
    free = shutil.disk_usage(store).free
    check(
        free > config.store.min_free * 2 or None, f"free disk {free // 2**20} MiB", "free some space or move the store"
    )

    async def online_checks() -> None:
        async with admin_client(args) as client:
            try:
                status = await client.get("/api/v1/status")
            except NodeUnreachable as exc:
                check(None, exc.message, "start it with `priv-network serve`")
                return
            check(True, f"node {status['name']} is running at {local_url(config)}")
            schema = status.get("schema") or {}
            if schema:
                check(
                    schema.get("current") == schema.get("latest"),
                    f"schema at {schema.get('current')}",
                    "run `priv-network db upgrade`",
                )
            report = await client.get("/api/v1/doctor")
            for item in report["checks"]:
                check(item["ok"], item["what"], item.get("fix", ""))

    asyncio.run(online_checks())
    for state, what, fix in results:
        print(f"{state:4}  {what}" + (f"  -> {fix}" if fix and state != "OK" else ""))
    return EXIT_FAIL if any(state == "FAIL" for state, _, _ in results) else EXIT_OK


LOCAL: dict[str, Callable[[argparse.Namespace], int]] = {
    "init": cmd_init,
    "serve": cmd_serve,
    "db": cmd_db,
    "repl": cmd_repl,
    "backup": cmd_backup,
    "restore": cmd_restore,
    "demo": cmd_demo,
    "doctor": cmd_doctor,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(words)
    except UsageError as exc:
        hint = usage_hint(words, str(exc))
        sys.stderr.write(f"{exc}; {hint}\n" if hint else f"{exc}\n")
        return EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if hasattr(args, "local"):
            return LOCAL[args.local](args)
        return asyncio.run(_run_remote(args.remote, args))
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    except PrivNetworkError as exc:
        sys.stderr.write(f"priv-network: {exc.message}\n")
        return EXIT_FAIL
    except KeyboardInterrupt:
        sys.stderr.write("priv-network: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_FAIL
    except Exception as exc:  # a bug: one line for the user, the traceback in the log
        logging.getLogger("priv_network").debug("unexpected error", exc_info=True)
        sys.stderr.write(f"priv-network: unexpected error: {type(exc).__name__}: {exc}\n")
        return EXIT_FAIL
