"""Evaluate the served extractive summariser (and classic baselines) on AllSides-format JSONL.

Every system gets the same per-story word budget (the reference summary's length in words)
and its output is truncated at that budget before scoring, so a system cannot win by
writing more. ROUGE-1/2/L F1 come from ``rouge-score`` with the Porter stemmer.

Baselines run in the same call on the same sentence pool (the summariser's splitter,
incomplete sentences dropped) so differences come from *selection* alone:

- ``lead``: round-robin over articles: every article's first sentence, then every second...
- ``centroid``: cosine to the story centroid of the same MiniLM sentence embeddings, MMR
  (lambda 0.7).
- ``lexrank`` / ``textrank``: sumy, fed the pre-split sentences and a regex word tokenizer
  (no NLTK punkt download needed).

Baselines fill the budget in rank order and print in document order. ``faithfulness`` is
the share of summary sentences that are verbatim (whitespace-normalised) in an article they
cite, with every cited id a member of the story. ``ms_p50`` is the per-story wall time of
``summarise`` (sentence embedding included).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storyline.models.errors import InvalidInput
from storyline.models.summariser import (
    ExtractiveSummariser,
    PreparedStory,
    normalise_ws,
)
from storyline.models.summariser_train import AllSidesStory, load_allsides, truncate_words
from storyline.models.types import Summary
from storyline.service.ingest import parse_datetime

__all__ = [
    "BASELINES",
    "baseline_summary",
    "check_faithful",
    "evaluate_summaries",
    "format_table",
]

BASELINES = ("lead", "lexrank", "textrank", "centroid")
#: the split names AllSides uses, and ``all`` (any other name a stories file gives works too)
SPLITS = ("dev", "train", "all")
_SUMY_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


class _PresplitTokenizer:
    """sumy tokenizer for text that is already one sentence: no punkt data needed."""

    language = "english"

    def to_sentences(self, paragraph: str) -> list[str]:
        return [paragraph]

    def to_words(self, sentence: str) -> list[str]:
        return _SUMY_WORD.findall(sentence)


def _sumy_ranking(story: PreparedStory, kind: str) -> list[int]:
    """Candidate sentence indices, best first, as sumy's LexRank / TextRank rate them."""
    from sumy.models.dom import ObjectDocumentModel, Paragraph
    from sumy.models.dom import Sentence as SumySentence
    from sumy.nlp.stemmers import Stemmer
    from sumy.summarizers.lex_rank import LexRankSummarizer
    from sumy.summarizers.text_rank import TextRankSummarizer
    from sumy.utils import get_stop_words

    tok = _PresplitTokenizer()
    cands = story.candidates
    sents = [SumySentence(story.sentences[i].text, tok) for i in cands]
    doc = ObjectDocumentModel([Paragraph(sents)])
    summ = (LexRankSummarizer if kind == "lexrank" else TextRankSummarizer)(Stemmer("english"))
    summ.stop_words = get_stop_words("english")
    ranked: list[Any] = []

    def take_all(infos: list[Any]) -> list[Any]:
        ranked.extend(infos)  # sumy hands the infos sorted by rating, best first
        return infos

    summ(doc, take_all)
    first_rank: dict[str, int] = {}
    for r, info in enumerate(ranked):
        first_rank.setdefault(str(info.sentence), r)
    order = sorted(range(len(cands)),
                   key=lambda k: (first_rank.get(story.sentences[cands[k]].text, 1 << 30), k))
    return [cands[k] for k in order]


def _centroid_mmr_ranking(story: PreparedStory, budget: int, lam: float = 0.7) -> list[int]:
    cands = story.candidates
    emb = story.emb
    centroid = emb.mean(axis=0)
    centroid = centroid / max(float(np.linalg.norm(centroid)), 1e-12)
    rel = emb[cands] @ centroid
    chosen: list[int] = []
    words = 0
    left = list(range(len(cands)))
    while left and words < budget:
        def value(k: int) -> float:
            red = max((float(emb[cands[k]] @ emb[cands[j]]) for j in chosen), default=0.0)
            return lam * float(rel[k]) - (1 - lam) * red

        best = max(left, key=lambda k: (value(k), -k))
        left.remove(best)
        chosen.append(best)
        words += story.sentences[cands[best]].n_words
    return [cands[k] for k in chosen]


