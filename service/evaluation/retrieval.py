"""``storyline eval retrieval``: related-coverage quality against gold story ids."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storyline.models.errors import InvalidInput
from storyline.service.evaluation.clustering import _read_splits, load_gold_articles
from storyline.service.settings import Settings

__all__ = [
    "evaluate_retrieval",
    "format_table",
    "rank_metrics",
    "throwaway_pipeline",
]

KS = (1, 2, 5)
_BATCH = 64  # articles per ingest call, as a feed poller sends them


def throwaway_pipeline(
    tmp: Path, models_dir: Path, *, clusterer: bool = False, **overrides: Any
) -> Any:
    """A pipeline on an empty data dir that reuses the already-built models."""
    from storyline.service.pipeline import Pipeline

    (tmp / "models").symlink_to(models_dir.resolve(), target_is_directory=True)
    return Pipeline(Settings(data_dir=tmp, **overrides), clusterer=None if clusterer else False)


def rank_metrics(
    ranked: dict[str, list[str]], gold: dict[str, str | None]
) -> dict[str, float | None]:
    """recall@k (share of each query's same-story siblings in its top k, averaged over
    queries that have siblings), MRR and P@1; ``None`` when no query has a sibling (a
    mean over nothing, which 0.0 would report as a total miss)."""
    by_story: dict[str, set[str]] = {}
    for aid, sid in gold.items():
        if sid is not None:
            by_story.setdefault(sid, set()).add(aid)
    rec: dict[int, list[float]] = {k: [] for k in KS}
    rr, p1 = [], []
    for q, hits in ranked.items():
        sid = gold.get(q)
        if sid is None:
            continue
        sibs = by_story[sid] - {q}
        if not sibs:
            continue
        for k in KS:
            rec[k].append(len(sibs & set(hits[:k])) / len(sibs))
        first = next((i for i, h in enumerate(hits) if h in sibs), None)
        rr.append(0.0 if first is None else 1.0 / (first + 1))
        p1.append(1.0 if hits and hits[0] in sibs else 0.0)
    out: dict[str, float | None] = {
        f"recall@{k}": float(np.mean(v)) if v else None for k, v in rec.items()
    }
    out["mrr"] = float(np.mean(rr)) if rr else None
    out["p@1"] = float(np.mean(p1)) if p1 else None
    out["queries"] = len(rr)
    return out


def _any_query(gold: dict[str, str | None]) -> bool:
    """Whether some gold story has two articles, so that there is a query to score."""
    sizes = Counter(sid for sid in gold.values() if sid is not None)
    return any(n > 1 for n in sizes.values())


def _run(
    pipe: Any, ids: Sequence[str], gold: dict[str, str | None], k: int,
    splits: dict[str, str] | None = None,
) -> dict[str, Any]:
    ranked: dict[str, list[str]] = {}
    lat = []
    for q in ids:
        if gold.get(q) is None:
            continue
        t0 = time.perf_counter()
        hits = pipe.related(q, k=k)
        lat.append((time.perf_counter() - t0) * 1000)
        ranked[q] = [h.id for h in hits]
    res: dict[str, Any] = rank_metrics(ranked, gold)
    if splits:
        # The same rankings scored on each split's queries (the pool is always everything);
        # a split none of whose articles has a gold story has nothing to score.
        res["by_split"] = {
            name: rank_metrics({q: r for q, r in ranked.items() if splits.get(q) == name}, gold)
            for name in sorted({splits[q] for q in ranked if q in splits})
        }
    res["query_ms_p50"] = float(np.median(lat)) if lat else 0.0
    res["query_ms_p99"] = float(np.percentile(lat, 99)) if lat else 0.0
    return res


def evaluate_retrieval(
    articles_file: Path, *, models_dir: Path, k: int = 10, baseline: bool = True,
    max_chars: int = 200_000,
) -> dict[str, Any]:
    arts = load_gold_articles(articles_file, max_chars=max_chars)
    if not any(a.story_id for a in arts):
        raise InvalidInput(f"{articles_file}: no article has a story_id; nothing to evaluate")
    labelled = {a.id: a.story_id for a in arts}
    nothing = (f"nothing to evaluate: no gold story in {articles_file} has two stored "
               "articles (a query needs a same-story sibling)")
    if not _any_query(labelled):  # before the ingest, which is most of the run
        raise InvalidInput(nothing)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="storyline-eval-") as tmp_s:
        # As in production: articles arrive in published order, in feed-sized batches,
        # join stories online, and the periodic refine has run before the queries.
        pipe = throwaway_pipeline(Path(tmp_s), models_dir, clusterer=True)
        ordered = sorted(arts, key=lambda a: (a.published_at is None, a.published_at or 0, a.id))
        for i in range(0, len(ordered), _BATCH):
            pipe.ingest(ordered[i : i + _BATCH])
        if pipe.clusterer is not None:
            pipe.clusterer.refine()
        ingest_s = time.perf_counter() - t0
        # Duplicates are not stored twice: evaluate the ids that were stored. A duplicate
        # (the same text under another id) is never a hit either, as related coverage
        # answers with stored articles only, so it is no relevant item: kept as a sibling
        # it counted as a miss of every query of its story.
        stored = list(dict.fromkeys(a.id for a in arts if pipe.store.canonical_id(a.id) == a.id))
        gold = {i: labelled[i] for i in stored}
        if not _any_query(gold):  # duplicates were all that made the pairs
            pipe.store.close()
            raise InvalidInput(nothing)
        splits = _read_splits(articles_file)
        ours = _run(pipe, stored, gold, k, splits)
        s = pipe.settings
        ours["signals"] = {
            "window_hours": s.related_window_hours, "time_weight": s.related_time_weight,
            "entity_weight": s.related_entity_weight, "story_weight": s.related_story_weight,
        }
        if baseline:
            # Each signal measured by switching it off in the same run.
            for name, update in (
                ("baseline", {"related_time_weight": 0.0, "related_entity_weight": 0.0,
                              "related_story_weight": 0.0}),
                ("without_story", {"related_story_weight": 0.0}),
                ("without_time", {"related_time_weight": 0.0}),
            ):
                pipe.settings = s.model_copy(update=update)
                ours[name] = _run(pipe, stored, gold, k, splits)
            pipe.settings = s
        pipe.store.close()
    ours["articles"] = len(arts)
    ours["ingest_seconds"] = round(ingest_s, 1)
    ours["seconds"] = round(time.perf_counter() - t0, 1)
    return ours


def format_table(res: dict[str, Any]) -> str:
    cols = ["recall@1", "recall@2", "recall@5", "mrr", "p@1", "query_ms_p50"]
    rows = [("storyline", res)]
    for key, name in (("without_story", "- story signal"), ("without_time", "- time signal"),
                      ("baseline", "baseline (cosine only)")):
        if key in res:
            rows.append((name, res[key]))
    lines = [f"{'system':<24}" + "".join(f"{c:>14}" for c in cols)]
    for name, r in rows:
        lines.append(f"{name:<24}" + "".join(f"{r[c]:>14.3f}" for c in cols))
    lines.append(f"{res['queries']} queries over {res['articles']} articles, {res['seconds']} s")
    return "\n".join(lines)
