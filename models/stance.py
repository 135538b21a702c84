"""Actor stance: how the coverage portrays each actor, and where each actor stands.

:class:`ActorStanceTagger` implements the ``StanceTagger`` protocol. It is decoupled from the
sentiment model: it takes any *target scorer*, an object with
``predict(items: Sequence[(sentence, char_start, char_end)]) -> float32 [n, 3]`` returning
probabilities in the order (negative, neutral, positive). In production that is
``storyline.models.sentiment.TargetSentimentModel`` (int8 ONNX MiniLM fine-tuned on
NewsMTSC); :class:`VaderTargetScorer` is the documented low-resource mode (no model files,
lexicon sentiment in a window around the target; NewsMTSC macro-F1 about 0.53 against about
0.80 for the learned model). :func:`load_target_scorer` picks the learned model when it is
built and intact, else VADER.

**Portrayal** (``ActorStance.portrayal``): every mention of the actor is scored with the
target scorer on its sentence (the mention is the target). Mentions in a headline
(``ActorMention.in_title``, set by the extractor, since a body line may repeat words of the
headline; where it is unknown, a sentence that is a run of whole words of the headline)
weigh ``title_weight`` (2), others 1. The items are aggregated (rule below) over all
mentions (``overall``), per outlet (``Article.source``) and per lean (``Article.lean``);
articles without a source / lean are left out of those breakdowns. At most
``max_mentions`` (:data:`MAX_PORTRAYAL_MENTIONS`, 128) mentions per actor per story are
scored: headline mentions first, then evenly spaced over the rest in story order, so one
run-on sentence naming an actor hundreds of times costs a bounded number of model calls
(each about 5-10 ms).

**Position** (``ActorStance.position``), from the actor's own statements (who-said-what
comes from a *speech attributor*, by default :class:`storyline.models.actors.
SpacyActorExtractor`; its statements say which of the given actors speaks and is spoken of
by index, so two actors sharing a display name keep their own):

* ``toward``: for each other actor mentioned in what the actor says, the target scorer on the
  statement's sentence with that mention as the target, blended with the speech verb's
  polarity: critical verbs (:data:`CRITICAL_VERBS`: accuse, condemn, attack, criticise,
  warn, blame, denounce, slam, reject, ...) push toward negative, supportive verbs
  (:data:`SUPPORTIVE_VERBS`: praise, welcome, support, commend, hail, thank, endorse, ...)
  toward positive. The verb's one-hot distribution is mixed in with weight
  ``direct_cue_weight`` (0.5) when the target is what the verb acts on ("attacked *the
  West*", "accused *Ukraine* of"), ``indirect_cue_weight`` (0.25) when the target only
  appears in the content, and not at all under negation ("did not criticise"); a direct
  target's item also weighs ``direct_weight`` (2) in the aggregate, since the verb states
  the stance explicitly. Targets on
  the speaker's own side are skipped (same actor, or one stands for the other: "the
  Kremlin" about "Russia").
* ``issue``: the stance toward the story's issue, approximated as the target scorer on the
  statement content as a whole (the content span is the target) blended with the verb cue
  at ``indirect_cue_weight``. It is coarse: the model was trained on entity targets, and a
  story's "issue" is not named. ``None`` when the actor says nothing.

**Aggregation rule** (:func:`aggregate`, one rule for portrayal, edges and issue): each item
has probabilities (neg, neu, pos) and a weight; ``score`` = weighted mean of
``P(pos) - P(neg)`` in [-1, 1]. An item is *confidently* positive (negative) when positive
(negative) is its top class with probability >= ``confident`` (0.5).

* ``mixed`` when the confidently positive items and the confidently negative items each
  hold >= ``mixed_share`` (30%) of the weight: the coverage (or speaker) goes both ways;
* else, for **portrayal** (:data:`PORTRAYAL_RULE`, ``polar_threshold=None``), the class with
  the highest weighted mean probability: ``supportive``, ``critical`` or ``neutral`` (ties
  go to neutral). For one mention this is the model's own decision. A threshold on
  ``score`` called many mentions polar that the model itself rates neutral: on the
  NewsMTSC train holdout, mention by mention, ``score >= 0.15`` scores macro-F1 0.733
  against 0.771 for the argmax;
* else, for **positions** (:data:`DEFAULT_RULE`), ``supportive`` when ``score >=
  polar_threshold`` (0.15), ``critical`` when ``score <= -polar_threshold``, else
  ``neutral``. Positions blend in the speech verb's cue, and a threshold lets an explicit
  "praised" / "accused" decide against a model that reads the sentence as neutral.

``confidence`` = ``n / (n + 1)`` (more items, more trust: one item gives at most 0.5) times
the consistency of the items with the label: the weighted mean probability of the label's
class (positive for supportive, negative for critical, neutral for neutral), or for mixed the
share of confidently polar items. ``evidence``: up to ``max_evidence`` distinct sentences that
most support the label (for mixed alternately the most positive and the most negative).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput, ModelUnavailable
from storyline.models.memo import RowMemo
from storyline.models.types import (
    Actor,
    ActorMention,
    ActorStance,
    Article,
    Evidence,
    Portrayal,
    Position,
    Stance,
    StanceLabel,
    Statement,
    TowardStance,
    normalise_lean,
    outlet_names,
)

if TYPE_CHECKING:
    from storyline.models.actors import AttributedStatement
    from storyline.models.shared_cache import SharedCache

__all__ = [
    "CRITICAL_VERBS",
    "MAX_PORTRAYAL_MENTIONS",
    "PORTRAYAL_RULE",
    "SUPPORTIVE_VERBS",
    "ActorStanceTagger",
    "AggregationRule",
    "CachingTargetScorer",
    "SpeechAttributor",
    "TargetScorer",
    "VaderTargetScorer",
    "aggregate",
    "load_target_scorer",
]


def _words(text: str) -> frozenset[str]:
    """A word table written as running text (easier to read and diff than a list)."""
    return frozenset(text.split())


log = logging.getLogger(__name__)

CRITICAL_VERBS: frozenset[str] = _words(
    """accuse condemn attack criticise criticize denounce blame slam warn threaten reject
    dismiss decry lambast rebuke chastise deride mock assail castigate berate fault scold
    question brand"""
)
SUPPORTIVE_VERBS: frozenset[str] = _words(
    """praise welcome support commend hail applaud laud thank endorse back congratulate defend
    salute embrace"""
)
_NEG, _NEU, _POS = 0, 1, 2
_CLASS_LABEL: dict[int, StanceLabel] = {_NEG: "critical", _NEU: "neutral", _POS: "supportive"}
_ASCII_QUOTES = str.maketrans(
    {"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'", "‚": "'", "«": '"', "»": '"',
     "‹": "'", "›": "'"}
)
_CUE_VECTORS: dict[str, npt.NDArray[np.float64]] = {
    "critical": np.array([1.0, 0.0, 0.0]),
    "supportive": np.array([0.0, 0.0, 1.0]),
}


@runtime_checkable
class TargetScorer(Protocol):
    """Target-dependent sentiment: (sentence, start, end) -> P(negative, neutral, positive)."""

    def predict(self, items: Sequence[tuple[str, int, int]]) -> npt.NDArray[np.float32]: ...


class SpeechAttributor(Protocol):
    """Who said what, with the actors each statement talks about."""

    def attribute(
        self, articles: Sequence[Article], actors: Sequence[Actor] | None = None
    ) -> list[AttributedStatement]: ...


# ---------------------------------------------------------------------------------------------
# VADER: the low-resource target scorer
# ---------------------------------------------------------------------------------------------


class VaderTargetScorer:
    """VADER compound score of a window of words around the target, as three probabilities.

    The window (``window_words`` words each side, the target included) makes it roughly
    target-dependent: in "X praised Y while Z attacked W", W and Y get different windows.
    A compound ``c`` in [-1, 1] maps to ``(max(0, -c), 1 - |c|, max(0, c))``, which sums to
    one and keeps VADER's own strength. No model files; a few thousand items per second.
    """

    def __init__(self, window_words: int = 8) -> None:
        self.window_words = window_words
        self._sia: Any = None
        self.model_id = f"vader-window{window_words}"

    def _analyzer(self) -> Any:
        if self._sia is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            self._sia = SentimentIntensityAnalyzer()
        return self._sia

    def window(self, sentence: str, start: int, end: int) -> str:
        """The target with ``window_words`` words each side, curly quotes made ASCII."""
        left = sentence[:start].split()[-self.window_words :] if self.window_words else []
        right = sentence[end:].split()[: self.window_words] if self.window_words else []
        # VADER strips only ASCII punctuation: “aggressive” would miss its lexicon entry
        return " ".join([*left, sentence[start:end], *right]).translate(_ASCII_QUOTES)

    def predict(self, items: Sequence[tuple[str, int, int]]) -> npt.NDArray[np.float32]:
        out = np.empty((len(items), 3), dtype=np.float32)
        sia = self._analyzer()
        cache: dict[str, float] = {}
        for i, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) != 3:
                raise InvalidInput(f"item {i} is not a (sentence, start, end) triple")
            sentence, start, end = item
            if not (isinstance(sentence, str) and 0 <= start < end <= len(sentence)):
                raise InvalidInput(f"item {i}: target span [{start}, {end}) is not in the sentence")
            text = self.window(sentence, int(start), int(end))
            if text not in cache:
                cache[text] = float(sia.polarity_scores(text)["compound"])
            c = cache[text]
            out[i] = (max(0.0, -c), 1.0 - abs(c), max(0.0, c))
        return out


class CachingTargetScorer:
    """A ``TargetScorer`` that remembers the probabilities of the last ``size`` targets.

    Sound because the served model scores each target alone, unpadded (an answer depends on
    that target only). Stories change an article at a time and ad hoc article sets reuse
    stored articles, while stance is the costliest stage of an analysis: with this in front
    only mentions never scored before reach the model.
    """

    def __init__(
        self, inner: TargetScorer, size: int = 50_000, shared: SharedCache | None = None
    ) -> None:
        self._inner = inner
        self.model_id = str(getattr(inner, "model_id", type(inner).__name__))
        self._memo: RowMemo[tuple[str, int, int]] = RowMemo(
            size, None if shared is None else (shared, f"stance:{self.model_id}")
        )

    @property
    def hits(self) -> int:
        return self._memo.hits

    @property
    def misses(self) -> int:
        return self._memo.misses

    def predict(self, items: Sequence[tuple[str, int, int]]) -> npt.NDArray[np.float32]:
        if not all(
            isinstance(it, tuple)
            and len(it) == 3
            and isinstance(it[0], str)
            and isinstance(it[1], int)
            and isinstance(it[2], int)
            for it in items
        ):
            return self._inner.predict(items)  # the model names what is wrong
        return self._memo.get(items, 3, self._inner.predict)


def load_target_scorer(models_dir: Path | None, *, fallback: bool = True) -> TargetScorer:
    """The learned target-sentiment model in ``models_dir``; VADER when it is not built.

    With ``fallback=False`` a missing or broken model raises ``ModelUnavailable``.
    """
    if models_dir is not None:
        try:
            from storyline.models.sentiment import TargetSentimentModel

            model: TargetScorer = TargetSentimentModel(models_dir)
            return model
        except (ModelUnavailable, ImportError) as exc:
            if not fallback:
                if isinstance(exc, ModelUnavailable):
                    raise
                raise ModelUnavailable(f"target-sentiment model unavailable: {exc}") from exc
            log.warning("target-sentiment model unavailable (%s); using VADER", exc)
    elif not fallback:
        raise ModelUnavailable("no models directory given for the target-sentiment model")
    return VaderTargetScorer()


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AggregationRule:
    """Thresholds of :func:`aggregate` (see the module docstring)."""

    #: None: the class with the highest weighted mean probability decides
    polar_threshold: float | None = 0.15
    confident: float = 0.5
    mixed_share: float = 0.3
    max_evidence: int = 3


DEFAULT_RULE = AggregationRule()
PORTRAYAL_RULE = AggregationRule(polar_threshold=None)


def aggregate(
    probs: npt.ArrayLike,
    evidence: Sequence[Evidence],
    weights: npt.ArrayLike | None = None,
    rule: AggregationRule = DEFAULT_RULE,
) -> Stance:
    """One :class:`Stance` from items' (neg, neu, pos) probabilities; ``evidence[i]`` is
    item i's sentence."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1, 3)
    n = len(p)
    if n != len(evidence):
        raise InvalidInput(f"{n} items but {len(evidence)} evidence entries")
    if n == 0:
        return Stance(label="neutral", score=0.0, confidence=0.0)
    # NaN slips past every comparison below and an infinite weight makes the mean NaN:
    # either would come back as a NaN score and confidence instead of an error.
    if not np.isfinite(p).all():
        raise InvalidInput("item probabilities must be finite")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != n or not np.isfinite(w).all() or np.any(w < 0) or w.sum() <= 0:
        raise InvalidInput("weights must be finite, non-negative, one per item, not all zero")
    total = float(w.sum())
    s = p[:, _POS] - p[:, _NEG]
    score = float(np.clip((w * s).sum() / total, -1.0, 1.0))
    top = p.argmax(axis=1)
    conf_pos = (top == _POS) & (p[:, _POS] >= rule.confident)
    conf_neg = (top == _NEG) & (p[:, _NEG] >= rule.confident)
    share_pos = float(w[conf_pos].sum() / total)
    share_neg = float(w[conf_neg].sum() / total)

    label: StanceLabel
    if share_pos >= rule.mixed_share and share_neg >= rule.mixed_share:
        label = "mixed"
        consistency = share_pos + share_neg
    else:
        mean = (w[:, None] * p).sum(axis=0) / total  # weighted mean (neg, neu, pos)
        if rule.polar_threshold is None:
            # max() keeps the first of equal values: neutral wins a tie
            best = max((_NEU, _NEG, _POS), key=lambda c: float(mean[c]))
            if mean[_NEG] == mean[_POS]:
                best = _NEU
        elif score >= rule.polar_threshold:
            best = _POS
        elif score <= -rule.polar_threshold:
            best = _NEG
        else:
            best = _NEU
        label = _CLASS_LABEL[best]
        consistency = float(mean[best])
    confidence = float(np.clip(n / (n + 1.0) * consistency, 0.0, 1.0))
    return Stance(
        label=label,
        score=round(score, 4),
        confidence=round(confidence, 4),
        evidence=_pick_evidence(label, p, s, evidence, rule.max_evidence),
    )


