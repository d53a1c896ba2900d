"""Content referenced in place (a Plex library's files), not copied into the store.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("external_path", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("external_path")
