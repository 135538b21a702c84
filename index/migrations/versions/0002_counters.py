"""Counters: a generation number for the story records.

Every process that writes stories (the API's online assignment, a digest job's refine)
keeps them in memory; the generation lets a writer see that another process changed them
since it loaded them, and refuse to overwrite that work (``claim_stories_generation``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
# code before it does not bump the stories generation: it would overwrite another
# process's story work unseen
compatible_from = "0002"


def upgrade() -> None:
    counters = op.create_table(
        "counters",
        sa.Column("name", sa.Text(collation="C"), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(counters, [{"name": "stories_generation", "value": 0}])


def downgrade() -> None:
    op.drop_table("counters")
