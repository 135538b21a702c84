"""Which store the service runs on: the one place that chooses."""

from __future__ import annotations

from storyline.index.store import SQLiteStore, Store
from storyline.service.settings import Settings

__all__ = ["open_store"]


def open_store(settings: Settings) -> Store:
    """``PostgresStore(settings.database_url)`` when a database URL is set (several
    replicas can share it), else the SQLite file ``settings.db_path``."""
    if settings.database_url:
        from storyline.index.pg import PostgresStore  # needs the `postgres` extra

        return PostgresStore(settings.database_url)
    return SQLiteStore(settings.db_path)
