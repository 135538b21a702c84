"""The pipeline end to end with the real int8 embedder: ingest, index sync, related, search.

Tests marked ``both_backends`` run on SQLite and on PostgreSQL (see conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from storyline.models.errors import InvalidInput, NotFound
from storyline.models.types import Article
from storyline.service.pipeline import Pipeline
from storyline.service.settings import Settings

T = datetime(2021, 10, 18, 12, tzinfo=UTC)

ARTS = [
    Article("court-1", "The Supreme Court ruled on Monday that police officers were entitled "
            "to qualified immunity in two excessive force cases.", "Court sides with police",
            "Outlet A", published_at=T),
    Article("court-2", "Justices overturned two lower court rulings, granting officers qualified "
            "immunity from lawsuits over the use of force.", "Justices back officers",
            "Outlet B", published_at=T),
    Article("storm-1", "A powerful hurricane made landfall in Louisiana, cutting power to "
            "hundreds of thousands of homes.", "Hurricane hits Louisiana", "Outlet A",
            published_at=T),
    Article("storm-2", "Hurricane Ida knocked out electricity across New Orleans as the storm "
            "moved inland on Sunday.", "Ida leaves New Orleans dark", "Outlet C", published_at=T),
]


@pytest.mark.both_backends
def test_ingest_is_idempotent_and_related_finds_the_same_story(pipeline: Pipeline) -> None:
    rep = pipeline.ingest(ARTS)
    assert rep.count("inserted") == 4
    assert pipeline.ingest(ARTS).count("unchanged") == 4
    assert len(pipeline.index) == 4
    hits = pipeline.related("court-1", k=3)
    assert hits[0].id == "court-2"
    assert "court-1" not in [h.id for h in hits]
    assert pipeline.search("hurricane power outage", k=2)[0].id.startswith("storm")
    assert [h.id for h in pipeline.related("court-1", k=3, source="outlet c")] == ["storm-2"]
    with pytest.raises(NotFound):
        pipeline.related("missing")
    with pytest.raises(InvalidInput):
        pipeline.related("court-1", k=0)


@pytest.mark.both_backends
def test_duplicates_are_excluded_and_resolved(pipeline: Pipeline) -> None:
    pipeline.ingest(ARTS)
    dup = Article("court-1-syndicated", ARTS[0].text, ARTS[0].title, "Wire")
    rep = pipeline.ingest([dup])
    assert rep.results[0].outcome == "duplicate"
    assert rep.results[0].duplicate_of == "court-1"
    assert len(pipeline.index) == 4
    # related for the duplicate id answers for its canonical article, excluding both
    ids = [h.id for h in pipeline.related("court-1-syndicated", k=3)]
    assert "court-1" not in ids and "court-1-syndicated" not in ids


@pytest.mark.both_backends
def test_related_reads_the_store_once_when_the_query_is_indexed(pipeline: Pipeline) -> None:
    pipeline.ingest(ARTS)
    pipeline.ingest([Article("court-1-syndicated", ARTS[0].text, ARTS[0].title, "Wire")])
    store, calls = pipeline.store, []

    class Recording:  # the Store protocol, noting which methods are called
        def __getattr__(self, name: str) -> object:
            calls.append(name)
            return getattr(store, name)

    pipeline.store = Recording()  # type: ignore[assignment]
    try:
        fast = pipeline.related("court-1", k=3)
        assert calls == ["query_context"]
        # A duplicate's id is not indexed: its vector comes from the store, then a search
        # and a second read. Same answer.
        calls.clear()
        assert pipeline.related("court-1-syndicated", k=3) == fast
        assert calls == ["query_context", "briefs"]
    finally:
        pipeline.store = store
    assert [h.id for h in fast][:1] == ["court-2"]


@pytest.mark.both_backends
def test_update_reembeds_and_delete_removes(pipeline: Pipeline) -> None:
    pipeline.ingest(ARTS)
    changed = Article("storm-2", "The Supreme Court heard arguments about police immunity.",
                      "Court hears case", "Outlet C", published_at=T)
    assert pipeline.ingest([changed]).results[0].outcome == "updated"
    assert pipeline.related("court-1", k=2)[1].id == "storm-2"
    pipeline.delete("storm-2")
    assert len(pipeline.index) == 3
    assert "storm-2" not in [h.id for h in pipeline.related("court-1", k=3)]


@pytest.mark.both_backends
def test_index_is_repaired_from_the_store_after_a_crash(pipeline: Pipeline) -> None:
    pipeline.ingest(ARTS[:2])
    pipeline.save_index()
    stale = pipeline.settings.index_path.read_bytes()
    pipeline.ingest(ARTS[2:])
    # simulate a crash after the DB commit but before the index file was written
    pipeline.settings.index_path.write_bytes(stale)
    settings = Settings(
        data_dir=pipeline.settings.data_dir, database_url=pipeline.settings.database_url
    )
    again = Pipeline(settings, embedder=pipeline.embedder)
    assert again.index.ids == {a.id for a in ARTS}
    again.store.close()
    # an unreadable index file is rebuilt from stored embeddings
    pipeline.settings.index_path.write_bytes(b"junk")
    again = Pipeline(settings, embedder=pipeline.embedder)
    assert len(again.index) == 4
    assert again.related("storm-1", k=1)[0].id == "storm-2"
    again.store.close()


@pytest.mark.both_backends
def test_update_committed_before_a_crash_is_replayed_at_start(pipeline: Pipeline) -> None:
    # Regression: the DB commit of an update came first and the index file write after
    # it; a process dying in between left the old vector indexed for good, as the start-up
    # repair compared only id sets.
    from storyline.index.vectors import VectorIndex

    pipeline.ingest(ARTS)
    pipeline.save_index()
    pipeline.save_index = lambda: None  # type: ignore[method-assign]  # dies before writing
    cats = Article("court-1", "A cat show was held in Paris on Sunday with hundreds of cats.",
                   "Cat show", "Outlet A", published_at=T)
    assert pipeline.ingest([cats]).results[0].outcome == "updated"
    settings = Settings(
        data_dir=pipeline.settings.data_dir, database_url=pipeline.settings.database_url
    )
    again = Pipeline(settings, embedder=pipeline.embedder)
    try:
        _, stored = again.store.embeddings(["court-1"])
        np.testing.assert_array_equal(again.index.reconstruct("court-1"), stored[0])
        hits = again.search("cat show in Paris", k=4)
        assert hits[0].id == "court-1" and [h.id for h in hits].count("court-1") == 1
        # the repaired file records the position, so the next start has nothing to replay
        assert VectorIndex.load(settings.index_path).seq == again.store.last_seq()
    finally:
        again.store.close()


@pytest.mark.both_backends
def test_followed_update_not_yet_written_is_replayed_at_start(pipeline: Pipeline, embedder) -> None:  # type: ignore[no-untyped-def]
    # A replica applies another writer's update in memory only (written at the next flush);
    # if both die before a write, the next start still ends with the new vector.
    pipeline.ingest(ARTS)
    pipeline.save_index()
    replica = Pipeline(pipeline.settings, embedder=embedder, clusterer=False)
    pipeline.save_index = lambda: None  # type: ignore[method-assign]
    flood = Article("storm-1", "Floodwater rose across the delta overnight.", "Flood",
                    "Outlet A", published_at=T)
    pipeline.ingest([flood])
    assert replica.follow_changes() == 1
    replica.store.close()  # no flush: it crashed
    again = Pipeline(pipeline.settings, embedder=embedder, clusterer=False)
    try:
        np.testing.assert_allclose(again.index.reconstruct("storm-1"),
                                   pipeline.index.reconstruct("storm-1"), atol=1e-6)
    finally:
        again.store.close()


@pytest.mark.both_backends
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_old_format_or_foreign_index_file_is_rebuilt(  # type: ignore[no-untyped-def]
    data_dir, embedder, database_url: str | None, kind: str
) -> None:
    from test_vectors import write_v1_index

    settings = Settings(data_dir=data_dir, database_url=database_url, index_kind=kind)
    first = Pipeline(settings, embedder=embedder, clusterer=False)
    first.ingest(ARTS)
    ids, vecs = first.store.embeddings()
    first.store.close()
    write_v1_index(settings.index_path, ids, vecs, kind)
    again = Pipeline(settings, embedder=embedder, clusterer=False)
    try:
        assert again.index.ids == {a.id for a in ARTS}
        assert again.related("storm-1", k=1)[0].id == "storm-2"
        assert again.index.seq == again.store.last_seq()  # rewritten in the current format
        # a file ahead of the store (another or a restored database) is rebuilt too
        again.index.save(settings.index_path, seq=again.store.last_seq() + 5)
        ahead = Pipeline(settings, embedder=embedder, clusterer=False)
        assert ahead.index.seq == again.store.last_seq() and len(ahead.index) == 4
        ahead.store.close()
    finally:
        again.store.close()


def test_index_file_is_written_at_most_every_interval_and_at_close(data_dir, embedder) -> None:  # type: ignore[no-untyped-def]
    from storyline.index.vectors import VectorIndex

    lazy = Pipeline(Settings(data_dir=data_dir, index_save_interval_s=3600), embedder=embedder)
    path = lazy.settings.index_path
    before = path.read_bytes()
    lazy.ingest(ARTS[:2])
    lazy.delete("court-2")
    assert path.read_bytes() == before  # not rewritten on every write
    assert lazy.flush_index() is False  # the interval has not passed
    assert lazy.flush_index(force=True) is True
    assert VectorIndex.load(path).ids == {"court-1"}
    assert lazy.flush_index(force=True) is False  # nothing new to write
    # a changed vector under a known id waits for the interval too (a crash before the
    # write is repaired at start from the change feed: see the crash test below)
    changed = Article("court-1", "A hurricane left New Orleans without power.", "Storm",
                      "Outlet A", published_at=T)
    old_vec = VectorIndex.load(path).reconstruct("court-1")
    assert lazy.ingest([changed]).results[0].outcome == "updated"
    assert float(VectorIndex.load(path).reconstruct("court-1") @ old_vec) > 0.9999
    assert lazy.flush_index(force=True) is True
    saved = VectorIndex.load(path)
    assert float(saved.reconstruct("court-1") @ lazy.index.reconstruct("court-1")) > 0.9999
    lazy.ingest(ARTS[2:])
    lazy.close()
    assert VectorIndex.load(path).ids == {"court-1", "storm-1", "storm-2"}

    eager = Pipeline(Settings(data_dir=data_dir, index_save_interval_s=0), embedder=embedder)
    eager.ingest(ARTS[1:2])
    assert VectorIndex.load(path).ids == {"court-1", "court-2", "storm-1", "storm-2"}
    eager.store.close()


@pytest.mark.both_backends
def test_story_signal_ranks_the_query_story_first(pipeline: Pipeline) -> None:
    pipeline.ingest(ARTS)
    sid = pipeline.store.story_of(["court-1"])["court-1"]
    assert pipeline.store.story_of(["court-2"])["court-2"] == sid
    pipeline.settings = pipeline.settings.model_copy(
        update={"related_time_weight": 0.0, "related_story_weight": 0.3})
    hits = pipeline.related("court-1", k=3)
    assert hits[0].id == "court-2" and hits[0].story_id == sid
    for h in hits:
        bonus = 0.3 if h.story_id == sid else 0.0
        assert h.score == pytest.approx(h.similarity + bonus, abs=1e-5)
    # Story members are candidates even when vector search does not surface them (here:
    # gone from the index, as a sibling ranked below the candidate pool would be).
    pipeline.index.remove(["court-2"])
    again = pipeline.related("court-1", k=3)
    assert again[0].id == "court-2"
    assert again[0].similarity == pytest.approx(hits[0].similarity, abs=1e-5)
    # Free-text search has no story: cosine (and time) only.
    pipeline.settings = pipeline.settings.model_copy(update={"related_story_weight": 5.0})
    top = pipeline.search("hurricane power outage", k=4)
    assert all(h.score == pytest.approx(h.similarity, abs=1e-5) for h in top)


@pytest.mark.both_backends
def test_ad_hoc_summaries_are_cached_by_content(pipeline: Pipeline) -> None:
    import dataclasses

    pipeline.ingest(ARTS)
    sid = pipeline.store.story_of(["court-1"])["court-1"]
    members = pipeline.store.get_story(sid).article_ids
    # Exactly a stored story: that story, with its stored analysis.
    assert pipeline.cached_story_view(sid) is None  # probes never run a model
    assert pipeline.cached_summaries(pipeline.store.get_articles(members)) is None
    first = pipeline.summarise_articles(pipeline.store.get_articles(members))
    assert [v.story.id for v in first] == [sid] and not first[0].cached
    again = pipeline.summarise_articles(pipeline.store.get_articles(members))
    assert again[0].cached and again[0].summary == first[0].summary
    probe = pipeline.cached_summaries(pipeline.store.get_articles(members))
    assert probe is not None and probe[0].cached and probe[0].summary == first[0].summary
    # Articles the caller has just read from the store, in any order: the same view, its
    # members in story order, without reading them again.
    fresh = pipeline.cached_summaries(pipeline.store.get_articles(members[::-1]), stored=True)
    assert fresh is not None and fresh[0].summary == first[0].summary
    assert [a.id for a in fresh[0].articles] == members
    assert pipeline.cached_summaries(pipeline.store.get_articles(["court-1"])) is None
    assert pipeline.cached_story_view(sid, budget_words=33) is None  # other budget
    # Not a stored story: computed once, then served from memory while unchanged.
    mixed = pipeline.store.get_articles(["court-1", "storm-1"])
    a = pipeline.summarise_articles(mixed)
    assert a and not any(v.cached for v in a)
    b = pipeline.summarise_articles(mixed)
    assert all(v.cached for v in b) and [v.summary for v in b] == [v.summary for v in a]
    # The whole answer (scratch clustering included) is a cache read the API runs on
    # its I/O pool, never behind inference.
    probe = pipeline.cached_summaries(mixed)
    assert probe is not None and all(v.cached and not v.timing for v in probe)
    assert [(v.story.article_ids, v.summary) for v in probe] == [
        (v.story.article_ids, v.summary) for v in a]
    assert pipeline.cached_summaries(mixed, budget_words=33) is None
    # Same texts under another outlet or time is another answer (portrayal, order).
    moved = [dataclasses.replace(mixed[0], source="Another Outlet"), mixed[1]]
    assert pipeline.cached_summaries(moved) is None
    assert not all(v.cached for v in pipeline.summarise_articles(moved))
    edited = [dataclasses.replace(mixed[0], text=mixed[0].text + " Officials declined to comment.")]
    c = pipeline.summarise_articles([*edited, mixed[1]])
    changed = [v for v in c if "court-1" in v.story.article_ids]
    assert changed and not changed[0].cached
    # The cache is bounded.
    pipeline.settings = pipeline.settings.model_copy(update={"analysis_cache_size": 0})
    x = pipeline.summarise_articles(mixed)
    y = pipeline.summarise_articles(mixed)
    assert not any(v.cached for v in x) and not any(v.cached for v in y)
    # computed twice, the same answer, ids included (not stored stories: own prefix)
    assert [v.story.id for v in x] == [v.story.id for v in y]
    assert all(v.story.id.startswith("adhoc_") for v in x)


def test_stored_analyses_of_older_analysis_code_are_recomputed(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    import storyline.service.pipeline as pipeline_module

    pipeline.ingest(ARTS)
    sid = pipeline.store.story_of(["court-1"])["court-1"]
    first = pipeline.story_view(sid)
    assert pipeline.cached_story_view(sid) is not None
    monkeypatch.setattr(pipeline_module, "ANALYSIS_VERSION", pipeline_module.ANALYSIS_VERSION + 1)
    assert pipeline.cached_story_view(sid) is None  # stored under the old code: stale
    again = pipeline.story_view(sid)
    assert not again.cached and again.summary == first.summary
    assert pipeline.cached_story_view(sid) is not None


@pytest.mark.both_backends
def test_replica_follows_another_writers_changes(pipeline: Pipeline, embedder) -> None:  # type: ignore[no-untyped-def]
    replica = Pipeline(pipeline.settings, embedder=embedder, clusterer=False)
    try:
        pipeline.ingest(ARTS[:2])
        assert len(replica.index) == 0  # nothing seen yet
        assert replica.follow_changes() == 2
        assert replica.index.ids == {"court-1", "court-2"}
        assert replica.applied_seq == pipeline.store.last_seq()
        assert replica.related("court-1", k=1)[0].id == "court-2"
        pipeline.ingest(ARTS[2:])
        pipeline.delete("court-2")
        assert replica.follow_changes() == 3
        assert replica.index.ids == {"court-1", "storm-1", "storm-2"}
        assert replica.follow_changes() == 0  # caught up
        # An update replaces the vector rather than adding a second one.
        changed = Article("storm-1", "Floodwater rose across the delta overnight.", "Flood",
                          "Outlet A", published_at=T)
        pipeline.ingest([changed])
        replica.follow_changes()
        assert len(replica.index) == 3
        np.testing.assert_allclose(replica.index.reconstruct("storm-1"),
                                   pipeline.index.reconstruct("storm-1"), atol=1e-6)
    finally:
        replica.store.close()


def test_replica_waits_at_a_hole_in_the_change_feed(pipeline: Pipeline, embedder) -> None:  # type: ignore[no-untyped-def]
    from storyline.index.store import SQLiteStore

    if not isinstance(pipeline.store, SQLiteStore):
        pytest.skip("the hole is made with SQLite SQL; the follower logic is backend-neutral")
    replica = Pipeline(pipeline.settings, embedder=embedder, clusterer=False)
    try:
        pipeline.ingest(ARTS[:1])
        start = pipeline.store.last_seq()
        # A writer holding seq start+1 has not committed yet; start+2 already has.
        pipeline.ingest(ARTS[1:2])
        with pipeline.store.transaction() as db:
            db.execute("UPDATE changes SET seq = seq + 1 WHERE seq = ?", (start + 1,))
        assert replica.follow_changes(gap_wait_s=60) == 2
        assert "court-2" in replica.index.ids  # applied, but the position stays put
        assert replica.applied_seq == start
        # Never filled: after the wait it is taken as a rollback and passed.
        replica.follow_changes(gap_wait_s=0)
        assert replica.applied_seq == start + 2
    finally:
        replica.store.close()


@pytest.mark.both_backends
def test_duplicates_outlive_an_update_or_delete_of_their_canonical(pipeline: Pipeline) -> None:
    """Regression: a duplicate served its canonical's new text after an update, and was
    erased with it on delete. It now keeps its content as an indexed, placed article."""
    pipeline.ingest(ARTS)
    wire = Article("court-1-wire", ARTS[0].text, ARTS[0].title, "Wire", published_at=T)
    feed = Article("storm-1-feed", ARTS[2].text, ARTS[2].title, "Feed", published_at=T)
    assert [r.outcome for r in pipeline.ingest([wire, feed]).results] == ["duplicate"] * 2
    cats = Article("court-1", "A cat show was held in Paris on Sunday with hundreds of cats.",
                   "Cat show", "Outlet A", published_at=T)
    assert pipeline.ingest([cats]).results[0].outcome == "updated"
    st = pipeline.store
    assert st.canonical_id("court-1-wire") == "court-1-wire"
    assert st.get_article("court-1-wire").text == ARTS[0].text
    assert "court-1-wire" in pipeline.index.ids and len(pipeline.index) == 5
    sid = st.story_of(["court-1-wire", "court-2"])
    assert sid["court-1-wire"] == sid["court-2"]  # placed like any ingest
    assert pipeline.clusterer.story_of("court-1-wire") == sid["court-1-wire"]
    assert pipeline.related("court-2", k=1)[0].id == "court-1-wire"
    again = pipeline.ingest([wire]).results[0]
    assert (again.outcome, again.story_id) == ("unchanged", sid["court-2"])
    # deleting a canonical article: its duplicate keeps the content, indexed and placed
    pipeline.delete("storm-1")
    assert st.get_article("storm-1-feed").text == ARTS[2].text
    assert "storm-1-feed" in pipeline.index.ids and "storm-1" not in pipeline.index.ids
    story = st.story_of(["storm-1-feed"])["storm-1-feed"]
    assert pipeline.clusterer.story_of("storm-1-feed") == story
    assert st.get_story(story).article_ids == ["storm-1-feed"]
    assert pipeline.related("storm-2", k=1)[0].id == "storm-1-feed"


@pytest.mark.both_backends
def test_deleting_a_duplicate_id_removes_only_its_record(pipeline: Pipeline) -> None:
    pipeline.ingest(ARTS)
    pipeline.ingest([Article("court-1-wire", ARTS[0].text, ARTS[0].title, "Wire")])
    pipeline.delete("court-1-wire")
    assert pipeline.store.canonical_id("court-1-wire") is None
    assert pipeline.store.get_article("court-1").text == ARTS[0].text
    assert len(pipeline.index) == 4
    with pytest.raises(NotFound):
        pipeline.delete("court-1-wire")


class _StoriesUnwritable:
    """The clusterer's view of the store, whose write transactions fail (a locked DB)."""

    def __init__(self, store: object) -> None:
        self._store = store

    def transaction(self) -> object:
        from storyline.models.errors import StoreError

        raise StoreError("database unavailable: database is locked")

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


