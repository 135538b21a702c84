"""GET /v1/digests and /v1/digests/{key}: stored digests as JSON, HTML or Markdown.

A key is what ``storyline digest`` stores a period under (see ``period_key``): one UTC day
``YYYY-MM-DD``, whole days ``YYYY-MM-DD..YYYY-MM-DD``, or any period to the minute
``YYYY-MM-DDTHHMMZ..YYYY-MM-DDTHHMMZ``. Any of these forms naming the same period finds the
digest stored under its canonical key (``2021-10-17..2021-10-17`` and
``2021-10-17T0000Z..2021-10-18T0000Z`` are ``2021-10-17``).

A key may end in ``.html``, ``.md`` or ``.json``, as the files ``storyline digest --out``
writes do, so the HTML page's links to earlier digests (``<key>.html#story-…``) work both
between files and when the page is served from here. The format is, by precedence: the
``format`` query parameter; else the key's suffix; else the Accept header (media ranges with
their q-values, the most specific range deciding each type; ``q=0`` refuses a type; a range
with parameters other than ``charset=utf-8`` is about another representation); else, when
Accept names none of the three (or refuses all, or is malformed), JSON.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, route
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import PathParameter, QueryParameter

from storyline.models.errors import InvalidInput
from storyline.service.api.docs import GET_HEAD, get_head_operation_id, ok, responses
from storyline.service.api.runtime import Rt
from storyline.service.api.schemas import DigestList
from storyline.service.digest import SCHEMA_ID, period_key

__all__ = ["DigestsController"]

#: format name (as the digest job stores it) -> media type (litestar adds the charset of
#: text/* types itself; naming it here too would send it twice)
MEDIA = {"json": "application/json", "html": "text/html", "md": "text/markdown"}
_DAY = r"\d{4}-\d{2}-\d{2}"
_MINUTE = _DAY + r"T\d{4}Z"
_KEY = re.compile(rf"(?:({_DAY})|({_DAY})\.\.({_DAY})|({_MINUTE})\.\.({_MINUTE}))"
                  r"(?:\.(html|md|json))?")
KEY_HELP = ("YYYY-MM-DD, YYYY-MM-DD..YYYY-MM-DD or YYYY-MM-DDTHHMMZ..YYYY-MM-DDTHHMMZ, "
            "optionally ending in .html, .md or .json")


def parse_key(key: str) -> tuple[str, str | None]:
    """The canonical key (``period_key``) of the period ``key`` names, and the format its
    suffix names (None without one). ``InvalidInput`` unless its dates exist, its period
    runs forwards and its end is a representable date."""
    m = _KEY.fullmatch(key)
    try:
        if m is None:
            raise ValueError(key)
        *groups, suffix = m.groups()
        parts = [g for g in groups if g is not None]
        minute = "T" in parts[0]
        fmt = "%Y-%m-%dT%H%MZ" if minute else "%Y-%m-%d"
        ends = [datetime.strptime(p, fmt).replace(tzinfo=UTC) for p in parts]
        since = ends[0]
        # a day form names whole days, the last one included; a minute form its exact end
        until = ends[-1] if minute else ends[-1] + timedelta(days=1)
        if until <= since:
            raise ValueError(key)
    except (ValueError, OverflowError):
        msg = f"a digest key: {KEY_HELP}"
        raise InvalidInput(f"key: {msg}", errors=[
            {"field": "key", "message": msg, "source": "path"}]) from None
    return period_key(since, until), suffix


_ALIASES = {"json": "json", "html": "html", "md": "md", "markdown": "md"}
#: the media types served, in the order that breaks ties (JSON first: the default)
_BY_ACCEPT = {"application/json": "json", "text/html": "html", "text/markdown": "md"}
#: the parameters of what is served: a range naming others ("text/html;level=1") is about
#: another representation. JSON has no charset parameter but is always UTF-8 (RFC 8259).
_SERVED_PARAMS = {"charset": "utf-8"}
_ESCAPE = re.compile(r"\\(.)")


def _split(text: str, sep: str) -> list[str] | None:
    """``text`` cut at each ``sep`` outside a quoted string (a parameter value may hold
    commas and semicolons); None when a quoted string is left open."""
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for k, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[start:k])
            start = k + 1
    if quoted:
        return None
    parts.append(text[start:])
    return parts


def _accept_ranges(header: str) -> list[tuple[str, str, float, dict[str, str]]] | None:
    """``(type, subtype, q, parameters)`` of each media range of an Accept header (names
    lowercased); None when it is malformed (a q-value that is not a number in 0…1, a range
    that is not ``type/sub``, a parameter that is not ``name=value``, an open quote)."""
    items = _split(header, ",")
    if items is None:
        return None
    out = []
    for item in items:
        if not item.strip():
            continue
        # quotes balance within an element, as the header was cut outside them
        media, *params = (x.strip() for x in _split(item, ";") or [item])
        main, slash, sub = media.lower().partition("/")
        if not slash or not main or not sub or (main == "*" and sub != "*"):
            return None
        q = 1.0
        named: dict[str, str] = {}
        for param in params:
            if not param:
                continue  # "text/html;" is allowed: parameters may be empty
            name, eq, value = (x.strip() for x in param.partition("="))
            if not name or not eq or not value:
                return None
            if name.lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    return None
                if not (math.isfinite(q) and 0.0 <= q <= 1.0):
                    return None
            elif value.startswith('"'):
                if len(value) < 2 or not value.endswith('"'):
                    return None
                named[name.lower()] = _ESCAPE.sub(r"\1", value[1:-1])
            else:
                named[name.lower()] = value
        out.append((main, sub, q, named))
    return out


def _params_match(params: dict[str, str]) -> bool:
    # charset values are case-insensitive (RFC 9110 8.3.2); a parameter we do not serve
    # makes the range about another representation
    return all(
        _SERVED_PARAMS.get(name) == (value.lower() if name == "charset" else value)
        for name, value in params.items()
    )


def negotiate(header: str | None) -> str:
    """The format an Accept header asks for (RFC 9110 12.5.1): each served type takes the
    q-value of the most specific range matching it (``q=0``: not acceptable; a range with
    parameters is more specific than one without and matches only when they are those of
    what is served, ``charset=utf-8``); the highest q wins, ties going to the more specific
    range, then to the range named first, then to JSON, HTML, Markdown in that order. JSON
    when nothing acceptable is served or the header is missing or malformed."""
    ranges = _accept_ranges(header or "")
    if not ranges:
        return "json"
    best: tuple[float, int, int, int] | None = None
    choice = "json"
    for order, (media, fmt) in enumerate(_BY_ACCEPT.items()):
        main, sub = media.split("/")
        match: tuple[int, int, float] | None = None  # (specificity, -position, q)
        for pos, (r_main, r_sub, q, params) in enumerate(ranges):
            if r_main == "*":
                spec = 0
            elif r_main != main:
                continue
            elif r_sub == "*":
                spec = 2
            elif r_sub == sub:
                spec = 4
            else:
                continue
            if params:
                if not _params_match(params):
                    continue
                spec += 1  # "text/html;charset=utf-8" is more specific than "text/html"
            if match is None or (spec, -pos) > match[:2]:
                match = (spec, -pos, q)
        if match is None or match[2] <= 0.0:
            continue
        rank = (match[2], match[0], match[1], -order)
        if best is None or rank > best:
            best, choice = rank, fmt
    return choice


def choose_format(request: Request[Any, Any, Any], fmt: str | None,
                  suffix: str | None = None) -> str:
    """``?format=``, else the key's suffix, else the Accept header (see the module doc)."""
    if fmt is not None:
        key = _ALIASES.get(fmt)  # the query parameter's enum has already checked it
        if key is None:
            msg = "one of json, html, md"
            raise InvalidInput(f"format: {msg}",
                               errors=[{"field": "format", "message": msg, "source": "query"}])
        return key
    if suffix is not None:
        return suffix
    # one header sent as several field lines is one comma-separated list (RFC 9110 5.3)
    accept = request.headers.getall("accept", [])
    return negotiate(", ".join(accept) if accept else None)


