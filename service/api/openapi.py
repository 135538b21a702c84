"""The generated OpenAPI document, made exact: every limit the server enforces is in it.

litestar derives the schema from the Structs and handler signatures; the limits that come
from :class:`Settings` (``max_k``, ``max_page_size``, ...) and the rules msgspec cannot
express (non-blank text, exactly one summarise source, no unknown fields) are added here,
so a client or a schema-driven fuzzer sees what the server actually accepts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, fields, is_dataclass
from enum import Enum
from typing import Any

from litestar import Litestar
from litestar.openapi.spec import (
    Example,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
)

from storyline.service.settings import Settings

__all__ = ["LiteralExample", "refine_openapi"]

#: what Python's str.strip() removes (str.isspace), spelt out: ECMA-262's \s differs
_WS = r"\t\n\x0b\x0c\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
#: a non-blank string: at least one character that is not whitespace
NON_BLANK = f"[^{_WS}]"
#: ingest.parse_article's id rule: no control characters or "/", not blank, not "." or ".."
#: (an id is one URL path segment)
ID_PATTERN = (rf"^(?!\.\.?$)[^\x00-\x1f\x7f/]*[^{_WS}\x00-\x1f\x7f/]"
              rf"[^\x00-\x1f\x7f/]*$")


def _variants(s: Schema | Reference | None) -> Iterator[Schema]:
    """The schema and its non-null ``oneOf`` arms (litestar renders ``T | None`` so)."""
    if not isinstance(s, Schema):
        return
    yield s
    for arm in s.one_of or ():
        if isinstance(arm, Schema) and arm.type != "null":
            yield arm


def _typed(s: Schema | Reference | None, kind: str) -> Iterator[Schema]:
    for v in _variants(s):
        t = v.type
        if t == kind or (t is not None and not isinstance(t, str) and kind in t):
            yield v


def _set(s: Schema | Reference | None, kind: str, **attrs: Any) -> None:
    for v in _typed(s, kind):
        for key, val in attrs.items():
            setattr(v, key, val)


def _operations(app: Litestar) -> Iterator[tuple[str, Operation]]:
    for path, item in (app.openapi_schema.paths or {}).items():
        for method in ("get", "head", "post", "delete"):
            op = getattr(item, method, None)
            if isinstance(op, Operation):
                yield f"{method.upper()} {path}", op


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data, ``None`` members kept."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    return value


class LiteralExample(Example):
    """An example rendered as written. litestar drops every ``None`` member of an example's
    value when it renders the document, so ``"lang": null`` vanished from the article
    example and the example no longer matched its own schema (``lang`` is required)."""

    def to_schema(self) -> dict[str, Any]:
        out = super().to_schema()
        if self.value is not None:
            out["value"] = _plain(self.value)
        return out


def _literal(examples: Mapping[str, Example | Reference] | None,
             ) -> dict[str, Example | Reference] | None:
    if examples is None:
        return None
    return {key: LiteralExample(**{f.name: getattr(ex, f.name) for f in fields(ex)})
            if type(ex) is Example else ex for key, ex in examples.items()}


def _keep_example_nulls(app: Litestar) -> None:
    for _, op in _operations(app):
        media: list[OpenAPIMediaType] = []
        if isinstance(op.request_body, RequestBody):
            media += op.request_body.content.values()
        for resp in (op.responses or {}).values():
            if isinstance(resp, OpenAPIResponse):
                media += (resp.content or {}).values()
        for m in media:
            m.examples = _literal(m.examples)
        for param in op.parameters or ():
            if isinstance(param, Parameter):
                param.examples = _literal(param.examples)


def refine_openapi(app: Litestar, settings: Settings) -> None:
    s = settings
    _keep_example_nulls(app)
    comps = app.openapi_schema.components.schemas or {}

    def props(name: str) -> dict[str, Schema | Reference]:
        return comps[name].properties or {}

    for name in ("ArticleIn", "IngestRequest", "SearchRequest", "SummariseRequest"):
        comps[name].additional_properties = False  # unknown fields are refused (422)

    art = props("ArticleIn")
    _set(art["id"], "string", min_length=1, max_length=512, pattern=ID_PATTERN)
    _set(art["text"], "string", min_length=1, max_length=s.max_article_chars, pattern=NON_BLANK)
    _set(art["title"], "string", max_length=2000)
    _set(art["published_at"], "string", format=OpenAPIFormat.DATE_TIME)

    _set(props("IngestRequest")["articles"], "array", min_items=1,
         max_items=s.max_articles_per_request)

    search = props("SearchRequest")
    _set(search["text"], "string", min_length=1, max_length=s.max_article_chars,
         pattern=NON_BLANK)
    _set(search["k"], "integer", minimum=1, maximum=s.max_k)
    for field in ("since", "until"):
        _set(search[field], "string", format=OpenAPIFormat.DATE_TIME)

    summ = props("SummariseRequest")
    for field in ("articles", "article_ids"):
        _set(summ[field], "array", min_items=1, max_items=s.max_articles_per_request)
    _set(summ["story_id"], "string", min_length=1)
    # Exactly one source (two would match two arms and fail oneOf); store only with articles.
    no_store: dict[str, Schema | Reference] = {"store": Schema(const=False)}
    comps["SummariseRequest"].one_of = [
        Schema(required=["articles"]),
        Schema(required=["article_ids"], properties=no_store),
        Schema(required=["story_id"], properties=no_store),
    ]

    query_limits: dict[str, dict[str, Any]] = {
        "k": {"minimum": 1, "maximum": s.max_k},
        "page": {"minimum": 1, "maximum": 1_000_000},
        "page_size": {"minimum": 1, "maximum": s.max_page_size},
        "min_size": {"minimum": 1, "maximum": 1_000_000},
        "budget_words": {"minimum": 10, "maximum": 1000},
    }
    for _, op in _operations(app):
        for param in op.parameters or ():
            if isinstance(param, Reference) or not isinstance(param.schema, Schema):
                continue
            if param.name in query_limits:
                _set(param.schema, "integer", **query_limits[param.name])
            elif param.name in ("since", "until"):
                _set(param.schema, "string", format=OpenAPIFormat.DATE_TIME)
            elif param.name == "day":
                _set(param.schema, "string", format=OpenAPIFormat.DATE)