@pytest.mark.both_backends
def test_a_failed_story_write_is_repaired_by_the_retry(pipeline: Pipeline) -> None:
    """Regression: the article was committed, the story write failed (503, retry), and the
    retry answered ``unchanged`` with no story while the clusterer believed it placed."""
    from storyline.models.errors import StoreError

    pipeline.ingest(ARTS[:2])
    clusterer = pipeline.clusterer
    real = clusterer.store
    clusterer.store = _StoriesUnwritable(real)
    with pytest.raises(StoreError):
        pipeline.ingest([ARTS[2]])
    clusterer.store = real
    assert pipeline.store.story_of(["storm-1"]) == {}
    assert clusterer.story_of("storm-1") is None  # rolled back, not believed placed
    retry = pipeline.ingest([ARTS[2]]).results[0]
    assert retry.outcome == "unchanged" and retry.story_id is not None
    assert pipeline.store.story_of(["storm-1"])["storm-1"] == retry.story_id
    assert clusterer.story_of("storm-1") == retry.story_id
    # an update whose story write fails: the retry places the new content
    old = pipeline.store.story_of(["court-2"])["court-2"]
    moved = Article("court-2", "Hurricane Ida knocked out power to New Orleans overnight.",
                    "Storm", "Outlet B", published_at=T)
    clusterer.store = _StoriesUnwritable(real)
    with pytest.raises(StoreError):
        pipeline.ingest([moved])
    clusterer.store = real
    assert clusterer.unplaced(["court-2"]) == ["court-2"]
    retry = pipeline.ingest([moved]).results[0]
    assert retry.outcome == "unchanged" and retry.story_id is not None
    now = pipeline.store.story_of(["court-2", "storm-1"])
    assert now["court-2"] == clusterer.story_of("court-2") == retry.story_id == now["storm-1"]
    assert "court-2" not in pipeline.store.get_story(old).article_ids
    # the story the update left was rewritten too (by the retry's write)
    assert pipeline.store.get_story(old).extra["size"] == 1


