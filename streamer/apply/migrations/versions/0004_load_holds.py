"""Load hold barrier: the hold generation and the live members that acknowledge it.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01
"""

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    generation = op.create_table(
        "_streamer_hold_generation",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1
        sa.Column("generation", sa.BigInteger, nullable=False),  # +1 each time a load marks tables
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    # the row exists from the start: batches lock it FOR SHARE, the loader's mark updates it
    op.bulk_insert(generation, [{"id": 1, "generation": 0, "updated_at": dt.datetime(2026, 12, 1)}])
    op.create_table(
        "_streamer_members",
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),  # consume | replicate
        sa.Column("consumer_group", sa.String(255), nullable=False),
        sa.Column("process", sa.String(255), nullable=False),  # host:pid
        sa.Column("acked_generation", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("_streamer_members")
    op.drop_table("_streamer_hold_generation")
