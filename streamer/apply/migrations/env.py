"""Alembic environment for streamer's own tables: always run with a connection handed in."""

from alembic import context

from streamer.apply.state import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
