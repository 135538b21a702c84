"""Source filters are one exact index range for every source (``articles.source_key``).

``matching_ids`` compared ``lower(source)`` (ASCII folding) and read every source outside
ASCII in the time window as a candidate for Python's casefold to decide: in a deployment
of Süddeutsche, Ελληνικά or Łódź outlets a filtered listing read most of its window. The
key is now stored (``source.casefold()``) by every write of ``source``: SQLite schema 5,
PostgreSQL revision 0006. Rows an older version writes (a rolling upgrade; an older
version on an upgraded SQLite file) have no key, or a stale one the trigger clears, and
are decided in Python until a store of this version opens and keys them.

The PostgreSQL tests need $STORYLINE_TEST_DATABASE_URL (``eval "$(.ci/pg start)"``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import storyline.index.store as store_mod
from storyline.index.store import IngestItem, SQLiteStore
from storyline.models.types import Article

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def _item(aid: str, source: str | None, text: str | None = None) -> IngestItem:
    v = np.random.default_rng(sum(map(ord, aid))).standard_normal(8).astype(np.float32)
    return IngestItem(
        Article(id=aid, text=text or f"text of {aid}", source=source, published_at=T0),
        v / np.linalg.norm(v),
    )


#: sources whose casefold is not their ASCII lowering, and near misses
TRICKY = [
    _item("strasse-1", "Straße"),
    _item("strasse-2", "STRASSE"),
    _item("strasse-3", "strasse"),
    _item("long-s", "Reuterſ"),  # ſ casefolds to s
    _item("kelvin", "\u212a-News"),  # the Kelvin sign casefolds to k
    _item("sigma-1", "ΟΔΟΣ"),
    _item("sigma-2", "οδος"),  # final sigma
    _item("sigma-3", "Οδοσ"),
    _item("dotted-i", "İstanbul Post"),  # casefolds to 'i̇stanbul post'
    _item("dotless-i", "ıstanbul Post"),
    _item("plain-i", "Istanbul Post"),
    _item("reuters", "Reuters"),
    _item("k-news", "K-News"),
    _item("no-source", None),
    _item("empty", ""),
]
#: filter -> what it lists from TRICKY (str.casefold equality, the documented rule)
EXPECTED = {
    "strasse": {"strasse-1", "strasse-2", "strasse-3"},
    "STRAßE": {"strasse-1", "strasse-2", "strasse-3"},
    "reuters": {"long-s", "reuters"},
    "REUTERſ": {"long-s", "reuters"},
    "k-news": {"kelvin", "k-news"},
    "\u212a-NEWS": {"kelvin", "k-news"},
    "οδος": {"sigma-1", "sigma-2", "sigma-3"},
    "ΟΔΟΣ": {"sigma-1", "sigma-2", "sigma-3"},
    "i̇stanbul post": {"dotted-i"},
    "istanbul post": {"plain-i"},
    "ISTANBUL POST": {"plain-i"},
    "ıstanbul post": {"dotless-i"},
    "": {"empty"},
    "nobody": set(),
}


def _listings(st: Any) -> dict[str, set[str]]:
    return {s: set(st.matching_ids(None, None, s, 100)) for s in EXPECTED}


def _keys(st: Any) -> dict[str, str | None]:
    """Each article's stored key (read straight from the database)."""
    if isinstance(st, SQLiteStore):
        with sqlite3.connect(st.path) as db:
            return dict(db.execute("SELECT id, source_key FROM articles"))
    import sqlalchemy as sa

    with st._engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(sa.text("SELECT id, source_key FROM articles"))}


def _sql(st: Any, sql: str, params: dict[str, Any] | None = None) -> None:
    """Write to the store's database as another (older) version's process would."""
    if isinstance(st, SQLiteStore):
        with sqlite3.connect(st.path) as db:
            db.execute(sql, params or {})
        return
    import sqlalchemy as sa

    with st._engine.begin() as conn:
        conn.execute(sa.text(sql), params or {})


@pytest.mark.both_backends
def test_tricky_casefolds_are_exact_and_stored(make_store: Callable[..., Any]) -> None:
    st = make_store()
    st.ingest(TRICKY, "m")
    assert _listings(st) == EXPECTED
    keys = _keys(st)
    assert keys["strasse-1"] == keys["strasse-2"] == "strasse"
    assert keys["kelvin"] == "k-news" and keys["long-s"] == "reuters"
    assert keys["no-source"] is None and keys["empty"] == ""
    # with a window and a cap as well
    assert set(st.matching_ids(T0, None, "strasse", 100)) == EXPECTED["strasse"]
    assert st.matching_ids(None, T0, "strasse", 100) == []
    assert len(st.matching_ids(None, None, "οδος", 2)) == 2