def _fill(story: PreparedStory, ranking: Sequence[int], budget: int) -> list[int]:
    """Take sentences in rank order until the budget is reached; print in document order."""
    picked: list[int] = []
    words = 0
    for i in ranking:
        if words >= budget:
            break
        picked.append(i)
        words += story.sentences[i].n_words
    return sorted(picked, key=lambda i: (story.sentences[i].article, story.sentences[i].position))


def baseline_summary(story: PreparedStory, budget: int, kind: str) -> list[int]:
    """Sentence indices of baseline ``kind`` for ``story`` (document order)."""
    cands = story.candidates
    if kind == "lead":
        ranking = sorted(cands, key=lambda i: (story.sentences[i].position,
                                               story.sentences[i].article))
    elif kind in ("lexrank", "textrank"):
        ranking = _sumy_ranking(story, kind)
    elif kind == "centroid":
        ranking = _centroid_mmr_ranking(story, budget)
    else:
        raise ValueError(f"unknown baseline {kind!r}")
    return _fill(story, ranking, budget)


def check_faithful(summary: Summary, story: PreparedStory) -> list[bool]:
    """Per sentence: every cited id is in the story and one cited article holds the text
    verbatim (whitespace-normalised). An excerpt of an incomplete piece carries "…" at its
    cut ends (the summariser's budget rule); those marks are not source text."""
    texts = {a.id: normalise_ws(a.text) for a in story.articles}
    out = []
    for s in summary.sentences:
        ids = s.article_ids
        ok = bool(ids) and all(i in texts for i in ids)
        shown = normalise_ws(s.text)
        bare = shown.removeprefix("…").removesuffix("…")
        ok = ok and any(shown in texts[i] or (bare and bare in texts[i])
                        for i in ids if i in texts)
        out.append(ok)
    return out


class _Rouge:
    def __init__(self) -> None:
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)

    def f1(self, reference: str, prediction: str) -> dict[str, float]:
        res = self._scorer.score(reference, prediction)
        return {k: float(v.fmeasure) for k, v in res.items()}


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return round(float(np.mean([r[key] for r in rows])), 4) if rows else 0.0


def _pct(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 2) if values else 0.0


