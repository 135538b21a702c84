"""OpenAPI helpers: every response documented, each with an example."""

from __future__ import annotations

import re
from typing import Any

from litestar import HttpMethod
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from storyline.service.api.problems import PROBLEM_JSON, TYPE_PREFIX
from storyline.service.api.schemas import ProblemDetails

__all__ = ["BEARER", "GET_HEAD", "get_head_operation_id", "ok", "responses"]

#: OpenAPI security requirement of the write endpoints
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
#: the methods of a probe: load balancers and uptime checkers send HEAD as often as GET
GET_HEAD = [HttpMethod.GET, HttpMethod.HEAD]


#: what litestar's default operationId leaves out of the path and handler names
_ID_SEPARATORS = re.compile(r"[!#$%&'*+\-.^_`|~:]+")


def get_head_operation_id(handler: Any, method: Any, path_components: list[Any]) -> str:
    """The operationId of a GET + HEAD handler: for GET the one litestar gave it while it
    answered GET only (``V1ArticlesArticleIdGetArticle``, ``HealthLiveLive``: generated
    clients keep their method names), with ``Head`` after it for HEAD."""
    names = ""
    for c in path_components:
        name = str(getattr(c, "name", c)).title()
        if name not in names:  # litestar's own test: a substring counts as seen
            names += name
    oid = _ID_SEPARATORS.sub("", names + str(handler.handler_name).title())
    verb = str(getattr(method, "value", method))
    return oid if verb == "GET" else oid + verb.title()

_PROBLEMS: dict[int, tuple[str, str, str, dict[str, Any]]] = {
    400: ("malformed request: body not UTF-8, not JSON, or empty", "Bad request",
          "the body is not valid JSON: JSON is malformed: expected ',' (byte 17)", {}),
    401: ("missing or invalid API key (writes always; reads when configured)", "Unauthorized",
          "this endpoint needs 'Authorization: Bearer <API key>'", {}),
    404: ("unknown id", "Not found", "article 'x' not found", {}),
    410: ("the story was split; successors lists where it went", "Gone",
          "story 's-12' was split", {"successors": ["s-31", "s-32"]}),
    413: ("request body over max_body_bytes", "Content too large",
          "request body is over the size limit", {}),
    415: ("the body is not application/json, is in a charset other than UTF-8, or has a "
          "Content-Encoding", "Unsupported media type",
          "send application/json, not 'text/plain'", {}),
    422: ("well-formed JSON that breaks the contract: wrong type, unknown or missing field, "
          "a limit, an empty text; or an unknown or invalid query parameter", "Invalid input",
          "articles[0].text: must not be empty",
          {"errors": [{"field": "articles[0].text", "message": "must not be empty",
                       "source": "body"}]}),
    429: ("rate limit per API key / client address exceeded", "Too many requests",
          "rate limit exceeded; retry later", {"retry_after": 42}),
    501: ("this build does not provide the stage yet", "Not implemented",
          "summarisation is not available in this build", {}),
    503: ("starting up, or the inference queue is full: retry after Retry-After seconds",
          "Service overloaded", "the inference queue is full (33 calls); retry later",
          {"retry_after": 2}),
}


def _problem_spec(status: int, path: str) -> ResponseSpec:
    desc, title, detail, extra = _PROBLEMS[status]
    slug = "story-moved" if status == 410 else title.lower().replace(" ", "-")
    value = {"type": TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail,
             "instance": path, **extra}
    return ResponseSpec(
        data_container=ProblemDetails, description=desc, media_type=PROBLEM_JSON,
        generate_examples=False, examples=[Example(summary=title, value=value)],
    )


def ok(model: Any, example: Any, description: str = "OK") -> ResponseSpec:
    return ResponseSpec(data_container=model, description=description, generate_examples=False,
                        examples=[Example(summary="example", value=example)])


def responses(
    path: str,
    *codes: int,
    success: tuple[int, ResponseSpec] | None = None,
    common: tuple[int, ...] = (400, 401, 422, 429, 503),
) -> dict[int, ResponseSpec]:
    """Problem responses for ``codes`` plus ``common`` (what any /v1 call can get: 401 when
    reads need a key, 422 for an unknown query parameter, both checked before the handler)."""
    out = {c: _problem_spec(c, path) for c in sorted({*common, *codes})}
    if success is not None:
        out[success[0]] = success[1]
    return out
