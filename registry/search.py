"""Search over the registry: one interface, a backend per database.

Text is normalized the same way when indexed and when queried: Unicode NFKD,
combining marks dropped (so "amélie" matches "Amelie"), case-folded, and
split on anything that is not a letter or digit (so "spider man" matches
"Spider-Man"). The last query word is always a prefix ("as you type").

Ranking is tiered, so that it stays fast on a million rows:

1. items containing every query word as a whole word: of the newest 1,000
   such items, the shortest titles first (every one contains every query
   word, so what relevance scoring adds is mostly "fewer other words");
2. then items where the last word is only a prefix of a word, newest first.
   Scoring these by relevance would mean scoring every match of a
   two-letter prefix (hundreds of thousands of rows) before the LIMIT; the
   index instead walks them in row order and stops at the LIMIT.

On PostgreSQL a trigram search is the fallback when the full-text query
finds nothing (typos): each query word must be close to a whole word of the
title (strict word similarity), so words stay AND-ed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from priv_network.interfaces import SearchFilters
from registry.models import entries, sources

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
MIN_PREFIX = 2
# Whole-word matches considered for ranking: the newest this many. Ranking
# every match of a common word (BM25 over hundreds of thousands of rows) is
# what made short queries slow; within the window, shorter titles rank first,
# which is what BM25 amounts to when every row contains every query word.
TIER1_WINDOW = 1000
MAX_QUERY_WORDS = 12


def normalize(text: str) -> str:
    if text.isascii():
        # ASCII has nothing to decompose and no combining marks, and casefold()
        # is lower() there: the same result without the per-character pass.
        return " ".join(_NON_WORD.sub(" ", text.lower()).split())
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(_NON_WORD.sub(" ", stripped.casefold()).split())


def query_words(query: str) -> list[str]:
    return normalize(query).split()[:MAX_QUERY_WORDS]


@dataclass(frozen=True)
class Hit:
    row: dict[str, Any]
    source_name: str
    online: bool


_HIT_COLUMNS = [*entries.c, sources.c.name.label("source_name"), sources.c.online.label("source_online")]


def filters_clause(filters: SearchFilters | None) -> list[sa.ColumnElement[bool]]:
    out: list[sa.ColumnElement[bool]] = []
    if filters is not None:
        if filters.node:
            out.append(entries.c.node_id == filters.node)
        if filters.kind:
            out.append(entries.c.kind == filters.kind)
        if filters.year is not None:
            out.append(entries.c.year == filters.year)
        if filters.source:
            out.append(entries.c.source == filters.source)
        if filters.genre:
            genre = filters.genre.replace("%", "").replace("_", "").lower()
            out.append(sa.func.lower("," + sa.func.coalesce(entries.c.genres, "") + ",").like(f"%,{genre},%"))
        if filters.online:
            out.append(sources.c.online.is_(True))
    return out


def _hits(rows: Any) -> list[Hit]:
    out = []
    for row in rows.mappings():
        data = dict(row)
        out.append(Hit(row=data, source_name=data.pop("source_name") or "", online=bool(data.pop("source_online"))))
    return out


class SearchBackend(Protocol):
    """Keeps the index in step with ``registry_items``, inside the caller's transaction."""

    async def index_items(self, conn: AsyncConnection, node_id: str, item_ids: Sequence[str]) -> None:
        """Index these rows of ``node_id`` as they are stored now (after they were inserted or updated)."""
        ...

    async def unindex_items(self, conn: AsyncConnection, node_id: str, item_ids: Sequence[str] | None) -> None:
        """Drop the index entries of these rows of ``node_id`` (all of its rows if None) before they change or go.

        Rows that do not exist (yet) are skipped at the cost of one index probe each.
        """
        ...

    async def search(
        self, conn: AsyncConnection, words: list[str], limit: int, filters: SearchFilters | None
    ) -> list[Hit]: ...


_FTS = sa.table("registry_fts", sa.column("rowid"), sa.column("search_text"))
# Item IDs per statement: below the 999 host parameters older SQLite builds allow.
_ID_CHUNK = 500


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[start : start + _ID_CHUNK] for start in range(0, len(ids), _ID_CHUNK)]


