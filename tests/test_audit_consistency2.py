"""Regression tests from the second audit of stored analyses and index writes: the digest's
dated analyses are written as the pipeline's are (compare-and-set on the members), an
index file write holds ingests and deletes off only while the index is copied, and a
replica tells its idle-time warmer about the stories another process changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from storyline.index.vectors import IndexSnapshot
from storyline.models.types import Article
from storyline.service import digest as dg
from storyline.service import ray_engine
from storyline.service.api.index_saver import IndexSaver
from storyline.service.api.replica import ChangeFollower
from storyline.service.api.runtime import BoundedPool
from storyline.service.api.warmer import StoryWarmer
from storyline.service.pipeline import Pipeline

DAY = datetime(2021, 10, 20, tzinfo=UTC)


def _dev_story(shared_data: Path) -> list[Article]:
    """One AllSides story: two articles the day before DAY, one on DAY (so a digest of the
    day before analyses it as of DAY: kind ``analysis@<DAY>``)."""
    from storyline.service.ingest import read_source

    arts = sorted((p.article for p in read_source(shared_data / "allsides" / "articles.jsonl")
                   if p.article is not None and str(p.article.story_id) == "5646"),
                  key=lambda a: a.id)
    return [replace(a, published_at=DAY + timedelta(hours=h))
            for a, h in zip(arts, [-6, -5.9, 1], strict=True)]


def _one_story(pipe: Pipeline, arts: Sequence[Article]) -> str:
    sids = set(pipe.store.story_of([a.id for a in arts]).values())
    assert len(sids) == 1, sids  # the scenario needs them in one story
    return sids.pop()


def _before_the_write(store: Any, monkeypatch: pytest.MonkeyPatch, change: Callable[[], None],
                      kinds: str = "analysis@") -> list[bool]:
    """The seam: ``change`` commits just before the first real write of an output whose
    kind starts with ``kinds`` (after the writer read and analysed the members)."""
    real_put = store.put_output
    armed = [True]

    def put(story_id: str, kind: str, *args: Any, **kwargs: Any) -> Any:
        if armed[0] and kind.startswith(kinds):
            armed[0] = False
            change()
        return real_put(story_id, kind, *args, **kwargs)

    monkeypatch.setattr(store, "put_output", put)
    return armed


# -- the digest's dated analyses ---------------------------------------------------------------
def test_a_digest_s_dated_analysis_is_not_stored_over_a_metadata_change(
    pipeline: Pipeline, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest analysed a story as of the period's end, then wrote: a metadata update
    committed in between dropped the story's outputs, and the write put back the analysis
    of the old metadata under a key (over content only) that still matched, so every later
    digest of the day served it as cached."""
    dev = _dev_story(shared_data)
    pipeline.ingest(dev)
    sid = _one_story(pipeline, dev)
    since, until = dg.day_period((DAY - timedelta(days=1)).date())
    moved = replace(dev[0], source="Outlet Z", lean="right")
    armed = _before_the_write(pipeline.store, monkeypatch, lambda: (
        pipeline.ingest([moved]).results[0].outcome == "updated" or pytest.fail("no update")))
    dg.build_digest(pipeline, since=since, until=until)
    assert not armed[0]
    monkeypatch.undo()
    assert pipeline.store.get_output(sid, f"analysis@{until.isoformat()}") is None
    again = dg.build_digest(pipeline, since=since, until=until)
    assert again.recomputed == [sid]  # analysed as the members read now, not served stale


def _worker_in_process(ray: Any, rows: Sequence[Mapping[str, Any]], *, models_dir: Path,
                       threads: int, embed_batch_size: int, workers: int | None = None
                       ) -> list[dict[str, Any]]:
    """``ray_engine.analyse_stories`` without a Ray cluster: the real worker over one batch
    of the rows' columns (Ray Data hands it numpy columns alike)."""
    worker = ray_engine._AnalyseWorker(str(models_dir), threads, embed_batch_size)
    cols = {k: ray_engine._col([r[k] for r in rows]) for k in rows[0]}
    out = worker(cols)
    return [{k: (str(v[i]) if v.dtype.kind in "OUS" else float(v[i])) for k, v in out.items()}
            for i in range(len(rows))]