@pytest.mark.both_backends
def test_old_content_sent_with_the_update_of_its_holder_is_embedded(pipeline: Pipeline) -> None:
    """The batch updates court-1 and sends its old content under a new id: that id is
    stored (court-1 no longer holds the content), so it needs its own embedding."""
    pipeline.ingest(ARTS)
    cats = Article("court-1", "A cat show was held in Paris on Sunday with hundreds of cats.",
                   "Cat show", "Outlet A", published_at=T)
    wire = Article("court-1-wire", ARTS[0].text, ARTS[0].title, "Wire", published_at=T)
    rep = pipeline.ingest([cats, wire])
    assert [r.outcome for r in rep.results] == ["updated", "inserted"]
    _, vec = pipeline.store.embeddings(["court-1-wire"])
    assert float(np.linalg.norm(vec[0])) > 0.5
    assert pipeline.related("court-2", k=1)[0].id == "court-1-wire"


def _vector_of(pipeline: Pipeline, article: Article) -> np.ndarray:  # type: ignore[type-arg]
    from storyline.service.pipeline import article_text

    return np.asarray(pipeline.embedder.embed([article_text(article)])[0], dtype=np.float32)


def _while_embedding(pipeline: Pipeline, other: Callable[[], None]) -> None:
    """Make the next embedding of ``pipeline`` first run ``other`` on another thread (to its
    end). Before embedding moved out of the write lock, ``other`` (a write) waited for it."""
    real = pipeline._embed_articles
    done: list[bool] = []

    def embed(arts: Any, precomputed: Any = None) -> Any:
        if not done:
            done.append(True)
            t = threading.Thread(target=other)
            t.start()
            t.join(10)
            assert not t.is_alive(), "a write waited for an ingest's embedding"
        return real(arts, precomputed)

    pipeline._embed_articles = embed  # type: ignore[method-assign]


