"""Parsing sources into :class:`Article` records: JSONL, plain .txt, RSS/Atom feeds.

Parsing is strict and per line: each bad line becomes an :class:`InvalidArticle` naming
the line and the field, and good lines still go in (the CLI exits non-zero when any
line failed). Nothing here touches the store.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from storyline.models.errors import InvalidArticle, InvalidInput
from storyline.models.jsonl import SURROGATE_MESSAGE, lone_surrogate
from storyline.models.types import Article

__all__ = [
    "ParsedLine",
    "parse_article",
    "parse_datetime",
    "read_articles_jsonl",
    "read_feed",
    "read_source",
    "read_txt",
]

MAX_ID_CHARS = 512
MAX_TITLE_CHARS = 2000
#: longest accepted value of each optional string field: a source, language or lean is a
#: short label, and a URL longer than browsers keep is not one (stored data stays bounded)
MAX_FIELD_CHARS = {"title": MAX_TITLE_CHARS, "source": 300, "url": 8192, "lang": 35,
                   "lean": 64}
_ID_RE = re.compile(r"^[^\x00-\x1f\x7f]+$")
_OPTIONAL_STR = ("title", "source", "url", "lang", "lean")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """One input record: the article, or why it was refused."""

    line: int
    article: Article | None = None
    error: InvalidArticle | None = None
    #: the file it came from, when read from a folder (else the caller's source)
    source: str | None = None


# Time-zone names a date may end with. The RFC 2822 ones (as ``email.utils`` reads them),
# plus common unambiguous ones that feeds use; any other name (IST, "GMT+2", military
# letters) is refused rather than read as UTC. Hours east of UTC.
_ZONES: dict[str, float] = {
    "UT": 0, "UTC": 0, "GMT": 0, "Z": 0,
    "EST": -5, "EDT": -4, "CST": -6, "CDT": -5, "MST": -7, "MDT": -6, "PST": -8, "PDT": -7,
    "AST": -4, "ADT": -3, "AKST": -9, "AKDT": -8, "HST": -10,
    "WET": 0, "WEST": 1, "BST": 1, "CET": 1, "CEST": 2, "EET": 2, "EEST": 3, "MSK": 3,
    "JST": 9, "AEST": 10, "AEDT": 11,
}
_DATE_WORDS = frozenset({
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
    "dec", "january", "february", "march", "april", "june", "july", "august", "september",
    "october", "november", "december", "mon", "tue", "tues", "wed", "thu", "thur", "thurs",
    "fri", "sat", "sun", "monday", "tuesday", "wednesday", "thursday", "friday",
    "saturday", "sunday", "t", "z",
})
_ZONE_WITH_OFFSET = re.compile(r"\b(?:GMT|UTC|UT)\s*[+-]\s*\d", re.IGNORECASE)
_TRAILING_ZONE = re.compile(r"^(.*?\d)\s*\(?([A-Za-z]{1,5})\)?$")


def _unknown_words(value: str) -> list[str]:
    """Words in a date that are neither month or day names nor a zone in :data:`_ZONES`."""
    return [w for w in re.findall(r"[A-Za-z]+", value)
            if w.lower() not in _DATE_WORDS and w.upper() not in _ZONES]


class _UnreadDate(InvalidArticle):
    """A date no rule here reads (as opposed to one read and refused: unknown zone, out
    of range), which a feed's own date parser may still read."""


def _bad_date(value: str, why: str, line: int | None,
              kind: type[InvalidArticle] = InvalidArticle) -> InvalidArticle:
    return kind(f"'{value[:40]}' {why}", line=line, field="published_at")


def _named_zone(value: str, zone: str, line: int | None) -> timezone:
    """The zone ``value`` ends with, by name (:data:`_ZONES`); an unknown one is refused."""
    if zone.upper() not in _ZONES:
        raise _bad_date(value, f"has an unknown time zone '{zone}'", line)
    return timezone(timedelta(hours=_ZONES[zone.upper()]))


def _parse_rfc2822(value: str, line: int | None) -> datetime | None:
    from email.utils import parsedate_to_datetime

    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt is None:
        return None
    # email.utils reads any year below 100 as 19xx/20xx, "0001" too: a year written with
    # three or four digits is taken as written (and refused below if out of range)
    for tok in re.split(r"[\s,]+", value):
        if re.fullmatch(r"\d{3,4}", tok) and int(tok) != dt.year and int(tok) < 100:
            try:
                dt = dt.replace(year=int(tok))
            except ValueError:
                raise _bad_date(value, "is out of range", line) from None
    return dt


