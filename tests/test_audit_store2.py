"""Regression tests from the second store audit, on SQLite and PostgreSQL alike: a delete's
change record names the story the article left (and an older database gains the column),
text no database can hold (NUL, lone surrogates) finds nothing and is refused as invalid
input, and the two backends answer the same call the same way (errors, order, limits,
case folding).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storyline.index.store import SCHEMA_VERSION, IngestItem, SQLiteStore
from storyline.index.types import Story
from storyline.models.errors import InvalidArticle, InvalidInput, NotFound, StoreError
from storyline.models.types import Article

pytestmark = pytest.mark.both_backends
MakeStore = Callable[..., Any]
DAY = datetime(2024, 3, 1, tzinfo=UTC)


def _item(aid: str, text: str, *, source: str | None = None, seed: int = 0,
          published_at: datetime | None = DAY) -> IngestItem:
    v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    art = Article(id=aid, text=text, source=source, published_at=published_at)
    return IngestItem(art, v / np.linalg.norm(v))


def _story(sid: str, members: list[str]) -> Story:
    return Story(sid, "label", members, DAY, DAY, {})


# -- a delete's story in the change feed -----------------------------------------------------
def test_a_delete_s_change_record_names_the_story_the_article_left(
    make_store: MakeStore,
) -> None:
    """The store drops the article's membership with it and the feed recorded only the id:
    no reader could tell which story lost the article."""
    st = make_store()
    st.ingest([_item("a", "alpha"), _item("b", "beta", seed=1), _item("c", "gamma", seed=2)],
              "m")
    st.save_story(_story("s1", ["a", "b"]))
    st.delete_article("a")
    st.delete_article("c")  # in no story
    feed = st.changes_since(0)
    assert [(c.article_id, c.op, c.story_id) for c in feed[-2:]] == [
        ("a", "delete", "s1"), ("c", "delete", None)]
    assert all(c.story_id is None for c in feed if c.op == "upsert")
    assert st.story_of(["a"]) == {}  # the membership went, the feed kept it
    assert st.deleted_story_of(["a", "b", "c", "nope", "a\x00"]) == {"a": "s1"}
    # deleted again from another story: the last delete wins
    st.ingest([_item("a", "alpha again", seed=3)], "m")
    st.save_story(_story("s2", ["a"]))
    st.delete_article("a")
    assert st.deleted_story_of(["a"]) == {"a": "s2"}


_V1_CHANGES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta(key, value) VALUES ('schema_version', '1');
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    article_id TEXT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    at TEXT NOT NULL
);
INSERT INTO changes(article_id, op, at) VALUES ('old', 'upsert', '2024-01-01T00:00:00+00:00');
INSERT INTO changes(article_id, op, at) VALUES ('old', 'delete', '2024-01-02T00:00:00+00:00');
"""


def _old_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """A database as the previous schema left it, with a delete recorded without its
    story; returns what opens it: a path (SQLite) or a URL (PostgreSQL)."""
    if backend == "sqlite":
        path = tmp_path / "old.sqlite"
        with sqlite3.connect(path) as db:
            db.executescript(_V1_CHANGES)
        return path
    import sqlalchemy as sa
    from pg_schema import upgrade_to

    def old_changes(conn: Any) -> None:  # a delete recorded without its story
        for op, day in (("upsert", 1), ("delete", 2)):
            conn.execute(sa.text(
                "INSERT INTO changes(article_id, op, at) VALUES ('old', :op, :at)"
            ), {"op": op, "at": datetime(2024, 1, day, tzinfo=UTC)})

    url = request.getfixturevalue("pg_databases").create()
    upgrade_to(url, "0002", old_changes)
    return url


