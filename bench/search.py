"""Search benchmark: RegistryStore.search over 1,000,000 registry rows on SQLite.

    .venv/bin/python bench/search.py [--rows 1000000] [--queries 200] [--rebuild]

The database is a real one: ``priv_network.db.create_engine`` +
``priv_network.db.upgrade`` (every migration), then ``registry_sources`` (50
owners), ``registry_items`` and ``registry_fts`` bulk-filled with plain
sqlite3 ``executemany`` in the schema the migrations made. Titles are 3-6
words drawn from a 20,000-word synthetic vocabulary with Zipf frequencies
(s = 1: a few short words are very common, most are rare, as in real titles);
``search_text`` is ``registry.search.normalize(title)``. The database is
cached in bench/out/ (keyed by rows, seed and the migration head), so reruns
skip the build.

Queries go through the real code path, ``registry.store.RegistryStore.search``
(async SQLAlchemy on aiosqlite), LIMIT 50, four kinds with ~200 random queries
each; words are drawn with the titles' own frequencies (so common words come up
as often as they would in what people type):

* ``word``: one whole word
* ``prefix2``: the first 2 characters of a word (typing "as you type")
* ``prefix3``: the first 3 characters of a word
* ``word+prefix``: a word and the first 2-4 characters of the word after it in
  a real title

Baseline, in the same run and on the same database, one query after the
other: a plain FTS5 ``SELECT rowid FROM registry_fts WHERE registry_fts MATCH ?
ORDER BY rank LIMIT 50`` with the same meaning (every word, the last as a
prefix). Goal: p95 < 20 ms for every kind.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import OUT, header, machine_line, read_through, run_main, save_result, verdict

from priv_network import db
from registry.search import normalize
from registry.store import RegistryStore

GOAL_P95_MS = 20.0
LIMIT = 50
VOCABULARY = 20_000
OWNERS = 50
ZIPF_S = 1.0
GENERATOR = 2  # bump when the generated data changes, to invalidate cached databases

KINDS = ("word", "prefix2", "prefix3", "word+prefix")
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
_ACCENTED = {"a": "á", "e": "é", "i": "í", "o": "ö", "u": "ü"}


# -- synthetic data ---------------------------------------------------------------------


def vocabulary(rng: random.Random) -> list[str]:
    """20,000 distinct pronounceable words, shortest first (short words are the common ones)."""
    words: set[str] = set()
    plain: set[str] = set()  # normalized forms: "lí" and "li" would be one word to the search
    while len(words) < VOCABULARY:
        syllables = rng.choices([1, 2, 3, 4], weights=[2, 5, 4, 2])[0]
        w = ""
        for _ in range(syllables):
            w += rng.choice(_CONSONANTS) + rng.choice(_VOWELS)
            if rng.random() < 0.3:
                w += rng.choice(_CONSONANTS)
        if rng.random() < 0.03:  # a few accented words: search must ignore accents
            i = rng.randrange(len(w))
            w = w[:i] + _ACCENTED.get(w[i], w[i]) + w[i + 1 :]
        if normalize(w) not in plain:
            plain.add(normalize(w))
            words.add(w)
    ordered = sorted(words)
    rng.shuffle(ordered)
    ordered.sort(key=len)  # stable: random order within a length
    return ordered


class Zipf:
    def __init__(self, words: list[str], rng: random.Random) -> None:
        self.words = words
        self.rng = rng
        self.cum = list(itertools.accumulate(1.0 / (rank + 1) ** ZIPF_S for rank in range(len(words))))

    def draw(self, k: int = 1) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum, k=k)

    def share(self, word_index: int) -> float:
        return (self.cum[word_index] - (self.cum[word_index - 1] if word_index else 0.0)) / self.cum[-1]


def title_for(z: Zipf) -> str:
    words = z.draw(z.rng.randint(3, 6))
    return " ".join(w.capitalize() for w in words)


def item_id(rng: random.Random) -> str:
    return base64.b32encode(rng.randbytes(16)).decode().lower().rstrip("=")


def node_id(rng: random.Random) -> str:
    raw = base64.b32encode(rng.randbytes(20)).decode()[:32]
    return "-".join(raw[i : i + 8] for i in range(0, 32, 8))


def db_path(rows: int, seed: int) -> Path:
    return OUT / f"search-{rows}-s{seed}-g{GENERATOR}-rev{db.head_revision()}.db"


async def migrate(path: Path) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await db.upgrade(engine)
    finally:
        await engine.dispose()


def build(path: Path, rows: int, seed: int) -> None:
    tmp = path.with_suffix(".building")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    asyncio.run(migrate(tmp))
    rng = random.Random(seed)
    z = Zipf(vocabulary(rng), rng)
    con = sqlite3.connect(tmp)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")
        owners = [node_id(rng) for _ in range(OWNERS)]
        source_cols = {r[1] for r in con.execute("PRAGMA table_info(registry_sources)")}
        for i, owner in enumerate(owners):
            values = {"node_id": owner, "name": f"node{i:02d}", "url": f"http://127.0.0.1:{9000 + i}"}
            if "online" in source_cols:
                values["online"] = i % 10 != 0  # a few owners asleep
            con.execute(
                f"INSERT INTO registry_sources ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
            )

        info = list(con.execute("PRAGMA table_info(registry_items)"))
        kinds = [("video", "video/mp4"), ("audio", "audio/mpeg"), ("image", "image/jpeg"), ("other", "application/pdf")]
        now = time.time()

        def row(i: int) -> dict[str, Any]:
            title = title_for(z)
            kind, mime = kinds[rng.choices((0, 1, 2, 3), weights=(6, 2, 1, 1))[0]]
            created = now - rng.random() * 3 * 365 * 86400
            return {
                "id": i,
                "node_id": owners[rng.randrange(OWNERS)],
                "item_id": item_id(rng),
                "title": title,
                "kind": kind,
                "mime": mime,
                "size": rng.randrange(10**5, 10**10),
                "duration": rng.uniform(60, 9000) if kind in ("video", "audio") else None,
                "width": 1920 if kind in ("video", "image") else None,
                "height": 1080 if kind in ("video", "image") else None,
                "content_hash": rng.randbytes(32).hex(),
                "block_size": 1 << 20,
                "manifest_hash": rng.randbytes(32).hex(),
                "has_poster": kind == "video",
                "visibility": "network",
                "created_at": created,
                "updated_at": created,
                "search_text": normalize(title),
            }

        sample = row(0)
        columns = [c[1] for c in info if c[1] in sample]
        required = {c[1] for c in info if c[3] and c[4] is None and not c[5]}  # NOT NULL, no default, not the key
        missing = required - set(sample)
        if missing:
            raise SystemExit(
                f"registry_items has new required column(s) {', '.join(sorted(missing))}: teach bench/search.py"
            )
        insert = f"INSERT INTO registry_items ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        batch = 50_000
        for start in range(1, rows + 1, batch):
            chunk = [row(i) for i in range(start, min(start + batch, rows + 1))]
            con.executemany(insert, ([r[c] for c in columns] for r in chunk))
            con.executemany(
                "INSERT INTO registry_fts(rowid, search_text) VALUES (?, ?)",
                ((r["id"], r["search_text"]) for r in chunk),
            )
            con.commit()
            print(f"  {min(start + batch - 1, rows):,} rows ({time.perf_counter() - t0:.0f} s)", flush=True)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    tmp.rename(path)
    print(f"built {path.name} in {time.perf_counter() - t0:.0f} s")


# -- queries ------------------------------------------------------------------------------


def make_queries(path: Path, rows: int, n: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed * 7919 + 1)
    z = Zipf(vocabulary(random.Random(seed)), rng)
    queries: dict[str, list[str]] = {k: [] for k in KINDS}
    for _ in range(n):
        queries["word"].append(normalize(z.draw()[0]))
        queries["prefix2"].append(normalize(z.draw()[0])[:2])
        w = ""
        while len(w) < 3:
            w = normalize(z.draw()[0])
        queries["prefix3"].append(w[:3])
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        while len(queries["word+prefix"]) < n:
            (text,) = con.execute(
                "SELECT search_text FROM registry_items WHERE id = ?", (rng.randint(1, rows),)
            ).fetchone()
            words = text.split()
            i = rng.randrange(len(words) - 1)
            nxt = words[i + 1]
            queries["word+prefix"].append(f"{words[i]} {nxt[: min(len(nxt), rng.randint(2, 4))]}")
    finally:
        con.close()
    return queries


def fts_query(query: str) -> str:
    """The same meaning as the product's: every word, the last one as a prefix."""
    words = normalize(query).split()
    return " ".join([*(f'"{w}"' for w in words[:-1]), f'"{words[-1]}"*'])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(path: Path, queries: dict[str, list[str]], warmup: int) -> dict[str, Any]:
    engine = db.create_engine(f"sqlite+aiosqlite:///{path}")
    store = RegistryStore(engine)
    con = sqlite3.connect(path)
    baseline_sql = f"SELECT rowid FROM registry_fts WHERE registry_fts MATCH ? ORDER BY rank LIMIT {LIMIT}"
    results: dict[str, Any] = {}
    try:
        for kind in KINDS:
            for q in queries[kind][:warmup]:  # warm both paths (statement caches, pool)
                await store.search(q, LIMIT, None)
                con.execute(baseline_sql, (fts_query(q),)).fetchall()
        for kind in KINDS:
            prod: list[float] = []
            base: list[float] = []
            cpu: dict[str, list[float]] = {"prod": [], "base": []}
            hits: list[int] = []
            order = ["prod", "base"]
            for i, q in enumerate(queries[kind]):
                for which in order[i % len(order) :] + order[: i % len(order)]:
                    c0 = time.process_time()
                    t0 = time.perf_counter()
                    if which == "prod":
                        found = await store.search(q, LIMIT, None)
                        prod.append((time.perf_counter() - t0) * 1000)
                        hits.append(len(found))
                    else:
                        con.execute(baseline_sql, (fts_query(q),)).fetchall()
                        base.append((time.perf_counter() - t0) * 1000)
                    cpu[which].append((time.process_time() - c0) * 1000)
            slowest = sorted(zip(prod, queries[kind], strict=True), reverse=True)[:3]
            results[kind] = {
                "queries": len(prod),
                "p50_ms": pct(prod, 50),
                "p95_ms": pct(prod, 95),
                "max_ms": max(prod),
                "baseline_p50_ms": pct(base, 50),
                "baseline_p95_ms": pct(base, 95),
                "ratio_p95": pct(prod, 95) / pct(base, 95),
                "mean_hits": statistics.mean(hits),
                "cpu_p50_ms": pct(cpu["prod"], 50),
                "cpu_p95_ms": pct(cpu["prod"], 95),
                "baseline_cpu_p95_ms": pct(cpu["base"], 95),
                "slowest": [{"query": q, "ms": ms} for ms, q in slowest],
                "met": pct(prod, 95) < GOAL_P95_MS,
            }
            r = results[kind]
            print(
                f"{kind:12} product   p50 {r['p50_ms']:6.1f} ms  p95 {r['p95_ms']:7.1f} ms"
                f"  (CPU p95 {r['cpu_p95_ms']:6.1f} ms)"
                f" | baseline p50 {r['baseline_p50_ms']:6.1f} ms  p95 {r['baseline_p95_ms']:7.1f} ms"
                f"  (CPU p95 {r['baseline_cpu_p95_ms']:6.1f} ms) | ratio p95 {r['ratio_p95']:.3f}"
                f" | goal p95 < {GOAL_P95_MS:g} ms: {verdict(r['met'])}",
                flush=True,
            )
    finally:
        con.close()
        await engine.dispose()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="registry rows (default 1,000,000)")
    ap.add_argument("--queries", type=int, default=200, help="queries of each kind (default 200)")
    ap.add_argument("--warmup", type=int, default=10, help="unmeasured queries of each kind first (default 10)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached database")
    args = ap.parse_args()
    # Default settings give the documented figures: bench/out/NAME.json.
    standard = vars(args) == vars(ap.parse_args([]))
    args.queries = max(10, min(args.queries, 5000))

    print(f"search benchmark: {args.rows:,} rows, {args.queries} queries of each kind, LIMIT {LIMIT}")
    print(f"machine: {machine_line()}", flush=True)
    path = db_path(args.rows, args.seed)
    if args.rebuild:
        path.unlink(missing_ok=True)
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        for old in OUT.glob(f"search-{args.rows}-s{args.seed}-*.db"):
            old.unlink()  # an older schema or generator
        header(f"building {path.name} (cached for later runs)")
        build(path, args.rows, args.seed)
    else:
        print(f"using cached {path.relative_to(OUT.parent.parent)}")
    read_through(path)
    queries = make_queries(path, args.rows, args.queries, args.seed)
    rng = random.Random(args.seed)
    z = Zipf(vocabulary(rng), rng)
    print(f"vocabulary: {len(z.words):,} words; the commonest, {z.words[0]!r}, is {z.share(0):.1%} of all title words")
    header("RegistryStore.search (product) vs plain FTS5 MATCH ... ORDER BY rank LIMIT 50 (baseline)")
    results = asyncio.run(measure(path, queries, args.warmup))
    header("slowest product queries")
    for kind in KINDS:
        print(f"{kind:12} " + ", ".join(f"{s['query']!r} {s['ms']:.0f} ms" for s in results[kind]["slowest"]))
    ok = all(r["met"] for r in results.values())
    header("results")
    for kind in KINDS:
        r = results[kind]
        print(
            f"{kind:12} p95 {r['p95_ms']:.1f} ms (baseline {r['baseline_p95_ms']:.1f} ms, ratio {r['ratio_p95']:.3f})"
            f"  goal < {GOAL_P95_MS:g} ms: {verdict(r['met'])}"
        )
    summary = {"rows": args.rows, "queries": args.queries, "kinds": results}
    print(f"saved {save_result('search' if standard else 'search-custom', summary)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
