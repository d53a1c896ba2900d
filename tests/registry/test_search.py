"""Search over the registry, through a real node's API: tokens, accents, prefixes, ranking, filters, bad input."""

from __future__ import annotations

import re
import secrets
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from priv_network.db import is_sqlite
from priv_network.identity import NodeIdentity
from registry.search import MAX_QUERY_WORDS, normalize, query_words
from tests.conftest import RunningNode
from tests.media import make_audio, make_image, make_video

# -- normalize: the one function both the index and the query go through -------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("Spider-Man Homecoming", "spider man homecoming"),
        ("SPIDER-man", "spider man"),
        ("Amélie", "amelie"),
        ("AMÉLIE", "amelie"),
        ("ÉCOLE  des   Beaux-Arts", "ecole des beaux arts"),
        ("Straße", "strasse"),
        ("ﬁlm", "film"),  # ligature
        ("\uff21\uff22\uff23\uff11\uff12\uff13", "abc123"),  # full width
        ("snake_case_title", "snake case title"),
        ("l'été: été!", "l ete ete"),
        ("  \t\n ", ""),
        ("!!! --- ***", ""),
        ('"NEAR" AND (x*)', "near and x"),
        ("Łódź", "łodz"),
        ("日本語のタイトル", "日本語のタイトル"),
        ("e\u0301", "e"),  # a decomposed accent
    ],
)
def test_normalize(text: str, normalized: str) -> None:
    assert normalize(text) == normalized


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_normalize_takes_a_shortcut_for_ascii_with_the_same_result(text: str) -> None:
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    assert normalize(text) == " ".join(re.sub(r"[\W_]+", " ", stripped.casefold()).split())


def test_query_words_are_bounded() -> None:
    assert query_words("Spider-Man: Homecoming") == ["spider", "man", "homecoming"]
    assert query_words("") == []
    words = [f"w{i}" for i in range(MAX_QUERY_WORDS + 10)]
    assert query_words(" ".join(words)) == words[:MAX_QUERY_WORDS]


# -- helpers --------------------------------------------------------------------------


async def add_titled(node: RunningNode, folder: Path, title: str, **extra: Any) -> dict[str, Any]:
    """Add one small file under an exact title (unique bytes, so no dedupe)."""
    folder.mkdir(exist_ok=True)
    path = folder / f"{secrets.token_hex(6)}.txt"
    path.write_text(f"{title}\n{secrets.token_hex(16)}\n")
    report = await node.api("POST", "/api/v1/items", json={"paths": [str(path)], "title": title, **extra})
    (item,) = report["added"]
    assert item["title"] == " ".join(title.split())
    return dict(item)


async def search_raw(node: RunningNode, /, **params: str) -> tuple[int, Any]:
    async with node.client.get("/api/v1/search", params=params, headers=node.auth) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def search(node: RunningNode, q: str, /, **params: str) -> list[dict[str, Any]]:
    status, body = await search_raw(node, q=q, **params)
    assert status == 200, body
    assert body["query"] == q
    return list(body["results"])


async def titles(node: RunningNode, q: str, /, **params: str) -> list[str]:
    return [r["title"] for r in await search(node, q, **params)]


@pytest.fixture
async def films(node: RunningNode, tmp_path: Path) -> RunningNode:
    for title in ("Spider-Man Homecoming", "Amélie", "The Red Car", "A Quiet Place", "Blue Car Blues", "Red Boat"):
        await add_titled(node, tmp_path / "films", title)
    return node


# -- matching ---------------------------------------------------------------------------


async def test_tokens_and_case_do_not_matter(films: RunningNode) -> None:
    for q in [
        "spider man",
        "SPIDER-man",
        "Spider-Man",
        "spider",
        "man",
        "homecoming",
        "spider man homecoming",
        "SpIdEr  MaN",
        "spiderman",
        "spiderm",
        "Spiderman homecoming",
    ]:
        assert await titles(films, q) == ["Spider-Man Homecoming"], q


async def test_accents_in_title_or_query_do_not_matter(films: RunningNode) -> None:
    for q in ["amelie", "amélie", "AMÉLIE", "amel", "ame", "am", "Amé", "ame\u0301lie"]:
        assert await titles(films, q) == ["Amélie"], q


