"""Rows left incomplete: keys whose change event lacked values the source could not give.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "_streamer_incomplete",
        sa.Column("table_name", sa.String(512), primary_key=True),
        sa.Column("key_hash", sa.String(40), primary_key=True),  # sha1 of key_json
        sa.Column("key_json", sa.Text, nullable=False),  # the key's values as a JSON list of text
        sa.Column("source_table", sa.String(512), nullable=False),
        sa.Column("version", sa.String(40), nullable=False),  # the event's version
        sa.Column("columns", sa.Text, nullable=False),  # comma-separated: the values it lacked
        sa.Column("reason", sa.Text, nullable=False),  # why the source was not read
        sa.Column("recorded_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("_streamer_incomplete")
