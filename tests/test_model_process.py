"""The HTTP service's model process: same answers as in-process stages, errors carried
across, lower priority, and a dead worker replaced rather than wedging the service."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from storyline.models.errors import InvalidInput, ModelUnavailable
from storyline.models.types import Article
from storyline.service import pipeline as p
from storyline.service.model_process import ModelProcess
from storyline.service.settings import Settings

ARTS = [
    Article(id="a1", title="Court blocks the new tariff plan",
            text="A federal court on Monday blocked President Trump's tariff plan. "
                 "Judge Mary Smith said the White House had exceeded its authority. "
                 "The Commerce Department said it would appeal the ruling."),
    Article(id="a2", title="Tariffs halted by judge",
            text="Judge Mary Smith halted the tariffs on Monday. Trump criticised the ruling "
                 "as a disgrace and said his administration would win on appeal."),
]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Settings:
    d = tmp_path_factory.mktemp("mp") / "data"
    d.mkdir()
    (d / "models").symlink_to(models_dir, target_is_directory=True)
    # a non-zero read-lane nice, so the priority tests can tell the lanes apart
    return Settings(data_dir=d, inference_nice=5)


@pytest.fixture(scope="module")
def proc(settings: Settings) -> Iterator[ModelProcess]:
    mp = ModelProcess(settings, preload=("summariser", "actors", "stance"))
    yield mp
    mp.close()


def test_stages_answer_exactly_as_in_process(proc: ModelProcess, settings: Settings) -> None:
    emb = p.load_embedder(settings)
    texts = [a.text for a in ARTS]
    assert proc.embedder.dim == emb.dim and proc.embedder.model_id == emb.model_id
    np.testing.assert_array_equal(proc.embedder.embed(texts), emb.embed(texts))
    assert proc.summariser.summarise(ARTS, 40) == p.load_summariser(settings, emb).summarise(
        ARTS, 40)
    actors = p.load_actor_extractor(settings)
    local_actors = actors.extract(ARTS)
    remote_actors = proc.actors.extract(ARTS)
    assert remote_actors == local_actors
    assert proc.stance.tag(remote_actors, ARTS) == p.load_stance_tagger(
        settings, actors).tag(local_actors, ARTS)
    from storyline.models.nlp import entity_keys

    assert proc.entity_keys(texts) == entity_keys(texts)


def _torch_imported() -> bool:
    import sys

    return sys.modules.get("torch") is not None  # None: blocked, never imported


def test_workers_do_not_import_torch(proc: ModelProcess) -> None:
    """spaCy's thinc imports torch whenever it is installed (as here, in the build
    environment); the workers serve only and must not."""
    proc.actors.extract(ARTS)
    assert proc._submit(_torch_imported) is False


def test_errors_cross_the_process_boundary_intact(proc: ModelProcess) -> None:
    with pytest.raises(InvalidInput) as err:
        proc.summariser.summarise([], 40)
    assert err.value.status_code == 422 and err.value.detail


def test_worker_is_separate_and_runs_at_lower_priority(proc: ModelProcess,
                                                       settings: Settings) -> None:
    assert proc.pid != os.getpid()
    if hasattr(os, "getpriority"):
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) >= (
            os.getpriority(os.PRIO_PROCESS, 0) + min(settings.inference_nice, 19 - os.nice(0)))


def test_a_worker_killed_while_idle_is_replaced_by_the_next_call(settings: Settings) -> None:
    mp = ModelProcess(settings)
    try:
        os.kill(mp.pid, signal.SIGKILL)
        time.sleep(0.2)
        assert mp.embedder.embed(["hello"]).shape == (1, mp.dim)  # a fresh worker, no error
        assert mp.call_info()["pid"] != mp.pid
    finally:
        mp.close()


def test_the_app_serves_through_the_model_process(settings: Settings) -> None:
    from litestar.testing import TestClient

    from storyline.service.api.app import create_app
    from storyline.service.api.runtime import key_digest

    s = settings.model_copy(update={"model_process": True, "warm_stories": False,
                                    "api_keys_sha256": [key_digest("k")]})
    app = create_app(s)
    with TestClient(app) as c:
        deadline = time.monotonic() + 120
        while c.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.1)
        rt = app.state.runtime
        assert isinstance(rt.pipeline.embedder.model_id, str)
        r = c.post("/v1/summarise", json={"articles": [
            {"id": a.id, "title": a.title, "text": a.text} for a in ARTS]})
        assert r.status_code == 200, r.text
        stories = r.json()["stories"]
        assert stories and all(s["summary"] for s in stories)
        bad = c.post("/v1/summarise", json={"articles": [{"id": "x", "text": " "}]})
        assert bad.status_code == 422
        # Writes run on the background pool (and its model process), reads do not.
        reads = rt.inference.calls
        assert rt.background is not rt.inference and rt.background.calls == 0
        r = c.post("/v1/articles", headers={"Authorization": "Bearer k"}, json={"articles": [
            {"id": a.id, "title": a.title, "text": a.text} for a in ARTS]})
        assert r.status_code == 200, r.text
        assert rt.background.calls == 1 and rt.inference.calls == reads
        r = c.post("/v1/summarise", json={"article_ids": [a.id for a in ARTS]})
        assert r.status_code == 200 and r.json()["stories"]


def test_a_worker_that_cannot_load_the_embedder_is_stopped(tmp_path: Path) -> None:
    import multiprocessing

    before = set(multiprocessing.active_children())
    with pytest.raises(ModelUnavailable):
        ModelProcess(Settings(data_dir=tmp_path / "empty"))  # no models there
    assert set(multiprocessing.active_children()) <= before


def test_each_lane_has_its_own_worker_at_its_own_priority(proc: ModelProcess,
                                                          settings: Settings) -> None:
    import threading

    from storyline.service.model_process import BACKGROUND_LANE, READ_LANE, use_lane

    assert set(proc.pids) == {READ_LANE, BACKGROUND_LANE}
    assert proc.pids[READ_LANE] != proc.pids[BACKGROUND_LANE]
    seen: dict[str, int] = {}

    def on(lane: str) -> None:
        use_lane(lane)
        seen[lane] = proc._submit(os.getpid)  # runs in the worker the thread's lane names

    for lane in (READ_LANE, BACKGROUND_LANE, "unknown"):
        t = threading.Thread(target=on, args=(lane,))
        t.start()
        t.join()
    assert seen == {READ_LANE: proc.pids[READ_LANE],
                    BACKGROUND_LANE: proc.pids[BACKGROUND_LANE],
                    "unknown": proc.pids[READ_LANE]}
    if hasattr(os, "getpriority"):
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())
        assert os.getpriority(os.PRIO_PROCESS, proc.pids[READ_LANE]) == min(
            19, base + settings.inference_nice)
        assert os.getpriority(os.PRIO_PROCESS, proc.pids[BACKGROUND_LANE]) == min(
            19, base + max(settings.inference_nice, settings.background_nice))


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="Linux priorities")
def test_priority_is_relative_to_the_service_not_the_starting_thread(
        settings: Settings) -> None:
    """The service starts the workers from a pool thread that may run at a lower
    priority; a worker inherited that thread's nice and added its own, so both lanes sat
    at 19 and the read lane competed as an equal with ingest."""
    import threading

    from storyline.service.api.runtime import lower_priority

    box: dict[str, ModelProcess] = {}

    def start() -> None:
        lower_priority(5)
        box["mp"] = ModelProcess(settings.model_copy(update={"background_process": False}))

    t = threading.Thread(target=start)
    t.start()
    t.join()
    mp = box["mp"]
    try:
        assert list(mp.pids) == ["read"]
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())
        assert os.getpriority(os.PRIO_PROCESS, mp.pid) == min(19, base + settings.inference_nice)
    finally:
        mp.close()
