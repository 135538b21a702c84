"""Evaluate the guarded fusion mode beside the extractive mode, on the same stories.

Same protocol as ``summaries.py``: per-story word budget = the reference summary's length,
every output truncated at it before ROUGE-1/2/L F1 (``rouge-score``, Porter stemmer).
Both modes run in the same call on the same prepared stories (sentence split and
embeddings shared), so the difference is the rewriting alone.

Fusion figures: ``supported`` = share of summary sentences that are verbatim in a cited
article or passed the guard (1.0 by construction: a rejected rewrite is replaced by its
source); ``fused_share`` = share of summary sentences that are rewrites; ``fallback_rate``
= rejected rewrites / attempted rewrites (with the rejection reasons); ``ms_p50`` per
story includes sentence embedding and generation; ``generated_tokens_per_s`` = generated
tokens per second of LLM time, prompt pass included.

``tune=True`` (train split only) generates once, then sweeps the guard's cosine threshold
and the budget expansion over the cached rewrites and reports mean ROUGE per setting.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from storyline.models.fusion import DEFAULT_FUSION_PARAMS, FusionParams, FusionSummariser
from storyline.models.summariser import ExtractiveSummariser
from storyline.models.summariser_train import AllSidesStory, load_allsides, truncate_words
from storyline.service.evaluation.summaries import _Rouge, check_faithful

__all__ = ["TUNE_COSINES", "TUNE_EXPAND", "evaluate_fusion", "format_fusion_table"]

TUNE_COSINES = (0.0, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
TUNE_EXPAND = (1.0, 1.25, 1.5)


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 4) if values else 0.0


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 1) if values else 0.0


def evaluate_fusion(
    articles_file: Path,
    stories_file: Path,
    *,
    split: str = "dev",
    models_dir: Path,
    threads: int = 2,
    limit: int | None = None,
    params: FusionParams | None = None,
    tune: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Extractive and fusion modes on the ``split`` stories, same run."""
    stories: list[AllSidesStory] = [
        s for s in load_allsides(articles_file, stories_file)
        if (split == "all" or s.split == split) and s.articles and s.summary.strip()
    ]
    if limit is not None:
        stories = stories[:limit]
    ext = ExtractiveSummariser(models_dir, threads=threads)
    params = params or DEFAULT_FUSION_PARAMS
    if tune:
        params = replace(params, expand=max(TUNE_EXPAND))
    fus = FusionSummariser(models_dir, extractive=ext, params=params)
    rouge = _Rouge()
    rows: dict[str, list[dict[str, float]]] = {"extractive": [], "fusion": []}
    heads: dict[str, list[float]] = {"extractive": [], "fusion": []}
    ms: dict[str, list[float]] = {"extractive": [], "fusion": []}
    words: dict[str, list[int]] = {"extractive": [], "fusion": []}
    faithful_ext: list[bool] = []
    supported: list[bool] = []
    fused = 0
    n_sent = 0
    attempted = accepted = 0
    reasons: dict[str, int] = {}
    gen_tokens = 0
    lm_s = 0.0
    prepared = []
    examples: list[dict[str, str]] = []
    for n, rec in enumerate(stories):
        budget = rec.budget
        t0 = time.perf_counter()
        story = ext.prepare(rec.articles)
        t_prep = time.perf_counter() - t0
        prepared.append(story)
        t1 = time.perf_counter()
        es = ext.summarise_prepared(story, budget)
        ms["extractive"].append(1000 * (t_prep + time.perf_counter() - t1))
        t2 = time.perf_counter()
        fs = fus.summarise_prepared(story, budget)
        ms["fusion"].append(1000 * (t_prep + time.perf_counter() - t2))
        rep = fus.last_report
        for mode, summ in (("extractive", es), ("fusion", fs)):
            rows[mode].append(rouge.f1(rec.summary, truncate_words(summ.text, budget)))
            heads[mode].append(rouge.f1(rec.headline, summ.headline)["rouge1"])
            words[mode].append(summ.word_count)
        faithful_ext += check_faithful(es, story)
        verbatim = check_faithful(fs, story)
        for s, ok in zip(fs.sentences, verbatim, strict=True):
            supported.append(ok or s.origin == "fused")
            fused += s.origin == "fused"
            n_sent += 1
            if s.origin == "fused" and len(examples) < 12:
                src = next((e.text for e in es.sentences if e.article_ids == s.article_ids),
                           "")
                examples.append({"fused": s.text, "source_guess": src})
        attempted += rep.attempted
        accepted += rep.accepted
        for k, v in rep.reasons.items():
            reasons[k] = reasons.get(k, 0) + v
        gen_tokens += rep.generated_tokens
        lm_s += rep.lm_seconds
        if progress is not None:
            progress(n + 1, len(stories))

    def mode_row(mode: str) -> dict[str, Any]:
        r = rows[mode]
        return {
            "rouge1": _mean([x["rouge1"] for x in r]),
            "rouge2": _mean([x["rouge2"] for x in r]),
            "rougeL": _mean([x["rougeL"] for x in r]),
            "headline_rouge1": _mean(heads[mode]),
            "ms_p50": _pct(ms[mode], 50),
            "ms_p95": _pct(ms[mode], 95),
            "words_mean": round(statistics.fmean(words[mode]), 1) if words[mode] else 0.0,
        }

    result: dict[str, Any] = {
        "split": split,
        "n_stories": len(stories),
        "extractive": {**mode_row("extractive"),
                       "faithfulness": round(sum(faithful_ext) / max(1, len(faithful_ext)),
                                             4)},
        "fusion": {
            **mode_row("fusion"),
            "supported": round(sum(supported) / max(1, len(supported)), 4),
            "fused_share": round(fused / max(1, n_sent), 4),
            "attempted_rewrites": attempted,
            "accepted_rewrites": accepted,
            "fallback_rate": round(1 - accepted / attempted, 4) if attempted else 0.0,
            "rejections": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
            "generated_tokens_per_s": round(gen_tokens / lm_s, 1) if lm_s else 0.0,
            "params": fus.params.to_json(),
        },
        "examples": examples,
        "budget": "reference length in words; every output truncated at it before scoring",
    }
    if tune:
        result["tuning"] = _sweep(fus, stories, prepared, rouge)
    return result


