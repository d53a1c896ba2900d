"""Community: 10,000 comments and 100,000 view events spread over 5 nodes, until all agree.

    .venv/bin/python bench/community.py [--comments 10000] [--views 100000] [--interval 5s] [--rounds 3]
                                        [--limit 240] [--no-profile] [--profile-seconds 30] [--no-api-check]

Five real nodes (``priv-network init`` + ``serve``, 127.0.0.2 ... 127.0.0.6,
not pinned) with ``[sync] interval = 5s``, one group; each owns 20 small
items (``add``, visibility ``network``) and has synced everyone's catalog.

The comments and views are then written, nodes stopped, straight into each
author node's durable outbox (the registry's ``outbox`` table), exactly as
``registry.community.CommunityService`` enqueues them (``post`` for a
comment on a peer's item, ``progress`` past the threshold for a view): one
random author node and user per message, on a random item of another node;
a fifth of the comments answer an earlier comment of the same author node on
the same item (still in the outbox: stricter than the product's own
``post``, which answers only published comments, so delivery order
matters). 100,000 views through ``POST /api/v1/items/{id}/progress`` would
be 100,000 user sessions (a user's view of an item counts once per 6 h); the
outbox is the product's own durable queue, so the benchmark starts where
those requests leave off. The databases are saved at that point, and each
round starts from the same outboxes.

Timed from ``serve`` of all five at once: each node delivers its outbox to
the owners (``POST /federation/v1/inbox``, signed, up to 1,000 messages and
512 KiB a request, every owner at once, until nothing is due), the owners
count and publish (comments one feed entry each, views one total per item
per delivery), and every node polls every owner on its schedule.
"Agreement": every outbox empty and all five registries hold identical
threads (every comment's id, item, parent, depth, author, body, deletion)
and identical view totals, with all 10,000 comments and totals summing to
100,000, less what the owners refused (read every 0.25 s from each node's
SQLite, read-only: the counts first, the digests once the counts agree).
Goal: under 30 s (median of the rounds). Afterwards every item's thread and
view count is compared through the API (``GET /api/v1/items/{id}/comments``,
``GET /api/v1/items/{id}``) on all five nodes. The CPU time of each node
during the round is shown, and py-spy records c0 during the last round.

Feed size: one owner's feed since the cursor it had before the messages
(signed ``GET /federation/v1/catalog``, as a member) is read whole; its bytes
and entries are shown against the view events it absorbed: totals, not one
entry per view. Per-item cost of publishing a total: ``CmaStore.add_views``
(in this process, a fresh migrated SQLite database) for 500-view batches over
1, 20 and 100 distinct items; the cost per item is the slope.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import secrets
import shutil
import sqlite3
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import header, install_cleanup, machine_line, median, save_result, temp_dir, verdict
from _fed import FedNode, PySpy, all_peers_synced, cpu_seconds, wait_for

from priv_network import db
from priv_network.config import parse_duration
from priv_network.identity import NodeIdentity
from priv_network.signing import Signer

GOAL_S = 30.0
PROFILE_UNDER = (
    "FederationApi.inbox",
    "Community.add (",
    "insert_comment",
    "add_views",
    "notify_changed",
    "on_local_change",
    "sync_source",
    "reconcile_sources",
    "apply_page",
    "CommunityService.deliver",
    "_send",
    "refresh_peer",
    "changes (node/service.py",
    "Signer.sign",
    "Verifier.verify",
    "aiosqlite",
)
WORDS = [
    "the",
    "a",
    "fine",
    "film",
    "music",
    "scene",
    "great",
    "ending",
    "again",
    "watch",
    "loved",
    "it",
    "actor",
    "story",
    "camera",
    "light",
    "sound",
    "why",
]


# -- seeding the outboxes -----------------------------------------------------------------------


def seed_outboxes(
    nodes: list[FedNode], items: dict[str, list[str]], n_comments: int, n_views: int, seed: int
) -> dict[str, Any]:
    """Write comments and views into each author node's outbox, as CommunityService._enqueue would."""
    rng = random.Random(seed)
    owners = [n.node_id for n in nodes]
    rows: dict[str, list[tuple[Any, ...]]] = {n.name: [] for n in nodes}
    base = time.time() - 3600
    earlier: dict[tuple[str, str], list[tuple[str, int]]] = {}  # (author node, item) -> [(comment id, depth)]
    per_owner_views: Counter[str] = Counter()
    kinds = ["comment"] * n_comments + ["view"] * n_views
    rng.shuffle(kinds)
    for i, kind in enumerate(kinds):
        author = rng.choice(nodes)
        owner = rng.choice([o for o in owners if o != author.node_id])
        item = rng.choice(items[owner])
        at = base + i * 0.01
        mid = secrets.token_hex(16)
        user = f"user{rng.randrange(50)}"
        if kind == "view":
            payload: dict[str, Any] = {"item": item, "at": at}
            per_owner_views[owner] += 1
        else:
            parent, depth = None, 0
            prior = earlier.get((author.name, item))
            if prior and rng.random() < 0.2:
                parent, pdepth = rng.choice(prior)
                if pdepth < 5:
                    depth = pdepth + 1
                else:
                    parent = None
            body = " ".join(rng.choices(WORDS, k=rng.randint(3, 30))).capitalize() + f" #{i}"
            payload = {"item": item, "parent": parent, "depth": depth, "author": user, "body": body, "created_at": at}
            earlier.setdefault((author.name, item), []).append((mid, depth))
        rows[author.name].append((mid, owner, kind, json.dumps(payload), at, 0, 0.0))
    for node in nodes:
        con = sqlite3.connect(node.db_path)
        try:
            con.executemany(
                "INSERT INTO outbox (id, node_id, kind, payload, created_at, attempts, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows[node.name],
            )
            con.commit()
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
    return {"per_node": {k: len(v) for k, v in rows.items()}, "views_per_owner": dict(per_owner_views)}


