"""Filtered listings read indexes, not the whole articles table (both backends).

``matching_ids`` (the candidates of a filtered ``related`` / ``search``) scanned every row
for a ``source`` filter, and a time window read its ids from the rows: at 100k articles of
3,000 characters, 150-370 ms per listing (``bench/filtered.py --listings``). The planner
uses an expression or partial index only for a query that spells the same expression, so
these tests ask the planner itself (SQLite's ``EXPLAIN QUERY PLAN``, PostgreSQL's
``EXPLAIN``) about the statements the store actually runs.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storyline.index.store import SCHEMA_VERSION, IngestItem, SQLiteStore
from storyline.models.types import Article

T0 = datetime(2024, 3, 1, tzinfo=UTC)
T1 = datetime(2024, 3, 2, tzinfo=UTC)
#: (since, until, source) of each listing a filtered search asks for
LISTINGS: list[tuple[datetime | None, datetime | None, str | None]] = [
    (None, None, "REUTERS"),  # an ASCII source
    (T0, T1, "reuters"),  # with a time window
    (None, None, "Süddeutsche"),  # a source outside ASCII
    (None, None, "Reuterſ"),  # outside ASCII, casefolds to ASCII
    (T0, None, None),  # a time window alone
    (None, T1, None),
]
NEW_INDEXES = {"articles_source_key", "articles_source_unkeyed", "articles_published_id"}


def _item(aid: str, source: str | None, day: int, seed: int = 0) -> IngestItem:
    v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return IngestItem(
        Article(
            id=aid,
            text=f"text of {aid}",
            source=source,
            published_at=datetime(2024, 3, day, 12, tzinfo=UTC),
        ),
        v / np.linalg.norm(v),
    )


ITEMS = [
    _item("a", "Reuters", 1),
    _item("b", "REUTERS", 2, 1),
    _item("c", "Süddeutsche", 1, 2),
    _item("d", "SÜDDEUTSCHE", 3, 3),
    _item("e", "AP", 1, 4),
    _item("f", None, 1, 5),
    _item("g", "Reuterſ", 1, 6),
]
#: what each of LISTINGS lists from ITEMS (the answer must not change with the plan)
EXPECTED = [
    {"a", "b", "g"},
    {"a", "g"},
    {"c", "d"},
    {"a", "b", "g"},
    {"a", "b", "c", "d", "e", "f", "g"},
    {"a", "c", "e", "f", "g"},
]


# -- SQLite -------------------------------------------------------------------------------
@contextmanager
def _sqlite_statements(st: SQLiteStore) -> Iterator[list[str]]:
    """The statements ``st`` runs on this thread's read connection, values bound."""
    seen: list[str] = []
    reader = st._reader()
    reader.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        reader.set_trace_callback(None)


def _sqlite_plan(path: Path, sql: str) -> str:
    with sqlite3.connect(path) as db:
        return "\n".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}"))


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'articles'"
                " AND sql IS NOT NULL"
            )
        }


