"""The one exception tree of storyline.

Every error the product raises on purpose derives from :class:`StorylineError`, so
callers (the HTTP layer, the CLI) map them to problem details / exit codes in one place.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConflictError",
    "InvalidArticle",
    "InvalidInput",
    "MissingDependency",
    "ModelBuildError",
    "ModelUnavailable",
    "NotFound",
    "NotImplementedStage",
    "Overloaded",
    "StoreError",
    "StorylineError",
]


class StorylineError(Exception):
    """Base of every deliberate storyline error."""

    #: HTTP status the API maps this error to; the CLI maps it to ``exit_code``.
    status_code: int = 500
    exit_code: int = 1
    title: str = "Internal error"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled across the model process: rebuild from the state, not by calling
        # ``__init__`` again (subclasses take keyword-only arguments, and prefix details).
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[StorylineError], args: tuple[Any, ...],
             state: dict[str, Any]) -> StorylineError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class InvalidInput(StorylineError):
    status_code = 422
    exit_code = 2
    title = "Invalid input"


class InvalidArticle(InvalidInput):
    """One article (or one line of an input file) is unusable.

    ``line`` and ``field`` name where, when known.
    """

    title = "Invalid article"

    def __init__(
        self, detail: str, *, line: int | None = None, field: str | None = None, **extra: object
    ) -> None:
        where = []
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + detail, line=line, field=field, **extra)
        self.line = line
        self.field = field
        #: ``detail`` without the line/field prefix, for callers that name the place
        #: themselves (a query parameter, a CLI option)
        self.reason = detail


class NotFound(StorylineError):
    status_code = 404
    exit_code = 3
    title = "Not found"


class ConflictError(StorylineError):
    status_code = 409
    exit_code = 4
    title = "Conflict"


class ModelUnavailable(StorylineError):
    """A model artefact is missing or broken; run ``storyline models build``."""

    status_code = 503
    exit_code = 5
    title = "Model unavailable"


class ModelBuildError(StorylineError):
    exit_code = 6
    title = "Model build failed"


class Overloaded(StorylineError):
    status_code = 503
    exit_code = 7
    title = "Service overloaded"

    def __init__(self, detail: str, *, retry_after: int = 1, **extra: object) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.retry_after = retry_after


class StoreError(StorylineError):
    status_code = 503
    exit_code = 8
    title = "Store unavailable"


class NotImplementedStage(StorylineError):
    """A pipeline stage that this build does not provide yet (HTTP 501)."""

    status_code = 501
    exit_code = 9
    title = "Not implemented"


class MissingDependency(StorylineError):
    """An optional extra is not installed; ``extra`` names it (``pip install 'storyline[X]'``)."""

    status_code = 501
    exit_code = 10
    title = "Missing dependency"

    def __init__(self, detail: str, *, extra: str, **kw: object) -> None:
        super().__init__(detail, extra=extra, **kw)
        self.extra_name = extra
