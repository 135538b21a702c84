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
    return Settings(data_dir=d)


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


def test_a_dead_worker_fails_its_call_and_is_replaced(settings: Settings) -> None:
    mp = ModelProcess(settings)
    try:
        os.kill(mp.pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(ModelUnavailable, match="model process stopped"):
            mp.embedder.embed(["hello"])
        assert mp.embedder.embed(["hello"]).shape == (1, mp.dim)  # a fresh worker
        assert mp.call_info()["pid"] != mp.pid
    finally:
        mp.close()


def test_the_app_serves_through_the_model_process(settings: Settings) -> None:
    from litestar.testing import TestClient

    from storyline.service.api.app import create_app

    s = settings.model_copy(update={"model_process": True, "warm_stories": False})
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


def test_a_worker_that_cannot_load_the_embedder_is_stopped(tmp_path: Path) -> None:
    import multiprocessing

    before = set(multiprocessing.active_children())
    with pytest.raises(ModelUnavailable):
        ModelProcess(Settings(data_dir=tmp_path / "empty"))  # no models there
    assert set(multiprocessing.active_children()) <= before
