"""Audit: stance positions keyed by actor, whole-word headline mentions, Accept negotiation.

Stance runs the real spaCy extractor (as the attributor too) and the VADER scorer, which
needs no model files; the digest tests go through the real app with litestar's TestClient.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from storyline.models.actors import SpacyActorExtractor
from storyline.models.stance import ActorStanceTagger, VaderTargetScorer
from storyline.models.types import ActorStance, Article
from storyline.service.api.app import create_app
from storyline.service.pipeline import Pipeline


def _by_type(stances: list[ActorStance], name: str) -> dict[str, ActorStance]:
    return {s.actor.type: s for s in stances if s.actor.name == name}


# -- positions are keyed by actor, not by display name --------------------------------------


def test_actors_sharing_a_display_name_keep_their_own_statements_and_edges(
    ex: SpacyActorExtractor,
) -> None:
    art = Article(
        id="a1",
        title="",
        text="Marines praised the Pentagon. The Marines said the Pentagon was slow. "
        "A Marine accused the Pentagon of neglect.",
    )
    actors = ex.extract([art])
    # the small model tags the first "Marines" NORP and the second ORG: two actors, one name
    assert sorted(a.type for a in actors if a.name == "Marines") == ["NORP", "ORG"], actors
    marines = _by_type(
        ActorStanceTagger(VaderTargetScorer(), attributor=ex).tag(actors, [art]), "Marines"
    )
    for kind, sentence in (
        ("NORP", "Marines praised the Pentagon."),
        ("ORG", "The Marines said the Pentagon was slow."),
    ):
        st = marines[kind]
        assert [s.sentence for s in st.statements] == [sentence], kind
        assert all(s.speaker == "Marines" for s in st.statements)  # the API still shows names
        (edge,) = st.position.toward
        assert edge.actor == "the Pentagon"
        assert [e.text for e in edge.stance.evidence] == [sentence], kind
    assert marines["NORP"].position.toward[0].stance.label == "supportive"  # "praised"


def test_two_people_shown_by_one_name_are_two_sides(ex: SpacyActorExtractor) -> None:
    art = Article(
        id="a1",
        title="",
        text="Mr. Johnson praised Mrs. Johnson on Monday. "
        "Mrs. Johnson accused Mr. Johnson of lying.",
    )
    actors = ex.extract([art])
    assert sorted(a.name for a in actors) == ["Mr. Johnson", "Mrs. Johnson"]
    # both shown as "Johnson" (another extractor's or a caller's display name)
    shown = [replace(a, name="Johnson") for a in actors]
    stances = ActorStanceTagger(VaderTargetScorer(), attributor=ex).tag(shown, [art])
    said = {
        s.statements[0].sentence: s
        for s in stances
        if [st.speaker for st in s.statements] == ["Johnson"]
    }
    assert set(said) == {
        "Mr. Johnson praised Mrs. Johnson on Monday.",
        "Mrs. Johnson accused Mr. Johnson of lying.",
    }
    mr, mrs = (said[k] for k in sorted(said))
    assert [t.actor for t in mr.position.toward] == ["Johnson"]
    assert mr.position.toward[0].stance.label == "supportive"
    assert [t.actor for t in mrs.position.toward] == ["Johnson"]
    assert mrs.position.toward[0].stance.label == "critical"


# -- a headline mention is a run of whole words of the headline ------------------------------


def _plain_mean(scorer: VaderTargetScorer, st: ActorStance) -> float:
    p = scorer.predict([(m.sentence, m.start, m.end) for m in st.actor.mentions])
    return float(np.mean(p[:, 2] - p[:, 0]))


@pytest.mark.parametrize(
    ("title", "text", "name"),
    [
        (
            "Iranian drones hit tanker",
            "Iran\n\nIran denied the attack on Monday, calling it a terrible lie.",
            "Iran",
        ),
        (
            "Focus on USA trade",
            "US\n\nThe US said the talks were a great success.",
            "United States",
        ),
    ],
)
def test_a_body_line_inside_a_headline_word_is_not_a_headline_mention(
    ex: SpacyActorExtractor, title: str, text: str, name: str
) -> None:
    art = Article(id="a", title=title, text=text)
    scorer = VaderTargetScorer()
    stances = ActorStanceTagger(scorer, attributor=ex).tag(ex.extract([art]), [art])
    (st,) = [s for s in stances if s.actor.name == name]
    # the kicker line ("Iran", "US") is a body sentence, so no mention weighs double
    assert st.actor.mentions[0].sentence == text.split("\n")[0]
    assert not any(m.sentence == title for m in st.actor.mentions)
    assert st.portrayal.overall.score == pytest.approx(_plain_mean(scorer, st), abs=1e-4)


def test_a_headline_mention_still_weighs_double(ex: SpacyActorExtractor) -> None:
    art = Article(
        id="a",
        title="Iran rejects terrible claims",
        text="Iran said the report was a great success for peace.",
    )
    scorer = VaderTargetScorer()
    stances = ActorStanceTagger(scorer, attributor=ex).tag(ex.extract([art]), [art])
    (st,) = [s for s in stances if s.actor.name == "Iran"]
    p = scorer.predict([(m.sentence, m.start, m.end) for m in st.actor.mentions])
    assert st.actor.mentions[0].sentence == art.title
    s = p[:, 2] - p[:, 0]
    assert st.portrayal.overall.score == pytest.approx((2 * s[0] + s[1]) / 3, abs=1e-4)


# -- GET /v1/digests/{key}: Accept negotiation (RFC 9110 12.5.1) -----------------------------


@pytest.fixture()
def client(pipeline: Pipeline) -> Iterator[TestClient[Litestar]]:
    s = pipeline.settings.model_copy(update={"warm_stories": False})
    pipeline.store.put_digests("2021-10-18", {"json": "{}", "html": "<p>", "md": "#"})
    with TestClient(create_app(s, pipeline=pipeline)) as c:
        yield c


def _served(client: TestClient[Litestar], accept: Any) -> str:
    r = client.get("/v1/digests/2021-10-18", headers=accept)
    assert r.status_code == 200, (accept, r.text)
    assert "accept" in r.headers["vary"].lower()
    return str(r.headers["content-type"]).split(";")[0]


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        # a range with parameters is about the representation having them (text/html here
        # is charset=utf-8, no level): "level=1" leaves plain text/html at q=0.1 ...
        ("text/html;level=1, text/html;q=0.1, application/json;q=0.5", "application/json"),
        # ... and a range naming what is served is more specific than one without
        ("text/html;q=0.1, text/html;charset=UTF-8, application/json;q=0.5", "text/html"),
        ("text/html;charset=iso-8859-1;q=0, text/html;q=0.9, application/json;q=0.5", "text/html"),
        ("application/json;charset=utf-8;q=0.9, text/html;q=0.5", "application/json"),
        # a quoted parameter value may hold commas and semicolons
        ('text/x-note;label="a, b; c", text/markdown', "text/markdown"),
        ('text/x-note;label="say \\"hi\\", then", text/markdown', "text/markdown"),
    ],
)
def test_accept_parameters_are_read_as_rfc_9110_defines_them(
    client: TestClient[Litestar], accept: str, media: str
) -> None:
    assert _served(client, {"Accept": accept}) == media


def _served_raw(client: TestClient[Litestar], accept: list[str]) -> str:
    """The media type served for Accept sent as separate field lines, as a server passes
    them in the ASGI scope (the test client's transport would join them into one)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/digests/2021-10-18",
        "raw_path": b"/v1/digests/2021-10-18",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *((b"accept", a.encode()) for a in accept)],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        await client.app(scope, receive, send)

    client.blocking_portal.call(call)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 200, sent
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return str(headers["content-type"]).split(";")[0]


