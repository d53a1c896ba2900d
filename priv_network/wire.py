"""Wire models: what crosses between the parts and between nodes, as JSON.

Parsing is strict: a feed page with a wrong type or a missing field is
rejected as a whole (``InvalidInput``), never half-applied.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from priv_network.errors import InvalidInput, NotFound

ITEM_ID_RE = re.compile(r"^[a-z2-7]{26}$")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
KINDS = ("video", "audio", "image", "other")
MAX_PAGE = 5000


def check_item_id(value: str) -> str:
    """Item IDs are 26 lowercase base32 characters; anything else cannot exist."""
    if not ITEM_ID_RE.match(value):
        raise NotFound(f"no item {value[:64]!r}")
    return value


@dataclass(frozen=True)
class ItemInfo:
    """An item as its owner publishes it."""

    id: str
    node: str
    title: str
    kind: str
    mime: str
    size: int
    content_hash: str
    block_size: int
    manifest_hash: str
    has_poster: bool
    visibility: str
    created_at: float
    updated_at: float
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    container: str | None = None
    warning: str | None = None
    source: str = "local"
    description: str | None = None
    year: int | None = None
    genres: tuple[str, ...] = ()
    show: str | None = None
    season: int | None = None
    episode: int | None = None
    source_url: str | None = None
    external_ids: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        # Built by hand: dataclasses.asdict deep-copies and was 40% of serving a feed page.
        out = {name: getattr(self, name) for name in _ITEM_FIELDS}
        out["genres"] = list(self.genres)
        out["external_ids"] = dict(self.external_ids)
        return out

    @classmethod
    def from_json(cls, data: Any) -> ItemInfo:
        # The checks of _str, _int, ... inlined, on exact JSON types (bool is
        # not an int here): a catch-up parses thousands of items a second.
        if not isinstance(data, dict):
            raise InvalidInput("item must be an object")
        try:
            values = {k: data[k] for k in _ITEM_REQUIRED}
        except KeyError as exc:
            raise InvalidInput(f"item is missing field {exc.args[0]!r}") from None
        for k in _ITEM_STR:
            v = values[k]
            if type(v) is not str:
                raise InvalidInput(f"field {k!r} must be a string")
            if "\x00" in v:
                raise InvalidInput(f"field {k!r} contains a NUL character")
        for k in _ITEM_INT:
            if type(values[k]) is not int:
                raise InvalidInput(f"field {k!r} must be an integer")
        for k in _ITEM_NUM:
            v = values[k]
            if type(v) is not float and type(v) is not int:
                raise InvalidInput(f"field {k!r} must be a number")
            values[k] = float(v)
        if type(values["has_poster"]) is not bool:
            raise InvalidInput("field 'has_poster' must be true or false")
        for k in _ITEM_OPT_STR:
            v = data.get(k)
            if v is not None:
                if type(v) is not str:
                    raise InvalidInput(f"field {k!r} must be a string")
                if "\x00" in v:
                    raise InvalidInput(f"field {k!r} contains a NUL character")
            values[k] = v
        for k in _ITEM_OPT_INT:
            v = data.get(k)
            if v is not None and type(v) is not int:
                raise InvalidInput(f"field {k!r} must be an integer")
            values[k] = v
        duration = data.get("duration")
        if duration is not None:
            if type(duration) is not float and type(duration) is not int:
                raise InvalidInput("field 'duration' must be a number")
            duration = float(duration)
        values["duration"] = duration
        values["source"] = values["source"] or "local"
        values["genres"] = _str_list(data, "genres") if data.get("genres") else ()
        values["external_ids"] = _str_dict(data, "external_ids") if data.get("external_ids") else {}
        # Every field is set above (checked at import, _ITEM_PARSED), so the frozen
        # dataclass's __init__, one object.__setattr__ per field, is skipped: it was
        # 60% of parsing an item, and a first catch-up parses 100,000 of them.
        info = object.__new__(cls)
        info.__dict__.update(values)
        if not ITEM_ID_RE.match(info.id):
            raise InvalidInput(f"bad item id {info.id[:40]!r}")
        if info.kind not in KINDS:
            raise InvalidInput(f"bad item kind {info.kind[:20]!r}")
        if not HASH_RE.match(info.content_hash) or not HASH_RE.match(info.manifest_hash):
            raise InvalidInput("bad content or manifest hash")
        if info.size < 0:
            raise InvalidInput("negative item size")
        if len(info.mime) > 128:  # the width of the column it is stored in
            raise InvalidInput("item mime type is longer than 128 characters")
        return info


ROSTER_TYPES = ("add", "remove", "rotate")
NODE_ID_RE = re.compile(r"^[A-Z2-7]{8}(-[A-Z2-7]{8}){3}$")
EVENT_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class RosterEvent:
    """A signed statement about group membership: ``signer`` adds or removes ``subject``.

    The signature is Ed25519 over :meth:`signing_bytes` (canonical JSON of
    every field but ``sig``). Any node can check it with the signer's key,
    so events can be gossiped through any member's feed.
    """

    id: str
    type: str
    subject: str
    name: str
    url: str
    public_key: str
    signer: str
    at: float
    sig: str = ""

    def signing_bytes(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if k != "sig"}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> RosterEvent:
        if not isinstance(data, dict):
            raise InvalidInput("roster event must be an object")
        try:
            event = cls(
                id=_str(data, "id"),
                type=_str(data, "type"),
                subject=_str(data, "subject"),
                name=_str(data, "name"),
                url=_str(data, "url"),
                public_key=_str(data, "public_key"),
                signer=_str(data, "signer"),
                at=_num(data, "at"),
                sig=_str(data, "sig"),
            )
        except KeyError as exc:
            raise InvalidInput(f"roster event is missing field {exc.args[0]!r}") from None
        if event.type not in ROSTER_TYPES or not EVENT_ID_RE.match(event.id):
            raise InvalidInput("bad roster event type or id")
        if not NODE_ID_RE.match(event.subject) or not NODE_ID_RE.match(event.signer):
            raise InvalidInput("bad node ID in roster event")
        if len(event.name) > 200 or len(event.url) > 500 or len(event.public_key) > 64 or len(event.sig) > 128:
            raise InvalidInput("roster event field too long")
        return event


COMMENT_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_COMMENT_DEPTH = 5


def clean_comment_body(body: Any, max_length: int) -> str:
    """Plain text only: no control characters but newlines and tabs; valid UTF-8; length-limited."""
    if not isinstance(body, str):
        raise InvalidInput("a comment is text")
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("a comment must be valid UTF-8") from None
    # Zero-width (non-)joiners are format characters, but words and emoji need them.
    cleaned = "".join(
        ch for ch in body.replace("\r\n", "\n") if ch in "\n\t\u200c\u200d" or unicodedata.category(ch)[0] != "C"
    ).strip()
    if not cleaned:
        raise InvalidInput("a comment cannot be empty")
    if len(cleaned) > max_length:
        raise InvalidInput(f"a comment can be at most {max_length} characters ({len(cleaned)} given)")
    return cleaned


@dataclass(frozen=True)
class CommentInfo:
    """A comment as the item's owner publishes it (the owner's copy is authoritative)."""

    id: str
    item: str
    parent: str | None
    depth: int
    author: str
    author_node: str
    author_node_name: str
    body: str
    created_at: float
    edited_at: float | None
    deleted: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> CommentInfo:
        if not isinstance(data, dict):
            raise InvalidInput("comment must be an object")
        try:
            info = cls(
                id=_str(data, "id"),
                item=_str(data, "item"),
                parent=_opt_str(data, "parent"),
                depth=_int(data, "depth"),
                author=_str(data, "author"),
                author_node=_str(data, "author_node"),
                author_node_name=_str(data, "author_node_name"),
                body=_str(data, "body"),
                created_at=_num(data, "created_at"),
                edited_at=_opt_num(data, "edited_at"),
                deleted=_bool(data, "deleted"),
            )
        except KeyError as exc:
            raise InvalidInput(f"comment is missing field {exc.args[0]!r}") from None
        if not COMMENT_ID_RE.match(info.id) or (info.parent is not None and not COMMENT_ID_RE.match(info.parent)):
            raise InvalidInput("bad comment id")
        if not ITEM_ID_RE.match(info.item) or not NODE_ID_RE.match(info.author_node):
            raise InvalidInput("bad item or node id in comment")
        if len(info.body) > 20000 or len(info.author) > 64 or len(info.author_node_name) > 200:
            raise InvalidInput("comment field too long")
        return info


_ITEM_FIELDS = tuple(f.name for f in fields(ItemInfo))
# ItemInfo.from_json's checks, by kind of field.
_ITEM_STR = ("id", "node", "title", "kind", "mime", "content_hash", "manifest_hash", "visibility")
_ITEM_INT = ("size", "block_size")
_ITEM_NUM = ("created_at", "updated_at")
_ITEM_REQUIRED = (*_ITEM_STR, *_ITEM_INT, *_ITEM_NUM, "has_poster")
_ITEM_OPT_STR = ("video_codec", "audio_codec", "container", "warning", "source", "description", "show", "source_url")
_ITEM_OPT_INT = ("width", "height", "year", "season", "episode")
_ITEM_PARSED = {*_ITEM_REQUIRED, *_ITEM_OPT_STR, *_ITEM_OPT_INT, "duration", "genres", "external_ids"}
if set(_ITEM_FIELDS) != _ITEM_PARSED:  # a new field must be parsed too
    raise AssertionError(f"ItemInfo.from_json does not set {set(_ITEM_FIELDS) - _ITEM_PARSED}")


@dataclass(frozen=True)
class FeedEntry:
    """One change: an item, a roster event, a held copy, a comment, or an item's view total."""

    seq: int
    entity: str
    op: str
    id: str
    item: ItemInfo | None = None
    event: RosterEvent | None = None
    comment: CommentInfo | None = None
    total: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "entity": self.entity, "op": self.op, "id": self.id}
        if self.item is not None:
            out["item"] = self.item.to_json()
        if self.event is not None:
            out["event"] = self.event.to_json()
        if self.comment is not None:
            out["comment"] = self.comment.to_json()
        if self.total is not None:
            out["total"] = self.total
        return out

    @classmethod
    def from_json(cls, data: Any) -> FeedEntry:
        if not isinstance(data, dict):
            raise InvalidInput("feed entry must be an object")
        try:
            seq, entity, op, ident = _int(data, "seq"), _str(data, "entity"), _str(data, "op"), _str(data, "id")
        except KeyError as exc:
            raise InvalidInput(f"feed entry is missing field {exc.args[0]!r}") from None
        if entity == "roster":
            if op != "upsert" or "event" not in data:
                raise InvalidInput("roster entries carry an event")
            event = RosterEvent.from_json(data["event"])
            if event.id != ident:
                raise InvalidInput("feed entry id does not match its event")
            return cls(seq=seq, entity=entity, op=op, id=ident, event=event)
        if entity == "comment":
            if op == "delete":
                if not COMMENT_ID_RE.match(ident):
                    raise InvalidInput("bad comment id")
                return cls(seq=seq, entity=entity, op=op, id=ident)
            if op != "upsert" or "comment" not in data:
                raise InvalidInput("comment entries carry a comment")
            comment = CommentInfo.from_json(data["comment"])
            if comment.id != ident:
                raise InvalidInput("feed entry id does not match its comment")
            return cls(seq=seq, entity=entity, op=op, id=ident, comment=comment)
        if entity == "views":
            if op not in ("upsert", "delete") or not ITEM_ID_RE.match(ident):
                raise InvalidInput("bad views entry")
            if op == "delete":
                return cls(seq=seq, entity=entity, op=op, id=ident)
            total = _int(data, "total") if "total" in data else -1
            if total < 0:
                raise InvalidInput("views entries carry a non-negative total")
            return cls(seq=seq, entity=entity, op=op, id=ident, total=total)
        if entity == "copy":
            # This node holds (upsert) or no longer holds (delete) a verified copy of the content.
            if op not in ("upsert", "delete") or not HASH_RE.match(ident):
                raise InvalidInput("bad copy entry")
            return cls(seq=seq, entity=entity, op=op, id=ident)
        if entity != "item":
            raise InvalidInput(f"unknown feed entity {entity[:20]!r}")
        if op not in ("upsert", "delete"):
            raise InvalidInput(f"unknown feed op {op[:20]!r}")
        item = None
        if op == "upsert":
            if "item" not in data:
                raise InvalidInput("upsert entry without item")
            item = ItemInfo.from_json(data["item"])
            if item.id != ident:
                raise InvalidInput("feed entry id does not match its item")
        elif not ITEM_ID_RE.match(ident):
            raise InvalidInput(f"bad item id {ident[:40]!r}")
        return cls(seq=seq, entity=entity, op=op, id=ident, item=item)


