"""Offset identity: which topic incarnation a stored offset belongs to.

``topic_id`` is the broker's topic id (when it has one) and ``fingerprint`` identifies the record
at ``next_offset - 1``; the consumer checks them on every assignment (a topic deleted and
re-created, or a group moved to another cluster, must not make it skip records). Both are
nullable: rows written before this revision, by ``streamer replay`` or by the direct
replication path carry none.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("_streamer_offsets") as batch:
        batch.add_column(sa.Column("topic_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("fingerprint", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("_streamer_offsets") as batch:
        batch.drop_column("fingerprint")
        batch.drop_column("topic_id")
