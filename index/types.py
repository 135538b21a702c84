"""Index-layer records: what the store hands back about stories and ingests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "ArticleBrief", "Change", "IngestOutcome", "IngestResult", "QueryContext", "Story",
    "StoryHistory",
]

IngestOutcome = Literal["inserted", "updated", "unchanged", "duplicate"]


@dataclass(frozen=True, slots=True)
class IngestResult:
    id: str
    outcome: IngestOutcome
    #: for ``duplicate``: the stored article whose content this one repeats
    duplicate_of: str | None = None
    story_id: str | None = None


@dataclass(slots=True)
class Story:
    id: str
    label: str
    article_ids: list[str]
    first_at: datetime | None
    last_at: datetime | None
    outlets: dict[str, int]
    centroid: npt.NDArray[np.float32] | None = None
    updated_at: datetime | None = None
    status: str = "active"  # active | merged | split
    content_hash: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.article_ids)


@dataclass(frozen=True, slots=True)
class StoryHistory:
    old_id: str
    new_id: str
    kind: str  # merge | split
    at: datetime


@dataclass(frozen=True, slots=True)
class ArticleBrief:
    """What ranking and result lists need of a stored article: no text, one query."""

    id: str
    title: str
    source: str | None
    published_at: datetime | None
    #: the story the article belongs to (None before clustering)
    story_id: str | None


@dataclass(frozen=True, slots=True)
class QueryContext:
    """What related-coverage ranking needs of a stored query article, read together."""

    brief: ArticleBrief  # ``brief.id`` is the canonical id (duplicate ids are followed)
    vector: npt.NDArray[np.float32]
    #: ids recorded as exact duplicates of it
    duplicates: tuple[str, ...]
    #: the members of its story (itself included), oldest first; () before clustering
    story_members: tuple[str, ...]
    #: briefs of the ids asked for with it and of the story members (known ids only)
    briefs: Mapping[str, ArticleBrief] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the store's change feed (monotonic ``seq``)."""

    seq: int
    article_id: str
    op: Literal["upsert", "delete"]
    #: for a delete: the story the article was a member of when it went (None when in
    #: none, and for deletes recorded before the store kept it)
    story_id: str | None = None
