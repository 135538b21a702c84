"""The HTTP contract: msgspec Structs at the edge, and converters from the domain dataclasses.

Request Structs forbid unknown fields everywhere (a misspelt ``publised_at`` is a 422
naming the field, not a silently dropped value). Responses never carry internal paths.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from storyline.index.types import IngestResult, Story
from storyline.models.types import ActorStance, Article, Stance, Summary

__all__ = [
    "ActorOut",
    "ArticleBrief",
    "ArticleIn",
    "ArticleOut",
    "DigestList",
    "FieldError",
    "IngestRequest",
    "IngestResponse",
    "IngestResultOut",
    "LiveOut",
    "ProblemDetails",
    "ReadyOut",
    "RelatedHitOut",
    "RelatedResponse",
    "SearchRequest",
    "SearchResponse",
    "StoryBrief",
    "StoryListResponse",
    "StoryOut",
    "SummariseRequest",
    "SummariseResponse",
    "article_out",
    "hit_out",
    "story_brief",
    "story_out",
]


def _doc(description: str, *examples: Any) -> Meta:
    return Meta(description=description, examples=list(examples) if examples else None)


# -- requests --------------------------------------------------------------------------
class ArticleIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """One article in storyline's article format (as in the JSONL input files)."""

    id: Annotated[str | int, _doc("unique article id; re-sending an id is idempotent",
                                  "5607-center")]
    text: Annotated[str, _doc("the article text (non-empty; at most max_article_chars)",
                              "The Supreme Court ruled on Monday ...")]
    title: Annotated[str | None, _doc("headline", "Supreme Court sides with police")] = None
    source: Annotated[str | None, _doc("outlet name", "CNBC")] = None
    url: str | None = None
    published_at: Annotated[
        str | None, _doc("ISO 8601 date-time; no offset means UTC", "2021-10-18T00:20:00-07:00")
    ] = None
    lang: str | None = None
    lean: Annotated[str | None, _doc("the outlet's known political lean", "center")] = None
    story_id: Annotated[
        str | int | None,
        _doc("gold story label, kept for evaluation only (returned as gold_story_id)"),
    ] = None


ARTICLE_EXAMPLE = {
    "id": "5607-center",
    "title": "Supreme Court sides with police officers seeking qualified immunity",
    "text": "The Supreme Court in two cases Monday ruled police officers were entitled to "
    "protection from being sued over their use of force against suspects.",
    "source": "CNBC",
    "lean": "center",
    "url": "https://www.cnbc.com/2021/10/18/supreme-court.html",
    "published_at": "2021-10-18T00:20:00-07:00",
}


class IngestRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    articles: Annotated[
        list[ArticleIn], _doc("1 to max_articles_per_request articles"), Meta(min_length=1)
    ]


class SearchRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    text: Annotated[str, _doc("free text to search for (non-empty)", "hurricane power outage")]
    k: Annotated[int, _doc("how many results (1..max_k)", 10)] = 10
    since: Annotated[str | None, _doc("ISO 8601; only articles published at or after")] = None
    until: Annotated[str | None, _doc("ISO 8601; only articles published before")] = None
    source: Annotated[str | None, _doc("only this outlet (case-insensitive)")] = None


class SummariseRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    """Exactly one of ``articles``, ``article_ids`` or ``story_id``."""

    articles: Annotated[
        list[ArticleIn],
        _doc("inline articles in the article format; stored only with store=true"),
    ] | UnsetType = UNSET
    article_ids: Annotated[list[str], _doc("ids of stored articles")] | UnsetType = UNSET
    story_id: Annotated[str, _doc("a stored story id")] | UnsetType = UNSET
    store: Annotated[
        bool, _doc("also ingest the inline articles (a write: needs the API key)")
    ] = False
    # The bounds sit on the int itself so that they reach the OpenAPI schema too.
    budget_words: Annotated[int, Meta(
        ge=10, le=1000, examples=[80],
        description="summary length budget in words, 10..1000 (default: server setting)",
    )] | None = None
    mode: Annotated[
        Literal["extractive", "fused"], _doc("extractive sentences, or fused (guarded rewrite)")
    ] = "extractive"


# -- responses -------------------------------------------------------------------------
class FieldError(Struct, omit_defaults=True):
    field: Annotated[str, _doc("where: a JSON path into the body, or a parameter name",
                               "articles[0].text")]
    message: str
    source: Literal["body", "query", "path", "header"] | None = None


