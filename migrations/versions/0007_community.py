"""Community: comments, view totals, the outbox and watch history.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "comments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("item_id", sa.String(32), sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
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
    op.create_index("ix_comments_item_id", "comments", ["item_id"])
    op.create_table(
        "view_receipts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("item_id", sa.String(32), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_table(
        "item_views",
        sa.Column("item_id", sa.String(32), primary_key=True),
        sa.Column("total", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "registry_comments",
        sa.Column("node_id", sa.String(40), primary_key=True),
        sa.Column("comment_id", sa.String(32), primary_key=True),
        sa.Column("item_id", sa.String(32), nullable=False),
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
    op.create_index("ix_registry_comments_item_id", "registry_comments", ["item_id"])
    op.create_table(
        "registry_views",
        sa.Column("node_id", sa.String(40), primary_key=True),
        sa.Column("item_id", sa.String(32), primary_key=True),
        sa.Column("total", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_outbox_node_id", "outbox", ["node_id"])
    op.create_table(
        "watch_history",
        sa.Column("user", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(40), primary_key=True),
        sa.Column("item_id", sa.String(32), primary_key=True),
        sa.Column("position", sa.Float, nullable=False),
        sa.Column("duration", sa.Float),
        sa.Column("watched", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("view_counted_at", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("watch_history")
    op.drop_index("ix_outbox_node_id", "outbox")
    op.drop_table("outbox")
    op.drop_table("registry_views")
    op.drop_index("ix_registry_comments_item_id", "registry_comments")
    op.drop_table("registry_comments")
    op.drop_table("item_views")
    op.drop_table("view_receipts")
    op.drop_index("ix_comments_item_id", "comments")
    op.drop_table("comments")