def test_the_ray_engine_stores_no_analysis_of_metadata_changed_while_it_ran(
    pipeline: Pipeline, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Ray engine planned the stories, ran the job (minutes, at scale), then stored
    every result: a member's outlet changed meanwhile dropped the story's outputs, the
    stored result put back the analysis of the old outlet under a key that still matched,
    and the digest (and every later one) used it as the story's analysis."""
    dev = _dev_story(shared_data)
    pipeline.ingest(dev)
    sid = _one_story(pipeline, dev)
    since, until = dg.day_period((DAY - timedelta(days=1)).date())
    monkeypatch.setattr(ray_engine, "ray_session",
                        lambda *a, **k: contextlib.nullcontext(None))
    monkeypatch.setattr(ray_engine, "analyse_stories", _worker_in_process)
    old, moved = dev[0].source, replace(dev[0], source="Outlet Z")
    armed = _before_the_write(pipeline.store, monkeypatch, lambda: (
        pipeline.ingest([moved]).results[0].outcome == "updated" or pytest.fail("no update")))
    res = dg.build_digest(pipeline, since=since, until=until, engine="ray")
    assert not armed[0]
    monkeypatch.undo()
    got = pipeline.store.get_output(sid, f"analysis@{until.isoformat()}")
    # the loop analysed the story again as it is now: the old outlet is nowhere
    assert got is not None and "Outlet Z" in got[1] and f'"{old}"' not in got[1]
    assert res.recomputed == [sid]


# -- index file writes -------------------------------------------------------------------------
ARTS = [
    Article("court-1", "The Supreme Court ruled on Monday that police officers were entitled "
            "to qualified immunity in two excessive force cases.", "Court sides with police",
            "Outlet A", published_at=DAY),
    Article("storm-1", "A powerful hurricane made landfall in Louisiana, cutting power to "
            "hundreds of thousands of homes.", "Hurricane hits Louisiana", "Outlet C",
            published_at=DAY),
]
FLOOD = Article("flood-1", "Floodwater rose across the delta overnight as rivers burst their "
                "banks.", "Flood", "Outlet B", published_at=DAY)


@pytest.fixture()
def lazy(data_dir: Path, embedder: Any) -> Iterator[Pipeline]:
    """A pipeline whose index file is written only when asked (or at close)."""
    from storyline.service.settings import Settings

    pipe = Pipeline(Settings(data_dir=data_dir, index_save_interval_s=3600), embedder=embedder,
                    clusterer=False)
    yield pipe
    pipe.store.close()


def _held_write(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The seam: an index file write stops at the file (after the copy) until released."""
    entered, release = threading.Event(), threading.Event()
    real_write = IndexSnapshot.write

    def write(self: IndexSnapshot, path: Path) -> None:
        entered.set()
        assert release.wait(20)
        real_write(self, path)

    monkeypatch.setattr(IndexSnapshot, "write", write)
    return entered, release


def test_ingests_and_deletes_go_on_while_the_index_file_is_written(
    lazy: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline held its write lock through the whole index file write (copy,
    serialise, fsync: ~1.2 s at 100k vectors, every interval): every ingest and delete
    waited for it. Now they wait only for the copy, and what they change is written by
    the next write (the file holds exactly the snapshot)."""
    from storyline.index.vectors import VectorIndex

    lazy.ingest(ARTS)
    entered, release = _held_write(monkeypatch)
    writer = threading.Thread(target=lazy.flush_index, kwargs={"force": True})
    writer.start()
    try:
        assert entered.wait(20)
        done: list[str] = []

        def write_meanwhile() -> None:
            done.append(lazy.ingest([FLOOD]).results[0].outcome)
            lazy.delete("storm-1")
            done.append("deleted")

        user = threading.Thread(target=write_meanwhile)
        user.start()
        user.join(timeout=10)
        assert not user.is_alive(), "the ingest waited for the index file write"
        assert done == ["inserted", "deleted"]
    finally:
        release.set()
        writer.join(timeout=30)
        user.join(timeout=30)
    monkeypatch.undo()
    path = lazy.settings.index_path
    assert VectorIndex.load(path).ids == {"court-1", "storm-1"}  # the snapshot
    assert lazy.flush_index(force=True) is True  # the changes made meanwhile are still due
    assert VectorIndex.load(path).ids == {"court-1", "flood-1"}
    assert VectorIndex.load(path).seq == lazy.store.last_seq()
    assert lazy.flush_index(force=True) is False


def test_an_older_snapshot_never_overwrites_a_newer_index_file(
    lazy: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes run outside the write lock: one copied first may reach the file last. It
    must not put the older contents (and change number) over the newer file."""
    from storyline.index.vectors import VectorIndex

    lazy.ingest(ARTS)
    real = lazy._write_index
    newer_done = threading.Event()
    first = [True]

    def late(version: int, snap: IndexSnapshot) -> None:
        if first[0]:  # the first snapshot taken reaches the file after the next one
            first[0] = False
            assert newer_done.wait(20)
        real(version, snap)

    monkeypatch.setattr(lazy, "_write_index", late)
    older = threading.Thread(target=lazy.flush_index, kwargs={"force": True})
    older.start()
    deadline = time.monotonic() + 20
    while first[0]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    lazy.ingest([FLOOD])
    assert lazy.flush_index(force=True) is True
    newer_done.set()
    older.join(timeout=30)
    saved = VectorIndex.load(lazy.settings.index_path)
    assert saved.ids == {"court-1", "storm-1", "flood-1"}
    assert saved.seq == lazy.store.last_seq()
    assert lazy.flush_index(force=True) is False  # and nothing is taken to be due again


class _Runtime:
    """What the background tasks read from the runtime: one background thread, as with
    the model process (``background_process``), where ingests and deletes run."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.background = BoundedPool("audit-consistency2", 1, 8)
        self.io = self.background
        self.warmer: Any = None


def test_the_index_saver_s_write_does_not_hold_up_the_ingest_pool(
    lazy: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saver ran its tick on the background pool, where ingests run (one thread with
    the model process): an ingest queued there waited for the whole file write even with
    the write outside the pipeline's lock."""
    lazy.ingest(ARTS)
    entered, release = _held_write(monkeypatch)
    rt = _Runtime(lazy)

    async def run() -> str:
        saver = IndexSaver(rt, 0.01)
        saver.start()
        try:
            assert await asyncio.to_thread(entered.wait, 20)
            report = await asyncio.wait_for(rt.background.run(lazy.ingest, [FLOOD]), 10)
            return str(report.results[0].outcome)
        finally:
            release.set()
            await saver.stop()

    try:
        assert asyncio.run(run()) == "inserted"
    finally:
        release.set()
        rt.background.shutdown()


# -- a replica's warmer --------------------------------------------------------------------------
COURT2 = Article("court-2", "Justices overturned two lower court rulings, granting officers "
                 "qualified immunity from lawsuits over the use of force.",
                 "Justices back officers", "Outlet B", published_at=DAY)
STORM2 = Article("storm-2", "The hurricane that struck Louisiana left hundreds of thousands "
                 "of homes without power as it moved inland.", "Storm leaves homes dark",
                 "Outlet D", published_at=DAY)


def test_a_replica_marks_the_stories_another_process_changed_for_its_warmer(
    pipeline: Pipeline, embedder: Any
) -> None:
    """A replica applied another process's ingests and deletes to its index but never told
    its idle-time warmer: those stories were analysed only when a reader asked (seconds
    for a large story), while the process that wrote them warmed its own."""
    from storyline.service.settings import Settings

    pipeline.ingest([*ARTS, COURT2])
    court = pipeline.store.story_of(["court-1"])["court-1"]
    # another process on the same SQLite file, started now (its clusterer knows court-1)
    replica = Pipeline(Settings(data_dir=pipeline.settings.data_dir), embedder=embedder)
    rt = _Runtime(replica)
    rt.warmer = StoryWarmer(rt)  # not started: what it is told is what it would analyse

    async def marked_after(change: Callable[[], Any]) -> set[str]:
        rt.warmer._dirty.clear()
        await asyncio.to_thread(change)
        deadline = time.monotonic() + 10
        while not rt.warmer._dirty:
            assert time.monotonic() < deadline, "the replica's warmer was never told"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # (anything else it would be told)
        return set(rt.warmer._dirty)

    async def run() -> tuple[set[str], set[str]]:
        follower = ChangeFollower(rt, 0.02)
        follower.start()
        try:
            ingested = await marked_after(lambda: pipeline.ingest([STORM2]))
            deleted = await marked_after(lambda: pipeline.delete("court-1"))
        finally:
            await follower.stop()
        return ingested, deleted

    try:
        ingested, deleted = asyncio.run(run())
    finally:
        replica.store.close()
        rt.background.shutdown()
    assert ingested == {pipeline.store.story_of(["storm-2"])["storm-2"]}
    assert deleted == {court}
