"""Indexes for filtered listings (``PostgresStore.matching_ids``, ``articles_between``).

A ``source`` filter compares ``lower(source COLLATE "C")`` (ASCII folding whatever the
database's locale, as SQLite's ``lower()``) and takes every source outside ASCII as a
candidate (``source ~ '[^\\x01-\\x7f]'``); each part of the query gets its own covering
index instead of a read of the whole table. The expressions must stay
exactly those of the query (the planner matches an expression or partial index only to
the same expression). ``(published_ts, id)`` lists a time window from the index alone
and replaces ``articles_published``, its prefix. Only indexes: an older version keeps
working on this revision.

``CREATE INDEX`` holds off writes to ``articles`` while it builds (the first process that
opens the store at this revision builds it, under the migration lock): about a second
per 100k articles.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None
# indexes only
compatible_from = "0002"

#: as ``storyline.index.pg._NON_ASCII_RE`` (a migration does not import the code it
#: outlives)
_NON_ASCII_RE = "[^\x01-\x7f]"


def upgrade() -> None:
    op.create_index(
        "articles_source",
        "articles",
        [sa.text('lower(source COLLATE "C")'), sa.text("published_ts")],
        # source too: an index-only scan needs every column the query names
        postgresql_include=["id", "source"],
    )
    op.create_index(
        "articles_source_non_ascii",
        "articles",
        ["published_ts"],
        postgresql_include=["source", "id"],
        postgresql_where=sa.text(f"source ~ '{_NON_ASCII_RE}'"),
    )
    op.create_index("articles_published_id", "articles", ["published_ts", "id"])
    op.drop_index("articles_published", "articles")


def downgrade() -> None:
    op.create_index("articles_published", "articles", ["published_ts"])
    op.drop_index("articles_published_id", "articles")
    op.drop_index("articles_source_non_ascii", "articles")
    op.drop_index("articles_source", "articles")
