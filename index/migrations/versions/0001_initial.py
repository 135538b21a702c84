"""The initial schema: the SQLite store's tables, in PostgreSQL types.

Ids and other keys are ``COLLATE "C"`` so that ordering and ``MIN(id)`` compare bytes, as
SQLite does, whatever the database's default collation. Times are ``timestamptz``, the
``*_ts`` columns (seconds since the epoch) keep the SQLite store's range queries, vectors
are float32 ``bytea`` and JSON is ``jsonb``. ``changes.seq`` comes from an identity
sequence.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
compatible_from = "0001"


def _key() -> sa.Text:
    return sa.Text(collation="C")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "articles",
        sa.Column("id", _key(), primary_key=True),
        sa.Column("title", sa.Text, nullable=False, server_default=""),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("source", sa.Text),
        sa.Column("url", sa.Text),
        sa.Column("published_at", _ts()),
        sa.Column("published_ts", sa.Float(precision=53)),
        sa.Column("lang", sa.Text),
        sa.Column("lean", sa.Text),
        sa.Column("gold_story_id", sa.Text),
        sa.Column("content_hash", _key(), nullable=False),
        sa.Column("entities", pg.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("ingested_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
    )
    op.create_index("articles_hash", "articles", ["content_hash"])
    op.create_index("articles_published", "articles", ["published_ts"])
    op.create_table(
        "duplicates",
        sa.Column("id", _key(), primary_key=True),
        sa.Column(
            "canonical_id", _key(), sa.ForeignKey("articles.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("source", sa.Text),
        sa.Column("url", sa.Text),
        sa.Column("published_at", _ts()),
        sa.Column("recorded_at", _ts(), nullable=False),
    )
    op.create_index("duplicates_canonical", "duplicates", ["canonical_id"])
    op.create_table(
        "embeddings",
        sa.Column(
            "article_id", _key(), sa.ForeignKey("articles.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "changes",
        sa.Column("seq", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("article_id", _key(), nullable=False),
        sa.Column("op", sa.Text, nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.CheckConstraint("op IN ('upsert', 'delete')", name="changes_op"),
    )
    op.create_table(
        "stories",
        sa.Column("id", _key(), primary_key=True),
        sa.Column("label", sa.Text, nullable=False, server_default=""),
        sa.Column("first_at", _ts()),
        sa.Column("last_at", _ts()),
        sa.Column("first_ts", sa.Float(precision=53)),
        sa.Column("last_ts", sa.Float(precision=53)),
        sa.Column("outlets", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("centroid", sa.LargeBinary),
        sa.Column("content_hash", sa.Text, nullable=False, server_default=""),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("extra", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
    )
    op.create_index("stories_last", "stories", ["last_ts"])
    op.create_table(
        "story_members",
        sa.Column(
            "article_id", _key(), sa.ForeignKey("articles.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("story_id", _key(), sa.ForeignKey("stories.id"), nullable=False),
    )
    op.create_index("story_members_story", "story_members", ["story_id"])
    op.create_table(
        "story_history",
        sa.Column("old_id", _key(), primary_key=True),
        sa.Column("new_id", _key(), primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("at", _ts(), nullable=False),
    )
    op.create_index("story_history_new", "story_history", ["new_id"])
    op.create_table(
        "story_outputs",
        sa.Column("story_id", _key(), primary_key=True),
        sa.Column("kind", _key(), primary_key=True),
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
    )
    op.create_table(
        "digests",
        sa.Column("date", _key(), primary_key=True),
        sa.Column("format", _key(), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "digests", "story_outputs", "story_history", "story_members", "stories", "changes",
        "embeddings", "duplicates", "articles",
    ):
        op.drop_table(table)
