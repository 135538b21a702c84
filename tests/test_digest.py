"""The nightly digest: ranking, rendering, escaping, schema, idempotency, the cache, resume.

The end-to-end tests run the real Pipeline (embedder, story clustering, summariser, actors,
stance models) on AllSides articles re-dated into two synthetic days.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from storyline.index.store import SQLiteStore
from storyline.index.types import Story
from storyline.models.errors import InvalidInput, NotFound
from storyline.models.types import Article
from storyline.service import digest as dg
from storyline.service.pipeline import Pipeline

SCHEMA = json.loads(
    (Path(dg.__file__).parent / "digest_schema.json").read_text(encoding="utf-8"))
DAY = datetime(2021, 10, 20, tzinfo=UTC)
HOSTILE = ' <script>alert("pwned")</script>'


def validate(doc: dict[str, Any]) -> None:
    import jsonschema

    jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(doc)


# ------------------------------------------------------------------------- ranking (unit)
def _art(aid: str, hour: float, source: str, lean: str | None) -> Article:
    return Article(id=aid, text=f"text of {aid}", title=f"title {aid}", source=source,
                   lean=lean, url=f"https://example.org/{aid}",
                   published_at=DAY + timedelta(hours=hour))


def _story(sid: str, arts: list[Article]) -> Story:
    times = [a.published_at for a in arts if a.published_at]
    return Story(id=sid, label=sid, article_ids=[a.id for a in arts], first_at=min(times),
                 last_at=max(times), outlets={})


def test_an_outlet_spelt_two_ways_is_one_outlet(tmp_path: Path) -> None:
    # Two feeds spell one outlet "Reuters" and "REUTERS": it counted as two outlets in the
    # ranking and was listed twice under its lean.
    arts = [_art("a1", 18, "Reuters", "center"), _art("a2", 18, "REUTERS", "center"),
            _art("a3", 18, "Reuters", "center"), _art("a4", 18, "CNN", "left")]
    assert dg._coverage(arts) == [
        {"lean": "left", "outlets": [{"name": "CNN", "articles": 1}]},
        {"lean": "center", "outlets": [{"name": "Reuters", "articles": 3}]}]
    store = SQLiteStore(tmp_path / "db.sqlite")
    since, until = dg.day_period(DAY.date())
    earlier = dg._earlier_digests(store, since, until, "2021-10-20", 14)
    (c,) = dg._rank(store, [_story("s", arts)], {"s": arts}, earlier, since, until)
    assert c.outlets == 2
    store.close()


def test_ranking_order_volume_outlets_leans_recency_novelty(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    spectrum = [("CNN", "left"), ("Reuters", "center"), ("Fox News", "right")]
    groups = {
        "s_wide": [_art(f"w{i}", 18, o, le) for i, (o, le) in enumerate(spectrum)],
        "s_dev": [_art(f"d{i}", 17, o, le) for i, (o, le) in enumerate(spectrum)],
        "s_big": [_art(f"b{i}", 18, "Daily Bugle", "right") for i in range(6)],
        "s_two": [_art(f"t{i}", 18, o, le) for i, (o, le) in enumerate(spectrum[:2])],
        "s_early": [_art(f"e{i}", 1, o, le) for i, (o, le) in enumerate(spectrum)],
        "s_repeat": [_art(f"r{i}", 18, o, le) for i, (o, le) in enumerate(spectrum)],
    }
    since, until = dg.day_period(DAY.date())
    # An earlier, overlapping 24-hour digest already featured s_repeat with the same
    # articles; an earlier day featured s_old, which has since been merged into s_dev.
    store.put_digests("2021-10-19T1900Z..2021-10-20T1900Z", {"json": json.dumps({
        "period": {"since": "2021-10-19T19:00:00+00:00", "until": "2021-10-20T19:00:00+00:00"},
        "stories": [{"id": "s_repeat", "rank": 1, "article_ids": ["r0", "r1", "r2"]}]})})
    # A digest covering this day (built later, say) is not an earlier one: s_wide stays new.
    store.put_digests("2021-10-19..2021-10-20", {"json": json.dumps({
        "period": {"since": "2021-10-19T00:00:00+00:00", "until": "2021-10-21T00:00:00+00:00"},
        "stories": [{"id": "s_wide", "rank": 1, "article_ids": ["w0", "w1", "w2"]}]})})
    store.put_digests("2021-10-19", {"json": json.dumps({
        "period": {"since": "2021-10-19T00:00:00+00:00", "until": "2021-10-20T00:00:00+00:00"},
        "stories": [{"id": "s_old", "rank": 2, "article_ids": ["old1"]}]})})
    # A later digest must not count: re-running an old date gives the same answer.
    store.put_digests("2021-10-21", {"json": json.dumps({
        "period": {"since": "2021-10-21T00:00:00+00:00", "until": "2021-10-22T00:00:00+00:00"},
        "stories": [{"id": "s_wide", "rank": 1, "article_ids": ["w0"]}]})})
    store.record_history("s_old", "s_dev", "merge")
    earlier = dg._earlier_digests(store, since, until, "2021-10-20", 14)
    ranked = dg._rank(store, [_story(k, v) for k, v in sorted(groups.items())], groups,
                      earlier, since, until)
    order = [c.story.id for c in ranked]
    assert order == ["s_wide", "s_dev", "s_big", "s_two", "s_early", "s_repeat"]
    by = {c.story.id: c for c in ranked}
    assert [by[s].status for s in order] == ["new", "developing", "new", "new", "new", "repeat"]
    assert by["s_dev"].previous == [{"digest": "2021-10-19", "story_id": "s_old", "rank": 2}]
    assert by["s_repeat"].novelty == pytest.approx(dg.NOVELTY_FLOOR)
    assert (by["s_wide"].outlets, by["s_wide"].leans) == (3, 3)
    assert (by["s_big"].outlets, by["s_big"].leans) == (1, 1)
    # the documented formula, literally
    w = by["s_wide"]
    assert w.recency == pytest.approx(0.5 + 0.5 * 18 / 24)
    assert w.score == pytest.approx((1.0 * 2 + 1.0 * 2 + 0.5 * 3) * w.recency * 1.0)
    store.close()


def test_periods_keys_and_formats() -> None:
    d0, d1 = dg.day_period(DAY.date())
    assert dg.period_key(d0, d1) == "2021-10-20"
    assert dg.period_key(d0, d1 + timedelta(days=2)) == "2021-10-20..2021-10-22"
    assert dg.period_key(d0 + timedelta(hours=6), d1) == "2021-10-20T0600Z..2021-10-21T0000Z"
    assert dg.resolve_period(None, None, None, today=DAY.date()) == dg.day_period(
        DAY.date() - timedelta(days=1))
    assert dg.resolve_period("2021-10-20", None, None) == (d0, d1)
    for bad in (("2021-10-2", None, None), ("2021-10-20", d0, d1), (None, d0, None),
                (None, d1, d0)):
        with pytest.raises(InvalidInput):
            dg.resolve_period(*bad)
    assert dg.parse_formats("markdown, html,md") == ("md", "html")
    with pytest.raises(InvalidInput):
        dg.parse_formats("html,pdf")
    assert dg.safe_url("javascript:alert(1)") is None
    assert dg.safe_url("https://a.example/x?y=1") == "https://a.example/x?y=1"


def test_empty_period_raises_not_found(pipeline: Pipeline) -> None:
    with pytest.raises(NotFound, match="no articles published"):
        dg.build_digest(pipeline, since=DAY, until=DAY + timedelta(days=1))
    with pytest.raises(InvalidInput):
        dg.build_digest(pipeline, since=DAY, until=DAY)


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STORYLINE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "storyline.service.cli", "digest", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_exit_codes_without_data(tmp_path: Path) -> None:
    missing = _cli(tmp_path / "nothing", "--date", "2021-10-20")
    assert missing.returncode == 8 and "no database" in missing.stderr
    assert "Traceback" not in missing.stderr
    SQLiteStore(tmp_path / "empty" / "storyline.db").close()
    empty = _cli(tmp_path / "empty", "--date", "2021-10-20")
    assert empty.returncode == 3, empty.stderr
    assert "no articles published" in empty.stderr and "Traceback" not in empty.stderr
    bad = _cli(tmp_path / "empty", "--date", "20-10-2021")
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr


# ----------------------------------------------------------------------- end to end (models)
def _allsides(shared_data: Path) -> dict[str, list[Article]]:
    from storyline.service.ingest import read_source

    by: dict[str, list[Article]] = {}
    for p in read_source(shared_data / "allsides" / "articles.jsonl"):
        if p.article is not None:
            by.setdefault(str(p.article.story_id), []).append(p.article)
    for v in by.values():
        v.sort(key=lambda a: a.id)
    return by


def world_articles(shared_data: Path) -> dict[str, list[Article]]:
    """Four stories over two days (keys: the expected role of each story).

    ``wide``: 3 outlets, 3 leans; ``two``: 2 outlets, 2 leans (one hostile title, one
    javascript: URL); ``one``: 3 articles from one outlet; ``dev``: two articles the day
    before, one on the day.
    """
    src = _allsides(shared_data)

    def at(arts: list[Article], hours: list[float]) -> list[Article]:
        return [replace(a, published_at=DAY + timedelta(hours=h)) for a, h in
                zip(arts, hours, strict=True)]

    wide = at(src["5608"], [20, 20.1, 20.2])
    # Hostile text: every title (so the headline) carries a script tag; markup in the text.
    two = [replace(a, title=a.title + HOSTILE) for a in at(src["5620"][:2], [20, 20.1])]
    two[0] = replace(two[0], text=two[0].text + ' <img src=x onerror="alert(1)"> '
                     "[x](javascript:alert(1))")
    two[1] = replace(two[1], url="javascript:alert(document.cookie)")
    one = [replace(a, source="BBC News", lean="center") for a in
           at(src["5613"], [20, 20.1, 20.2])]
    dev = at(src["5646"], [-6, -5.9, 1])
    return {"wide": wide, "two": two, "one": one, "dev": dev}


@pytest.fixture()
def world(pipeline: Pipeline, shared_data: Path) -> tuple[Pipeline, dict[str, list[Article]]]:
    pipe = pipeline
    assert pipe.clusterer is not None, "the digest needs story clustering"
    arts = world_articles(shared_data)
    pipe.ingest([a for v in arts.values() for a in v])
    sids = {k: {pipe.store.story_of([a.id for a in v])[a.id] for a in v}
            for k, v in arts.items()}
    # The scenario needs each group to be one story: say so plainly if clustering changes.
    assert all(len(s) == 1 for s in sids.values()), sids
    assert len({next(iter(s)) for s in sids.values()}) == 4, sids
    return pipe, arts


def _sid(pipe: Pipeline, arts: list[Article]) -> str:
    return str(pipe.store.story_of([arts[0].id])[arts[0].id])


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_digest_end_to_end(world: tuple[Pipeline, dict[str, list[Article]]],
                           tmp_path: Path) -> None:
    pipe, arts = world
    out = tmp_path / "digests"
    prev_since, prev_until = dg.day_period((DAY - timedelta(days=1)).date())
    before = dg.build_digest(pipe, since=prev_since, until=prev_until, out_dir=out)
    assert before.featured == [_sid(pipe, arts["dev"])]
    # The earlier digest describes the story as it was then: only its first two articles.
    assert before.document["stories"][0]["article_ids"] == sorted(a.id for a in arts["dev"][:2])

    since, until = dg.day_period(DAY.date())
    res = dg.build_digest(pipe, since=since, until=until, top=10, out_dir=out)
    doc = res.document
    validate(doc)
    validate(before.document)
    assert res.key == "2021-10-20" and res.articles == 9
    ids = {k: _sid(pipe, v) for k, v in arts.items()}
    # ranking: volume + outlets + leans; the developing story has one late-night article
    assert res.featured == [ids["wide"], ids["two"], ids["one"], ids["dev"]]
    stories = {s["id"]: s for s in doc["stories"]}
    dev = stories[ids["dev"]]
    assert dev["status"] == "developing"
    assert dev["previous"] == [{"digest": "2021-10-19", "story_id": ids["dev"], "rank": 1}]
    assert stories[ids["wide"]]["status"] == "new"
    wide = stories[ids["wide"]]
    assert [g["lean"] for g in wide["coverage"]] == ["left", "center", "right"]
    assert wide["summary"]["sentences"] and all(s["citations"] for s in wide["summary"]
                                                ["sentences"])
    n_sources = len(wide["sources"])
    assert all(1 <= n <= n_sources for s in wide["summary"]["sentences"] for n in s["citations"])
    urls = {a.id: a.url for a in arts["wide"]}
    assert all(src["url"] == urls[src["article_id"]] for src in wide["sources"])
    assert wide["actors"], "the Colin Powell story has actors"
    top_actor = wide["actors"][0]
    assert top_actor["portrayal"]["overall"]["label"] in ("supportive", "critical", "neutral",
                                                          "mixed")
    assert set(top_actor["portrayal"]["by_lean"]) <= {"left", "center", "right"}

    # files and the store hold the same bodies
    for fmt in ("html", "md", "json"):
        body = (out / f"2021-10-20.{fmt}").read_text(encoding="utf-8")
        assert body == res.bodies[fmt] == pipe.store.get_digest("2021-10-20", fmt)
    assert json.loads(res.bodies["json"]) == doc

    html = res.bodies["html"]
    assert 'href="2021-10-19.html#story-' + ids["dev"] in html
    assert html.count('<article class="story"') == 4
    assert html.count('<svg class="chart"') >= 1
    assert "generated for 2021-10-20" in html.lower()
    # hostile article text is inert in every format
    assert "<script" not in html.lower() and "<img" not in html.lower()
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    tags = _Tags()
    tags.feed(html)
    assert {t for t, _ in tags.tags} <= {
        "html", "head", "meta", "title", "style", "body", "main", "header", "h1", "p", "nav",
        "ol", "li", "a", "span", "article", "h2", "div", "sup", "h3", "svg", "line", "text",
        "rect", "circle", "ul", "strong", "br", "blockquote", "cite", "dl", "dt", "dd",
        "footer"}
    assert not any("src" in a or k == "link" for k, a in tags.tags), "no external resource"
    hrefs = [a["href"] or "" for k, a in tags.tags if k == "a"]
    assert all(h.startswith(("https://", "http://", "#", "2021-10-19.html")) for h in hrefs)
    md = res.bodies["md"]
    assert "\\<script\\>" in md
    assert not re.search(r"(?<!\\)<", md), "every '<' from article text is escaped"
    assert not re.search(r"(?<!\\)\]\(javascript:", md)
    assert "**Developing story**" in md

    # idempotent: the same bodies again, nothing re-summarised
    again = dg.build_digest(pipe, since=since, until=until, top=10, out_dir=out)
    assert again.bodies == res.bodies
    assert again.recomputed == []
    assert again.stages.get("summarise", 0.0) == 0.0
    # the earlier day is unchanged by the later one
    assert dg.build_digest(pipe, since=prev_since, until=prev_until).bodies["json"] == \
        before.bodies["json"]
    # schema is not vacuous
    broken = json.loads(res.bodies["json"])
    del broken["stories"][0]["summary"]
    with pytest.raises(Exception, match="summary"):
        validate(broken)


def test_interrupted_run_resumes_and_only_changed_stories_are_resummarised(
    world: tuple[Pipeline, dict[str, list[Article]]],
) -> None:
    pipe, arts = world
    since, until = dg.day_period(DAY.date())
    real = pipe.story_view
    calls: list[str] = []

    def flaky(story_id: str, **kw: Any) -> Any:
        calls.append(story_id)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(story_id, **kw)

    pipe.story_view = flaky  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        dg.build_digest(pipe, since=since, until=until)
    pipe.story_view = real  # type: ignore[method-assign]
    done = calls[:2]
    # Resumed: the two stories finished before the interruption come from the cache.
    first = dg.build_digest(pipe, since=since, until=until)
    assert len(first.featured) == 4
    assert set(first.recomputed) == set(first.featured) - set(done)

    # One article's content changes: exactly its story is summarised again.
    target = arts["one"][1]
    sid = _sid(pipe, arts["one"])
    cached_before = pipe.store.get_output(sid, "analysis")
    pipe.ingest([replace(target, text=target.text + " Police said the attacker acted alone.")])
    changed = dg.build_digest(pipe, since=since, until=until)
    assert changed.featured == first.featured
    assert changed.recomputed == [sid]
    cached_after = pipe.store.get_output(sid, "analysis")
    assert cached_before is not None and cached_after is not None
    assert cached_after[0] != cached_before[0], "the cache key follows the story's content"
    assert dg.build_digest(pipe, since=since, until=until).recomputed == []


# ----------------------------------------------------------- audit w16: digest regressions
def _ingest(pipe: Pipeline, shared_data: Path, *groups: str) -> dict[str, list[Article]]:
    arts = {k: v for k, v in world_articles(shared_data).items() if k in groups}
    pipe.ingest([a for v in arts.values() for a in v])
    return arts


def test_a_run_with_fewer_formats_replaces_every_stored_format(
    pipeline: Pipeline, shared_data: Path, tmp_path: Path,
) -> None:
    """Every run stores html, md and json of its key together; --format only picks the files
    written to --out (the key's files of other formats there are removed, being older)."""
    dev = _ingest(pipeline, shared_data, "dev")["dev"]
    since, until = dg.day_period((DAY - timedelta(days=1)).date())
    out = tmp_path / "out"
    first = dg.build_digest(pipeline, since=since, until=until, out_dir=out)
    assert first.document["totals"]["articles"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "2021-10-19.html", "2021-10-19.json", "2021-10-19.md"]
    pipeline.delete(dev[0].id)
    res = dg.build_digest(pipeline, since=since, until=until, formats=["json"], out_dir=out)
    doc = json.loads(pipeline.store.get_digest("2021-10-19", "json"))
    assert doc == res.document and doc["totals"]["articles"] == 1
    # the page and the text served for the key describe the same run as its JSON
    assert pipeline.store.get_digest("2021-10-19", "html") == dg.render_html(doc)
    assert pipeline.store.get_digest("2021-10-19", "md") == dg.render_markdown(doc)
    assert all(dev[0].id not in pipeline.store.get_digest("2021-10-19", f)
               for f in dg.FORMATS)
    assert set(res.files) == {"json"} and set(res.bodies) == {"html", "md", "json"}
    assert sorted(p.name for p in out.iterdir()) == ["2021-10-19.json"]


@pytest.mark.parametrize(("group", "day", "kind"), [
    ("wide", DAY, "analysis"),  # the story wholly in the period: its current view
    ("dev", DAY - timedelta(days=1), "analysis@2021-10-20T00:00:00+00:00"),  # as of then
])
def test_a_digest_at_another_budget_keeps_the_stored_default_analysis(
    pipeline: Pipeline, shared_data: Path, group: str, day: datetime, kind: str,
) -> None:
    """The stored analyses are the default budget's (what API reads and the nightly digest
    use); a digest built at another budget keeps entries of its own."""
    _ingest(pipeline, shared_data, group)
    since, until = dg.day_period(day.date())
    default = dg.build_digest(pipeline, since=since, until=until)
    stored = {sid: got for sid in default.featured
              if (got := pipeline.store.get_output(sid, kind)) is not None}
    assert stored
    other = dg.build_digest(pipeline, since=since, until=until, budget_words=30)
    assert {sid: pipeline.store.get_output(sid, kind) for sid in stored} == stored
    assert other.document != default.document  # shorter summaries, from their own entries
    again = dg.build_digest(pipeline, since=since, until=until)
    assert again.bodies == default.bodies and again.recomputed == []


def test_an_emptied_period_removes_its_stored_digest(
    pipeline: Pipeline, shared_data: Path, tmp_path: Path,
) -> None:
    """Every article of a digested period deleted (a takedown): the re-run exits NotFound
    and the old digest is no longer stored or in --out, and the message says so."""
    dev = _ingest(pipeline, shared_data, "dev")["dev"]
    since, until = dg.day_period((DAY - timedelta(days=1)).date())
    out = tmp_path / "out"
    dg.build_digest(pipeline, since=since, until=until, out_dir=out)
    for a in dev[:2]:
        pipeline.delete(a.id)
    with pytest.raises(NotFound, match=r"nothing to digest \(removed the stored digest and "
                                       r"files of 2021-10-19\)"):
        dg.build_digest(pipeline, since=since, until=until, out_dir=out)
    assert "2021-10-19" not in pipeline.store.digest_dates()
    assert list(out.iterdir()) == []
    with pytest.raises(NotFound) as info:  # nothing left to remove: nothing said
        dg.build_digest(pipeline, since=since, until=until, out_dir=out)
    assert "removed" not in str(info.value)


def test_a_period_of_articles_in_no_story_removes_its_stored_digest(
    data_dir: Path, embedder: Any, shared_data: Path,
) -> None:
    from storyline.service.settings import Settings

    pipe = Pipeline(Settings(data_dir=data_dir), embedder=embedder, clusterer=False)
    try:
        pipe.ingest(world_articles(shared_data)["one"])
        pipe.store.put_digests("2021-10-20", {"json": "{}", "html": "<p>", "md": "#"})
        since, until = dg.day_period(DAY.date())
        with pytest.raises(NotFound, match=r"no active story.*\(removed the stored digest "
                                           r"of 2021-10-20\)"):
            dg.build_digest(pipe, since=since, until=until)
        assert pipe.store.digest_dates() == []
    finally:
        pipe.store.close()


def test_dates_at_the_ends_of_the_calendar_are_input_errors(tmp_path: Path) -> None:
    from datetime import date, timezone

    with pytest.raises(InvalidInput, match="--date: 9999-12-31 is out of range"):
        dg.resolve_period("9999-12-31", None, None)
    assert dg.resolve_period("9999-12-30", None, None)[1] == datetime(9999, 12, 31, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="out of range"):
        dg.day_period(date.max)
    plus1, minus1 = timezone(timedelta(hours=1)), timezone(timedelta(hours=-1))
    with pytest.raises(InvalidInput, match=r"--since: .* out of range"):
        dg.resolve_period(None, datetime(1, 1, 1, tzinfo=plus1), datetime(1, 1, 2, tzinfo=UTC))
    with pytest.raises(InvalidInput, match=r"--until: .* out of range"):
        dg.resolve_period(None, datetime(9999, 12, 31, tzinfo=UTC),
                          datetime(9999, 12, 31, 23, 30, tzinfo=minus1))
    # demo: the days of the ingested articles
    late = Article(id="x", text="t", published_at=datetime(9999, 12, 31, 12, tzinfo=UTC))
    with pytest.raises(InvalidInput, match="out of range"):
        dg.digest_period_for([late])
    # the lookback of a period starting on 0001-01-01 stops at the first day
    store = SQLiteStore(tmp_path / "db.sqlite")
    store.put_digests("0001-01-01", {"json": json.dumps({
        "period": {"since": "0001-01-01T00:00:00+00:00", "until": "0001-01-02T00:00:00+00:00"},
        "stories": [{"id": "s1", "rank": 1, "article_ids": ["a"]}]})})
    since, until = dg.day_period(date(1, 1, 2))
    earlier = dg._earlier_digests(store, since, until, "0001-01-02", 14)
    assert earlier.by_story == {"s1": [("0001-01-01", 1)]}
    assert dg._earlier_digests(store, *dg.day_period(date.min), "0001-01-01", 14).by_story == {}
    store.close()


def test_a_digest_of_the_first_day_of_the_calendar(pipeline: Pipeline,
                                                   shared_data: Path) -> None:
    src = world_articles(shared_data)["one"][:1]
    first = datetime(1, 1, 1, 12, tzinfo=UTC)
    pipeline.ingest([replace(src[0], published_at=first)])
    since, until = dg.resolve_period("0001-01-01", None, None)
    res = dg.build_digest(pipeline, since=since, until=until)
    assert res.key == "0001-01-01" and len(res.featured) == 1
    validate(res.document)


def test_since_and_until_must_be_whole_minutes() -> None:
    """Keys name periods to the minute: 03:47:30 and 03:47 would share one key."""
    s = datetime(2021, 10, 17, 20, tzinfo=UTC)
    u = datetime(2021, 10, 18, 3, 47, tzinfo=UTC)
    assert dg.resolve_period(None, s, u) == (s, u)
    with pytest.raises(InvalidInput, match=r"--until: .* not a whole minute"):
        dg.resolve_period(None, s, u.replace(second=30))
    with pytest.raises(InvalidInput, match=r"--since: .* not a whole minute"):
        dg.resolve_period(None, s.replace(microsecond=1), u)


def test_a_digest_covering_a_period_is_not_an_earlier_one(
    pipeline: Pipeline, shared_data: Path,
) -> None:
    """Re-running a day after a longer digest that covers it was built: byte-identical (the
    longer one is not an "earlier digest" of the day)."""
    _ingest(pipeline, shared_data, "dev", "one")
    since, until = dg.day_period(DAY.date())
    day = dg.build_digest(pipeline, since=since, until=until)
    assert {s["status"] for s in day.document["stories"]} == {"new"}
    longer = dg.build_digest(pipeline, since=since - timedelta(days=1), until=until)
    assert longer.key == "2021-10-19..2021-10-20"
    again = dg.build_digest(pipeline, since=since, until=until)
    assert again.bodies == day.bodies
    # a sliding window that ended before this day's end still counts as earlier
    window = dg.build_digest(pipeline, since=since - timedelta(hours=12),
                             until=until - timedelta(hours=3))
    later = dg.build_digest(pipeline, since=since, until=until)
    assert window.key in {p["digest"] for s in later.document["stories"] for p in s["previous"]}


def _example(status: str) -> dict[str, Any]:
    from storyline.service.api.digests import DIGEST_EXAMPLE

    doc = json.loads(json.dumps(DIGEST_EXAMPLE))
    doc["stories"][0]["status"] = status
    return doc


def test_previous_coverage_caption_follows_the_status() -> None:
    dev, rep = dg.render_html(_example("developing")), dg.render_html(_example("repeat"))
    assert "Developing story — earlier coverage:" in dev
    assert "Featured before in:" in rep and "Developing story" not in rep
    assert 'href="2021-10-17.html#story-s-000041"' in rep
