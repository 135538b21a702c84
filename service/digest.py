"""The nightly digest: the period's most important stories, rendered as HTML, Markdown and JSON.

``build_digest`` works in five stages, each timed in :attr:`DigestResult.stages`:

1. **refine**: ``clusterer.refine()`` first, so merges and splits since the last ingest are
   settled before anything is ranked (articles ingested without clustering are placed too).
2. **select**: the period's stories are the active stories with at least one article
   *published* in ``[since, until)``. They are ranked by :func:`importance` (below) and the
   ``top`` best are featured.
3. **summarise / actors / stance**: each featured story's cited summary and actor stances.
   When every member of the story was published before ``until`` this is
   :meth:`Pipeline.story_view`, cached in the store by the story's content hash, so a re-run
   recomputes only stories whose content changed and an interrupted run resumes where it
   stopped (each story's output is committed as soon as it is computed). A story that has
   grown past ``until`` since is analysed as of ``until`` (its members published before it),
   cached the same way under its own key, so an old date's digest does not change when later
   coverage arrives. With ``engine="ray"`` the stories not analysed yet are first analysed
   as one Ray Data job (:mod:`storyline.service.ray_engine`; workers load the models, the
   driver stores the results under the same keys), so the loop then finds every one cached.
4. **render**: one JSON document (the schema is ``digest_schema.json`` beside this file) and,
   from it, the HTML page (Jinja2 with autoescaping: every article-derived string is escaped;
   the page is self-contained: inline CSS and SVG, no script, a CSP that forbids any
   request) and the Markdown text.
5. **store**: all three formats, always, replace whatever the store held for the key in one
   transaction (``put_digests(key, bodies)``), so the formats served for a key always come
   from the same run (later digests read the JSON for novelty). With ``out_dir``, the
   ``formats`` asked for are written to ``<out_dir>/<key>.<fmt>`` atomically and that key's
   files of the other formats are removed (they would be an older run's). A period with
   nothing to digest (no article, or no active story) raises ``NotFound`` after removing
   the key's stored digest and files, so a digest whose articles were all deleted is not
   served any more.

Ranking (documented in the JSON under ``ranking`` as well)::

    importance = (W_ARTICLES * log2(1 + articles) + W_OUTLETS * log2(1 + outlets)
                  + W_LEANS * leans) * recency * novelty

* ``articles``: the story's articles published in the period (coverage volume);
* ``outlets``: distinct outlets among them; ``leans``: distinct known leans (``Article.lean``)
  among them: a story covered across the spectrum matters more than one outlet's series;
* ``recency = 0.5 + 0.5 * (t_last - since) / (until - since)``, ``t_last`` the story's latest
  article in the period: 1 at the end of the period, 0.5 at its start;
* ``novelty = NOVELTY_FLOOR + (1 - NOVELTY_FLOOR) * new / articles``, ``new`` the period's
  articles not featured in an earlier digest (one whose period starts before this one's and
  also ends before this one's end, within ``lookback_days``; a digest covering this period,
  even one built later, is not earlier, so re-running a period gives the same answer).
  A story never featured before has novelty 1 (status ``new``); one featured before that
  has grown is ``developing``; one featured before with nothing new (overlapping periods)
  keeps only ``NOVELTY_FLOOR`` and is a ``repeat``.

Ties break by more articles, then story id, so the order is deterministic. A story counts as
featured before when an earlier digest featured the same id, one of its ancestors (merged or
split into it, from ``store.story_history``), or any of its articles.

The body of every format is deterministic: the same store content gives byte-identical
output (no wall-clock time inside; the page says "generated for <period>").
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import quote, urlsplit

import msgspec

from storyline.index.stories import members_hash as stories_members_hash
from storyline.index.stories import members_print
from storyline.index.types import Story
from storyline.models.errors import InvalidInput, NotFound
from storyline.models.types import (
    ActorStance,
    Article,
    Stance,
    Summary,
    normalise_lean,
    outlet_names,
)

__all__ = [
    "ENGINES",
    "FORMATS",
    "NOVELTY_FLOOR",
    "AnalysisPlan",
    "DigestResult",
    "PlainProgress",
    "Progress",
    "RichProgress",
    "analysis_plan",
    "build_digest",
    "day_period",
    "importance",
    "make_progress",
    "period_key",
    "render_html",
    "render_markdown",
    "resolve_period",
]

log = logging.getLogger(__name__)

FORMATS = ("html", "md", "json")
#: where the analysis stage runs: in this process, or as a Ray Data job (service/ray_engine.py)
ENGINES = ("local", "ray")
SCHEMA_ID = "storyline.digest/1"
W_ARTICLES = 1.0
W_OUTLETS = 1.0
W_LEANS = 0.5
NOVELTY_FLOOR = 0.3
#: actors shown per story (by salience) and groups per chart
MAX_ACTORS = 5
MAX_CHART_ACTORS = 4
MAX_CHART_OUTLETS = 6
MAX_TOWARD = 3
MAX_QUOTE_CHARS = 400
_LEAN_ORDER = ("left", "lean left", "center", "lean right", "right")
_LEAN_COLOUR = {
    "left": "#2563eb", "lean left": "#60a5fa", "center": "#7c3aed",
    "lean right": "#f87171", "right": "#dc2626",
}
_PALETTE = ("#0f766e", "#b45309", "#4338ca", "#be185d", "#15803d", "#9333ea", "#0369a1")
_GREY = "#6b7280"
_Analysis = tuple[Summary, list[ActorStance]]


# --------------------------------------------------------------------------------- progress
class Progress(Protocol):
    """Where build_digest reports what it is doing."""

    def stage(self, name: str, total: int | None = None) -> None: ...
    def advance(self, detail: str = "") -> None: ...
    def log(self, message: str) -> None: ...
    def close(self) -> None: ...


class PlainProgress:
    """One log line per step: for cron, systemd and pipes."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._out = stream or sys.stderr
        self._name = ""
        self._total: int | None = None
        self._done = 0

    def stage(self, name: str, total: int | None = None) -> None:
        self._name, self._total, self._done = name, total, 0
        self.log(f"{name}…" if total is None else f"{name}: {total} to do")

    def advance(self, detail: str = "") -> None:
        self._done += 1
        of = f"/{self._total}" if self._total is not None else ""
        self.log(f"{self._name} {self._done}{of}" + (f" {detail}" if detail else ""))

    def log(self, message: str) -> None:
        print(f"digest: {message}", file=self._out, flush=True)

    def close(self) -> None:
        return None