async def test_accented_query_finds_unaccented_title(node: RunningNode, tmp_path: Path) -> None:
    await add_titled(node, tmp_path, "Les Miserables")
    assert await titles(node, "misérables") == ["Les Miserables"]
    assert await titles(node, "MISÉR") == ["Les Miserables"]


async def test_prefix_applies_to_the_last_word_only(films: RunningNode) -> None:
    assert await titles(films, "spider hom") == ["Spider-Man Homecoming"]
    assert await titles(films, "spi") == ["Spider-Man Homecoming"]
    assert await titles(films, "spi man") == []
    assert await titles(films, "sp homecoming") == []


async def test_words_are_anded(films: RunningNode) -> None:
    assert await titles(films, "red car") == ["The Red Car"]
    assert await titles(films, "car red") == ["The Red Car"]
    assert sorted(await titles(films, "car")) == ["Blue Car Blues", "The Red Car"]
    assert sorted(await titles(films, "red")) == ["Red Boat", "The Red Car"]
    assert await titles(films, "spider amelie") == []
    assert await titles(films, "red blue") == []


async def test_typo_fallback_keeps_words_anded(films: RunningNode) -> None:
    """PostgreSQL adds a trigram fallback for typos; it must not turn AND into OR."""
    typo = await titles(films, "spider homecomming")
    assert typo == ([] if is_sqlite(films.config.database_url) else ["Spider-Man Homecoming"])
    assert await titles(films, "spider amelie") == []
    assert await titles(films, "homecomming amelie") == []
    assert await titles(films, "amelie xyzzy") == []


async def test_whole_word_matches_rank_above_prefix_matches(node: RunningNode, tmp_path: Path) -> None:
    # The whole-word matches are added first, so "newest first" alone would put them last.
    await add_titled(node, tmp_path, "Cat Videos")
    await add_titled(node, tmp_path, "The Cat")
    prefix_only = ["Catalog of Ships", "Category Theory", "Catapult Physics", "Concatenated Cats"]
    for title in [*prefix_only, "Concatenation"]:
        await add_titled(node, tmp_path, title)
    found = await titles(node, "cat")
    assert sorted(found[:2]) == ["Cat Videos", "The Cat"]
    assert sorted(found[2:]) == sorted(prefix_only)
    assert "Concatenation" not in found  # a prefix of a word, not a piece of one


async def test_ranking_with_several_words(node: RunningNode, tmp_path: Path) -> None:
    await add_titled(node, tmp_path, "Spider-Man Homecoming")
    await add_titled(node, tmp_path, "Spider Manifesto")  # newer, but "man" is only a prefix of its word
    assert await titles(node, "spider man") == ["Spider-Man Homecoming", "Spider Manifesto"]
    assert await titles(node, "spider manif") == ["Spider Manifesto"]


async def test_one_letter_query(films: RunningNode) -> None:
    found = await titles(films, "a")
    assert "A Quiet Place" in found
    for q in ("z", "é", "1", "日"):
        await search(films, q)


async def test_empty_query_lists_recent_items_newest_first(node: RunningNode, tmp_path: Path) -> None:
    for title in ("First", "Second", "Third"):
        await add_titled(node, tmp_path, title)
    assert await titles(node, "") == ["Third", "Second", "First"]
    assert await titles(node, "   ") == ["Third", "Second", "First"]
    status, body = await search_raw(node)
    assert status == 200 and [r["title"] for r in body["results"]] == ["Third", "Second", "First"]
    assert await titles(node, "", limit="2") == ["Third", "Second"]


async def test_results_say_who_has_the_item(films: RunningNode) -> None:
    (hit,) = await search(films, "amelie")
    item = await films.api("GET", f"/api/v1/items/{hit['id']}")
    assert hit["id"] == item["id"]
    assert hit["title"] == "Amélie"
    assert hit["node"] == films.identity.node_id
    assert hit["node_name"] == "alice"
    assert hit["online"] is True
    assert hit["local"] is True
    assert hit["kind"] == "other"
    assert hit["content_hash"] == item["content_hash"]
    assert hit["content_url"] == f"/api/v1/items/{item['id']}/content"