def test_accept_sent_as_several_field_lines_is_one_list(client: TestClient[Litestar]) -> None:
    assert _served_raw(client, ["text/html;q=0.2", "text/markdown"]) == "text/markdown"
    assert _served_raw(client, ["text/*", "text/markdown;q=0"]) == "text/html"
    assert _served_raw(client, ["text/html"]) == "text/html"


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        ("TEXT/HTML;Q=0.5, Application/JSON;q=0.4", "text/html"),  # case-insensitive
        ("text/*;q=0.3, text/markdown;q=0.6, */*;q=0.5", "text/markdown"),
        ("*/*;q=0.5, text/markdown;q=0", "application/json"),  # JSON first among equals
        ("text/html;, text/markdown;q=0.5", "text/html"),  # an empty parameter is allowed
        ("text/html,,application/json;q=0.1", "text/html"),  # so is an empty list element
        # malformed (the documented default, JSON): an open quote, a parameter without a
        # value, a q-value out of range
        ('text/html;label="a, text/markdown', "application/json"),
        ("text/html;level", "application/json"),
        ("text/html;q=1.5", "application/json"),
        # nothing acceptable: the documented default, not a 406 (RFC 9110 allows both)
        ("image/png", "application/json"),
        ("*/*;q=0", "application/json"),
    ],
)
def test_accept_edge_cases(client: TestClient[Litestar], accept: str, media: str) -> None:
    assert _served(client, {"Accept": accept}) == media


def test_head_negotiates_like_get(client: TestClient[Litestar]) -> None:
    accept = "text/html;q=0.1, text/html;charset=utf-8, application/json;q=0.5"
    r = client.head("/v1/digests/2021-10-18", headers={"Accept": accept})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.content == b""
