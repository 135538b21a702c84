"""GET /v1/digests/{date}: the daily digest as JSON, HTML or Markdown."""

from __future__ import annotations

from datetime import date as Date
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import PathParameter, QueryParameter

from storyline.models.errors import InvalidInput
from storyline.service.api.docs import responses
from storyline.service.api.runtime import Rt

__all__ = ["DigestsController"]

#: format name (as the digest job stores it) -> media type
MEDIA = {"json": "application/json", "html": "text/html; charset=utf-8",
         "md": "text/markdown; charset=utf-8"}
_ALIASES = {"json": "json", "html": "html", "md": "md", "markdown": "md"}
_BY_ACCEPT = {"application/json": "json", "text/html": "html", "text/markdown": "md"}


def choose_format(request: Request[Any, Any, Any], fmt: str | None) -> str:
    if fmt is not None:
        key = _ALIASES.get(fmt.lower())
        if key is None:
            msg = "one of json, html, md"
            raise InvalidInput(f"format: {msg}",
                               errors=[{"field": "format", "message": msg, "source": "query"}])
        return key
    best = request.accept.best_match(list(_BY_ACCEPT), default="application/json")
    return _BY_ACCEPT.get(best or "application/json", "json")


class DigestsController(Controller):
    path = "/v1/digests"
    tags = ("digests",)

    @get(
        "/{day:str}", summary="The digest of one day",
        description="JSON by default; HTML or Markdown by `?format=html|md` or the Accept header "
        "(`text/html`, `text/markdown`). 404 until the digest job has written that day.",
        responses={
            **responses("/v1/digests/2021-10-18", 404, 422),
            200: ResponseSpec(
                data_container=dict[str, Any], generate_examples=False,
                description="the digest (JSON shown; text/html and text/markdown likewise)",
                examples=[Example(value={"date": "2021-10-18", "stories": [
                    {"id": "s-000041", "headline": "Supreme Court sides with police"}]})],
            ),
        },
    )
    async def get_digest(
        self,
        rt: Rt,
        request: Request[Any, Any, Any],
        day: Annotated[str, PathParameter(description="YYYY-MM-DD",
                                      examples=[Example(value="2021-10-18")])],
        format: Annotated[Literal["json", "html", "md", "markdown"] | None, QueryParameter(
            description="overrides the Accept header")] = None,
    ) -> Response[bytes]:
        try:
            if len(day) != 10:
                raise ValueError(day)
            iso = Date.fromisoformat(day).isoformat()
        except ValueError:
            msg = "a date as YYYY-MM-DD"
            raise InvalidInput(f"date: {msg}", errors=[
                {"field": "date", "message": msg, "source": "path"}]) from None
        fmt = choose_format(request, format)
        pipe = rt.get_pipeline()
        body = await rt.io.run(pipe.store.get_digest, iso, fmt)
        return Response(body.encode("utf-8"), media_type=MEDIA[fmt], headers={"Vary": "Accept"})