class SqliteSearch:
    """FTS5 with prefix indexes on 2 and 3 characters.

    The index is a separate FTS5 table keyed by ``registry_items.id``. Rows
    go in and out of it with INSERT ... SELECT and DELETE ... WHERE rowid IN
    (SELECT ...) on ``registry_items`` itself, so neither the row IDs nor the
    text make a round trip through Python.
    """

    async def index_items(self, conn: AsyncConnection, node_id: str, item_ids: Sequence[str]) -> None:
        # In rowid order: FTS5 writes a new segment whenever a rowid is not
        # above the last one written in the transaction, which made indexing
        # a page in item-ID order (the unique index's order) 3x slower.
        for chunk in _chunks(item_ids):
            await conn.execute(
                sa.insert(_FTS).from_select(
                    ["rowid", "search_text"],
                    sa.select(entries.c.id, entries.c.search_text)
                    .where(entries.c.node_id == node_id, entries.c.item_id.in_(chunk))
                    .order_by(entries.c.id),
                )
            )

    async def unindex_items(self, conn: AsyncConnection, node_id: str, item_ids: Sequence[str] | None) -> None:
        rows = sa.select(entries.c.id).where(entries.c.node_id == node_id)
        for chunk in [None] if item_ids is None else _chunks(item_ids):
            await conn.execute(
                sa.delete(_FTS).where(
                    _FTS.c.rowid.in_(rows if chunk is None else rows.where(entries.c.item_id.in_(chunk)))
                )
            )

    async def search(
        self, conn: AsyncConnection, words: list[str], limit: int, filters: SearchFilters | None
    ) -> list[Hit]:
        if not words:
            return []
        fts = sa.table("registry_fts", sa.column("rowid"), sa.column("rank"), sa.column("registry_fts"))
        exact = " ".join(f'"{w}"' for w in words)
        base = (
            sa.select(*_HIT_COLUMNS)
            .select_from(
                fts.join(entries, entries.c.id == fts.c.rowid).outerjoin(
                    sources, sources.c.node_id == entries.c.node_id
                )
            )
            .where(*filters_clause(filters))
        )
        window = (
            sa.select(fts.c.rowid.label("rowid"))
            .where(sa.text("registry_fts MATCH :q").bindparams(q=exact))
            .order_by(fts.c.rowid.desc())
            .limit(TIER1_WINDOW)
            .subquery("tier1")
        )
        tier1 = _hits(
            await conn.execute(
                sa.select(*_HIT_COLUMNS)
                .select_from(
                    window.join(entries, entries.c.id == window.c.rowid).outerjoin(
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
        seen = [h.row["id"] for h in tier1]
        prefix = " ".join([*(f'"{w}"' for w in words[:-1]), f'"{words[-1]}"*'])
        query = base.where(sa.text("registry_fts MATCH :p").bindparams(p=prefix))
        if seen:
            query = query.where(entries.c.id.not_in(seen))
        tier2 = _hits(await conn.execute(query.order_by(fts.c.rowid.desc()).limit(limit - len(tier1))))
        return tier1 + tier2


class PostgresSearch:
    """tsvector ('simple' config on normalized text) with prefix queries, trigram fallback."""

    async def index_items(self, conn: AsyncConnection, node_id: str, item_ids: Sequence[str]) -> None:
        return None  # expression indexes on registry_items.search_text follow the rows

    async def unindex_items(self, conn: AsyncConnection, node_id: str, item_ids: Sequence[str] | None) -> None:
        return None

    async def search(
        self, conn: AsyncConnection, words: list[str], limit: int, filters: SearchFilters | None
    ) -> list[Hit]:
        if not words:
            return []
        vector = sa.func.to_tsvector(sa.literal_column("'simple'"), entries.c.search_text)
        base = (
            sa.select(*_HIT_COLUMNS)
            .select_from(entries.outerjoin(sources, sources.c.node_id == entries.c.node_id))
            .where(*filters_clause(filters))
        )
        exact_q = sa.func.to_tsquery(sa.literal_column("'simple'"), " & ".join(words))
        window = (
            sa.select(entries.c.id.label("wid"))
            .where(vector.op("@@")(exact_q))
            .order_by(entries.c.id.desc())
            .limit(TIER1_WINDOW)
            .subquery("tier1")
        )
        tier1 = _hits(
            await conn.execute(
                base.join(window, window.c.wid == entries.c.id)
                .order_by(sa.func.length(entries.c.search_text), entries.c.id.desc())
                .limit(limit)
            )
        )
        if len(tier1) >= limit:
            return tier1
        seen = [h.row["id"] for h in tier1]
        hits = tier1
        if len(words[-1]) >= MIN_PREFIX:
            prefix_q = sa.func.to_tsquery(sa.literal_column("'simple'"), " & ".join([*words[:-1], words[-1] + ":*"]))
            query = base.where(vector.op("@@")(prefix_q))
            if seen:
                query = query.where(entries.c.id.not_in(seen))
            hits = hits + _hits(await conn.execute(query.order_by(entries.c.id.desc()).limit(limit - len(hits))))
        if not hits and len(" ".join(words)) >= 3:
            # Typos: every word (AND, as above) must be close to a whole word of
            # the title. Comparing the whole query with the whole title instead
            # let "spider amelie" find "Amélie" alone.
            close = [entries.c.search_text.op("%>>")(w) for w in words]
            score = sum((sa.func.strict_word_similarity(w, entries.c.search_text) for w in words), sa.literal(0.0))
            hits = _hits(
                await conn.execute(base.where(*close).order_by(score.desc(), entries.c.id.desc()).limit(limit))
            )
        return hits


def backend_for(dialect: str) -> SearchBackend:
    return SqliteSearch() if dialect == "sqlite" else PostgresSearch()
