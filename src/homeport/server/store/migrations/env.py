"""Alembic environment: runs migrations on the connection Homeport hands it."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from homeport.server.store.schema import metadata

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("alembic needs sqlalchemy.url (Homeport passes its own connection instead)")
    engine = sa.create_engine(url)
    with engine.begin() as own_connection:
        context.configure(connection=own_connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
