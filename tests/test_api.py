"""The HTTP API through litestar's TestClient, on the real pipeline (real int8 embedder).

Stand-ins appear only where a test is about the caller: a slow pipeline method for the
queue-saturation test, a failing one for the 500 test, a pipeline without the summary
stages for the 501 test, and summary stages returning real domain objects for the
summarise HTTP contract (the real stages are exercised when their models are built).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from storyline.index.types import Story
from storyline.models.errors import ModelUnavailable
from storyline.models.types import (
    Actor,
    ActorMention,
    ActorStance,
    Article,
    Evidence,
    Portrayal,
    Position,
    Stance,
    Statement,
    Summary,
    SummarySentence,
    TowardStance,
)
from storyline.service.api.app import create_app
from storyline.service.pipeline import Pipeline, StoryView
from storyline.service.settings import Settings

KEY = "s3cret-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
T = datetime(2021, 10, 18, 12, tzinfo=UTC)

ARTS: list[dict[str, Any]] = [
    {"id": "court-1", "title": "Court sides with police", "source": "Outlet A",
     "published_at": "2021-10-18T12:00:00Z", "story_id": 5607,
     "text": "The Supreme Court ruled on Monday that police officers were entitled to qualified "
             "immunity in two excessive force cases."},
    {"id": "court-2", "title": "Justices back officers", "source": "Outlet B",
     "published_at": "2021-10-18T15:00:00Z",
     "text": "Justices overturned two lower court rulings, granting officers qualified immunity "
             "from lawsuits over the use of force."},
    {"id": "storm-1", "title": "Hurricane hits Louisiana", "source": "Outlet A",
     "published_at": "2021-08-29T12:00:00Z",
     "text": "A powerful hurricane made landfall in Louisiana, cutting power to hundreds of "
             "thousands of homes."},
    {"id": "storm-2", "title": "Ida leaves New Orleans dark", "source": "Outlet C",
     "published_at": "2021-08-30T09:00:00Z",
     "text": "Hurricane Ida knocked out electricity across New Orleans as the storm moved inland "
             "on Sunday."},
]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def make_app(pipeline: Any, **overrides: Any) -> Litestar:
    base = pipeline.settings if isinstance(pipeline, Pipeline) else pipeline._p.settings
    # The idle-time warmer is off unless a test is about it: its background story_view
    # calls would race the call records some tests keep.
    s = base.model_copy(update={"api_keys_sha256": [digest(KEY)], "warm_stories": False,
                                **overrides})
    return create_app(s, pipeline=pipeline)


@pytest.fixture()
def client(pipeline: Pipeline) -> Iterator[TestClient[Litestar]]:
    with TestClient(make_app(pipeline)) as c:
        yield c


@pytest.fixture()
def loaded(client: TestClient[Litestar]) -> TestClient[Litestar]:
    r = client.post("/v1/articles", json={"articles": ARTS}, headers=AUTH)
    assert r.status_code == 200, r.text
    return client


def assert_problem(r: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """RFC 9457 shape, nothing internal leaked, and (for validation) the field named."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(body)
    assert body["status"] == status
    assert body["type"].startswith("urn:storyline:problem:")
    assert body["instance"] == r.request.url.path
    for leak in ("Traceback", "/work/", "/tmp/", ".py", "site-packages"):
        assert leak not in r.text
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return dict(body)


# -- health, readiness, metrics ------------------------------------------------------------
def test_health_metrics_and_ready_counts(loaded: TestClient[Litestar]) -> None:
    assert loaded.get("/health/live").json() == {"status": "ok"}
    ready = loaded.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["articles"] == ready.json()["indexed"] == 4
    m = loaded.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    text = m.text
    assert "storyline_index_size 4.0" in text
    assert "storyline_articles 4.0" in text
    assert 'storyline_stage_seconds_count{stage="embed"}' in text
    assert "storyline_stories " in text
    assert "storyline_model_info{" in text and "all-MiniLM" in text
    assert 'storyline_http_requests_total{app_name="storyline",method="POST",path="/v1/articles"' \
        in text


def test_metrics_content_type_names_its_charset_once(client: TestClient[Litestar]) -> None:
    m = client.get("/metrics")
    assert m.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"


def test_every_answer_says_how_long_the_service_took(loaded: TestClient[Litestar]) -> None:
    # Server-Timing lets a client tell the service's time from its own queueing.
    for r in (loaded.get("/health/live"), loaded.get("/v1/articles/court-1/related"),
              loaded.get("/v1/articles/nope")):
        name, _, dur = r.headers["server-timing"].partition(";dur=")
        assert name == "app" and 0.0 <= float(dur) < 60_000, r.headers["server-timing"]
    assert loaded.get("/v1/articles/nope").status_code == 404


def test_searches_run_single_threaded_in_the_pools(client: TestClient[Litestar]) -> None:
    import faiss

    rt = client.app.state.runtime
    for pool in (rt.io, rt.inference):  # OpenMP spinning cost 20 ms per search (runtime.py)
        assert pool.executor.submit(faiss.omp_get_max_threads).result(10) == 1


@pytest.mark.parametrize("inline", [True, False])
def test_lookups_run_on_the_event_loop_over_sqlite(pipeline: Pipeline, inline: bool) -> None:
    # related and the cached-summary probe skip the I/O pool's two thread hops (settings
    # inline_lookups); the answers are the same either way
    with TestClient(make_app(pipeline, inline_lookups=inline)) as c:
        assert c.post("/v1/articles", json={"articles": ARTS}, headers=AUTH).status_code == 200
        sid = c.get("/v1/articles/court-1").json()["story_id"]
        first = c.post("/v1/summarise", json={"story_id": sid})  # computes and stores it
        ids = [a["id"] for a in first.json()["stories"][0]["articles"]]
        io = c.app.state.runtime.io
        before = io.calls
        related = c.get("/v1/articles/court-1/related?k=2")
        assert related.status_code == 200
        assert related.json()["related"][0]["id"] == "court-2"
        again = c.post("/v1/summarise", json={"article_ids": ids}).json()["stories"]
        assert [(v["id"], v["cached"]) for v in again] == [(sid, True)]
        assert again[0]["summary"] == first.json()["stories"][0]["summary"]
        assert c.get("/v1/articles/nope/related").status_code == 404
        assert (io.calls == before) is inline


def test_ready_stays_503_when_models_cannot_load(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "empty"))  # no models/ there
    with TestClient(app) as c:
        assert c.get("/health/live").status_code == 200
        rt = app.state.runtime
        deadline = time.monotonic() + 60
        while rt.loading and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.get("/health/ready")
        body = assert_problem(r, 503)
        assert "could not load" in body["detail"]
        assert int(r.headers["Retry-After"]) >= 1
        assert_problem(c.get("/v1/articles/x"), 503)


