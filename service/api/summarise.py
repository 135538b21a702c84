"""POST /v1/summarise: a summary with actors and stances for inline articles, ids or a story."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from litestar import Controller, Request, post
from litestar.openapi.spec import Example
from litestar.params import Body
from msgspec import UNSET, UnsetType

from storyline.models.errors import InvalidInput, NotFound, NotImplementedStage
from storyline.service.api.docs import BEARER, ok, responses
from storyline.service.api.runtime import PRIORITY_WRITE, Rt, check_write_key
from storyline.service.api.schemas import (
    ARTICLE_EXAMPLE,
    SummariseRequest,
    SummariseResponse,
    story_out,
    to_articles,
)
from storyline.service.api.stories import STORY_EXAMPLE, resolve_active

__all__ = ["SummariseController"]

_SOURCES = ("articles", "article_ids", "story_id")


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}",
                        errors=[{"field": field, "message": message, "source": "body"}])


def _stage(pipe: Any, name: str, what: str) -> Any:
    fn = getattr(pipe, name, None)
    if fn is None:
        raise NotImplementedStage(f"{what} is not available in this build")
    return fn


def _mode_kwargs(fn: Any, mode: str) -> dict[str, Any]:
    """Pass ``mode`` only to a stage that takes it; asking a stage without it for more is 501."""
    try:
        takes_mode = "mode" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_mode = False
    if takes_mode:
        return {"mode": mode}
    if mode != "extractive":
        raise NotImplementedStage(f"summary mode '{mode}' is not available in this build")
    return {}


class SummariseController(Controller):
    path = "/v1/summarise"
    tags = ("summarise",)

    @post(
        "/", status_code=200, security=[{}, *BEARER],  # the key only for store=true
        summary="Summarise articles or a story, with actors and stances",
        description="Give exactly one of: `articles` (inline, in the article format; stored "
        "only with `store: true`, which needs the API key), `article_ids` (stored articles) "
        "or `story_id`. The answer holds one entry per story: headline, summary sentences "
        "with the ids of the articles they come from, actors with portrayal and position "
        "stances and evidence, outlets and per-stage timing.",
        responses=responses("/v1/summarise", 401, 404, 410, 413, 415, 422, 501,
                            success=(200, ok(SummariseResponse, {"stories": [STORY_EXAMPLE]}))),
    )
    async def summarise(
        self,
        rt: Rt,
        request: Request[Any, Any, Any],
        data: Annotated[SummariseRequest, Body(examples=[
            Example(summary="a stored story", value={"story_id": "s-000041",
                                                     "budget_words": 60}),
            Example(summary="stored articles", value={
                "article_ids": ["5607-center", "5607-left", "5607-right"]}),
            Example(summary="inline articles, not stored", value={
                "articles": [ARTICLE_EXAMPLE], "mode": "extractive"}),
        ])],
    ) -> SummariseResponse:
        s = rt.settings
        given = [n for n in _SOURCES if getattr(data, n) is not UNSET]
        if len(given) != 1:
            msg = "give exactly one of articles, article_ids, story_id"
            raise InvalidInput(f"{msg} (got {', '.join(given) or 'none'})", errors=[
                {"field": n, "message": msg, "source": "body"} for n in (given or _SOURCES)])
        if data.store and data.articles is UNSET:
            raise _invalid("store", "applies only to inline articles")
        if data.store:
            check_write_key(request)
        pipe = rt.get_pipeline()
        budget = data.budget_words

        if not isinstance(data.story_id, UnsetType):
            fn = _stage(pipe, "story_view", "story summaries")
            extra = _mode_kwargs(fn, data.mode)
            active, _ = await rt.io.run(resolve_active, pipe, data.story_id)
            hit = await _cached(rt, pipe, "cached_story_view", data.mode, active, budget)
            views = [hit] if hit is not None else [
                await rt.inference.run(fn, active, budget_words=budget, **extra)]
        else:
            name = given[0]
            items: list[Any] = getattr(data, name)
            if not items:
                raise _invalid(name, "must not be empty")
            if len(items) > s.max_articles_per_request:
                raise _invalid(name, f"at most {s.max_articles_per_request} per request")
            fn = _stage(pipe, "summarise_articles", "summarisation")
            extra = _mode_kwargs(fn, data.mode)
            cached = None
            if name == "articles":
                arts = to_articles(items, max_chars=s.max_article_chars)
                if not data.store:  # an ad hoc set answered before
                    cached = await _cached(rt, pipe, "cached_summaries", data.mode, arts, budget)
            else:
                # The read and the cache probe in one call (rt.lookup: on the event loop,
                # or one trip to the I/O pool): under load each hop costs more than a read.
                lookup = _cache_lookup(pipe, "cached_summaries", data.mode)
                arts, cached = await rt.lookup(_stored_and_cached, pipe, items, lookup, budget)
            if cached is not None:
                views = cached
            elif data.store:  # an ingest first: the write path's pool and priority
                views = await rt.background.run(fn, arts, budget_words=budget, store=True,
                                                priority=PRIORITY_WRITE, **extra)
            else:
                views = await rt.inference.run(fn, arts, budget_words=budget, store=False,
                                               **extra)
        return SummariseResponse([story_out(v) for v in views])


def _cache_lookup(pipe: Any, name: str, mode: str) -> Any:
    """The pipeline's stored-analysis reader ``name`` for ``mode``, or None when it keeps
    none. Callers run it on the I/O pool, so cache hits never queue behind model calls."""
    fn = getattr(pipe, name, None)
    return fn if fn is not None and mode == "extractive" else None


async def _cached(rt: Any, pipe: Any, name: str, mode: str, what: Any,
                  budget: int | None) -> Any:
    """A stored analysis read on the I/O pool; None when there is none."""
    fn = _cache_lookup(pipe, name, mode)
    return None if fn is None else await rt.io.run(fn, what, budget_words=budget)


def _stored_and_cached(pipe: Any, ids: list[str], lookup: Any,
                       budget: int | None) -> tuple[list[Any], Any]:
    arts = _stored(pipe, ids)
    return arts, (None if lookup is None else lookup(arts, budget_words=budget, stored=True))


def _stored(pipe: Any, ids: list[str]) -> list[Any]:
    """The stored articles for ``ids`` (duplicate ids resolve to what they repeat).

    One read for the ids stored under their own name; only the others are looked up as
    duplicates (each store statement costs GIL hand-offs under load)."""
    found = {a.id: a for a in pipe.store.get_articles(list(dict.fromkeys(ids)))}
    canon = {i: i if i in found else pipe.store.canonical_id(i) for i in ids}
    missing = [i for i, c in canon.items() if c is None]
    if missing:
        shown = ", ".join(f"'{m}'" for m in missing[:5])
        raise NotFound(f"{len(missing)} article id(s) not found: {shown}", missing=missing)
    order = list(dict.fromkeys(c for c in canon.values() if c is not None))
    if extra := [c for c in order if c not in found]:
        found.update((a.id, a) for a in pipe.store.get_articles(extra))
    return [found[c] for c in order if c in found]
