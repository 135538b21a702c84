"""/v1/stories: the story list and one story (summary, actors, stances)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from litestar import Controller, Request, route
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect

from storyline.models.errors import NotImplementedStage
from storyline.service.api.docs import GET_HEAD, get_head_operation_id, ok, responses
from storyline.service.api.problems import Gone
from storyline.service.api.runtime import Rt, check_range, query_time
from storyline.service.api.schemas import StoryListResponse, StoryOut, story_brief, story_out

__all__ = ["STORY_EXAMPLE", "StoriesController", "resolve_active"]

STORY_EXAMPLE: dict[str, Any] = {
    "id": "s-000041", "label": "Supreme Court sides with police in qualified immunity cases",
    "headline": "Supreme Court sides with police officers in qualified immunity cases",
    "summary": {
        "headline": "Supreme Court sides with police officers in qualified immunity cases",
        "mode": "extractive", "word_count": 24,
        "sentences": [{"text": "The Supreme Court in two cases Monday ruled police officers were "
                       "entitled to protection from being sued over their use of force.",
                       "article_ids": ["5607-center", "5607-left"], "origin": "extracted"}],
    },
    "actors": [{
        "name": "Supreme Court", "type": "ORG", "aliases": ["the court", "justices"],
        "salience": 1, "stands_for": None, "mentions": 7,
        "article_ids": ["5607-center", "5607-left"], "outlets": ["CNBC", "CNN"],
        "portrayal": {
            "overall": {"label": "neutral", "score": 0.05, "confidence": 0.71, "evidence": [
                {"article_id": "5607-left", "text": "the court is not willing to radically "
                 "reshape the doctrine"}]},
            "by_outlet": {}, "by_lean": {},
        },
        "position": {"toward": [], "issue": None},
        "statements": [],
    }],
    "outlets": {"CNBC": 1, "CNN": 1},
    "articles": [{"id": "5607-center", "title": "Supreme Court sides with police officers",
                  "source": "CNBC", "lean": "center", "url": None,
                  "published_at": "2021-10-18T07:20:00+00:00"}],
    "first_at": "2021-10-18T07:20:00+00:00", "last_at": "2021-10-18T21:00:00+00:00",
    "timing": {"summarise": 0.041, "actors": 0.032, "stance": 0.018}, "cached": False,
}
_LIST_EXAMPLE = {"items": [{
    "id": "s-000041", "label": STORY_EXAMPLE["label"], "size": 3,
    "first_at": "2021-10-18T07:20:00+00:00", "last_at": "2021-10-18T21:00:00+00:00",
    "outlets": {"CNBC": 1, "CNN": 1, "Fox News": 1}, "updated_at": "2021-10-18T21:01:02+00:00",
}], "page": 1, "page_size": 20, "has_more": False}


def resolve_active(pipe: Any, story_id: str) -> tuple[str, bool]:
    """``(active id, moved)`` for a story id, following merges; a split raises :class:`Gone`."""
    story = pipe.store.get_story(story_id)  # NotFound for ids never seen
    if story.status == "active":
        return story_id, False
    succ = pipe.store.resolve_story(story_id)
    if len(succ) == 1:
        return succ[0], True
    kinds = {h.kind for h in pipe.store.story_history(story_id) if h.old_id == story_id}
    how = "split" if "split" in kinds or len(succ) > 1 else story.status
    where = f" into {', '.join(succ)}" if succ else "; none of its successors is active"
    raise Gone(f"story '{story_id}' was {how}{where}", successors=succ, kind="story-moved")


class StoriesController(Controller):
    path = "/v1/stories"
    tags = ("stories",)

    @route(
        "/", http_method=GET_HEAD, operation_id=get_head_operation_id,
        summary="List stories",
        description="Active stories, latest coverage first (by the publication time of "
        "their newest article, `last_at`; stories with no dated article last), filtered by "
        "time window (overlap with `first_at`..`last_at`; with `since` or `until` given, "
        "stories with no dated article are left out), minimum size and a case-insensitive "
        "label substring `q`; paged.",
        responses=responses("/v1/stories", 422,
                            success=(200, ok(StoryListResponse, _LIST_EXAMPLE))),
    )
    async def list_stories(
        self,
        rt: Rt,
        since: Annotated[str | None, QueryParameter(
            description="ISO 8601; stories with dated coverage at or after")] = None,
        until: Annotated[str | None, QueryParameter(
            description="ISO 8601; stories with dated coverage before")] = None,
        min_size: Annotated[int, QueryParameter(description="at least this many articles")] = 1,
        q: Annotated[str | None, QueryParameter(description="label contains (case-insensitive)",
                                           examples=[Example(value="court")])] = None,
        page: Annotated[int, QueryParameter(description="1-based page number")] = 1,
        page_size: Annotated[int, QueryParameter(description="1..max_page_size")] = 20,
    ) -> StoryListResponse:
        s = rt.settings
        check_range(page_size, "page_size", 1, s.max_page_size)
        check_range(page, "page", 1, 1_000_000)
        check_range(min_size, "min_size", 1, 1_000_000)
        t0, t1 = query_time(since, "since"), query_time(until, "until")
        pipe = rt.get_pipeline()
        offset = (page - 1) * page_size

        def load() -> StoryListResponse:
            store = pipe.store
            if q is None or not q.strip():
                got = store.list_stories(since=t0, until=t1, min_size=min_size,
                                         limit=page_size + 1, offset=offset)
            else:
                # Label filtering happens here, so page over the filtered list.
                needle, got, chunk, at = q.strip().casefold(), [], 1000, 0
                while len(got) < offset + page_size + 1:
                    batch = store.list_stories(since=t0, until=t1, min_size=min_size,
                                               limit=chunk, offset=at)
                    got += [x for x in batch if needle in x.label.casefold()]
                    if len(batch) < chunk:
                        break
                    at += chunk
                got = got[offset:]
            return StoryListResponse([story_brief(x) for x in got[:page_size]], page, page_size,
                                     len(got) > page_size)

        return await rt.io.run(load)

    @route(
        "/{story_id:str}", http_method=GET_HEAD, operation_id=get_head_operation_id,
        summary="One story: summary, actors and stances",
        description="The story's summary with cited article ids, its actors with portrayal and "
        "position stances and evidence, outlets and timing. An id that was merged into another "
        "story answers 308 to the story it became; a split one answers 410 naming its "
        "successors.",
        responses={
            **responses("/v1/stories/s-000041", 404, 410, 422, 501,
                        success=(200, ok(StoryOut, STORY_EXAMPLE))),
            308: ResponseSpec(None, description="merged: Location is the story it became"),
        },
    )
    async def get_story(
        self,
        rt: Rt,
        request: Request[Any, Any, Any],
        story_id: FromPath[str],
        budget_words: Annotated[int | None, QueryParameter(
            description="summary length budget in words (10..1000)")] = None,
    ) -> StoryOut:
        if budget_words is not None:
            check_range(budget_words, "budget_words", 10, 1000)
        pipe = rt.get_pipeline()
        active, moved = await rt.io.run(resolve_active, pipe, story_id)
        if moved:
            target = f"/v1/stories/{quote(active, safe='')}"
            if request.url.query:
                target += "?" + request.url.query
            return Redirect(path=target, status_code=308)  # type: ignore[return-value]
        if not hasattr(pipe, "story_view"):
            raise NotImplementedStage("story summaries and stances are not available in "
                                      "this build")
        probe = getattr(pipe, "cached_story_view", None)
        view = await rt.io.run(probe, active, budget_words=budget_words) if probe else None
        if view is None:
            view = await rt.inference.run(pipe.story_view, active, budget_words=budget_words)
        return story_out(view)