@dataclass(frozen=True)
class FeedPage:
    node: str
    feed_id: str
    since: int
    next: int
    more: bool
    entries: list[FeedEntry] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "feed_id": self.feed_id,
            "since": self.since,
            "next": self.next,
            "more": self.more,
            "entries": [e.to_json() for e in self.entries],
        }

    @classmethod
    def from_json(cls, data: Any, *, limit: int = MAX_PAGE) -> FeedPage:
        if not isinstance(data, dict):
            raise InvalidInput("feed page must be an object")
        try:
            raw_entries = data["entries"]
            page = cls(
                node=_str(data, "node"),
                feed_id=_str(data, "feed_id"),
                since=_int(data, "since"),
                next=_int(data, "next"),
                more=_bool(data, "more"),
            )
        except KeyError as exc:
            raise InvalidInput(f"feed page is missing field {exc.args[0]!r}") from None
        if not isinstance(raw_entries, list):
            raise InvalidInput("feed entries must be a list")
        if len(raw_entries) > limit:
            raise InvalidInput(f"feed page has {len(raw_entries)} entries, more than the {limit} asked for")
        entries = [FeedEntry.from_json(e) for e in raw_entries]
        last = page.since
        for entry in entries:
            if entry.seq <= last:
                raise InvalidInput("feed entries are not in increasing order after the cursor")
            last = entry.seq
            if entry.item is not None and entry.item.node != page.node:
                raise InvalidInput("feed entry names another node as owner")
        if page.next < last:
            raise InvalidInput("feed cursor goes backwards")
        if page.more and page.next <= page.since:
            # A reader would ask for the same page again, forever.
            raise InvalidInput("feed page says there is more but its cursor did not move")
        if len(page.feed_id) > 64:
            raise InvalidInput("feed id is longer than 64 characters")
        page.entries.extend(entries)
        return page


