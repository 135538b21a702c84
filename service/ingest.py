"""Parsing sources into :class:`Article` records: JSONL, plain .txt, RSS/Atom feeds.

Parsing is strict and per line: each bad line becomes an :class:`InvalidArticle` naming
the line and the field, and good lines still go in (the CLI exits non-zero when any
line failed). Nothing here touches the store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storyline.models.errors import InvalidArticle, InvalidInput
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
_ID_RE = re.compile(r"^[^\x00-\x1f\x7f]+$")
_OPTIONAL_STR = ("title", "source", "url", "lang", "lean")


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """One input record: the article, or why it was refused."""

    line: int
    article: Article | None = None
    error: InvalidArticle | None = None
    #: the file it came from, when read from a folder (else the caller's source)
    source: str | None = None


def parse_datetime(value: str, *, line: int | None = None) -> datetime:
    """ISO 8601 (and RFC 2822 as feeds use it) to an aware UTC datetime."""
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            dt = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            raise InvalidArticle(
                f"'{value[:40]}' is not an ISO 8601 date-time", line=line, field="published_at"
            ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-05:00: past year 9999 in UTC
        raise InvalidArticle(
            f"'{value[:40]}' is out of range in UTC", line=line, field="published_at"
        ) from None


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
    title = fields.pop("title") or ""
    if len(title) > 2000:
        raise InvalidArticle("over 2,000 characters", line=line, field="title")
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
            try:
                yield ParsedLine(n, article=parse_article(obj, line=n, max_chars=max_chars))
            except InvalidArticle as exc:
                yield ParsedLine(n, error=exc)
    if not seen:
        raise InvalidInput(f"{path}: no articles (the file is empty)")


def read_txt(path: Path, *, max_chars: int = 200_000) -> ParsedLine:
    """A plain-text article: first line is the title, the rest the text; id = file stem.

    A text file carries no date, so ``published_at`` is the file's modification time
    (when it reached us), which keeps it in the right day's digest.
    """
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ParsedLine(1, error=InvalidArticle(f"{path.name}: invalid UTF-8 ({exc.reason})"))
    title, _, body = content.strip().partition("\n")
    try:
        art = parse_article(
            {"id": path.stem, "title": title.strip(), "text": body.strip() or title.strip(),
             "published_at": datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()},
            max_chars=max_chars,
        )
    except InvalidArticle as exc:
        return ParsedLine(1, error=InvalidArticle(f"{path.name}: {exc.detail}"))
    return ParsedLine(1, article=art)


def _html_to_text(html: str) -> str:
    if "<" not in html:
        return html
    try:
        import trafilatura

        extracted = trafilatura.extract(html, include_comments=False)
    except Exception:  # trafilatura raises assorted parser errors on fragments
        extracted = None
    if extracted:
        return str(extracted)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def _feed_id(guid: Any) -> Any:
    """A feed entry's guid or link (often a URL) as an article id: '/' cannot be in one
    (see :func:`parse_article`), so it is percent-encoded, and '%' with it to stay one-to-one.
    """
    if not isinstance(guid, str):
        return guid
    return guid.replace("%", "%25").replace("/", "%2F")


def read_feed(
    source: str, *, max_chars: int = 200_000, fetch_links: bool = False
) -> Iterator[ParsedLine]:
    """Articles from an RSS/Atom feed (file path or URL).

    Entries that carry only a link are fetched and extracted with trafilatura when
    ``fetch_links`` is set; otherwise their summary is used.
    """
    import feedparser

    feed = feedparser.parse(source)
    if feed.bozo and not feed.entries:
        raise InvalidInput(f"{source}: not a readable RSS/Atom feed ({feed.bozo_exception})")
    outlet = feed.feed.get("title")
    for n, e in enumerate(feed.entries, start=1):
        html = ""
        if e.get("content"):
            html = e.content[0].get("value", "")
        html = html or e.get("summary", "")
        text = _html_to_text(html)
        if fetch_links and len(text) < 200 and e.get("link"):
            import trafilatura

            page = trafilatura.fetch_url(e.link)
            text = (trafilatura.extract(page) if page else None) or text
        published = None
        for key in ("published", "updated"):
            if e.get(key):
                published = e[key]
                break
        try:
            art = parse_article(
                {"id": _feed_id(e.get("id") or e.get("link")), "title": e.get("title"),
                 "text": text,
                 "url": e.get("link"), "source": outlet, "published_at": published},
                line=n, max_chars=max_chars,
            )
        except InvalidArticle as exc:
            yield ParsedLine(n, error=exc)
            continue
        yield ParsedLine(n, article=art)


def read_source(source: str | Path, *, max_chars: int = 200_000) -> Iterator[ParsedLine]:
    """Dispatch on what ``source`` is: a folder, .jsonl, .txt, or a feed file / URL."""
    s = str(source)
    if s.startswith(("http://", "https://")):
        yield from read_feed(s, max_chars=max_chars, fetch_links=True)
        return
    path = Path(source)
    if not path.exists():
        raise InvalidInput(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.suffix in {".jsonl", ".txt", ".xml", ".rss", ".atom"}
        )
        if not files:
            raise InvalidInput(f"{path}: no .jsonl, .txt or feed files")
        for f in files:
            # One unusable file (empty, unreadable, not a feed) is reported like a bad
            # line; the folder's other files still go in.
            try:
                for parsed in read_source(f, max_chars=max_chars):
                    yield parsed if parsed.source else replace(parsed, source=str(f))
            except InvalidInput as exc:
                detail = exc.detail.removeprefix(f"{f}: ")
                yield ParsedLine(0, error=InvalidArticle(detail), source=str(f))
            except OSError as exc:
                yield ParsedLine(0, error=InvalidArticle(f"cannot read ({exc.strerror or exc})"),
                                 source=str(f))
        return
    if path.suffix == ".jsonl":
        yield from read_articles_jsonl(path, max_chars=max_chars)
    elif path.suffix == ".txt":
        if path.stat().st_size == 0:
            raise InvalidInput(f"{path}: the file is empty")
        yield read_txt(path, max_chars=max_chars)
    elif path.suffix in {".xml", ".rss", ".atom"}:
        yield from read_feed(str(path), max_chars=max_chars)
    else:
        raise InvalidInput(f"{path}: unknown format (use .jsonl, .txt, .xml/.rss/.atom)")