def parse_datetime(value: str, *, line: int | None = None) -> datetime:
    """ISO 8601 (and RFC 2822 as feeds use it) to an aware UTC datetime.

    A time without a zone is taken as UTC; a zone must be a numeric offset or a name in
    :data:`_ZONES` (an unknown name is refused, not read as UTC).
    """
    s = value.strip()
    dt: datetime | None = None
    with contextlib.suppress(ValueError):  # RFC 3339 allows a lower-case t and z
        dt = datetime.fromisoformat(s.upper() if s[-1:] in "zZ" else s)
    if dt is None and _ZONE_WITH_OFFSET.search(s):  # "GMT+2": POSIX or not? ambiguous
        raise _bad_date(value, "has an ambiguous time zone (use a numeric offset)", line)
    if dt is None and (m := _TRAILING_ZONE.match(s)):
        head, zone = m.group(1), m.group(2)
        try:
            naive = datetime.fromisoformat(head)  # "2021-10-18 12:00:00 EDT"
        except ValueError:
            naive = None
        if naive is not None and naive.tzinfo is None:
            dt = naive.replace(tzinfo=_named_zone(value, zone, line))
    if dt is None:
        dt = _parse_rfc2822(s, line)
        if dt is not None and dt.tzinfo is None and (m := _TRAILING_ZONE.match(s)):
            zone = m.group(2)
            if zone.lower() not in _DATE_WORDS:  # a zone email.utils does not know
                dt = dt.replace(tzinfo=_named_zone(value, zone, line))
    if dt is None:
        raise _bad_date(value, "is not an ISO 8601 date-time", line, _UnreadDate)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-05:00: past year 9999 in UTC
        raise _bad_date(value, "is out of range in UTC", line) from None


def parse_article(
    obj: Mapping[str, Any], *, line: int | None = None, max_chars: int = 200_000
) -> Article:
    """Validate one decoded record in the article format."""
    if not isinstance(obj, Mapping):
        raise InvalidArticle("expected a JSON object", line=line)
    aid = obj.get("id")
    if isinstance(aid, int) and not isinstance(aid, bool):
        aid = str(aid)
    if not isinstance(aid, str) or not aid.strip():
        raise InvalidArticle("required, a non-empty string", line=line, field="id")
    aid = aid.strip()
    if len(aid) > MAX_ID_CHARS or not _ID_RE.match(aid):
        raise InvalidArticle(
            f"must be at most {MAX_ID_CHARS} characters without control characters",
            line=line, field="id",
        )
    if "/" in aid or aid in {".", ".."}:
        # /v1/articles/{id} is one URL path segment: '/' (even as %2F) and dot segments
        # cannot reach it
        raise InvalidArticle("must not contain '/' or be '.' or '..'", line=line, field="id")
    text = obj.get("text")
    if not isinstance(text, str):
        raise InvalidArticle("required, a string", line=line, field="text")
    if not text.strip():
        raise InvalidArticle("must not be empty", line=line, field="text")
    if len(text) > max_chars:
        raise InvalidArticle(
            f"{len(text):,} characters is over the limit of {max_chars:,}", line=line, field="text"
        )
    if "\x00" in text:
        # no database text type holds NUL (PostgreSQL refuses it), and no news text has one
        raise InvalidArticle("must not contain NUL (\\u0000) characters", line=line,
                             field="text")
    fields: dict[str, Any] = {}
    for name in _OPTIONAL_STR:
        v = obj.get(name)
        if v is not None and not isinstance(v, str):
            raise InvalidArticle("must be a string", line=line, field=name)
        if isinstance(v, str) and "\x00" in v:
            raise InvalidArticle("must not contain NUL (\\u0000) characters", line=line,
                                 field=name)
        fields[name] = v.strip() if isinstance(v, str) and v.strip() else None
    for name, limit in MAX_FIELD_CHARS.items():
        v = fields.get(name)
        if v is not None and len(v) > limit:
            raise InvalidArticle(f"over {limit:,} characters", line=line, field=name)
    title = fields.pop("title") or ""
    pub = obj.get("published_at")
    published = None
    if pub is not None:
        if not isinstance(pub, str):
            raise InvalidArticle("must be an ISO 8601 string", line=line, field="published_at")
        published = parse_datetime(pub, line=line)
    sid = obj.get("story_id")
    if (sid is not None and not isinstance(sid, str | int)) or isinstance(sid, bool):
        raise InvalidArticle("must be a string or integer", line=line, field="story_id")
    return Article(
        id=aid, text=text.strip(), title=title, published_at=published,
        story_id=None if sid is None else str(sid), **fields,
    )