def _str(d: dict[str, Any], k: str) -> str:
    v = d[k]
    if not isinstance(v, str):
        raise InvalidInput(f"field {k!r} must be a string")
    if "\x00" in v:  # PostgreSQL text cannot hold it: refuse the page, not fail half-way into it
        raise InvalidInput(f"field {k!r} contains a NUL character")
    return v


def _opt_str(d: dict[str, Any], k: str) -> str | None:
    return None if d.get(k) is None else _str(d, k)


def _int(d: dict[str, Any], k: str) -> int:
    v = d[k]
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidInput(f"field {k!r} must be an integer")
    return v


def _str_list(d: dict[str, Any], k: str) -> tuple[str, ...]:
    v = d.get(k) or []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v) or len(v) > 50:
        raise InvalidInput(f"field {k!r} must be a list of strings")
    return tuple(x[:100] for x in v)


def _str_dict(d: dict[str, Any], k: str) -> dict[str, str]:
    v = d.get(k) or {}
    if not isinstance(v, dict) or not all(isinstance(a, str) and isinstance(b, str) for a, b in v.items()):
        raise InvalidInput(f"field {k!r} must map strings to strings")
    return {a[:40]: b[:200] for a, b in list(v.items())[:20]}


def _opt_int(d: dict[str, Any], k: str) -> int | None:
    return None if d.get(k) is None else _int(d, k)


def _num(d: dict[str, Any], k: str) -> float:
    v = d[k]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InvalidInput(f"field {k!r} must be a number")
    return float(v)


def _opt_num(d: dict[str, Any], k: str) -> float | None:
    return None if d.get(k) is None else _num(d, k)


def _bool(d: dict[str, Any], k: str) -> bool:
    v = d[k]
    if not isinstance(v, bool):
        raise InvalidInput(f"field {k!r} must be true or false")
    return v