def test_a_source_filter_reads_only_its_own_source(tmp_path: Path) -> None:
    """The statement returns the matches, not every source outside ASCII as a candidate
    (the read that made a filtered listing cost its whole window)."""
    st = SQLiteStore(tmp_path / "db.sqlite")
    try:
        others = [_item(f"other-{i}", f"Ελληνικά Νέα {i}") for i in range(50)]
        st.ingest([*TRICKY, *others], "m")
        seen: list[str] = []
        reader = st._reader()
        reader.set_trace_callback(seen.append)
        try:
            assert set(st.matching_ids(None, None, "Straße", 100)) == EXPECTED["strasse"]
            assert st.matching_ids(None, None, "nobody", 100) == []
        finally:
            reader.set_trace_callback(None)
        for sql, want in zip(seen, (3, 0), strict=True):
            (packed,) = reader.execute(sql).fetchone()
            assert len(store_mod._json_decode(packed)) == want, sql
    finally:
        st.close()


@pytest.mark.both_backends
def test_every_write_of_a_source_writes_its_key(make_store: Callable[..., Any]) -> None:
    """Insert, metadata update, content update and a duplicate promoted by a delete."""
    st = make_store()
    st.ingest([_item("a", "Reuters"), _item("b", "AP"), _item("dup", "Straße", "text of b")], "m")
    st.ingest([_item("a", "Süddeutsche")], "m")  # same content, new source: metadata update
    st.ingest([_item("b", "ΟΔΟΣ", "new text of b")], "m")  # new content and source
    # "dup" was a duplicate of b's old content; b's update made it a stored article
    assert _keys(st) == {"a": "süddeutsche", "b": "οδοσ", "dup": "strasse"}
    assert st.matching_ids(None, None, "reuters", 10) == []
    assert st.matching_ids(None, None, "SÜDDEUTSCHE", 10) == ["a"]
    assert st.matching_ids(None, None, "STRASSE", 10) == ["dup"]
    st.ingest([_item("a", None)], "m")
    assert _keys(st)["a"] is None and st.matching_ids(None, None, "süddeutsche", 10) == []


@pytest.mark.both_backends
def test_another_spelling_of_the_same_key_keeps_the_row_keyed(
    make_store: Callable[..., Any],
) -> None:
    """'STRASSE' -> 'Straße' keeps the key 'strasse': the stale-key trigger cannot tell this
    from an older version's update and clears it; the store puts it back."""
    st = make_store()
    st.ingest([_item("a", "STRASSE")], "m")
    st.ingest([_item("a", "Straße")], "m")
    assert _keys(st) == {"a": "strasse"}
    st.ingest([_item("a", "STRASSE", "other text")], "m")  # the content-update path
    st.ingest([_item("a", "Straße", "more text")], "m")
    assert _keys(st) == {"a": "strasse"}
    assert st.matching_ids(None, None, "strasse", 10) == ["a"]


@pytest.mark.both_backends
def test_rows_an_older_version_writes_are_found_and_then_keyed(
    make_store: Callable[..., Any],
) -> None:
    """An older version (PostgreSQL code at 0005 during a rolling upgrade, or SQLite schema
    4 code on an upgraded file) writes articles without a key, and changes sources without
    changing the key."""
    st = make_store()
    st.ingest([_item("new", "Straße"), _item("moved", "Reuters"), _item("recased", "AP")], "m")
    # as that code inserts and updates (it names no source_key)
    _sql(
        st,
        "INSERT INTO articles(id, title, text, source, published_at, published_ts,"
        " content_hash, ingested_at, updated_at)"
        " VALUES ('old', '', 'old text', 'STRASSE', :t, :ts, 'h-old', :t, :t)",
        {"t": T0.isoformat(), "ts": T0.timestamp()},
    )
    _sql(st, "UPDATE articles SET source = 'Ελληνικά' WHERE id = 'moved'")
    _sql(st, "UPDATE articles SET source = 'ap' WHERE id = 'recased'")
    assert _keys(st)["old"] is None
    assert _keys(st)["moved"] is None  # the trigger: 'reuters' was stale
    assert _keys(st)["recased"] == "ap"  # still right: kept
    assert set(st.matching_ids(None, None, "strasse", 10)) == {"new", "old"}
    assert st.matching_ids(None, None, "reuters", 10) == []
    assert st.matching_ids(None, None, "ΕΛΛΗΝΙΚΆ", 10) == ["moved"]
    assert st.matching_ids(None, None, "AP", 10) == ["recased"]
    assert len(st.matching_ids(None, None, "strasse", 1)) == 1
    st.close()
    st = make_store()  # this version opening again keys them
    assert _keys(st) == {"new": "strasse", "old": "strasse", "moved": "ελληνικά",
                         "recased": "ap"}
    assert set(st.matching_ids(None, None, "STRASSE", 10)) == {"new", "old"}