class RichProgress:
    """A progress bar on a terminal (rich, on stderr)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        self._console = Console(stderr=True)
        self._bar = Bar(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[detail]}"),
            console=self._console, transient=False,
        )
        self._bar.start()
        self._task: Any = None

    def _finish(self) -> None:
        if self._task is not None:
            self._bar.update(self._task, completed=self._bar.tasks[-1].total or 1)

    def stage(self, name: str, total: int | None = None) -> None:
        self._finish()
        self._task = self._bar.add_task(name, total=total if total is not None else 1, detail="")
        if total is None:
            self._bar.update(self._task, completed=1)

    def advance(self, detail: str = "") -> None:
        if self._task is not None:
            self._bar.update(self._task, advance=1, detail=detail[:40])

    def log(self, message: str) -> None:
        self._bar.console.print(message, markup=False, highlight=False)

    def close(self) -> None:
        self._finish()
        self._bar.stop()


def make_progress(stream: IO[str] | None = None) -> Progress:
    """A rich bar when ``stream`` (default stderr) is a terminal, plain lines otherwise."""
    out = stream or sys.stderr
    if out.isatty():
        return RichProgress()
    return PlainProgress(out)


class _Silent:
    def stage(self, name: str, total: int | None = None) -> None:
        return None

    def advance(self, detail: str = "") -> None:
        return None

    def log(self, message: str) -> None:
        log.info("%s", message)

    def close(self) -> None:
        return None


# ----------------------------------------------------------------------------------- period
def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def day_period(day: date) -> tuple[datetime, datetime]:
    """``[day 00:00 UTC, next day 00:00 UTC)``; ``InvalidInput`` for 9999-12-31, whose end
    is past the last representable date."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    try:
        return start, start + timedelta(days=1)
    except OverflowError:
        raise InvalidInput(f"{day.isoformat()} is out of range: a digest period must end by "
                           f"{date.max.isoformat()} (the last day it can cover is "
                           f"{(date.max - timedelta(days=1)).isoformat()})") from None


def period_key(since: datetime, until: datetime) -> str:
    """The digest's store key and file stem.

    One UTC day: ``YYYY-MM-DD`` (GET /v1/digests/{key} serves every form). Whole days:
    ``YYYY-MM-DD..YYYY-MM-DD`` (last day inclusive). Otherwise both ends to the minute,
    ``YYYY-MM-DDTHHMMZ..YYYY-MM-DDTHHMMZ`` (no ':' so the key is a portable file name).
    """
    s, u = _utc(since), _utc(until)
    midnight = s.time() == datetime.min.time() and u.time() == datetime.min.time()
    if midnight and u - s == timedelta(days=1):
        return s.date().isoformat()
    if midnight:
        return f"{s.date().isoformat()}..{(u - timedelta(days=1)).date().isoformat()}"
    return f"{s:%Y-%m-%dT%H%MZ}..{u:%Y-%m-%dT%H%MZ}"


def resolve_period(
    day: str | None, since: datetime | None, until: datetime | None, *,
    today: date | None = None,
) -> tuple[datetime, datetime]:
    """The CLI's period: ``--date`` (a UTC day), or ``--since``/``--until``, or by default
    yesterday (UTC), which is what the nightly job wants."""
    if day is not None:
        if since is not None or until is not None:
            raise InvalidInput("give either --date or --since/--until, not both")
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", day):
            raise InvalidInput(f"--date: expected YYYY-MM-DD, got '{day}'")
        try:
            the_day = date.fromisoformat(day)
        except ValueError as exc:  # the right shape, but e.g. 2024-02-30 or month 13
            raise InvalidInput(f"--date: {day} does not exist ({exc})") from None
        try:
            return day_period(the_day)
        except InvalidInput as exc:
            raise InvalidInput(f"--date: {exc}") from None
    if since is None and until is None:
        return day_period((today or datetime.now(UTC).date()) - timedelta(days=1))
    if since is None or until is None:
        raise InvalidInput("--since and --until go together")
    ends = []
    for name, value in (("--since", since), ("--until", until)):
        try:
            value = _utc(value)
        except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
            raise InvalidInput(f"{name}: {value.isoformat()} is out of range in UTC") from None
        # Keys name periods to the minute: a second or microsecond would give two different
        # periods one key (the second run overwriting the first).
        if value.second or value.microsecond:
            raise InvalidInput(f"{name}: {value.isoformat()} is not a whole minute (digest "
                               "periods start and end on a minute, e.g. 2021-10-18T06:30Z)")
        ends.append(value)
    since, until = ends
    if until <= since:
        raise InvalidInput("--until must be after --since")
    return since, until


def _key_start(key: str) -> date | None:
    try:
        return date.fromisoformat(key[:10])
    except ValueError:
        return None


