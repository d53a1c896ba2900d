"""The registry's tables. Only ``registry.store`` queries them.

The full-text index is not declared here: it is an FTS5 virtual table on
SQLite and a GIN index on PostgreSQL, both created by the migrations.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

sources = sa.Table(
    "registry_sources",
    metadata,
    sa.Column("node_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("feed_id", sa.String(64)),
    sa.Column("cursor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("online", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("last_sync_at", sa.Float),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_retry_at", sa.Float),
    sa.Column("last_error", sa.Text),
)

entries = sa.Table(
    "registry_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("node_id", sa.String(40), nullable=False),
    sa.Column("item_id", sa.String(32), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("mime", sa.String(128), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("duration", sa.Float),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("block_size", sa.Integer, nullable=False, server_default="0"),
    sa.Column("manifest_hash", sa.String(64), nullable=False, server_default=""),
    sa.Column("has_poster", sa.Boolean, nullable=False),
    sa.Column("visibility", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # Normalized (case-folded, accents removed) text the index is built on.
    sa.Column("search_text", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("year", sa.Integer, index=True),
    sa.Column("genres", sa.Text),
    sa.Column("show", sa.Text),
    sa.Column("season", sa.Integer),
    sa.Column("episode", sa.Integer),
    sa.Column("source", sa.String(16), nullable=False, server_default="local"),
    sa.UniqueConstraint("node_id", "item_id", name="uq_registry_items_node_item"),
    sa.Index("ix_registry_items_kind", "kind"),
    sqlite_autoincrement=True,
)

# Which member holds a verified copy of which content (from their feeds' "copy" entries).
copies = sa.Table(
    "registry_copies",
    metadata,
    sa.Column("node_id", sa.String(40), primary_key=True),
    sa.Column("content_hash", sa.String(64), primary_key=True, index=True),
)

# Comments and view totals as their owners publish them.
comments = sa.Table(
    "registry_comments",
    metadata,
    sa.Column("node_id", sa.String(40), primary_key=True),
    sa.Column("comment_id", sa.String(32), primary_key=True),
    sa.Column("item_id", sa.String(32), nullable=False, index=True),
    sa.Column("parent_id", sa.String(32)),
    sa.Column("depth", sa.Integer, nullable=False),
    sa.Column("author", sa.String(64), nullable=False),
    sa.Column("author_node", sa.String(40), nullable=False),
    sa.Column("author_node_name", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("edited_at", sa.Float),
    sa.Column("deleted", sa.Boolean, nullable=False),
)

view_totals = sa.Table(
    "registry_views",
    metadata,
    sa.Column("node_id", sa.String(40), primary_key=True),
    sa.Column("item_id", sa.String(32), primary_key=True),
    sa.Column("total", sa.BigInteger, nullable=False),
)

# What this node still has to deliver to other nodes (comments, edits, deletions, views).
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("node_id", sa.String(40), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text),
)

# Each user's progress per item (local to this node), and when a view was last counted.
history = sa.Table(
    "watch_history",
    metadata,
    sa.Column("user", sa.String(64), primary_key=True),
    sa.Column("node_id", sa.String(40), primary_key=True),
    sa.Column("item_id", sa.String(32), primary_key=True),
    sa.Column("position", sa.Float, nullable=False),
    sa.Column("duration", sa.Float),
    sa.Column("watched", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("view_counted_at", sa.Float),
)
