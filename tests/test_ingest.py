"""Parsing sources: every bad input gets a clear error naming the line and the field."""

from __future__ import annotations

import functools
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from storyline.models.errors import InvalidArticle, InvalidInput
from storyline.models.types import Article
from storyline.service.ingest import (
    parse_article,
    parse_datetime,
    read_articles_jsonl,
    read_source,
)


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


# -- audit 2: feeds, folders, dates ---------------------------------------------------------
def _feed(path: Path, body: str) -> Path:
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n{body}', encoding="utf-8")
    return path


def _articles(src: Path | str, **kw: object) -> dict[str, Article]:
    return {o.article.id: o.article for o in read_source(src, **kw) if o.article}  # type: ignore[arg-type]


def test_feed_text_follows_the_declared_type_and_html_is_decoded(tmp_path: Path) -> None:
    atom = _feed(tmp_path / "plain.atom", """<feed xmlns="http://www.w3.org/2005/Atom">
<title>Plain Atom</title><id>urn:x</id><updated>2021-10-18T12:00:00Z</updated>
<entry><title type="text">Inflation &lt;3% as rates hold</title><id>urn:e1</id>
<updated>2021-10-18T12:00:00Z</updated><content type="text">Inflation stayed at &lt;3% in
October, while unemployment was &gt;5% in the region, the bank said.</content></entry>
<entry><title type="html">&lt;em&gt;Rates&lt;/em&gt; hold &amp;amp; markets rally</title>
<id>urn:e2</id><updated>2021-10-18T13:00:00Z</updated>
<summary type="html">&lt;p&gt;Stocks rose as rates held.&lt;/p&gt;</summary></entry>
</feed>""")
    rss = _feed(tmp_path / "amp.xml", """<rss version="2.0"><channel><title>AT&amp;T News</title>
<item><title>Quotes</title><guid>amp2</guid>
<description><![CDATA[The senator said &#8220;no deal&#8221; &mdash; and left.]]></description>
</item>
<item><title>Prices</title><guid>amp3</guid><description>Tom &amp;amp; Jerry caf&amp;eacute;:
price &lt; 5 and x&gt;3 &lt;b&gt;now&lt;/b&gt;.</description></item>
</channel></rss>""")
    a = _articles(atom)
    assert a["urn:e1"].text.startswith("Inflation stayed at <3% in\nOctober, while "
                                       "unemployment was >5% in the region")
    assert a["urn:e1"].title == "Inflation <3% as rates hold"
    assert a["urn:e2"].title == "Rates hold & markets rally"
    assert a["urn:e2"].text == "Stocks rose as rates held."
    b = _articles(rss)
    assert b["amp2"].text == "The senator said \u201cno deal\u201d \u2014 and left."
    assert b["amp3"].text == "Tom & Jerry café: price < 5 and x>3 now."


def test_an_empty_feed_or_a_file_that_is_not_a_feed_is_invalid_input(tmp_path: Path) -> None:
    cases = {
        "empty.xml": '<rss version="2.0"><channel><title>Empty</title></channel></rss>',
        "empty.atom": '<feed xmlns="http://www.w3.org/2005/Atom"><title>E</title></feed>',
        "page.rss": "<html><body>hello</body></html>",
    }
    for name, body in cases.items():
        with pytest.raises(InvalidInput, match="no entries"):
            list(read_source(_feed(tmp_path / name, body)))


