"""Transfers: the registry keeps each item's block size and manifest hash.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registry_items") as batch:
        batch.add_column(sa.Column("block_size", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("manifest_hash", sa.String(64), nullable=False, server_default=""))
    # Rows synced before this revision lack the new fields: read every feed again.
    op.execute("UPDATE registry_sources SET cursor = 0")


def downgrade() -> None:
    with op.batch_alter_table("registry_items") as batch:
        batch.drop_column("manifest_hash")
        batch.drop_column("block_size")
