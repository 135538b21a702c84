"""Regression tests from the audit of stored story analyses: the pipeline, the idle-time
warmer and both stores keep a stored analysis true to the members it is keyed by, clean up
the analyses of stories that are gone, and the warmer's accounting and retries match what
it can do.

The store and pipeline tests run on SQLite and PostgreSQL (``both_backends``); the warmer
tests run on a real ``BoundedPool`` and event loop with a stand-in pipeline, as in
``test_audit_background.py``.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from warmer_fakes import FakePipeline, FakeRuntime, wait_until

from storyline.index.store import IngestItem
from storyline.index.stories import article_print, members_hash
from storyline.index.types import Story
from storyline.models.errors import ModelUnavailable
from storyline.models.types import Article
from storyline.service.api import warmer as warmer_mod
from storyline.service.api.warmer import StoryWarmer
from storyline.service.model_process import ModelsChanged
from storyline.service.pipeline import Pipeline

T = datetime(2021, 10, 18, 12, tzinfo=UTC)

COURT = [
    Article(
        "court-1",
        "The Supreme Court ruled on Monday that police officers were entitled "
        "to qualified immunity in two excessive force cases.",
        "Court sides with police",
        "Outlet A",
        published_at=T,
        lean="left",
    ),
    Article(
        "court-2",
        "Justices overturned two lower court rulings, granting officers qualified "
        "immunity from lawsuits over the use of force.",
        "Justices back officers",
        "Outlet B",
        published_at=T,
        lean="right",
    ),
]
STORM = Article(
    "storm-1",
    "A powerful hurricane made landfall in Louisiana, cutting power to "
    "hundreds of thousands of homes.",
    "Hurricane hits Louisiana",
    "Outlet C",
    published_at=T,
)


# -- helpers -----------------------------------------------------------------------------------
def _gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def _item(a: Article, seed: int = 0) -> IngestItem:
    v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return IngestItem(a, v / np.linalg.norm(v))


def _prints(arts: list[Article]) -> str:
    return members_hash((a.id, article_print(a)) for a in arts)


def _other(pipeline: Pipeline, embedder: Any) -> Pipeline:
    """Another process on the same store: nothing in memory, only what is stored."""
    return Pipeline(pipeline.settings, embedder=embedder, clusterer=False)


# -- the warmer --------------------------------------------------------------------------------
def test_a_story_re_marked_while_it_is_analysed_counts_once() -> None:
    """A story marked again while its analysis ran was counted twice (once queued, once
    running): `stories_pending_analysis` read 2 for one story."""
    release = threading.Event()

    def behaviour(sid: str) -> None:
        release.wait(5)

    pipe = FakePipeline(behaviour)

    async def run() -> tuple[int, float | None, StoryWarmer]:
        w = StoryWarmer(FakeRuntime(pipe, "audit-consistency"))
        w.start()
        w.mark(["a"])
        await wait_until(lambda: pipe.calls == ["a"])
        w.mark(["a"])  # an ingest changed it again meanwhile
        seen = (w.pending, _gauge("storyline_stories_pending_analysis"))
        release.set()
        await wait_until(lambda: w.pending == 0)
        await w.stop()
        return seen[0], seen[1], w

    pending, gauge, w = asyncio.run(run())
    assert (pending, gauge) == (1, 1.0)
    # and it is analysed again: the running analysis may be of the members before the change
    assert pipe.calls == ["a", "a"] and w.done == 2


def test_models_rebuilt_under_the_service_stop_the_warmer_until_another_pipeline(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A lasting ModelUnavailable (the models were rebuilt since the start: only a restart
    helps) was retried like a passing one, every minute for good, each try a model call
    and a log line's worth of nothing; now the warmer stops, keeps its stories counted,
    says so once (log, gauge) and starts again when the runtime loads another pipeline."""
    monkeypatch.setattr(warmer_mod, "_RETRY_MIN_S", 0.01)
    monkeypatch.setattr(warmer_mod, "_STOPPED_POLL_S", 0.01, raising=False)

    def behaviour(sid: str) -> None:
        # as the model process raises it, through pickling
        raise pickle.loads(pickle.dumps(ModelsChanged("models rebuilt", lasting=True)))

    pipe = FakePipeline(behaviour)

    async def run() -> tuple[StoryWarmer, FakePipeline]:
        rt = FakeRuntime(pipe, "audit-consistency")
        w = StoryWarmer(rt)
        w.start()
        w.mark(["a", "b", "c"])
        await wait_until(lambda: len(pipe.calls) >= 1)
        await asyncio.sleep(0.4)  # a back-off from 0.01 s would have retried ~5 times
        assert len(pipe.calls) == 1, pipe.calls
        assert w.pending == 3 and _gauge("storyline_stories_pending_analysis") == 3
        assert getattr(w, "stopped", None) == "models rebuilt"
        assert _gauge("storyline_story_warmer_stopped") == 1
        fresh = FakePipeline(lambda sid: None)
        rt.pipeline = fresh  # a restart of the pipeline: the models load again
        await wait_until(lambda: w.pending == 0)
        await w.stop()
        return w, fresh

    with caplog.at_level(logging.INFO, logger=warmer_mod.__name__):
        w, fresh = asyncio.run(run())
    assert sorted(fresh.calls) == ["a", "b", "c"] and w.stopped is None
    assert _gauge("storyline_story_warmer_stopped") == 0
    stopped = [r for r in caplog.records if "stopped" in r.getMessage()]
    assert len(stopped) == 1 and stopped[0].levelno == logging.ERROR