async def test_search_needs_a_login(films: RunningNode) -> None:
    async with films.client.get("/api/v1/search", params={"q": "spider"}) as resp:
        assert resp.status == 401


# -- hostile and odd input -------------------------------------------------------------------


ODD_QUERIES = [
    '"',
    '""',
    '"spider',
    'spider"',
    '"spider man"',
    "*",
    "spider*",
    "*spider",
    "NEAR",
    "NEAR(spider man)",
    "spider NEAR/2 man",
    "AND",
    "OR",
    "NOT",
    "spider AND man",
    "spider OR amelie",
    "NOT spider",
    "-",
    "-spider",
    "spider -man",
    "(",
    ")",
    "(spider",
    "spider)",
    "()",
    "^spider",
    "title:spider",
    "search_text:spider",
    "registry_fts:spider",
    "{spider man}",
    "[x]",
    "spider:*",
    ":*",
    "a & b | !c",
    "spider <-> man",
    "'",
    "' OR 1=1 --",
    "'; DROP TABLE registry_items; --",
    "\\",
    "%",
    "_",
    "%_%",
    "spider%",
    "$1",
    "?",
    "🎬",
    "🕷️ man",
    "日本語",
    "Ω≈ç√",
    "\u0301",
    "x\u0000y",
    "\u200b",
    "\ufeffspider",
    "ß",
    "ǅ",
    "٣",
    "spider\tman\nhomecoming",
    " ".join(["spider"] * 40),
    "a" * 500,
    "é" * 500,
]


async def test_odd_queries_never_fail(films: RunningNode) -> None:
    failures = []
    for q in ODD_QUERIES:
        for params in ({}, {"kind": "other"}, {"node": films.identity.node_id}):
            status, body = await search_raw(films, q=q, **params)
            if status != 200 or not isinstance(body["results"], list):
                failures.append((q, params, status, body))
    assert failures == []


async def test_odd_queries_still_find_by_their_words(films: RunningNode) -> None:
    for q in ('"spider man"', "(spider)", "spider*", "spider:*", "-spider", "🕷️ spider"):
        assert await titles(films, q) == ["Spider-Man Homecoming"], q
    # Operators are words like any other: no title here has "not", "and" or "or".
    assert await titles(films, "NOT spider") == []
    assert await titles(films, "spider AND man") == []
    assert await titles(films, "spider OR amelie") == []


async def test_overlong_queries_are_refused(films: RunningNode) -> None:
    for q in ["a" * 501, "x " * 300, "é" * 10_000, "spider " * 2000]:
        status, body = await search_raw(films, q=q)
        assert status == 400, (q[:20], body)
        if isinstance(body, dict):  # the longest are refused by the HTTP parser before the app sees them
            assert body["error"]["code"] == "invalid_input"


# -- filters and limits -----------------------------------------------------------------


@pytest.fixture
async def kinds(node: RunningNode, tmp_path: Path) -> RunningNode:
    media = tmp_path / "kinds"
    media.mkdir()
    make_video(media / "Night Train Video.mp4", seconds=0.5, width=64, height=48, fps=5, audio=False)
    make_audio(media / "Night Train Song.mp3", seconds=0.5)
    make_image(media / "Night Train Poster.png")
    (media / "Night Train Notes.txt").write_text("notes\n")
    report = await node.api("POST", "/api/v1/items", json={"paths": [str(media)]})
    assert sorted(i["kind"] for i in report["added"]) == ["audio", "image", "other", "video"]
    return node


async def test_kind_filter(kinds: RunningNode) -> None:
    for kind, title in [
        ("video", "Night Train Video"),
        ("audio", "Night Train Song"),
        ("image", "Night Train Poster"),
        ("other", "Night Train Notes"),
    ]:
        assert await titles(kinds, "night train", kind=kind) == [title]
        assert await titles(kinds, "", kind=kind) == [title]
        results = await search(kinds, "night", kind=kind)
        assert [r["kind"] for r in results] == [kind]