@pytest.mark.both_backends
def test_concurrent_ingests_of_one_id_end_with_the_last_committed_content(
    pipeline: Pipeline,
) -> None:
    """Embedding runs outside the write lock: an ingest re-checks the store under the lock,
    so whichever write commits last decides the content, and its own vector is stored."""
    pipeline.ingest(ARTS)
    first = Article("court-1", "A cat show was held in Paris on Sunday with hundreds of cats.",
                    "Cat show", "Outlet A", published_at=T)
    second = Article("court-1", "Hurricane Ida knocked out power to New Orleans overnight.",
                     "Storm", "Outlet A", published_at=T)
    # ``second`` commits while ``first`` is being embedded: ``first`` commits last
    other: list[Any] = []
    _while_embedding(pipeline, lambda: other.append(pipeline.ingest([second])))
    rep = pipeline.ingest([first])
    assert other[0].results[0].outcome == "updated"
    assert rep.results[0].outcome == "updated"
    st = pipeline.store
    assert st.get_article("court-1").text == first.text
    ids, vecs = st.embeddings(["court-1"])
    assert ids == ["court-1"]
    np.testing.assert_allclose(vecs[0], _vector_of(pipeline, first), atol=1e-5)
    np.testing.assert_allclose(pipeline.index.reconstruct("court-1"), vecs[0], atol=1e-5)
    assert len(pipeline.index) == 4
    # the same content committed meanwhile: this ingest finds it unchanged
    other.clear()
    _while_embedding(pipeline, lambda: other.append(pipeline.ingest([second])))
    rep = pipeline.ingest([second])
    assert other[0].results[0].outcome == "updated"
    assert rep.results[0].outcome == "unchanged"
    _, vecs = st.embeddings(["court-1"])
    np.testing.assert_allclose(vecs[0], _vector_of(pipeline, second), atol=1e-5)
    np.testing.assert_allclose(pipeline.index.reconstruct("court-1"), vecs[0], atol=1e-5)


