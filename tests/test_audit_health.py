"""Audit (health probes): readiness and liveness follow what the instance can serve.

A model worker restarted after a rebuild refuses every model call, and a lane whose
workers die on start fails every call; a replica whose change feed cannot be read serves
an index that stops following the store. Each answered /health/ready 200 before (it only
checked that the pipeline had loaded), and the replica's lag gauge kept its last value,
so neither a load balancer nor a dashboard saw anything wrong.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from live_server import serving_data_dir
from prometheus_client import REGISTRY

from storyline.models.errors import ModelUnavailable, StoreError
from storyline.service import model_process
from storyline.service.api.app import create_app
from storyline.service.model_process import ModelProcess
from storyline.service.pipeline import Pipeline
from storyline.service.settings import Settings


def _rebuild(data: Path) -> None:
    """What `storyline models build` leaves behind: another model's files recorded."""
    manifest = data / "models" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["rebuilt"] = {"name": "rebuilt", "files": {}, "meta": {}}
    manifest.write_text(json.dumps(raw))


def _problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = dict(r.json())
    assert body["status"] == status and body["detail"]
    assert "/tmp/" not in r.text and "/work/" not in r.text  # public probes name no paths
    return body


def _killing_new_workers(call: Callable[[], Any]) -> BaseException:
    """Run ``call`` while any model worker it starts is killed at once: a worker that
    dies while it loads, as one the kernel's OOM killer takes on every start would."""
    known = {p.pid for p in multiprocessing.active_children()}
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    while t.is_alive():
        assert time.monotonic() < deadline, "the call never finished"
        for p in multiprocessing.active_children():
            if p.pid is not None and p.pid not in known:
                os.kill(p.pid, signal.SIGKILL)
                known.add(p.pid)
        time.sleep(0.01)
    t.join()
    assert "error" in box, "the call succeeded though its worker was killed"
    return box["error"]


def _wait_ready(c: TestClient[Litestar], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while c.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.1)


# -- the model process -----------------------------------------------------------------------
def test_a_worker_refusing_rebuilt_models_makes_the_process_unservable(
        tmp_path: Path, models_dir: Path) -> None:
    data = serving_data_dir(tmp_path, models_dir)
    mp = ModelProcess(Settings(data_dir=data, background_process=False, feature_cache=False))
    try:
        # one worker that died after serving is a crash: the next call replaces it
        os.kill(mp.pid, signal.SIGKILL)
        time.sleep(0.2)
        mp.embedder.embed(["hello"])
        assert mp.unservable() is None
        # one killed in a call fails that call; the next call would start a fresh worker
        killer = threading.Timer(0.5, os.kill, (mp.call_info()["pid"], signal.SIGKILL))
        killer.start()
        with pytest.raises(ModelUnavailable, match="model process stopped"):
            mp._submit(time.sleep, 5)
        killer.join()
        assert mp.unservable() is None
        # rebuilt after the death was noticed: only the replacement worker can tell
        _rebuild(data)
        with pytest.raises(ModelUnavailable, match="changed since the service started"):
            mp.embedder.embed(["hello"])
        cond = mp.unservable()
        assert cond is not None and cond.restart and cond.retry_after is None
        assert "restart the service" in cond.detail and str(data) not in cond.detail
    finally:
        mp.close()


# -- the HTTP probes --------------------------------------------------------------------------
@pytest.fixture()
def served(tmp_path: Path, models_dir: Path) -> Iterator[tuple[TestClient[Litestar], Path]]:
    data = serving_data_dir(tmp_path, models_dir)
    s = Settings(data_dir=data, background_process=False, feature_cache=False,
                 warm_stories=False)
    with TestClient(create_app(s)) as c:
        _wait_ready(c)
        yield c, data