def read_articles_jsonl(path: Path, *, max_chars: int = 200_000) -> Iterator[ParsedLine]:
    """Yield one :class:`ParsedLine` per non-blank line of a JSONL file."""
    seen = False
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                # utf-8-sig: a byte order mark (Windows editors write one) is not content
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                seen = True
                yield ParsedLine(n, error=InvalidArticle(f"invalid UTF-8 ({exc.reason})", line=n))
                continue
            if not text.strip():  # a byte order mark alone
                continue
            seen = True
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield ParsedLine(n, error=InvalidArticle(f"invalid JSON: {exc.msg}", line=n))
                continue
            if lone_surrogate(obj):
                yield ParsedLine(n, error=InvalidArticle(SURROGATE_MESSAGE, line=n))
                continue
            try:
                yield ParsedLine(n, article=parse_article(obj, line=n, max_chars=max_chars))
            except InvalidArticle as exc:
                yield ParsedLine(n, error=exc)
    if not seen:
        raise InvalidInput(f"{path}: no articles (the file is empty)")


def read_txt(path: Path, *, max_chars: int = 200_000) -> ParsedLine:
    """A plain-text article: first line is the title, the rest the text; id = file stem.

    A file of one line, or whose first line is longer than a title may be (2,000
    characters), has no title line: all of it is the text and the title is empty.

    A text file carries no date, so ``published_at`` is the file's modification time
    (when it reached us), which keeps it in the right day's digest.
    """
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ParsedLine(1, error=InvalidArticle(f"{path.name}: invalid UTF-8 ({exc.reason})"))
    content = content.strip()
    title, _, body = content.partition("\n")
    title, body = title.strip(), body.strip()
    if not body or len(title) > MAX_TITLE_CHARS:
        title, body = "", content
    try:
        art = parse_article(
            {"id": path.stem, "title": title, "text": body,
             "published_at": datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()},
            max_chars=max_chars,
        )
    except InvalidArticle as exc:
        return ParsedLine(1, error=InvalidArticle(f"{path.name}: {exc.detail}"))
    return ParsedLine(1, article=art)


# -- feeds --------------------------------------------------------------------------------
#: a feed URL: seconds to connect and between received bytes, and for the whole download
FEED_TIMEOUT_S = 20.0
FEED_DEADLINE_S = 60.0
#: a feed URL's response is refused past this size (the largest real feeds are a few MB)
FEED_MAX_BYTES = 20 * 1024 * 1024
#: the most of an entry's linked article page read (a news page is far smaller)
PAGE_MAX_BYTES = 5 * 1024 * 1024

_TAG = re.compile(r"<[A-Za-z/!?]")


