"""/v1/articles: batch ingest, lookup, delete, related coverage."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, post, route
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, QueryParameter

from storyline.models.errors import InvalidInput, NotFound
from storyline.models.types import Article
from storyline.service.api.docs import BEARER, GET_HEAD, get_head_operation_id, ok, responses
from storyline.service.api.runtime import PRIORITY_WRITE, Rt, check_range, query_time
from storyline.service.api.schemas import (
    ARTICLE_EXAMPLE,
    ArticleOut,
    IngestRequest,
    IngestResponse,
    RelatedResponse,
    article_out,
    hit_out,
    ingest_result_out,
    to_articles,
)

__all__ = ["ArticlesController"]

_INGEST_EXAMPLE = {
    "results": [{"id": "5607-center", "outcome": "inserted", "duplicate_of": None,
                 "story_id": "s-000041"}],
    "inserted": 1, "updated": 0, "unchanged": 0, "duplicate": 0, "seconds": 0.084,
}
_ARTICLE_OUT = {**ARTICLE_EXAMPLE, "published_at": "2021-10-18T07:20:00+00:00", "lang": None,
                "story_id": "s-000041", "gold_story_id": "5607", "duplicate_of": None}
_RELATED_EXAMPLE = {"id": "5607-center", "related": [
    {"id": "5607-left", "score": 1.412, "similarity": 0.851, "title": "Supreme Court sides with "
     "police officers in two qualified immunity cases", "source": "CNN",
     "published_at": "2021-10-18T21:00:00+00:00", "story_id": "s-000041"}]}


class ArticlesController(Controller):
    path = "/v1/articles"
    tags = ("articles",)

    @post(
        "/", status_code=200, opt={"auth": "write"}, security=BEARER,
        summary="Ingest a batch of articles",
        description="Stores, embeds, indexes and assigns stories. Idempotent by id: re-sending "
        "an article is `unchanged`, new content under a known id is `updated`, known content "
        "under a new id is a `duplicate`; one id twice in one request is refused (422 naming "
        "the later `articles[i].id`), so `results` has one entry per article sent. Answers "
        "only after the batch is durably committed. "
        "At most `max_articles_per_request` articles, each at most `max_article_chars`.",
        responses=responses("/v1/articles", 401, 413, 415, 422,
                            success=(200, ok(IngestResponse, _INGEST_EXAMPLE))),
    )
    async def ingest(
        self,
        rt: Rt,
        data: Annotated[IngestRequest, Body(examples=[
            Example(summary="one article", value={"articles": [ARTICLE_EXAMPLE]})])],
    ) -> IngestResponse:
        s = rt.settings
        if len(data.articles) > s.max_articles_per_request:
            msg = f"at most {s.max_articles_per_request} articles per request"
            raise InvalidInput(f"articles: {msg} (got {len(data.articles)})",
                               errors=[{"field": "articles", "message": msg, "source": "body"}])
        arts = to_articles(data.articles, max_chars=s.max_article_chars)
        _refuse_repeated_ids(arts)
        pipe = rt.get_pipeline()
        report = await rt.background.run(pipe.ingest, arts, priority=PRIORITY_WRITE)
        rt.warmer.mark(r.story_id for r in report.results if r.outcome in ("inserted", "updated"))
        counts = report.as_dict()
        return IngestResponse(
            results=[ingest_result_out(r) for r in report.results],
            inserted=counts["inserted"], updated=counts["updated"],
            unchanged=counts["unchanged"], duplicate=counts["duplicate"],
            seconds=counts["seconds"],
        )

    @route(
        "/{article_id:str}", http_method=GET_HEAD, operation_id=get_head_operation_id,
        summary="One stored article",
        description="A duplicate id answers with the stored article it repeats "
        "(`duplicate_of` names it).",
        responses=responses("/v1/articles/5607-center", 404,
                            success=(200, ok(ArticleOut, _ARTICLE_OUT))),
    )
    async def get_article(self, rt: Rt, article_id: FromPath[str]) -> ArticleOut:
        pipe = rt.get_pipeline()

        def load() -> ArticleOut:
            cid = pipe.store.canonical_id(article_id)
            if cid is None:
                raise NotFound(f"article '{article_id}' not found")
            art = pipe.store.get_article(cid)
            story = pipe.store.story_of([cid]).get(cid)
            return article_out(art, story, duplicate_of=cid if cid != article_id else None)

        return await rt.io.run(load)

    @delete(
        "/{article_id:str}", status_code=204, opt={"auth": "write"}, security=BEARER,
        summary="Delete a stored article",
        description="Removes it from the store, the index and its story; its exact "
        "duplicates keep its content (one becomes a stored article). A duplicate id removes "
        "just that duplicate's record.",
        responses=responses("/v1/articles/5607-center", 401, 404),
    )
    async def delete_article(self, rt: Rt, article_id: FromPath[str]) -> None:
        pipe = rt.get_pipeline()
        # A write: it waits for the pipeline's write lock, so it runs where ingest does,
        # never on the I/O pool, whose few threads serve the millisecond lookups.
        changed = await rt.background.run(pipe.delete, article_id, priority=PRIORITY_WRITE)
        rt.warmer.mark(changed)  # a story that lost an article is re-analysed while idle

    @route(
        "/{article_id:str}/related", http_method=GET_HEAD, operation_id=get_head_operation_id,
        summary="Related coverage of a stored article",
        description="Other stored articles about the same events, best first: embedding "
        "similarity plus a bonus for closeness in time. The article and its exact duplicates "
        "are excluded.",
        responses=responses("/v1/articles/5607-center/related", 404, 422,
                            success=(200, ok(RelatedResponse, _RELATED_EXAMPLE))),
    )
    async def related(
        self,
        rt: Rt,
        article_id: FromPath[str],
        k: Annotated[int, QueryParameter(description="how many results (1..max_k)")] = 10,
        since: Annotated[str | None, QueryParameter(
            description="ISO 8601; only articles published at or after",
            examples=[Example(value="2021-10-01T00:00:00Z")])] = None,
        until: Annotated[str | None, QueryParameter(
            description="ISO 8601; only articles published before")] = None,
        source: Annotated[str | None, QueryParameter(
            description="only this outlet (case-insensitive)")] = None,
        exclude_same_story: Annotated[bool, QueryParameter(
            description="leave out articles of the query's own story")] = False,
    ) -> RelatedResponse:
        check_range(k, "k", 1, rt.settings.max_k)
        t0, t1 = query_time(since, "since"), query_time(until, "until")
        pipe = rt.get_pipeline()
        hits = await rt.lookup(pipe.related, article_id, k=k, since=t0, until=t1, source=source,
                               exclude_same_story=exclude_same_story)
        return RelatedResponse(article_id, [hit_out(h) for h in hits])


def _refuse_repeated_ids(arts: list[Article]) -> None:
    """422 naming each ``articles[i].id`` that repeats an earlier one of the request: the
    pipeline would keep only the later one, and the earlier would vanish from ``results``
    (clients zip them with what they sent)."""
    first: dict[str, int] = {}
    errors: list[dict[str, str]] = []
    for i, a in enumerate(arts):
        if (j := first.setdefault(a.id, i)) != i:
            errors.append({"field": f"articles[{i}].id",
                           "message": f"repeats articles[{j}].id in this request",
                           "source": "body"})
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidInput(f"{errors[0]['field']}: {errors[0]['message']}{more}", errors=errors)
