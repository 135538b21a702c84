"""A duplicate record keeps what the duplicate was sent with.

A duplicate that becomes a stored article (its stored article updated or deleted) took
that article's title, text, lang, lean and story id; it keeps its own now: ``title`` and
``text`` where they differ (in case or spacing) from its stored article's, else NULL, and
``lang``, ``lean`` and ``gold_story_id`` where ``own_meta`` is true. Nullable: rows
recorded before this revision keep NULL ("as the stored article"), and an older
version's writes (which do not name them) still go in.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
# nullable columns: older code works on it (see above)
compatible_from = "0002"

_COLUMNS = ("title", "text", "lang", "lean", "gold_story_id")


def upgrade() -> None:
    for name in _COLUMNS:
        op.add_column("duplicates", sa.Column(name, sa.Text(), nullable=True))
    op.add_column("duplicates", sa.Column("own_meta", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("duplicates", "own_meta")
    for name in reversed(_COLUMNS):
        op.drop_column("duplicates", name)