def test_folder_reads_only_its_regular_files_and_reports_what_it_skips(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "A.JSONL").write_text(json.dumps({"id": "upper-jsonl", "text": "Upper."}) + "\n")
    (d / "B.TXT").write_text("Title\nUpper-case text file.\n")
    (d / "loop.jsonl").symlink_to(".", target_is_directory=True)  # a link loop
    (d / "nested.jsonl").mkdir()  # a folder named like a file
    (d / "nested.jsonl" / "c.jsonl").write_text(json.dumps({"id": "deep", "text": "D."}) + "\n")
    (d / "sub").mkdir()
    (d / "notes.md").write_text("not an article")
    (d / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    (d / ".hidden.jsonl").write_text("{broken")
    out = list(read_source(d))
    assert sorted(o.article.id for o in out if o.article) == ["B", "upper-jsonl"]
    errs = {Path(o.source or "").name: o.error.detail for o in out if o.error}
    assert set(errs) == {"loop.jsonl", "nested.jsonl", "sub", "notes.md", "gone.jsonl"}
    assert all(o.source and Path(o.source).parent == d for o in out)  # nothing recursed
    assert "folder" in errs["loop.jsonl"] and "folder" in errs["sub"]
    assert "unknown format" in errs["notes.md"] and "broken link" in errs["gone.jsonl"]
    # a file named with an upper-case suffix, given directly
    assert [o.article.id for o in read_source(d / "A.JSONL") if o.article] == ["upper-jsonl"]


def test_parse_datetime_zones_and_years() -> None:
    def utc(s: str) -> datetime:
        return parse_datetime(s)

    assert utc("2021-10-18T12:00:00z") == datetime(2021, 10, 18, 12, tzinfo=UTC)
    assert utc("Mon, 18 Oct 2021 12:00 CEST") == datetime(2021, 10, 18, 10, tzinfo=UTC)
    assert utc("Mon, 18 Oct 2021 12:00:00 CET") == datetime(2021, 10, 18, 11, tzinfo=UTC)
    assert utc("2021-10-18 12:00:00 EDT") == datetime(2021, 10, 18, 16, tzinfo=UTC)
    assert utc("Mon, 18 Oct 2021 12:00:00 +0200 (CEST)") == datetime(2021, 10, 18, 10,
                                                                     tzinfo=UTC)
    for unknown in ("Mon, 18 Oct 2021 12:00:00 IST", "Mon, 18 Oct 2021 12:00:00 GMT+2",
                    "2021-10-18 12:00:00 XYZ"):
        with pytest.raises(InvalidArticle, match="time zone"):
            parse_datetime(unknown)
    with pytest.raises(InvalidArticle, match="out of range"):  # not read as 2000-12-31
        parse_datetime("Sat, 01 Jan 0001 00:00:00 +0100")
    assert utc("Fri, 01 Jan 0050 00:00:00 +0000").year == 50  # not 2050


def test_feed_dates_use_feedparsers_reading_only_when_it_is_safe(tmp_path: Path) -> None:
    dates = ["2021-10-18 12:00:00 EDT", "18 Oct 2021", "2021-10-18T12:00:00z",
             "Mon, 18 Oct 2021 12:00 CEST", "Mon, 18 Oct 2021 12:00:00 IST",
             "Sat, 01 Jan 0001 00:00:00 +0100", "Monday, October 18, 2021 - 12:00"]
    items = "".join(
        f"<item><guid>d{i}</guid><pubDate>{d}</pubDate><description>Item {i} text."
        "</description></item>" for i, d in enumerate(dates))
    feed = _feed(tmp_path / "dates.xml",
                 f'<rss version="2.0"><channel><title>D</title>{items}</channel></rss>')
    out = list(read_source(feed))
    got = {o.article.id: o.article.published_at for o in out if o.article}
    assert got == {
        "d0": datetime(2021, 10, 18, 16, tzinfo=UTC),
        "d1": datetime(2021, 10, 18, tzinfo=UTC),  # feedparser's reading
        "d2": datetime(2021, 10, 18, 12, tzinfo=UTC),
        "d3": datetime(2021, 10, 18, 10, tzinfo=UTC),
    }
    errs = {o.line: o.error for o in out if o.error}
    assert set(errs) == {5, 6, 7} and all(e.field == "published_at" for e in errs.values())


def test_feed_url_is_a_real_link_resolved_against_the_feeds_link(tmp_path: Path) -> None:
    feed = _feed(tmp_path / "links.xml", """<rss version="2.0"><channel><title>L</title>
<link>http://example.com/news/</link>
<item><guid>g1</guid><description>Guid only, not a URL.</description></item>
<item><guid isPermaLink="false">g2</guid><link>story2.html</link>
<description>Relative link.</description></item>
<item><guid>g3</guid><link>/abs/3</link><description>Root-relative link.</description></item>
<item><guid>https://example.com/p/4</guid><description>Guid that is a URL.</description></item>
</channel></rss>""")
    urls = {i: a.url for i, a in _articles(feed).items()}
    assert urls == {"g1": None, "g2": "http://example.com/news/story2.html",
                    "g3": "http://example.com/abs/3",
                    "https:%2F%2Fexample.com%2Fp%2F4": "https://example.com/p/4"}


def test_one_line_txt_longer_than_a_title_is_its_text(tmp_path: Path) -> None:
    p = tmp_path / "long.txt"
    line = "The council met. " * 150  # 2,550 characters, one line
    p.write_text(line)
    (o,) = list(read_source(p))
    assert o.error is None and o.article is not None
    assert (o.article.title, o.article.text) == ("", line.strip())
    q = tmp_path / "short.txt"
    q.write_text("Only a line.\n")
    (s,) = list(read_source(q))
    assert s.article is not None and (s.article.title, s.article.text) == ("", "Only a line.")


def test_short_feed_items_do_not_log_trafilatura_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed = _feed(tmp_path / "short.xml", """<rss version="2.0"><channel><title>S</title>
<item><guid>s1</guid><description>&lt;p&gt;A short item.&lt;/p&gt;</description></item>
</channel></rss>""")
    with caplog.at_level(logging.DEBUG):
        assert list(_articles(feed)) == ["s1"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# -- feed URLs over a local HTTP server ---------------------------------------------------
@pytest.fixture()
def www(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_feed_ids_and_links_are_the_same_from_a_file_and_a_url(
    www: tuple[str, Path]
) -> None:
    url, root = www
    _feed(root / "feed.xml", f"""<rss version="2.0"><channel><title>Local</title>
<link>{url}/</link>
<item><guid>lat-1</guid><link>news/1.html</link><description>One.</description></item>
<item><link>news/2.html</link><description>Two.</description></item>
</channel></rss>""")
    from_file = _articles(root / "feed.xml")
    from_url = _articles(f"{url}/feed.xml")
    assert list(from_file) == list(from_url) == ["lat-1", "news%2F2.html"]
    assert [a.url for a in from_url.values()] == [f"{url}/news/1.html", f"{url}/news/2.html"]
    assert [a.url for a in from_file.values()] == [a.url for a in from_url.values()]


def test_a_feed_url_that_never_answers_times_out(tmp_path: Path) -> None:
    with socket.socket() as s:  # accepts connections (the backlog) and never answers
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        t0 = time.monotonic()
        with pytest.raises(InvalidInput, match="timed out"):
            list(read_source(f"http://127.0.0.1:{s.getsockname()[1]}/feed.xml", timeout_s=1))
        assert time.monotonic() - t0 < 10


def test_a_feed_url_over_the_size_cap_is_refused(
    www: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import storyline.service.ingest as ingest

    url, root = www
    _feed(root / "big.xml", '<rss version="2.0"><channel><title>B</title>'
          + "<item><guid>x</guid><description>Text.</description></item>" * 500
          + "</channel></rss>")
    monkeypatch.setattr(ingest, "FEED_MAX_BYTES", 4096)
    with pytest.raises(InvalidInput, match="over 4,096 bytes"):
        list(read_source(f"{url}/big.xml"))


def test_a_feed_entrys_linked_page_is_fetched_with_the_feeds_limits(
    www: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import storyline.service.ingest as ingest

    url, root = www
    (root / "news").mkdir()
    body = "The council approved the new transit budget after a long debate. " * 12
    (root / "news" / "1.html").write_text(
        f"<html><head><title>T</title></head><body><article><p>{body}</p></article>"
        "</body></html>", encoding="utf-8")
    (root / "news" / "big.html").write_text("<html><body>" + "<p>x</p>" * 2000
                                            + "</body></html>", encoding="utf-8")
    _feed(root / "feed.xml", f"""<rss version="2.0"><channel><title>Local</title>
<link>{url}/</link>
<item><guid>n1</guid><link>news/1.html</link><description>Short teaser.</description></item>
<item><guid>n2</guid><link>news/missing.html</link><description>Kept teaser.</description></item>
<item><guid>n3</guid><link>news/big.html</link><description>Big teaser.</description></item>
</channel></rss>""")
    # an intranet host's address: trafilatura's own fetcher refused it, so the
    # linked text never came in
    monkeypatch.setattr(ingest, "PAGE_MAX_BYTES", 4096)
    with caplog.at_level(logging.WARNING, logger="storyline.service.ingest"):
        arts = _articles(f"{url}/feed.xml")
    assert arts["n1"].text.startswith("The council approved the new transit budget")
    # a page that cannot be read (404, over the cap) leaves the entry its own text
    assert arts["n2"].text == "Kept teaser."
    assert arts["n3"].text == "Big teaser."
    warned = [r.getMessage() for r in caplog.records]
    assert any("missing.html: cannot read (HTTP 404" in m for m in warned)
    assert any("big.html: cannot read (over 4,096 bytes)" in m for m in warned)


class _Redirecting(_QuietHandler):
    """Serves files, and answers /away with a redirect to the ``to`` query's URL."""

    def do_GET(self) -> None:
        if self.path.startswith("/away?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
            return
        super().do_GET()


def test_a_feed_entrys_link_to_another_internal_host_is_not_fetched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The feed's publisher writes its links, and a fetched page is stored and served: a
    # link to an internal address other than the feed's own host (cloud metadata, an
    # admin page) was fetched and its text ingested.
    root = tmp_path / "www"
    root.mkdir()
    (root / "admin.html").write_text(
        "<html><body><article><p>" + "INTERNAL SECRET token=abc123. " * 20
        + "</p></article></body></html>", encoding="utf-8")
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_Redirecting, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        url = f"http://127.0.0.1:{port}"
        other = f"http://localhost:{port}"  # the same server, by another (loopback) name
        _feed(root / "feed.xml", f"""<rss version="2.0"><channel><title>Ext</title>
<item><guid>own</guid><link>{url}/admin.html</link><description>Own.</description></item>
<item><guid>x1</guid><link>{other}/admin.html</link><description>One.</description></item>
<item><guid>x2</guid><link>{url}/away?to={other}/admin.html</link>
<description>Two.</description></item>
</channel></rss>""")
        with caplog.at_level(logging.WARNING, logger="storyline.service.ingest"):
            arts = _articles(f"{url}/feed.xml")
    finally:
        server.shutdown()
        server.server_close()
    assert arts["own"].text.startswith("INTERNAL SECRET")  # the feed's own host
    assert (arts["x1"].text, arts["x2"].text) == ("One.", "Two.")
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "not fetched (localhost is a private address)" in warned
    assert "redirected to localhost, a private address" in warned


@pytest.mark.parametrize(("field", "limit"), [("source", 300), ("url", 8192), ("lang", 35),
                                              ("lean", 64), ("title", 2000)])
def test_label_fields_have_length_limits(field: str, limit: int) -> None:
    from storyline.service.ingest import parse_article

    ok = parse_article({"id": "a", "text": "Body.", field: "x" * limit})
    assert ok is not None
    with pytest.raises(InvalidArticle, match=rf"{field}.*over {limit:,} characters"):
        parse_article({"id": "a", "text": "Body.", field: "x" * (limit + 1)})