async def test_node_filter(kinds: RunningNode) -> None:
    own = kinds.identity.node_id
    assert len(await titles(kinds, "train", node=own)) == 4
    assert len(await titles(kinds, "train", node=own.lower().replace("-", ""))) == 4
    assert len(await titles(kinds, "", node=own)) == 4
    assert await titles(kinds, "train", node=own, kind="audio") == ["Night Train Song"]
    stranger = NodeIdentity.generate().node_id
    assert await titles(kinds, "train", node=stranger) == []
    assert await titles(kinds, "", node=stranger) == []


BAD_PARAMS: list[dict[str, str]] = [
    {"node": "not-a-node"},
    {"node": "ABCDEFGH-ABCDEFGH-ABCDEFGH-ABCDEFGH"},
    {"node": "x" * 5000},
    {"kind": "movie"},
    {"kind": "VIDEO"},
    {"kind": "video'; --"},
    {"limit": "0"},
    {"limit": "201"},
    {"limit": "-1"},
    {"limit": "ten"},
    {"limit": "1e3"},
    {"limit": "9" * 40},
]


async def test_bad_filters_and_limits_are_400(kinds: RunningNode) -> None:
    for params in BAD_PARAMS:
        for q in ("train", ""):
            status, body = await search_raw(kinds, q=q, **params)
            assert status == 400, (params, body)
            assert body["error"]["code"] == "invalid_input"
            assert "\n" not in body["error"]["message"]


async def test_limit_bounds(node: RunningNode, tmp_path: Path) -> None:
    for i in range(5):
        await add_titled(node, tmp_path, f"Episode {i}")
    assert len(await titles(node, "episode", limit="1")) == 1
    assert len(await titles(node, "episode", limit="3")) == 3
    assert len(await titles(node, "episode", limit="200")) == 5
    assert len(await titles(node, "episode")) == 5
    assert len(await titles(node, "epi", limit="2")) == 2
    assert len(await titles(node, "", limit="4")) == 4


# -- search follows the catalog -----------------------------------------------------------


async def test_rename_is_followed_by_search(films: RunningNode) -> None:
    (hit,) = await search(films, "amelie")
    renamed = await films.api("PATCH", f"/api/v1/items/{hit['id']}", json={"title": "Le Fabuleux Destin"})
    assert renamed["title"] == "Le Fabuleux Destin"
    assert await titles(films, "amelie") == []
    assert await titles(films, "fabuleux destin") == ["Le Fabuleux Destin"]
    assert await titles(films, "fab") == ["Le Fabuleux Destin"]
    (again,) = await search(films, "destin")
    assert again["id"] == hit["id"]
    recent = await titles(films, "")
    assert "Le Fabuleux Destin" in recent and "Amélie" not in recent


async def test_visibility_change_keeps_the_item_searchable_here(films: RunningNode) -> None:
    (hit,) = await search(films, "quiet place")
    assert hit["visibility"] == "private"
    await films.api("PATCH", f"/api/v1/items/{hit['id']}", json={"visibility": "network"})
    (after,) = await search(films, "quiet place")
    assert (after["id"], after["visibility"]) == (hit["id"], "network")


async def test_removed_items_disappear_from_search(films: RunningNode) -> None:
    (hit,) = await search(films, "spider man")
    await films.api("DELETE", f"/api/v1/items/{hit['id']}")
    assert await titles(films, "spider man") == []
    assert await titles(films, "spi") == []
    assert "Spider-Man Homecoming" not in await titles(films, "")
    assert len(await titles(films, "")) == 5


async def test_same_words_in_many_titles(node: RunningNode, tmp_path: Path) -> None:
    for i in range(30):
        await add_titled(node, tmp_path, f"Holiday {i:02d} Beach")
    await add_titled(node, tmp_path, "Holidays Abroad")
    found = await titles(node, "holiday", limit="200")
    assert len(found) == 31
    assert found[-1] == "Holidays Abroad"
    assert len(await titles(node, "holiday beach", limit="200")) == 30
    assert await titles(node, "holiday 07") == ["Holiday 07 Beach"]