class ProblemDetails(Struct, omit_defaults=True, kw_only=True):
    """RFC 9457 problem details (media type application/problem+json)."""

    type: Annotated[
        str, _doc("a URI naming the kind of problem", "urn:storyline:problem:not-found")
    ]
    title: Annotated[str, _doc("short summary of the kind of problem", "Not found")]
    status: Annotated[int, _doc("the HTTP status code", 404)]
    detail: Annotated[str, _doc("what went wrong this time", "article 'x' not found")]
    instance: Annotated[str, _doc("the request path", "/v1/articles/x")]
    errors: Annotated[
        list[FieldError] | None, _doc("for validation problems: each offending field")
    ] = None
    retry_after: Annotated[int | None, _doc("seconds; also sent as Retry-After")] = None
    successors: Annotated[
        list[str] | None, _doc("for a split story: the stories it became")
    ] = None


class IngestResultOut(Struct):
    id: str
    outcome: Annotated[
        Literal["inserted", "updated", "unchanged", "duplicate"],
        _doc("unchanged: same id and content already stored; duplicate: same content under "
             "another id (recorded, not stored twice)"),
    ]
    duplicate_of: str | None
    story_id: Annotated[str | None, _doc("the story the article was assigned to, if any")]


class IngestResponse(Struct):
    results: list[IngestResultOut]
    inserted: int
    updated: int
    unchanged: int
    duplicate: int
    seconds: float


class ArticleOut(Struct):
    id: str
    title: str
    text: str
    source: str | None
    url: str | None
    published_at: datetime | None
    lang: str | None
    lean: str | None
    story_id: Annotated[str | None, _doc("the story storyline assigned the article to")]
    gold_story_id: Annotated[str | None, _doc("the story_id label given at ingest")]
    duplicate_of: Annotated[
        str | None, _doc("set when the requested id was recorded as a duplicate of this one")
    ] = None


class ArticleBrief(Struct):
    id: str
    title: str
    source: str | None
    lean: str | None
    url: str | None
    published_at: datetime | None


class RelatedHitOut(Struct):
    id: str
    score: Annotated[float, _doc("ranking score: cosine + time-closeness bonus + same-story bonus")]
    similarity: Annotated[float, _doc("cosine similarity of the embeddings")]
    title: str
    source: str | None
    published_at: datetime | None
    story_id: str | None


class RelatedResponse(Struct):
    id: str
    related: list[RelatedHitOut]


class SearchResponse(Struct):
    query: str
    results: list[RelatedHitOut]


class StoryBrief(Struct):
    id: str
    label: str
    size: int
    first_at: datetime | None
    last_at: datetime | None
    outlets: Annotated[dict[str, int], _doc("articles per outlet")]
    updated_at: datetime | None


class StoryListResponse(Struct):
    items: list[StoryBrief]
    page: int
    page_size: int
    has_more: bool


class EvidenceOut(Struct):
    article_id: str
    text: str


class StanceOut(Struct):
    label: Literal["supportive", "critical", "neutral", "mixed"]
    score: Annotated[float, _doc("-1 (critical) .. 1 (supportive)")]
    confidence: float
    evidence: list[EvidenceOut]


class PortrayalOut(Struct):
    """How the coverage treats the actor: overall, per outlet and per outlet lean."""

    overall: StanceOut
    by_outlet: dict[str, StanceOut]
    by_lean: dict[str, StanceOut]


class TowardOut(Struct):
    actor: str
    stance: StanceOut


class PositionOut(Struct):
    """Where the actor stands, from its own statements."""

    toward: list[TowardOut]
    issue: StanceOut | None


class StatementOut(Struct):
    speaker: str
    text: str
    article_id: str
    verb: str
    quoted: bool


class ActorOut(Struct):
    name: str
    type: str
    aliases: list[str]
    salience: int
    stands_for: str | None
    mentions: int
    article_ids: list[str]
    outlets: list[str]
    portrayal: PortrayalOut
    position: PositionOut
    statements: list[StatementOut]


class SentenceOut(Struct):
    text: str
    article_ids: Annotated[list[str], _doc("the articles that state or support the sentence")]
    origin: Annotated[str, _doc("extracted (verbatim) or fused (generated, guard-checked)")]


class SummaryOut(Struct):
    headline: str
    mode: str
    sentences: list[SentenceOut]
    word_count: int


class StoryOut(Struct):
    id: str
    label: str
    headline: str
    summary: SummaryOut | None
    actors: list[ActorOut]
    outlets: dict[str, int]
    articles: list[ArticleBrief]
    first_at: datetime | None
    last_at: datetime | None
    timing: Annotated[dict[str, float], _doc("seconds per stage; empty when cached")]
    cached: bool


class SummariseResponse(Struct):
    stories: list[StoryOut]