# -- agreement ----------------------------------------------------------------------------------


def registry_counts(node: FedNode) -> tuple[int, int, int, int, int]:
    """(comments, sum of view totals, outbox left, comments and views refused for good): cheap, read-only."""
    con = sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True, timeout=5)
    try:
        (n_comments,) = con.execute("SELECT count(*) FROM registry_comments").fetchone()
        (total,) = con.execute("SELECT coalesce(sum(total), 0) FROM registry_views").fetchone()
        (left,) = con.execute("SELECT count(*) FROM outbox WHERE attempts >= 0").fetchone()
        refused = dict(con.execute("SELECT kind, count(*) FROM outbox WHERE attempts < 0 GROUP BY kind").fetchall())
        return int(n_comments), int(total), int(left), refused.get("comment", 0), refused.get("view", 0)
    finally:
        con.close()


def registry_digest(node: FedNode) -> str:
    """A digest of every thread (each comment's id, item, parent, depth, author, body, deletion) and total."""
    con = sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True, timeout=5)
    try:
        h = hashlib.sha256()
        for row in con.execute(
            "SELECT node_id, item_id, comment_id, parent_id, depth, author, author_node, body, deleted"
            " FROM registry_comments ORDER BY node_id, item_id, comment_id"
        ):
            h.update(repr(row).encode())
        for row in con.execute("SELECT node_id, item_id, total FROM registry_views ORDER BY node_id, item_id"):
            h.update(repr(row).encode())
        return h.hexdigest()
    finally:
        con.close()


def api_agreement(nodes: list[FedNode], items: dict[str, list[str]]) -> tuple[bool, str]:
    """Every item's thread (published comments, in order) and view count, identical through every node's API."""
    for owner_items in items.values():
        for item_id in owner_items:
            threads, views = set(), set()
            for n in nodes:
                thread = n.get(f"/api/v1/items/{item_id}/comments")["comments"]
                if any(c["state"] != "published" for c in thread):
                    return False, f"{n.name} shows an unpublished comment on {item_id}"
                threads.add(json.dumps([(c["id"], c["parent"], c["body"], c["author"]) for c in thread]))
                views.add(n.get(f"/api/v1/items/{item_id}")["views"])
            if len(threads) != 1 or len(views) != 1:
                return False, f"item {item_id}: {len(threads)} different threads, view counts {sorted(views)}"
    return True, "identical"


# -- feed size ------------------------------------------------------------------------------------


def read_feed(owner: FedNode, reader: FedNode, since: int) -> dict[str, Any]:
    """The owner's whole feed after ``since``, as ``reader`` (a member) gets it: bytes and entries."""
    import urllib.request

    signer = Signer(NodeIdentity.load(reader.data / "node.key"))
    total_bytes, entries, by_kind, bytes_by_kind, pages = 0, 0, Counter[str](), Counter[str](), 0
    cursor = since
    while True:
        url = f"{owner.url}/federation/v1/catalog?since={cursor}&limit=5000"
        req = urllib.request.Request(url, headers=signer.sign("GET", url, b""))
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read()
        page = json.loads(raw)
        pages += 1
        total_bytes += len(raw)
        for e in page["entries"]:
            entries += 1
            by_kind[e["entity"]] += 1
            bytes_by_kind[e["entity"]] += len(json.dumps(e, separators=(",", ":")))
        cursor = page["next"]
        if not page["more"]:
            break
    return {
        "pages": pages,
        "bytes": total_bytes,
        "entries": entries,
        "by_kind": by_kind,
        "bytes_by_kind": bytes_by_kind,
    }