def test_a_passing_model_failure_still_backs_off_and_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(warmer_mod, "_RETRY_MIN_S", 0.01)
    down = [True]

    def behaviour(sid: str) -> None:
        if down[0]:
            raise ModelUnavailable("the model process stopped (background lane)")

    pipe = FakePipeline(behaviour)

    async def run() -> StoryWarmer:
        w = StoryWarmer(FakeRuntime(pipe, "audit-consistency"))
        w.start()
        w.mark(["a"])
        await wait_until(lambda: len(pipe.calls) >= 3)  # retried
        assert w.pending == 1 and getattr(w, "stopped", None) is None
        down[0] = False
        await wait_until(lambda: w.pending == 0)
        await w.stop()
        return w

    assert asyncio.run(run()).done == 1


# -- the store's compare-and-set ---------------------------------------------------------------
@pytest.mark.both_backends
def test_put_output_with_members_writes_only_for_the_members_as_they_are(
    make_store: Any,
) -> None:
    st = make_store()
    st.ingest([_item(COURT[0]), _item(COURT[1], 1)], "m")
    st.save_story(Story("s1", "", ["court-1", "court-2"], None, None, {}))
    before = _prints(st.get_articles(["court-1", "court-2"]))
    assert st.put_output("s1", "analysis", "k1", "p1", members=before) is True
    assert st.get_output("s1", "analysis") == ("k1", "p1")
    # a metadata change drops it; an analysis of the old metadata is then refused
    st.ingest([_item(replace(COURT[0], source="Outlet Z"))], "m")
    assert st.get_output("s1", "analysis") is None
    assert st.put_output("s1", "analysis", "k1", "p1", members=before) is False
    assert st.get_output("s1", "analysis") is None
    now = _prints(st.get_articles(["court-1", "court-2"]))
    assert st.put_output("s1", "analysis", "k2", "p2", members=now) is True
    # a member set the story left (another article joined it) is refused too
    st.ingest([_item(STORM, 2)], "m")
    st.save_story(Story("s1", "", ["court-1", "court-2", "storm-1"], None, None, {}))
    assert st.put_output("s1", "analysis", "k3", "p3", members=now) is False
    assert st.get_output("s1", "analysis") == ("k2", "p2")
    # an unknown story has no members to match
    assert st.put_output("nope", "analysis", "k", "p", members=now) is False