# ---------------------------------------------------------------------------------- ranking
def importance(
    *, articles: int, outlets: int, leans: int, recency: float, novelty: float
) -> float:
    """The ranking score; see the module docstring."""
    base = (W_ARTICLES * math.log2(1 + articles) + W_OUTLETS * math.log2(1 + outlets)
            + W_LEANS * leans)
    return base * recency * novelty


@dataclass(slots=True)
class _Candidate:
    story: Story
    in_period: list[Article]
    previous: list[dict[str, Any]]
    prev_articles: set[str]
    new_articles: int = 0
    outlets: int = 0
    leans: int = 0
    recency: float = 1.0
    novelty: float = 1.0
    score: float = 0.0

    @property
    def status(self) -> str:
        if not self.previous:
            return "new"
        return "developing" if self.new_articles else "repeat"


@dataclass(slots=True)
class _Earlier:
    """What earlier digests featured: by story id and by article id."""

    by_story: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    by_article: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    articles_of: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def _earlier_digests(
    store: Any, since: datetime, until: datetime, key: str, lookback_days: int
) -> _Earlier:
    """Stories featured in the stored digests earlier than ``[since, until)``: those whose
    period starts before ``since`` and ends before ``until``. One that covers this period
    (ends at or after ``until``) is not earlier, even where it starts before: it may have
    been built later, and counting it would change this period's digest on a re-run."""
    out = _Earlier()
    try:
        lo = (since - timedelta(days=lookback_days)).date()
    except OverflowError:  # a period near 0001-01-01: look back as far as dates go
        lo = date.min
    for other in store.digest_dates():
        start = _key_start(other)
        if other == key or start is None or start < lo or start > since.date():
            continue
        try:
            doc = json.loads(store.get_digest(other, "json"))
        except (NotFound, ValueError):
            continue
        try:
            o_since = _utc(datetime.fromisoformat(doc["period"]["since"]))
            o_until = _utc(datetime.fromisoformat(doc["period"]["until"]))
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
        if o_since >= since or o_until >= until:
            continue
        for st in doc.get("stories", []):
            sid, rank = str(st.get("id")), int(st.get("rank", 0))
            out.by_story.setdefault(sid, []).append((other, rank))
            ids = [str(a) for a in st.get("article_ids", [])]
            out.articles_of[(other, sid)] = ids
            for aid in ids:
                out.by_article.setdefault(aid, []).append((other, sid, rank))
    return out


def _ancestors(store: Any, story_id: str, limit: int = 64) -> set[str]:
    """``story_id`` and every story that was merged or split into it (transitively)."""
    seen = {story_id}
    frontier = [story_id]
    while frontier and len(seen) < limit:
        sid = frontier.pop()
        for h in store.story_history(sid):
            if h.new_id == sid and h.old_id not in seen:
                seen.add(h.old_id)
                frontier.append(h.old_id)
    return seen


def _rank(
    store: Any, stories: list[Story], in_period: dict[str, list[Article]], earlier: _Earlier,
    since: datetime, until: datetime,
) -> list[_Candidate]:
    span = max((until - since).total_seconds(), 1.0)
    out: list[_Candidate] = []
    for st in stories:
        arts = in_period[st.id]
        previous: dict[tuple[str, str], int] = {}
        if earlier.by_story:
            for anc in sorted(_ancestors(store, st.id)):
                for dkey, rank in earlier.by_story.get(anc, []):
                    previous[(dkey, anc)] = rank
        for aid in st.article_ids:
            for dkey, sid, rank in earlier.by_article.get(aid, []):
                previous[(dkey, sid)] = rank
        prev_articles: set[str] = set()
        for pk in previous:
            prev_articles.update(earlier.articles_of.get(pk, []))
        c = _Candidate(
            story=st, in_period=arts, prev_articles=prev_articles,
            previous=[{"digest": d, "story_id": s, "rank": r}
                      for (d, s), r in sorted(previous.items())],
        )
        c.new_articles = sum(1 for a in arts if a.id not in prev_articles)
        c.outlets = len({a.source.casefold() for a in arts if a.source})  # see outlet_names
        c.leans = len({lean for a in arts if (lean := normalise_lean(a.lean))})
        last = max(_utc(a.published_at) for a in arts if a.published_at is not None)
        c.recency = 0.5 + 0.5 * min(1.0, max(0.0, (last - since).total_seconds() / span))
        c.novelty = NOVELTY_FLOOR + (1.0 - NOVELTY_FLOOR) * c.new_articles / len(arts)
        c.score = importance(articles=len(arts), outlets=c.outlets, leans=c.leans,
                             recency=c.recency, novelty=c.novelty)
        out.append(c)
    # Rounded so that float noise cannot reorder equal stories between runs.
    out.sort(key=lambda c: (-round(c.score, 9), -len(c.in_period), c.story.id))
    return out


# --------------------------------------------------------------------------------- analysis
@dataclass(slots=True)
class _Analysed:
    summary: Summary | None
    actors: list[ActorStance]
    articles: list[Article]
    cached: bool
    timing: dict[str, float]


def members_hash(articles: Sequence[Article]) -> str:
    """A story's content hash over ``articles``, computed as the clusterer computes it."""
    return stories_members_hash((a.id, a.content_hash) for a in articles)


@dataclass(frozen=True, slots=True)
class AnalysisPlan:
    """Where one featured story's analysis lives in the store, and what it reads.

    ``current``: the story's own view (``Pipeline.story_view``, kind ``analysis``); else the
    story as of ``until`` (kind ``analysis@<until>``). Both engines use this, so the local
    loop finds what the Ray engine stored."""

    story_id: str
    articles: list[Article]
    budget: int
    kind: str
    key: str
    current: bool
    #: ``members_hash`` of the ``article_print`` of every stored member as read for this
    #: plan (before the as-of filter): ``put_output(members=)`` writes only if they still
    #: read so, checked in the write's transaction
    members: str

    def is_cached(self, store: Any) -> bool:
        got = store.get_output(self.story_id, self.kind)
        return got is not None and got[0] == self.key


