"""A PostgreSQL database at an older Alembic revision, for the schema-upgrade tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the newest revision of our migrations: where a store's database is after it opens
HEAD = "0006"


def upgrade_to(
    url: str,
    revision: str,
    then: Callable[[Any], None] | None = None,
    migrations: Path | None = None,
) -> None:
    """Bring the database at ``url`` to ``revision`` of our migrations (or of those in
    ``migrations``, a newer version's), then run ``then(connection)`` in the same
    transaction (rows as that revision wrote them)."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from storyline.index.pg import MIGRATIONS

    engine = sa.create_engine(url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(migrations or MIGRATIONS))
        cfg.set_main_option("path_separator", "os")
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            if then is not None:
                then(conn)
    finally:
        engine.dispose()