@pytest.mark.both_backends
def test_a_duplicate_whose_original_goes_meanwhile_is_embedded_under_the_lock(
    pipeline: Pipeline,
) -> None:
    """Judged a duplicate (not embedded) before the lock; the article it repeated is
    deleted meanwhile, so under the lock it is new content and embedded there."""
    pipeline.ingest(ARTS)
    wire = Article("storm-1-wire", ARTS[2].text, ARTS[2].title, "Wire", published_at=T)
    other = Article("n-1", "A new bridge opened in Lisbon after ten years of works.",
                    "Bridge opens", "Outlet D", published_at=T)
    _while_embedding(pipeline, lambda: pipeline.delete("storm-1"))
    rep = pipeline.ingest([wire, other])
    assert [r.outcome for r in rep.results] == ["inserted", "inserted"]
    assert pipeline.store.get_article("storm-1-wire").text == ARTS[2].text
    _, vecs = pipeline.store.embeddings(["storm-1-wire"])
    assert float(np.linalg.norm(vecs[0])) > 0.5
    np.testing.assert_allclose(vecs[0], _vector_of(pipeline, wire), atol=1e-5)
    assert pipeline.index.ids == {"court-1", "court-2", "storm-2", "storm-1-wire", "n-1"}
    assert pipeline.related("storm-2", k=1)[0].id == "storm-1-wire"


