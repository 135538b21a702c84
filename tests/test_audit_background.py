"""Regression tests from the audit of the service's background machinery: the idle-time
story warmer and the index file saver (``service/api/warmer.py``, ``index_saver.py``).

The tasks run on a real ``BoundedPool`` and event loop; the pipeline is a stand-in only
where a test is about how the task reacts to what the pipeline says (a story merged away,
models down, a disk that refuses the file). The last test uses the real pipeline.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from warmer_fakes import FakePipeline, FakeRuntime, wait_until

from storyline.models.errors import ModelUnavailable, NotFound
from storyline.models.types import Article
from storyline.service.api import warmer as warmer_mod
from storyline.service.api.index_saver import IndexSaver
from storyline.service.api.warmer import StoryWarmer

T = datetime(2021, 10, 18, 12, tzinfo=UTC)


# -- warmer ------------------------------------------------------------------------------------
def test_a_story_merged_while_queued_warms_its_successor() -> None:
    """A queued story that a refine merged (or split) away answered NotFound and was
    dropped: its successor, which now holds the changed articles, was never marked by
    anything, so it stayed cold until a reader paid for its analysis."""

    def behaviour(sid: str) -> None:
        if sid == "s-old":
            raise NotFound("story 's-old' was merged into s-new", moved_to=["s-new"])
        if sid == "s-split":
            raise NotFound("story 's-split' was split into a, b", moved_to=["s-a", "s-b"])

    pipe = FakePipeline(behaviour)

    async def run() -> None:
        w = StoryWarmer(FakeRuntime(pipe, "audit-background"))
        w.start()
        w.mark(["s-old", "s-split"])
        await wait_until(lambda: w.pending == 0)
        await w.stop()

    asyncio.run(run())
    assert pipe.calls == ["s-old", "s-split", "s-new", "s-a", "s-b"]


def test_models_down_keeps_stories_queued_and_backs_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With the model process down (or the store unreachable) every story failed with a
    StorylineError, which the warmer took for "story gone": it drained its whole queue at
    debug level, so `stories_pending_analysis` read 0 while nothing was analysed and the
    stories were never warmed once the models came back."""
    monkeypatch.setattr(warmer_mod, "_RETRY_MIN_S", 0.05, raising=False)
    down = [True]

    def behaviour(sid: str) -> None:
        if down[0]:
            raise ModelUnavailable("the model process stopped (background lane)")

    pipe = FakePipeline(behaviour)

    async def run() -> StoryWarmer:
        w = StoryWarmer(FakeRuntime(pipe, "audit-background"))
        w.start()
        w.mark(["a", "b", "c"])
        await asyncio.sleep(0.3)
        assert w.pending == 3  # still counted while they cannot be analysed
        down[0] = False
        await wait_until(lambda: w.pending == 0)
        await w.stop()
        return w

    with caplog.at_level(logging.INFO, logger=warmer_mod.__name__):
        w = asyncio.run(run())
    assert w.done == 3 and set(pipe.calls[-3:]) == {"a", "b", "c"}
    # backed off (0.05, 0.1, 0.2 s ...) rather than retried in a hot loop
    assert len(pipe.calls) <= 3 + 4, pipe.calls
    paused = [r for r in caplog.records if "paused" in r.getMessage()]
    assert len(paused) == 1 and paused[0].levelno == logging.WARNING
    assert any("resumed" in r.getMessage() for r in caplog.records)


def test_a_failing_story_is_logged_once_and_the_rest_are_warmed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def behaviour(sid: str) -> None:
        if sid == "bad":
            raise ValueError("a bug in one story's analysis")

    pipe = FakePipeline(behaviour)

    async def run() -> StoryWarmer:
        w = StoryWarmer(FakeRuntime(pipe, "audit-background"))
        w.start()
        w.mark(["bad", "good"])
        await wait_until(lambda: w.pending == 0)
        await asyncio.sleep(0.1)  # no retry of the bad one
        await w.stop()
        return w

    with caplog.at_level(logging.INFO, logger=warmer_mod.__name__):
        w = asyncio.run(run())
    assert pipe.calls == ["bad", "good"] and w.done == 1
    assert len([r for r in caplog.records if "bad" in r.getMessage()]) == 1


def test_stop_is_prompt_while_an_analysis_runs() -> None:
    def behaviour(sid: str) -> None:
        time.sleep(0.5)

    pipe = FakePipeline(behaviour)

    async def run() -> float:
        rt = FakeRuntime(pipe, "audit-background")
        w = StoryWarmer(rt)
        w.start()
        w.mark(["slow", "next"])
        await wait_until(lambda: bool(pipe.calls))
        t0 = time.monotonic()
        await w.stop()
        took = time.monotonic() - t0
        await asyncio.to_thread(rt.background.shutdown)
        return took

    assert asyncio.run(run()) < 0.2
    assert pipe.calls == ["slow"]


# -- index saver -------------------------------------------------------------------------------
class FlakyFlush:
    """``flush_index`` that fails while ``failing`` holds, as on a full disk."""

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0

    def flush_index(self, *, force: bool = False, interval_s: float | None = None) -> bool:
        self.calls += 1
        if self.failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        return True