class DigestList(Struct):
    keys: Annotated[list[str], _doc("stored digest periods, oldest first (GET /v1/digests/{key})")]


class LiveOut(Struct):
    status: Literal["ok"] = "ok"


class ReadyOut(Struct):
    status: Literal["ready"]
    articles: int
    indexed: Annotated[int, _doc("vectors in the index; equals articles when in step")]
    stories: int
    index_kind: str
    embedder: str
    stories_pending_analysis: Annotated[
        int, _doc("changed stories whose summary + stances the idle-time warmer has yet to compute")
    ] = 0


# -- domain -> edge ----------------------------------------------------------------------
def ingest_result_out(r: IngestResult) -> IngestResultOut:
    return IngestResultOut(r.id, r.outcome, r.duplicate_of, r.story_id)


def article_out(a: Article, story_id: str | None, duplicate_of: str | None = None) -> ArticleOut:
    return ArticleOut(
        id=a.id, title=a.title, text=a.text, source=a.source, url=a.url,
        published_at=a.published_at, lang=a.lang, lean=a.lean, story_id=story_id,
        gold_story_id=a.story_id, duplicate_of=duplicate_of,
    )


def brief(a: Article) -> ArticleBrief:
    return ArticleBrief(a.id, a.title, a.source, a.lean, a.url, a.published_at)


def hit_out(h: Any) -> RelatedHitOut:
    return RelatedHitOut(h.id, h.score, h.similarity, h.title, h.source, h.published_at,
                         h.story_id)


def story_brief(s: Story) -> StoryBrief:
    return StoryBrief(s.id, s.label, s.size, s.first_at, s.last_at, dict(s.outlets), s.updated_at)


def _stance(s: Stance) -> StanceOut:
    return StanceOut(
        label=s.label, score=float(s.score), confidence=float(s.confidence),
        evidence=[EvidenceOut(e.article_id, e.text) for e in s.evidence],
    )


def _actor(a: ActorStance) -> ActorOut:
    act, por, pos = a.actor, a.portrayal, a.position
    return ActorOut(
        name=act.name, type=act.type, aliases=list(act.aliases), salience=act.salience,
        stands_for=act.stands_for, mentions=act.mention_count, article_ids=list(act.article_ids),
        outlets=list(act.outlets),
        portrayal=PortrayalOut(
            overall=_stance(por.overall),
            by_outlet={k: _stance(v) for k, v in por.by_outlet.items()},
            by_lean={k: _stance(v) for k, v in por.by_lean.items()},
        ),
        position=PositionOut(
            toward=[TowardOut(t.actor, _stance(t.stance)) for t in pos.toward],
            issue=None if pos.issue is None else _stance(pos.issue),
        ),
        statements=[
            StatementOut(s.speaker, s.text, s.article_id, s.verb, s.quoted) for s in a.statements
        ],
    )


def _summary(s: Summary) -> SummaryOut:
    return SummaryOut(
        headline=s.headline, mode=s.mode, word_count=s.word_count,
        sentences=[SentenceOut(x.text, list(x.article_ids), x.origin) for x in s.sentences],
    )


def story_out(view: Any) -> StoryOut:
    """A :class:`storyline.service.pipeline.StoryView` as the API shows it."""
    st: Story = view.story
    summary = None if view.summary is None else _summary(view.summary)
    return StoryOut(
        id=st.id, label=st.label,
        headline=summary.headline if summary and summary.headline else st.label,
        summary=summary, actors=[_actor(a) for a in view.actors], outlets=dict(st.outlets),
        articles=[brief(a) for a in view.articles], first_at=st.first_at, last_at=st.last_at,
        timing={k: round(float(v), 6) for k, v in view.timing.items()}, cached=bool(view.cached),
    )


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


def to_articles(
    items: list[ArticleIn], *, max_chars: int, field: str = "articles"
) -> list[Article]:
    """Validate inline articles as the JSONL reader does; every bad one is named in the 422."""
    from storyline.models.errors import InvalidArticle, InvalidInput
    from storyline.service.ingest import parse_article

    out: list[Article] = []
    errors: list[dict[str, str]] = []
    for i, item in enumerate(items):
        try:
            out.append(parse_article(msgspec.structs.asdict(item), max_chars=max_chars))
        except InvalidArticle as exc:
            name = f"{field}[{i}]" + (f".{exc.field}" if exc.field else "")
            msg = exc.detail.removeprefix(f"field '{exc.field}': ")
            errors.append({"field": name, "message": msg, "source": "body"})
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidInput(f"{errors[0]['field']}: {errors[0]['message']}{more}", errors=errors)
    return out
