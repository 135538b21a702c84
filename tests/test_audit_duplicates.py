"""Regression tests from the soak audit, on SQLite and PostgreSQL alike: a duplicate (the
same title and text as a stored article up to case and spacing, under another id) keeps
what it was acknowledged with. When its stored article is updated or deleted it becomes a
stored article with its own title, text, source, lean, language and story id, not the
stored article's; a re-send with other fields updates its record; a database an older
version wrote gains the columns, its old records acting as before.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar.testing import TestClient

from storyline.index.store import SCHEMA_VERSION, IngestItem, SQLiteStore
from storyline.models.types import Article

pytestmark = pytest.mark.both_backends
MakeStore = Callable[..., Any]
DAY = datetime(2024, 3, 1, tzinfo=UTC)
TEXT = "The harbour bridge was repainted over the weekend by city crews."

A = Article(id="cas-a", title="Harbour bridge repainted", text=TEXT, source="Outlet A",
            url="https://a.example/1", published_at=DAY, lang="en", lean="left",
            story_id="s-1")
B = Article(id="cas-b", title="HARBOUR BRIDGE  REPAINTED", text=TEXT.upper(),
            source="Outlet B", url="https://b.example/1",
            published_at=datetime(2024, 3, 2, tzinfo=UTC), lang="en-GB", lean="right",
            story_id="s-2")


def _item(a: Article, seed: int = 0) -> IngestItem:
    v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return IngestItem(a, v / np.linalg.norm(v))


def _as_sent(a: Article, aid: str) -> Article:
    return replace(a, id=aid)


def test_a_promoted_duplicate_keeps_its_own_title_text_lean_lang_and_story(
    make_store: MakeStore,
) -> None:
    """It took the deleted article's title casing, text, lean, language and story id."""
    st = make_store()
    st.ingest([_item(A)], "m")
    assert [(r.outcome, r.duplicate_of) for r in st.ingest([_item(B)], "m")] == [
        ("duplicate", "cas-a")]
    assert st.delete_article("cas-a") == ["cas-b"]
    assert st.get_article("cas-b") == B


def test_a_re_sent_duplicate_s_lean_and_lang_update_its_record(make_store: MakeStore) -> None:
    st = make_store()
    st.ingest([_item(A), _item(B)], "m")
    again = replace(B, lean="center", lang="en-US", title=A.title)
    assert [r.outcome for r in st.ingest([_item(again)], "m")] == ["duplicate"]
    assert [r.outcome for r in st.ingest([_item(again)], "m")] == ["duplicate"]  # as recorded
    changed = replace(A, text=TEXT + " It took two days.")
    promoted: list[str] = []
    assert [r.outcome for r in st.ingest([_item(changed, 1)], "m", promoted=promoted)] == [
        "updated"]
    assert promoted == ["cas-b"] and st.get_article("cas-b") == again


def test_the_other_duplicates_keep_theirs_through_each_promotion(
    make_store: MakeStore,
) -> None:
    """``cas-c`` was sent with ``cas-a``'s title and text: neither a metadata update of
    ``cas-a`` (its title's case) nor the promotion of ``cas-b`` may hand it theirs."""
    st = make_store()
    c = replace(_as_sent(A, "cas-c"), source="Outlet C", lean=None, lang=None, story_id=None)
    st.ingest([_item(A), _item(B), _item(c)], "m")
    assert [r.outcome for r in st.ingest([_item(replace(A, title=A.title.title()))], "m")] == [
        "updated"]
    assert st.delete_article("cas-a") == ["cas-b"]
    assert st.duplicates_of("cas-b") == ["cas-c"]
    assert st.get_article("cas-b") == B
    assert st.delete_article("cas-b") == ["cas-c"]
    assert st.get_article("cas-c") == c