def _pick_evidence(
    label: StanceLabel,
    p: npt.NDArray[np.float64],
    s: npt.NDArray[np.float64],
    evidence: Sequence[Evidence],
    k: int,
) -> tuple[Evidence, ...]:
    idx = np.arange(len(p))
    if label == "supportive":
        order = [int(i) for i in idx[np.argsort(-s, kind="stable")] if s[i] > 0]
    elif label == "critical":
        order = [int(i) for i in idx[np.argsort(s, kind="stable")] if s[i] < 0]
    elif label == "mixed":
        pos = [int(i) for i in idx[np.argsort(-s, kind="stable")] if s[i] > 0]
        neg = [int(i) for i in idx[np.argsort(s, kind="stable")] if s[i] < 0]
        order = [x for pair in zip(pos, neg, strict=False) for x in pair]
        order += pos[len(neg) :] + neg[len(pos) :]
    else:
        order = [int(i) for i in idx[np.argsort(-p[:, _NEU], kind="stable")]]
    out: list[Evidence] = []
    seen: set[tuple[str, str]] = set()
    for i in order:
        ev = evidence[i]
        if (ev.article_id, ev.text) in seen:
            continue
        seen.add((ev.article_id, ev.text))
        out.append(ev)
        if len(out) >= k:
            break
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# The tagger
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Items:
    """Unique (sentence, start, end) items to score in one ``predict`` call."""

    keys: list[tuple[str, int, int]]
    index: dict[tuple[str, int, int], int]

    def add(self, sentence: str, start: int, end: int) -> int | None:
        # clamp to the stripped span: a blank or out-of-range target is skipped, not sent
        if not (0 <= start < end <= len(sentence)) or not sentence[start:end].strip():
            return None
        key = (sentence, start, end)
        if key not in self.index:
            self.index[key] = len(self.keys)
            self.keys.append(key)
        return self.index[key]


