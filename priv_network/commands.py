"""Every command of the ``priv-network`` CLI, defined once for the CLI and the REPL.

A command on a running node is one function over (client, args, out); it
talks to the node's admin API only. ``build_parser`` declares them all; the
CLI (``priv_network.cli``) and the REPL (``priv_network.repl``) both parse
with it and run the same functions, so their arguments and output agree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn
from urllib.parse import quote

from priv_network import __version__
from priv_network.client import AdminClient
from priv_network.config import DATA_ENV, Config, load_config, parse_duration, parse_listen
from priv_network.errors import ConfigError, NotFound, PrivNetworkError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
SEARCH_MAX = 200  # the node's own limit on one search


Command = Callable[[AdminClient, argparse.Namespace, IO[str]], Awaitable[int]]


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (and never exits by itself)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise SystemExit(status)


_GLOBAL_WITH_VALUE = ("--data",)
_NUMBER = re.compile(r"^-\d+(\.\d*)?$")


def usage_hint(words: Sequence[str], error: str, *, prog: str = "priv-network", cli: bool = True) -> str:
    """A hint for two slips that argparse reports obscurely ("" if neither applies).

    ``error`` is argparse's message for ``words``. The slips: a global option after the
    command (``status --data DIR``), and a value that starts with "-" (``search -bunny``),
    which argparse takes for an unknown option and then misses the value.
    """
    i = 0
    while cli and i < len(words) and words[i].startswith("-"):  # the global options
        i += 2 if words[i] in _GLOBAL_WITH_VALUE else 1
    if i >= len(words):
        return ""
    command, rest = words[i], list(words[i + 1 :])
    if "--" in rest:
        rest = rest[: rest.index("--")]
    if cli and any(w in _GLOBAL_WITH_VALUE or w.startswith(tuple(g + "=" for g in _GLOBAL_WITH_VALUE)) for w in rest):
        return f"global options go before the command: {prog} --data DIR {command} ..."
    dashed = [w for w in rest if w.startswith("-") and not w.startswith("--") and w not in ("-", "-h")]
    dashed = [w for w in dashed if not _NUMBER.match(w)]
    if dashed and "arguments are required" in error:
        example = " ".join(w for w in (prog, command, "--", shlex.quote(dashed[0])) if w)
        return f"to pass a value that starts with '-', put -- before it: {example}"
    option = re.search(r"argument (--[\w-]+): expected one argument", error)
    if option and option.group(1) in rest:
        after = rest[rest.index(option.group(1)) + 1 : rest.index(option.group(1)) + 2]
        if after and after[0].startswith("-") and after[0] != "--":
            joined = shlex.quote(f"{option.group(1)}={after[0]}")
            return f"to pass a value that starts with '-', join it to the option: {joined}"
    return ""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "priv-network"


def data_dir(args: argparse.Namespace) -> Path:
    raw = args.data or os.environ.get(DATA_ENV)
    return Path(raw).expanduser().absolute() if raw else default_data_dir()


def local_url(config: Config) -> str:
    host, port = parse_listen(config.node.listen)
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _human_size(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _absolute(path: str) -> str:
    """Paths are resolved here: the node may run in another working directory."""
    return os.path.abspath(os.path.expanduser(path))


def _table(rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    if not rows:
        return
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


# -- local commands -----------------------------------------------------------


async def cmd_status(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    status = await client.get("/api/v1/status")
    if args.json:
        out.write(json.dumps(status, indent=2) + "\n")
        return EXIT_OK
    _table(
        [
            ["node ID", status["node_id"]],
            ["name", status["name"]],
            ["URL", status["url"]],
            ["version", status["version"]],
            ["items", str(status["items"])],
            ["pinned copies", await _pinned(client)],
            ["store size", _human_size(status["store_bytes"])],
            ["free disk", _human_size(status["free_bytes"])],
        ],
        out,
    )
    traffic = status.get("traffic") or {}
    if traffic:
        names = await _member_names(client) if any(k.startswith("peer:") for k in traffic) else {}
        labelled = sorted(((_traffic_label(k, names), v) for k, v in traffic.items()), key=_peers_first)
        out.write("\n")
        rows = [["TRAFFIC", "SENT", "RECEIVED"]]
        rows += [[label, _human_size(v["sent"]), _human_size(v["received"])] for label, v in labelled]
        _table(rows, out)
    return EXIT_OK


async def _pinned(client: AdminClient) -> str:
    """Pinned copies of peers' items (in the store size, not in items): "4 (312.0 MiB)"."""
    pins = (await client.get("/api/v1/pins"))["pins"]
    complete = [p for p in pins if p.get("state") == "complete"]
    text = f"{len(complete)} ({_human_size(sum(int(p.get('size') or 0) for p in complete))})"
    if len(pins) > len(complete):
        text += f", {len(pins) - len(complete)} not complete (`pins` shows them)"
    return text


