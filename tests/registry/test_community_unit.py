"""Community rules without a network: thread order, comment text, and the comment wire model.

The thread order is what every node shows, so it must depend only on the
comments themselves (never on the order rows came out of a database); the
text rules are the one gate every comment passes on its author's node and
again on its owner's; the wire model is what a member accepts from an
owner's feed.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from priv_network.errors import InvalidInput
from priv_network.wire import MAX_COMMENT_DEPTH, CommentInfo, clean_comment_body
from registry.community import _thread_order

NODE = "HA5KQ225-BBDXWPPG-7HQDBT6E-A22SXFVA"
ITEM = "abcdefghijklmnopqrstuvwxyz"


def cid(n: int) -> str:
    return f"{n:032x}"


def comment(n: int, at: float, parent: int | None = None) -> dict[str, Any]:
    return {"id": cid(n), "parent": cid(parent) if parent is not None else None, "created_at": at}


def order(comments: list[dict[str, Any]]) -> list[int]:
    return [int(c["id"], 16) for c in _thread_order(comments)]


# -- thread order ------------------------------------------------------------------


def test_thread_order_is_depth_first_with_siblings_by_time() -> None:
    comments = [
        comment(1, 10.0),
        comment(2, 20.0),
        comment(3, 11.0, parent=1),
        comment(4, 30.0, parent=3),
        comment(5, 12.0, parent=1),
        comment(6, 21.0, parent=2),
    ]
    # Each comment is followed by all its replies (and theirs) before its next sibling.
    assert order(comments) == [1, 3, 4, 5, 2, 6]


def test_thread_order_breaks_time_ties_by_id_and_ignores_input_order() -> None:
    comments = [
        comment(9, 5.0),
        comment(7, 5.0),
        comment(8, 5.0),
        comment(3, 6.0, parent=8),
        comment(2, 6.0, parent=8),
    ]
    expected = [7, 8, 2, 3, 9]
    for shuffled in itertools.permutations(comments):
        assert order(list(shuffled)) == expected


def test_thread_order_shows_orphans_at_top_level_in_time_order() -> None:
    # 5's parent is unknown here (deleted by its owner, or not synced yet): it is not lost.
    comments = [comment(1, 10.0), comment(5, 5.0, parent=99), comment(6, 15.0, parent=5), comment(2, 20.0)]
    assert order(comments) == [5, 6, 1, 2]
    assert order([]) == []


def test_thread_order_keeps_every_comment_exactly_once_whatever_the_parents() -> None:
    """Parents come from another node's feed: a loop or a comment answering itself must
    not make comments vanish, and a very deep chain must not exhaust the stack."""
    looped = [comment(1, 1.0), comment(2, 2.0, parent=3), comment(3, 3.0, parent=2), comment(4, 4.0, parent=4)]
    got = order(looped)
    assert sorted(got) == [1, 2, 3, 4]
    assert got[0] == 1
    deep = [comment(1, 0.0)] + [comment(n, float(n), parent=n - 1) for n in range(2, 5001)]
    random.Random(7).shuffle(deep)
    assert order(deep) == list(range(1, 5001))


def test_thread_order_does_not_change_the_comments() -> None:
    comments = [comment(2, 2.0, parent=1), comment(1, 1.0)]
    before = [dict(c) for c in comments]
    _thread_order(comments)
    assert comments == before


# -- comment text --------------------------------------------------------------------


def test_markup_is_kept_as_plain_text() -> None:
    hostile = '<script>alert("x")</script><img src=x onerror="alert(1)"> & &amp; <b onclick=go()>'
    assert clean_comment_body(hostile, 5000) == hostile


def test_control_characters_are_stripped_but_newlines_and_tabs_stay() -> None:
    raw = "a\x00b\x07c\x1b[31md\x7fe\x85f\x9fg\r\nline\ttab\rx"
    assert clean_comment_body(raw, 5000) == "abc[31mdefg\nline\ttabx"


def test_surrounding_whitespace_is_trimmed_inner_text_is_not() -> None:
    assert clean_comment_body("  \n\t hello \n\n  world \t\n ", 5000) == "hello \n\n  world"


def test_bidi_overrides_are_stripped() -> None:
    # Right-to-left overrides let a comment display text other than what it says.
    assert clean_comment_body("price: \u202e001$\u202c ok", 5000) == "price: 001$ ok"


def test_joiners_inside_words_and_emoji_are_kept() -> None:
    """Zero-width (non-)joiners are letters' business (Persian, Hindi, emoji), not control."""
    for text in ("👩\u200d💻 works", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "क्\u200dष"):
        assert clean_comment_body(text, 5000) == text


def test_unicode_text_is_kept_and_counted_in_characters() -> None:
    text = "Amélie — こんにちは 🎬"
    assert clean_comment_body(text, len(text)) == text
    with pytest.raises(InvalidInput):
        clean_comment_body(text, len(text) - 1)


