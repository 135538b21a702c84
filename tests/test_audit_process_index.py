"""Model-process robustness and index-save blocking: a wedged worker is timed out and
replaced, a worker that died idle costs no failed call, a killed worker's late answer
reaches nobody, no worker starts after close, and a vector index save lets searches and
adds through while it serialises and writes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from processes import gone

from storyline.index.vectors import VectorIndex
from storyline.models.errors import ModelUnavailable
from storyline.service import model_process
from storyline.service.model_process import READ_LANE, ModelProcess
from storyline.service.settings import Settings

#: a model call's time limit in these tests; a healthy call answers in milliseconds
TIMEOUT_S = 2.0


def _echo_after(value: str, delay: float) -> str:
    """Runs in the worker: a call that answers late (pickled by reference)."""
    time.sleep(delay)
    return value


@pytest.fixture()
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    d = tmp_path / "data"
    d.mkdir()
    (d / "models").symlink_to(models_dir, target_is_directory=True)
    return Settings(
        data_dir=d, background_process=False, feature_cache=False, model_call_timeout_s=TIMEOUT_S
    )


@pytest.fixture()
def proc(settings: Settings) -> Iterator[ModelProcess]:
    mp = ModelProcess(settings)
    yield mp
    mp.close()


# -- 1. a wedged call ------------------------------------------------------------------------
def test_a_wedged_call_times_out_and_its_worker_is_killed_and_replaced(proc: ModelProcess) -> None:
    """A native call that never returns hung the request (and its pool thread) forever."""
    wedged = proc.pid
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable, match="did not answer within") as err:
        proc._submit(time.sleep, 20)
    assert time.monotonic() - t0 < TIMEOUT_S + 5
    # the HTTP mapping makes it a 503 with Retry-After: waiting helps, it is not lasting
    assert err.value.status_code == 503 and not err.value.extra.get("lasting")
    assert gone(wedged), "the wedged worker was left running"
    assert proc.embedder.embed(["hello"]).shape == (1, proc.dim)  # a fresh worker
    assert proc.call_info()["pid"] != wedged
    assert proc.unservable() is None  # it had answered calls before: not a crash loop


def test_calls_queued_behind_a_wedged_call_fail_cleanly(proc: ModelProcess) -> None:
    """The pool's other calls end as a crashed worker's do: ModelUnavailable (503), not
    the executor's CancelledError (a 500), and none waits past its own limit."""
    results: dict[int, BaseException | object] = {}

    def call(i: int, fn: Any, *args: Any) -> None:
        try:
            results[i] = proc._submit(fn, *args)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(0, time.sleep, 20))]
    threads[0].start()
    time.sleep(0.5)  # queued behind it, with later deadlines
    threads += [threading.Thread(target=call, args=(i, os.getpid)) for i in (1, 2, 3)]
    t0 = time.monotonic()
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert time.monotonic() - t0 < 2 * TIMEOUT_S + 5
    assert isinstance(results[0], ModelUnavailable)
    for i in (1, 2, 3):
        assert isinstance(results[i], ModelUnavailable | int), results[i]
    assert isinstance(proc._submit(os.getpid), int)


def test_a_late_answer_of_a_killed_worker_never_reaches_a_later_call(proc: ModelProcess) -> None:
    with pytest.raises(ModelUnavailable, match="did not answer within"):
        proc._submit(_echo_after, "late", TIMEOUT_S + 1.5)
    assert proc._submit(_echo_after, "second", 0) == "second"
    time.sleep(2.0)  # past when the killed call would have answered
    assert proc._submit(_echo_after, "third", 0) == "third"
    assert proc._submit(_echo_after, "fourth", 0.2) == "fourth"


def test_a_fresh_worker_gets_time_to_load(settings: Settings) -> None:
    """The limit is for calls, not for a worker's start (spawn, imports, models): the
    first worker and a replacement loading their stages must not be killed as wedged."""
    mp = ModelProcess(
        settings.model_copy(update={"model_call_timeout_s": 0.5}), preload=("summariser",)
    )  # loads for seconds, well over 0.5 s
    try:
        os.kill(mp.pid, signal.SIGKILL)
        time.sleep(0.3)
        assert mp.embedder.embed(["hello"]).shape == (1, mp.dim)  # waited for the load
        assert mp.call_info()["pid"] != mp.pid
    finally:
        mp.close()


# -- 2. a worker that died while idle -------------------------------------------------------
def test_a_worker_killed_while_idle_is_replaced_without_a_failed_call(proc: ModelProcess) -> None:
    """The OOM killer took it between calls: the next call failed once with 503."""
    for _ in range(model_process.CRASH_LOOP_STARTS + 1):
        pid = proc.call_info()["pid"]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        assert proc.embedder.embed(["hello"]).shape == (1, proc.dim)
        assert proc.call_info()["pid"] != pid
    # each of them had answered calls: no crash loop however often it happens
    assert proc.unservable() is None


