"""Audit (HTTP inputs): what the controllers read from a request, read strictly.

litestar resolved a query parameter given twice to its last value (``?page=1&page=2``
served page 2, ``source=A&source=B`` filtered by B only) and converted query values
laxly (``page=1e3`` was page 1000, ``k=10.0`` was 10, ``exclude_same_story=1`` true).
HEAD on the /v1 reads answered 405. A ``%2F`` in an id was routed as a path separator
with the empty segment dropped (``/v1/stories/%2F`` served the story list). A body in
latin-1 or gzip was read as UTF-8 JSON. And ``storyline demo`` dropped bad input lines
without a word (exit 0) and ignored ``max_article_chars``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from storyline.service.api.app import create_app
from storyline.service.pipeline import Pipeline

KEY = "inputs-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ARTS = [
    {"id": "court-1", "title": "Court sides with police", "source": "Outlet A",
     "published_at": "2021-10-18T12:00:00Z",
     "text": "The Supreme Court ruled on Monday that police officers were entitled to qualified "
             "immunity in two excessive force cases."},
    {"id": "court-2", "title": "Justices back officers", "source": "Outlet B",
     "published_at": "2021-10-18T15:00:00Z",
     "text": "Justices overturned two lower court rulings, granting officers qualified immunity "
             "from lawsuits over the use of force."},
]


@pytest.fixture()
def client(pipeline: Pipeline) -> Iterator[TestClient[Litestar]]:
    s = pipeline.settings.model_copy(update={
        "api_keys_sha256": [hashlib.sha256(KEY.encode()).hexdigest()],
        "warm_stories": False, "rate_limit_per_minute": 1_000_000})
    with TestClient(create_app(s, pipeline=pipeline)) as c:
        r = c.post("/v1/articles", json={"articles": ARTS}, headers=AUTH)
        assert r.status_code == 200, r.text
        yield c


def _problem(r: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.request.url, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    body = dict(r.json())
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


# -- the query string ----------------------------------------------------------------------
@pytest.mark.parametrize(("url", "field"), [
    ("/v1/stories?page=1&page=2", "page"),
    ("/v1/stories?q=court&q=storm", "q"),
    ("/v1/articles/court-1/related?source=Outlet+A&source=Outlet+B", "source"),
    ("/v1/articles/court-1/related?k=1&k=5", "k"),
    ("/v1/digests/2021-10-18?format=html&format=md", "format"),
])
def test_a_parameter_given_more_than_once_is_refused(
    client: TestClient[Litestar], url: str, field: str
) -> None:
    body = _problem(client.get(url), 422, field)
    assert body["detail"] == f"{field}: given more than once"
    assert body["errors"][0]["source"] == "query"


@pytest.mark.parametrize(("url", "field"), [
    ("/v1/stories?page=1e3", "page"),
    ("/v1/stories?page_size=5.0", "page_size"),
    ("/v1/stories?min_size=1e0", "min_size"),
    ("/v1/articles/court-1/related?k=10.0", "k"),
    ("/v1/articles/court-1/related?k=1E1", "k"),
    ("/v1/stories/no-such-story?budget_words=1e2", "budget_words"),
    ("/v1/articles/court-1/related?exclude_same_story=1", "exclude_same_story"),
    ("/v1/articles/court-1/related?exclude_same_story=True", "exclude_same_story"),
    ("/v1/articles/court-1/related?exclude_same_story=FALSE", "exclude_same_story"),
])
def test_query_numbers_and_booleans_are_read_strictly(
    client: TestClient[Litestar], url: str, field: str
) -> None:
    body = _problem(client.get(url), 422, field)
    assert "must be a decimal integer" in body["detail"] or "true or false" in body["detail"]


def test_plain_query_values_still_work_and_others_are_named(
    client: TestClient[Litestar],
) -> None:
    r = client.get("/v1/articles/court-1/related?k=1&exclude_same_story=false&source=Outlet+B")
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["related"]] == ["court-2"]
    assert client.get("/v1/articles/court-1/related?exclude_same_story=true").status_code == 200
    assert client.get("/v1/stories?page=1&page_size=7").json()["page_size"] == 7
    for query, needle in (("k=%2B5", "decimal integer"), ("k=%205", "decimal integer"),
                          ("k=05", "decimal integer"), ("k=٥", "decimal integer"),
                          ("k=", "decimal integer"), ("k=0", "between 1 and"),
                          ("k=-3", "between 1 and"),
                          ("k=1234567890123456789012", "out of range"),
                          ("exclude_same_story=yes", "true or false")):
        body = _problem(client.get(f"/v1/articles/court-1/related?{query}"), 422)
        assert needle in body["detail"], (query, body)


# -- HEAD ----------------------------------------------------------------------------------
def test_the_v1_reads_answer_head_as_get(client: TestClient[Litestar]) -> None:
    sid = client.get("/v1/articles/court-1").json()["story_id"]
    for url in ("/v1/articles/court-1", "/v1/articles/court-1/related?k=1", "/v1/stories",
                "/v1/digests", "/v1/articles/nope", "/v1/digests/2021-10-18",
                "/v1/stories?page=x", f"/v1/stories/{sid}x"):
        get, head = client.get(url), client.head(url)
        assert head.status_code == get.status_code, (url, head.text)
        assert head.content == b"", url
        assert head.headers["content-type"] == get.headers["content-type"], url


def test_head_operations_are_documented_and_get_keeps_its_operation_id(
    client: TestClient[Litestar],
) -> None:
    spec = client.get("/schema/openapi.json").json()
    ids = {(p, m): op["operationId"] for p, item in spec["paths"].items() for m, op in item.items()}
    assert len(set(ids.values())) == len(ids)
    # what litestar named them while they answered GET only (generated clients' methods)
    before = {
        "/v1/articles/{article_id}": "V1ArticlesArticleIdGetArticle",
        "/v1/articles/{article_id}/related": "V1ArticlesArticleIdRelatedRelated",
        "/v1/digests": "V1DigestsListDigests",
        "/v1/digests/{key}": "V1DigestsKeyGetDigest",
        "/v1/stories": "V1StoriesListStories",
        "/v1/stories/{story_id}": "V1StoriesStoryIdGetStory",
    }
    for path, oid in before.items():
        assert ids[path, "get"] == oid
        assert ids[path, "head"] == oid + "Head"


# -- the path ------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/v1/stories/%2F", "/v1/articles/court-1%2F",
                                 "/v1/articles/court-1%2f/related", "/v1/stories/%2F?page=1",
                                 "/v1/articles/%2F"])
def test_an_encoded_slash_is_no_path_separator(client: TestClient[Litestar], url: str) -> None:
    # ids never hold "/"; routed, the empty segment vanished and another resource answered
    body = _problem(client.get(url), 404)
    assert "cannot contain '/'" in body["detail"]


@pytest.mark.both_backends
def test_an_id_holding_nul_is_not_found(client: TestClient[Litestar]) -> None:
    # PostgreSQL refuses NUL in a query: these were 503 "store unavailable" + Retry-After
    for url in ("/v1/articles/a%00b", "/v1/articles/a%00b/related", "/v1/stories/s%00"):
        _problem(client.get(url), 404)
    _problem(client.delete("/v1/articles/a%00b", headers=AUTH), 404)
    r = client.post("/v1/summarise", json={"article_ids": ["court-1", "a\x00", "nope"]})
    assert _problem(r, 404)["missing"] == ["a\x00", "nope"]
    _problem(client.post("/v1/summarise", json={"story_id": "s\x00"}), 404)


# -- the body ------------------------------------------------------------------------------
def test_a_body_in_another_charset_is_refused(client: TestClient[Litestar]) -> None:
    body = '{"text": "café in Zürich"}'
    r = client.post("/v1/search", content=body.encode("latin-1"),
                    headers={"Content-Type": "application/json; charset=latin-1"})
    assert "'latin-1'" in _problem(r, 415)["detail"]
    for ctype in ("application/json; charset=utf-8", 'application/json;charset="UTF-8"',
                  "application/json"):
        r = client.post("/v1/search", content=body.encode(), headers={"Content-Type": ctype})
        assert r.status_code == 200, (ctype, r.text)
        assert r.json()["query"] == "café in Zürich"


def test_a_compressed_body_is_refused_not_misread(client: TestClient[Litestar]) -> None:
    # refused, not decoded: a small gzip body can inflate far past max_body_bytes
    raw = json.dumps({"text": "court ruling"}).encode()
    for coding, content in (("gzip", gzip.compress(raw)), ("br", raw)):
        r = client.post("/v1/search", content=content,
                        headers={"Content-Type": "application/json", "Content-Encoding": coding})
        body = _problem(r, 415)
        assert "Content-Encoding" in body["detail"] and coding in body["detail"]
        assert r.headers["accept-encoding"] == "identity"
    r = client.post("/v1/search", content=raw, headers={
        "Content-Type": "application/json", "Content-Encoding": "identity"})
    assert r.status_code == 200, r.text


# -- storyline demo ------------------------------------------------------------------------
def test_demo_reports_bad_lines_and_exits_2(data_dir: Path, tmp_path: Path) -> None:
    good = [{"id": "g1", "title": "Senate passes bill", "text": "The Senate passed the bill."},
            {"id": "g2", "title": "House votes", "text": "The House voted on the bill."}]
    lines = [
        json.dumps(good[0]),
        "{broken",
        json.dumps({"id": "b1", "title": "no text"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"id": "b2", "text": "x", "published_at": "soon"}),
        json.dumps(good[1]),
        json.dumps({"id": "b3", "text": ""}),
        json.dumps({"id": "b4", "text": "A long sentence about the bill. " * 10}),
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**os.environ, "STORYLINE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
           "STORYLINE_MAX_ARTICLE_CHARS": "200"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "storyline.service.cli", *args],
                              capture_output=True, text=True, env=env, timeout=300)

    r = cli("demo", str(src), "--no-digest")
    assert r.returncode == 2, (r.stdout, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 6, r.stderr
    for n, line in zip((2, 3, 4, 5, 7, 8), errors, strict=True):
        assert f"line {n}" in line, line
    assert "Traceback" not in r.stderr
    assert "'failed': 6" in r.stdout and "[g1]" in r.stdout and "[b4]" not in r.stdout
    stats = json.loads(cli("stats", "--json").stdout.strip().splitlines()[-1])
    assert stats["articles"] == 2