def test_a_duplicate_id_answers_the_article_it_repeats_until_promoted(
    pipeline: Any,
) -> None:
    """Through the HTTP API, as the audit found it."""
    from storyline.service.api.app import create_app

    key = "k" * 32
    auth = {"Authorization": f"Bearer {key}"}
    s = pipeline.settings.model_copy(update={
        "api_keys_sha256": [hashlib.sha256(key.encode()).hexdigest()], "warm_stories": False})

    def body(a: Article) -> dict[str, Any]:
        return {"id": a.id, "title": a.title, "text": a.text, "source": a.source,
                "url": a.url, "lean": a.lean, "lang": a.lang,
                "published_at": a.published_at.isoformat() if a.published_at else None}

    with TestClient(create_app(s, pipeline=pipeline)) as client:
        client.post("/v1/articles", json={"articles": [body(A)]}, headers=auth)
        r = client.post("/v1/articles", json={"articles": [body(B)]}, headers=auth).json()
        assert r["results"][0]["outcome"] == "duplicate"
        got = client.get("/v1/articles/cas-b").json()  # as documented: the stored article
        assert (got["id"], got["title"], got["lean"], got["duplicate_of"]) == (
            "cas-a", A.title, "left", "cas-a")
        assert client.delete("/v1/articles/cas-a", headers=auth).status_code == 204
        got = client.get("/v1/articles/cas-b").json()
        assert (got["id"], got["title"], got["text"], got["source"], got["lean"],
                got["lang"], got["duplicate_of"]) == (
            "cas-b", B.title, B.text, "Outlet B", "right", "en-GB", None)


# -- a database an older version wrote --------------------------------------------------------
_V2_DUPLICATES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta(key, value) VALUES ('schema_version', '2');
CREATE TABLE duplicates (
    id TEXT PRIMARY KEY,
    canonical_id TEXT NOT NULL REFERENCES articles(id) ON DELETE CASCADE,
    source TEXT,
    url TEXT,
    published_at TEXT,
    recorded_at TEXT NOT NULL
);
"""


@pytest.fixture()
def old_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest
                 ) -> Iterator[Callable[[], Any]]:
    """Opens a database as the previous schema left it (SQLite: version 2, PostgreSQL:
    revision 0003)."""
    if backend == "sqlite":
        path = tmp_path / "old.sqlite"
        with sqlite3.connect(path) as db:
            db.executescript(_V2_DUPLICATES)
        where: Any = path
    else:
        from pg_schema import upgrade_to

        where = request.getfixturevalue("pg_databases").create()
        upgrade_to(where, "0003")

    def open_store() -> Any:
        if backend == "sqlite":
            return SQLiteStore(where)
        from storyline.index.pg import PostgresStore

        return PostgresStore(where)

    yield open_store


def _record_old_duplicate(backend: str, st: Any) -> None:
    """``cas-b`` as an older version recorded it (no title, text, lean, lang)."""
    sql = ("INSERT INTO duplicates(id, canonical_id, source, url, published_at, recorded_at)"
           " VALUES ('cas-b', 'cas-a', 'Outlet B', NULL, NULL, '2024-03-02T00:00:00+00:00')")
    if backend == "sqlite":
        with st.transaction() as db:
            db.execute(sql)
    else:
        import sqlalchemy as sa

        with st.transaction() as db:
            db.execute(sa.text(sql))


def test_an_old_database_gains_the_columns_and_its_old_records_act_as_before(
    backend: str, old_database: Callable[[], Any], tmp_path: Path,
) -> None:
    st = old_database()
    try:
        st.ingest([_item(A)], "m")
        _record_old_duplicate(backend, st)
        # old record: "as the stored article" for what it did not keep
        assert st.delete_article("cas-a") == ["cas-b"]
        assert st.get_article("cas-b") == replace(A, id="cas-b", source="Outlet B", url=None,
                                                  published_at=None)
        # a new one keeps its own
        st.ingest([_item(replace(B, id="cas-d"))], "m")
        st.delete_article("cas-b")
        assert st.get_article("cas-d") == replace(B, id="cas-d")
    finally:
        st.close()
    st = old_database()  # opened again: migrated once, the records stay
    try:
        assert st.get_article("cas-d") == replace(B, id="cas-d")
    finally:
        st.close()
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "old.sqlite") as db:
            assert db.execute("SELECT value FROM meta WHERE key='schema_version'"
                              ).fetchone() == (str(SCHEMA_VERSION),)