def analysis_plan(pipeline: Any, story: Story, until: datetime, budget: int | None
                  ) -> AnalysisPlan:
    arts = pipeline.store.get_articles(story.article_ids)
    # Over every member, not only the as-of ones: a change to any of them drops the
    # story's stored outputs, and an analysis started before it must not be written after.
    prints = members_print(arts)
    asof = [a for a in arts if a.published_at is not None and _utc(a.published_at) < until]
    chash = members_hash(asof)
    words = budget or pipeline.settings.summary_words
    # The stored analyses are the default budget's (``Pipeline.story_view`` stores no
    # other): a digest at another budget keeps entries of its own, so neither engine
    # overwrites the ones API reads and the nightly digest use.
    other = "" if words == pipeline.settings.summary_words else f":b{words}"
    if len(asof) == len(arts) and chash == story.content_hash:
        return AnalysisPlan(story.id, arts, words, "analysis" + other,
                            pipeline.analysis_key(story.content_hash, words), not other, prints)
    # The story grew after the period (or its stored hash is stale: articles updated while no
    # clusterer ran): analyse the members as they are and as the period knew them, cached
    # under a key of its own so the story's current view (the API's) is left alone.
    return AnalysisPlan(story.id, asof, words, f"analysis@{until.isoformat()}{other}",
                        pipeline.analysis_key(chash, words), False, prints)


def _analyse(pipeline: Any, story: Story, until: datetime, budget: int | None) -> _Analysed:
    """Summary and stances of ``story`` as of ``until`` (cached in the store)."""
    plan = analysis_plan(pipeline, story, until, budget)
    if plan.current:
        view = pipeline.story_view(story.id, budget_words=budget)
        return _Analysed(view.summary, list(view.actors), list(view.articles), view.cached,
                         dict(view.timing))
    cached = pipeline.store.get_output(story.id, plan.kind)
    if cached is not None and cached[0] == plan.key:
        summary, stances = msgspec.json.decode(cached[1], type=_Analysis)
        return _Analysed(summary, list(stances), plan.articles, True, {})
    summary, stances, timing = pipeline.analyse(plan.articles, plan.budget)
    # Not written (and still used for this document) when a member changed since the plan
    # read them: that change dropped the story's outputs, and the key, over content only,
    # would still match this analysis of the metadata it replaced.
    pipeline.store.put_output(story.id, plan.kind, plan.key,
                              msgspec.json.encode((summary, stances)).decode(),
                              members=plan.members)
    return _Analysed(summary, list(stances), plan.articles, False, dict(timing))


def _analyse_on_ray(pipeline: Any, stories: Sequence[Story], until: datetime,
                    budget: int | None, *, address: str | None, workers: int | None,
                    prog: Progress, stages: dict[str, float]) -> list[str]:
    """The Ray engine: analyse the stories whose analysis is not stored yet on Ray actors
    and store the results (the driver alone writes), so the ordinary loop finds every one
    cached. Returns the ids analysed."""
    from storyline.service import ray_engine

    plans = [analysis_plan(pipeline, st, until, budget) for st in stories]
    todo = [p for p in plans if not p.is_cached(pipeline.store)]
    prog.log(f"ray: {len(todo)} of {len(plans)} stories to analyse")
    if not todo:
        return []
    s = pipeline.settings
    rows = [{"story_id": p.story_id, "articles": ray_engine.encode_articles(p.articles),
             "budget": p.budget, "kind": p.kind, "key": p.key, "members": p.members}
            for p in todo]
    with ray_engine.ray_session(address, num_cpus=s.threads) as ray:
        results = ray_engine.analyse_stories(
            ray, rows, models_dir=s.models_dir, threads=s.threads,
            embed_batch_size=s.embed_batch_size, workers=workers)
    done = set()
    for r in results:
        # (a story changed while the job ran is left unstored: the loop below analyses it
        # again as it is then)
        pipeline.store.put_output(r["story_id"], r["kind"], r["key"], r["payload"],
                                  members=r["members"])
        done.add(r["story_id"])
        for name in ("summarise", "actors", "stance"):
            stages[name] = stages.get(name, 0.0) + r[name]
    return [p.story_id for p in todo if p.story_id in done]


# ----------------------------------------------------------------------------- the document
def _iso(dt: datetime | None) -> str | None:
    return _utc(dt).isoformat() if dt is not None else None


def _r(x: float) -> float:
    return round(float(x), 3)


