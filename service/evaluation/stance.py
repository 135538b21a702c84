"""Evaluate actor extraction + stance tagging against gold portrayal and speaker->target labels.

Inputs:

* ``articles_file``: JSONL in storyline's article format (id, title, text, source, url,
  published_at, lang, lean optional), read with ``storyline.service.ingest``.
* ``gold_file``: JSONL, one judgement per line (``article_id`` a string or integer), either
  ``{"article_id", "actor", "label"}`` — how the article portrays the actor — or
  ``{"article_id", "speaker", "target", "label"}`` — the speaker's stance toward the target
  in that article; ``label`` is ``negative | neutral | positive``.

Each gold article is one story: ``extractor.extract([article])`` then
``tagger.tag(actors, [article])`` (an extractor with a ``prepare`` method gets the articles in
chunks first, so spaCy parses them in batches).

Matching: a gold name matches a predicted actor when its key (casefolded, titles, "the",
dots and possessive stripped; country aliases such as "U.S." -> "United States" folded) equals
the key of any of the actor's aliases, or for a person the surname of one ("Mrs. Merkel" ->
Angela Merkel); failing that, a gold full name matches a person known only by its surname
("Joe Biden" -> an article's "President Biden"); several matches -> the most salient. An
edge matches when the speaker matches and the speaker's ``position.toward`` has an entry
whose actor matches the target.

Scoring maps predicted stance labels to gold polarity: supportive -> positive, critical ->
negative, neutral and mixed -> neutral (a mixed portrayal is not one-sidedly either).
``coverage`` is the share of gold items matched, ``None`` when the gold file has no such item;
``macro_f1`` is over matched items only (the misses are already counted by coverage),
unweighted over the classes present in gold or prediction, and ``None`` when nothing matched;
``edge_coverage`` / ``edge_macro_f1`` likewise for speaker->target items.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storyline.models.actors import alias_keys, normalise_name
from storyline.models.errors import InvalidInput
from storyline.models.protocols import ActorExtractor, StanceTagger
from storyline.models.sentiment import macro_f1
from storyline.models.types import ActorStance, Article, StanceLabel

__all__ = ["LABEL_TO_POLARITY", "POLARITIES", "GoldItem", "evaluate_stance", "read_gold"]

POLARITIES = ("negative", "neutral", "positive")
LABEL_TO_POLARITY: dict[StanceLabel, str] = {
    "supportive": "positive",
    "critical": "negative",
    "neutral": "neutral",
    "mixed": "neutral",
}


@dataclass(frozen=True, slots=True)
class GoldItem:
    line: int
    article_id: str
    label: str
    actor: str | None = None  # portrayal item
    speaker: str | None = None  # edge item
    target: str | None = None

    @property
    def is_edge(self) -> bool:
        return self.speaker is not None


def read_gold(path: Path) -> list[GoldItem]:
    """Parse the gold file; a malformed line raises ``InvalidInput`` naming the line."""
    from storyline.models.jsonl import jsonl_objects

    items: list[GoldItem] = []
    for n, obj in jsonl_objects(path):
        label = obj.get("label")
        if label not in POLARITIES:
            raise InvalidInput(f"{path}:{n}: label must be one of {', '.join(POLARITIES)}")
        aid = obj.get("article_id")
        if isinstance(aid, int) and not isinstance(aid, bool):
            aid = str(aid)  # as the article format allows integer ids
        if not isinstance(aid, str) or not aid.strip():
            raise InvalidInput(
                f"{path}:{n}: article_id must be a non-empty string or integer")
        aid = aid.strip()  # article ids are stripped when articles are read
        if "speaker" in obj or "target" in obj:
            sp, tg = obj.get("speaker"), obj.get("target")
            if not (isinstance(sp, str) and sp.strip() and isinstance(tg, str) and tg.strip()):
                raise InvalidInput(f"{path}:{n}: speaker and target must be non-empty strings")
            items.append(GoldItem(n, aid, label, speaker=sp, target=tg))
        else:
            actor = obj.get("actor")
            if not isinstance(actor, str) or not actor.strip():
                raise InvalidInput(f"{path}:{n}: actor must be a non-empty string")
            items.append(GoldItem(n, aid, label, actor=actor))
    return items


def _read_articles(path: Path, max_chars: int) -> dict[str, Article]:
    from storyline.service.evaluation.clustering import load_gold_articles

    return {a.id: a for a in load_gold_articles(path, max_chars=max_chars)}


def _keys(stance: ActorStance) -> set[str]:
    keys: set[str] = set()
    for alias in (stance.actor.name, *stance.actor.aliases):
        keys |= alias_keys(alias)
        if stance.actor.type == "PERSON":
            keys.add(normalise_name(alias).split()[-1])  # "Mrs. Merkel" names Angela Merkel
    return keys


def _find(stances: Sequence[ActorStance], name: str) -> ActorStance | None:
    want = alias_keys(name)
    hits = [s for s in stances if want & _keys(s)]
    if not hits and len(words := normalise_name(name).split()) > 1:
        # The other direction: the article only ever says "President Biden", the gold
        # names "Joe Biden".
        hits = [
            s
            for s in stances
            if s.actor.type == "PERSON"
            and any(normalise_name(a) == words[-1] for a in (s.actor.name, *s.actor.aliases))
        ]
    return min(hits, key=lambda s: s.actor.salience) if hits else None


def _chunks(seq: Sequence[Article], size: int) -> Iterator[Sequence[Article]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _f1(gold: list[str], pred: list[str]) -> float | None:
    if not gold:
        return None
    idx = {p: i for i, p in enumerate(POLARITIES)}
    f1 = float(macro_f1([idx[g] for g in gold], [idx[p] for p in pred], len(POLARITIES)))
    return round(f1, 4)


def evaluate_stance(
    articles_file: Path,
    gold_file: Path,
    *,
    extractor: ActorExtractor,
    tagger: StanceTagger,
    chunk_size: int = 64,
    max_chars: int = 200_000,
) -> dict[str, Any]:
    """Coverage and macro-F1 of portrayal and speaker->target stance (see module doc)."""
    articles = _read_articles(articles_file, max_chars)
    gold = read_gold(gold_file)
    if not gold:
        raise InvalidInput(f"nothing to evaluate: {gold_file} has no gold lines")
    missing = sorted({g.article_id for g in gold} - articles.keys())
    if missing:
        raise InvalidInput(
            f"{gold_file}: {len(missing)} gold article id(s) not in {articles_file}: "
            + ", ".join(missing[:5])
        )
    by_article: dict[str, list[GoldItem]] = defaultdict(list)
    for g in gold:
        by_article[g.article_id].append(g)
    todo = [articles[aid] for aid in by_article]

    t0 = time.perf_counter()
    portrayal_gold: list[str] = []
    portrayal_pred: list[str] = []
    edge_gold: list[str] = []
    edge_pred: list[str] = []
    prepare = getattr(extractor, "prepare", None)
    for part in _chunks(todo, chunk_size):
        if callable(prepare):
            prepare(part)
        for art in part:
            stances = tagger.tag(extractor.extract([art]), [art])
            for g in by_article[art.id]:
                if g.is_edge:
                    assert g.speaker is not None and g.target is not None
                    label = _edge_label(stances, g.speaker, g.target)
                    if label is not None:
                        edge_gold.append(g.label)
                        edge_pred.append(label)
                else:
                    assert g.actor is not None
                    hit = _find(stances, g.actor)
                    if hit is not None:
                        portrayal_gold.append(g.label)
                        portrayal_pred.append(LABEL_TO_POLARITY[hit.portrayal.overall.label])
    elapsed = time.perf_counter() - t0

    n_gold = sum(not g.is_edge for g in gold)
    n_edges = sum(g.is_edge for g in gold)
    return {
        # A share of no items is undefined: 0.0 read as "every item missed".
        "coverage": round(len(portrayal_gold) / n_gold, 4) if n_gold else None,
        "macro_f1": _f1(portrayal_gold, portrayal_pred),
        "edge_coverage": round(len(edge_gold) / n_edges, 4) if n_edges else None,
        "edge_macro_f1": _f1(edge_gold, edge_pred),
        "n_gold": n_gold,
        "n_edges": n_edges,
        "n_matched": len(portrayal_gold),
        "n_edges_matched": len(edge_gold),
        "n_articles": len(todo),
        "seconds": round(elapsed, 3),
    }


def _edge_label(stances: Sequence[ActorStance], speaker: str, target: str) -> str | None:
    sp = _find(stances, speaker)
    if sp is None:
        return None
    by_name = {s.actor.name: s for s in stances}
    want = alias_keys(target)
    for tw in sp.position.toward:
        t = by_name.get(tw.actor)
        keys = _keys(t) if t is not None else alias_keys(tw.actor)
        if want & keys:
            return LABEL_TO_POLARITY[tw.stance.label]
    return None
