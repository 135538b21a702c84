"""Parsing sources: every bad input gets a clear error naming the line and the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storyline.models.errors import InvalidArticle, InvalidInput
from storyline.service.ingest import parse_article, read_articles_jsonl, read_source


def _write(tmp_path: Path, lines: list[bytes], name: str = "in.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def test_good_line_parses_all_fields() -> None:
    a = parse_article({
        "id": "a1", "title": " T ", "text": "Body.", "source": "Outlet", "url": "https://x/y",
        "published_at": "2021-10-18T00:20:00-07:00", "lang": "en", "story_id": 7, "lean": "left",
    })
    assert a.id == "a1" and a.title == "T" and a.story_id == "7" and a.lean == "left"
    assert a.published_at == datetime(2021, 10, 18, 7, 20, tzinfo=UTC)


def test_naive_dates_are_taken_as_utc() -> None:
    a = parse_article({"id": "a", "text": "x", "published_at": "2021-01-02T03:04:05"})
    assert a.published_at == datetime(2021, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_bad_lines_are_reported_per_line_and_good_lines_kept(tmp_path: Path) -> None:
    big = "x" * 60_000_000  # a 60 MB text
    p = _write(tmp_path, [
        json.dumps({"id": "ok1", "text": "fine"}).encode(),
        b"{not json",
        json.dumps({"id": "no-text"}).encode(),
        json.dumps({"text": "no id"}).encode(),
        json.dumps({"id": "big", "text": big}).encode(),
        b'{"id": "bad-utf8", "text": "caf\xe9"}',
        json.dumps({"id": "bad-date", "text": "t", "published_at": "yesterday-ish"}).encode(),
        json.dumps({"id": "empty", "text": "   "}).encode(),
        json.dumps({"id": "wrong-type", "text": "t", "title": 5}).encode(),
        json.dumps(["not", "an", "object"]).encode(),
        json.dumps({"id": "ok2", "text": "also fine"}).encode(),
    ])
    out = list(read_articles_jsonl(p))
    assert [o.article.id for o in out if o.article] == ["ok1", "ok2"]
    errs = {o.line: o.error for o in out if o.error}
    assert set(errs) == {2, 3, 4, 5, 6, 7, 8, 9, 10}
    assert "invalid JSON" in errs[2].detail
    assert errs[3].field == "text" and errs[3].line == 3
    assert errs[4].field == "id"
    assert errs[5].field == "text" and "over the limit" in errs[5].detail
    assert "UTF-8" in errs[6].detail
    assert errs[7].field == "published_at" and "line 7" in errs[7].detail
    assert errs[8].field == "text"
    assert errs[9].field == "title"
    assert "JSON object" in errs[10].detail


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "empty.jsonl"
    p.write_bytes(b"")
    with pytest.raises(InvalidInput, match="empty"):
        list(read_articles_jsonl(p))


def test_control_characters_in_id_are_refused() -> None:
    with pytest.raises(InvalidArticle, match="control"):
        parse_article({"id": "a\x00b", "text": "t"})


def test_out_of_range_dates_are_reported_per_line(tmp_path: Path) -> None:
    p = _write(tmp_path, [
        json.dumps({"id": "late", "text": "t", "published_at": "9999-12-31T23:59:59-05:00"})
        .encode(),
        json.dumps({"id": "early", "text": "t", "published_at": "0001-01-01T00:00:00+05:00"})
        .encode(),
        json.dumps({"id": "ok", "text": "fine", "published_at": "9999-12-31T23:59:59Z"}).encode(),
    ])
    out = list(read_articles_jsonl(p))
    assert [o.article.id for o in out if o.article] == ["ok"]
    errs = {o.line: o.error for o in out if o.error}
    assert set(errs) == {1, 2}
    assert all(e.field == "published_at" and "out of range" in e.detail for e in errs.values())


def test_ids_that_cannot_be_one_url_path_segment_are_refused() -> None:
    for bad in ("a/b", "court-1/related", ".", ".."):
        with pytest.raises(InvalidArticle, match="'/'") as err:
            parse_article({"id": bad, "text": "t"})
        assert err.value.field == "id"
    for fine in ("5607-center", "q?x#y", "back\\slash", "50%", "a.b", "..."):
        assert parse_article({"id": fine, "text": "t"}).id == fine


def test_txt_first_line_is_title(tmp_path: Path) -> None:
    p = tmp_path / "story-1.txt"
    p.write_text("The title\nFirst paragraph.\n\nSecond.", encoding="utf-8")
    (o,) = list(read_source(p))
    assert o.article is not None
    assert (o.article.id, o.article.title) == ("story-1", "The title")
    assert o.article.text.startswith("First paragraph.")


def test_rss_feed_from_local_file(tmp_path: Path) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_text(
        """<?xml version="1.0"?><rss version="2.0"><channel><title>Daily Planet</title>
<item><guid>urn:1</guid><title>Mayor opens bridge</title><link>https://dp.example/1</link>
<pubDate>Mon, 18 Oct 2021 10:00:00 GMT</pubDate>
<description>&lt;p&gt;The mayor opened the new bridge on Monday.&lt;/p&gt;</description></item>
<item><guid>urn:2</guid><title>Empty</title><description></description></item>
</channel></rss>""",
        encoding="utf-8",
    )
    out = list(read_source(feed))
    good = [o.article for o in out if o.article]
    assert len(good) == 1
    a = good[0]
    assert a.id == "urn:1" and a.source == "Daily Planet" and "bridge" in a.text
    assert "<p>" not in a.text
    assert a.published_at == datetime(2021, 10, 18, 10, tzinfo=UTC)
    assert [o.error.field for o in out if o.error] == ["text"]


def test_feed_guids_that_are_urls_become_path_safe_ids(tmp_path: Path) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_text(
        """<?xml version="1.0"?><rss version="2.0"><channel><title>Daily Planet</title>
<item><guid>https://dp.example/2021/10%20bridge</guid><title>Bridge</title>
<description>The mayor opened the new bridge on Monday.</description></item>
<item><title>Link only</title><link>https://dp.example/2</link>
<description>The council met on Tuesday.</description></item>
</channel></rss>""",
        encoding="utf-8",
    )
    out = list(read_source(feed))
    assert [o.article.id for o in out if o.article] == [
        "https:%2F%2Fdp.example%2F2021%2F10%2520bridge", "https:%2F%2Fdp.example%2F2"]


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("a,b")
    with pytest.raises(InvalidInput, match="unknown format"):
        list(read_source(p))


def test_nul_characters_in_text_or_fields_are_refused() -> None:
    # PostgreSQL cannot store them: refused at parse time, naming the field, on every backend
    with pytest.raises(InvalidArticle, match=r"field 'text'.*NUL"):
        parse_article({"id": "a", "text": "Storm hits.\x00"})
    with pytest.raises(InvalidArticle, match=r"field 'source'.*NUL"):
        parse_article({"id": "a", "text": "Storm hits.", "source": "Wire\x00"})
    assert parse_article({"id": "a", "text": "Storm\thits.\nAgain."}).text == "Storm\thits.\nAgain."
