"""Domain types shared by every layer.

Plain frozen dataclasses: cheap, hashable where it matters, and free of any I/O.
The HTTP layer converts them to msgspec Structs at the edge.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from storyline.models.words import count_words

__all__ = [
    "Actor",
    "ActorMention",
    "ActorStance",
    "Article",
    "Evidence",
    "Portrayal",
    "Position",
    "Stance",
    "StanceLabel",
    "Statement",
    "Summary",
    "SummarySentence",
    "TowardStance",
    "content_hash",
    "normalise_lean",
    "outlet_names",
    "published_ts",
    "reading_order",
]

StanceLabel = Literal["supportive", "critical", "neutral", "mixed"]


def content_hash(title: str, text: str) -> str:
    """Hash of what an article says (title + text), used for duplicate detection."""
    norm = " ".join(title.split()).casefold() + "\n" + " ".join(text.split()).casefold()
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


def normalise_lean(value: str | None) -> str | None:
    """One spelling per lean ("Lean-Left", "lean left" -> "lean left"); blank -> None.

    Feeds spell an outlet's lean freely; grouping by the raw value would split one lean
    into several groups (or, keyed by a normalised name later, keep only one of them).
    """
    if not value or not value.strip():
        return None
    return " ".join(value.replace("-", " ").replace("_", " ").split()).casefold()


def outlet_names(sources: Iterable[str | None]) -> dict[str, str]:
    """Each outlet spelling in ``sources`` -> the name to show for that outlet.

    An outlet is its name ignoring case, as the ``source`` search filter reads it: feeds
    spell one outlet "Reuters" and "REUTERS", and grouping by the raw value split its
    portrayal and coverage in two. The name shown is the most frequent spelling (ties: the
    first in sorted order).
    """
    counts = Counter(s for s in sources if s)
    shown: dict[str, str] = {}
    for name, _ in sorted(counts.items(), key=lambda t: (-t[1], t[0])):
        shown.setdefault(name.casefold(), name)
    return {name: shown[name.casefold()] for name in counts}


def published_ts(a: Article) -> float:
    """``a``'s publication time as a POSIX timestamp (a naive time is UTC); undated: inf,
    so that undated articles sort last."""
    ts = a.published_at
    if ts is None:
        return math.inf
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


def reading_order(articles: Iterable[Article]) -> list[Article]:
    """``articles`` by publication time (undated last), then id.

    The order the pipeline hands a story to every stage, so that an analysis is a function
    of the member set: the stages break their ties (reading order among same-day
    articles, which copy of a shared sentence is cited, salience among equals) by input
    order, and an answer is cached by its member set.
    """
    return sorted(articles, key=lambda a: (published_ts(a), a.id))


@dataclass(frozen=True, slots=True)
class Article:
    """One news article in storyline's article format.

    ``published_at`` is timezone-aware (UTC) when known. ``story_id`` is a gold label
    used only by evaluation; ``lean`` is the outlet's known political lean, if any.
    """

    id: str
    text: str
    title: str = ""
    source: str | None = None
    url: str | None = None
    published_at: datetime | None = None
    lang: str | None = None
    story_id: str | None = None
    lean: str | None = None

    @property
    def content_hash(self) -> str:
        return content_hash(self.title, self.text)

    @property
    def full_text(self) -> str:
        return f"{self.title}\n\n{self.text}" if self.title else self.text


@dataclass(frozen=True, slots=True)
class SummarySentence:
    """One summary sentence and the articles that state or support it."""

    text: str
    article_ids: tuple[str, ...]
    #: ``extracted`` (verbatim source sentence) or ``fused`` (generated, passed the guard)
    origin: str = "extracted"


@dataclass(frozen=True, slots=True)
class Summary:
    headline: str
    sentences: tuple[SummarySentence, ...]
    mode: str = "extractive"

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.sentences)

    @property
    def word_count(self) -> int:
        return sum(count_words(s.text) for s in self.sentences)


@dataclass(frozen=True, slots=True)
class Evidence:
    article_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ActorMention:
    article_id: str
    sentence: str
    start: int  # char offsets of the mention inside ``sentence``
    end: int
    text: str
    #: the sentence is (part of) the article's headline, as the extractor parsed it (the
    #: sentence's text cannot tell: a body line may repeat words of the headline); None:
    #: not known (a mention made by hand or by another extractor)
    in_title: bool | None = None


@dataclass(frozen=True, slots=True)
class Actor:
    """An actor of a story after alias resolution."""

    name: str
    type: str  # PERSON | ORG | GPE | NORP | FAC | EVENT
    aliases: tuple[str, ...] = ()
    mentions: tuple[ActorMention, ...] = ()
    article_ids: tuple[str, ...] = ()
    outlets: tuple[str, ...] = ()
    salience: int = 0  # rank within the story, 1 = most salient
    #: for metonyms ("the Kremlin"): the canonical actor they stand for ("Russia")
    stands_for: str | None = None

    @property
    def mention_count(self) -> int:
        return len(self.mentions)


@dataclass(frozen=True, slots=True)
class Statement:
    """Direct or reported speech attributed to a speaker."""

    speaker: str
    text: str
    article_id: str
    sentence: str
    verb: str = ""
    quoted: bool = False


@dataclass(frozen=True, slots=True)
class Stance:
    label: StanceLabel
    score: float  # [-1, 1]
    confidence: float  # [0, 1]
    evidence: tuple[Evidence, ...] = ()


@dataclass(frozen=True, slots=True)
class Portrayal:
    """How the coverage treats an actor, overall and per outlet / lean."""

    overall: Stance
    by_outlet: dict[str, Stance] = field(default_factory=dict)
    by_lean: dict[str, Stance] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TowardStance:
    actor: str
    stance: Stance


@dataclass(frozen=True, slots=True)
class Position:
    """Where an actor stands, from its own statements."""

    toward: tuple[TowardStance, ...] = ()
    issue: Stance | None = None


@dataclass(frozen=True, slots=True)
class ActorStance:
    actor: Actor
    portrayal: Portrayal
    position: Position
    statements: tuple[Statement, ...] = ()