#: the OpenAPI example of a digest: a complete document (tests validate it against the schema)
DIGEST_EXAMPLE: dict[str, Any] = {
    "schema": SCHEMA_ID, "key": "2021-10-18", "generated_for": "2021-10-18",
    "period": {"since": "2021-10-18T00:00:00+00:00", "until": "2021-10-19T00:00:00+00:00"},
    "totals": {"articles": 2, "stories": 1, "outlets": 2, "featured": 1},
    "ranking": {"formula": "(w_articles*log2(1+articles) + w_outlets*log2(1+outlets)"
                           " + w_leans*leans) * recency * novelty",
                "weights": {"w_articles": 1.0, "w_outlets": 1.0, "w_leans": 0.5}},
    "stories": [{
        "rank": 1, "id": "s-000041", "headline": "Supreme Court sides with police",
        "status": "developing", "score": 2.475,
        "signals": {"articles": 2, "outlets": 2, "leans": 2, "recency": 0.9,
                    "novelty": 0.65, "new_articles": 1},
        "first_at": "2021-10-17T15:02:00+00:00", "last_at": "2021-10-18T19:40:00+00:00",
        "article_ids": ["a-101", "a-102"],
        "summary": {"mode": "extractive", "sentences": [
            {"text": "The Supreme Court ruled for two police officers on Monday.",
             "citations": [1, 2]}]},
        "sources": [
            {"n": 1, "article_id": "a-101", "title": "Court backs officers", "outlet": "Reuters",
             "lean": "center", "url": "https://example.org/a-101",
             "published_at": "2021-10-18T19:40:00+00:00"},
            {"n": 2, "article_id": "a-102", "title": "Justices side with police",
             "outlet": "Fox News", "lean": "right", "url": "https://example.org/a-102",
             "published_at": "2021-10-17T15:02:00+00:00"}],
        "coverage": [{"lean": "center", "outlets": [{"name": "Reuters", "articles": 1}]},
                     {"lean": "right", "outlets": [{"name": "Fox News", "articles": 1}]}],
        "actors": [],
        "previous": [{"digest": "2021-10-17", "story_id": "s-000041", "rank": 3}],
    }],
}