async def _member_names(client: AdminClient) -> dict[str, str]:
    """Node ID -> name of every member this node knows, former ones too; {} if the list cannot be had."""
    try:
        members = (await client.get("/api/v1/network/members"))["members"]
        return {str(m["node_id"]): str(m["name"]) for m in members}
    except (PrivNetworkError, KeyError, TypeError):
        return {}


def _peers_first(row: tuple[str, Any]) -> tuple[bool, str]:
    return row[0].startswith("share:"), row[0].casefold()


def _traffic_label(subject: str, names: dict[str, str]) -> str:
    """A traffic subject as `status` shows it: "peer:ID" as "NAME (ID8…)"; "share:ID" as it is."""
    kind, _, key = subject.partition(":")
    if kind == "peer" and key in names:
        return f"{names[key]} ({key[:8]}\u2026)"
    return subject


async def cmd_add(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    body: dict[str, Any] = {"paths": args.paths}
    if args.visibility is not None:  # else new items are private and stored ones keep theirs
        body["visibility"] = args.visibility
    if args.title is not None:
        body["title"] = args.title
    report = await client.post("/api/v1/items", body)
    was = {c["id"]: c["was"] for c in report.get("visibility_changed", [])}
    entries = [{**i, "status": "added"} for i in report["added"]] + [
        {**i, "status": "existing"} for i in report["existing"]
    ]
    if args.json:
        out.write(json.dumps(entries, indent=2) + "\n")
    else:
        for entry in entries:
            note = ""
            if entry["status"] == "existing" and entry["id"] in was:
                note = f"  (visibility {was[entry['id']]} -> {entry['visibility']})"
            elif entry["status"] == "existing" and args.visibility is None:
                note = f"  (kept visibility {entry['visibility']})"
            out.write(f"{entry['status']:8}  {entry['id']}  {entry['kind']:5}  {entry['title']}{note}\n")
        out.write(
            f"{len(report['added'])} added, {len(report['existing'])} already stored"
            f" ({report['skipped_unchanged']} unchanged, not re-read), {len(report['failed'])} failed\n"
        )
        if was:
            out.write(f"{len(was)} already stored item{'s' if len(was) != 1 else ''} changed visibility\n")
    for warning in report["warnings"]:
        sys.stderr.write(f"warning: {warning['path']}: {warning['warning']}\n")
    for failure in report["failed"]:
        sys.stderr.write(f"failed: {failure['path']}: {failure['error']}\n")
    if not (report["added"] or report["existing"] or report["failed"]):
        sys.stderr.write(
            "note: no files found to add (hidden files, system files such as Thumbs.db"
            " and unfinished downloads are passed over)\n"
        )
    return EXIT_FAIL if report["failed"] else EXIT_OK


async def cmd_remove(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    unknown: list[str] = []
    others: list[str] = []
    for item_id in dict.fromkeys(args.ids):
        try:
            await client.delete(f"/api/v1/items/{quote(item_id, safe='')}")
        except NotFound:
            why = await _owned_elsewhere(client, item_id)
            if why is None:
                unknown.append(_shown_id(item_id))
            else:
                others.append(why)
            continue
        out.write(f"removed {item_id}\n")
    reasons = []
    if unknown:
        reasons.append(f"no item{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} on this node")
    if unknown or others:
        raise NotFound("; ".join(reasons + others))
    return EXIT_OK


def _shown_id(value: str) -> str:
    """An ID the user typed, as error messages show it: quoted, and cut if it is long."""
    return repr(value if len(value) <= 64 else value[:64] + "...")


async def _owned_elsewhere(client: AdminClient, item_id: str) -> str | None:
    """Why this node cannot remove ``item_id`` when the registry knows it as another node's item."""
    try:
        item = await client.get(f"/api/v1/items/{quote(item_id, safe='')}")
        owner = str(item["node"])
        names = await _node_names(client)
        pinned = any(p["id"] == item_id for p in (await client.get("/api/v1/pins"))["pins"])
    except (PrivNetworkError, KeyError, TypeError):
        return None
    if owner == names.get("", ""):  # ours after all (removed meanwhile)
        return None
    who = names.get(owner, owner)
    if pinned:
        return f"item {_shown_id(item_id)} belongs to {who}; use `unpin {item_id}` to drop this node's copy"
    return f"item {_shown_id(item_id)} belongs to {who}; only its owner can remove it"


async def _node_names(client: AdminClient) -> dict[str, str]:
    """Node ID -> name for this node (also under the key "") and every member; a shared name gets its ID."""
    status = await client.get("/api/v1/status")
    peers = (await client.get("/api/v1/peers"))["peers"]
    pairs = [(str(status["node_id"]), str(status["name"]))] + [(str(p["node_id"]), str(p["name"])) for p in peers]
    counts: dict[str, int] = {}
    for _, name in pairs:
        counts[name] = counts.get(name, 0) + 1
    names = {node_id: name if counts[name] == 1 else f"{name} ({node_id})" for node_id, name in pairs}
    names[""] = str(status["node_id"])
    return names


async def cmd_search(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    params = {"q": args.query, "limit": str(args.limit), "kind": args.kind, "node": args.node}
    result = await client.get("/api/v1/search", **{k: v for k, v in params.items() if v is not None})
    hits = result["results"]
    if args.json:
        out.write(json.dumps(hits, indent=2) + "\n")
        return EXIT_OK
    if not hits:
        out.write("no results\n")
        return EXIT_OK
    rows = [["ID", "KIND", "DURATION", "OWNER", "COPIES", "TITLE"]]
    for hit in hits:
        owner = hit["node_name"] + ("" if hit["online"] else " (offline)")
        duration = f"{hit['duration']:.0f}s" if hit.get("duration") else ""
        rows.append([hit["id"], hit["kind"], duration, owner, _copies(hit.get("holders") or []), hit["title"]])
    _table(rows, out)
    return EXIT_OK


COPIES_WIDTH = 24  # the COPIES column of `search`: names past this are counted (+N), not shown
_NAME_WIDTH = 16


def _copies(holders: Sequence[dict[str, Any]], width: int = COPIES_WIDTH) -> str:
    """The members holding a complete copy, as ``search`` shows them: "carol, dave (offline) +2".

    Online holders first (they can serve it now); names are cut to keep the column narrow.
    """
    names = []
    for h in sorted(holders, key=lambda h: not h.get("online")):
        name = str(h.get("name") or h.get("node", "?"))
        if len(name) > _NAME_WIDTH:
            name = name[: _NAME_WIDTH - 1] + "\u2026"
        names.append(name + ("" if h.get("online") else " (offline)"))
    shown: list[str] = []
    for i, name in enumerate(names):
        more = len(names) - i - 1
        line = ", ".join([*shown, name]) + (f" +{more}" if more else "")
        if shown and len(line) > width:
            break
        shown.append(name)
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" +{more}" if more else "")


async def _item_hit(client: AdminClient, item: dict[str, Any]) -> dict[str, Any] | None:
    """The registry's search entry of ``item`` (owner's name and state, members holding a copy), or None.

    ``GET /api/v1/items/{id}`` answers the item as its owner publishes it; who else holds
    it is the registry's, which search answers. So: search the item's title among its
    owner's items and pick it out by ID. That finds it unless the title has no searchable
    word or more than SEARCH_MAX of the owner's items match it; then the caller does without.
    """
    if "holders" in item and "node_name" in item:  # the item API answered them itself
        return item
    title, owner = str(item.get("title") or ""), str(item.get("node") or "")
    if not title.strip() or not owner:
        return None
    try:
        hits = (await client.get("/api/v1/search", q=title, node=owner, limit=str(SEARCH_MAX)))["results"]
    except (PrivNetworkError, KeyError, TypeError):
        return None
    return next((h for h in hits if isinstance(h, dict) and h.get("id") == item.get("id")), None)


async def cmd_item(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    item = await client.get(f"/api/v1/items/{quote(args.id, safe='')}")
    if args.json:
        out.write(json.dumps(item, indent=2) + "\n")
        return EXIT_OK
    rows = [[k, "" if v is None else str(v)] for k, v in item.items() if k not in ("holders", "node_name", "online")]
    extra: list[list[str]] = []
    hit = await _item_hit(client, item)
    if hit is not None:
        if hit.get("local"):
            owner = f"{hit['node_name']} (this node)"
        else:
            owner = str(hit["node_name"]) + ("" if hit.get("online") else " (offline)")
        holders = hit.get("holders") or []
        copies = ", ".join(
            str(h.get("name") or h.get("node")) + ("" if h.get("online") else " (offline)")
            for h in sorted(holders, key=lambda h: not h.get("online"))
        )
        extra = [["owner", owner], ["copies", copies or "none"]]
    elif item.get("node"):
        extra = [["owner", await _owner(client, str(item["node"]))]]
    at = next((i for i, row in enumerate(rows) if row[0] == "node"), len(rows) - 1) + 1
    rows[at:at] = extra
    _table(rows, out)
    return EXIT_OK


async def _owner(client: AdminClient, node_id: str) -> str:
    """A node's name and state from the member list: "alice", "alice (offline)", "bob (this node)"."""
    try:
        status = await client.get("/api/v1/status")
        if status["node_id"] == node_id:
            return f"{status['name']} (this node)"
        peer = next((p for p in (await client.get("/api/v1/peers"))["peers"] if p["node_id"] == node_id), None)
    except (PrivNetworkError, KeyError, TypeError):
        return node_id
    if peer is None:
        return node_id
    return str(peer["name"]) + ("" if peer.get("online") else " (offline)")


async def cmd_visibility(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    item = await client.patch(f"/api/v1/items/{args.id}", {"visibility": args.visibility})
    out.write(f"{item['id']}  {item['visibility']}\n")
    return EXIT_OK


async def cmd_sync(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    """One line per node (this one first) with what changed; exit 1 if any peer failed.

    A peer that failed keeps its rows searchable and is retried with backoff, but a
    script must be able to tell that this sync did not reach it.
    """
    result = await client.post("/api/v1/sync")
    names = await _node_names(client)
    own = names[""]
    rows: list[list[str]] = []
    failed: list[str] = []
    for node_id, changed in result["changed"].items():
        name = names.get(node_id, node_id)
        if node_id == own:
            name += " (this node)"
        if isinstance(changed, str):
            failed.append(name)
            rows.append([name, changed])
        else:
            rows.append([name, f"{changed} change{'' if changed == 1 else 's'}"])
    _table(rows, out)
    if failed:
        out.flush()
        raise PrivNetworkError(f"could not sync with {', '.join(failed)} (see above)", code="sync_failed")
    return EXIT_OK


async def cmd_invite(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    result = await client.post("/api/v1/network/invites", {"ttl": args.ttl, "uses": args.uses})
    out.write(result["token"] + "\n")
    return EXIT_OK


async def cmd_join(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    result = await client.post("/api/v1/network/join", {"token": args.token})
    inviter = result["inviter"]
    out.write(f"joined the group of {inviter['name']} ({inviter['node_id']}) at {inviter['url']}\n")
    return EXIT_OK


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    delta = time.time() - ts
    if delta < 0:
        return f"in {_span(-delta)}"
    return f"{_span(delta)} ago"


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


async def cmd_peers(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    if getattr(args, "peers_command", None) == "remove":
        result = await client.delete(f"/api/v1/network/members/{args.id}")
        out.write(f"removed {result['removed']} from the group\n")
        return EXIT_OK
    peers = (await client.get("/api/v1/peers"))["peers"]
    if args.json:
        out.write(json.dumps(peers, indent=2) + "\n")
        return EXIT_OK
    if not peers:
        out.write("no peers yet: `priv-network invite` here, then `priv-network join TOKEN` on the other node\n")
        return EXIT_OK
    rows = [["NODE ID", "NAME", "URL", "STATE", "LAST SYNC", "ITEMS", "FAILURES", "NEXT RETRY"]]
    for p in peers:
        retry = _ago(p["next_retry_at"]) if p["next_retry_at"] else "-"
        rows.append(
            [
                p["node_id"],
                p["name"],
                p["url"],
                "online" if p["online"] else "offline",
                _ago(p["last_sync_at"]),
                str(p["items"]),
                str(p["failures"]),
                retry,
            ]
        )
    _table(rows, out)
    return EXIT_OK


async def cmd_pin(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    """Pin a peer's item. One nobody can serve now is recorded all the same (state ``waiting``).

    ``--wait`` follows a fetch under way until it ends, but does not wait for
    an owner to come back: a pin that is waiting or paused is an error (exit
    1), after the line saying where it stands.
    """
    pin = await client.post("/api/v1/pins", {"id": args.id})
    while args.wait and pin["state"] == "fetching":
        await asyncio.sleep(0.5)
        pin = next((p for p in (await client.get("/api/v1/pins"))["pins"] if p["id"] == args.id), pin)
    out.write(f"{pin['id']}  {pin['state']}  {pin['progress']:.0%}  {pin['title']}\n")
    # The node's note says why, and when (or whether) it is tried again.
    if pin["state"] == "waiting":
        if args.wait:
            out.flush()
            raise PrivNetworkError(f"pin recorded but not started: {pin['error']}", code="pin_waiting")
        out.write(f"queued: {pin['error']}\n")
    elif args.wait and pin["state"] != "complete":
        out.flush()
        raise PrivNetworkError(f"pin paused: {pin['error']}", code="pin_paused")
    return EXIT_OK


async def cmd_unpin(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    await client.delete(f"/api/v1/pins/{args.id}")
    out.write(f"unpinned {args.id}\n")
    return EXIT_OK


async def cmd_pins(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    pins = (await client.get("/api/v1/pins"))["pins"]
    if args.json:
        out.write(json.dumps(pins, indent=2) + "\n")
        return EXIT_OK
    if not pins:
        out.write("nothing pinned\n")
        return EXIT_OK
    rows = [["ID", "STATE", "PROGRESS", "SIZE", "TITLE", "NOTE"]]
    rows += [
        [
            p["id"],
            p["state"],
            f"{p['progress']:.0%}",
            _human_size(p["size"]),
            p["title"],
            (p["error"] or "") if p["state"] in ("waiting", "paused") else "",
        ]
        for p in pins
    ]
    _table(rows, out)
    return EXIT_OK


async def cmd_share(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    if args.id == "revoke":
        if not args.target:
            raise UsageError("priv-network share revoke: needs the share link or its ID (see --help)")
        await client.delete(f"/api/v1/shares/{args.target.rsplit('/', 1)[-1].split('.', 1)[0]}")
        out.write(f"revoked {args.target}\n")
        return EXIT_OK
    if args.target:
        raise UsageError(f"priv-network share: unexpected argument {args.target!r} (see --help)")
    body: dict[str, Any] = {"id": args.id, "ttl": args.ttl}
    if args.downloads is not None:
        body["downloads"] = args.downloads
    share = await client.post("/api/v1/shares", body)
    out.write(share["url"] + "\n")
    return EXIT_OK


async def cmd_shares(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    shares = (await client.get("/api/v1/shares"))["shares"]
    if args.json:
        out.write(json.dumps(shares, indent=2) + "\n")
        return EXIT_OK
    if not shares:
        out.write("no share links\n")
        return EXIT_OK
    rows = [["SHARE", "STATE", "DOWNLOADS", "EXPIRES", "TITLE"]]
    for s in shares:
        limit = f"{s['downloads']}/{s['max_downloads']}" if s["max_downloads"] else str(s["downloads"])
        if s.get("bytes_left") is not None and s["state"] == "active":
            limit += f", {_human_size(s['bytes_left'])} left"
        rows.append([s["id"], s["state"], limit, _ago(s["expires_at"]), s["title"] or s["item_id"]])
    _table(rows, out)
    return EXIT_OK


async def cmd_comments(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    comments = (await client.get(f"/api/v1/items/{args.id}/comments"))["comments"]
    if args.json:
        out.write(json.dumps(comments, indent=2) + "\n")
        return EXIT_OK
    if not comments:
        out.write("no comments yet\n")
        return EXIT_OK
    for c in comments:
        indent = "  " * int(c["depth"])
        flags = []
        if c["state"] != "published":
            flags.append(c["state"] + (f": {c['error']}" if c.get("error") else ""))
        if c["former_member"]:
            flags.append("former member")
        if c["edited_at"] and not c["deleted"]:
            flags.append("edited")
        note = f" ({', '.join(flags)})" if flags else ""
        text = "[deleted]" if c["deleted"] else c["body"].replace("\n", "\n" + indent + "    ")
        out.write(f"{indent}{c['author']}{note}  [{c['id']}]\n{indent}    {text}\n")
    return EXIT_OK


async def cmd_comment(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    body: dict[str, Any] = {"body": args.text}
    if args.reply_to:
        body["parent_id"] = args.reply_to
    comment = await client.post(f"/api/v1/items/{args.id}/comments", body)
    out.write(f"{comment['id']}  {comment['state']}\n")
    return EXIT_OK


async def cmd_download(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    row = await client.post("/api/v1/downloads", {"url": args.url, "visibility": args.visibility})
    out.write(f"{row['id']}  {row['state']}  {row['url']}\n")
    return EXIT_OK


async def cmd_downloads(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    rows = (await client.get("/api/v1/downloads"))["downloads"]
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
        return EXIT_OK
    if not rows:
        out.write("no downloads\n")
        return EXIT_OK
    table = [["ID", "STATE", "PROGRESS", "TITLE / URL", "MESSAGE"]]
    for r in rows:
        progress = f"{r['bytes'] / r['total']:.0%}" if r.get("total") else _human_size(r["bytes"] or 0)
        table.append([r["id"], r["state"], progress, r["title"] or r["url"], r["message"] or ""])
    _table(table, out)
    return EXIT_OK


async def cmd_import_plex(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    body: dict[str, Any] = {"url": args.url, "token": args.token, "visibility": args.visibility}
    if args.section:
        body["section"] = args.section
    report = await client.post("/api/v1/import/plex", body)
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        out.write(
            f"{len(report['added'])} added, {len(report['updated'])} updated, {report['unchanged']} unchanged, "
            f"{len(report['failed'])} failed\n"
        )
    for note in report["notes"]:
        sys.stderr.write(f"note: {note}\n")
    for failure in report["failed"]:
        sys.stderr.write(f"failed: {failure['path']}: {failure['error']}\n")
    return EXIT_FAIL if report["failed"] else EXIT_OK


async def cmd_scan(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    report = await client.post("/api/v1/scan")
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        out.write(
            f"{len(report['folders'])} folders: {report['added']} added, {report['unchanged']} unchanged, "
            f"{report['removed']} removed, {len(report['failed'])} failed\n"
        )
    for failure in report["failed"]:
        sys.stderr.write(f"failed: {failure['path']}: {failure['error']}\n")
    return EXIT_FAIL if report["failed"] else EXIT_OK


async def cmd_user_add(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    if not args.password_stdin:
        raise UsageError("priv-network user add: give the password on standard input with --password-stdin")
    password = sys.stdin.readline().rstrip("\n")
    user = await client.post("/api/v1/users", {"name": args.name, "password": password, "admin": args.admin})
    out.write(f"user {user['name']} created{' (owner)' if user['admin'] else ''}\n")
    return EXIT_OK


async def cmd_keys_rotate(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    result = await client.post("/api/v1/keys/rotate")
    out.write(f"rotated the signing key of {result['node_id']}; the group learns it from a signed roster event\n")
    return EXIT_OK


async def cmd_token_create(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    """Print a new token (only the token, for scripts); its ID, for `token revoke`, goes to stderr."""
    if args.user is not None:
        body: dict[str, Any] = {"user": args.user, "admin": args.admin}  # the node refuses an unknown user
    else:
        body = {"name": "api", "admin": args.admin}
    result = await client.post("/api/v1/tokens", body)
    out.write(result["token"] + "\n")
    out.flush()
    rights = "owner (admin) rights" if result["admin"] else "user rights"
    acts_as = f"acts as user {result['user']}" if args.user is not None else "is tied to no user"
    sys.stderr.write(
        f"note: token {result['id']} {acts_as}, with {rights}; `priv-network token revoke {result['id']}` ends it\n"
    )
    return EXIT_OK


async def cmd_token_list(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    tokens = (await client.get("/api/v1/tokens"))["tokens"]
    if args.json:
        out.write(json.dumps(tokens, indent=2) + "\n")
        return EXIT_OK
    if not tokens:
        out.write("no tokens\n")
        return EXIT_OK
    rows = [["ID", "USER", "KIND", "RIGHTS", "CREATED", "LAST USED", "EXPIRES", ""]]
    for t in tokens:
        rows.append(
            [
                t["id"],
                t["user"],
                t["kind"],
                "owner" if t["admin"] else "user",
                _ago(t["created_at"]),
                _ago(t["last_used_at"]),
                _ago(t["expires_at"]),
                "(this client)" if t.get("current") else "",
            ]
        )
    _table(rows, out)
    return EXIT_OK


async def cmd_token_revoke(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    token_id = args.id.strip()
    if token_id.startswith("pn_"):
        raise UsageError(
            "priv-network token revoke: give the token's ID (`priv-network token list` shows them), "
            "not the token itself"
        )
    if not token_id:
        raise UsageError("priv-network token revoke: needs a token ID (see `priv-network token list`)")
    result = await client.delete(f"/api/v1/tokens/{quote(token_id, safe='')}")
    out.write(f"revoked token {result['id']} ({result['user']}, {result['kind']}); it no longer works\n")
    if result.get("current"):
        out.flush()
        sys.stderr.write(
            "note: that was this client's own token: put another owner token in the data folder's admin.token "
            "(or `repl --token`) to go on\n"
        )
    return EXIT_OK


# The node's limits (node/shares.py, node/network.py), checked here as well so that a value out
# of range is bad usage (exit 2) before anything is sent; the node checks them again for the API.
SHARE_TTL = (60.0, 365 * 86400.0)
MAX_SHARE_DOWNLOADS = 1_000_000
INVITE_TTL = (60.0, 365 * 86400.0)
MAX_INVITE_USES = 1000
MAX_PORT = 65535
DEMO_NODES = 3  # `demo` listens on --port-base and the next two ports
_DIGITS = re.compile(r"^\s*\+?[0-9]+\s*$")


def _span_words(seconds: float) -> str:
    """A limit as a person says it: "1 minute", "365 days"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{seconds:g} seconds"


def duration_arg(low: float, high: float) -> Callable[[str], float]:
    """An argparse ``type``: a duration such as 30m, 24h or 7d within [low, high], in seconds."""

    def duration(value: str) -> float:
        try:
            seconds = parse_duration(value)
        except ConfigError:
            raise argparse.ArgumentTypeError(f"not a duration: {value[:40]!r} (use e.g. 30m, 24h, 7d)") from None
        if not low <= seconds <= high:
            raise argparse.ArgumentTypeError(
                f"must be between {_span_words(low)} and {_span_words(high)}, not {value.strip()[:40]}"
            )
        return seconds

    return duration


def count_arg(high: int, low: int = 1) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``."""

    def count(value: str) -> int:
        shown = value.strip()[:40] + ("..." if len(value.strip()) > 40 else "")
        try:
            n = int(value)
        except ValueError:
            if _DIGITS.match(value):  # more digits than Python converts: too large all the same
                raise argparse.ArgumentTypeError(f"must be at most {high}, not {shown}") from None
            raise argparse.ArgumentTypeError(f"not a whole number: {shown!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {shown}")
        if n > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, not {shown}")
        return n

    return count


def _http_url(value: str) -> str:
    if not value.strip().startswith(("http://", "https://")):  # as the node checks it
        raise argparse.ArgumentTypeError(f"must be an http(s) address such as http://127.0.0.1:32400, not {value!r}")
    return value.strip()


def _not_empty(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _search_limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {SEARCH_MAX}, not {value!r}") from None
    if not 1 <= limit <= SEARCH_MAX:
        raise argparse.ArgumentTypeError(f"must be from 1 to {SEARCH_MAX}, not {limit}")
    return limit


def build_parser() -> Parser:
    parser = Parser(prog="priv-network", description="A private, federated media network for small groups.")
    parser.add_argument("--data", metavar="DIR", help=f"data folder (default: ${DATA_ENV} or {default_data_dir()})")
    parser.add_argument("--version", action="version", version=f"priv-network {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("init", help="create a node's data folder, keys and database")
    p.add_argument("--name", required=True, help="the node's human-readable name")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:8700)")
    p.add_argument("--url", metavar="PUBLIC_URL", help="URL peers reach this node at (default http://LISTEN)")
    p.set_defaults(local="init")

    p = sub.add_parser("serve", help="run the node until SIGINT/SIGTERM")
    p.add_argument("--upgrade", action="store_true", help="migrate the database to the latest schema first")
    p.set_defaults(local="serve")

    p = sub.add_parser("repl", help="an interactive shell on the running node (every command, with completion)")
    p.add_argument("--url", help="manage another node you own, at this URL")
    p.add_argument("--token", help="an admin API token for --url")
    p.set_defaults(local="repl")

    p = sub.add_parser("backup", help="write an archive of identity, config, database (and --store)")
    p.add_argument("path", metavar="PATH", help="the archive to create: NAME.tar.gz or NAME.tgz (gzip), or NAME.tar")
    p.add_argument("--store", action="store_true", help="include the media store (large)")
    p.set_defaults(local="backup")

    p = sub.add_parser("restore", help="bring a node back from a backup into an empty --data folder")
    p.add_argument("archive", metavar="ARCHIVE")
    p.set_defaults(local="restore")

    p = sub.add_parser("demo", help="run a local three-node group with sample media (Ctrl-C stops it)")
    p.add_argument("--dir", metavar="DIR", help="where the three data folders go (default: a new temp folder)")
    p.add_argument(
        "--port-base",
        type=count_arg(MAX_PORT - DEMO_NODES + 1),
        default=8701,
        metavar="PORT",
        help="alice listens on this port, bob +1, carol +2",
    )
    p.set_defaults(local="demo")

    p = sub.add_parser("doctor", help="check this node's set-up and say how to fix what is wrong")
    p.set_defaults(local="doctor")

    p = sub.add_parser("db", help="database schema: upgrade or show the current revision")
    p.add_argument(
        "db_command",
        choices=["upgrade", "current"],
        metavar="ACTION",
        help="upgrade: migrate to the latest schema (the node must be stopped); current: show the revision",
    )
    p.set_defaults(local="db")

    p = sub.add_parser("status", help="node ID, name, URL, items, pinned copies, store size, free disk, traffic")
    p.add_argument("--json", action="store_true")
    p.set_defaults(remote=cmd_status)

    p = sub.add_parser("add", help="ingest files and folders (recursively)")
    p.add_argument("paths", nargs="+", metavar="PATH", type=_absolute)
    p.add_argument("--title", help="title for a single file (default: from the file name)")
    p.add_argument(
        "--visibility",
        help="private (default for new items), network or peers:ID,ID; also applied to items already stored",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(remote=cmd_add)

    p = sub.add_parser("remove", help="delete items")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(remote=cmd_remove)

    p = sub.add_parser("item", help="show one item's metadata")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(remote=cmd_item)

    p = sub.add_parser("visibility", help="set who may see an item: private, network or peers:ID,ID")
    p.add_argument("id", metavar="ID")
    p.add_argument("visibility")
    p.set_defaults(remote=cmd_visibility)

    p = sub.add_parser("search", help="search the registry")
    p.add_argument("query")
    p.add_argument("--kind", choices=["video", "audio", "image", "other"])
    p.add_argument("--node", metavar="ID", help="only items owned by this node")
    p.add_argument("--limit", type=_search_limit, default=50, help=f"most results to show, 1-{SEARCH_MAX} (default 50)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(remote=cmd_search)

    p = sub.add_parser("sync", help="poll every feed now and wait")
    p.set_defaults(remote=cmd_sync)

    p = sub.add_parser("pin", help="mirror a peer's item into this node's store, for watching offline")
    p.add_argument("id", metavar="ID")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until the copy is complete and verified; exit 1 if it cannot go on now "
        "(the pin stays recorded and continues when the owner or a member holding a copy is back)",
    )
    p.set_defaults(remote=cmd_pin)

    p = sub.add_parser("unpin", help="drop a pinned copy")
    p.add_argument("id", metavar="ID")
    p.set_defaults(remote=cmd_unpin)

    p = sub.add_parser("pins", help="list pinned copies with their progress")
    p.add_argument("--json", action="store_true")
    p.set_defaults(remote=cmd_pins)

    p = sub.add_parser("share", help="make a download link of one of this node's items for someone outside")
    p.add_argument("id", metavar="ID", help="the item ID, or `revoke` followed by the link or share ID")
    p.add_argument("target", nargs="?", help=argparse.SUPPRESS)
    p.add_argument(
        "--ttl",
        type=duration_arg(*SHARE_TTL),
        default="24h",
        metavar="DURATION",
        help="how long the link works, e.g. 30m, 24h, 7d; 1 minute to 365 days (default 24h)",
    )
    p.add_argument(
        "--downloads",
        type=count_arg(MAX_SHARE_DOWNLOADS),
        metavar="N",
        help=f"how many downloads it allows, 1 to {MAX_SHARE_DOWNLOADS} (default: no limit)",
    )
    p.set_defaults(remote=cmd_share)

    p = sub.add_parser("shares", help="list share links")
    p.add_argument("--json", action="store_true")
    p.set_defaults(remote=cmd_shares)

    p = sub.add_parser("comments", help="show an item's comment thread")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(remote=cmd_comments)

    p = sub.add_parser("comment", help="comment on an item (delivered to its owner)")
    p.add_argument("id", metavar="ID")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--reply-to", metavar="COMMENT_ID", help="answer this comment")
    p.set_defaults(remote=cmd_comment)

    p = sub.add_parser("download", help="queue a URL for download (yt-dlp)")
    p.add_argument("url", metavar="URL")
    p.add_argument("--visibility", default="private", help="private (default), network or peers:ID,ID")
    p.set_defaults(remote=cmd_download)

    p = sub.add_parser("downloads", help="the download queue with progress")
    p.add_argument("--json", action="store_true")
    p.set_defaults(remote=cmd_downloads)

    p = sub.add_parser("import-plex", help="import movie and show sections from a Plex server")
    p.add_argument("--url", required=True, type=_http_url, help="the Plex server, e.g. http://127.0.0.1:32400")
    p.add_argument("--token", required=True, type=_not_empty, help="an X-Plex-Token for it")
    p.add_argument("--section", help="only this library section")
    p.add_argument("--visibility", default="private", help="private (default), network or peers:ID,ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(remote=cmd_import_plex)

    p = sub.add_parser("scan", help="rescan the watched folders now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(remote=cmd_scan)

    p = sub.add_parser("invite", help="create an invite for another node; prints only the token")
    p.add_argument(
        "--ttl",
        type=duration_arg(*INVITE_TTL),
        default="24h",
        metavar="DURATION",
        help="how long the invite is valid, e.g. 30m, 24h, 7d; 1 minute to 365 days (default 24h)",
    )
    p.add_argument(
        "--uses",
        type=count_arg(MAX_INVITE_USES),
        default=1,
        metavar="N",
        help=f"how many nodes may join with it, 1 to {MAX_INVITE_USES} (default 1)",
    )
    p.set_defaults(remote=cmd_invite)

    p = sub.add_parser("join", help="join a group with an invite token")
    p.add_argument("token", metavar="TOKEN")
    p.set_defaults(remote=cmd_join)

    p = sub.add_parser("peers", help="list the group's members, or remove one")
    p.add_argument("--json", action="store_true")
    psub = p.add_subparsers(dest="peers_command", metavar="ACTION", parser_class=Parser)
    pr = psub.add_parser("remove", help="remove a member for the whole group")
    pr.add_argument("id", metavar="ID")
    p.set_defaults(remote=cmd_peers)

    p = sub.add_parser("keys", help="the node's signing key")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=Parser, required=True)
    kp = ksub.add_parser("rotate", help="replace the signing key, announced to the group (same node ID)")
    kp.set_defaults(remote=cmd_keys_rotate)

    p = sub.add_parser("user", help="web app users")
    usub = p.add_subparsers(dest="user_command", metavar="ACTION", parser_class=Parser, required=True)
    up = usub.add_parser("add", help="create a user who logs in to the web app")
    up.add_argument("name", metavar="NAME")
    up.add_argument("--admin", action="store_true", help="an owner: may change visibility, peers and invites")
    up.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    up.set_defaults(remote=cmd_user_add)

    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", parser_class=Parser, required=True)
    tp = tsub.add_parser("create", help="create an API token and print it (its ID goes to stderr)")
    tp.add_argument(
        "--user", metavar="NAME", help="an existing user (`user add`) the token acts as, with that user's rights"
    )
    tp.add_argument(
        "--admin", action="store_true", help="give the token owner rights (with --user: only if the user is an owner)"
    )
    tp.set_defaults(remote=cmd_token_create)
    tp = tsub.add_parser("list", help="the tokens that work now (IDs, never the tokens themselves)")
    tp.add_argument("--json", action="store_true")
    tp.set_defaults(remote=cmd_token_list)
    tp = tsub.add_parser("revoke", help="end a token at once: every request with it is refused")
    tp.add_argument("id", metavar="ID", help="the token's ID, from `token list`")
    tp.set_defaults(remote=cmd_token_revoke)
    return parser


def admin_client(args: argparse.Namespace) -> AdminClient:
    config = load_config(data_dir(args))
    try:
        token = config.admin_token_path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the admin credential {config.admin_token_path}: {exc.strerror}") from None
    return AdminClient(local_url(config), token)