# -- the cost of publishing a total -----------------------------------------------------------------


async def _add_views_cost(path: Path, spreads: tuple[int, ...], repeats: int) -> dict[int, float]:
    from node.store import CmaStore

    engine = db.create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await db.upgrade(engine)
        store = CmaStore(engine)
        out: dict[int, list[float]] = {k: [] for k in spreads}
        items = [f"{i:026d}" for i in range(max(spreads))]
        for r in range(repeats + 1):
            for k in spreads:
                receipts = [(secrets.token_hex(16), items[j % k], time.time()) for j in range(500)]
                t0 = time.perf_counter()
                await store.add_views(receipts)
                if r:  # the first pass warms up
                    out[k].append(time.perf_counter() - t0)
        return {k: median(v) for k, v in out.items()}
    finally:
        await engine.dispose()


def add_views_cost(root: Path) -> dict[str, Any]:
    spreads = (1, 20, 100)
    t = asyncio.run(_add_views_cost(root / "views-cost.db", spreads, 20))
    slope = (t[100] - t[1]) / 99
    return {"batch_s": {str(k): v for k, v in t.items()}, "per_item_ms": slope * 1000, "per_view_us": t[1] / 500 * 1e6}


# -- main -------------------------------------------------------------------------------------------


def run_scenario(
    nodes: list[FedNode], expect: tuple[int, int], limit: float, profile: Path | None, profile_s: float
) -> dict[str, Any]:
    """Start every node, then wait until all registries agree (or ``limit`` s pass).

    Agreement: every outbox empty, every comment and view the owners did not refuse
    (refusals are final and kept in the author's outbox) published on every node, and
    identical digests of the threads and totals. The cheap counts are read every 0.25 s;
    the digests only once the counts agree, so the watcher takes little of the machine.
    """
    offsets = {n.name: n.log.stat().st_size if n.log.exists() else 0 for n in nodes}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(nodes)) as pool:  # all at once, as nodes coming back online
        list(pool.map(lambda n: n.serve(), nodes))
    started = time.perf_counter() - t0
    cpu0 = {n.name: cpu_seconds(n.pid) for n in nodes}
    spy = None
    if profile is not None:
        spy = PySpy(nodes[0].pid, profile, rate=100)
        spy = spy if spy.start() else None
    timeline: list[tuple[float, list[tuple[int, ...]]]] = []
    agreed_at = None
    cpu: dict[str, float] = {}
    while time.perf_counter() - t0 < limit:
        states = [registry_counts(n) for n in nodes]
        now = time.perf_counter() - t0
        timeline.append((now, list(states)))
        refused_c, refused_v = sum(s[3] for s in states), sum(s[4] for s in states)
        want = (expect[0] - refused_c, expect[1] - refused_v)
        counts_agree = all((s[0], s[1]) == want and s[2] == 0 for s in states)
        if counts_agree and len({registry_digest(n) for n in nodes}) == 1:
            agreed_at = now
            cpu = {n.name: cpu_seconds(n.pid) - cpu0[n.name] for n in nodes}
            break
        if spy is not None and now > profile_s:
            spy.stop()
            spy = None
        time.sleep(0.25)
    if spy is not None:
        spy.stop()
    warnings: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    for n in nodes:
        with open(n.log, errors="replace") as fh:
            fh.seek(offsets[n.name])
            for line in fh:
                if " WARNING " in line and "not readable as media" not in line:
                    text = line.split(" req=", 1)[-1].split(" ", 1)[-1]
                    text = text.split(" failed: ", 1)[-1].split(";")[0].strip()
                    warnings[text[:100]] += 1
        con = sqlite3.connect(f"file:{n.db_path}?mode=ro", uri=True)
        for kind, error, count in con.execute(
            "SELECT kind, last_error, count(*) FROM outbox WHERE attempts < 0 GROUP BY 1, 2"
        ):
            refusals[f"{kind}: {error}"] += count
        con.close()
    return {
        "agreed_s": agreed_at,
        "start_s": started,
        "cpu_s": cpu,
        "timeline": timeline,
        "warnings": warnings.most_common(4),
        "refused": dict(refusals),
    }