@pytest.mark.both_backends
def test_a_member_change_committed_during_the_write_wins(make_store: Any) -> None:
    """Two writers (replicas, or the API beside the digest job): one commits a metadata
    change while the other stores an analysis checked against the old metadata. On
    PostgreSQL the check read the committed (old) rows while the change was in flight, so
    the analysis of the old metadata was stored after the change had dropped the outputs."""
    a, b = make_store(), make_store()
    a.ingest([_item(COURT[0]), _item(COURT[1], 1)], "m")
    a.save_story(Story("s1", "", ["court-1", "court-2"], None, None, {}))
    old = _prints(a.get_articles(["court-1", "court-2"]))
    result: list[bool] = []
    with b.transaction() as db:
        if hasattr(b, "_lock_feed"):
            b._lock_feed(db)  # as PostgresStore.ingest does
        b._update_metadata(db, replace(COURT[0], source="Outlet Z"), b._now())
        writer = threading.Thread(
            target=lambda: result.append(a.put_output("s1", "analysis", "k", "p", members=old))
        )
        writer.start()
        time.sleep(0.3)
        assert writer.is_alive()  # it waits for the change to commit
    writer.join(10)
    assert result == [False] and a.get_output("s1", "analysis") is None


# -- outputs of stories that are gone ----------------------------------------------------------
@pytest.mark.both_backends
def test_a_retired_story_s_outputs_go_with_it(make_store: Any) -> None:
    """Merged, split and deleted stories kept their analyses (and dated digest analyses)
    for good: nothing reads them, and the table grew with every merge."""
    st = make_store()
    st.ingest([_item(COURT[0]), _item(COURT[1], 1)], "m")
    st.save_story(Story("s1", "", ["court-1"], None, None, {}))
    st.save_story(Story("s2", "", ["court-2"], None, None, {}))
    for sid in ("s1", "s2"):
        st.put_output(sid, "analysis", "k", "p")
        st.put_output(sid, "analysis@2021-10-19T00:00:00+00:00", "k", "p")
    with st.transaction() as db:  # a refine merges s2 into s1
        st.save_story(Story("s1", "", ["court-1", "court-2"], None, None, {}), db)
        st.save_story(Story("s2", "", [], None, None, {}, status="merged"), db)
    assert st.get_output("s2", "analysis") is None
    assert st.get_output("s2", "analysis@2021-10-19T00:00:00+00:00") is None
    assert st.get_output("s1", "analysis") == ("k", "p")  # the survivor's, still in use
    # a late write for the retired story (a digest that read it before the merge) is refused
    assert st.put_output("s2", "analysis", "k", "p") is False
    assert st.get_output("s2", "analysis") is None


@pytest.mark.both_backends
def test_outputs_left_by_retired_stories_are_swept_when_the_store_opens(
    make_store: Any, backend: str
) -> None:
    """Databases written before retirement dropped outputs keep those rows: swept at open."""
    st = make_store()
    st.ingest([_item(COURT[0])], "m")
    st.save_story(Story("s1", "", ["court-1"], None, None, {}))
    st.save_story(Story("gone", "", [], None, None, {}, status="deleted"))
    st.put_output("s1", "analysis", "k", "p")
    row = {"s": "gone", "k": "analysis", "h": "k", "p": "p", "t": T}
    with st.transaction() as db:  # as an older version left it
        if backend == "sqlite":
            db.execute(
                "INSERT INTO story_outputs VALUES (:s, :k, :h, :p, :t)", {**row, "t": T.isoformat()}
            )
        else:
            import sqlalchemy as sa

            db.execute(sa.text("INSERT INTO story_outputs VALUES (:s, :k, :h, :p, :t)"), row)
    assert st.get_output("gone", "analysis") == ("k", "p")
    again = make_store()  # a restart
    assert again.get_output("gone", "analysis") is None
    assert again.get_output("s1", "analysis") == ("k", "p")