def test_sqlite_filtered_listings_read_only_indexes(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    st = SQLiteStore(path)
    try:
        st.ingest(ITEMS, "m")
        for (since, until, source), want in zip(LISTINGS, EXPECTED, strict=True):
            with _sqlite_statements(st) as seen:
                assert set(st.matching_ids(since, until, source, 100)) == want, source
            (sql,) = seen
            plan = _sqlite_plan(path, sql)
            if source is None and since is None and until is None:
                continue
            # every read of articles from an index that holds all it needs
            reads = [line for line in plan.splitlines() if " articles" in line]
            assert reads and all("USING COVERING INDEX" in r for r in reads), (source, plan)
            if source is not None:  # any source: its key's range, and the unkeyed rows
                assert "USING COVERING INDEX articles_source_key (source_key=?" in plan, plan
                assert "USING COVERING INDEX articles_source_unkeyed" in plan, plan
            if source is None:
                assert "articles_published_id" in plan, plan
        # the cap holds across both parts of a source listing
        assert len(st.matching_ids(None, None, "reuters", 2)) == 2
        assert st.matching_ids(None, None, "reuters", 0) == []
    finally:
        st.close()


def _as_schema_3(path: Path) -> None:
    """Turn a file this version wrote back into one version 3 wrote: the same tables,
    its one index on ``published_ts``, none of version 4's or 5's."""
    with sqlite3.connect(path) as db:
        for name in NEW_INDEXES:
            db.execute(f"DROP INDEX IF EXISTS {name}")
        db.execute("DROP TRIGGER IF EXISTS articles_source_key_stale")
        db.execute("ALTER TABLE articles DROP COLUMN source_key")
        db.execute("CREATE INDEX IF NOT EXISTS articles_published ON articles(published_ts)")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")


def test_a_schema_3_file_gains_the_indexes_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    st = SQLiteStore(path)
    st.ingest(ITEMS, "m")
    st.close()
    _as_schema_3(path)
    assert not _indexes(path) & NEW_INDEXES

    st = SQLiteStore(path)
    try:
        assert _indexes(path) == NEW_INDEXES | {"articles_hash"}  # articles_published: gone
        assert sorted(st.article_ids()) == sorted(i.article.id for i in ITEMS)
        assert st.get_article("d").source == "SÜDDEUTSCHE"
        assert st.embeddings(["c"])[1].shape == (1, 8)
        for (since, until, source), want in zip(LISTINGS, EXPECTED, strict=True):
            assert set(st.matching_ids(since, until, source, 100)) == want
        st.ingest([_item("h", "reuters", 1, 7)], "m")  # and it keeps working
        assert "h" in st.matching_ids(T0, T1, "Reuters", 100)
    finally:
        st.close()
    with sqlite3.connect(path) as db:
        assert (
            db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            == (str(SCHEMA_VERSION),)
            == ("5",)
        )
    # an older version opening it again recreates its index (CREATE INDEX IF NOT EXISTS):
    # harmless, and the next open of this version changes nothing
    with sqlite3.connect(path) as db:
        db.execute("CREATE INDEX IF NOT EXISTS articles_published ON articles(published_ts)")
    SQLiteStore(path).close()
    assert _indexes(path) == NEW_INDEXES | {"articles_hash", "articles_published"}


# -- PostgreSQL ---------------------------------------------------------------------------
def _pg_statements(st: Any) -> tuple[list[tuple[str, Any]], Callable[[], None]]:
    import sqlalchemy as sa

    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    sa.event.listen(st._engine, "before_cursor_execute", record)
    return seen, lambda: sa.event.remove(st._engine, "before_cursor_execute", record)


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    assert isinstance(value, int | float), value
    return repr(value)


def _pg_plan(st: Any, sql: str, params: dict[str, Any]) -> str:
    """The generic plan of ``sql`` (what a statement run often gets: the planner knows
    none of its parameters, so an index that needs a parameter's value cannot serve)."""
    names = re.findall(r"%\((\w+)\)s", sql)
    prepared = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", sql)
    values = ", ".join(_literal(params[n]) for n in dict.fromkeys(names))
    with st._engine.connect() as conn:
        # a few rows: a table scan would win on cost, so ask whether an index can serve
        conn.exec_driver_sql("SET enable_seqscan = off")
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(f"PREPARE listing AS {prepared}".replace("%%", "%"))
        plan = "\n".join(
            r[0]
            for r in conn.exec_driver_sql(
                f"EXPLAIN EXECUTE listing({values})" if values else "EXPLAIN EXECUTE listing"
            )
        )
        conn.exec_driver_sql("DEALLOCATE listing")  # (it outlives the transaction)
        conn.rollback()
    return plan


def test_postgres_filtered_listings_read_only_indexes(pg_databases: Any) -> None:
    from storyline.index.pg import PostgresStore

    st = PostgresStore(pg_databases.create())
    try:
        st.ingest(ITEMS, "m")
        with st._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE articles")  # index-only scans need it
        seen, stop = _pg_statements(st)
        try:
            for (since, until, source), want in zip(LISTINGS, EXPECTED, strict=True):
                seen.clear()
                assert set(st.matching_ids(since, until, source, 100)) == want, source
                if source is None and since is None and until is None:
                    continue
                plan = _pg_plan(st, *seen[-1])
                assert "Seq Scan" not in plan and "Index Only Scan" in plan, (source, plan)
                if source is not None:
                    assert "using articles_source_key on" in plan, plan
                    assert "using articles_source_unkeyed on" in plan, plan
                if source is None:
                    assert "articles_published_id" in plan, plan
        finally:
            stop()
        assert len(st.matching_ids(None, None, "reuters", 2)) == 2
    finally:
        st.close()


def test_postgres_source_filter_folds_ascii_only_in_any_locale(pg_databases: Any) -> None:
    """In a database whose locale lowers 'I' to the dotless 'ı' (Turkish), lower() made
    'POLITICO' 'polıtıco': the filter 'politico' missed it, while the index path of the
    same search (Python's casefold) matched it."""
    import sqlalchemy as sa

    from storyline.index.pg import PostgresStore

    pg_databases.create()  # the fixture's admin connection, and its cleanup
    name = f"{pg_databases.names[-1]}_tr"
    with pg_databases._admin.connect() as conn:
        try:
            conn.execute(
                sa.text(
                    f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'"
                    " LOCALE_PROVIDER icu ICU_LOCALE 'tr-TR' LOCALE 'C.UTF-8'"
                )
            )
        except sa.exc.DBAPIError as exc:  # a server without ICU, or before PostgreSQL 15
            pytest.skip(f"cannot create a Turkish-locale database: {exc}")
    pg_databases.names.append(name)
    st = PostgresStore(pg_databases.base.set(database=name).render_as_string(hide_password=False))
    try:
        st.ingest([_item("a", "POLITICO", 1), _item("b", "İstanbul Post", 1, 1)], "m")
        assert st.matching_ids(None, None, "politico", 10) == ["a"]
        assert st.matching_ids(None, None, "PoLiTiCo", 10) == ["a"]
        assert st.matching_ids(None, None, "i̇stanbul post", 10) == ["b"]  # 'İ'.casefold()
        assert st.matching_ids(None, None, "istanbul post", 10) == []  # as SQLite
    finally:
        st.close()


def test_postgres_revision_0005_adds_the_indexes_and_keeps_the_data(pg_databases: Any) -> None:
    import sqlalchemy as sa
    from pg_schema import HEAD, upgrade_to

    from storyline.index.pg import PostgresStore

    url = pg_databases.create()

    def old_rows(conn: Any) -> None:
        conn.execute(
            sa.text(
                "INSERT INTO articles(id, title, text, source, published_at, published_ts,"
                " content_hash, ingested_at, updated_at) VALUES ('old', '', 'old text', 'Reuters',"
                " :t, :ts, 'h', :t, :t)"
            ),
            {"t": T0, "ts": T0.timestamp()},
        )

    upgrade_to(url, "0004", old_rows)
    st = PostgresStore(url)
    try:
        with st._engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM storyline_alembic_version"))
            names = {
                r[0]
                for r in conn.execute(
                    sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'articles'")
                )
            }
        assert [r[0] for r in version] == [HEAD] == ["0006"]
        assert names >= NEW_INDEXES and "articles_published" not in names
        assert st.matching_ids(T0, T1, "REUTERS", 10) == ["old"]
        assert st.get_article("old").text == "old text"
    finally:
        st.close()


def test_postgres_a_database_a_newer_version_migrated_is_refused_clearly(
    pg_databases: Any,
) -> None:
    """An older process opening a database at a revision it does not know failed with
    Alembic's own CommandError ("Can't locate revision"): an internal error (exit 1, 500)
    rather than the store's (exit 8, 503), naming neither version."""
    import sqlalchemy as sa

    from storyline.index.pg import PostgresStore
    from storyline.models.errors import StoreError

    url = pg_databases.create()
    PostgresStore(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # as a later version's migration leaves it
        conn.execute(sa.text("UPDATE storyline_alembic_version SET version_num = '9001'"))
    engine.dispose()
    with pytest.raises(StoreError, match=r"revision 9001, newer than .* \(up to 0006\)"):
        PostgresStore(url)
