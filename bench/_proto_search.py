"""A bench-local prototype of the search change docs/benchmarks.md recommends.

``SqliteSearch.search`` ranks tier 1 (every query word as a whole word) with
FTS5's ``ORDER BY rank`` (BM25) before ``LIMIT 50``. BM25 needs, for every
query word, the number of rows containing it (its IDF), and FTS5 gets that
by walking the word's whole doclist; then it scores every match. For a
common word that is a third of a million rows: about half a second, whatever
the LIMIT. (A two-letter query pays it too: its tier 1 looks for the two
letters as a whole word, and short words are the common ones.)

The prototype keeps the tiers and drops BM25: tier 1 takes the newest
``RANK_WINDOW`` whole-word matches (FTS5 reads them in rowid order and stops
there, so the cost no longer grows with the word's frequency) and orders
them by the length of the title's text, shortest first, then newest. Every
row of tier 1 contains every query word, so BM25's IDF weights are the same
for all of them and what is left of BM25 on a short title is mostly "fewer
other words ranks higher": the length order keeps that. Tier 2 (prefix
matches, newest first) is unchanged.

Used by ``bench/search.py --prototype``; nothing under registry/ is edited.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from registry.models import entries, sources
from registry.search import _HIT_COLUMNS, MIN_PREFIX, SqliteSearch, _hits, filters_clause

RANK_WINDOW = 1000


class BoundedRankSearch(SqliteSearch):
    async def search(self, conn: AsyncConnection, words: list[str], limit: int, filters: Any) -> list[Any]:
        if not words:
            return []
        exact = " ".join(f'"{w}"' for w in words)
        window = (
            sa.text("SELECT rowid AS rid FROM registry_fts WHERE registry_fts MATCH :q ORDER BY rowid DESC LIMIT :w")
            .bindparams(q=exact, w=max(RANK_WINDOW, limit))
            .columns(sa.column("rid", sa.Integer))
            .subquery("window")
        )
        tier1 = _hits(
            await conn.execute(
                sa.select(*_HIT_COLUMNS)
                .select_from(
                    window.join(entries, entries.c.id == window.c.rid).outerjoin(
                        sources, sources.c.node_id == entries.c.node_id
                    )
                )
                .where(*filters_clause(filters))
                .order_by(sa.func.length(entries.c.search_text), entries.c.id.desc())
                .limit(limit)
            )
        )
        if len(tier1) >= limit or len(words[-1]) < MIN_PREFIX:
            return tier1
        # Tier 2 exactly as in registry/search.py.
        fts = sa.table("registry_fts", sa.column("rowid"), sa.column("rank"), sa.column("registry_fts"))
        base = (
            sa.select(*_HIT_COLUMNS)
            .select_from(
                fts.join(entries, entries.c.id == fts.c.rowid).outerjoin(
                    sources, sources.c.node_id == entries.c.node_id
                )
            )
            .where(*filters_clause(filters))
        )
        seen = [h.row["id"] for h in tier1]
        prefix = " ".join([*(f'"{w}"' for w in words[:-1]), f'"{words[-1]}"*'])
        query = base.where(sa.text("registry_fts MATCH :p").bindparams(p=prefix))
        if seen:
            query = query.where(entries.c.id.not_in(seen))
        tier2 = _hits(await conn.execute(query.order_by(fts.c.rowid.desc()).limit(limit - len(tier1))))
        return tier1 + tier2