def test_a_failing_index_write_is_reported_once_and_kept_as_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk or read-only data dir logged the same traceback at every tick and left
    nothing a probe or metric could read; now one error, then state until it recovers."""
    pipe = FlakyFlush()

    async def run() -> IndexSaver:
        saver = IndexSaver(FakeRuntime(pipe, "audit-background"), 0.01)
        saver.start()
        await wait_until(lambda: pipe.calls >= 5)
        assert saver.failing_since is not None and saver.failures >= 4
        assert saver.last_error is not None and "No space left" in saver.last_error
        pipe.failing = False
        await wait_until(lambda: saver.failing_since is None)
        await saver.stop()
        return saver

    with caplog.at_level(logging.DEBUG, logger="storyline.service.api"):
        saver = asyncio.run(run())
    assert saver.failures == 0 and saver.last_error is None
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "vector index file" in errors[0].getMessage()
    assert any("written again" in r.getMessage() for r in caplog.records)


# -- the pipeline's own index write ----------------------------------------------------------
def test_a_full_disk_does_not_fail_a_committed_ingest(
    data_dir: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the index file due (interval 0, or a save that failed earlier), an ingest
    commits, then the file write raises: the client gets a 500 for a stored batch, and the
    batch is never placed in stories (assignment comes after the write)."""
    from storyline.index import vectors
    from storyline.service.pipeline import Pipeline
    from storyline.service.settings import Settings

    pipe = Pipeline(Settings(data_dir=data_dir, index_save_interval_s=0), embedder=embedder)
    try:
        def full_disk(path: Path, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(vectors, "atomic_write_bytes", full_disk)
        art = Article("court-1", "The Supreme Court ruled on Monday that police officers were "
                      "entitled to qualified immunity.", "Court sides with police", "Outlet A",
                      published_at=T)
        from prometheus_client import REGISTRY

        def failures() -> float:
            return REGISTRY.get_sample_value("storyline_index_file_write_failures_total") or 0.0

        before = failures()
        report = pipe.ingest([art])
        assert report.results[0].outcome == "inserted"
        assert pipe.store.story_of(["court-1"]).get("court-1") is not None
        assert failures() == before + 1  # visible on /metrics
    finally:
        pipe.store.close()


# -- background tasks ----------------------------------------------------------------------
def test_a_task_whose_loop_died_is_logged_and_does_not_abort_the_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """stop() re-raised the loop's exception: the lifespan's shutdown ended there, before
    the pools were drained and the pipeline closed (the shutdown write of the index file),
    and the death itself went unreported until then."""
    from storyline.service.api.background import BackgroundTask

    class Broken(BackgroundTask):
        task_name = "audit-broken"

        async def _loop(self) -> None:
            raise RuntimeError("loop bug")

    async def run() -> None:
        t = Broken()
        t.start()
        await asyncio.sleep(0.05)
        assert any("audit-broken stopped" in r.getMessage() for r in caplog.records)
        await t.stop()  # does not raise

    with caplog.at_level(logging.ERROR, logger="storyline.service.api"):
        asyncio.run(run())


def test_the_saver_writes_the_index_file_at_most_once_per_interval(
    data_dir: Path, embedder: Any
) -> None:
    """README: the file is written "at most this often". An ingest writes it itself once
    the interval has passed; the saver's tick then forced a second full write moments
    later (a 100k-vector file is ~150 MB, 1.2 s, under the write lock)."""
    from storyline.index.vectors import VectorIndex
    from storyline.service.pipeline import Pipeline
    from storyline.service.settings import Settings

    interval = 0.5
    pipe = Pipeline(Settings(data_dir=data_dir, index_save_interval_s=interval),
                    embedder=embedder, clusterer=False)
    try:
        path = pipe.settings.index_path
        saver = IndexSaver(FakeRuntime(pipe, "audit-background"), interval)
        time.sleep(interval)
        pipe.ingest([Article("a", "The Supreme Court ruled on police immunity.", "Court")])
        assert VectorIndex.load(path).ids == {"a"}  # due: the ingest wrote it
        pipe.ingest([Article("b", "A hurricane cut power across Louisiana.", "Storm")])
        saver.step(pipe)  # a tick just after that write
        assert VectorIndex.load(path).ids == {"a"}
        time.sleep(interval)
        saver.step(pipe)
        assert VectorIndex.load(path).ids == {"a", "b"}
    finally:
        pipe.store.close()


# -- the index file's atomic write -------------------------------------------------------------
def test_a_write_killed_midway_leaves_no_temp_file_for_good(tmp_path: Path) -> None:
    """A process killed while writing the index file (OOM, SIGKILL at a stop timeout) left
    its full-size temp file beside it forever; every such restart added one."""
    import os

    import numpy as np

    from storyline.index import vectors
    from storyline.index.vectors import VectorIndex

    path = tmp_path / "vectors.faiss"
    stale = tmp_path / ".vectors.faiss.k1ll3d.tmp"
    young = tmp_path / ".vectors.faiss.w0rk1n.tmp"  # another replica's write in progress
    other = tmp_path / ".stories.json.abc.tmp"
    for f in (stale, young, other):
        f.write_bytes(b"x" * 16)
    old = time.time() - getattr(vectors, "STALE_TEMP_S", 3600.0) - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    VectorIndex.build(["a"], np.full((1, 4), 0.5, np.float32), 4).save(path, seq=3)
    assert not stale.exists() and young.exists() and other.exists()
    assert VectorIndex.load(path).seq == 3