def test_readiness_and_liveness_follow_what_the_model_process_can_serve(
        served: tuple[TestClient[Litestar], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    c, data = served
    proc = c.app.state.runtime.model_process
    assert isinstance(proc, ModelProcess)
    assert c.get("/health/live").status_code == 200

    def search() -> Any:
        r = c.post("/v1/search", json={"text": "court ruling"})
        if r.status_code != 200:
            raise ModelUnavailable(r.text)
        return r

    # A worker killed while idle: the next call replaces it and answers.
    os.kill(proc.pid, signal.SIGKILL)
    time.sleep(0.2)
    assert c.post("/v1/search", json={"text": "court ruling"}).status_code == 200
    assert c.get("/health/ready").status_code == 200  # one crash is not a crash loop
    # A lane whose workers keep dying on start: not ready, but waiting can help.
    os.kill(proc.call_info()["pid"], signal.SIGKILL)  # so each call below starts a worker
    time.sleep(0.2)
    for _ in range(model_process.CRASH_LOOP_STARTS):
        _killing_new_workers(search)
    r = c.get("/health/ready")
    assert "keeps failing" in _problem(r, 503)["detail"]
    assert 1 <= int(r.headers["Retry-After"]) <= model_process.CRASH_LOOP_COOLDOWN_S
    assert c.get("/health/live").status_code == 200  # the process itself retries
    # After the cool-down, traffic may try again; a worker that answers ends it.
    monkeypatch.setattr(model_process, "CRASH_LOOP_COOLDOWN_S", 0.0)
    assert c.get("/health/ready").status_code == 200
    monkeypatch.undo()
    assert search().status_code == 200
    assert proc.unservable() is None

    # The models rebuilt while serving, then the worker dies: no model call can work
    # again until a restart, so readiness says so for good and liveness asks for it.
    _rebuild(data)
    os.kill(proc.call_info()["pid"], signal.SIGKILL)
    time.sleep(0.2)
    _problem(c.post("/v1/search", json={"text": "court ruling"}), 503)
    r = c.get("/health/ready")
    body = _problem(r, 503)
    assert "changed since the service started" in body["detail"]
    assert "restart" in body["detail"]
    assert "Retry-After" not in r.headers and "retry_after" not in body
    live = c.get("/health/live")
    assert "restart" in _problem(live, 503)["detail"]
    assert "Retry-After" not in live.headers
    # a model call now meets the refusal itself: no Retry-After to invite a retry loop
    again = c.post("/v1/search", json={"text": "court ruling"})
    assert "retry_after" not in _problem(again, 503) and "Retry-After" not in again.headers
    # lookups that need no model still answer
    assert c.get("/v1/stories").status_code == 200


# -- the replica's change follower ------------------------------------------------------------
def _sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    return 0.0 if value is None else value


def test_a_failing_change_feed_is_visible_and_ends_readiness(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    s = pipeline.settings.model_copy(update={"replica_sync_s": 0.05, "warm_stories": False})
    with TestClient(create_app(s, pipeline=pipeline)) as c:
        rt = c.app.state.runtime
        deadline = time.monotonic() + 30
        while rt.follower.failing_since is not None or \
                _sample("storyline_replica_last_sync_timestamp_seconds") < time.time() - 5:
            assert time.monotonic() < deadline, "the follower never synced"
            time.sleep(0.05)
        assert c.get("/health/ready").status_code == 200

        def unreachable() -> int:
            raise StoreError("could not connect to the database")

        failures = _sample("storyline_replica_sync_failures_total")
        monkeypatch.setattr(pipeline, "follow_changes", unreachable)
        time.sleep(0.3)  # several polls fail
        synced = _sample("storyline_replica_last_sync_timestamp_seconds")
        text = c.get("/metrics").text
        assert "storyline_replica_sync_failures_total" in text
        assert "storyline_replica_last_sync_timestamp_seconds" in text
        assert _sample("storyline_replica_sync_failures_total") >= failures + 2
        assert synced < time.time() - 0.2  # the last sync that worked, not the last poll
        # within the bound a blip in the store keeps the replica in the load balancer
        assert rt.follower.stale_after_s >= 60
        assert c.get("/health/ready").status_code == 200
        rt.follower.stale_after_s = 0.2
        r = c.get("/health/ready")
        assert "not followed the store" in _problem(r, 503)["detail"]
        assert int(r.headers["Retry-After"]) >= 1
        assert c.get("/health/live").status_code == 200  # a restart reaches no store either

        monkeypatch.undo()  # the store is back
        deadline = time.monotonic() + 30
        while c.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never ready again"
            time.sleep(0.05)
        assert _sample("storyline_replica_last_sync_timestamp_seconds") > synced
