"""Richer item metadata from sources (upload, folder, URL, Plex), kept by the CMA and the registry.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_COMMON = [
    ("description", sa.Text),
    ("year", sa.Integer),
    ("genres", sa.Text),
    ("show", sa.Text),
    ("season", sa.Integer),
    ("episode", sa.Integer),
]


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        for name, kind in _COMMON:
            batch.add_column(sa.Column(name, kind))
        batch.add_column(sa.Column("source_url", sa.Text))
        batch.add_column(sa.Column("external_ids", sa.Text))
    with op.batch_alter_table("registry_items") as batch:
        for name, kind in _COMMON:
            batch.add_column(sa.Column(name, kind))
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="local"))
    op.create_index("ix_registry_items_year", "registry_items", ["year"])
    # Rows synced before this revision lack the new fields: read every feed again.
    op.execute("UPDATE registry_sources SET cursor = 0")


def downgrade() -> None:
    op.drop_index("ix_registry_items_year", "registry_items")
    with op.batch_alter_table("registry_items") as batch:
        batch.drop_column("source")
        for name, _ in reversed(_COMMON):
            batch.drop_column(name)
    with op.batch_alter_table("items") as batch:
        batch.drop_column("external_ids")
        batch.drop_column("source_url")
        for name, _ in reversed(_COMMON):
            batch.drop_column(name)
