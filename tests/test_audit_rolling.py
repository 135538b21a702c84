"""Rolling upgrades on PostgreSQL: a process of an older version restarting on a database a
newer version migrated.

Revisions 0003-0005 only add nullable columns and indexes, yet an older process refused
any revision it did not know, so the old replicas of a rolling upgrade that restarted
(a crash, a scale-out) could not come back. Each revision now declares the oldest code
that works on it and the migrations record the strictest of them in the database; an
older process uses a newer database as it is when it has that code revision.

The PostgreSQL tests need $STORYLINE_TEST_DATABASE_URL (``eval "$(.ci/pg start)"``).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pg_schema import HEAD, upgrade_to

from storyline.index.store import IngestItem
from storyline.models.errors import StoreError
from storyline.models.types import Article

for _mod in ("sqlalchemy", "alembic", "psycopg"):
    pytest.importorskip(_mod, reason="needs the postgres extra: pip install 'storyline[postgres]'")

#: what the migrations record at each of our revisions: 0002 is the last that older code
#: cannot work on (its stories generation), 0003-0006 only add
RECORDED = {
    "0001": "0001", "0002": "0002", "0003": "0002", "0004": "0002", "0005": "0002",
    "0006": "0002",
}

_FAKE = '''"""A later version's revision (test only)."""

import sqlalchemy as sa
from alembic import op

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None
compatible_from = {compat!r}