def test_app_opens_the_pipeline_itself_and_is_ready_only_when_loaded(data_dir: Path) -> None:
    import gc

    from storyline.service.heap import YOUNG_THRESHOLD

    s = Settings(data_dir=data_dir, api_keys_sha256=[digest(KEY)])
    app = create_app(s)
    thresholds = gc.get_threshold()
    gc.set_threshold(700, *thresholds[1:])
    gc.unfreeze()
    try:
        with TestClient(app) as c:
            first = c.get("/health/ready")
            assert_problem(first, 503)  # loading the models takes far longer than a request
            assert "starting" in first.json()["detail"]
            deadline = time.monotonic() + 120
            while c.get("/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "never became ready"
                time.sleep(0.1)
            # the loaded heap is out of the collector's full passes (service/heap.py)
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[0] == YOUNG_THRESHOLD
            r = c.post("/v1/articles", json={"articles": ARTS[:2]}, headers=AUTH)
            assert r.status_code == 200 and r.json()["inserted"] == 2
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    # shut-down saved the index: a fresh pipeline finds both vectors without a rebuild
    from storyline.index.vectors import VectorIndex

    assert VectorIndex.load(s.index_path).ids == {"court-1", "court-2"}


def test_the_service_writes_the_index_file_while_it_runs(pipeline: Pipeline) -> None:
    from storyline.index.vectors import VectorIndex

    path = pipeline.settings.index_path
    with TestClient(make_app(pipeline, index_save_interval_s=0.2)) as c:
        r = c.post("/v1/articles", json={"articles": ARTS[:2]}, headers=AUTH)
        assert r.status_code == 200
        deadline = time.monotonic() + 30
        while not (path.exists() and VectorIndex.load(path).ids == {"court-1", "court-2"}):
            assert time.monotonic() < deadline, "the index file was never written"
            time.sleep(0.1)


# -- articles --------------------------------------------------------------------------------
def test_ingest_is_idempotent_and_reports_each_outcome(client: TestClient[Litestar]) -> None:
    r = client.post("/v1/articles", json={"articles": ARTS}, headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["inserted"] == 4 and [x["outcome"] for x in body["results"]] == ["inserted"] * 4
    again = client.post("/v1/articles", json={"articles": ARTS}, headers=AUTH).json()
    assert again["unchanged"] == 4
    dup = {**ARTS[0], "id": "court-1-wire", "source": "Wire"}
    changed = {**ARTS[1], "text": ARTS[1]["text"] + " The ruling was unanimous."}
    r = client.post("/v1/articles", json={"articles": [dup, changed]}, headers=AUTH).json()
    assert [(x["id"], x["outcome"], x["duplicate_of"]) for x in r["results"]] == [
        ("court-1-wire", "duplicate", "court-1"), ("court-2", "updated", None)]
    assert client.get("/health/ready").json()["indexed"] == 4


def test_get_related_and_delete(loaded: TestClient[Litestar]) -> None:
    a = loaded.get("/v1/articles/court-1").json()
    assert a["title"] == "Court sides with police" and a["gold_story_id"] == "5607"
    assert a["published_at"] == "2021-10-18T12:00:00Z" and a["duplicate_of"] is None
    rel = loaded.get("/v1/articles/court-1/related", params={"k": 3}).json()
    ids = [h["id"] for h in rel["related"]]
    assert rel["id"] == "court-1" and ids[0] == "court-2" and "court-1" not in ids
    assert len(ids) == 3
    only_c = loaded.get("/v1/articles/court-1/related", params={"source": "outlet c"}).json()
    assert [h["id"] for h in only_c["related"]] == ["storm-2"]
    window = {"since": "2021-10-01", "until": "2021-11-01T00:00:00+00:00"}
    got = loaded.get("/v1/articles/court-1/related", params=window).json()
    assert [h["id"] for h in got["related"]] == ["court-2"]
    same = a["story_id"] is not None and a["story_id"] == got["related"][0]["story_id"]
    got = loaded.get("/v1/articles/court-1/related",
                     params={**window, "exclude_same_story": "true"}).json()
    assert [h["id"] for h in got["related"]] == ([] if same else ["court-2"])
    # a duplicate id answers with the article it repeats
    loaded.post("/v1/articles", json={"articles": [{**ARTS[2], "id": "storm-1-copy"}]},
                headers=AUTH)
    assert loaded.get("/v1/articles/storm-1-copy").json()["duplicate_of"] == "storm-1"
    # deleting a duplicate id removes just its record (it answered 404 while GET found it)
    assert loaded.delete("/v1/articles/storm-1-copy", headers=AUTH).status_code == 204
    assert_problem(loaded.get("/v1/articles/storm-1-copy"), 404)
    assert loaded.get("/v1/articles/storm-1").json()["duplicate_of"] is None
    assert_problem(loaded.delete("/v1/articles/storm-1-copy", headers=AUTH), 404)

    assert_problem(loaded.delete("/v1/articles/court-2"), 401)
    r = loaded.delete("/v1/articles/court-2", headers=AUTH)
    assert r.status_code == 204 and r.content == b""
    assert_problem(loaded.get("/v1/articles/court-2"), 404)
    assert_problem(loaded.delete("/v1/articles/court-2", headers=AUTH), 404)
    rel = loaded.get("/v1/articles/court-1/related").json()
    assert "court-2" not in [h["id"] for h in rel["related"]]
    assert loaded.get("/health/ready").json()["indexed"] == 3


def _queued(rt: Any, calls: int) -> None:
    """Wait until ``calls`` calls are running or waiting in the runtime's pools."""
    deadline = time.monotonic() + 30
    pools = {id(p): p for p in (rt.io, rt.background, rt.inference)}.values()
    while sum(p.pending for p in pools) < calls:
        assert time.monotonic() < deadline, "the requests never reached a pool"
        time.sleep(0.01)


def test_reads_answer_at_once_while_a_long_ingest_and_deletes_run(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: DELETE ran on the 2-thread I/O pool and waited there for the write lock
    an ingest held while embedding, so a GET of a stored article waited for the ingest
    (5 s for a 6 s embedding). Writes now run where ingest does, and embedding is done
    outside the write lock."""
    app = make_app(pipeline)
    rt = app.state.runtime
    started, release = threading.Event(), threading.Event()
    real = pipeline._embed_articles

    def slow_embed(arts: Any, precomputed: Any = None) -> Any:
        started.set()
        release.wait(10)  # stands in for a large batch's embedding
        return real(arts, precomputed)

    new = [{"id": f"n-{i}", "text": f"New article number {i} about a city council vote."}
           for i in range(3)]
    with TestClient(app) as c, ThreadPoolExecutor(3) as ex:
        assert c.post("/v1/articles", json={"articles": ARTS}, headers=AUTH).status_code == 200
        monkeypatch.setattr(pipeline, "_embed_articles", slow_embed)
        try:
            ingest = ex.submit(c.post, "/v1/articles", json={"articles": new}, headers=AUTH)
            assert started.wait(30)
            deletes = [ex.submit(c.delete, f"/v1/articles/{i}", headers=AUTH)
                       for i in ("court-2", "storm-1")]
            _queued(rt, 3)
            t0 = time.perf_counter()
            r = c.get("/v1/articles/court-1")
            assert r.status_code == 200 and r.json()["id"] == "court-1"
            assert c.get("/v1/articles/storm-2/related").status_code == 200
            assert time.perf_counter() - t0 < 1.0, "reads waited for the writes"
        finally:
            release.set()
        assert ingest.result(30).status_code == 200
        assert [d.result(30).status_code for d in deletes] == [204, 204]
        assert_problem(c.get("/v1/articles/court-2"), 404)
        assert c.get("/health/ready").json()["indexed"] == 5


def test_writes_waiting_for_the_write_lock_leave_the_io_pool_to_reads(
    pipeline: Pipeline,
) -> None:
    """DELETE and the index saver's flush wait for the pipeline's write lock: they run on
    the background pool, so however long a write holds the lock, lookups answer."""
    pipeline.ingest([_article(a) for a in ARTS])
    app = make_app(pipeline, index_save_interval_s=0.05)  # the saver ticks meanwhile
    rt = app.state.runtime
    with TestClient(app) as c, ThreadPoolExecutor(3) as ex:
        pipeline._write_lock.acquire()  # a long write
        try:
            deletes = [ex.submit(c.delete, f"/v1/articles/{i}", headers=AUTH)
                       for i in ("court-2", "storm-1")]
            _queued(rt, 2)
            time.sleep(0.2)  # the index saver's ticks
            get = ex.submit(c.get, "/v1/articles/court-1")
            assert get.result(timeout=5).status_code == 200, "a lookup waited for a write"
            assert not any(d.done() for d in deletes)  # they answer after their commit
        finally:
            pipeline._write_lock.release()
        assert [d.result(30).status_code for d in deletes] == [204, 204]
    assert pipeline.store.canonical_id("court-2") is None


def test_search(loaded: TestClient[Litestar]) -> None:
    r = loaded.post("/v1/search", json={"text": "hurricane power outage", "k": 2})
    assert r.status_code == 200
    assert [h["id"][:5] for h in r.json()["results"]] == ["storm", "storm"]
    r = loaded.post("/v1/search", json={"text": "police immunity", "source": "Outlet B"})
    assert [h["id"] for h in r.json()["results"]] == ["court-2"]
    r = loaded.post("/v1/search", json={"text": "police", "since": "2021-09-01T00:00:00Z"})
    assert {h["id"] for h in r.json()["results"]} == {"court-1", "court-2"}
    assert_problem(loaded.post("/v1/search", json={"text": "  "}), 422, "text")
    assert_problem(loaded.post("/v1/search", json={"text": "x", "since": "last week"}), 422,
                   "since")


# -- auth, rate limit, CORS ----------------------------------------------------------------------
def test_write_endpoints_need_a_valid_key(client: TestClient[Litestar]) -> None:
    body = {"articles": ARTS[:1]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": "Bearer "}):
        r = client.post("/v1/articles", json=body, headers=headers)
        assert_problem(r, 401)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/health/ready").json()["articles"] == 0  # nothing was written
    assert client.post("/v1/articles", json=body, headers=AUTH).status_code == 200
    # storing inline articles through summarise is a write too
    assert_problem(client.post("/v1/summarise", json={"articles": ARTS[:1], "store": True}), 401)
    # reads are public by default
    assert client.get("/v1/articles/court-1").status_code == 200


def test_no_configured_key_refuses_every_write(pipeline: Pipeline) -> None:
    with TestClient(make_app(pipeline, api_keys_sha256=[])) as c:
        r = c.post("/v1/articles", json={"articles": ARTS[:1]}, headers=AUTH)
        assert "none is configured" in assert_problem(r, 401)["detail"]


def test_reads_can_require_a_key(pipeline: Pipeline) -> None:
    with TestClient(make_app(pipeline, read_requires_key=True)) as c:
        assert_problem(c.get("/v1/stories"), 401)
        assert_problem(c.post("/v1/search", json={"text": "x"}), 401)
        assert_problem(c.get("/metrics"), 401)
        assert c.get("/v1/stories", headers=AUTH).status_code == 200
        assert c.get("/health/ready").status_code == 200  # probes stay public
        assert c.get("/schema/openapi.json").status_code == 200
        # a wrong key is told so (not asked for one); OPTIONS reads nothing and needs none
        bad = assert_problem(c.get("/v1/stories", headers={"Authorization": "Bearer x"}), 401)
        assert "not valid" in bad["detail"]
        r = c.options("/v1/stories")
        assert r.status_code == 204 and "GET" in r.headers["Allow"]


def test_rate_limit_per_client_and_per_key(pipeline: Pipeline) -> None:
    with TestClient(make_app(pipeline, rate_limit_per_minute=3)) as c:
        for left in (2, 1, 0):
            r = c.get("/v1/stories")
            assert r.status_code == 200
            assert r.headers["RateLimit-Limit"] == "3"
            assert r.headers["RateLimit-Policy"] == "3; w=60"
            assert r.headers["RateLimit-Remaining"] == str(left)
            assert 1 <= int(r.headers["RateLimit-Reset"]) <= 60
        r = c.get("/v1/stories")
        assert_problem(r, 429)
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.headers["RateLimit-Remaining"] == "0"
        # a valid key is its own bucket; probes are never limited
        assert c.get("/v1/stories", headers=AUTH).status_code == 200
        for _ in range(5):
            assert c.get("/health/live").status_code == 200
        # ...but a path that merely contains a probe's name is (ids are client-chosen)
        assert_problem(c.get("/v1/articles/health-1"), 429)
        assert_problem(c.get("/v1/stories/schema"), 429)


def test_rate_limit_window_starts_again_after_its_reset(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storyline.service.api import ratelimit

    real = ratelimit.time
    with TestClient(make_app(pipeline, rate_limit_per_minute=2)) as c:
        for _ in range(2):
            assert c.get("/v1/stories").status_code == 200
        assert_problem(c.get("/v1/stories"), 429)
        monkeypatch.setattr(ratelimit, "time", lambda: real() + 61)
        r = c.get("/v1/stories")
        assert r.status_code == 200
        assert r.headers["RateLimit-Remaining"] == "1"


def test_cors_is_off_by_default_and_follows_settings(pipeline: Pipeline) -> None:
    pre = {"Origin": "https://news.example", "Access-Control-Request-Method": "POST"}
    with TestClient(make_app(pipeline)) as c:
        r = c.get("/v1/stories", headers={"Origin": "https://news.example"})
        assert "access-control-allow-origin" not in r.headers
    with TestClient(make_app(pipeline, cors_origins=["https://news.example"])) as c:
        r = c.options("/v1/summarise", headers=pre)
        assert r.status_code in (200, 204)
        assert r.headers["access-control-allow-origin"] == "https://news.example"
        r = c.options("/v1/summarise", headers={**pre, "Origin": "https://evil.example"})
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"


# -- errors and limits ------------------------------------------------------------------------
def test_malformed_and_invalid_bodies(client: TestClient[Litestar]) -> None:
    url = "/v1/articles"
    raw = {**AUTH, "Content-Type": "application/json"}
    assert_problem(client.post(url, content=b'{"articles": [', headers=raw), 400)
    assert_problem(client.post(url, content=b'{"articles": [{"id": "a", "text": "\xff\xfe"}]}',
                               headers=raw), 400)
    assert_problem(client.post(url, content=b"", headers=raw), 400)
    assert_problem(client.post(url, content=b"id,text", headers={
        **AUTH, "Content-Type": "text/csv"}), 415)
    cases: list[tuple[Any, str]] = [
        ({"articles": [{"id": "a", "text": 5}]}, "articles[0].text"),
        ({"articles": [{"id": "a"}]}, "articles[0].text"),
        ({"articles": [{"id": "a", "text": "ok", "publised_at": "2021"}]},
         "articles[0].publised_at"),
        ({"articles": ARTS[:1], "extra": 1}, "extra"),
        ({"articles": "court-1"}, "articles"),
        ({"articles": []}, "articles"),
        ([ARTS[0]], "(body)"),
        ({"articles": [{"id": "a", "text": "   "}]}, "articles[0].text"),
        ({"articles": [{"id": "", "text": "x"}]}, "articles[0].id"),
        ({"articles": [ARTS[0], {"id": "b", "text": "x", "published_at": "soon"}]},
         "articles[1].published_at"),
    ]
    for body, field in cases:
        assert_problem(client.post(url, json=body, headers=AUTH), 422, field)
    # strict types: a numeric string is not a number
    assert_problem(client.post("/v1/search", json={"text": "x", "k": "3"}), 422, "k")
    assert_problem(client.get("/v1/stories", params={"page": "two"}), 422, "page")
    assert_problem(client.get("/v1/stories", params={"pagesize": 5}), 422, "pagesize")
    assert client.get("/health/ready").json()["articles"] == 0


def test_out_of_range_dates_are_422_not_500(loaded: TestClient[Litestar]) -> None:
    # valid ISO 8601 whose UTC time is before year 1 or after year 9999
    late, early = "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"
    for when in (late, early):
        body = {"articles": [{"id": "x", "text": "some text", "published_at": when}]}
        err = assert_problem(loaded.post("/v1/articles", json=body, headers=AUTH), 422,
                             "articles[0].published_at")
        assert "out of range" in err["detail"]
        for name in ("since", "until"):
            assert_problem(loaded.get("/v1/articles/court-1/related", params={name: when}),
                           422, name)
            assert_problem(loaded.get("/v1/stories", params={name: when}), 422, name)
            assert_problem(loaded.post("/v1/search", json={"text": "court", name: when}),
                           422, name)


def test_ids_that_are_not_one_url_path_segment_are_refused(client: TestClient[Litestar]) -> None:
    for i, bad in enumerate(["a/b", "court-1/related", ".", ".."]):
        body = {"articles": [ARTS[0], {"id": bad, "text": f"text number {i}"}]}
        err = assert_problem(client.post("/v1/articles", json=body, headers=AUTH), 422,
                             "articles[1].id")
        assert "'/'" in err["detail"]
    # what a percent-encoded path segment carries still round-trips
    odd = ["q?x#y", "back\\slash", "50%", "sp ace", "semi;colon"]
    body = {"articles": [{"id": x, "text": f"odd id number {n}"} for n, x in enumerate(odd)]}
    assert client.post("/v1/articles", json=body, headers=AUTH).status_code == 200
    for x in odd:
        seg = quote(x, safe="")
        assert client.get(f"/v1/articles/{seg}").json()["id"] == x
        assert client.get(f"/v1/articles/{seg}/related").json()["id"] == x
        assert client.delete(f"/v1/articles/{seg}", headers=AUTH).status_code == 204


def test_limits_from_settings(pipeline: Pipeline) -> None:
    app = make_app(pipeline, max_body_bytes=4096, max_articles_per_request=2,
                   max_article_chars=200, max_k=5, max_page_size=3)
    with TestClient(app) as c:
        big = {"articles": [{"id": "big", "text": "word " * 1000}]}
        assert_problem(c.post("/v1/articles", json=big, headers=AUTH), 413)
        three = {"articles": [{"id": f"a{i}", "text": f"text {i}"} for i in range(3)]}
        assert_problem(c.post("/v1/articles", json=three, headers=AUTH), 422, "articles")
        long = {"articles": [{"id": "long", "text": "x" * 201}]}
        assert_problem(c.post("/v1/articles", json=long, headers=AUTH), 422, "articles[0].text")
        ok = c.post("/v1/articles", json={"articles": ARTS[:2]}, headers=AUTH)
        assert ok.status_code == 200
        assert_problem(c.get("/v1/articles/court-1/related", params={"k": 6}), 422, "k")
        assert_problem(c.get("/v1/articles/court-1/related", params={"k": 0}), 422, "k")
        assert c.get("/v1/articles/court-1/related", params={"k": 5}).status_code == 200
        assert_problem(c.post("/v1/search", json={"text": "court", "k": 6}), 422, "k")
        assert_problem(c.post("/v1/search", json={"text": "x" * 201}), 422, "text")
        assert_problem(c.get("/v1/stories", params={"page_size": 4}), 422, "page_size")
        assert c.get("/v1/stories", params={"page_size": 3}).status_code == 200
        assert_problem(c.post("/v1/summarise", json={"articles": three["articles"]}), 422,
                       "articles")
        assert_problem(c.post("/v1/summarise", json={"article_ids": ["a", "b", "c"]}), 422,
                       "article_ids")


def test_unknown_ids_routes_and_methods(client: TestClient[Litestar]) -> None:
    assert_problem(client.get("/v1/articles/nope"), 404)
    assert_problem(client.get("/v1/articles/nope/related"), 404)
    assert_problem(client.delete("/v1/articles/nope", headers=AUTH), 404)
    assert_problem(client.get("/v1/stories/nope"), 404)
    assert_problem(client.get("/v1/nothing-here"), 404)
    r = client.put("/v1/articles/nope")
    assert_problem(r, 405)
    # OPTIONS lists every method of the path (GET and DELETE live in two handlers)
    assert client.options("/v1/articles/nope").headers["allow"] == "DELETE, GET, HEAD, OPTIONS"
    body = assert_problem(client.post("/v1/summarise", json={"article_ids": ["x", "y"]}), 404)
    assert body["missing"] == ["x", "y"]


def test_unexpected_errors_are_500_without_internals(
    loaded: TestClient[Litestar], pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("boom in /work/main/secret.py")

    monkeypatch.setattr(pipeline, "related", broken)
    body = assert_problem(loaded.get("/v1/articles/court-1/related"), 500)
    assert "boom" not in json.dumps(body)


def test_saturated_queue_answers_503_at_once(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()

    def slow_search(text: str, **_: Any) -> list[Any]:
        started.set()
        release.wait(60)
        return []

    monkeypatch.setattr(pipeline, "search", slow_search)
    app = make_app(pipeline, inference_workers=1, inference_queue=1)
    rt = app.state.runtime
    body = {"text": "anything"}
    with TestClient(app) as c, ThreadPoolExecutor(2) as ex:
        try:
            first = ex.submit(c.post, "/v1/search", json=body)
            assert started.wait(30)
            second = ex.submit(c.post, "/v1/search", json=body)  # waits in the queue
            deadline = time.monotonic() + 30
            while rt.inference.pending < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            t0 = time.perf_counter()
            third = c.post("/v1/search", json=body)
            assert time.perf_counter() - t0 < 2.0  # refused at once, not queued
            assert_problem(third, 503)
            assert int(third.headers["Retry-After"]) >= 1
            # reads that need no model keep flowing while inference is saturated
            assert c.get("/v1/stories").status_code == 200
        finally:
            release.set()
        assert first.result(30).status_code == 200
        assert second.result(30).status_code == 200
    assert 'storyline_pool_rejected_total{pool="inference"}' in _metric_text()


def test_pool_runs_waiting_calls_by_priority_then_arrival() -> None:
    from storyline.service.api.runtime import (
        PRIORITY_BACKGROUND,
        PRIORITY_READ,
        PRIORITY_WRITE,
        BoundedPool,
    )

    pool = BoundedPool("order-test", workers=1, queue=8)
    gate, ran = threading.Event(), []

    def blocker() -> None:
        assert gate.wait(30)

    def note(tag: str) -> str:
        ran.append(tag)
        return tag

    async def scenario() -> list[str]:
        first = asyncio.ensure_future(pool.run(blocker))
        while pool.pending < 1:
            await asyncio.sleep(0.005)
        calls = [pool.run(note, "warm", priority=PRIORITY_BACKGROUND),
                 pool.run(note, "ingest-1", priority=PRIORITY_WRITE),
                 pool.run(note, "ingest-2", priority=PRIORITY_WRITE),
                 pool.run(note, "read", priority=PRIORITY_READ)]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0.05)  # all four are waiting behind the blocker
        assert ran == []
        gate.set()
        await first
        return list(await asyncio.gather(*tasks))

    try:
        results = asyncio.run(scenario())
    finally:
        gate.set()
        pool.shutdown()
    assert results == ["warm", "ingest-1", "ingest-2", "read"]  # each caller gets its own
    assert ran == ["read", "ingest-1", "ingest-2", "warm"]
    assert pool.pending == 0


def _metric_text() -> str:
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY).decode()


# -- stories ---------------------------------------------------------------------------------------
def _stories(pipeline: Pipeline) -> None:
    st = pipeline.store
    outlets = {"Outlet A": 1, "Outlet B": 1}
    st.save_story(Story("s-court", "Court sides with police", ["court-1", "court-2"], T, T,
                        outlets))
    st.save_story(Story("s-storm", "Hurricane Ida", ["storm-1", "storm-2"],
                        datetime(2021, 8, 29, tzinfo=UTC), datetime(2021, 8, 30, tzinfo=UTC),
                        {"Outlet A": 1, "Outlet C": 1}))
    st.save_story(Story("s-old", "old court story", [], T, T, {}, status="merged"))
    st.record_history("s-old", "s-court", "merge")
    st.save_story(Story("s-both", "court and storm", [], T, T, {}, status="split"))
    st.record_history("s-both", "s-court", "split")
    st.record_history("s-both", "s-storm", "split")


def test_story_list_paging_filters(loaded: TestClient[Litestar], pipeline: Pipeline) -> None:
    _stories(pipeline)
    r = loaded.get("/v1/stories").json()
    assert [s["id"] for s in r["items"]] == ["s-court", "s-storm"] and not r["has_more"]
    assert r["items"][0]["size"] == 2 and r["items"][0]["outlets"] == {"Outlet A": 1,
                                                                        "Outlet B": 1}
    p1 = loaded.get("/v1/stories", params={"page_size": 1}).json()
    p2 = loaded.get("/v1/stories", params={"page_size": 1, "page": 2}).json()
    assert p1["has_more"] and not p2["has_more"]
    assert [s["id"] for s in p1["items"] + p2["items"]] == ["s-court", "s-storm"]
    q = loaded.get("/v1/stories", params={"q": "HURRICANE"}).json()
    assert [s["id"] for s in q["items"]] == ["s-storm"]
    since = loaded.get("/v1/stories", params={"since": "2021-10-01T00:00:00Z"}).json()
    assert [s["id"] for s in since["items"]] == ["s-court"]
    assert loaded.get("/v1/stories", params={"min_size": 3}).json()["items"] == []
    assert_problem(loaded.get("/v1/stories", params={"page": 0}), 422, "page")


def test_story_list_order_and_undated_stories_are_as_documented(
    loaded: TestClient[Litestar], pipeline: Pipeline
) -> None:
    """Findings 10 and 11: the list is by latest coverage (``last_at``), not by update, as
    its description says; a time bound leaves out stories with no dated article (they were
    taken as published at 1970-01-01)."""
    undated = {"id": "grain-1", "title": "Undated piece on the grain harvest",
               "text": "Farmers brought in the grain harvest across the plains this week."}
    r = loaded.post("/v1/articles", json={"articles": [undated]}, headers=AUTH)
    assert r.status_code == 200, r.text
    _stories(pipeline)
    pipeline.store.save_story(Story("s-undated", "Undated piece on the grain harvest",
                                    ["grain-1"], None, None, {}))
    # written last (the most recently updated), covered earliest: listed after s-court
    st = pipeline.store.get_story("s-storm")
    pipeline.store.save_story(st)
    spec = loaded.get("/schema/openapi.json").json()
    text = spec["paths"]["/v1/stories"]["get"]["description"]
    assert "latest coverage first" in text and "recently updated" not in text
    items = loaded.get("/v1/stories").json()["items"]
    assert [s["id"] for s in items] == ["s-court", "s-storm", "s-undated"]
    for params in ({"since": "1960-01-01T00:00:00Z", "until": "1970-01-01T00:00:01Z"},
                   {"until": "1970-01-01T00:00:01Z"}):
        assert loaded.get("/v1/stories", params=params).json()["items"] == [], params
    got = loaded.get("/v1/stories", params={"until": "2030-01-01T00:00:00Z"}).json()
    assert [s["id"] for s in got["items"]] == ["s-court", "s-storm"]


def test_moved_stories_redirect_or_name_their_successors(
    loaded: TestClient[Litestar], pipeline: Pipeline
) -> None:
    _stories(pipeline)
    r = loaded.get("/v1/stories/s-old", params={"budget_words": 50}, follow_redirects=False)
    assert r.status_code == 308
    assert r.headers["location"] == "/v1/stories/s-court?budget_words=50"
    body = assert_problem(loaded.get("/v1/stories/s-both"), 410)
    assert body["successors"] == ["s-court", "s-storm"] and "split" in body["detail"]
    body = assert_problem(loaded.post("/v1/summarise", json={"story_id": "s-both"}), 410)
    assert body["successors"] == ["s-court", "s-storm"]


# -- idle-time warmer ----------------------------------------------------------------------------
def test_ingested_stories_are_analysed_while_idle(pipeline: Pipeline) -> None:
    with TestClient(make_app(pipeline, warm_stories=True)) as c:
        r = c.post("/v1/articles", json={"articles": ARTS}, headers=AUTH)
        assert r.status_code == 200
        sids = {x["story_id"] for x in r.json()["results"]}
        deadline = time.monotonic() + 60
        while c.get("/health/ready").json()["stories_pending_analysis"] and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.get("/health/ready").json()["stories_pending_analysis"] == 0
        for sid in sids:  # computed in the background: the read is a cache hit
            assert pipeline.story_view(sid).cached
        assert "storyline_stories_pending_analysis 0.0" in c.get("/metrics").text
        # a delete changes a story too: it is analysed again while idle
        gone = r.json()["results"][0]
        assert c.delete(f"/v1/articles/{gone['id']}", headers=AUTH).status_code == 204
        left = pipeline.store.get_story(gone["story_id"])
        deadline = time.monotonic() + 60
        while c.get("/health/ready").json()["stories_pending_analysis"] and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        if left.status == "active":
            assert pipeline.story_view(left.id).cached
    with TestClient(make_app(pipeline)) as c:  # off: nothing is marked
        c.post("/v1/articles", json={"articles": [{"id": "late-1", "text": "A new bridge "
                                                   "opened in the city on Friday."}]},
               headers=AUTH)
        assert c.get("/health/ready").json()["stories_pending_analysis"] == 0


# -- summarise ------------------------------------------------------------------------------------
class WithoutSummaryStages:
    """The real pipeline minus the summary stages, as in a build that lacks them."""

    def __init__(self, pipe: Pipeline) -> None:
        self._p = pipe

    def __getattr__(self, name: str) -> Any:
        if name in ("summarise_articles", "story_view"):
            raise AttributeError(name)
        return getattr(self._p, name)


def test_summary_endpoints_answer_501_without_the_stages(pipeline: Pipeline) -> None:
    pipeline.ingest([_article(a) for a in ARTS])
    _stories(pipeline)
    with TestClient(make_app(WithoutSummaryStages(pipeline))) as c:
        for body in ({"articles": ARTS[:2]}, {"article_ids": ["court-1", "court-2"]},
                     {"story_id": "s-court"}):
            assert_problem(c.post("/v1/summarise", json=body), 501)
        assert_problem(c.get("/v1/stories/s-court"), 501)
        # the checks that come first still apply
        assert_problem(c.get("/v1/stories/missing"), 404)
        assert_problem(c.post("/v1/summarise", json={"story_id": "x", "article_ids": ["y"]}),
                       422, "story_id")


def _article(d: dict[str, Any]) -> Article:
    from storyline.service.ingest import parse_article

    return parse_article(d)


def _view(story_id: str, arts: list[Article]) -> StoryView:
    ids = tuple(a.id for a in arts)
    neutral = Stance("neutral", 0.05, 0.7, (Evidence(ids[0], "the court ruled"),))
    actor = ActorStance(
        Actor("Supreme Court", "ORG", aliases=("the court",),
              mentions=(ActorMention(ids[0], "The Supreme Court ruled.", 4, 17, "Supreme Court"),),
              article_ids=ids, outlets=("Outlet A",), salience=1),
        Portrayal(neutral, by_outlet={"Outlet A": neutral}, by_lean={"center": neutral}),
        Position(toward=(TowardStance("police", Stance("supportive", 0.6, 0.8)),), issue=None),
        statements=(Statement("Justice Roberts", "the law is clear", ids[0],
                              "The law is clear, Roberts said.", "said", True),),
    )
    summary = Summary("Court sides with police",
                      (SummarySentence(arts[0].text, ids[:1]),
                       SummarySentence(arts[-1].text, ids[-1:], "fused")))
    story = Story(story_id, "Court sides with police", list(ids), T, T, {"Outlet A": 1})
    return StoryView(story, arts, summary, [actor], {"summarise": 0.01, "actors": 0.02,
                                                     "stance": 0.03})


def test_summarise_http_contract(loaded: TestClient[Litestar], pipeline: Pipeline,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def summarise_articles(articles: list[Article], *, budget_words: int | None,
                           store: bool) -> list[StoryView]:
        calls.append({"ids": [a.id for a in articles], "budget": budget_words, "store": store})
        return [_view("adhoc-1", list(articles))]

    def story_view(story_id: str, *, budget_words: int | None = None) -> StoryView:
        calls.append({"story": story_id, "budget": budget_words})
        return _view(story_id, pipeline.store.get_articles(["court-1", "court-2"]))

    monkeypatch.setattr(pipeline, "summarise_articles", summarise_articles, raising=False)
    monkeypatch.setattr(pipeline, "story_view", story_view, raising=False)
    _stories(pipeline)

    inline = [{"id": "n1", "text": "Officials said the bridge reopened on Friday."},
              {"id": "n2", "text": "The bridge reopened after repairs, the city said."}]
    r = loaded.post("/v1/summarise", json={"articles": inline, "budget_words": 40})
    assert r.status_code == 200, r.text
    story = r.json()["stories"][0]
    assert calls[-1] == {"ids": ["n1", "n2"], "budget": 40, "store": False}
    assert story["headline"] == "Court sides with police"
    assert [s["article_ids"] for s in story["summary"]["sentences"]] == [["n1"], ["n2"]]
    actor = story["actors"][0]
    assert actor["name"] == "Supreme Court" and actor["mentions"] == 1
    assert actor["portrayal"]["overall"]["label"] == "neutral"
    assert actor["portrayal"]["overall"]["evidence"] == [{"article_id": "n1",
                                                          "text": "the court ruled"}]
    assert actor["portrayal"]["by_lean"]["center"]["score"] == 0.05
    assert actor["position"]["toward"][0] == {"actor": "police", "stance": {
        "label": "supportive", "score": 0.6, "confidence": 0.8, "evidence": []}}
    assert actor["statements"][0]["speaker"] == "Justice Roberts"
    assert story["outlets"] == {"Outlet A": 1} and story["timing"]["stance"] == 0.03
    assert loaded.get("/v1/articles/n1").status_code == 404  # not stored

    r = loaded.post("/v1/summarise", json={"articles": inline, "store": True}, headers=AUTH)
    assert r.status_code == 200 and calls[-1]["store"] is True

    r = loaded.post("/v1/summarise", json={"article_ids": ["court-2", "court-1"]})
    assert r.status_code == 200 and calls[-1]["ids"] == ["court-2", "court-1"]

    r = loaded.post("/v1/summarise", json={"story_id": "s-old"})  # merged: follows it
    assert r.json()["stories"][0]["id"] == "s-court" and calls[-1]["story"] == "s-court"
    got = loaded.get("/v1/stories/s-court", params={"budget_words": 30})
    assert got.status_code == 200 and got.json()["articles"][0]["id"] == "court-1"
    assert calls[-1] == {"story": "s-court", "budget": 30}

    assert_problem(loaded.post("/v1/summarise", json={}), 422, "articles")
    assert_problem(loaded.post("/v1/summarise", json={"article_ids": []}), 422, "article_ids")
    assert_problem(loaded.post("/v1/summarise", json={"story_id": "s-court", "store": True},
                               headers=AUTH), 422, "store")
    assert_problem(loaded.post("/v1/summarise", json={"story_id": "s-court",
                                                      "budget_words": 5}), 422, "budget_words")
    assert_problem(loaded.post("/v1/summarise", json={"story_id": "s-court", "mode": "poem"}),
                   422, "mode")
    # the stand-in takes no ``mode``: asking for the generated mode is 501, not ignored
    assert_problem(loaded.post("/v1/summarise", json={"story_id": "s-court", "mode": "fused"}),
                   501)


def test_summarise_with_the_real_stages(loaded: TestClient[Litestar], pipeline: Pipeline) -> None:
    if not hasattr(pipeline, "summarise_articles"):
        pytest.skip("the pipeline has no summary stage yet")
    try:
        pipeline.summariser  # noqa: B018 - loads the model or says why not
        pipeline.stance_tagger  # noqa: B018
    except ModelUnavailable as exc:
        pytest.skip(f"summary/stance models not built: {exc.detail}")
    r = loaded.post("/v1/summarise", json={"article_ids": ["court-1", "court-2"],
                                           "budget_words": 40})
    assert r.status_code == 200, r.text
    stories = r.json()["stories"]
    assert stories
    cited = {i for s in stories for x in s["summary"]["sentences"] for i in x["article_ids"]}
    assert cited and cited <= {"court-1", "court-2"}
    # Inline articles, not stored: computed once, then the same answer from the cache.
    inline = {"articles": [{"id": "x-1", "title": "Court rules on appeal", "text":
                            "The appeals court upheld the ruling on Tuesday. Lawyers for the "
                            "city said they would appeal again."}], "budget_words": 30}
    first = loaded.post("/v1/summarise", json=inline)
    again = loaded.post("/v1/summarise", json=inline)
    assert first.status_code == again.status_code == 200, first.text
    assert not first.json()["stories"][0]["cached"] and again.json()["stories"][0]["cached"]
    assert again.json()["stories"][0]["summary"] == first.json()["stories"][0]["summary"]
    assert loaded.get("/v1/articles/x-1").status_code == 404  # still not stored


# -- digests -------------------------------------------------------------------------------------
def test_digest_formats_by_accept_or_query(client: TestClient[Litestar],
                                           pipeline: Pipeline) -> None:
    assert_problem(client.get("/v1/digests/2021-10-18"), 404)
    pipeline.store.put_digests("2021-10-18", {
        "json": '{"date": "2021-10-18", "stories": []}', "html": "<h1>18 October</h1>",
        "md": "# 18 October"})
    r = client.get("/v1/digests/2021-10-18")
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"date": "2021-10-18", "stories": []}
    r = client.get("/v1/digests/2021-10-18", headers={"Accept": "text/html"})
    assert r.headers["content-type"].startswith("text/html") and r.text == "<h1>18 October</h1>"
    r = client.get("/v1/digests/2021-10-18", params={"format": "md"},
                   headers={"Accept": "text/html"})
    assert r.headers["content-type"].startswith("text/markdown") and r.text == "# 18 October"
    assert r.headers["content-type"] == "text/markdown; charset=utf-8"  # one charset
    assert_problem(client.get("/v1/digests/2021-10-19"), 404)
    assert_problem(client.get("/v1/digests/18-10-2021"), 422, "key")
    assert_problem(client.get("/v1/digests/2021-02-30"), 422, "key")
    assert_problem(client.get("/v1/digests/2021-10-24..2021-10-18"), 422, "key")
    assert_problem(client.get("/v1/digests/2021-10-18", params={"format": "pdf"}), 422, "format")


def test_digest_malformed_accept_gets_the_default_json(client: TestClient[Litestar],
                                                      pipeline: Pipeline) -> None:
    pipeline.store.put_digests("2021-10-18", {"json": '{"date": "2021-10-18"}',
                                              "html": "<h1>18 October</h1>"})
    for accept in ("text/markdown;q=0.5, text/html;q=1e500", "text/html;q=1e999", ";;;"):
        r = client.get("/v1/digests/2021-10-18", headers={"Accept": accept})
        assert r.status_code == 200, (accept, r.text)
        assert r.headers["content-type"].startswith("application/json")


def test_digest_period_keys_and_listing(client: TestClient[Litestar],
                                        pipeline: Pipeline) -> None:
    assert client.get("/v1/digests").json() == {"keys": []}
    week, span = "2021-10-18..2021-10-24", "2021-10-18T0600Z..2021-10-18T1800Z"
    for key in (week, span, "2021-10-18"):
        pipeline.store.put_digests(key, {"json": json.dumps({"key": key})})
    assert client.get(f"/v1/digests/{week}").json() == {"key": week}
    assert client.get(f"/v1/digests/{span}").json() == {"key": span}
    assert client.get("/v1/digests").json() == {"keys": ["2021-10-18", week, span]}
    assert_problem(client.get("/v1/digests/2021-10-18T0600Z..2021-10-18"), 422, "key")
    assert_problem(client.get("/v1/digests/2021-10-18T2500Z..2021-10-19T0100Z"), 422, "key")


# -- OpenAPI ------------------------------------------------------------------------------------
def test_openapi_documents_every_operation_with_examples(client: TestClient[Litestar]) -> None:
    spec = client.get("/schema/openapi.json").json()
    ops = {(m.upper(), p): op for p, item in spec["paths"].items() for m, op in item.items()}
    expected = {
        ("POST", "/v1/summarise"),
        ("POST", "/v1/articles"),
        ("GET", "/v1/articles/{article_id}"),
        ("DELETE", "/v1/articles/{article_id}"),
        ("GET", "/v1/articles/{article_id}/related"),
        ("POST", "/v1/search"),
        ("GET", "/v1/stories"),
        ("GET", "/v1/stories/{story_id}"),
        ("GET", "/v1/digests/{key}"),
        ("GET", "/v1/digests"),
        ("GET", "/health/live"),
        ("GET", "/health/ready"),
        ("GET", "/metrics"),
    }
    assert expected <= set(ops)
    for key, op in ops.items():
        if "requestBody" in op:
            media = op["requestBody"]["content"]["application/json"]
            assert media.get("examples") or media["schema"].get("examples"), key
        for status, resp in op["responses"].items():
            if status in ("204", "308"):
                continue
            content = resp["content"]
            assert all(c.get("examples") for c in content.values()), (key, status)
            if int(status) >= 400:
                assert "application/problem+json" in content, (key, status)
    schemas = spec["components"]["schemas"]
    assert schemas["ArticleIn"]["additionalProperties"] is False
    assert ops[("POST", "/v1/articles")]["security"] == [{"bearer": []}]


def test_summarise_ids_read_in_one_go_and_follow_duplicates(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import numpy as np

    from storyline.index.store import IngestItem, SQLiteStore
    from storyline.models.errors import NotFound
    from storyline.service.api.summarise import _stored

    st = SQLiteStore(tmp_path / "s.db")
    vec = np.ones(4, dtype=np.float32) / 2
    st.ingest([IngestItem(Article(i, f"text of {i}", i.upper()), vec)
               for i in ("a", "b")], "m")
    st.ingest([IngestItem(Article("a-copy", "text of a", "A"), vec)], "m")
    pipe = SimpleNamespace(store=st)
    # request order, duplicate ids resolved to what they repeat, each article once
    assert [x.id for x in _stored(pipe, ["b", "a-copy", "a"])] == ["b", "a"]
    assert [x.id for x in _stored(pipe, ["a-copy"])] == ["a"]
    with pytest.raises(NotFound) as err:
        _stored(pipe, ["a", "nope"])
    assert err.value.extra["missing"] == ["nope"]
    st.close()


# -- digests: key suffixes, equivalent keys, q-values, the documented example (audit w16) ------
def test_digest_key_suffix_selects_the_format_and_earlier_links_resolve(
    client: TestClient[Litestar], pipeline: Pipeline,
) -> None:
    """The page's links to earlier digests (``<key>.html#story-…``, right between files in
    --out) resolve against /v1/digests/<key> to /v1/digests/<key>.html: served as HTML."""
    import re
    from urllib.parse import urljoin

    from storyline.service import digest as dg
    from storyline.service.api.digests import DIGEST_EXAMPLE

    doc = DIGEST_EXAMPLE
    pipeline.store.put_digests("2021-10-18", {
        "json": dg.render_json(doc), "html": dg.render_html(doc), "md": dg.render_markdown(doc)})
    pipeline.store.put_digests("2021-10-17", {"json": "{}", "html": "<p>17</p>", "md": "# 17"})
    page = client.get("/v1/digests/2021-10-18", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    hrefs = re.findall(r'<p class="previous">.*?href="([^"#]+)', page.text, re.S)
    assert hrefs == ["2021-10-17.html"]
    earlier = client.get(urljoin(str(page.url), hrefs[0]))
    assert earlier.status_code == 200, earlier.text
    assert earlier.headers["content-type"].startswith("text/html") and earlier.text == "<p>17</p>"
    for suffix, media, body in (("md", "text/markdown", "# 17"),
                                ("json", "application/json", "{}")):
        r = client.get(f"/v1/digests/2021-10-17.{suffix}", headers={"Accept": "text/html"})
        assert r.headers["content-type"].startswith(media) and r.text == body  # suffix > Accept
    r = client.get("/v1/digests/2021-10-17.html", params={"format": "md"})
    assert r.text == "# 17"  # ?format= > suffix
    for bad in ("2021-10-17.pdf", "2021-10-17.", "2021-10-17.html.md"):
        assert_problem(client.get(f"/v1/digests/{bad}"), 422, "key")


def test_digest_equivalent_keys_find_the_stored_one(client: TestClient[Litestar],
                                                    pipeline: Pipeline) -> None:
    pipeline.store.put_digests("2021-10-17", {"json": '{"k": 1}'})
    pipeline.store.put_digests("2021-10-17..2021-10-18", {"json": '{"k": 2}'})
    for key in ("2021-10-17", "2021-10-17..2021-10-17", "2021-10-17T0000Z..2021-10-18T0000Z",
                "2021-10-17T0000Z..2021-10-18T0000Z.json"):
        r = client.get(f"/v1/digests/{key}")
        assert r.status_code == 200 and r.json() == {"k": 1}, key
    assert client.get("/v1/digests/2021-10-17T0000Z..2021-10-19T0000Z").json() == {"k": 2}
    for bad in ("2021-10-17T0600Z..2021-10-17T0600Z", "9999-12-31", "9999-12-30..9999-12-31"):
        assert_problem(client.get(f"/v1/digests/{bad}"), 422, "key")


def test_digest_accept_q_values_are_honoured(client: TestClient[Litestar],
                                             pipeline: Pipeline) -> None:
    pipeline.store.put_digests("2021-10-18", {"json": "{}", "html": "<p>", "md": "#"})
    cases = {
        "text/html;q=0, application/json;q=0": "application/json",  # none acceptable
        "text/html;q=0, */*": "application/json",
        "text/*, text/html;q=0": "text/markdown",  # the more specific range decides
        "text/markdown;q=0.4, text/html;q=0.8": "text/html",
        "application/json;q=0, text/*;q=0.5": "text/html",
        "text/markdown, text/html": "text/markdown",
        "image/png": "application/json",
    }
    for accept, media in cases.items():
        r = client.get("/v1/digests/2021-10-18", headers={"Accept": accept})
        assert r.status_code == 200 and r.headers["content-type"].startswith(media), accept


def test_openapi_digest_example_is_a_valid_digest(client: TestClient[Litestar]) -> None:
    import jsonschema

    from storyline.service import digest as dg

    schema = json.loads((Path(dg.__file__).parent / "digest_schema.json").read_text("utf-8"))
    assert "/v1/digests/{key}" in schema["description"]
    spec = client.get("/schema/openapi.json").json()
    ok = spec["paths"]["/v1/digests/{key}"]["get"]["responses"]["200"]
    examples = [e["value"] for c in ok["content"].values() for e in c["examples"].values()]
    assert examples
    for value in examples:
        jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(value)


def test_search_text_of_invisible_characters_is_empty_and_an_empty_source_no_filter(
    loaded: TestClient[Litestar],
) -> None:
    for text in ("\u200b", "\u0000", "\ufeff \u200d\t\u2060", "\u202e"):
        body = assert_problem(loaded.post("/v1/search", json={"text": text}), 422, "text")
        assert "must not be empty" in body["detail"]
    plain = loaded.post("/v1/search", json={"text": "hurricane", "k": 4}).json()["results"]
    empty = loaded.post("/v1/search", json={"text": "hurricane", "k": 4, "source": ""})
    assert empty.status_code == 200
    assert [h["id"] for h in empty.json()["results"]] == [h["id"] for h in plain]
    assert len(plain) == 4
    r = loaded.get("/v1/articles/court-1/related?k=3&source=")
    assert r.status_code == 200 and len(r.json()["related"]) == 3


def test_ingest_refuses_an_id_repeated_in_one_request(client: TestClient[Litestar]) -> None:
    a, b = dict(ARTS[0]), dict(ARTS[2], id="court-1")
    r = client.post("/v1/articles", json={"articles": [a, ARTS[1], b]}, headers=AUTH)
    body = assert_problem(r, 422, "articles[2].id")
    assert "articles[0].id" in body["errors"][0]["message"]
    # an integer id and its string are one id
    r = client.post("/v1/articles", json={"articles": [dict(ARTS[1], id=7),
                                                       dict(ARTS[3], id="7")]}, headers=AUTH)
    assert_problem(r, 422, "articles[1].id")
    assert client.get("/health/ready").json()["articles"] == 0  # nothing was written
    r = client.post("/v1/articles", json={"articles": ARTS}, headers=AUTH)
    assert r.status_code == 200 and len(r.json()["results"]) == len(ARTS)
