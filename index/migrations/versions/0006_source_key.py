"""A stored key for source filters: ``articles.source_key`` = ``source.casefold()``.

Revision 0005 compared ``lower(source COLLATE "C")`` (ASCII folding) and took every source
outside ASCII in the time window as a candidate for Python to decide, so in a
deployment of mostly non-English outlets a filtered listing still read most of its
window. Now a source filter is one range of the index ``articles_source_key``, exact for
any source (the key is computed in Python: PostgreSQL has no ``casefold``). The two
indexes of 0005 it replaces are dropped.

Rolling upgrades: code before this revision keeps working on it (``compatible_from``),
and does not know the key. Its inserts leave it NULL, and the trigger
``articles_source_key_stale`` clears the key an update of ``source`` leaves behind
(unless it is the new source's ASCII lowering, then also its casefold). Such rows,
``source_key IS NULL AND source IS NOT NULL``, are listed from the partial index
``articles_source_unkeyed`` and decided in Python, and a store of this version opening
keys them. Older replicas' own source filters lose the indexes of 0005 and read their
time window, as before 0005.

The backfill reads and writes every article with a source (a few seconds per 100k
articles), and ``CREATE INDEX`` then holds off writes to ``articles`` while it builds,
all in the migration's transaction under the migration lock.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
# a nullable column, indexes and a trigger that keeps older code's writes right
compatible_from = "0002"

#: as ``storyline.index.pg._UNKEYED`` (a migration does not import the code it outlives)
_UNKEYED = "source_key IS NULL AND source IS NOT NULL"
_BATCH = 5000
#: as revision 0005's (restored by ``downgrade``)
_NON_ASCII_RE = "[^\x01-\x7f]"

_TRIGGER_FUNCTION = """
CREATE FUNCTION storyline_source_key_stale() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.source_key := NULL;
    RETURN NEW;
END $$
"""
#: when an update changed ``source`` and left the key as it was: a key that is not the
#: new source's ASCII lowering is stale (this version's code writes the key with the
#: source, and restores it where this also clears a right one)
_TRIGGER = """
CREATE TRIGGER articles_source_key_stale BEFORE UPDATE OF source ON articles FOR EACH ROW
WHEN (NEW.source IS DISTINCT FROM OLD.source
      AND NEW.source_key IS NOT DISTINCT FROM OLD.source_key
      AND NEW.source_key IS DISTINCT FROM lower(NEW.source COLLATE "C"))
EXECUTE FUNCTION storyline_source_key_stale()
"""


def upgrade() -> None:
    op.add_column("articles", sa.Column("source_key", sa.Text(collation="C"), nullable=True))
    conn = op.get_bind()
    last = ""
    while True:
        rows = conn.execute(
            sa.text(
                f"SELECT id, source FROM articles WHERE id > :last AND {_UNKEYED}"
                " ORDER BY id LIMIT :n"
            ),
            {"last": last, "n": _BATCH},
        ).all()
        if not rows:
            break
        # (one statement a batch, not one a row)
        conn.execute(
            sa.text(
                "UPDATE articles a SET source_key = k.key"
                " FROM unnest(CAST(:ids AS text[]), CAST(:keys AS text[])) AS k(id, key)"
                " WHERE a.id = k.id"
            ),
            {"ids": [r[0] for r in rows], "keys": [r[1].casefold() for r in rows]},
        )
        last = rows[-1][0]
    # (rows without a source stay out: a filter never lists them)
    op.create_index(
        "articles_source_key",
        "articles",
        ["source_key", "published_ts", "id"],
        postgresql_where=sa.text("source_key IS NOT NULL"),
    )
    op.create_index(
        "articles_source_unkeyed",
        "articles",
        ["published_ts"],
        postgresql_include=["source", "id"],
        postgresql_where=sa.text(_UNKEYED),
    )
    op.execute(_TRIGGER_FUNCTION)
    op.execute(_TRIGGER)
    op.drop_index("articles_source_non_ascii", "articles")
    op.drop_index("articles_source", "articles")


def downgrade() -> None:
    op.create_index(
        "articles_source",
        "articles",
        [sa.text('lower(source COLLATE "C")'), sa.text("published_ts")],
        postgresql_include=["id", "source"],
    )
    op.create_index(
        "articles_source_non_ascii",
        "articles",
        ["published_ts"],
        postgresql_include=["source", "id"],
        postgresql_where=sa.text(f"source ~ '{_NON_ASCII_RE}'"),
    )
    op.execute("DROP TRIGGER articles_source_key_stale ON articles")
    op.execute("DROP FUNCTION storyline_source_key_stale()")
    op.drop_index("articles_source_unkeyed", "articles")
    op.drop_index("articles_source_key", "articles")
    op.drop_column("articles", "source_key")
