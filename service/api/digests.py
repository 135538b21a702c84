"""GET /v1/digests and /v1/digests/{key}: stored digests as JSON, HTML or Markdown.

A key is what ``storyline digest`` stores a period under (see ``period_key``): one UTC day
``YYYY-MM-DD``, whole days ``YYYY-MM-DD..YYYY-MM-DD``, or any period to the minute
``YYYY-MM-DDTHHMMZ..YYYY-MM-DDTHHMMZ``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import PathParameter, QueryParameter

from storyline.models.errors import InvalidInput
from storyline.service.api.docs import ok, responses
from storyline.service.api.runtime import Rt
from storyline.service.api.schemas import DigestList

__all__ = ["DigestsController"]

#: format name (as the digest job stores it) -> media type (litestar adds the charset of
#: text/* types itself; naming it here too would send it twice)
MEDIA = {"json": "application/json", "html": "text/html", "md": "text/markdown"}
_DAY = r"\d{4}-\d{2}-\d{2}"
_MINUTE = _DAY + r"T\d{4}Z"
_KEY = re.compile(rf"({_DAY})|({_DAY})\.\.({_DAY})|({_MINUTE})\.\.({_MINUTE})")
KEY_HELP = "YYYY-MM-DD, YYYY-MM-DD..YYYY-MM-DD or YYYY-MM-DDTHHMMZ..YYYY-MM-DDTHHMMZ"


def parse_key(key: str) -> str:
    """Validate a digest key (its dates must exist and its period run forwards)."""
    m = _KEY.fullmatch(key)
    try:
        if m is None:
            raise ValueError(key)
        parts = [g for g in m.groups() if g is not None]
        fmt = "%Y-%m-%dT%H%MZ" if "T" in key else "%Y-%m-%d"
        ends = [datetime.strptime(p, fmt) for p in parts]
        if len(ends) == 2 and ends[1] < ends[0]:
            raise ValueError(key)
    except ValueError:
        msg = f"a digest key: {KEY_HELP}"
        raise InvalidInput(f"key: {msg}", errors=[
            {"field": "key", "message": msg, "source": "path"}]) from None
    return key
_ALIASES = {"json": "json", "html": "html", "md": "md", "markdown": "md"}
_BY_ACCEPT = {"application/json": "json", "text/html": "html", "text/markdown": "md"}


def choose_format(request: Request[Any, Any, Any], fmt: str | None) -> str:
    if fmt is not None:
        key = _ALIASES.get(fmt)  # the query parameter's enum has already checked it
        if key is None:
            msg = "one of json, html, md"
            raise InvalidInput(f"format: {msg}",
                               errors=[{"field": "format", "message": msg, "source": "query"}])
        return key
    try:
        best = request.accept.best_match(list(_BY_ACCEPT), default="application/json")
    except (OverflowError, ValueError):  # a malformed Accept (q=1e500) gets the default
        best = None
    return _BY_ACCEPT.get(best or "application/json", "json")


class DigestsController(Controller):
    path = "/v1/digests"
    tags = ("digests",)

    @get(
        "/", summary="Stored digest keys",
        description="Every period a digest is stored for, oldest first.",
        responses=responses("/v1/digests", success=(200, ok(DigestList, {
            "keys": ["2021-10-17", "2021-10-18", "2021-10-18..2021-10-24"]}))),
    )
    async def list_digests(self, rt: Rt) -> DigestList:
        pipe = rt.get_pipeline()
        keys = await rt.io.run(pipe.store.digest_dates)
        return DigestList(keys=keys)

    @get(
        "/{key:str}", summary="The digest of one day or period",
        description="JSON by default; HTML or Markdown by `?format=html|md` or the Accept header "
        "(`text/html`, `text/markdown`). 404 until the digest job has written that period. "
        f"Keys: {KEY_HELP} (as `storyline digest` names them).",
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
        key: Annotated[str, PathParameter(
            description=KEY_HELP, examples=[Example(value="2021-10-18"),
                                            Example(value="2021-10-18..2021-10-24")])],
        format: Annotated[Literal["json", "html", "md", "markdown"] | None, QueryParameter(
            description="overrides the Accept header")] = None,
    ) -> Response[bytes]:
        iso = parse_key(key)
        fmt = choose_format(request, format)
        pipe = rt.get_pipeline()
        body = await rt.io.run(pipe.store.get_digest, iso, fmt)
        return Response(body.encode("utf-8"), media_type=MEDIA[fmt], headers={"Vary": "Accept"})