@pytest.mark.both_backends
def test_corrected_metadata_updates_the_article_its_story_and_analysis(
    pipeline: Pipeline, embedder: Any
) -> None:
    """Finding 6: the same title and text with a corrected time, outlet, lean and url was
    answered ``unchanged`` and dropped. It is an update now: the row, the story's dates and
    outlets, the clusterer's time and the stored analysis (portrayal by outlet and lean)
    follow it, in this process and in a replica."""
    from dataclasses import replace
    from datetime import timedelta

    st = pipeline.store
    pipeline.ingest(ARTS)
    sid = st.story_of(["court-1"])["court-1"]
    assert st.story_of(["court-2"])["court-2"] == sid
    pipeline.story_view(sid)
    replica = Pipeline(pipeline.settings, embedder=embedder, clusterer=False)
    try:
        assert replica.cached_story_view(sid) is not None  # now held in its memory too
        seq = st.last_seq()
        later = T + timedelta(hours=5)
        fixed = replace(ARTS[1], source="Outlet Z", lean="right", url="http://z/court-2",
                        published_at=later)
        res = pipeline.ingest([fixed]).results[0]
        assert (res.outcome, res.story_id) == ("updated", sid)
        got = st.get_article("court-2")
        assert (got.source, got.lean, got.url, got.published_at) == (
            "Outlet Z", "right", "http://z/court-2", later)
        story = st.get_story(sid)
        assert story.outlets == {"Outlet A": 1, "Outlet Z": 1}
        assert (story.first_at, story.last_at) == (T, later)
        assert [(c.article_id, c.op) for c in st.changes_since(seq)] == [("court-2", "upsert")]
        assert replica.follow_changes() == 1
        # the analysis of the old metadata is served by no one
        assert pipeline.cached_story_view(sid) is None
        assert replica.cached_story_view(sid) is None
        again = pipeline.story_view(sid)
        assert not again.cached and {a.source for a in again.articles} == {"Outlet A",
                                                                         "Outlet Z"}
        assert replica.cached_story_view(sid) is not None
        # the same again: unchanged, nothing written
        seq = st.last_seq()
        assert pipeline.ingest([fixed]).results[0].outcome == "unchanged"
        assert st.last_seq() == seq and pipeline.cached_story_view(sid) is not None
        # moved out of its story's window: the clusterer's time follows it
        far = replace(fixed, published_at=T + timedelta(days=10))
        assert pipeline.ingest([far]).results[0].outcome == "updated"
        moved = st.story_of(["court-2"])["court-2"]
        assert moved != sid
        old = st.get_story(sid)
        assert old.article_ids == ["court-1"] and (old.first_at, old.last_at) == (T, T)
        since = T + timedelta(days=9)
        assert [s.id for s in st.list_stories(since=since)] == [moved]
        # and it is found at its new time: a rewrite of it from that day joins it
        near = Article("court-2b", ARTS[1].text + " Lawyers said they would appeal.",
                       ARTS[1].title, "Outlet Y", published_at=T + timedelta(days=10, hours=2))
        assert pipeline.ingest([near]).results[0].story_id == moved
    finally:
        replica.store.close()


