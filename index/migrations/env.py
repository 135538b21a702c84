"""Alembic environment for the PostgreSQL store.

Run in code by :func:`storyline.index.pg.migrate` (no alembic.ini needed): the caller
passes an open connection in ``config.attributes["connection"]``. Offline mode (SQL
script output) works from a URL in ``sqlalchemy.url``.

Each revision module declares ``compatible_from``: the oldest revision whose code still
works on a database at that revision (the revision itself when it drops or renames
anything, adds a NOT NULL column without a default, or changes what a column means; the
one before's ``compatible_from`` when it only adds nullable columns, tables or indexes).
After an online upgrade or downgrade the strictest of them, over the applied revisions, is
recorded in the database (``storyline.index.pg.record_schema_compat``): an older version
that finds an unknown revision uses the database as it is when it has that code revision.
Offline scripts record nothing, so older versions refuse what they migrate.
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
                _record_compat()
        engine.dispose()
        return
    context.configure(connection=connection, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()
        _record_compat()


def _record_compat() -> None:
    from storyline.index.pg import record_schema_compat

    record_schema_compat(context.get_bind(), context.script)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