@dataclass(slots=True)
class _Scored:
    item: int
    weight: float
    evidence: Evidence
    cue: str | None = None
    cue_weight: float = 0.0


#: Mentions scored per actor per story for its portrayal (see the module docstring).
MAX_PORTRAYAL_MENTIONS = 128


class ActorStanceTagger:
    """Portrayal and position per actor (see the module docstring for every rule).

    ``scorer``: any :class:`TargetScorer` (the learned model, or :class:`VaderTargetScorer`).
    ``attributor``: who-said-what; defaults to a :class:`SpacyActorExtractor`, which shares
    its parse cache with the extractor only when the same instance is passed.
    """

    def __init__(
        self,
        scorer: TargetScorer,
        *,
        attributor: SpeechAttributor | None = None,
        rule: AggregationRule = DEFAULT_RULE,
        portrayal_rule: AggregationRule = PORTRAYAL_RULE,
        title_weight: float = 2.0,
        direct_cue_weight: float = 0.5,
        indirect_cue_weight: float = 0.25,
        direct_weight: float = 2.0,
        max_mentions: int = MAX_PORTRAYAL_MENTIONS,
    ) -> None:
        self.scorer = scorer
        self.max_mentions = max_mentions
        self._attributor = attributor
        self.rule = rule
        self.portrayal_rule = portrayal_rule
        self.title_weight = title_weight
        self.direct_cue_weight = direct_cue_weight
        self.indirect_cue_weight = indirect_cue_weight
        self.direct_weight = direct_weight

    @property
    def attributor(self) -> SpeechAttributor:
        if self._attributor is None:
            from storyline.models.actors import SpacyActorExtractor

            self._attributor = SpacyActorExtractor()
        return self._attributor

    def tag(self, actors: Sequence[Actor], articles: Sequence[Article]) -> list[ActorStance]:
        if not actors:
            return []
        by_id = {a.id: a for a in articles}
        items = _Items([], {})

        # portrayal: every mention is a target in its sentence
        # keyed by position: two actors may share a display name, their mentions must not
        portrayal_items: dict[int, list[tuple[_Scored, Article | None]]] = defaultdict(list)
        for n, actor in enumerate(actors):
            for m, in_title in _capped(actor.mentions, by_id, self.max_mentions):
                i = items.add(m.sentence, m.start, m.end)
                if i is None:
                    continue
                art = by_id.get(m.article_id)
                weight = self.title_weight if in_title else 1.0
                portrayal_items[n].append(
                    (_Scored(i, weight, Evidence(m.article_id, m.sentence)), art)
                )

        # position: statements, their targets and their content, keyed by position like
        # the portrayal: the attributor says which of the given actors speaks and is spoken
        # of (by name, two actors sharing a display name would pool statements and edges)
        statements = self.attributor.attribute(articles, actors)
        said: dict[int, list[Statement]] = defaultdict(list)
        edge_items: dict[int, dict[int, list[_Scored]]] = defaultdict(lambda: defaultdict(list))
        issue_items: dict[int, list[_Scored]] = defaultdict(list)
        for st in statements:
            sp = _index(st.speaker_index, actors)
            if sp is None:
                continue
            speaker = actors[sp]
            said[sp].append(
                st.statement
                if st.statement.speaker == speaker.name
                else replace(st.statement, speaker=speaker.name)
            )
            cue = None if st.negated else _cue(st.statement.verb)
            ev = Evidence(st.statement.article_id, st.statement.sentence)
            for t in st.targets:
                tg = _index(t.actor_index, actors)
                if tg is None or tg == sp or _same_side(speaker, actors[tg]):
                    continue
                i = items.add(t.mention.sentence, t.mention.start, t.mention.end)
                if i is None:
                    continue
                if t.direct:
                    w, cw = self.direct_weight, self.direct_cue_weight
                else:
                    w, cw = 1.0, self.indirect_cue_weight
                edge_items[sp][tg].append(_Scored(i, w, ev, cue, cw))
            i = items.add(st.statement.sentence, st.content_start, st.content_end)
            if i is not None:
                issue_items[sp].append(_Scored(i, 1.0, ev, cue, self.indirect_cue_weight))

        probs = self._predict(items.keys)
        outlet_of = outlet_names(a.source for a in articles)
        out: list[ActorStance] = []
        for n, actor in enumerate(actors):
            scored = portrayal_items.get(n, [])
            overall = self._aggregate(probs, [s for s, _ in scored], self.portrayal_rule)
            by_outlet: dict[str, list[_Scored]] = defaultdict(list)
            by_lean: dict[str, list[_Scored]] = defaultdict(list)
            for s, art in scored:
                if art is not None and art.source:
                    by_outlet[outlet_of[art.source]].append(s)
                if art is not None and (lean := normalise_lean(art.lean)) is not None:
                    by_lean[lean].append(s)
            portrayal = Portrayal(
                overall=overall,
                by_outlet={
                    k: self._aggregate(probs, v, self.portrayal_rule)
                    for k, v in sorted(by_outlet.items())
                },
                by_lean={
                    k: self._aggregate(probs, v, self.portrayal_rule)
                    for k, v in sorted(by_lean.items())
                },
            )
            edges = edge_items.get(n, {})
            toward = tuple(
                TowardStance(actor=actors[tg].name, stance=self._aggregate(probs, v, self.rule))
                for tg, v in sorted(
                    edges.items(), key=lambda kv: (-len(kv[1]), actors[kv[0]].salience)
                )
            )
            issue = (
                self._aggregate(probs, issue_items[n], self.rule) if issue_items.get(n) else None
            )
            out.append(
                ActorStance(
                    actor=actor,
                    portrayal=portrayal,
                    position=Position(toward=toward, issue=issue),
                    statements=tuple(said.get(n, ())),
                )
            )
        return out

    def _predict(self, keys: list[tuple[str, int, int]]) -> npt.NDArray[np.float64]:
        if not keys:
            return np.zeros((0, 3))
        probs = np.asarray(self.scorer.predict(keys), dtype=np.float64)
        if probs.shape != (len(keys), 3):
            raise ModelUnavailable(
                f"target scorer returned shape {probs.shape}, expected ({len(keys)}, 3)"
            )
        # a broken scorer, not bad input: name it rather than let aggregate() blame the items
        if not np.isfinite(probs).all():
            raise ModelUnavailable("target scorer returned non-finite probabilities")
        return probs

    def _aggregate(
        self, probs: npt.NDArray[np.float64], scored: list[_Scored], rule: AggregationRule
    ) -> Stance:
        if not scored:
            return aggregate(np.zeros((0, 3)), [], rule=rule)
        rows = []
        for s in scored:
            row = probs[s.item]
            if s.cue is not None and s.cue_weight > 0:
                row = (1.0 - s.cue_weight) * row + s.cue_weight * _CUE_VECTORS[s.cue]
            rows.append(row)
        return aggregate(
            np.vstack(rows),
            [s.evidence for s in scored],
            weights=[s.weight for s in scored],
            rule=rule,
        )


