"""Concurrency around the model process and the periodic background tasks: a timed-out
call on one of several read-lane workers fails only itself, and a periodic task's stop
waits for a step running on a pool thread before the shutdown closes what it uses."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import gone
from warmer_fakes import FakeRuntime, wait_until

from storyline.index import vectors
from storyline.models.errors import ModelUnavailable
from storyline.models.registry import atomic_write_bytes
from storyline.models.types import Article
from storyline.service.api.index_saver import IndexSaver
from storyline.service.api.replica import ChangeFollower
from storyline.service.model_process import ModelProcess
from storyline.service.pipeline import Pipeline
from storyline.service.settings import Settings

#: a model call's time limit in these tests; a healthy call answers in milliseconds
#: wide margins around each deadline: these tests run beside others on a loaded box
TIMEOUT_S = 6.0


def _pid_after(delay: float) -> int:
    """Runs in the worker: answers its pid after ``delay`` (pickled by reference)."""
    time.sleep(delay)
    return os.getpid()


@pytest.fixture()
def two_workers(tmp_path: Path, models_dir: Path) -> Iterator[ModelProcess]:
    d = tmp_path / "data"
    d.mkdir()
    (d / "models").symlink_to(models_dir, target_is_directory=True)
    mp = ModelProcess(
        Settings(
            data_dir=d,
            background_process=False,
            feature_cache=False,
            model_call_timeout_s=TIMEOUT_S,
            inference_workers=2,
        )
    )
    yield mp
    mp.close()


def _concurrently(proc: ModelProcess, *calls: tuple[Any, ...], gap: float = 0.2) -> list[Any]:
    """Each call on its own thread, started in order ``gap`` s apart; results or errors."""
    out: list[Any] = [None] * len(calls)

    def run(i: int, fn: Any, *args: Any) -> None:
        try:
            out[i] = proc._submit(fn, *args)
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i, *c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
        time.sleep(gap)
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return out


def test_a_timed_out_call_fails_only_itself_among_several_workers(
    two_workers: ModelProcess,
) -> None:
    """With STORYLINE_INFERENCE_WORKERS=2, the wedged call's timeout killed every worker
    of the lane's one pool: a call answering normally on the other worker failed with it
    (503), and the lane restarted from nothing."""
    proc = two_workers
    # both workers up and past their first answer (a fresh one gets START_GRACE_S)
    first = _concurrently(proc, (_pid_after, 1.0), (_pid_after, 1.0))
    assert all(isinstance(p, int) for p in first) and len(set(first)) == 2, first

    # the healthy call runs from 2 s to 7 s: across the wedged call's timeout at 6 s,
    # and within its own limit (8 s), a second from each
    wedged, healthy = _concurrently(proc, (time.sleep, 30), (_pid_after, 5.0), gap=2.0)
    assert isinstance(wedged, ModelUnavailable) and "did not answer within" in str(wedged)
    assert isinstance(healthy, int), f"the call on the healthy worker failed: {healthy!r}"
    (killed,) = set(first) - {healthy}
    assert gone(killed), "the wedged worker was left running"

    # the lane keeps two workers: the survivor and a fresh one, both answering at once
    after = _concurrently(proc, (_pid_after, 1.0), (_pid_after, 1.0))
    assert all(isinstance(p, int) for p in after) and len(set(after)) == 2, after
    assert healthy in after and killed not in after
    assert proc.unservable() is None


# -- periodic tasks: stop waits for a running step -------------------------------------------
def _release_in(event: threading.Event, seconds: float) -> None:
    threading.Timer(seconds, event.set).start()


def test_the_change_follower_stop_waits_for_its_running_poll(
    data_dir: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() cancelled the task while a poll ran on an I/O thread and returned at once:
    the shutdown then closed the store under the poll, which failed on it (and could have
    applied changes to the index after its file was written)."""
    pipe = Pipeline(Settings(data_dir=data_dir), embedder=embedder, clusterer=False)
    in_poll, release = threading.Event(), threading.Event()
    real_changes = pipe.store.changes_since

    def slow_changes(seq: int, limit: int = 10_000) -> Any:
        in_poll.set()
        assert release.wait(20)
        return real_changes(seq, limit)

    monkeypatch.setattr(pipe.store, "changes_since", slow_changes)
    rt = FakeRuntime(pipe, "audit-follower")
    follower = ChangeFollower(rt, 0.01)

    async def run() -> float:
        follower.start()
        await wait_until(in_poll.is_set)
        _release_in(release, 0.3)
        t0 = time.monotonic()
        await follower.stop()
        took = time.monotonic() - t0
        pipe.close()  # what the lifespan's shutdown does next
        await asyncio.to_thread(rt.io.shutdown)
        return took

    took = asyncio.run(run())
    assert took >= 0.25, "stop() returned while the poll still ran"
    assert follower.failures == 0, "the poll ran on after the store was closed"


