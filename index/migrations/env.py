"""Alembic environment for the PostgreSQL store.

Run in code by :func:`storyline.index.pg.migrate` (no alembic.ini needed): the caller
passes an open connection in ``config.attributes["connection"]``. Offline mode (SQL
script output) works from a URL in ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context

config = context.config
VERSION_TABLE = "storyline_alembic_version"


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from sqlalchemy import create_engine

        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            context.configure(connection=conn, version_table=VERSION_TABLE)
            with context.begin_transaction():
                context.run_migrations()
        engine.dispose()
        return
    context.configure(connection=connection, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