def test_a_worker_killed_during_its_call_still_fails_that_call(proc: ModelProcess) -> None:
    """Only a worker found dead before the call is retried: a call that may have killed
    its worker (a native crash on this input) is not run again."""
    box: dict[str, BaseException | object] = {}

    def call() -> None:
        try:
            box["out"] = proc._submit(time.sleep, 1.5)
        except BaseException as exc:
            box["out"] = exc

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    t.join(timeout=30)
    assert isinstance(box["out"], ModelUnavailable)
    assert "model process stopped" in str(box["out"])
    assert isinstance(proc._submit(os.getpid), int)


def test_a_crash_looping_lane_is_not_restarted_behind_the_callers_back(proc: ModelProcess) -> None:
    """The transparent restart respects the crash-loop cool-down: a lane whose workers
    keep dying before they answer fails the call (503) instead of starting yet another."""
    with proc._lock:  # as after CRASH_LOOP_STARTS workers that died while loading
        proc._failed_starts[READ_LANE] = model_process.CRASH_LOOP_STARTS
        proc._last_failed_start[READ_LANE] = time.monotonic()
        proc._answered.clear()  # this one has not answered anything either
    pid = proc.pid
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    with pytest.raises(ModelUnavailable, match="model process stopped"):
        proc.embedder.embed(["hello"])
    cond = proc.unservable()
    assert cond is not None and not cond.restart and cond.retry_after


# -- shutdown -------------------------------------------------------------------------------
def test_no_worker_starts_after_close(settings: Settings) -> None:
    """A call arriving during shutdown started a fresh pool that close() never stopped:
    a worker loading every model while the service exits."""
    import multiprocessing

    mp = ModelProcess(settings)
    out: dict[str, object] = {}

    def in_flight() -> None:
        out["v"] = mp._submit(_echo_after, "done", 1.0)

    t = threading.Thread(target=in_flight)
    t.start()
    time.sleep(0.3)
    mp.close()  # lets the call in flight answer
    t.join(timeout=30)
    assert out["v"] == "done"
    before = {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(ModelUnavailable, match="shutting down"):
        mp.embedder.embed(["hello"])
    assert {p.pid for p in multiprocessing.active_children()} <= before


# -- 3. the vector index save ---------------------------------------------------------------
def _index(n: int, dim: int = 384) -> tuple[VectorIndex, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(7)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ix = VectorIndex(dim)
    ix.add([f"a{i}" for i in range(n)], v)
    return ix, v


def test_searches_and_adds_go_on_while_the_index_is_serialised_and_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save held the index lock while it serialised the index (0.8 s at 100k
    vectors on a busy box): every search and add waited. Serialising is held up here (a
    seam) so the test can look inside the save: searches and adds must finish meanwhile,
    and the file must hold exactly the snapshot, not the changes made during the write."""
    import faiss

    from storyline.index import vectors

    ix, v = _index(2000)
    in_serialise = threading.Event()
    release = threading.Event()
    real_serialize = faiss.serialize_index

    def slow_serialize(index: Any) -> Any:
        in_serialise.set()
        assert release.wait(20)
        return real_serialize(index)

    monkeypatch.setattr(faiss, "serialize_index", slow_serialize)
    path = tmp_path / "v.faiss"
    saver = threading.Thread(target=ix.save, args=(path,), kwargs={"seq": 5})
    saver.start()
    try:
        assert in_serialise.wait(20)
        done: dict[str, Any] = {}

        def use() -> None:
            done["hits"] = ix.search(v[:1], 3)
            done["added"] = ix.add(["during"], v[1:2] * 0.5 + v[2:3] * 0.5)
            done["removed"] = ix.remove(["a0"])

        user = threading.Thread(target=use)
        user.start()
        user.join(timeout=5)
        assert not user.is_alive(), "search/add waited for the save"
        assert done["hits"][0][0][0] == "a0" and done["added"] == 1 and done["removed"] == 1
    finally:
        release.set()
        saver.join(timeout=30)
    monkeypatch.undo()
    saved = vectors.VectorIndex.load(path)
    # the snapshot: "a0" still in it, the add made during the write not (it is saved
    # next time: the caller's dirty mark was taken before this save began)
    assert saved.seq == 5 and len(saved) == 2000
    assert "a0" in saved.ids and "during" not in saved.ids
    assert saved.search(v[:1], 1)[0][0][0] == "a0"
    ix.save(path, seq=6)
    again = vectors.VectorIndex.load(path)
    assert "during" in again.ids and "a0" not in again.ids and again.seq == 6


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_saved_snapshot_round_trips(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(3)
    v = rng.standard_normal((300, 32)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ix = VectorIndex(32, kind)  # type: ignore[arg-type]
    ix.add([f"a{i}" for i in range(300)], v)
    ix.add(["a1"], v[2:3])  # replaced: a removal (flat) or a tombstone (hnsw)
    ix.remove(["a5"])
    ix.save(tmp_path / "v.faiss", seq=9)
    back = VectorIndex.load(tmp_path / "v.faiss")
    assert back.ids == ix.ids and back.seq == 9 and back.tombstones == ix.tombstones
    assert back.search(v[:5], 5) == ix.search(v[:5], 5)
    np.testing.assert_array_equal(back.reconstruct("a1"), v[2])
