"""The change feed records the story a deleted article left.

The store drops an article's story membership with it, so a replica whose clusterer never
knew the article could not tell which story lost it; ``changes.story_id`` keeps it
(``deleted_story_of``). Nullable: deletes recorded before this revision keep NULL, and an
older version's writes (which do not name it) still go in. The partial index serves the
lookup of an id's deletes without growing with every ingest.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
# a nullable column and an index: older code works on it (see above)
compatible_from = "0002"


def upgrade() -> None:
    op.add_column("changes", sa.Column("story_id", sa.Text(collation="C"), nullable=True))
    op.create_index(
        "changes_deleted", "changes", ["article_id"],
        postgresql_where=sa.text("op = 'delete'"),
    )


def downgrade() -> None:
    op.drop_index("changes_deleted", table_name="changes")
    op.drop_column("changes", "story_id")