def test_an_old_database_gains_the_delete_s_story_and_keeps_working(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where = _old_database(backend, tmp_path, request)

    def open_store() -> Any:
        if backend == "sqlite":
            return SQLiteStore(where)
        from storyline.index.pg import PostgresStore

        return PostgresStore(where)

    st = open_store()
    try:
        assert [(c.article_id, c.op, c.story_id) for c in st.changes_since(0)] == [
            ("old", "upsert", None), ("old", "delete", None)]
        assert st.deleted_story_of(["old"]) == {}  # not recorded then: the caller falls back
        st.ingest([_item("a", "alpha")], "m")
        st.save_story(_story("s1", ["a"]))
        st.delete_article("a")
        assert st.changes_since(2)[-1].story_id == "s1"
        assert st.deleted_story_of(["a", "old"]) == {"a": "s1"}
    finally:
        st.close()
    st = open_store()  # opened again: migrated once, the record stays
    try:
        assert st.deleted_story_of(["a"]) == {"a": "s1"}
    finally:
        st.close()
    if backend == "sqlite":
        with sqlite3.connect(where) as db:
            assert db.execute("SELECT value FROM meta WHERE key='schema_version'"
                              ).fetchone() == (str(SCHEMA_VERSION),)


def test_a_replica_marks_the_story_of_an_article_that_came_and_went_since_it_loaded(
    pipeline: Any, embedder: Any
) -> None:
    """An article another process ingested and deleted after this replica's clusterer
    loaded was in no story the replica knew: its warmer was never told that the story
    lost a member (it fell back to its clusterer's memory)."""
    from storyline.service.api.replica import ChangeFollower
    from storyline.service.api.runtime import BoundedPool
    from storyline.service.api.warmer import StoryWarmer
    from storyline.service.pipeline import Pipeline
    from storyline.service.settings import Settings

    court = [
        Article("court-1", "The Supreme Court ruled on Monday that police officers were "
                "entitled to qualified immunity in two excessive force cases.",
                "Court sides with police", "Outlet A", published_at=DAY),
        Article("court-2", "Justices overturned two lower court rulings, granting officers "
                "qualified immunity from lawsuits over the use of force.",
                "Justices back officers", "Outlet B", published_at=DAY),
    ]
    late = Article("court-3", "The Supreme Court sided with police officers, granting "
                   "qualified immunity in two cases over excessive force.",
                   "Police win at Supreme Court", "Outlet C", published_at=DAY)
    pipeline.ingest(court)
    s = pipeline.settings
    replica = Pipeline(Settings(data_dir=s.data_dir, database_url=s.database_url),
                       embedder=embedder)

    class Runtime:
        def __init__(self) -> None:
            self.pipeline = replica
            self.background = BoundedPool("audit-store2", 1, 8)
            self.io = self.background
            self.warmer: Any = None

    rt = Runtime()
    rt.warmer = StoryWarmer(rt)  # not started: what it is told is what it would analyse
    try:
        assert replica.clusterer.story_of("court-1") is not None  # loaded now
        pipeline.ingest([late])
        sid = pipeline.store.story_of(["court-3"]).get("court-3")
        assert sid is not None and sid == pipeline.store.story_of(["court-1"])["court-1"]
        pipeline.delete("court-3")
        assert replica.clusterer.story_of("court-3") is None  # it never knew it

        async def run() -> set[str]:
            follower = ChangeFollower(rt, 0.02)
            follower.start()
            try:
                deadline = time.monotonic() + 10
                while not rt.warmer._dirty:
                    assert time.monotonic() < deadline, "the replica's warmer was never told"
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)
            finally:
                await follower.stop()
            return set(rt.warmer._dirty)

        assert asyncio.run(run()) == {sid}
    finally:
        rt.background.shutdown()  # (a step still running there: its query ends first)
        replica.store.close()