@pytest.mark.both_backends
def test_a_url_fix_keeps_a_lone_article_in_its_story(pipeline: Pipeline) -> None:
    """A metadata update leaves the article where it is: a one-article story keeps its id
    (placing it anew would retire the story and open another)."""
    from dataclasses import replace

    pipeline.ingest(ARTS)
    sid = pipeline.store.story_of(["storm-1"])["storm-1"]
    lone = Article("bridge-1", "A new bridge opened in Lisbon after ten years of works.",
                   "Bridge opens", "Outlet D", url="http://d/old", published_at=T)
    first = pipeline.ingest([lone]).results[0].story_id
    assert first is not None and first != sid
    res = pipeline.ingest([replace(lone, url="http://d/bridge")]).results[0]
    assert (res.outcome, res.story_id) == ("updated", first)
    assert pipeline.store.get_story(first).status == "active"
    assert pipeline.store.get_article("bridge-1").url == "http://d/bridge"


@pytest.mark.both_backends
def test_a_read_with_another_budget_keeps_the_stored_analysis(
    pipeline: Pipeline, embedder: Any
) -> None:
    """Finding 7: a read with another ``budget_words`` overwrote the one stored analysis
    of the story, so the next digest re-summarised it. Only the default budget's analysis
    is stored; other budgets are kept in memory."""
    pipeline.ingest(ARTS)
    sid = pipeline.store.story_of(["court-1"])["court-1"]
    default = pipeline.story_view(sid)
    short = pipeline.story_view(sid, budget_words=33)
    assert not short.cached
    story = pipeline.store.get_story(sid)
    stored = pipeline.store.get_output(sid, "analysis")
    assert stored is not None
    assert stored[0] == pipeline.analysis_key(story.content_hash,
                                              pipeline.settings.summary_words)
    assert pipeline.story_view(sid, budget_words=33).cached  # from memory
    assert pipeline.story_view(sid).cached
    assert pipeline.cached_story_view(sid, budget_words=33) is not None
    # another process (a replica, the digest job) finds the default budget's one stored
    other = Pipeline(pipeline.settings, embedder=embedder, clusterer=False)
    try:
        view = other.cached_story_view(sid)
        assert view is not None and view.summary == default.summary
        assert other.cached_story_view(sid, budget_words=33) is None  # never stored
        assert not other.story_view(sid, budget_words=50).cached
        assert pipeline.store.get_output(sid, "analysis") == stored
    finally:
        other.store.close()