class DigestsController(Controller):
    path = "/v1/digests"
    tags = ("digests",)

    @route(
        "/", http_method=GET_HEAD, operation_id=get_head_operation_id,
        summary="Stored digest keys",
        description="Every period a digest is stored for, oldest first.",
        responses=responses("/v1/digests", success=(200, ok(DigestList, {
            "keys": ["2021-10-17", "2021-10-18", "2021-10-18..2021-10-24"]}))),
    )
    async def list_digests(self, rt: Rt) -> DigestList:
        pipe = rt.get_pipeline()
        keys = await rt.io.run(pipe.store.digest_dates)
        return DigestList(keys=keys)

    @route(
        "/{key:str}", http_method=GET_HEAD, operation_id=get_head_operation_id,
        summary="The digest of one day or period",
        description="JSON by default; HTML or Markdown by `?format=html|md`, else by a "
        "`.html`/`.md`/`.json` suffix of the key (as in the files `storyline digest --out` "
        "writes, so the page's links to earlier digests work here too), else by the Accept "
        "header (`text/html`, `text/markdown`; q-values honoured, `q=0` refuses a type; JSON "
        "when Accept allows none of the three). 404 until the digest job has written that "
        f"period. Keys: {KEY_HELP} (as `storyline digest` names them); any form naming the "
        "same period finds it (`2021-10-18..2021-10-18` is `2021-10-18`).",
        responses={
            **responses("/v1/digests/2021-10-18", 404, 422),
            200: ResponseSpec(
                data_container=dict[str, Any], generate_examples=False,
                description="the digest, a document of service/digest_schema.json (JSON "
                "shown; text/html and text/markdown render the same document)",
                examples=[Example(summary="a one-day digest", value=DIGEST_EXAMPLE)],
            ),
        },
    )
    async def get_digest(
        self,
        rt: Rt,
        request: Request[Any, Any, Any],
        key: Annotated[str, PathParameter(
            description=KEY_HELP, examples=[Example(value="2021-10-18"),
                                            Example(value="2021-10-18..2021-10-24"),
                                            Example(value="2021-10-18.html")])],
        format: Annotated[Literal["json", "html", "md", "markdown"] | None, QueryParameter(
            description="overrides the Accept header")] = None,
    ) -> Response[bytes]:
        canonical, suffix = parse_key(key)
        fmt = choose_format(request, format, suffix)
        pipe = rt.get_pipeline()
        body = await rt.io.run(pipe.store.get_digest, canonical, fmt)
        return Response(body.encode("utf-8"), media_type=MEDIA[fmt], headers={"Vary": "Accept"})
