"""The CMA's tables. Only ``node.store`` queries them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

node_meta = sa.Table(
    "node_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("block_size", sa.Integer, nullable=False),
    # Concatenated 32-byte BLAKE3 hashes of each block, in order.
    sa.Column("manifest", sa.LargeBinary, nullable=False),
    sa.Column("manifest_hash", sa.String(64), nullable=False),
    sa.Column("poster", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False),
    # Set when the content is referenced in place (e.g. a Plex library file) instead of copied.
    sa.Column("external_path", sa.Text),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("content_hash", sa.String(64), sa.ForeignKey("blobs.hash"), nullable=False, unique=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("mime", sa.String(128), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("duration", sa.Float),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("video_codec", sa.String(64)),
    sa.Column("audio_codec", sa.String(64)),
    sa.Column("container", sa.String(64)),
    sa.Column("visibility", sa.Text, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("original_name", sa.Text, nullable=False),
    sa.Column("warning", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("year", sa.Integer),
    sa.Column("genres", sa.Text),  # comma-separated
    sa.Column("show", sa.Text),
    sa.Column("season", sa.Integer),
    sa.Column("episode", sa.Integer),
    sa.Column("source_url", sa.Text),
    sa.Column("external_ids", sa.Text),  # JSON object, e.g. {"imdb": "tt..."}
)

source_files = sa.Table(
    "source_files",
    metadata,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
)

# The changes feed: one row per changed entity, re-numbered on every change,
# so the feed is ordered, gap-tolerant and bounded by the number of entities.
changes = sa.Table(
    "changes",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entity", sa.String(16), nullable=False),
    sa.Column("entity_id", sa.String(64), nullable=False),
    sa.Column("op", sa.String(16), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.UniqueConstraint("entity", "entity_id", name="uq_changes_entity"),
    sqlite_autoincrement=True,
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("last_used_at", sa.Float),
)

# -- the group network ----------------------------------------------------------

# Current state of every member this node knows, derived from roster events.
members = sa.Table(
    "members",
    metadata,
    sa.Column("node_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("public_key", sa.String(64), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("event_at", sa.Float, nullable=False),
    sa.Column("last_seen_at", sa.Float),
)

# Signed roster events, as received; gossiped in the changes feed.
roster_events = sa.Table(
    "roster_events",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("subject", sa.String(40), nullable=False, index=True),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("signer", sa.String(40), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("sig", sa.String(128), nullable=False),
)

invites = sa.Table(
    "invites",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("secret", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("uses_left", sa.Integer, nullable=False),
)

# Mirrored ("pinned") copies of peers' items; the bytes live in the content store.
pins = sa.Table(
    "pins",
    metadata,
    sa.Column("content_hash", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(40), nullable=False),
    sa.Column("item_id", sa.String(32), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("mime", sa.String(128), nullable=False),
    sa.Column("visibility", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("block_size", sa.Integer, nullable=False),
    sa.Column("manifest", sa.LargeBinary, nullable=False),
    sa.Column("manifest_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("verified_bytes", sa.BigInteger, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_watched_at", sa.Float, nullable=False),
)

# Signed, expiring download links for people outside the network.
shares = sa.Table(
    "shares",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("item_id", sa.String(32), sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("max_downloads", sa.Integer),
    sa.Column("downloads", sa.Integer, nullable=False, server_default="0"),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
)

# Bytes moved, per hour, per peer ("peer:ID") or share link ("share:ID"), per direction.
traffic = sa.Table(
    "traffic",
    metadata,
    sa.Column("hour", sa.Integer, primary_key=True),
    sa.Column("subject", sa.String(64), primary_key=True),
    sa.Column("direction", sa.String(8), primary_key=True),
    sa.Column("bytes", sa.BigInteger, nullable=False),
)

# -- community: the owner's authoritative comments and view totals ---------------

comments = sa.Table(
    "comments",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("item_id", sa.String(32), sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("parent_id", sa.String(32)),
    sa.Column("depth", sa.Integer, nullable=False),
    sa.Column("author", sa.String(64), nullable=False),
    sa.Column("author_node", sa.String(40), nullable=False),
    sa.Column("author_node_name", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("edited_at", sa.Float),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
)

# Every view delivery accepted, by its idempotency key, so a replay never counts twice.
view_receipts = sa.Table(
    "view_receipts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("item_id", sa.String(32), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

item_views = sa.Table(
    "item_views",
    metadata,
    sa.Column("item_id", sa.String(32), primary_key=True),
    sa.Column("total", sa.BigInteger, nullable=False),
)

# Resumable (tus 1.0) uploads in progress; the bytes are in the store's uploads/ folder.
uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("length", sa.BigInteger, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("item_id", sa.String(32)),
    sa.Column("duplicate", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("error", sa.Text),
)

# The URL download queue (yt-dlp); survives restarts.
downloads = sa.Table(
    "downloads",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("visibility", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("message", sa.Text),
    sa.Column("title", sa.Text),
    sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("total", sa.BigInteger),
    sa.Column("speed", sa.Float),
    sa.Column("eta", sa.Float),
    sa.Column("item_id", sa.String(32)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# People who log in to the web app; API tokens and sessions name a user.
users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("prefs", sa.Text, nullable=False, server_default="{}"),
    sa.Column("created_at", sa.Float, nullable=False),
)

login_history = sa.Table(
    "login_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user", sa.String(64), nullable=False, index=True),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)
