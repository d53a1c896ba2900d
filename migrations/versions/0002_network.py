"""Group network: members, signed roster events, invites.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("node_id", sa.String(40), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_at", sa.Float, nullable=False),
        sa.Column("last_seen_at", sa.Float),
    )
    op.create_table(
        "roster_events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("subject", sa.String(40), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("signer", sa.String(40), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("sig", sa.String(128), nullable=False),
    )
    op.create_index("ix_roster_events_subject", "roster_events", ["subject"])
    op.create_table(
        "invites",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("uses_left", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("invites")
    op.drop_index("ix_roster_events_subject", "roster_events")
    op.drop_table("roster_events")
    op.drop_table("members")