def _clip(text: str, limit: int = MAX_QUOTE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def safe_url(url: str | None) -> str | None:
    """``url`` when it is an absolute http(s) URL, else None (no javascript:, data:, …)."""
    if not url:
        return None
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    if any(c.isspace() or ord(c) < 32 for c in url):
        return None
    return url


def _stance(s: Stance | None, by_id: dict[str, Article], *, evidence: bool = True
            ) -> dict[str, Any] | None:
    if s is None:
        return None
    out: dict[str, Any] = {"label": s.label, "score": _r(s.score),
                           "confidence": _r(s.confidence)}
    if evidence:
        ev = s.evidence[0] if s.evidence else None
        out["evidence"] = None if ev is None else {
            "article_id": ev.article_id, "text": _clip(ev.text),
            "outlet": by_id[ev.article_id].source if ev.article_id in by_id else None,
        }
    return out


def _lean_sort(lean: str) -> tuple[int, str]:
    return (_LEAN_ORDER.index(lean) if lean in _LEAN_ORDER else len(_LEAN_ORDER), lean)


def _coverage(arts: Sequence[Article]) -> list[dict[str, Any]]:
    """Outlets grouped by lean (known leans in spectrum order, then ``unknown``)."""
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    shown = outlet_names(a.source for a in arts)
    for a in arts:
        name = shown[a.source] if a.source else "unknown outlet"
        groups[normalise_lean(a.lean) or "unknown"][name] += 1
    order = sorted((g for g in groups if g != "unknown"), key=_lean_sort)
    if "unknown" in groups:
        order.append("unknown")
    return [
        {"lean": g, "outlets": [{"name": n, "articles": c}
                                for n, c in sorted(groups[g].items(), key=lambda t: (-t[1], t[0]))]}
        for g in order
    ]


def _story_entry(rank: int, c: _Candidate, an: _Analysed) -> dict[str, Any]:
    by_id = {a.id: a for a in an.articles}
    sources: list[dict[str, Any]] = []
    num: dict[str, int] = {}

    def cite(aid: str) -> int | None:
        if aid not in by_id:
            return None
        if aid not in num:
            a = by_id[aid]
            num[aid] = len(sources) + 1
            sources.append({
                "n": num[aid], "article_id": a.id, "title": a.title or a.id,
                "outlet": a.source, "lean": normalise_lean(a.lean), "url": safe_url(a.url),
                "published_at": _iso(a.published_at),
            })
        return num[aid]

    sentences = []
    if an.summary is not None:
        for s in an.summary.sentences:
            cites = [n for aid in s.article_ids if (n := cite(aid)) is not None]
            sentences.append({"text": " ".join(s.text.split()),
                              "citations": sorted(set(cites))})
    headline = " ".join(((an.summary.headline if an.summary else "") or c.story.label
                         or (an.articles[0].title if an.articles else c.story.id)).split())
    actors = []
    ranked = sorted(an.actors, key=lambda x: (x.actor.salience or 10**6, x.actor.name))
    for st in ranked[:MAX_ACTORS]:
        p = st.portrayal
        actors.append({
            "name": st.actor.name, "type": st.actor.type, "salience": st.actor.salience,
            "portrayal": {
                "overall": _stance(p.overall, by_id),
                "by_lean": {(normalise_lean(k) or k): _stance(v, by_id, evidence=False)
                            for k, v in sorted(p.by_lean.items())},
                "by_outlet": {k: _stance(v, by_id, evidence=False)
                              for k, v in sorted(p.by_outlet.items())},
            },
            "position": {
                "issue": _stance(st.position.issue, by_id),
                "toward": [{"actor": t.actor, "stance": _stance(t.stance, by_id)}
                           for t in st.position.toward[:MAX_TOWARD]],
            },
        })
    dated = [a.published_at for a in an.articles if a.published_at is not None]
    return {
        "rank": rank, "id": c.story.id, "headline": headline, "status": c.status,
        "score": _r(c.score),
        "signals": {"articles": len(c.in_period), "outlets": c.outlets, "leans": c.leans,
                    "recency": _r(c.recency), "novelty": _r(c.novelty),
                    "new_articles": c.new_articles},
        "first_at": _iso(min(dated)) if dated else None,
        "last_at": _iso(max(dated)) if dated else None,
        "article_ids": sorted(a.id for a in an.articles),
        "summary": {"mode": an.summary.mode if an.summary else "none", "sentences": sentences},
        "sources": sources,
        "coverage": _coverage(an.articles),
        "actors": actors,
        "previous": c.previous,
    }


RANKING_DOC = {
    "formula": "(w_articles*log2(1+articles) + w_outlets*log2(1+outlets) + w_leans*leans)"
               " * recency * novelty",
    "weights": {"w_articles": W_ARTICLES, "w_outlets": W_OUTLETS, "w_leans": W_LEANS},
    "recency": "0.5 + 0.5*(t_last - since)/(until - since)",
    "novelty": f"{NOVELTY_FLOOR} + {1 - NOVELTY_FLOOR:.1f}*new_articles/articles",
}


# -------------------------------------------------------------------------------- rendering
@functools.cache
def _templates() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _colour(group: str, index: int, by_lean: bool) -> str:
    if by_lean:
        return _LEAN_COLOUR.get(group, _GREY)
    return _PALETTE[index % len(_PALETTE)]


def chart(story: dict[str, Any]) -> dict[str, Any] | None:
    """Geometry of the story's portrayal chart: one row per main actor, one dot per lean
    (or per outlet when no lean is known) at its portrayal score on a -1…1 axis.
    Plain numbers and strings: the template draws (and escapes) them."""
    actors = [a for a in story["actors"][:MAX_CHART_ACTORS]
              if a["portrayal"]["by_lean"] or a["portrayal"]["by_outlet"]]
    if not actors:
        return None
    by_lean = any(a["portrayal"]["by_lean"] for a in actors)
    if by_lean:
        groups = sorted({g for a in actors for g in a["portrayal"]["by_lean"]},
                        key=lambda g: _lean_sort(normalise_lean(g) or g))
    else:
        counts: Counter[str] = Counter()
        for cov in story["coverage"]:
            for o in cov["outlets"]:
                counts[o["name"]] += o["articles"]
        present = {g for a in actors for g in a["portrayal"]["by_outlet"]}
        groups = sorted(present, key=lambda g: (-counts.get(g, 0), g))[:MAX_CHART_OUTLETS]
    width, left, right, row_h, top = 640, 150, 24, 34, 26
    plot_w = width - left - right

    def x(score: float) -> float:
        return round(left + (max(-1.0, min(1.0, score)) + 1) / 2 * plot_w, 1)

    colours = {g: _colour(normalise_lean(g) or g if by_lean else g, i, by_lean)
               for i, g in enumerate(groups)}
    rows = []
    for i, a in enumerate(actors):
        y = top + i * row_h + row_h / 2
        table = a["portrayal"]["by_lean" if by_lean else "by_outlet"]
        dots = []
        for j, g in enumerate(groups):
            s = table.get(g)
            if s is None:
                continue
            # Groups sit on slightly different heights so equal scores stay visible.
            dy = (j - (len(groups) - 1) / 2) * min(4.0, 16.0 / max(1, len(groups)))
            dots.append({"x": x(s["score"]), "y": round(y + dy, 1), "colour": colours[g],
                         "title": f"{g}: {s['label']} ({s['score']:+.2f})"})
        overall = a["portrayal"]["overall"]
        rows.append({
            "name": a["name"] if len(a["name"]) <= 22 else a["name"][:21] + "…",
            "full_name": a["name"], "y": y, "dots": dots,
            "overall_x": x(overall["score"]) if overall else None,
            "overall_title": (f"overall: {overall['label']} ({overall['score']:+.2f})"
                              if overall else ""),
        })
    # Legend entries flow left to right and wrap onto further lines (~7 px per character).
    bottom = top + len(rows) * row_h
    legend: list[dict[str, Any]] = []
    lx, ly = 10.0, bottom + 24.0
    for g in groups:
        label = g if len(g) <= 18 else g[:17] + "…"
        w = 15 + 7.0 * len(label) + 14
        if lx + w > width and lx > 10.0:
            lx, ly = 10.0, ly + 20
        legend.append({"x": round(lx, 1), "y": ly, "label": label, "colour": colours[g]})
        lx += w
    if lx + 80 > width:
        lx, ly = 10.0, ly + 20
    legend.append({"x": round(lx, 1), "y": ly, "label": "overall", "colour": None})
    return {
        "width": width, "height": int(ly + 12), "left": left, "right": width - right,
        "top": top - 8, "bottom": bottom,
        "ticks": [{"x": x(v), "label": f"{v:+.0f}" if v else "0"} for v in (-1.0, 0.0, 1.0)],
        "rows": rows, "legend": legend, "by": "lean" if by_lean else "outlet",
    }


def render_html(doc: dict[str, Any]) -> str:
    """The self-contained page (autoescaped template ``templates/digest.html.j2``)."""
    charts = {s["id"]: chart(s) for s in doc["stories"]}
    return str(_templates().get_template("digest.html.j2").render(
        doc=doc, charts=charts, lean_colour=_LEAN_COLOUR, grey=_GREY))


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")
_MD_ENTITY = re.compile(r"&(?=#?[A-Za-z0-9]+;)")


def md_escape(text: str) -> str:
    """Article text made inert in Markdown: markup characters backslash-escaped, raw HTML
    and entities neutralised, and line breaks folded (they would start new blocks)."""
    text = " ".join(str(text).split())
    text = _MD_ENTITY.sub(r"\\&", _MD_SPECIAL.sub(r"\\\1", text))
    # A leading '#', '+', '-' or 'N.' would turn the line into a heading or list item.
    return re.sub(r"^([#+\-]|\d+\.)", r"\\\1", text)


def md_url(url: str) -> str:
    """A URL safe inside ``[text](url)``: spaces, parentheses and angle brackets encoded."""
    return quote(url, safe=":/?#@!$&'*+,;=%~-._")


def _stance_md(s: dict[str, Any] | None) -> str:
    if s is None:
        return "—"
    out = f"{s['label']} ({s['score']:+.2f})"
    ev = s.get("evidence")
    if ev:
        by = f" — {md_escape(ev['outlet'])}" if ev.get("outlet") else ""
        out += f": “{md_escape(ev['text'])}”{by}"
    return out


def render_markdown(doc: dict[str, Any]) -> str:
    """Markdown for mail and chat: headline, cited summary, actors, coverage, sources."""
    t = doc["totals"]
    lines = [
        f"# storyline digest — {doc['key']}", "",
        f"Generated for {doc['generated_for']} · {t['featured']} of {t['stories']} stories, "
        f"{t['articles']} articles from {t['outlets']} outlets.", "",
    ]
    for s in doc["stories"]:
        src = {x["n"]: x for x in s["sources"]}

        def ref(n: int, src: dict[int, dict[str, Any]] = src) -> str:
            url = src[n]["url"]
            return f"[\\[{n}\\]]({md_url(url)})" if url else f"\\[{n}\\]"

        lines.append(f"## {s['rank']}. {md_escape(s['headline'])}")
        sig = s["signals"]
        meta = [f"{sig['articles']} articles", f"{sig['outlets']} outlets"]
        if s["status"] == "developing":
            meta.insert(0, "**Developing story**")
        elif s["status"] == "repeat":
            meta.insert(0, "**Featured before**")
        if s["previous"]:
            meta.append("previously in " + ", ".join(
                sorted({p["digest"] for p in s["previous"]})))
        lines += [" · ".join(meta), ""]
        if s["summary"]["sentences"]:
            lines.append(" ".join(
                md_escape(x["text"]) + "".join(" " + ref(n) for n in x["citations"])
                for x in s["summary"]["sentences"]))
            lines.append("")
        if s["actors"]:
            lines.append("**Actors**")
            lines.append("")
            for a in s["actors"]:
                p = a["portrayal"]
                part = f"- **{md_escape(a['name'])}** ({md_escape(a['type'])}): portrayed " + \
                    _stance_md(p["overall"])
                if p["by_lean"]:
                    part += " · by lean: " + ", ".join(
                        f"{md_escape(k)} {v['score']:+.2f}" for k, v in p["by_lean"].items())
                if a["position"]["issue"]:
                    part += " · position: " + _stance_md(a["position"]["issue"])
                for tw in a["position"]["toward"]:
                    part += f" · toward {md_escape(tw['actor'])}: " + _stance_md(tw["stance"])
                lines.append(part)
            lines.append("")
        cov = "; ".join(
            f"{md_escape(g['lean'])}: " + ", ".join(
                f"{md_escape(o['name'])} ({o['articles']})" for o in g["outlets"])
            for g in s["coverage"])
        lines += [f"Coverage — {cov}", ""]
        if s["sources"]:
            lines.append("Sources:")
            for x in s["sources"]:
                title = md_escape(x["title"])
                item = f"[{title}]({md_url(x['url'])})" if x["url"] else title
                by = f" — {md_escape(x['outlet'])}" if x["outlet"] else ""
                lines.append(f"\\[{x['n']}\\] {item}{by}  ")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


# ------------------------------------------------------------------------------------ build
@dataclass(slots=True)
class DigestResult:
    key: str
    since: datetime
    until: datetime
    #: the JSON document (what ``bodies['json']`` encodes)
    document: dict[str, Any]
    #: every format (html, md, json), as stored; ``files`` has the ones written to ``out_dir``
    bodies: dict[str, str]
    #: articles published in the period and stories with at least one of them
    articles: int
    stories: int
    featured: list[str]
    #: featured stories whose analysis was computed in this run (the rest came from the cache)
    recomputed: list[str]
    stages: dict[str, float]
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)

    def summary_line(self) -> str:
        where = f" -> {next(iter(self.files.values())).parent}" if self.files else ""
        return (f"digest {self.key}: {len(self.featured)} stories of {self.stories}, "
                f"{self.articles} articles, {len(self.recomputed)} re-summarised, "
                f"{self.seconds:.1f} s{where}")


