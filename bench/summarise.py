"""Latency of ExtractiveSummariser.summarise on real AllSides stories.

Two shapes: a 3-article story (the AllSides norm) and a 20-article story (several stories
concatenated, as a long-running story grows). Each timed call is a full ``summarise``:
sentence splitting, MiniLM embedding of every sentence, features, ONNX scorer, selection.

    python bench/summarise.py [--models-dir data/models] [--repeats 30] [--json]

With ``--json`` the last line is one JSON object:
{"p50_ms_3", "p95_ms_3", "p50_ms_20", "p95_ms_20", "p50_ms_3_grown", "p50_ms_20_grown",
"p50_ms_3_prepare", "p50_ms_3_select", "p50_ms_20_prepare", "p50_ms_20_select", ...};
the ``_grown`` figures time a story that gained one article since its last summary
(the pipeline keeps sentence vectors, so only the new article's sentences are embedded).
"Cold" also means the story's sentences are new to the process: the per-sentence gram
cache is emptied before each cold call (and before the earlier summary of a grown story),
so no timed story reuses work done for another. p95 is nearest-rank, as in the other
benches (``n_3``, ``n_20`` say how many samples it is taken from: with 10, it is the max).
Goals: p50 <= 100 ms for 3 articles and <= 500 ms for 20 articles. The machine is shared,
so the load average at the start and end of the run is printed with the numbers: read them
together.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from storyline.models.summariser import ExtractiveSummariser, sentence_grams
from storyline.models.summariser_train import load_allsides
from storyline.models.types import Article

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STORYLINE_DATA", REPO.parent / "shared" / "data"))


def _p(values: list[float], q: float) -> float:
    # Nearest rank, the definition bench/load.py and bench/replica.py use: the same label
    # means the same statistic in every figure of RESULTS.md.
    v = sorted(values)
    return v[max(0, math.ceil(q * len(v)) - 1)]


def _stories(articles: Path, stories: Path) -> list[list[Article]]:
    recs = [r for r in load_allsides(articles, stories) if r.split == "dev" and r.articles]
    return [list(r.articles) for r in recs]


def _time(summariser: ExtractiveSummariser, groups: list[list[Article]], repeats: int,
          budget: int, stages: dict[str, list[float]] | None = None) -> list[float]:
    """ms per full summary; ``stages`` gets the split: "prepare" (sentence splitting and
    embedding) and "select" (features, scorer, selection, citations)."""
    out = []
    for r in range(repeats):
        arts = groups[r % len(groups)]
        # The 20-article stories are made of dev stories that the warm-up and the 3-article
        # loop have already summarised: with their sentences' grams cached, "cold" was
        # partly warm.
        sentence_grams.cache_clear()
        t0 = time.perf_counter()
        story = summariser.prepare(arts)  # what summarise() runs, in two timed halves
        t1 = time.perf_counter()
        summariser.summarise_prepared(story, budget)
        t2 = time.perf_counter()
        out.append(1000 * (t2 - t0))
        if stages is not None:
            stages.setdefault("prepare", []).append(1000 * (t1 - t0))
            stages.setdefault("select", []).append(1000 * (t2 - t1))
    return out


def _time_grown(models_dir: Path, threads: int, groups: list[list[Article]],
                budget: int) -> list[float]:
    """A story that grew by one article, as the service sees it: the pipeline's
    summariser keeps sentence vectors (CachingEmbedder), so after the story's first
    summary only the new article's sentences are embedded. Each story is timed once."""
    from storyline.models.embedder import CachingEmbedder, OnnxEmbedder

    cached = CachingEmbedder(OnnxEmbedder(models_dir, threads=threads))
    summariser = ExtractiveSummariser(models_dir, embedder=cached, threads=threads)
    out = []
    for arts in groups:
        # Only the story's earlier articles are known to the process when it grows (the
        # cold loop above has already seen the new article's sentences too).
        sentence_grams.cache_clear()
        summariser.summarise(arts[:-1], budget)  # the story before its last article came
        t0 = time.perf_counter()
        summariser.summarise(arts, budget)
        out.append(1000 * (time.perf_counter() - t0))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=REPO / "data" / "models")
    ap.add_argument("--articles", type=Path, default=DATA / "allsides" / "articles.jsonl")
    ap.add_argument("--stories", type=Path, default=DATA / "allsides" / "stories.jsonl")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--budget", type=int, default=110)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    stories = _stories(args.articles, args.stories)
    three = [s for s in stories if len(s) == 3]
    # 20-article stories: seven consecutive dev stories concatenated, cut to 20 articles.
    twenty = []
    for k in range(0, len(stories) - 7, 7):
        arts = [a for s in stories[k : k + 7] for a in s][:20]
        if len(arts) == 20:
            twenty.append(arts)
    summariser = ExtractiveSummariser(args.models_dir, threads=args.threads)
    load0 = os.getloadavg()[0]
    for arts in three[:3] + twenty[:1]:  # warm-up: sessions, allocator, caches
        summariser.summarise(arts, args.budget)
    s3: dict[str, list[float]] = {}
    s20: dict[str, list[float]] = {}
    t3 = _time(summariser, three, args.repeats, args.budget, s3)
    t20 = _time(summariser, twenty, max(5, args.repeats // 3), args.budget, s20)
    g3 = _time_grown(args.models_dir, args.threads, three[: args.repeats], args.budget)
    g20 = _time_grown(args.models_dir, args.threads, twenty[: max(5, args.repeats // 3)],
                      args.budget)
    load1 = os.getloadavg()[0]
    res = {
        "p50_ms_3": round(statistics.median(t3), 1),
        "p95_ms_3": round(_p(t3, 0.95), 1),
        "p50_ms_20": round(statistics.median(t20), 1),
        "p95_ms_20": round(_p(t20, 0.95), 1),
        "p50_ms_3_grown": round(statistics.median(g3), 1),
        "p50_ms_20_grown": round(statistics.median(g20), 1),
        **{f"p50_ms_{n}_{stage}": round(statistics.median(v), 1)
           for n, split in (("3", s3), ("20", s20)) for stage, v in split.items()},
        "n_3": len(t3),
        "n_20": len(t20),
        "threads": args.threads,
        "loadavg_1m": [round(load0, 2), round(load1, 2)],
        "cpus": os.cpu_count(),
        "goal_ms": {"p50_3": 100, "p50_20": 500},
    }
    print(f"3 articles : p50 {res['p50_ms_3']} ms  p95 {res['p95_ms_3']} ms  (n={len(t3)})")
    print(f"20 articles: p50 {res['p50_ms_20']} ms  p95 {res['p95_ms_20']} ms  (n={len(t20)})")
    print(f"grown by one article (sentence vectors kept): 3 articles p50 "
          f"{res['p50_ms_3_grown']} ms, 20 articles p50 {res['p50_ms_20_grown']} ms")
    print(f"load average (1 min) at start / end: {load0:.2f} / {load1:.2f} on "
          f"{os.cpu_count()} CPUs")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
