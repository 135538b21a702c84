"""POST /v1/search: free-text search over the stored articles."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, post
from litestar.openapi.spec import Example
from litestar.params import Body

from storyline.models.errors import InvalidInput
from storyline.service.api.docs import ok, responses
from storyline.service.api.runtime import Rt, check_range, query_time
from storyline.service.api.schemas import SearchRequest, SearchResponse, hit_out
from storyline.service.pipeline import is_blank

__all__ = ["SearchController"]

_EXAMPLE = {"query": "hurricane power outage", "results": [
    {"id": "6120-right", "score": 0.61, "similarity": 0.61, "title": "Ida leaves New Orleans "
     "dark", "source": "Fox News", "published_at": "2021-08-30T12:00:00+00:00",
     "story_id": "s-000107"}]}


class SearchController(Controller):
    path = "/v1/search"
    tags = ("search",)

    @post(
        "/", status_code=200, summary="Search stored articles by meaning",
        description="Embeds the text and ranks stored articles by cosine similarity; "
        "optional time window and outlet filters. Text with no visible character is "
        "empty (422); an empty `source` is no filter.",
        responses=responses("/v1/search", 413, 415, 422,
                            success=(200, ok(SearchResponse, _EXAMPLE))),
    )
    async def search(
        self,
        rt: Rt,
        data: Annotated[SearchRequest, Body(examples=[Example(
            summary="last week's hurricane coverage",
            value={"text": "hurricane power outage", "k": 5, "since": "2021-08-25T00:00:00Z"})])],
    ) -> SearchResponse:
        s = rt.settings
        if is_blank(data.text):  # whitespace, zero-width and control characters only
            raise InvalidInput("text: must not be empty", errors=[
                {"field": "text", "message": "must not be empty", "source": "body"}])
        if len(data.text) > s.max_article_chars:
            msg = f"at most {s.max_article_chars:,} characters"
            raise InvalidInput(f"text: {msg}",
                               errors=[{"field": "text", "message": msg, "source": "body"}])
        check_range(data.k, "k", 1, s.max_k, source="body")
        t0 = query_time(data.since, "since", "body")
        t1 = query_time(data.until, "until", "body")
        pipe = rt.get_pipeline()
        hits = await rt.inference.run(pipe.search, data.text, k=data.k, since=t0, until=t1,
                                      source=data.source)
        return SearchResponse(data.text, [hit_out(h) for h in hits])