def upgrade() -> None:
    op.add_column("articles", sa.Column("note_{rev}", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("articles", "note_{rev}")
'''


def _newer(tmp_path: Path, compat: dict[str, str]) -> Path:
    """A later version's migrations: ours plus a revision per ``compat`` item (revision:
    its ``compatible_from``), each after the one before."""
    from storyline.index.pg import MIGRATIONS

    dest = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, dest, ignore=shutil.ignore_patterns("__pycache__"))
    down = HEAD
    for rev, oldest in compat.items():
        (dest / "versions" / f"{rev}_later.py").write_text(
            _FAKE.format(rev=rev, down=down, compat=oldest)
        )
        down = rev
    return dest


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def _record(url: str) -> list[tuple[Any, ...]]:
    return _query(url, "SELECT at_revision, oldest_code FROM storyline_schema_compat")


def _item(aid: str, text: str) -> IngestItem:
    v = np.random.default_rng(len(aid)).standard_normal(8).astype(np.float32)
    return IngestItem(Article(id=aid, text=text, source="Reuters"), v / np.linalg.norm(v))


def test_every_revision_declares_older_code_it_works_with() -> None:
    """``compatible_from`` names the revision itself or one before it (a slip would make
    the record refuse every older version, or accept the wrong one)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from storyline.index.pg import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    script = ScriptDirectory.from_config(cfg)
    declared = {}
    for s in script.walk_revisions():
        ancestry = {a.revision for a in script.iterate_revisions(s.revision, "base")}
        declared[s.revision] = s.module.compatible_from
        assert declared[s.revision] in ancestry, s.revision
    assert declared == RECORDED


def test_a_newer_revision_compatible_with_this_version_is_used_as_it_is(
    pg_databases: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from storyline.index.pg import PostgresStore

    url = pg_databases.create()
    PostgresStore(url).close()
    upgrade_to(url, "0007", migrations=_newer(tmp_path, {"0007": HEAD}))
    assert _record(url) == [("0007", HEAD)]
    with caplog.at_level(logging.WARNING, logger="storyline.index.pg"):
        st = PostgresStore(url)  # refused before: "revision 0007, newer than ..."
    try:
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(
            f"revision 0007, newer than this version of storyline knows (up to {HEAD})" in m
            and f"from revision {HEAD} on works on it" in m
            for m in warned
        ), warned
        added = st.ingest([_item("a", "alpha"), _item("b", "beta")], "m")
        assert [r.outcome for r in added] == ["inserted", "inserted"]
        st.delete_article("b")
        assert st.get_article("a").text == "alpha"
        assert st.count_articles() == 1
        assert st.matching_ids(None, None, "reuters", 10) == ["a"]
        assert [c.article_id for c in st.changes_since(0)] == ["a", "b", "b"]
    finally:
        st.close()
    # left as it was: not downgraded, not re-recorded
    assert _query(url, "SELECT version_num FROM storyline_alembic_version") == [("0007",)]
    assert _record(url) == [("0007", HEAD)]


@pytest.mark.parametrize("how", ["declared", "unrecorded"])
def test_a_newer_revision_older_code_cannot_use_is_refused_clearly(
    pg_databases: Any, tmp_path: Path, how: str
) -> None:
    """0007 works with this version's code, 0008 does not: declared by 0008, or not
    recorded at all (moved there by something that writes no record, e.g. an offline SQL
    script) so that 0007's record no longer applies."""
    import sqlalchemy as sa

    from storyline.index.pg import PostgresStore

    url = pg_databases.create()
    newer = _newer(tmp_path, {"0007": HEAD, "0008": "0008"})
    upgrade_to(url, "0007", migrations=newer)
    PostgresStore(url).close()
    if how == "declared":
        upgrade_to(url, "0008", migrations=newer)
        assert _record(url) == [("0008", "0008")]
        needs = ", and it needs storyline at revision 0008 or later"
    else:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE storyline_alembic_version SET version_num = '0008'"))
        engine.dispose()
        needs = ""
    with pytest.raises(StoreError) as caught:
        PostgresStore(url)
    assert str(caught.value) == (
        f"the database schema is at revision 0008, newer than this version of storyline"
        f" knows (up to {HEAD}){needs}: upgrade storyline to use it"
    )


def test_an_older_process_starting_while_a_newer_one_migrates_waits_for_it(
    pg_databases: Any, tmp_path: Path
) -> None:
    """It reads the revision and the record under the migration lock, so it sees both as
    the migration commits them (not the revision without its record)."""
    import sqlalchemy as sa

    from storyline.index.pg import _MIGRATE_LOCK, PostgresStore

    url = pg_databases.create()
    PostgresStore(url).close()
    opened: list[object] = []

    def start() -> None:
        try:
            opened.append(PostgresStore(url))
        except StoreError as exc:
            opened.append(exc)

    older = threading.Thread(target=start)

    def while_migrating(conn: Any) -> None:
        # as pg.migrate holds it, until the migration commits
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATE_LOCK)))
        older.start()
        time.sleep(0.5)
        assert older.is_alive() and not opened

    upgrade_to(url, "0007", while_migrating, migrations=_newer(tmp_path, {"0007": HEAD}))
    older.join(30)
    assert len(opened) == 1 and isinstance(opened[0], PostgresStore), opened
    opened[0].close()


@pytest.mark.parametrize("start", [None, "0001", "0002", "0003", "0004", "0005", HEAD])
def test_the_record_is_written_on_every_upgrade(pg_databases: Any, start: str | None) -> None:
    """From an empty database, or one at each of our revisions that a version before the
    record migrated (no record); each migration records its own revision too."""
    import sqlalchemy as sa

    from storyline.index.pg import PostgresStore

    url = pg_databases.create()
    if start is not None:

        def as_an_older_version_left_it(conn: Any) -> None:
            recorded = conn.execute(
                sa.text("SELECT at_revision, oldest_code FROM storyline_schema_compat")
            )
            assert [tuple(r) for r in recorded] == [(start, RECORDED[start])]
            conn.execute(sa.text("DROP TABLE storyline_schema_compat"))

        upgrade_to(url, start, as_an_older_version_left_it)
    PostgresStore(url).close()
    assert _record(url) == [(HEAD, RECORDED[HEAD])]
    PostgresStore(url).close()  # idempotent
    assert _record(url) == [(HEAD, RECORDED[HEAD])]


def test_a_downgrade_rewrites_the_record(pg_databases: Any) -> None:
    from alembic import command
    from alembic.config import Config

    from storyline.index.pg import MIGRATIONS, PostgresStore

    url = pg_databases.create()
    PostgresStore(url).close()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("sqlalchemy.url", url)  # as the alembic command line runs it
    command.downgrade(cfg, "0001")
    assert _record(url) == [("0001", "0001")]
    command.downgrade(cfg, "base")
    assert _record(url) == []
