"""Every error the API answers becomes RFC 9457 problem details here, and only here.

Sources: the :class:`StorylineError` tree (domain errors, each with its status/title),
litestar's own HTTP exceptions (routing, validation, body size, rate limit, auth) and
anything unexpected (500, logged with its trace, never shown to the client).

Status policy: 400 = the request cannot be read (not UTF-8, not JSON, empty body);
422 = it was read but breaks the contract (wrong type, unknown or missing field, a
limit, an empty text); 413 = body over ``max_body_bytes``; 401 = missing or wrong key.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from storyline.models.errors import (
    InvalidArticle,
    InvalidInput,
    NotImplementedStage,
    Overloaded,
    StorylineError,
)

__all__ = [
    "PROBLEM_JSON",
    "SLASH_IN_ID",
    "Gone",
    "encoded_slash",
    "field_errors_from_msgspec",
    "problem",
    "problem_handler",
]

log = logging.getLogger("storyline.api")

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:storyline:problem:"



class Gone(StorylineError):  # type: ignore[misc]  # Any when mypy runs on folders
    """An id that existed and now lives elsewhere (a split story): ``successors`` say where."""

    status_code = 410
    title = "Gone"


_HTTP_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    410: "Gone",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Too many requests",
    500: "Internal error",
    501: "Not implemented",
    503: "Service unavailable",
}


#: what RFC 3986 allows in a path besides letters and digits ("%" only in raw paths)
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def _instance(request: Request[Any, Any, Any]) -> str:
    """The request path as sent, so that ``instance`` is a URI reference (RFC 9457 3.1.5).

    ``request.url.path`` is percent-decoded: a path with ``%00`` or ``%20`` put a NUL or a
    space in ``instance``, and ``%2F`` turned into a second ``/``.
    """
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        # some servers (and litestar's test client) leave the query string in raw_path
        path = re.sub(rb"%(?![0-9A-Fa-f]{2})", b"%25", raw.split(b"?", 1)[0])
        return quote(path, safe=_PATH_SAFE + "%")
    return quote(request.url.path, safe=_PATH_SAFE)


#: the answer to a path with an encoded slash: no id holds a "/"
SLASH_IN_ID = "no resource at this path: an id cannot contain '/'"


def encoded_slash(request: Request[Any, Any, Any]) -> bool:
    """The path as sent holds ``%2F``: litestar routes the decoded path with empty segments
    dropped, so it reached another resource (/v1/stories/%2F served the story list)."""
    raw = request.scope.get("raw_path")
    return isinstance(raw, bytes) and b"%2f" in raw.split(b"?", 1)[0].lower()


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def problem(
    request: Request[Any, Any, Any] | None,
    status: int,
    detail: str,
    *,
    title: str | None = None,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    **members: Any,
) -> Response[dict[str, Any]]:
    """Build one problem response; ``members`` are extension members (errors, retry_after)."""
    title = title or _HTTP_TITLES.get(status, "Error")
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + (kind or _slug(title)),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": _instance(request) if request is not None else "",
    }
    body.update({k: v for k, v in members.items() if v is not None})
    hdrs = dict(headers or {})
    if "retry_after" in body:
        hdrs["Retry-After"] = str(body["retry_after"])
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=hdrs)


_MSGSPEC_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_NAMED = re.compile(r"(?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def field_errors_from_msgspec(message: str, source: str = "body") -> list[dict[str, str]]:
    """``"Expected `int`, got `str` - at `$.articles[0].id`"`` -> field ``articles[0].id``."""
    m = _MSGSPEC_AT.match(message.strip())
    msg, path = (m.group("msg"), m.group("path") or "") if m else (message, "")
    path = path.lstrip(".")
    if named := _NAMED.search(msg):
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    return [{"field": path or "(body)", "message": msg, "source": source}]


def _storyline(request: Request[Any, Any, Any], exc: StorylineError) -> Response[dict[str, Any]]:
    status = exc.status_code
    detail = exc.detail
    members: dict[str, Any] = {}
    if isinstance(exc, InvalidInput):
        errors = exc.extra.get("errors")
        if errors is None and isinstance(exc, InvalidArticle) and exc.field:
            errors = [{"field": exc.field, "message": detail, "source": "body"}]
        members["errors"] = errors
    if isinstance(exc, Overloaded):
        members["retry_after"] = max(1, int(exc.retry_after))
    for key in ("successors", "missing"):
        if key in exc.extra:
            members[key] = exc.extra[key]
    if status >= 500 and not isinstance(exc, Overloaded | NotImplementedStage):
        # Store and model errors can name files; log them, tell the client only the kind.
        log.error("%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, detail)
        detail = f"{exc.title}; the server log has the details"
        # ``lasting``: waiting cannot help (e.g. models rebuilt under a running service,
        # which only a restart picks up), so no Retry-After invites a retry loop
        lasting = bool(exc.extra.get("lasting"))
        members.setdefault("retry_after", 5 if status == 503 and not lasting else None)
    kind = exc.extra.get("kind")
    return problem(request, status, detail, title=exc.title,
                   kind=str(kind) if kind else None, **members)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    headers = {k: v for k, v in (exc.headers or {}).items()}
    members: dict[str, Any] = {}
    detail = str(exc.detail) if exc.detail else _HTTP_TITLES.get(status, "Error")
    if isinstance(exc, ValidationException):
        status = 422
        errors = []
        extra = exc.extra if isinstance(exc.extra, list) else []
        for e in extra:
            if isinstance(e, dict):
                src = e.get("source") or "query"
                errors.append({
                    "field": str(e.get("key") or "(request)"),
                    "message": str(e.get("message", "invalid")),
                    "source": str(getattr(src, "value", src)),
                })
        members["errors"] = errors or None
        if errors:
            detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    elif isinstance(exc, TooManyRequestsException):
        reset = headers.get("RateLimit-Reset")
        members["retry_after"] = max(1, int(reset)) if reset and reset.isdigit() else 60
        detail = "rate limit exceeded; retry later"
    elif isinstance(exc, RequestEntityTooLarge):
        detail = "request body is over the size limit"
    elif isinstance(exc, NotAuthorizedException):
        headers.setdefault("WWW-Authenticate", 'Bearer realm="storyline"')
    elif isinstance(exc, NotFoundException) and detail == "Not Found":
        detail = f"no resource at {request.url.path}"
    elif isinstance(exc, MethodNotAllowedException):
        detail = f"{request.method} is not allowed here"
        if encoded_slash(request):
            # /v1/articles/%2F reached the collection (POST only)
            status, detail = 404, SLASH_IN_ID
            headers.pop("Allow", None)
            headers.pop("allow", None)
    elif isinstance(exc, PermissionDeniedException):
        pass
    elif status == 503:
        pass  # ours: starting up (Runtime.get_pipeline); the detail names no file
    elif status >= 500:
        log.error("HTTP %d on %s %s: %s", status, request.method, request.url.path, exc.detail)
        detail = _HTTP_TITLES.get(status, "Error")
    if status == 503 and "Retry-After" in headers:
        members["retry_after"] = int(headers["Retry-After"])
    return problem(request, status, detail, headers=headers, **members)


def problem_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """The one exception handler of the app (registered for ``Exception``)."""
    if isinstance(exc, StorylineError):
        return _storyline(request, exc)
    if isinstance(exc, HTTPException):
        return _http(request, exc)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(request, 500, "internal error; the server log has the details")