@pytest.mark.parametrize("empty", ["", "   ", "\n\t \r\n", "\x00\x01", "\u200b\u200e"])
def test_empty_comment_is_refused(empty: str) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        clean_comment_body(empty, 5000)


def test_length_limit_names_the_limit_and_applies_after_cleaning() -> None:
    assert clean_comment_body("x" * 10, 10) == "x" * 10
    assert clean_comment_body(" " + "x" * 10 + "\x00\x00 ", 10) == "x" * 10
    with pytest.raises(InvalidInput, match="at most 10 characters") as err:
        clean_comment_body("x" * 11, 10)
    assert "11 given" in err.value.message


@pytest.mark.parametrize("bad", ["a\ud800b", "\udfff", "\ud83d"])
def test_invalid_utf8_is_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="UTF-8"):
        clean_comment_body(bad, 5000)


@pytest.mark.parametrize("bad", [None, 42, 1.5, True, ["text"], {"body": "text"}, b"bytes"])
def test_a_comment_must_be_a_string(bad: object) -> None:
    with pytest.raises(InvalidInput, match="text"):
        clean_comment_body(bad, 5000)


# -- the wire model ------------------------------------------------------------------


def wire(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": cid(1),
        "item": ITEM,
        "parent": cid(2),
        "depth": 1,
        "author": "admin",
        "author_node": NODE,
        "author_node_name": "beta",
        "body": "<b>hi</b>",
        "created_at": 1700000000.5,
        "edited_at": None,
        "deleted": False,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def test_comment_round_trips_through_json() -> None:
    info = CommentInfo.from_json(wire())
    assert info.to_json() == wire()
    assert CommentInfo.from_json(info.to_json()) == info
    top = CommentInfo.from_json(wire(parent=None, depth=0, created_at=1700000000, edited_at=1700000001))
    assert (top.parent, top.created_at, top.edited_at) == (None, 1700000000.0, 1700000001.0)
    assert isinstance(top.created_at, float)
    # An absent parent or edit time is the same as null.
    assert CommentInfo.from_json(wire(parent=..., edited_at=...)).parent is None


@pytest.mark.parametrize("data", [None, [], "comment", 1, [wire()]])
def test_comment_must_be_an_object(data: Any) -> None:
    with pytest.raises(InvalidInput, match="object"):
        CommentInfo.from_json(data)


@pytest.mark.parametrize(
    "field", ["id", "item", "depth", "author", "author_node", "author_node_name", "body", "created_at", "deleted"]
)
def test_comment_missing_a_field_is_refused(field: str) -> None:
    with pytest.raises(InvalidInput, match=f"missing field '{field}'"):
        CommentInfo.from_json(wire(**{field: ...}))


@pytest.mark.parametrize(
    "changes",
    [
        {"id": 1},
        {"item": None},
        {"parent": 5},
        {"depth": "1"},
        {"depth": 1.0},
        {"depth": True},
        {"author": ["admin"]},
        {"author_node": None},
        {"author_node_name": 3},
        {"body": None},
        {"body": {"html": "x"}},
        {"created_at": "2024-01-01"},
        {"created_at": True},
        {"created_at": None},
        {"edited_at": "yesterday"},
        {"edited_at": False},
        {"deleted": 0},
        {"deleted": "false"},
        {"deleted": None},
    ],
    ids=repr,
)
def test_comment_with_a_wrong_type_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="must be"):
        CommentInfo.from_json(wire(**changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"id": "ABCDEF" + cid(1)[6:]},
        {"id": cid(1)[:-1]},
        {"id": "../" + cid(1)[3:]},
        {"parent": "not-a-comment"},
        {"parent": ""},
        {"item": ITEM.upper()},
        {"item": ITEM + "a"},
        {"author_node": NODE.lower()},
        {"author_node": "someone"},
    ],
    ids=repr,
)
def test_comment_with_a_malformed_id_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="id"):
        CommentInfo.from_json(wire(**changes))


@pytest.mark.parametrize(
    "changes",
    [{"body": "x" * 20001}, {"author": "a" * 65}, {"author_node_name": "n" * 201}],
    ids=lambda c: next(iter(c)),
)
def test_comment_with_an_oversized_field_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="too long"):
        CommentInfo.from_json(wire(**changes))
    # One less is fine.
    key, value = next(iter(changes.items()))
    assert getattr(CommentInfo.from_json(wire(**{key: value[:-1]})), key) == value[:-1]


@pytest.mark.parametrize("field", ["body", "author", "author_node_name", "id"])
def test_comment_with_a_nul_character_is_refused(field: str) -> None:
    with pytest.raises(InvalidInput, match="NUL"):
        CommentInfo.from_json(wire(**{field: "a\x00b"}))


def test_max_depth_is_what_the_docs_promise() -> None:
    # tests/network/test_comments.py relies on it: the 6th nested reply is refused.
    assert MAX_COMMENT_DEPTH == 5