# -- filtered search / related: the true top-k among the matching articles ----------------
T2 = datetime(2021, 10, 25, 12, tzinfo=UTC)
#: more near neighbours of the query than the old fixed filtered pool (200 for k <= 10)
_FILLER = [
    Article(f"gale-{i}", f"Storm {i} cut power to {1000 + 37 * i} homes along the Gulf coast "
            f"as wind gusts reached {60 + i % 40} miles an hour on day {i}.",
            f"Storm {i} knocks out power", "Outlet A", published_at=T)
    for i in range(260)
]
#: the matches: another outlet, another week, far from the query in meaning
_MATCHES = [
    Article("cat-1", "A Maine Coon named Biscuit won best in show at the Paris cat show.",
            "Cat show winner", "Outlet Z", published_at=T2),
    Article("cat-2", "Judges at the international cat show praised the Siamese entries.",
            "Siamese cats impress", "outlet z", published_at=T2),
    Article("cat-3", "Cat breeders gathered in Lyon to compare grooming techniques.",
            "Breeders meet in Lyon", "OUTLET Z", published_at=T2),
]


def _filtered_pipeline(data_dir, embedder, database_url, kind: str) -> Pipeline:  # type: ignore[no-untyped-def]
    pipe = Pipeline(Settings(data_dir=data_dir, database_url=database_url, index_kind=kind),
                    embedder=embedder)
    pipe.ingest(_FILLER + _MATCHES, assign_stories=False)
    return pipe


def _brute_force(pipe: Pipeline, text: str, ids: list[str], k: int) -> list[str]:
    vec = pipe.embedder.embed([text])[0]
    found, mat = pipe.store.embeddings(ids)
    sims = mat @ vec
    return [found[j] for j in sorted(range(len(found)), key=lambda j: -sims[j])][:k]


@pytest.mark.both_backends
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("direct_max", [20_000, 0])  # 0: the widening path
def test_filtered_search_and_related_find_matches_beyond_any_fixed_pool(  # type: ignore[no-untyped-def]
    data_dir, embedder, database_url, kind: str, direct_max: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import storyline.service.pipeline as pipeline_mod

    monkeypatch.setattr(pipeline_mod, "FILTER_DIRECT_MAX", direct_max, raising=False)
    pipe = _filtered_pipeline(data_dir, embedder, database_url, kind)
    try:
        q = "hurricane power outage"
        cats = [a.id for a in _MATCHES]
        want = _brute_force(pipe, q, cats, 2)
        # source (any case), since, until, and together: the matches, best first
        assert [h.id for h in pipe.search(q, k=2, source="Outlet Z")] == want
        assert [h.id for h in pipe.search(q, k=5, source="outlet Z")] == \
            _brute_force(pipe, q, cats, 5)
        assert [h.id for h in pipe.search(q, k=2, since=T2)] == want
        assert [h.id for h in pipe.search(q, k=3, since=T2, until=T2.replace(day=26),
                                          source="OUTLET z")] == _brute_force(pipe, q, cats, 3)
        # the filler's own window: k of them, not fewer
        assert len(pipe.search(q, k=10, until=T2)) == 10
        assert pipe.search(q, k=3, source="Outlet Q") == []
        # related: the query article and its story excluded, the rest of the matches found
        rel = [h.id for h in pipe.related("gale-3", k=5, source="outlet z")]
        assert sorted(rel) == sorted(cats)
        rel = [h.id for h in pipe.related("cat-1", k=5, since=T2)]
        assert sorted(rel) == ["cat-2", "cat-3"]
        assert len(pipe.related("cat-1", k=7, until=T2)) == 7
    finally:
        pipe.store.close()


@pytest.mark.both_backends
def test_store_lists_ids_matching_a_filter(pipeline: Pipeline) -> None:
    pipeline.ingest([*ARTS, Article("undated", "An undated note on the cat show in Paris.",
                                    "Note", "Outlet Ä")], assign_stories=False)
    st = pipeline.store
    assert sorted(st.matching_ids(None, None, None, 100)) == sorted([a.id for a in ARTS] +
                                                                    ["undated"])
    assert sorted(st.matching_ids(T, None, None, 100)) == sorted(a.id for a in ARTS)
    assert st.matching_ids(None, T, None, 100) == []
    assert sorted(st.matching_ids(None, None, "outlet a", 100)) == ["court-1", "storm-1"]
    assert st.matching_ids(None, None, "OUTLET ä", 100) == ["undated"]  # non-ASCII case
    assert st.matching_ids(T, None, "outlet ä", 100) == []
    assert len(st.matching_ids(None, None, None, 2)) == 2
    assert len(st.matching_ids(None, None, "Outlet A", 1)) == 1


def test_blank_search_text_and_source_filter(pipeline: Pipeline) -> None:
    pipeline.ingest(ARTS, assign_stories=False)
    for text in ("\u200b", "\x00", " \u200b\ufeff\t\u2060 ", "\u202e\u200d"):
        with pytest.raises(InvalidInput, match="must not be empty"):
            pipeline.search(text)
    # an empty source is no filter (an empty form field), not "articles with no source"
    assert [h.id for h in pipeline.search("hurricane", k=4, source="")] == \
        [h.id for h in pipeline.search("hurricane", k=4)]
    assert len(pipeline.related("court-1", k=3, source=" ")) == 3