def _capped(
    mentions: Sequence[ActorMention], by_id: dict[str, Article], cap: int
) -> list[tuple[ActorMention, bool]]:
    """``(mention, in_title)`` for at most ``cap`` of ``mentions``: headline ones first,
    then evenly spaced over the others, the chosen ones in their original order."""
    # the extractor's flag where it is known, not the sentence's text: a body line may
    # repeat whole words of the headline (a kicker "Iran" under "Iran denies attack")
    flagged = []
    for m in mentions:
        if m.in_title is None:
            art = by_id.get(m.article_id)
            flagged.append((m, bool(art and art.title and _in_title(m.sentence, art.title))))
        else:
            flagged.append((m, m.in_title))
    if len(flagged) <= cap:
        return flagged
    title = [k for k, (_, t) in enumerate(flagged) if t][:cap]
    rest = [k for k, (_, t) in enumerate(flagged) if not t]
    room = cap - len(title)
    picked = set(title)
    if room > 0:
        picked.update(rest[(j * len(rest)) // room] for j in range(room))
    return [flagged[k] for k in sorted(picked)]


def _in_title(sentence: str, title: str) -> bool:
    """Whether ``sentence`` is a run of whole words of ``title``, as a headline's sentences
    are: a bare substring would put a body line "Iran" or "US" in the headline "Iranian
    drones" or "Focus on USA"."""
    return (
        sentence in title and re.search(rf"(?<!\w){re.escape(sentence)}(?!\w)", title) is not None
    )


def _cue(verb: str) -> str | None:
    v = verb.casefold()
    if v in CRITICAL_VERBS:
        return "critical"
    if v in SUPPORTIVE_VERBS:
        return "supportive"
    return None


def _index(index: int | None, actors: Sequence[Actor]) -> int | None:
    """An attributor's actor index, None unless it names one of ``actors``."""
    return index if index is not None and 0 <= index < len(actors) else None


def _same_side(a: Actor, b: Actor) -> bool:
    """One of two distinct actors stands for the other, or both for the same government.

    Without ``stands_for`` two actors are two sides even when they share a display name
    (Mr. and Mrs. Johnson both shown as "Johnson")."""
    if a.stands_for is None and b.stands_for is None:
        return False
    side_a: str = a.stands_for or a.name
    side_b: str = b.stands_for or b.name
    return side_a == side_b