# -- SQLite schema 4 -> 5 -------------------------------------------------------------------
def _as_schema_4(path: Path) -> None:
    """Turn a file this version wrote into one version 4 wrote (its DDL)."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER articles_source_key_stale")
        db.execute("DROP INDEX articles_source_key")
        db.execute("DROP INDEX articles_source_unkeyed")
        db.execute("ALTER TABLE articles DROP COLUMN source_key")
        db.execute(
            "CREATE INDEX articles_source ON articles(lower(source), published_ts, id, source)"
        )
        db.execute(
            "CREATE INDEX articles_source_non_ascii ON articles(published_ts, source, id)"
            " WHERE source GLOB '*[^\x01-\x7f]*'"
        )
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")


def _schema(path: Path) -> tuple[str, set[str], set[str], set[str]]:
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        cols = {r[1] for r in db.execute("PRAGMA table_info(articles)")}
        objs = {(r[0], r[1]) for r in db.execute("SELECT type, name FROM sqlite_master")}
    return (
        version[0],
        cols,
        {n for t, n in objs if t == "index" and n.startswith("articles_")},
        {n for t, n in objs if t == "trigger"},
    )


def test_a_schema_4_file_is_upgraded_with_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    st = SQLiteStore(path)
    st.ingest(TRICKY, "m")
    st.close()
    _as_schema_4(path)
    assert "source_key" not in _schema(path)[1]

    st = SQLiteStore(path)
    try:
        version, cols, indexes, triggers = _schema(path)
        assert version == "5" and "source_key" in cols
        assert indexes == {"articles_hash", "articles_source_key", "articles_source_unkeyed",
                           "articles_published_id"}
        assert triggers == {"articles_source_key_stale"}
        keys = _keys(st)
        assert keys == {i.article.id: store_mod._source_key(i.article.source) for i in TRICKY}
        assert _listings(st) == EXPECTED
    finally:
        st.close()


def test_an_upgrade_cut_short_is_finished_by_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys are written in batches, all in the upgrade's one transaction: a crash half
    way leaves the file as version 4 wrote it, and the next open does it all."""
    path = tmp_path / "old.sqlite"
    st = SQLiteStore(path)
    st.ingest(TRICKY, "m")
    st.close()
    _as_schema_4(path)
    monkeypatch.setattr(store_mod, "_KEY_BATCH", 4)
    calls = 0
    real = store_mod._source_key

    def crash_half_way(source: str | None) -> str | None:
        nonlocal calls
        calls += 1
        if calls > 6:  # in the second batch
            raise KeyboardInterrupt
        return real(source)

    monkeypatch.setattr(store_mod, "_source_key", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        SQLiteStore(path)
    assert _schema(path)[0] == "4" and "source_key" not in _schema(path)[1]
    monkeypatch.setattr(store_mod, "_source_key", real)
    st = SQLiteStore(path)
    try:
        assert _schema(path)[0] == "5"
        assert None not in {v for k, v in _keys(st).items() if k not in ("no-source",)}
        assert _listings(st) == EXPECTED
    finally:
        st.close()


# -- PostgreSQL revision 0005 -> 0006 --------------------------------------------------------
def test_postgres_revision_0006_keys_existing_rows(pg_databases: Any) -> None:
    import sqlalchemy as sa
    from pg_schema import upgrade_to

    from storyline.index.pg import PostgresStore

    url = pg_databases.create()

    def rows_0005_wrote(conn: Any) -> None:
        for i, item in enumerate(TRICKY):
            conn.execute(
                sa.text(
                    "INSERT INTO articles(id, title, text, source, published_at, published_ts,"
                    " content_hash, ingested_at, updated_at)"
                    " VALUES (:id, '', :text, :source, :t, :ts, :h, :t, :t)"
                ),
                {"id": item.article.id, "text": item.article.text, "source": item.article.source,
                 "t": T0, "ts": T0.timestamp(), "h": f"h{i}"},
            )

    upgrade_to(url, "0005", rows_0005_wrote)
    upgrade_to(url, "0006")  # the migration itself keys them (not the store's open)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            keys = dict(conn.execute(sa.text("SELECT id, source_key FROM articles")).all())
            names = {r[0] for r in conn.execute(
                sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'articles'"))}
    finally:
        engine.dispose()
    assert keys == {i.article.id: store_mod._source_key(i.article.source) for i in TRICKY}
    assert {"articles_source_key", "articles_source_unkeyed"} <= names
    assert not {"articles_source", "articles_source_non_ascii"} & names
    st = PostgresStore(url)
    try:
        assert _listings(st) == EXPECTED
    finally:
        st.close()
    # and back: 0005's indexes again, the column and trigger gone
    upgrade_to(url, "0006")
    from alembic import command
    from alembic.config import Config

    from storyline.index.pg import MIGRATIONS

    engine = sa.create_engine(url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("path_separator", "os")
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005")
        with engine.connect() as conn:
            names = {r[0] for r in conn.execute(
                sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'articles'"))}
            cols = {r[0] for r in conn.execute(sa.text(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'articles'"))}
    finally:
        engine.dispose()
    assert {"articles_source", "articles_source_non_ascii"} <= names
    assert "source_key" not in cols