# -- text no database can hold -----------------------------------------------------------------
@pytest.mark.parametrize("bad", ["a\x00", "a\ud800"], ids=["nul", "surrogate"])
def test_unstorable_text_finds_nothing_in_either_backend(
    make_store: MakeStore, bad: str
) -> None:
    """PostgreSQL refuses NUL in a parameter: a lookup failed as StoreError (503, retry)
    where SQLite answered not found; a lone surrogate failed both with a raw
    UnicodeEncodeError. Callers other than the HTTP layer (CLI, eval, Python) reach it."""
    st = make_store()
    st.ingest([_item("a", "alpha", source="Outlet A"), _item("b", "beta", seed=1)], "m")
    st.save_story(_story("s1", ["a", "b"]))
    st.put_digests("2024-03-01", {"md": "# d"})
    with pytest.raises(NotFound):
        st.get_article(bad)
    assert st.get_articles([bad, "a"])[0].id == "a"
    assert st.canonical_id(bad) is None
    assert st.duplicates_of(bad) == []
    assert st.query_context(bad) is None
    ctx = st.query_context("a", [bad, "b\x00"])  # (SQLite's json_each read "b\x00" as "b")
    assert ctx is not None and set(ctx.briefs) == {"a", "b"}  # the story's members only
    assert st.briefs([bad]) == {} and st.story_of([bad]) == {}
    assert st.existing_hashes([bad]) == {} and st.ids_for_hashes([bad]) == {}
    assert st.embeddings([bad, "a"])[0] == ["a"]
    assert st.entities([bad]) == {} and st.published_ts([bad]) == {}
    assert st.ingested_ts([bad]) == {} and st.deleted_story_of([bad]) == {}
    with pytest.raises(NotFound):
        st.get_story(bad)
    with pytest.raises(NotFound):
        st.resolve_story(bad)
    assert st.story_history(bad) == []
    assert st.list_stories(status=bad) == [] and st.count_stories(bad) == 0
    assert st.get_output(bad, "summary") is None and st.get_output("s1", bad) is None
    with pytest.raises(NotFound):
        st.get_digest(bad, "md")
    with pytest.raises(NotFound):
        st.get_digest("2024-03-01", bad)
    assert st.matching_ids(None, None, bad, 10) == []
    with pytest.raises(NotFound):
        st.delete_article(bad)
    assert st.delete_digest(bad) is False
    assert st.count_articles() == 2 and st.digest_dates() == ["2024-03-01"]


@pytest.mark.parametrize("bad", ["a\x00", "a\ud800"], ids=["nul", "surrogate"])
def test_unstorable_text_is_refused_as_invalid_input_by_every_write(
    make_store: MakeStore, bad: str
) -> None:
    """PostgreSQL failed these writes as StoreError (a 503 to retry, forever); SQLite
    stored the NUL (a database no PostgreSQL could take over) or failed on a surrogate."""
    st = make_store()
    st.ingest([_item("a", "alpha")], "m")
    st.save_story(_story("s1", ["a"]))
    for field in ("id", "text", "title", "source", "url", "lang", "lean", "story_id"):
        base = _item("n", "new text", seed=4)
        art = Article(**{**{f: getattr(base.article, f) for f in (
            "id", "text", "title", "source", "url", "published_at", "lang", "story_id",
            "lean")}, field: bad})
        with pytest.raises(InvalidArticle) as err:
            st.ingest([_item("ok", "fine", seed=5), IngestItem(art, base.vector)], "m")
        assert err.value.field == field
    with pytest.raises(InvalidArticle):
        st.ingest([IngestItem(Article("n", "new text"), _item("n", "x").vector, (bad,))], "m")
    with pytest.raises(InvalidInput):
        st.ingest([_item("n", "new text")], bad)
    for story in (_story(bad, ["a"]), _story("s2", [bad]),
                  Story("s2", bad, ["a"], DAY, DAY, {}),
                  Story("s2", "l", ["a"], DAY, DAY, {bad: 1})):
        with pytest.raises(InvalidInput):
            st.save_story(story)
    with pytest.raises(InvalidInput):
        st.record_history("s1", bad, "merge")
    for args in ((bad, "k", "h", "{}"), ("s1", bad, "h", "{}"), ("s1", "k", "h", bad)):
        with pytest.raises(InvalidInput):
            st.put_output(*args)
    with pytest.raises(InvalidInput):
        st.put_digests(bad, {"md": "x"})
    with pytest.raises(InvalidInput):
        st.put_digests("2024-03-01", {"md": bad})
    assert st.article_ids() == ["a"] and [c.op for c in st.changes_since(0)] == ["upsert"]
    assert st.story_of(["a"]) == {"a": "s1"} and st.list_stories()[0].label == "label"
    assert st.digest_dates() == [] and st.get_output("s1", "k") is None


