"""Initial schema: CMA tables (items, blobs, feed, tokens) and the registry with its search index.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "blobs",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("block_size", sa.Integer, nullable=False),
        sa.Column("manifest", sa.LargeBinary, nullable=False),
        sa.Column("manifest_hash", sa.String(64), nullable=False),
        sa.Column("poster", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "items",
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
    )
    op.create_table(
        "source_files",
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "changes",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entity", sa.String(16), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.UniqueConstraint("entity", "entity_id", name="uq_changes_entity"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("last_used_at", sa.Float),
    )
    op.create_table(
        "registry_sources",
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
    op.create_table(
        "registry_items",
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
        sa.Column("has_poster", sa.Boolean, nullable=False),
        sa.Column("visibility", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("search_text", sa.Text, nullable=False),
        sa.UniqueConstraint("node_id", "item_id", name="uq_registry_items_node_item"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_registry_items_kind", "registry_items", ["kind"])

    if op.get_bind().dialect.name == "sqlite":
        # A regular (self-contained) FTS5 table keyed by registry_items.id.
        # prefix='2 3' adds prefix indexes so 2- and 3-character "as you type"
        # queries read one doclist instead of merging every matching term.
        op.execute(
            "CREATE VIRTUAL TABLE registry_fts USING fts5("
            "search_text, tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3')"
        )
    else:
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(
            "CREATE INDEX ix_registry_items_fts ON registry_items USING gin (to_tsvector('simple', search_text))"
        )
        op.execute("CREATE INDEX ix_registry_items_trgm ON registry_items USING gin (search_text gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE registry_fts")
    op.drop_table("registry_items")
    op.drop_table("registry_sources")
    op.drop_table("api_tokens")
    op.drop_table("changes")
    op.drop_table("source_files")
    op.drop_table("items")
    op.drop_table("blobs")
    op.drop_table("node_meta")
