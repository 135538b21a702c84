"""The SQLite store: idempotent ingest, updates, duplicates, atomic batches, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storyline.index.store import IngestItem, SQLiteStore
from storyline.models.errors import InvalidArticle, NotFound
from storyline.models.types import Article


def _item(aid: str, text: str, title: str = "", seed: int = 0) -> IngestItem:
    v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return IngestItem(Article(id=aid, text=text, title=title), v / np.linalg.norm(v), ("nato",))


def test_insert_unchanged_update_duplicate(tmp_path: Path) -> None:
    st = SQLiteStore(tmp_path / "db.sqlite")
    r = st.ingest([_item("a", "alpha text"), _item("b", "beta text", seed=1)], "m")
    assert [x.outcome for x in r] == ["inserted", "inserted"]
    r = st.ingest([_item("a", "alpha text")], "m")
    assert r[0].outcome == "unchanged"
    r = st.ingest([_item("a", "alpha text, corrected", seed=2)], "m")
    assert r[0].outcome == "updated"
    assert st.get_article("a").text == "alpha text, corrected"
    _, vec = st.embeddings(["a"])
    assert np.allclose(vec[0], _item("a", "", seed=2).vector)
    # same content under a new id: recorded as a duplicate, not stored twice
    r = st.ingest([_item("b-copy", "  Beta   TEXT ")], "m")
    assert r[0].outcome == "duplicate" and r[0].duplicate_of == "b"
    assert st.count_articles() == 2
    assert st.duplicates_of("b") == ["b-copy"]
    assert st.canonical_id("b-copy") == "b"
    assert [c.op for c in st.changes_since(0)] == ["upsert", "upsert", "upsert"]


def test_batch_is_atomic(tmp_path: Path) -> None:
    st = SQLiteStore(tmp_path / "db.sqlite")
    bad = IngestItem(Article(id="bad", text="t"), np.array([np.nan, 1.0], np.float32))
    with pytest.raises(InvalidArticle):
        st.ingest([_item("good", "fine"), bad], "m")
    assert st.count_articles() == 0
    assert st.changes_since(0) == []


def test_persistence_and_delete(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    st = SQLiteStore(path)
    st.ingest([_item("a", "alpha"), _item("b", "beta", seed=1)], "m")
    st.close()
    st = SQLiteStore(path)
    assert st.article_ids() == ["a", "b"]
    assert st.entities(["a"]) == {"a": ("nato",)}
    st.delete_article("a")
    assert st.article_ids() == ["b"]
    assert st.embeddings(["a"])[0] == []
    assert st.changes_since(2)[-1].op == "delete"
    with pytest.raises(NotFound):
        st.delete_article("a")
    with pytest.raises(NotFound):
        st.get_article("a")


def test_outputs_and_digests_roundtrip(tmp_path: Path) -> None:
    st = SQLiteStore(tmp_path / "db.sqlite")
    assert st.get_output("s1", "summary") is None
    st.put_output("s1", "summary", "h1", '{"x": 1}')
    assert st.get_output("s1", "summary") == ("h1", '{"x": 1}')
    st.put_digest("2021-10-18", "md", "# hi")
    assert st.get_digest("2021-10-18", "md") == "# hi"
    with pytest.raises(NotFound):
        st.get_digest("2021-10-19", "md")
