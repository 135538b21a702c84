"""Audit (HTTP edges): what the app answers around its resource handlers.

Load balancers and uptime checkers probe with HEAD, which the probes answered 405; an
unknown ``/schema/<name>`` got litestar's HTML 404 page instead of a problem document;
``instance`` carried the percent-decoded path (a NUL, a space), which is no URI
reference; and the OpenAPI document left out the 401 and 422 every /v1 read can answer
(a key required for reads, an unknown query parameter). The rest holds what these edges
must keep: every error a problem document, every route documented, 405 with the methods
the document lists, and a Prometheus exposition whose request series do not grow with
made-up URLs. (OpenAPI examples are validated in test_audit_ops.py.)
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from storyline.service.api.app import create_app
from storyline.service.pipeline import Pipeline
from storyline.service.settings import Settings

KEY = "edge-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROBES = ("/health/live", "/health/ready", "/metrics")
#: a value for each path parameter of the documented operations
PATH_VALUES = {"article_id": "x", "story_id": "s-1", "key": "2021-10-18"}


def _settings(data_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        model_process=False,
        warm_stories=False,
        api_keys_sha256=[hashlib.sha256(KEY.encode()).hexdigest()],
        rate_limit_per_minute=1_000_000,
        **overrides,
    )


def _problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.request.url, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = dict(r.json())
    assert body["status"] == status
    assert body["type"].startswith("urn:storyline:problem:") and body["title"] and body["detail"]
    return body


@pytest.fixture()
def bare(tmp_path: Path) -> Iterator[TestClient[Litestar]]:
    """The app without models: it never becomes ready, but routes, errors, the schema
    and the probes answer as in production."""
    app = create_app(_settings(tmp_path / "empty", read_requires_key=True))
    with TestClient(app) as c:
        deadline = time.monotonic() + 60
        while app.state.runtime.loading:
            assert time.monotonic() < deadline, "loading never gave up"
            time.sleep(0.05)
        yield c


@pytest.fixture()
def served(pipeline: Pipeline) -> Iterator[TestClient[Litestar]]:
    s = pipeline.settings.model_copy(update={"warm_stories": False})
    with TestClient(create_app(s, pipeline=pipeline)) as c:
        yield c


@pytest.fixture()
def spec(bare: TestClient[Litestar]) -> dict[str, Any]:
    return dict(bare.get("/schema/openapi.json").json())


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)


# -- HEAD on the probes --------------------------------------------------------------------
def test_probes_answer_head_as_they_answer_get(served: TestClient[Litestar]) -> None:
    for path in PROBES:
        get, head = served.get(path), served.head(path)
        assert head.status_code == get.status_code == 200, (path, head.text)
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["server-timing"].startswith("app;dur=")
        wrong = served.put(path)
        _problem(wrong, 405)
        assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}, path


def test_head_readiness_fails_as_get_does(bare: TestClient[Litestar]) -> None:
    assert bare.head("/health/live").status_code == 200
    r = bare.head("/health/ready")
    assert r.status_code == 503 and r.content == b""
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["Retry-After"]) >= 1


def test_head_operations_are_documented_and_get_keeps_its_operation_id(
    spec: dict[str, Any],
) -> None:
    ids = {
        (path, m): op["operationId"]
        for path, item in spec["paths"].items()
        for m, op in item.items()
    }
    assert len(set(ids.values())) == len(ids)
    # the ids the GET-only handlers had: generated clients keep their method names
    assert ids["/health/live", "get"] == "HealthLiveLive"
    assert ids["/health/ready", "get"] == "HealthReadyReady"
    assert ids["/metrics", "get"] == "MetricsGet"
    for path in PROBES:
        assert (path, "head") in ids


# -- problem documents ---------------------------------------------------------------------
def test_unknown_schema_paths_are_problem_documents(bare: TestClient[Litestar]) -> None:
    for path in ("/schema/nope", "/schema/nope.html", "/schema/openapi.yaml", "/schema/%00"):
        body = _problem(bare.get(path), 404)
        assert body["instance"] == path
    assert bare.get("/schema").headers["content-type"].startswith("text/html")
    assert bare.get("/schema/openapi.json").status_code == 200


def test_problem_instance_is_the_path_as_sent(bare: TestClient[Litestar]) -> None:
    # instance is a URI reference (RFC 9457): the path percent-encoded as the client sent
    # it, never a decoded NUL, space or a %2F turned into another path segment
    cases = [
        ("/no%20such/pl%C3%A4ce?q=%00", 404),
        ("/health/%00", 404),
        ("/v1/articles/a%2Fb/related", 404),
        ("/v1/articles/a%00b", 503),
        ("/v1/stories/%FF", 503),
    ]
    for sent, status in cases:
        body = _problem(bare.get(sent, headers=AUTH), status)
        assert body["instance"] == sent.split("?")[0], body
        assert not re.search(r"[\x00-\x20\x7f-\uffff]", body["instance"]), body


def test_every_get_documents_what_it_answers_before_its_handler_runs(
    bare: TestClient[Litestar], spec: dict[str, Any]
) -> None:
    # A key when reads need one (the probes are public), then, on /v1, the query string.
    checked = 0
    for path, item in spec["paths"].items():
        if "get" not in item:
            continue
        documented = set(item["get"]["responses"])
        r = bare.get(_url(path))
        if path.startswith("/health/"):
            assert r.status_code != 401, path
        else:
            _problem(r, 401)
        assert str(r.status_code) in documented, (path, r.status_code)
        if path.startswith("/v1/"):
            r = bare.get(_url(path), params={"no_such_param": "1"}, headers=AUTH)
            assert _problem(r, 422)["errors"][0]["field"] == "no_such_param"
            assert "422" in documented, path
        checked += 1
    assert checked >= 9


def test_wrong_methods_answer_405_naming_the_documented_methods(
    bare: TestClient[Litestar], spec: dict[str, Any]
) -> None:
    routed: dict[str, set[str]] = {}
    for route in bare.app.routes:
        if isinstance(route, HTTPRoute) and not route.path.startswith("/schema"):
            routed[route.path_format] = set(route.methods) - {"OPTIONS"}
    documented = {path: {m.upper() for m in item} for path, item in spec["paths"].items()}
    assert routed == documented  # every route documented, nothing documented unrouted
    for path, methods in documented.items():
        r = bare.request("PATCH", _url(path), headers=AUTH)
        _problem(r, 405)
        assert set(r.headers["allow"].split(", ")) == methods | {"OPTIONS"}, path


# -- /metrics ------------------------------------------------------------------------------
def _http_series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for fam in text_string_to_metric_families(text)
        if fam.name.startswith("storyline_http")
        for s in fam.samples
    }


def test_metrics_are_valid_exposition_and_made_up_urls_add_no_series(
    bare: TestClient[Litestar],
) -> None:
    odd = ['a"b', "back\\slash", "new%0Aline", "%00", "caf%C3%A9", "%FF", "{x}"]

    def made_up(n: int) -> None:
        for i in range(n):
            tail = f"{uuid4().hex}{odd[i % len(odd)]}"
            for path in (
                f"/{tail}",
                f"/v1/{tail}",
                f"/schema/{tail}",
                f"/v1/articles/{tail}",
                f"/v1/stories/{tail}/x",
                f"/health/{tail}",
            ):
                bare.get(path, headers=AUTH)
            bare.post(f"/v1/{tail}", content=b"{}")

    made_up(20)
    before = _http_series(bare.get("/metrics", headers=AUTH).text)
    made_up(600)
    text = bare.get("/metrics", headers=AUTH).text
    after = _http_series(text)
    assert after == before, sorted(after - before)[:5]
    paths = {dict(labels).get("path", "") for _, labels in after}
    assert not any(re.search(r"[0-9a-f]{32}|[\"\\\n]", p) for p in paths), paths

    # every family has its HELP and TYPE line, and the whole text parses
    families = list(text_string_to_metric_families(text))
    assert families
    for fam in families:
        assert re.search(rf"^# HELP {fam.name}(_total|_info)? ", text, re.M), fam.name
        assert fam.type != "unknown", fam.name
    assert re.search(
        r'^storyline_http_requests_total\{[^}]*path="/v1/articles/\{article_id\}"', text, re.M
    )