def evaluate_summaries(
    articles_file: Path,
    stories_file: Path,
    *,
    split: str = "dev",
    baselines: bool = False,
    models_dir: Path,
    threads: int = 2,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Score the served summariser on the ``split`` stories; baselines in the same run.

    ``split="all"`` uses every story, any other name the stories whose ``split`` it is
    (``dev`` / ``train`` in AllSides; a held-out file may name its own, e.g. ``test``).
    Stories without articles or reference are skipped; ``InvalidInput`` when none is left.
    """
    if not split.strip():
        raise InvalidInput("--split: must not be empty (dev, train or all)")
    # dates as ingest reads them (named zones, RFC 2822), so an eval file takes what the
    # service takes
    every = load_allsides(articles_file, stories_file, parse_time=parse_datetime)
    in_split = [s for s in every if split == "all" or s.split == split]
    which = "" if split == "all" else f"{split} "
    if not every:
        raise InvalidInput(f"nothing to evaluate: no story in {stories_file}")
    if not in_split:
        names = sorted({s.split for s in every if s.split})
        has = f"its splits: {', '.join(names)}" if names else "no story in it has a split"
        raise InvalidInput(
            f"nothing to evaluate: no {which}story in {stories_file} ({has}; --split takes "
            "dev, train or all, or a split the file names)")
    stories: list[AllSidesStory] = [
        s for s in in_split
        if any(a.text.strip() for a in s.articles) and s.summary.strip()
    ]
    if not stories:
        n = len(in_split)
        if not any(s.articles for s in in_split):
            why = f"names an article of {articles_file}"
        else:
            why = "has both a reference summary and an article with text"
        raise InvalidInput(
            f"nothing to evaluate: of the {n} {which}{'story' if n == 1 else 'stories'} in "
            f"{stories_file}, none {why}")
    if limit is not None:
        stories = stories[:limit]
    summariser = ExtractiveSummariser(models_dir, threads=threads)
    rouge = _Rouge()
    ours: list[dict[str, float]] = []
    heads: list[float] = []
    ms: list[float] = []
    faithful: list[bool] = []
    n_cites: list[int] = []
    words: list[int] = []
    base_rows: dict[str, list[dict[str, float]]] = {k: [] for k in BASELINES}
    base_ms: dict[str, list[float]] = {k: [] for k in BASELINES}
    for n, rec in enumerate(stories):
        budget = rec.budget
        t0 = time.perf_counter()
        story = summariser.prepare(rec.articles)
        summary = summariser.summarise_prepared(story, budget)
        ms.append(1000 * (time.perf_counter() - t0))
        ours.append(rouge.f1(rec.summary, truncate_words(summary.text, budget)))
        heads.append(rouge.f1(rec.headline, summary.headline)["rouge1"])
        faithful += check_faithful(summary, story)
        n_cites += [len(s.article_ids) for s in summary.sentences]
        words.append(summary.word_count)
        if baselines:
            for kind in BASELINES:
                t1 = time.perf_counter()
                picked = baseline_summary(story, budget, kind)
                base_ms[kind].append(1000 * (time.perf_counter() - t1))
                text = " ".join(story.sentences[i].text for i in picked)
                base_rows[kind].append(rouge.f1(rec.summary, truncate_words(text, budget)))
        if progress is not None:
            progress(n + 1, len(stories))
    result: dict[str, Any] = {
        "split": split,
        "n_stories": len(stories),
        "rouge1": _mean(ours, "rouge1"),
        "rouge2": _mean(ours, "rouge2"),
        "rougeL": _mean(ours, "rougeL"),
        "faithfulness": round(sum(faithful) / len(faithful), 4) if faithful else 0.0,
        "ms_p50": _pct(ms, 50),
        "ms_p95": _pct(ms, 95),
        "headline_rouge1": round(statistics.fmean(heads), 4) if heads else 0.0,
        "citations_per_sentence": round(statistics.fmean(n_cites), 3) if n_cites else 0.0,
        "words_over_budget_mean": round(
            statistics.fmean(max(0, w - s.budget) for w, s in zip(words, stories, strict=True)),
            2) if words else 0.0,
        "params": summariser.params.to_json(),
        "budget": "reference length in words; every output truncated at it before scoring",
    }
    if baselines:
        result["baselines"] = {
            kind: {
                "rouge1": _mean(rows, "rouge1"),
                "rouge2": _mean(rows, "rouge2"),
                "rougeL": _mean(rows, "rougeL"),
                "faithfulness": 1.0 if rows else 0.0,  # verbatim pool sentences by design
                "ms_p50": _pct(base_ms[kind], 50),
            }
            for kind, rows in base_rows.items()
        }
        result["baselines_note"] = (
            "baselines share the summariser's sentence pool and embeddings; their ms_p50 "
            "is selection time only (embedding excluded)"
        )
    return result


def format_table(res: dict[str, Any]) -> str:
    """The human table: ours and each baseline, ROUGE F1, faithfulness, latency."""
    lines = [f"{'system':<22}{'R1':>8}{'R2':>8}{'RL':>8}{'faithful':>10}{'ms p50':>9}"]

    def row(name: str, r: dict[str, Any]) -> None:
        lines.append(f"{name:<22}{r['rouge1']:>8.4f}{r['rouge2']:>8.4f}{r['rougeL']:>8.4f}"
                     f"{r['faithfulness']:>10.3f}{r['ms_p50']:>9.1f}")

    row("storyline (ours)", res)
    for name, r in res.get("baselines", {}).items():
        row(name, r)
    lines.append(f"{res['n_stories']} {res['split']} stories; budget = reference length; "
                 f"headline R1 {res['headline_rouge1']:.3f}")
    return "\n".join(lines)