def _sweep(fus: FusionSummariser, stories: list[AllSidesStory], prepared: list[Any],
           rouge: _Rouge) -> list[dict[str, Any]]:
    """ROUGE per (min_cosine, expand) over the cached rewrites (no new generation for the
    sentences already rewritten)."""
    out = []
    for expand in TUNE_EXPAND:
        for cos in TUNE_COSINES:
            variant = fus.with_params(replace(fus.params, min_cosine=cos, expand=expand))
            r1: list[float] = []
            r2: list[float] = []
            acc = att = 0
            for rec, story in zip(stories, prepared, strict=True):
                s = variant.summarise_prepared(story, rec.budget)
                sc = rouge.f1(rec.summary, truncate_words(s.text, rec.budget))
                r1.append(sc["rouge1"])
                r2.append(sc["rouge2"])
                acc += variant.last_report.accepted
                att += variant.last_report.attempted
            out.append({"expand": expand, "min_cosine": cos, "rouge1": _mean(r1),
                        "rouge2": _mean(r2),
                        "fallback_rate": round(1 - acc / att, 4) if att else 0.0})
    return out


def format_fusion_table(res: dict[str, Any]) -> str:
    lines = [f"{'mode':<14}{'R1':>8}{'R2':>8}{'RL':>8}{'head R1':>9}{'ms p50':>9}"]
    for mode in ("extractive", "fusion"):
        r = res[mode]
        lines.append(f"{mode:<14}{r['rouge1']:>8.4f}{r['rouge2']:>8.4f}{r['rougeL']:>8.4f}"
                     f"{r['headline_rouge1']:>9.3f}{r['ms_p50']:>9.1f}")
    f = res["fusion"]
    lines.append(f"fusion: {f['fused_share']:.1%} of sentences rewritten, fallback rate "
                 f"{f['fallback_rate']:.1%} of {f['attempted_rewrites']} attempts, supported "
                 f"{f['supported']:.3f}, {f['generated_tokens_per_s']} generated tok/s")
    lines.append(f"rejections: {f['rejections']}")
    for row in res.get("tuning", []):
        lines.append(f"  expand {row['expand']:<5} min_cosine {row['min_cosine']:<5} "
                     f"R1 {row['rouge1']:.4f} R2 {row['rouge2']:.4f} "
                     f"fallback {row['fallback_rate']:.1%}")
    lines.append(f"{res['n_stories']} {res['split']} stories; budget = reference length")
    return "\n".join(lines)
