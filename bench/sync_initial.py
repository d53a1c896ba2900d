"""Initial sync: 100,000 items from one peer into an empty registry, on loopback.

    .venv/bin/python bench/sync_initial.py [--items 100000] [--repeats 1] [--profile]

Two real nodes (``priv-network init`` + ``serve``): A (alice) on 127.0.0.1,
pinned to core 1, and B (bob) on 127.0.0.2, pinned to core 0; both with
``[sync] interval = 1h`` so that only the benchmark decides when B polls.
B joins A's group (``invite`` / ``join``) while A is still empty, and B's
empty-registry state is saved (both nodes stopped). Then A's CMA is seeded
straight into its SQLite database (A stopped): 100,000 ``blobs``, ``items``
and ``changes`` rows, as ``node.store.CmaStore.add_item`` writes them (one
single-block blob per item, its manifest and manifest hash computed with
``priv_network.manifest``; titles from bench/search.py's Zipf vocabulary;
visibility ``network``). The bytes of the blobs are not written: a sync
never reads them. Seeding takes seconds where ingesting 100,000 tiny files
would take an hour (bench/ingest.py: ~19 ms per small file).

Measured, ``--repeats`` times (B's saved state restored before each):
``priv-network sync`` on B (CLI wall time: start-up, POST /api/v1/sync, a
first page of ``[sync] page_size`` (1,000) entries, then catch-up pages of
5,000, each fetched while the one before is applied); items/s, and the CPU
seconds of A and B (from /proc), which the other load on a shared machine
disturbs far less than the wall time. Goal: under 10 s. Meanwhile a thread
(on core 1) sends ``GET /api/v1/search?q=WORD`` to B one after the other,
with common title words, and records each latency and hit count: search
must keep answering while the registry is being filled. The same queries
are timed again on the idle node after the sync.

Baseline, in the same run: the same rows (read back from B's registry)
inserted with plain sqlite3 ``executemany`` into a freshly migrated
database: ``registry_items`` and ``registry_fts``, one transaction per
1,000 rows, WAL and ``synchronous=NORMAL`` as the node uses. Ratio =
baseline time / sync time.

Last, where a page's time goes: A's and B's steps run one after the other
in this process on 4 catch-up pages, in CPU ms per 1,000 items.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import shutil
import sqlite3
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from _common import header, install_cleanup, machine_line, median, save_result, temp_dir, verdict
from _fed import FedNode, PySpy, all_peers_synced, cpu_seconds, http_json, wait_for
from blake3 import blake3
from search import Zipf, normalize, title_for, vocabulary

from priv_network import db
from priv_network.manifest import manifest_hash
from registry.service import CATCH_UP_PAGE

GOAL_S = 10.0
A_CORE, B_CORE = "1", "0"
BLOCK = 1 << 20
KINDS = (
    ("video", "video/mp4", "h264", "aac", "mp4"),
    ("video", "video/x-matroska", "hevc", "opus", "matroska"),
    ("audio", "audio/mpeg", None, "mp3", "mp3"),
    ("image", "image/jpeg", None, None, None),
)
PROFILE_UNDER = (
    "apply_page",
    "index_items",
    "unindex_items",
    "from_json",
    "fetch_changes",
    "changes_since",
    "changes (node/service.py",
    "to_json",
    "json_response",
    "dumps",
    "loads",
    "search (registry",
    "verify",
    "sign",
)
GENRES = ("Drama", "Comedy", "Documentary", "Animation", "Thriller", "Family", "Music", "Sci-Fi")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


# -- seeding A -------------------------------------------------------------------------


def seed_items(path: Path, n: int, seed: int) -> tuple[float, list[str]]:
    """Write ``n`` items into a stopped node's database, as CmaStore.add_item would; returns (s, words)."""
    rng = random.Random(seed)
    z = Zipf(vocabulary(rng), rng)
    t0 = time.perf_counter()
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA foreign_keys=ON")
        item_cols = {r[1] for r in con.execute("PRAGMA table_info(items)")}
        required = {r[1] for r in con.execute("PRAGMA table_info(items)") if r[3] and r[4] is None and not r[5]}
        now = time.time()
        batch = 10_000
        for start in range(0, n, batch):
            blobs, items, changes = [], [], []
            for i in range(start, min(start + batch, n)):
                title = title_for(z)
                content = f"priv_network bench item {i} {title}".encode()
                chash = blake3(content).hexdigest()
                manifest = blake3(content).digest()  # one block: the manifest is that block's hash
                kind, mime, vcodec, acodec, container = KINDS[rng.choices((0, 1, 2, 3), weights=(5, 2, 2, 1))[0]]
                created = now - rng.random() * 3 * 365 * 86400
                item_id = base64.b32encode(rng.randbytes(16)).decode().lower().rstrip("=")
                blobs.append(
                    (chash, len(content), BLOCK, manifest, manifest_hash(BLOCK, len(content), manifest), False, created)
                )
                row: dict[str, Any] = {
                    "id": item_id,
                    "content_hash": chash,
                    "title": title,
                    "kind": kind,
                    "mime": mime,
                    "size": len(content),
                    "duration": rng.uniform(60, 9000) if kind in ("video", "audio") else None,
                    "width": 1920 if kind in ("video", "image") else None,
                    "height": 1080 if kind in ("video", "image") else None,
                    "video_codec": vcodec,
                    "audio_codec": acodec,
                    "container": container,
                    "visibility": "network",
                    "source": "local",
                    "original_name": f"{title}.{container or 'jpg'}",
                    "warning": None,
                    "created_at": created,
                    "updated_at": created,
                    "year": rng.randrange(1950, 2026) if rng.random() < 0.6 else None,
                    "genres": ",".join(rng.sample(GENRES, rng.randint(1, 2))) if rng.random() < 0.5 else None,
                }
                items.append(row)
                changes.append(("item", item_id, "upsert", created))
            missing = required - set(items[0])
            if missing:
                raise SystemExit(f"items has new required column(s) {', '.join(sorted(missing))}: teach this bench")
            cols = [c for c in items[0] if c in item_cols]
            con.executemany(
                "INSERT INTO blobs (hash, size, block_size, manifest, manifest_hash, poster, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                blobs,
            )
            con.executemany(
                f"INSERT INTO items ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                ([r[c] for c in cols] for r in items),
            )
            con.executemany("INSERT INTO changes (entity, entity_id, op, at) VALUES (?, ?, ?, ?)", changes)
            con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    # common words: the queries sent while syncing
    words = [normalize(w) for w in z.words[:200] if len(normalize(w)) >= 3][:40]
    return time.perf_counter() - t0, words