class _TextOf(HTMLParser):
    """The text of an HTML fragment: tags dropped (script/style with their content),
    character references decoded, whitespace collapsed."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    _INLINE = frozenset({"a", "abbr", "b", "bdi", "bdo", "cite", "code", "data", "dfn", "em",
                         "font", "i", "kbd", "mark", "q", "s", "samp", "small", "span",
                         "strong", "sub", "sup", "time", "u", "var", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._SKIP:
            self.skipping += 1
        if tag not in self._INLINE:  # a block ends a word; <b>, <a>, … do not
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self.skipping:
            self.skipping -= 1
        if tag not in self._INLINE:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)

    @classmethod
    def of(cls, html: str) -> str:
        p = cls()
        p.feed(html)
        p.close()
        return re.sub(r"\s+", " ", "".join(p.parts)).strip()


def _quiet_trafilatura() -> None:
    """trafilatura logs ERROR lines ("empty HTML tree", "parsed tree length") for every
    short feed item it has nothing to extract from; they are not errors of ours (the
    fallback below takes over), and the CLI prints one line per real error."""
    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)


def _html_to_text(html: str) -> str:
    """Text of an HTML fragment (a feed entry's content), entities decoded once."""
    if not _TAG.search(html):
        return unescape(html).strip()
    try:
        import trafilatura

        extracted = trafilatura.extract(html, include_comments=False)
    except Exception:  # trafilatura raises assorted parser errors on fragments
        extracted = None
    if extracted:
        return str(extracted)  # parsed by lxml: entities already decoded
    return _TextOf.of(html)


def _detail_text(value: str, kind: str | None, *, title: bool = False) -> str:
    """A feed text construct as text: feedparser reports its type; ``text/plain`` is
    already decoded text (a '<' in it is a character, not a tag)."""
    if kind == "text/plain":
        return value.strip()
    return _TextOf.of(value) if title else _html_to_text(value)


def _feed_id(guid: Any) -> Any:
    """A feed entry's guid or link (often a URL) as an article id: '/' cannot be in one
    (see :func:`parse_article`), so it is percent-encoded, and '%' with it to stay one-to-one.
    """
    if not isinstance(guid, str):
        return guid
    return guid.replace("%", "%25").replace("/", "%2F")


def _is_web_url(url: str | None) -> bool:
    if not url:
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _entry_url(e: Mapping[str, Any], base: str | None) -> str | None:
    """The entry's web link: its (alternate) ``<link>``, resolved against ``base``; a
    guid that feedparser took as the permalink only when it is an absolute http(s) URL."""
    links = [lk.get("href") for lk in e.get("links") or ()
             if lk.get("rel", "alternate") == "alternate" and lk.get("href")]
    # without a <link>: feedparser's link is the <guid> (isPermaLink), an id, not
    # necessarily a URL, and not resolved
    url = (urljoin(base, links[0]) if base else links[0]) if links else e.get("link")
    return url if isinstance(url, str) and _is_web_url(url) else None


def _feed_published(e: Mapping[str, Any], line: int) -> datetime | None:
    """The entry's date: the raw string when :func:`parse_datetime` reads it, else
    feedparser's reading of it (UTC) unless the string names a zone we do not know or a
    year feedparser read differently."""
    for key in ("published", "updated"):
        raw = e.get(key)
        if not raw or not isinstance(raw, str):
            continue
        try:
            return parse_datetime(raw, line=line)
        except _UnreadDate:  # a date read and refused (unknown zone, past 9999) stands
            parsed = e.get(f"{key}_parsed")
            years = [int(t) for t in re.findall(r"(?<![\d+-])\d{4}(?!\d)", raw)]
            if (parsed is None or _unknown_words(raw) or _ZONE_WITH_OFFSET.search(raw)
                    or any(y != parsed.tm_year for y in years)):
                raise
            y, mo, d, h, mi, sec = parsed[:6]
            return datetime(y, mo, d, h, mi, min(sec, 59), tzinfo=UTC)
    return None


_FEED_ACCEPT = ("application/rss+xml, application/atom+xml, application/xml;q=0.9, "
                "text/xml;q=0.9, */*;q=0.5")
_PAGE_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.5"


def _fetch(
    url: str, *, timeout_s: float, max_bytes: int, accept: str = _FEED_ACCEPT,
    allow_host: Callable[[str], bool] | None = None,
) -> tuple[bytes, Message, str]:
    """GET a URL: (body, response headers, final URL after redirects). Every failure
    (refused, timed out, HTTP error, too large) is :class:`InvalidInput` naming the URL.
    ``allow_host``: the hosts it, and every redirect, may go to."""

    req = urllib.request.Request(url, headers={
        "User-Agent": "storyline feed reader", "Accept": accept})
    deadline = time.monotonic() + max(timeout_s, FEED_DEADLINE_S)
    handlers: list[urllib.request.BaseHandler] = []
    if allow_host is not None:
        host = urlsplit(url).hostname or ""
        if not allow_host(host):
            raise InvalidInput(f"{url}: not fetched ({host} is a private address)")
        handlers.append(_GuardedRedirects(allow_host))
    try:
        with urllib.request.build_opener(*handlers).open(req, timeout=timeout_s) as resp:
            chunks: list[bytes] = []
            size = 0
            while chunk := resp.read1(65536):
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidInput(f"{url}: cannot read (over {max_bytes:,} bytes)")
                if time.monotonic() > deadline:
                    raise InvalidInput(
                        f"{url}: cannot read (timed out: still downloading after "
                        f"{max(timeout_s, FEED_DEADLINE_S):g} s)")
                chunks.append(chunk)
            return b"".join(chunks), resp.headers, resp.geturl()
    except urllib.error.HTTPError as exc:
        raise InvalidInput(f"{url}: cannot read (HTTP {exc.code} {exc.reason})") from None
    except TimeoutError:
        raise InvalidInput(f"{url}: cannot read (timed out after {timeout_s:g} s)") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise InvalidInput(f"{url}: cannot read (timed out after {timeout_s:g} s)") from None
        raise InvalidInput(f"{url}: cannot read ({getattr(reason, 'strerror', None) or reason})"
                           ) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise InvalidInput(f"{url}: cannot read ({exc})") from None


class _GuardedRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects only to hosts ``allow_host`` accepts: a public page must not bounce the
    fetch to an internal one."""

    def __init__(self, allow_host: Callable[[str], bool]) -> None:
        self._allow = allow_host

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> Any:
        host = urlsplit(newurl).hostname or ""
        if not self._allow(host):
            raise urllib.error.URLError(f"redirected to {host}, a private address")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _public_host(host: str) -> bool:
    """Whether every address ``host`` resolves to is public (not loopback, private,
    link-local, reserved). One that does not resolve counts as public: fetching it then
    fails with its own error."""
    import ipaddress
    import socket

    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return True
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_global for info in infos)


def _link_host_rule(feed_url: str) -> Callable[[str], bool]:
    """The hosts an entry's link may be fetched from: the feed's own host, and public ones.
    A feed's publisher writes its links, and a fetched page is stored and served, so a link
    to another internal address (cloud metadata, an admin page) would be a request forgery;
    an intranet feed's links are on its own host."""
    own = (urlsplit(feed_url).hostname or "").lower()
    return lambda host: host.lower() == own or _public_host(host)


def _linked_text(url: str, timeout_s: float, allow_host: Callable[[str], bool]) -> str | None:
    """The article text of the page an entry links to, or None (the entry keeps its own
    text). Fetched as the feed itself is, with its timeout and a size cap (trafilatura's
    own fetcher ignores both), from the hosts ``allow_host`` accepts."""
    try:
        body, headers, _ = _fetch(url, timeout_s=timeout_s, max_bytes=PAGE_MAX_BYTES,
                                  accept=_PAGE_ACCEPT, allow_host=allow_host)
    except InvalidInput as exc:
        log.warning("%s; the feed entry's own text is used", exc)
        return None
    page: str | bytes = body
    charset = headers.get_content_charset()
    if charset:
        # the charset the server names; without one trafilatura guesses from the bytes
        with contextlib.suppress(LookupError, UnicodeDecodeError):
            page = body.decode(charset)
    try:
        import trafilatura

        extracted = trafilatura.extract(page, include_comments=False)
    except Exception:  # trafilatura raises assorted parser errors on odd pages
        return None
    return str(extracted) if extracted else None


def read_feed(
    source: str, *, max_chars: int = 200_000, fetch_links: bool = False,
    timeout_s: float | None = None,
) -> Iterator[ParsedLine]:
    """Articles from an RSS/Atom feed (file path or URL).

    A URL is fetched here with a timeout (``timeout_s``, default :data:`FEED_TIMEOUT_S`)
    and a size cap (:data:`FEED_MAX_BYTES`). Entry ids are the guid (or link) as written,
    so a feed gives the same ids read from a file or a URL; relative links resolve against
    the feed URL, or in a file against the feed's own ``<link>``.

    Entries that carry only a link are fetched and extracted with trafilatura when
    ``fetch_links`` is set; otherwise their summary is used.
    """
    import feedparser

    timeout_s = FEED_TIMEOUT_S if timeout_s is None else timeout_s
    if source.startswith(("http://", "https://")):
        data, headers, base = _fetch(source, timeout_s=timeout_s, max_bytes=FEED_MAX_BYTES)
        # the charset the server names still counts; no content-location: feedparser
        # would resolve guids against it, and ids would differ from the same feed's file
        feed = feedparser.parse(data, response_headers={
            "content-type": headers["content-type"]} if "content-type" in headers else {})
    else:
        feed = feedparser.parse(Path(source).read_bytes())
        base = None
    if not feed.entries:
        why = f": {feed.bozo_exception}" if feed.bozo else ""
        raise InvalidInput(f"{source}: no entries (an empty feed, or not RSS/Atom{why})")
    if base is None and _is_web_url(feed.feed.get("link")):
        base = feed.feed.get("link")
    outlet = feed.feed.get("title")
    allow_link = _link_host_rule(source)
    _quiet_trafilatura()
    for n, e in enumerate(feed.entries, start=1):
        value, kind = "", None
        if e.get("content"):
            value, kind = e.content[0].get("value", ""), e.content[0].get("type")
        if not value:
            value, kind = e.get("summary", ""), (e.get("summary_detail") or {}).get("type")
        text = _detail_text(value, kind)
        url = _entry_url(e, base)
        if fetch_links and len(text) < 200 and url:
            text = _linked_text(url, timeout_s, allow_link) or text
        title = e.get("title")
        if isinstance(title, str):
            title = _detail_text(title, (e.get("title_detail") or {}).get("type"), title=True)
        try:
            published = _feed_published(e, n)
            art = parse_article(
                {"id": _feed_id(e.get("id") or e.get("link")), "title": title,
                 "text": text, "url": url, "source": outlet,
                 "published_at": published.isoformat() if published else None},
                line=n, max_chars=max_chars,
            )
        except InvalidArticle as exc:
            yield ParsedLine(n, error=exc)
            continue
        yield ParsedLine(n, article=art)


_FEED_SUFFIXES = frozenset({".xml", ".rss", ".atom"})
_SUFFIXES = frozenset({".jsonl", ".txt"}) | _FEED_SUFFIXES
_FORMATS = "use .jsonl, .txt, .xml/.rss/.atom"


def _folder(path: Path, *, max_chars: int) -> Iterator[ParsedLine]:
    """The files directly in a folder, in name order. What is not read is reported, one
    error each: subfolders (not recursed into, links to folders included), other
    non-regular files, broken links, and files of another suffix. Names starting with '.'
    (hidden files) are ignored."""
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    if not entries:
        raise InvalidInput(f"{path}: no .jsonl, .txt or feed files")
    for f in entries:
        skip = None
        if f.is_dir():
            skip = "a folder, skipped (folders are not read recursively)"
        elif f.is_symlink() and not f.exists():
            skip = "a broken link, skipped"
        elif not f.is_file():
            skip = "not a regular file, skipped"
        elif f.suffix.lower() not in _SUFFIXES:
            skip = f"unknown format, skipped ({_FORMATS})"
        if skip:
            yield ParsedLine(0, error=InvalidArticle(skip), source=str(f))
            continue
        # One unusable file (empty, unreadable, not a feed) is reported like a bad
        # line; the folder's other files still go in.
        try:
            for parsed in _file(f, max_chars=max_chars):
                yield parsed if parsed.source else replace(parsed, source=str(f))
        except InvalidInput as exc:
            detail = exc.detail.removeprefix(f"{f}: ")
            yield ParsedLine(0, error=InvalidArticle(detail), source=str(f))
        except OSError as exc:
            yield ParsedLine(0, error=InvalidArticle(f"cannot read ({exc.strerror or exc})"),
                             source=str(f))


def _file(path: Path, *, max_chars: int) -> Iterator[ParsedLine]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from read_articles_jsonl(path, max_chars=max_chars)
    elif suffix == ".txt":
        if path.stat().st_size == 0:
            raise InvalidInput(f"{path}: the file is empty")
        yield read_txt(path, max_chars=max_chars)
    elif suffix in _FEED_SUFFIXES:
        yield from read_feed(str(path), max_chars=max_chars)
    else:
        raise InvalidInput(f"{path}: unknown format ({_FORMATS})")


def read_source(
    source: str | Path, *, max_chars: int = 200_000, timeout_s: float | None = None
) -> Iterator[ParsedLine]:
    """Dispatch on what ``source`` is: a folder, .jsonl, .txt, or a feed file / URL
    (suffixes in any case). ``timeout_s``: for a feed URL, see :func:`read_feed`."""
    s = str(source)
    if s.startswith(("http://", "https://")):
        yield from read_feed(s, max_chars=max_chars, fetch_links=True, timeout_s=timeout_s)
        return
    path = Path(source)
    if not path.exists():
        raise InvalidInput(f"{path}: no such file or folder")
    if path.is_dir():
        yield from _folder(path, max_chars=max_chars)
    else:
        yield from _file(path, max_chars=max_chars)