def prepare_out_dir(out_dir: Path, *, name: str = "output folder") -> Path:
    """Create ``out_dir`` (with its parents) or raise ``InvalidInput`` saying why it cannot
    be the digest's output folder (``name`` is how the message calls it, e.g. ``--out``)."""
    if not out_dir.is_dir():
        # the nearest existing ancestor: a file there ("afile/sub") is the usual mistake
        anc = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
        if anc is not None and not anc.is_dir():
            raise InvalidInput(f"{name}: {anc} is a file, not a folder")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(
                f"{name}: cannot create {out_dir} ({exc.strerror or exc})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise InvalidInput(f"{name}: {out_dir} is not writable")
    return out_dir


def _write_atomic(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; the pages are meant to be served
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_files(out_dir: Path, key: str, fmts: Sequence[str]) -> list[Path]:
    """Remove ``<out_dir>/<key>.<fmt>`` for ``fmts``; the paths that were there."""
    gone = []
    for fmt in fmts:
        path = out_dir / f"{key}.{fmt}"
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise InvalidInput(f"output folder: cannot remove {path}: "
                               f"{exc.strerror or exc}") from None
        gone.append(path)
    return gone


def _drop_stale(store: Any, key: str, out_dir: Path | None) -> str:
    """Remove a digest stored for ``key`` (and its files in ``out_dir``): the period has
    nothing to digest now, e.g. its articles were deleted. What to add to the message."""
    stored = store.delete_digest(key)
    files = _remove_files(out_dir, key, FORMATS) if out_dir is not None else []
    if not stored and not files:
        return ""
    what = " and ".join(w for w, on in (("stored digest", stored), ("files", files)) if on)
    return f" (removed the {what} of {key})"


def _clusterer(pipeline: Any) -> Any | None:
    """The pipeline's story clusterer (None when clustering was switched off)."""
    return pipeline.clusterer


@contextmanager
def _timed(stages: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0


def parse_formats(value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    fmts = []
    for raw in items:
        f = raw.strip().lower()
        f = "md" if f == "markdown" else f
        if not f:
            continue
        if f not in FORMATS:
            raise InvalidInput(f"unknown digest format '{raw.strip()}' (use html, md, json)")
        if f not in fmts:
            fmts.append(f)
    if not fmts:
        raise InvalidInput("no digest format given (use html, md, json)")
    return tuple(fmts)


def build_digest(
    pipeline: Any,
    *,
    since: datetime,
    until: datetime,
    top: int = 10,
    formats: Sequence[str] = FORMATS,
    out_dir: Path | None = None,
    progress: Progress | None = None,
    lookback_days: int = 14,
    budget_words: int | None = None,
    refine: bool = True,
    engine: str = "local",
    ray_address: str | None = None,
    ray_workers: int | None = None,
) -> DigestResult:
    """Build, store and (with ``out_dir``) write the digest of ``[since, until)``.

    ``engine="ray"`` runs the analysis of the featured stories not analysed yet as a Ray
    Data job (``ray_address``: an existing cluster, e.g. ``auto``; default an embedded
    single-node Ray; ``ray_workers`` actors, default one per CPU) and stores the results
    first; the digest is byte-identical to the local engine's.

    All three formats are rendered and replace the key's stored digest in one transaction;
    ``formats`` only chooses which of them are written to ``out_dir`` (that key's files of
    the other formats there are removed, being an older run's).

    Raises ``InvalidInput`` for a bad period / top / format / engine and ``NotFound`` when
    the period has nothing to digest (no article published in it, or none in an active
    story); a digest stored for the key before (and its files in ``out_dir``) is removed
    first, and the message says so.
    """
    t0 = time.perf_counter()
    since, until = _utc(since), _utc(until)
    if until <= since:
        raise InvalidInput(f"empty period: until ({until.isoformat()}) must be after since "
                           f"({since.isoformat()})")
    if top < 1:
        raise InvalidInput("top must be >= 1")
    fmts = parse_formats(formats)
    if engine not in ENGINES:
        raise InvalidInput(f"unknown engine '{engine}' (use {' or '.join(ENGINES)})")
    if engine == "ray":  # fail before any work when the extra is missing
        from storyline.service.ray_engine import import_ray

        import_ray()
    if out_dir is not None:  # a bad output folder fails here, not after the work
        prepare_out_dir(out_dir)
    prog: Progress = progress or _Silent()
    store = pipeline.store
    key = period_key(since, until)
    stages: dict[str, float] = {}

    if refine:
        prog.stage("refine stories")
        with _timed(stages, "refine"):
            c = _clusterer(pipeline)
            if c is not None and hasattr(c, "refine"):
                stats = c.refine()
                prog.log(f"refined stories: {stats}")

    prog.stage("select stories")
    with _timed(stages, "select"):
        ids = store.articles_between(since, until)
        if not ids:
            raise NotFound(f"no articles published between {since.isoformat()} and "
                           f"{until.isoformat()}: nothing to digest"
                           + _drop_stale(store, key, out_dir))
        arts = {a.id: a for a in store.get_articles(ids)}
        story_of = store.story_of(ids)
        grouped: dict[str, list[Article]] = defaultdict(list)
        for aid in ids:
            if aid in story_of and aid in arts:
                grouped[story_of[aid]].append(arts[aid])
        stories = []
        for sid in sorted(grouped):
            st = store.get_story(sid)
            if st.status == "active":
                stories.append(st)
        unplaced = len(ids) - sum(len(v) for v in grouped.values())
        if unplaced:
            prog.log(f"{unplaced} articles of the period belong to no story (not clustered)")
        if not stories:
            raise NotFound(f"the {len(ids)} articles published in {key} belong to no active "
                           "story; is clustering on?" + _drop_stale(store, key, out_dir))
        earlier = _earlier_digests(store, since, until, key, lookback_days)
        ranked = _rank(store, stories, grouped, earlier, since, until)
        featured = ranked[:top]
    prog.log(f"{len(ids)} articles, {len(stories)} stories; featuring {len(featured)}")

    on_ray: set[str] = set()
    if engine == "ray":
        prog.stage("summarise and tag stances (ray)")
        with _timed(stages, "ray"):
            on_ray = set(_analyse_on_ray(
                pipeline, [c.story for c in featured], until, budget_words,
                address=ray_address, workers=ray_workers, prog=prog, stages=stages))
    prog.stage("summarise and tag stances", len(featured))
    entries = []
    recomputed: list[str] = []
    for i, cand in enumerate(featured, 1):
        an = _analyse(pipeline, cand.story, until, budget_words)
        for name, secs in an.timing.items():
            stages[name] = stages.get(name, 0.0) + secs
        if not an.cached or cand.story.id in on_ray:
            recomputed.append(cand.story.id)
        entries.append(_story_entry(i, cand, an))
        prog.advance(("cached " if an.cached and cand.story.id not in on_ray else "")
                     + cand.story.id)

    prog.stage("render")
    with _timed(stages, "render"):
        outlets = {a.source.casefold() for a in arts.values() if a.source}
        doc: dict[str, Any] = {
            "schema": SCHEMA_ID, "key": key, "generated_for": key.replace("..", " to "),
            "period": {"since": since.isoformat(), "until": until.isoformat()},
            "totals": {"articles": len(ids), "stories": len(stories), "outlets": len(outlets),
                       "featured": len(entries)},
            "ranking": RANKING_DOC, "stories": entries,
        }
        # Every format, whatever ``formats`` says (rendering is cheap): the store then never
        # holds one format of this run beside another of an older run. The JSON is what
        # later digests read to tell new stories from developing ones.
        bodies = {"html": render_html(doc), "md": render_markdown(doc),
                  "json": render_json(doc)}

    prog.stage("store")
    files: dict[str, Path] = {}
    with _timed(stages, "store"):
        store.put_digests(key, bodies)
        if out_dir is not None:
            for fmt in fmts:
                path = out_dir / f"{key}.{fmt}"
                try:
                    _write_atomic(path, bodies[fmt])
                except OSError as exc:  # e.g. the folder went away or the disk is full
                    raise InvalidInput(f"output folder: cannot write {path}: "
                                       f"{exc.strerror or exc}") from None
                files[fmt] = path
            _remove_files(out_dir, key, [f for f in FORMATS if f not in fmts])
    res = DigestResult(
        key=key, since=since, until=until, document=doc, bodies=bodies, articles=len(ids),
        stories=len(stories), featured=[e["id"] for e in entries], recomputed=recomputed,
        stages={k: round(v, 3) for k, v in stages.items()},
        seconds=round(time.perf_counter() - t0, 3), files=files,
    )
    return res


def digest_period_for(articles: Sequence[Article]) -> tuple[datetime, datetime] | None:
    """The whole UTC days covering ``articles``' publication times (None if none is dated)."""
    dated = [_utc(a.published_at) for a in articles if a.published_at is not None]
    if not dated:
        return None
    first, last = min(dated).date(), max(dated).date()
    try:
        return day_period(first)[0], day_period(last)[1]
    except InvalidInput as exc:
        raise InvalidInput(f"digest of the articles' days: {exc}") from None

