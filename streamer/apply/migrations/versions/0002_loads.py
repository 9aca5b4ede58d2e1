"""Loader state: one row per loaded table, one per chunk (for --resume).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "_streamer_loads",
        sa.Column("table_name", sa.String(512), primary_key=True),
        sa.Column("source_table", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),  # loading | done
        sa.Column("floor_version", sa.String(40), nullable=False),  # rows older than this are swept
        sa.Column("snapshot_version", sa.String(40), nullable=False),
        sa.Column("rows_loaded", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
    )
    op.create_table(
        "_streamer_load_chunks",
        sa.Column("table_name", sa.String(512), primary_key=True),
        sa.Column("chunk_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("lo_key", sa.Text),  # JSON array of key values, exclusive; NULL = from the start
        sa.Column("hi_key", sa.Text),  # JSON array of key values, inclusive; NULL = to the end
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("rows_loaded", sa.BigInteger),
    )


def downgrade() -> None:
    op.drop_table("_streamer_load_chunks")
    op.drop_table("_streamer_loads")
