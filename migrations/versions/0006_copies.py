"""Registry: who holds verified copies of which content.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_copies",
        sa.Column("node_id", sa.String(40), primary_key=True),
        sa.Column("content_hash", sa.String(64), primary_key=True),
    )
    op.create_index("ix_registry_copies_content_hash", "registry_copies", ["content_hash"])


def downgrade() -> None:
    op.drop_index("ix_registry_copies_content_hash", "registry_copies")
    op.drop_table("registry_copies")