# -- the pipeline ------------------------------------------------------------------------------
@pytest.mark.both_backends
def test_a_metadata_change_between_the_check_and_the_write_is_not_stored_over(
    pipeline: Pipeline, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline checked that the members were unchanged, then wrote: a metadata update
    committed in between dropped the stored analysis, and the write put back the analysis
    of the old metadata under a key that still matched (it covers content only), served
    as current by every other process (a replica, the digest job)."""
    pipeline.ingest([*COURT, STORM])
    sid = pipeline.store.story_of(["court-1"])["court-1"]
    store = pipeline.store
    real_put = store.put_output
    armed = [True]

    def put_after_a_change(*args: Any, **kwargs: Any) -> Any:
        if armed[0]:
            armed[0] = False
            moved = replace(COURT[0], source="Outlet Z", lean="right")
            assert pipeline.ingest([moved]).results[0].outcome == "updated"
        return real_put(*args, **kwargs)

    monkeypatch.setattr(store, "put_output", put_after_a_change)
    raced = pipeline.story_view(sid)
    assert not armed[0] and {a.source for a in raced.articles} == {"Outlet A", "Outlet B"}
    monkeypatch.undo()
    other = _other(pipeline, embedder)
    try:
        assert other.cached_story_view(sid) is None
        view = other.story_view(sid)
        assert {a.source for a in view.articles} == {"Outlet Z", "Outlet B"}
    finally:
        other.store.close()


@pytest.mark.both_backends
def test_a_delete_between_the_check_and_the_write_leaves_no_analysis_of_the_deleted_text(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete committed between the pipeline's check and its write: the analysis of the
    members before it, quoting the deleted article, was stored after the takedown."""
    pipeline.ingest([*COURT, STORM])
    sid = pipeline.store.story_of(["court-1"])["court-1"]
    store = pipeline.store
    real_put = store.put_output
    armed = [True]

    def put_after_a_delete(*args: Any, **kwargs: Any) -> Any:
        if armed[0]:
            armed[0] = False
            pipeline.delete("court-1")
        return real_put(*args, **kwargs)

    monkeypatch.setattr(store, "put_output", put_after_a_delete)
    raced = pipeline.story_view(sid)
    assert not armed[0] and "court-1" in {a.id for a in raced.articles}
    monkeypatch.undo()
    assert pipeline.store.get_story(sid).article_ids == ["court-2"]
    # only this analysis, of the members before the delete, could have been stored
    assert pipeline.store.get_output(sid, "analysis") is None


@pytest.mark.both_backends
def test_a_deleted_article_sent_again_with_other_metadata_is_not_served_the_old_analysis(
    pipeline: Pipeline, embedder: Any
) -> None:
    """A delete left the story's stored analysis in place (quoting the deleted text); the
    same article sent again with another outlet rejoined the story, its members' content
    key matched that analysis again, and the analysis of the old outlet was served."""
    pipeline.ingest([*COURT, STORM])
    sid = pipeline.store.story_of(["court-1"])["court-1"]
    pipeline.story_view(sid)
    pipeline.delete("court-1")
    assert pipeline.store.get_output(sid, "analysis") is None  # the takedown takes it along
    back = replace(COURT[0], source="Outlet Z", lean="center")
    assert pipeline.ingest([back]).results[0].story_id == sid
    other = _other(pipeline, embedder)
    try:
        # nothing analysed the members as they are now: nothing stored may pass for it
        assert other.cached_story_view(sid) is None
    finally:
        other.store.close()


@pytest.mark.both_backends
def test_content_that_comes_back_under_other_metadata_is_not_served_the_old_analysis(
    pipeline: Pipeline, embedder: Any
) -> None:
    """A content update kept the story's stored analysis (its key no longer matched); when
    the earlier content came back with corrected metadata (a full update, not a
    metadata-only one, so nothing dropped it), the key matched again and the analysis of
    the old metadata was served as current."""
    pipeline.ingest([*COURT, STORM])
    sid = pipeline.store.story_of(["court-1"])["court-1"]
    pipeline.story_view(sid)
    v2 = replace(COURT[0], text=COURT[0].text + " The ruling was 6-3.")
    assert pipeline.ingest([v2]).results[0].outcome == "updated"
    back = replace(COURT[0], published_at=datetime(2021, 10, 18, 15, tzinfo=UTC), source="Outlet Z")
    assert pipeline.ingest([back]).results[0].outcome == "updated"
    now = pipeline.store.story_of(["court-1", "court-2"])
    assert now["court-1"] == now["court-2"] == sid
    other = _other(pipeline, embedder)
    try:
        # nothing analysed the members as they are now: nothing stored may pass for it
        assert other.cached_story_view(sid) is None
    finally:
        other.store.close()
