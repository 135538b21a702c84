"""Incremental story clustering: throughput (articles/s) and peak memory at 10k and 100k.

Synthetic but realistic articles: each synthetic story picks a real AllSides story, moves its
centroid by the spread measured between real stories' centroids and their neighbours (so
stories derived from the same real one are same-topic hard negatives), and draws members
around it with the spread measured between real articles and their own story's centroid.
Members reuse the real story's titles and entities; story sizes are heavy-tailed (1..40,
mean about 4); story starts are spread uniformly over months (60 days for 10k, 180 days for
100k) and members fall within 36 h of their story's start, in bursts.

Each size runs in a fresh subprocess (so peak RSS is that size's own). Articles arrive in
published order in batches of 256: each batch is written to a throwaway SQLite store (not
timed, ``store_s``), then ``StoryClusterer.assign`` places it with the default parameters,
periodic refines included (``articles_per_s``; ``refine_s`` is the part spent refining).
A final refine follows; ``reload_s`` is the rebuild from the store a restart pays, and the
synthetic gold gives a BCubed F1 as a sanity check (large stories, same-topic neighbours).

    .venv/bin/python bench/cluster.py [--sizes 10000,100000] [--json]

The AllSides vectors and entities are computed once with the built models and cached in
``bench/out/allsides_vectors.npz``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / "out" / "allsides_vectors.npz"
T0 = datetime(2023, 1, 1, tzinfo=UTC)
OUTLETS = [f"Outlet {i:02d}" for i in range(40)]


def shared_data() -> Path:
    env = os.environ.get("STORYLINE_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def real_stories(models_dir: Path) -> dict[str, Any]:
    """AllSides vectors, titles, entities and story ids (embedded once, then cached)."""
    if CACHE.exists():
        z = np.load(CACHE, allow_pickle=False)
        return {k: z[k] for k in z.files}
    from storyline.models.embedder import OnnxEmbedder
    from storyline.models.nlp import entity_keys
    from storyline.service.ingest import read_articles_jsonl
    from storyline.service.pipeline import article_text

    path = shared_data() / "allsides" / "articles.jsonl"
    arts = [p.article for p in read_articles_jsonl(path) if p.article is not None]
    texts = [article_text(a) for a in arts]
    vecs = OnnxEmbedder(models_dir).embed(texts)
    ents = ["\x1f".join(e) for e in entity_keys(texts)]
    out = {
        "vectors": vecs, "titles": np.asarray([a.title for a in arts]),
        "entities": np.asarray(ents), "story": np.asarray([a.story_id or "" for a in arts]),
    }
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(CACHE, **out)
    return out


def _noise_for(cos: float, dim: int) -> float:
    """Per-dimension Gaussian std that puts a perturbed unit vector at ``cos`` to the original."""
    return float(np.sqrt((1.0 / cos**2 - 1.0) / dim))


def synthesise(
    n: int, real: dict[str, Any], seed: int = 0, days: float | None = None
) -> tuple[list[Any], list[str]]:
    """``n`` synthetic articles (IngestItems) over ``days`` and their gold story ids."""
    from storyline.index.store import IngestItem
    from storyline.models.types import Article

    rng = np.random.default_rng(seed)
    vecs = real["vectors"].astype(np.float64)
    dim = vecs.shape[1]
    stories: dict[str, list[int]] = {}
    for i, s in enumerate(real["story"].tolist()):
        stories.setdefault(s, []).append(i)
    keys = sorted(stories)
    cents = np.stack([vecs[stories[k]].mean(0) for k in keys])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    # measured spreads: article -> its story centroid, story centroid -> nearest other centroid
    member_cos = float(np.mean([vecs[i] @ cents[k] for k, s in enumerate(keys)
                                for i in stories[s]]))
    cc = cents @ cents.T
    np.fill_diagonal(cc, -1)
    topic_cos = float(np.median(cc.max(1)))
    sd_member, sd_event = _noise_for(member_cos, dim), _noise_for(topic_cos, dim)
    if days is None:
        days = 60 if n <= 20_000 else 180
    items: list[Any] = []
    gold: list[str] = []
    sid = 0
    while len(items) < n:
        k = int(rng.integers(len(keys)))
        src = stories[keys[k]]
        size = int(min(40, 1 + rng.zipf(2.2)))
        size = min(size, n - len(items))
        event = cents[k] + rng.normal(0.0, sd_event, dim)
        event /= np.linalg.norm(event)
        start = T0 + timedelta(seconds=float(rng.uniform(0, days * 86400)))
        for m in range(size):
            v = event + rng.normal(0.0, sd_member, dim)
            v /= np.linalg.norm(v)
            j = src[int(rng.integers(len(src)))]
            when = start + timedelta(hours=float(min(36.0, rng.exponential(8.0))))
            art = Article(
                id=f"syn-{sid}-{m}", title=str(real["titles"][j]),
                text=f"synthetic article {sid}/{m}", source=OUTLETS[int(rng.integers(40))],
                published_at=when,
            )
            ents = tuple(e for e in str(real["entities"][j]).split("\x1f") if e)
            items.append(IngestItem(art, v.astype(np.float32), ents))
            gold.append(f"g{sid}")
        sid += 1
    return items, gold


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(n: int, models_dir: Path) -> dict[str, Any]:
    from storyline.index.store import SQLiteStore
    from storyline.index.stories import StoryClusterer
    from storyline.service.evaluation.clustering import bcubed

    real = real_stories(models_dir)
    t = time.perf_counter()
    items, gold = synthesise(n, real)
    order = sorted(range(len(items)), key=lambda i: (items[i].article.published_at, i))
    items = [items[i] for i in order]
    gold = [gold[i] for i in order]
    ids = [it.article.id for it in items]
    setup_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="storyline-bench-") as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        rss_before = _rss_mb()
        clusterer = StoryClusterer(store)
        refine_s = 0.0
        inner = [clusterer.refine]  # a list, so that it can be dropped before the reload

        def timed_refine(**kw: Any) -> dict[str, Any]:
            nonlocal refine_s
            t1 = time.perf_counter()
            try:
                res: dict[str, Any] = inner[0](**kw)
                return res
            finally:
                refine_s += time.perf_counter() - t1

        clusterer.refine = timed_refine  # type: ignore[method-assign]
        assign_s = store_s = cpu_s = 0.0
        for i in range(0, len(ids), 256):  # arrivals: stored (not timed), then assigned
            t = time.perf_counter()
            store.ingest(items[i : i + 256], "synthetic")
            store_s += time.perf_counter() - t
            t, c = time.perf_counter(), time.process_time()
            clusterer.assign(ids[i : i + 256])
            assign_s += time.perf_counter() - t
            cpu_s += time.process_time() - c
        online = store.story_of(ids)
        t = time.perf_counter()
        inner[0]()
        final_refine_s = time.perf_counter() - t
        final = store.story_of(ids)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        inner.clear()
        del clusterer
        gc.collect()
        t = time.perf_counter()
        StoryClusterer(store)  # a restart: rebuild from the store
        reload_s = time.perf_counter() - t
        reload_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        g = dict(zip(ids, gold, strict=True))
        store.close()
    return {
        "n": n, "articles_per_s": round(n / assign_s, 1), "assign_s": round(assign_s, 2),
        # CPU seconds of this process: steadier than wall time on a shared machine
        "articles_per_cpu_s": round(n / cpu_s, 1), "assign_cpu_s": round(cpu_s, 2),
        "refine_s": round(refine_s, 2), "final_refine_s": round(final_refine_s, 2),
        "reload_s": round(reload_s, 2), "store_s": round(store_s, 2), "setup_s": round(setup_s, 2),
        # peak while clustering (harness and its synthetic articles included); ru_maxrss
        # is a high-water mark, so the second is the peak of both phases, not the rebuild's
        "peak_rss_mb": round(peak, 1), "peak_rss_after_reload_mb": round(reload_peak, 1),
        "rss_before_clustering_mb": round(rss_before, 1),
        "gold_stories": len(set(gold)), "stories": len(set(final.values())),
        "synthetic_bcubed_f1_online": round(bcubed(online, g)[2], 4),
        "synthetic_bcubed_f1": round(bcubed(final, g)[2], 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated article counts")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "data" / "models")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size, this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.models_dir)))
        return
    real_stories(args.models_dir)  # build the cache once, outside the measured processes
    out: dict[str, Any] = {"sizes": {}}
    for n in (int(s) for s in args.sizes.split(",") if s.strip()):
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--models-dir", str(args.models_dir)],
            check=False, capture_output=True, text=True,
        )
        if proc.returncode != 0:  # the child's traceback, which check=True threw away
            raise SystemExit(f"size {n} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        out["sizes"][str(n)] = res
        label = f"{n // 1000}k" if n % 1000 == 0 else str(n)  # 500 was "0k"
        out[f"articles_per_s_{label}"] = res["articles_per_s"]
        out[f"peak_rss_mb_{label}"] = res["peak_rss_mb"]
        out[f"articles_per_cpu_s_{label}"] = res["articles_per_cpu_s"]
        if not args.json:
            print(f"{n:>7} articles: {res['articles_per_s']:>8.1f} articles/s "
                  f"({res['articles_per_cpu_s']:.0f} per CPU second) "
                  f"(refine {res['refine_s']} s of {res['assign_s']} s), peak RSS "
                  f"{res['peak_rss_mb']} MB, reload {res['reload_s']} s, synthetic BCubed F1 "
                  f"{res['synthetic_bcubed_f1']} (online {res['synthetic_bcubed_f1_online']})")
    if args.json:
        print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