def test_the_index_saver_stop_waits_for_its_running_write(
    data_dir: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saver writes on a thread of its own, which nothing in the shutdown drains:
    stop() returned while the file was still being written. (The pipeline's write locks
    kept the file right: close's newer write waited for it.)"""
    pipe = Pipeline(
        Settings(data_dir=data_dir, index_save_interval_s=3600), embedder=embedder, clusterer=False
    )
    pipe.ingest([Article("a", "The Supreme Court ruled on police immunity.", "Court")])
    in_write, release = threading.Event(), threading.Event()
    events: list[str] = []

    def slow_first_write(path: Path, data: bytes) -> None:
        first = not events
        if first:
            in_write.set()
            assert release.wait(20)
        atomic_write_bytes(path, data)
        events.append("saver wrote" if first else "close wrote")

    monkeypatch.setattr(vectors, "atomic_write_bytes", slow_first_write)
    saver = IndexSaver(FakeRuntime(pipe, "audit-saver"), 0.01)

    async def run() -> None:
        saver.start()
        await wait_until(in_write.is_set)
        # ingested while the saver writes its snapshot: only close's write has it
        pipe.ingest([Article("b", "A hurricane cut power across Louisiana.", "Storm")])
        _release_in(release, 0.3)
        await saver.stop()
        events.append("stopped")
        await asyncio.to_thread(pipe.close)

    asyncio.run(run())
    assert events == ["saver wrote", "stopped", "close wrote"]
    assert vectors.VectorIndex.load(pipe.settings.index_path).ids == {"a", "b"}


def test_a_step_failing_after_stop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The loop that logs a failed step is cancelled by stop(), and the shield marks the
    step's exception retrieved: a step that failed while stop() waited for it vanished."""
    from storyline.service.api.background import PeriodicTask

    in_step, release = threading.Event(), threading.Event()

    class Failing(PeriodicTask):
        task_name = "audit-failing"

        def step(self, pipe: Any) -> None:
            in_step.set()
            assert release.wait(20)
            raise RuntimeError("the disk went away")

    rt = FakeRuntime(object(), "audit-failing")
    task = Failing(rt, 0.01)

    async def run() -> None:
        task.start()
        await wait_until(in_step.is_set)
        _release_in(release, 0.2)
        await task.stop()
        await asyncio.to_thread(rt.io.shutdown)

    with caplog.at_level(logging.ERROR, logger="storyline.service.api.background"):
        asyncio.run(run())
    failed = [r for r in caplog.records if "the step running at stop failed" in r.getMessage()]
    assert failed and "the disk went away" in str(failed[0].exc_info)


def test_the_lifespan_stops_its_tasks_together() -> None:
    """The saver, the follower and the warmer were stopped one after another, each
    waiting up to its stop_wait_s for a step that hangs (a store gone away): the waits
    added up at shutdown."""
    from storyline.service.api.background import PeriodicTask, stop_all

    started = [threading.Event(), threading.Event()]
    release = threading.Event()

    class Hung(PeriodicTask):
        stop_wait_s = 1.0

        def __init__(self, rt: Any, n: int) -> None:
            super().__init__(rt, 0.01)
            self.task_name = f"audit-hung-{n}"
            self.n = n

        def step(self, pipe: Any) -> None:
            started[self.n].set()
            assert release.wait(20)

    # as in the app, the tasks' steps run on pools of their own
    rts = [FakeRuntime(object(), f"audit-hung-{n}") for n in range(2)]
    tasks = [Hung(rt, n) for n, rt in enumerate(rts)]

    async def run() -> float:
        for t in tasks:
            t.start()
        await wait_until(lambda: all(e.is_set() for e in started))
        t0 = time.monotonic()
        await stop_all(*tasks)
        took = time.monotonic() - t0
        release.set()
        for rt in rts:
            await asyncio.to_thread(rt.io.shutdown)
        return took

    took = asyncio.run(run())
    assert 0.9 <= took < 1.7, f"stops took {took:.2f} s: one wait after another"


def test_a_finished_call_is_not_counted_busy_until_its_callback_runs(
    two_workers: ModelProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A future wakes its waiter before it runs its done-callbacks: the worker of a call
    # that had answered was still counted busy in that window, so the caller's next call
    # could queue behind a busy worker while this one sat idle. Here the callbacks run
    # late on purpose.
    from concurrent.futures import ProcessPoolExecutor

    release = threading.Event()
    submit = ProcessPoolExecutor.submit

    def late_callbacks(self: ProcessPoolExecutor, fn: Any, *args: Any) -> Any:
        fut = submit(self, fn, *args)
        add = fut.add_done_callback
        fut.add_done_callback = lambda cb: add(  # type: ignore[method-assign]
            lambda f: (release.wait(10), cb(f)))
        return fut

    monkeypatch.setattr(ProcessPoolExecutor, "submit", late_callbacks)
    out: list[Any] = []
    second = threading.Thread(target=lambda: out.append(two_workers._submit(_pid_after, 1.5)))
    try:
        two_workers._submit(_pid_after, 0.0)
        assert not two_workers._in_flight
        # the first call's late callback does not take a call off a second time: the
        # call running now still counts after it
        second.start()
        time.sleep(0.3)
        assert sum(two_workers._in_flight.values()) == 1
    finally:
        release.set()
    time.sleep(0.3)
    assert sum(two_workers._in_flight.values()) == 1
    second.join(30)
    assert out and not two_workers._in_flight