# -- searching while B syncs --------------------------------------------------------------


class Searcher(threading.Thread):
    """Sends searches to B one after the other until stopped; records (t, latency s, hits, ok)."""

    def __init__(self, node: FedNode, words: list[str], pause: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.words = words
        self.pause = pause
        self.samples: list[tuple[float, float, int, bool]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self._halt.is_set():
            q = self.words[i % len(self.words)]
            i += 1
            url = f"{self.node.url}/api/v1/search?" + urllib.parse.urlencode({"q": q, "limit": "50"})
            t0 = time.perf_counter()
            try:
                hits = len(http_json(url, token=self.node.token, timeout=60)["results"])
                ok = True
            except Exception:
                hits, ok = 0, False
            self.samples.append((t0, time.perf_counter() - t0, hits, ok))
            self._halt.wait(self.pause)

    def stop(self) -> list[tuple[float, float, int, bool]]:
        self._halt.set()
        self.join()
        return self.samples


# -- baseline -----------------------------------------------------------------------------------


async def _migrate(path: Path) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await db.upgrade(engine)
    finally:
        await engine.dispose()


def baseline_insert(rows: list[tuple[Any, ...]], cols: list[str], path: Path, page: int) -> tuple[float, float]:
    """Plain executemany of the same registry rows (+ FTS), one transaction per ``page`` rows."""
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    asyncio.run(_migrate(path))
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        insert = f"INSERT INTO registry_items (id, {', '.join(cols)}) VALUES ({', '.join('?' * (len(cols) + 1))})"
        text_at = cols.index("search_text")
        c0 = time.process_time()
        t0 = time.perf_counter()
        for start in range(0, len(rows), page):
            chunk = rows[start : start + page]
            con.execute("BEGIN")
            con.executemany(insert, ((start + i + 1, *r) for i, r in enumerate(chunk)))
            con.executemany(
                "INSERT INTO registry_fts(rowid, search_text) VALUES (?, ?)",
                ((start + i + 1, r[text_at]) for i, r in enumerate(chunk)),
            )
            con.execute("COMMIT")
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        con.close()


def registry_rows(path: Path, node_id: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(registry_items)") if r[1] != "id"]
        rows = list(
            con.execute(f"SELECT {', '.join(cols)} FROM registry_items WHERE node_id = ? ORDER BY id", (node_id,))
        )
    finally:
        con.close()
    return cols, rows


# -- where a page's time goes, in this process ---------------------------------------------------------


async def _breakdown(a_db: Path, a_id: str, b_db: Path, b_id: str, *, pages: int, page_size: int) -> dict[str, float]:
    """CPU of each step of serving (A) and applying (B) ``pages`` feed pages, in ms per 1,000 items.

    Process CPU time (every thread: SQLite runs in aiosqlite's), so that the
    other load on the machine does not count.
    """
    import json as jsonlib
    from concurrent.futures import ThreadPoolExecutor

    from node.blobs import BlobStore
    from node.service import ContentManager
    from node.store import CmaStore
    from priv_network.wire import FeedPage
    from registry.store import RegistryStore

    t: dict[str, float] = dict.fromkeys(
        ("a_sql", "a_build", "a_to_json", "a_dumps", "b_loads", "b_from_json", "b_apply", "b_fts"), 0.0
    )
    a_engine = db.create_engine(f"sqlite+aiosqlite:///{a_db}")
    b_engine = db.create_engine(f"sqlite+aiosqlite:///{b_db}")
    try:
        store = CmaStore(a_engine)
        cma = ContentManager(
            store=store,
            blobs=BlobStore(a_db.parent / "store", BLOCK, 0),
            executor=ThreadPoolExecutor(1),
            node_id=a_id,
            node_name="alice",
            node_url="http://a",
            hash_workers=1,
        )
        cma._feed_id = await store.get_meta("feed_id")  # what ContentManager.start() sets
        registry = RegistryStore(b_engine)
        backend = registry.search_backend
        real_index, real_unindex = backend.index_items, backend.unindex_items
        clock = time.process_time

        async def timed_index(conn: Any, node_id: str, item_ids: Any) -> None:
            t0 = clock()
            await real_index(conn, node_id, item_ids)
            t["b_fts"] += clock() - t0

        async def timed_unindex(conn: Any, node_id: str, item_ids: Any) -> None:
            t0 = clock()
            await real_unindex(conn, node_id, item_ids)
            t["b_fts"] += clock() - t0

        backend.index_items = timed_index  # type: ignore[method-assign]
        backend.unindex_items = timed_unindex  # type: ignore[method-assign]
        cursor, items = 0, 0
        for _ in range(pages):
            t0 = clock()
            await store.changes_since(cursor, page_size + 1)
            t["a_sql"] += clock() - t0
            t0 = clock()
            page = await cma.changes(cursor, page_size, viewer=b_id)
            t["a_build"] += clock() - t0  # includes a second changes_since: subtracted below
            t0 = clock()
            data = page.to_json()
            t["a_to_json"] += clock() - t0
            t0 = clock()
            raw = jsonlib.dumps(data)
            t["a_dumps"] += clock() - t0
            t0 = clock()
            parsed = jsonlib.loads(raw)
            t["b_loads"] += clock() - t0
            t0 = clock()
            fp = FeedPage.from_json(parsed, limit=page_size)
            t["b_from_json"] += clock() - t0
            t0 = clock()
            await registry.apply_page(a_id, fp, reset=False)
            t["b_apply"] += clock() - t0
            items += sum(1 for e in fp.entries if e.entity == "item")
            cursor = fp.next
            if not fp.more:
                break
        t["a_build"] -= t["a_sql"]
        t["b_apply"] -= t["b_fts"]
        return {k: v / items * 1000 * 1000 for k, v in t.items()}  # ms per 1,000 items
    finally:
        await a_engine.dispose()
        await b_engine.dispose()


def breakdown(a: FedNode, b_saved: Path, b_id: str, root: Path, pages: int) -> dict[str, float]:
    work = root / "breakdown"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for f in b_saved.iterdir():
        shutil.copy2(f, work / f.name)
    return asyncio.run(_breakdown(a.db_path, a.node_id, work / "node.db", b_id, pages=pages, page_size=CATCH_UP_PAGE))


def copy_db(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        f = Path(f"{src}{suffix}")
        if f.exists():
            shutil.copy2(f, dst / f.name)


def restore_db(saved: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    for f in saved.iterdir():
        shutil.copy2(f, target.parent / f.name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000, help="items on A (default 100,000)")
    ap.add_argument(
        "--repeats", type=int, default=1, help="timed syncs, each from B's empty state (default 1: ~2 min each here)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="py-spy both nodes during the first measured sync")
    args = ap.parse_args()
    args.repeats = max(1, min(args.repeats, 10))

    install_cleanup()
    os.sched_setaffinity(0, {int(A_CORE)})  # this script and its search thread share core 1 with A
    print(f"initial sync benchmark: {args.items:,} items, {args.repeats} repeats; B on core {B_CORE}, A on {A_CORE}")
    print(f"machine: {machine_line()}", flush=True)
    root = temp_dir("sync-initial-")
    quiet = {"sync": {"interval": "1h"}, "store": {"min_free": "0"}}
    a = FedNode(root, "alice", "127.0.0.1", sections=quiet)
    b = FedNode(root, "bob", "127.0.0.2", sections=quiet)
    try:
        header("setting up: B joins A's (empty) group")
        a.serve(core=A_CORE)
        b.serve(core=B_CORE)
        b.join(a.invite())
        wait_for(lambda: all_peers_synced(b, 1) and all_peers_synced(a, 1), timeout=60, what="join")
        a.stop()
        b.stop()
        saved = root / "bob-empty"
        copy_db(b.db_path, saved)

        header(f"seeding A's database with {args.items:,} items (A stopped)")
        seed_s, words = seed_items(a.db_path, args.items, args.seed)
        print(f"seeded in {seed_s:.1f} s ({args.items / seed_s:,.0f} items/s)")
        a.serve(core=A_CORE)

        header(f"priv-network sync on B ({args.repeats} repeats, each from B's empty registry)")
        runs: list[dict[str, Any]] = []
        for r in range(args.repeats):
            if r:
                restore_db(saved, b.db_path)
            b.serve(core=B_CORE)
            before = {p["node_id"]: p["items"] for p in b.peers()}
            assert before.get(a.node_id, 0) == 0, before
            searcher = Searcher(b, words)
            searcher.start()
            time.sleep(0.5)  # a few searches on the idle node first
            spies = []
            if args.profile and not runs:
                spies = [PySpy(n.pid, root / f"pyspy-{n.name}.txt") for n in (a, b)]
                spies = [s for s in spies if s.start()]
            cpu0 = {n.name: cpu_seconds(n.pid) for n in (a, b)}
            t0 = time.perf_counter()
            out = b.cli("sync", timeout=1800)
            sync_s = time.perf_counter() - t0
            cpu = {n.name: cpu_seconds(n.pid) - cpu0[n.name] for n in (a, b)}
            for spy in spies:
                spy.stop()
            time.sleep(0.3)
            samples = searcher.stop()
            line = next((x for x in out.splitlines() if x.startswith(a.node_id)), "")
            got = {p["node_id"]: p["items"] for p in b.peers()}[a.node_id]
            if "error" in line or got != args.items:
                tail = b.log_tail()
                b.stop()
                raise SystemExit(
                    f"initial sync FAILED after {sync_s:.2f} s: B has {got:,} of {args.items:,} items;"
                    f" `sync` says: {line.split('  ', 1)[-1].strip()}\n{tail}"
                )
            during = [s for s in samples if t0 <= s[0] and s[0] + s[1] <= t0 + sync_s]
            # the same queries on the idle, filled node
            idle: list[float] = []
            for q in words:
                url = f"{b.url}/api/v1/search?" + urllib.parse.urlencode({"q": q, "limit": "50"})
                s0 = time.perf_counter()
                http_json(url, token=b.token)
                idle.append(time.perf_counter() - s0)
            lat = [s[1] * 1000 for s in during]
            run = {
                "sync_s": sync_s,
                "items_per_s": got / sync_s,
                "items": got,
                "searches_during": len(during),
                "search_errors_during": sum(1 for s in during if not s[3]),
                "search_with_hits_during": sum(1 for s in during if s[2] > 0),
                "search_p50_ms": pct(lat, 50),
                "search_p95_ms": pct(lat, 95),
                "search_max_ms": max(lat) if lat else float("nan"),
                "search_idle_p50_ms": pct([x * 1000 for x in idle], 50),
                "search_idle_p95_ms": pct([x * 1000 for x in idle], 95),
                "cpu_a_s": cpu["alice"],
                "cpu_b_s": cpu["bob"],
            }
            runs.append(run)
            for spy, n in zip(spies, (a, b), strict=False):
                print(f"  py-spy of {n.name} during the sync:")
                print("    " + spy.summary(inclusive=PROFILE_UNDER).replace("\n", "\n    "))
            print(
                f"  run {len(runs)}: {got:,} items in {sync_s:.2f} s"
                f" = {got / sync_s:,.0f} items/s; {len(during)} searches during the sync"
                f" ({run['search_errors_during']} errors, {run['search_with_hits_during']} with hits):"
                f" p50 {run['search_p50_ms']:.0f} ms, p95 {run['search_p95_ms']:.0f} ms,"
                f" max {run['search_max_ms']:.0f} ms (idle after: p50 {run['search_idle_p50_ms']:.0f} ms,"
                f" p95 {run['search_idle_p95_ms']:.0f} ms); CPU: A (serving the feed) {cpu['alice']:.2f} s,"
                f" B (fetching, applying, answering searches) {cpu['bob']:.2f} s",
                flush=True,
            )
            b.stop()

        header("baseline: plain sqlite3 executemany of the same rows into a fresh registry (1,000 rows/commit)")
        cols, rows = registry_rows(b.db_path, a.node_id)
        base: list[float] = []
        base_cpu: list[float] = []
        os.sched_setaffinity(0, {int(B_CORE)})  # the core B ran on
        for r in range(max(3, args.repeats)):
            wall, cpu_s = baseline_insert(rows, cols, root / "baseline.db", 1000)
            base.append(wall)
            base_cpu.append(cpu_s)
            print(
                f"  run {r + 1}: {len(rows):,} rows in {wall:.2f} s = {len(rows) / wall:,.0f} rows/s"
                f" (CPU {cpu_s:.2f} s)"
            )
        os.sched_setaffinity(0, {int(A_CORE)})

        header(
            f"where a page's time goes: serving (A) and applying (B) 4 pages of {CATCH_UP_PAGE:,} in this process,"
            " CPU ms per 1,000 items"
        )
        os.sched_setaffinity(0, {int(B_CORE)})
        parts = breakdown(a, saved, b.node_id, root, 4)
        os.sched_setaffinity(0, {int(A_CORE)})
        a_total = sum(v for k, v in parts.items() if k.startswith("a_"))
        b_total = sum(v for k, v in parts.items() if k.startswith("b_"))
        print(
            f"  A {a_total:.0f} ms: SQL (changes_since) {parts['a_sql']:.0f}, build entries (ContentManager.changes)"
            f" {parts['a_build']:.0f}, FeedPage.to_json {parts['a_to_json']:.0f},"
            f" json.dumps {parts['a_dumps']:.0f}"
        )
        print(
            f"  B {b_total:.0f} ms: json.loads {parts['b_loads']:.0f}, FeedPage.from_json {parts['b_from_json']:.0f},"
            f" apply_page without FTS (rows, upsert, commit) {parts['b_apply']:.0f},"
            f" FTS (unindex_items + index_items) {parts['b_fts']:.0f}"
        )

        sync_med = median([x["sync_s"] for x in runs])
        ratio = median(base) / sync_med
        sync_cpu = median([x["cpu_a_s"] + x["cpu_b_s"] for x in runs])
        cpu_ratio = median(base_cpu) / sync_cpu
        ok = sync_med < GOAL_S
        summary = {
            "items": args.items,
            "seed_s": seed_s,
            "runs": runs,
            "sync_s": sync_med,
            "items_per_s": args.items / sync_med,
            "baseline_s": median(base),
            "baseline_rows_per_s": len(rows) / median(base),
            "baseline_cpu_s": median(base_cpu),
            "ratio": ratio,
            "cpu_ratio": cpu_ratio,
            "breakdown_ms_per_1000": parts,
            "cpu_a_s": median([x["cpu_a_s"] for x in runs]),
            "cpu_b_s": median([x["cpu_b_s"] for x in runs]),
            "search_p50_ms": median([x["search_p50_ms"] for x in runs]),
            "search_p95_ms": median([x["search_p95_ms"] for x in runs]),
            "search_max_ms": max(x["search_max_ms"] for x in runs),
            "search_errors": sum(x["search_errors_during"] for x in runs),
            "goal_s": GOAL_S,
            "met": ok,
        }
        header("results (medians over repeats)")
        print(
            f"initial sync of {args.items:,} items: {sync_med:.2f} s = {args.items / sync_med:,.0f} items/s"
            f"   goal < {GOAL_S:g} s: {verdict(ok)}"
        )
        print(
            f"baseline executemany of the same rows: {median(base):.2f} s = {len(rows) / median(base):,.0f} rows/s;"
            f" ratio (baseline time / sync time) {ratio:.3f}; by CPU: baseline {median(base_cpu):.2f} s vs"
            f" A + B {sync_cpu:.1f} s, ratio {cpu_ratio:.3f}"
        )
        print(
            f"where the time goes: CPU of A (serving the feed) {summary['cpu_a_s']:.1f} s,"
            f" of B (fetch, parse, apply, index, plus the searches) {summary['cpu_b_s']:.1f} s"
        )
        print(
            f"search during the sync: p50 {summary['search_p50_ms']:.0f} ms, p95 {summary['search_p95_ms']:.0f} ms,"
            f" max {summary['search_max_ms']:.0f} ms, {summary['search_errors']} errors"
        )
        print(f"saved {save_result('sync_initial', summary)}")
        return 0 if ok else 1
    finally:
        b.stop()
        a.stop()


if __name__ == "__main__":
    sys.exit(main())