def restore(nodes: list[FedNode], saved: Path) -> None:
    """Stop every node and put back the databases saved after seeding (same outboxes, same cursors)."""
    for n in nodes:
        n.stop()
        for suffix in ("-wal", "-shm"):
            Path(f"{n.db_path}{suffix}").unlink(missing_ok=True)
        shutil.copy2(saved / n.name / "node.db", n.db_path)


def show_round(res: dict[str, Any], nodes: list[FedNode]) -> None:
    timeline = res["timeline"]
    step = max(1, len(timeline) // 10)
    shown = timeline[::step] + ([timeline[-1]] if (len(timeline) - 1) % step else [])
    for t, states in shown:
        print(
            f"  {t:5.1f} s: comments {[s[0] for s in states]}, view totals {[s[1] for s in states]},"
            f" outbox left {[s[2] for s in states]}"
            + (f", refused {[s[3] + s[4] for s in states]}" if any(s[3] + s[4] for s in states) else "")
        )
    if res["refused"]:
        print(f"  refused by the owners (final): {res['refused']}")
    if res["warnings"]:
        print("  log warnings: " + "; ".join(f"{k} (x{v})" for k, v in res["warnings"]))
    if res["agreed_s"] is not None:
        cpu = res["cpu_s"]
        print(
            f"  all {len(nodes)} nodes agree after {res['agreed_s']:.1f} s (start-up {res['start_s']:.1f} s);"
            f" node CPU {sum(cpu.values()):.1f} s in all ({', '.join(f'{k} {v:.1f}' for k, v in cpu.items())})"
        )
    else:
        print(f"  no agreement within {timeline[-1][0]:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--items", type=int, default=20, help="items per node (default 20)")
    ap.add_argument("--comments", type=int, default=10_000)
    ap.add_argument("--views", type=int, default=100_000)
    ap.add_argument("--interval", default="5s", help="[sync] interval of every node (default 5s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="timed runs from the same outboxes (default 3)")
    ap.add_argument("--limit", type=float, default=8 * GOAL_S, help="give a round up after this many seconds")
    ap.add_argument("--no-profile", action="store_true", help="skip py-spy of c0 during the last round")
    ap.add_argument("--profile-seconds", type=float, default=GOAL_S, help="how long py-spy records (default 30)")
    ap.add_argument("--no-api-check", action="store_true", help="skip comparing every thread through the API")
    args = ap.parse_args()
    interval = parse_duration(args.interval)

    install_cleanup()
    print(
        f"community benchmark: {args.comments:,} comments and {args.views:,} views over {args.nodes} nodes,"
        f" {args.items} items each, [sync] interval {interval:g} s, {args.rounds} round(s)"
    )
    print(f"machine: {machine_line()}", flush=True)
    root = temp_dir("community-")
    media = root / "media"
    sections = {"sync": {"interval": args.interval}, "store": {"min_free": "0"}}
    nodes: list[FedNode] = []
    try:
        header("setting up: one group, every node adds its items, everyone syncs")
        nodes = [FedNode(root, f"c{i}", f"127.0.0.{i + 2}", sections=sections) for i in range(args.nodes)]
        for n in nodes:
            n.serve()
        items: dict[str, list[str]] = {}
        for n in nodes:
            folder = media / n.name
            folder.mkdir(parents=True)
            for i in range(args.items):
                (folder / f"{n.name} clip {i:03d}.bin").write_bytes(secrets.token_bytes(256))
            report = n.api("POST", "/api/v1/items", {"paths": [str(folder)], "visibility": "network"})
            items[n.node_id] = [x["id"] for x in report["added"]]
        invite = nodes[0].invite(uses=args.nodes - 1)
        for n in nodes[1:]:
            n.join(invite)
        total_items = args.nodes * args.items

        def everyone_has_everything() -> bool:
            if not all(all_peers_synced(n, args.nodes - 1) for n in nodes):
                return False
            return all(sum(p["items"] for p in n.peers()) == total_items - args.items for n in nodes)

        wait_for(everyone_has_everything, timeout=120, what="catalogs synced", interval=1.0)
        for n in nodes:
            n.stop()
        seqs = {}
        for n in nodes:
            con = sqlite3.connect(f"file:{n.db_path}?mode=ro", uri=True)
            seqs[n.name] = con.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            con.close()

        header(f"writing {args.comments:,} comments and {args.views:,} views into the outboxes (nodes stopped)")
        t_seed = time.perf_counter()
        seeded = seed_outboxes(nodes, items, args.comments, args.views, args.seed)
        print(f"outbox messages per node: {seeded['per_node']} ({time.perf_counter() - t_seed:.1f} s)")
        saved = root / "saved"
        for n in nodes:
            (saved / n.name).mkdir(parents=True)
            shutil.copy2(n.db_path, saved / n.name / "node.db")

        expect = (args.comments, args.views)
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            if r:
                restore(nodes, saved)
            last = r == args.rounds - 1
            profile = None if args.no_profile or not last else root / "pyspy-c0.txt"
            load = os.getloadavg()[0]
            header(f"round {r + 1}/{args.rounds}: start all {args.nodes} nodes, wait until all agree (load {load:.1f})")
            res = run_scenario(nodes, expect, args.limit, profile, args.profile_seconds)
            res["load"] = load
            rounds.append(res)
            show_round(res, nodes)
            if profile is not None and profile.exists():
                spy_text = PySpy(0, profile, rate=100).summary(top=20, inclusive=PROFILE_UNDER)
                print(f"  py-spy of c0, first {args.profile_seconds:g} s:\n    " + spy_text.replace("\n", "\n    "))
            if res["agreed_s"] is None:
                break
        times = [r["agreed_s"] for r in rounds]
        agreed = median(times) if all(t is not None for t in times) else None
        refused = rounds[-1]["refused"]

        same, why = True, "not checked"
        if not args.no_api_check and agreed is not None:
            header("checking every thread and view count through the API of every node (last round)")
            same, why = api_agreement(nodes, items)
            print(f"  {why}")

        header("feed size: one owner's feed since before the messages, as a member reads it")
        owner, reader = nodes[0], nodes[1]
        feed = read_feed(owner, reader, seqs[owner.name])
        views_in = seeded["views_per_owner"].get(owner.node_id, 0)
        views_entries = feed["by_kind"].get("views", 0)
        views_bytes = feed["bytes_by_kind"].get("views", 0)
        print(
            f"  {owner.name}'s feed: {feed['bytes']:,} bytes in {feed['pages']} page(s), {feed['entries']:,} entries"
            f" ({dict(feed['by_kind'])}); {views_in:,} view events became {views_entries} totals"
            f" = {views_bytes:,} bytes ({views_bytes / max(views_in, 1):.3f} B per view event,"
            f" {views_bytes / max(views_entries, 1):.0f} B per item)"
        )

        header("cost of publishing a total: CmaStore.add_views, 500-view batches over 1, 20, 100 items")
        cost = add_views_cost(root)
        print(
            "  batch of 500: "
            + ", ".join(f"{k} item(s) {v * 1000:.1f} ms" for k, v in cost["batch_s"].items())
            + f"; per extra item {cost['per_item_ms']:.3f} ms, per view {cost['per_view_us']:.1f} us"
        )

        ok = agreed is not None and agreed < GOAL_S and same and not refused
        summary = {
            "nodes": args.nodes,
            "items": total_items,
            "comments": args.comments,
            "views": args.views,
            "interval_s": interval,
            "agreed_s": agreed,
            "rounds_s": times,
            "rounds_load": [r["load"] for r in rounds],
            "rounds_cpu_s": [r["cpu_s"] for r in rounds],
            "refused": refused,
            "api_identical": same,
            "feed": {**feed, "by_kind": dict(feed["by_kind"]), "bytes_by_kind": dict(feed["bytes_by_kind"])},
            "feed_view_events": views_in,
            "publish_cost": cost,
            "goal_s": GOAL_S,
            "met": ok,
        }
        header("results")
        shown = ", ".join("-" if t is None else f"{t:.1f}" for t in times)
        print(
            f"time to agreement ({args.comments:,} comments, {args.views:,} views, {args.nodes} nodes):"
            + (f" median {agreed:.1f} s" if agreed is not None else " none")
            + f" (rounds: {shown} s)   goal < {GOAL_S:g} s: {verdict(agreed is not None and agreed < GOAL_S)}"
        )
        if refused:
            print(f"refused by the owners: {refused}")
        print(f"threads and totals through the API on every node: {why}")
        print(
            f"feed after the views: {views_entries} view totals ({views_bytes:,} B) for {views_in:,} view events"
            f" (ratio {views_entries / max(views_in, 1):.4f} entries per event); whole feed {feed['bytes']:,} B"
        )
        print(
            f"publishing a total: {cost['per_item_ms']:.3f} ms per item per batch,"
            f" {cost['per_view_us']:.1f} us per view"
        )
        print(f"saved {save_result('community', summary)}")
        return 0 if ok else 1
    finally:
        for n in reversed(nodes):
            n.stop()


if __name__ == "__main__":
    sys.exit(main())