# -- the same answer from both backends ----------------------------------------------------------
def test_a_source_filter_folds_case_as_python_does(make_store: MakeStore) -> None:
    """``matching_ids`` narrowed in SQL by lower(), which folds ASCII only in SQLite and by
    locale in PostgreSQL: a source spelled with a letter that casefolds to ASCII (the long
    s, the Kelvin sign) was missed by one backend, or both, while ``_passes`` (the index
    path of the same search) matched it."""
    st = make_store()
    st.ingest([
        _item("a", "alpha", source="ſtar News"), _item("b", "beta", source="Star news", seed=1),
        _item("c", "gamma", source="\u212aelvin", seed=2),
        _item("d", "delta", source="Kelvin", seed=3),
        _item("e", "epsilon", source="Stár News", seed=4), _item("f", "zeta", seed=5),
    ], "m")
    assert sorted(st.matching_ids(None, None, "STAR NEWS", 10)) == ["a", "b"]
    assert sorted(st.matching_ids(None, None, "kelvin", 10)) == ["c", "d"]
    assert st.matching_ids(None, None, "stár news", 10) == ["e"]
    assert len(st.matching_ids(None, None, "star news", 1)) == 1
    # a limit of 0: nothing (SQLite returned one match, PostgreSQL none)
    assert st.matching_ids(None, None, "star news", 0) == []
    assert st.matching_ids(None, None, None, 0) == []


def test_negative_counts_are_invalid_input_in_both_backends(make_store: MakeStore) -> None:
    """SQLite read a negative LIMIT or OFFSET as none (everything), PostgreSQL failed with
    a StoreError; a batch of 0 read nothing and said nothing."""
    st = make_store()
    st.ingest([_item("a", "alpha"), _item("b", "beta", seed=1)], "m")
    st.save_story(_story("s1", ["a", "b"]))
    for call in (
        lambda: st.list_stories(limit=-1), lambda: st.list_stories(offset=-1),
        lambda: st.changes_since(0, -1), lambda: st.matching_ids(None, None, None, -1),
        lambda: st.matching_ids(None, None, "x", -1), lambda: list(st.iter_articles(0)),
    ):
        with pytest.raises(InvalidInput):
            call()
    assert st.list_stories(limit=0) == [] and st.changes_since(0, 0) == []
    assert [a.id for a in st.iter_articles(1)] == ["a", "b"]


def test_a_failed_write_is_a_store_error_in_both_backends(make_store: MakeStore) -> None:
    """A statement failing inside a SQLite write transaction (here a member that is not a
    stored article) escaped as a raw sqlite3 error, a 500 with a traceback, where
    PostgreSQL's is a StoreError; nothing of the write stays."""
    st = make_store()
    st.ingest([_item("a", "alpha")], "m")
    with pytest.raises(StoreError):
        st.save_story(_story("s1", ["a", "not-stored"]))
    with pytest.raises(NotFound):
        st.get_story("s1")
    st.save_story(_story("s1", ["a"]))  # the store is still usable
    assert st.story_of(["a"]) == {"a": "s1"}


def test_results_with_equal_keys_come_in_the_same_order(make_store: MakeStore) -> None:
    """``articles_between`` ordered by time only and SQLite's ``story_history`` by time
    only: equal times came in insertion order on SQLite, in any order on PostgreSQL."""
    st = make_store()
    st.ingest([_item(i, f"text {i}", seed=k) for k, i in enumerate(["d", "b", "c", "a"])], "m")
    assert st.articles_between(None, None) == ["a", "b", "c", "d"]
    st._clock = lambda: DAY  # (both stores read their clock per write)
    for old in ("z", "a", "m"):
        st.record_history(old, "s9", "merge")
    assert [h.old_id for h in st.story_history("s9")] == ["a", "m", "z"]


def test_a_file_that_is_no_database_is_a_store_error(backend: str, tmp_path: Path) -> None:
    """Opening one raised a raw sqlite3.DatabaseError (PostgresStore: StoreError)."""
    if backend != "sqlite":
        pytest.skip("SQLite's file only")
    path = tmp_path / "not.sqlite"
    path.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(StoreError, match="cannot open"):
        SQLiteStore(path)


def test_a_closed_store_refuses_reads_and_writes_in_both_backends(
    make_store: MakeStore,
) -> None:
    """A closed PostgresStore opened a new connection pool on its next use and went on
    reading and writing (holding connections past shutdown); a closed SQLiteStore fails."""
    st = make_store()
    st.ingest([_item("a", "alpha")], "m")
    st.close()
    with pytest.raises(StoreError):
        st.count_articles()
    with pytest.raises(StoreError):
        st.put_digests("2024-03-01", {"md": "# d"})
    st.close()  # twice: nothing more to do
