"""Approximate vs exact vector search at scale: HNSW recall@10 against exact (flat) search.

The foundation issue asks for the recall of the approximate index on >= 100k vectors.
We do not have 100k real articles, so the collection is built from what we have:

1. every distinct sentence (>= 6 words) of the AllSides articles, story roundups and
   NewsMTSC, embedded with OUR int8 embedder -- real text, real embedding geometry;
2. topped up to ``--vectors`` with vectors synthesised from those: a random convex mix
   of two real vectors of the same source plus Gaussian noise, L2-normalised. They keep
   the anisotropy and the local density of real embeddings, which is what makes graph
   search hard; uniform random vectors would flatter HNSW.

Queries are ``--queries`` real sentence vectors held out of the collection. Both
indexes are ``storyline.index.vectors.VectorIndex`` (IndexIDMap2 over IndexFlatIP /
IndexHNSWFlat), i.e. the product's code. For each efSearch we report recall@10 (share
of the exact top 10 that HNSW returns), median and p99 (nearest rank) query latency (one
query per call, one thread, as the service runs it) and build time. The real vectors are
cached in ``--cache``, keyed by the embedder's model id and the sentences.

    .venv/bin/python bench/index.py --vectors 100000 --json

The last line with ``--json`` is one JSON object: ``vectors``, ``real_vectors``,
``queries``, ``flat_ms_p50``, ``flat_ms_p99``, ``hnsw`` (list of {ef_search,
recall_at_10, ms_p50, ms_p99}), ``hnsw_build_s``, ``recall_at_10`` (at the default
efSearch).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_MODELS = REPO / "data" / "models"
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'“])")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def real_sentences(shared: Path) -> list[str]:
    texts: list[str] = []
    for name, fields in (
        ("allsides/articles.jsonl", ("title", "text")),
        ("allsides/stories.jsonl", ("summary", "headline")),
        ("allsides/raw_headline_crawl.jsonl", ("issue", "roundup")),
        ("newsmtsc/train.jsonl", ("sentence_normalized", "sentence")),
        ("newsmtsc/devtest_rw.jsonl", ("sentence_normalized", "sentence")),
    ):
        path = shared / name
        if not path.exists():
            continue
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                for f in fields:
                    v = row.get(f)
                    for part in v if isinstance(v, list) else [v]:
                        if isinstance(part, str):
                            texts.extend(_SPLIT.split(part))
    seen: set[str] = set()
    out = []
    for t in texts:
        t = " ".join(t.split())
        if len(t.split()) >= 6 and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def _p(values: list[float], q: float) -> float:
    # Nearest rank, the definition bench/load.py and bench/replica.py use: the same label
    # means the same statistic in every figure of RESULTS.md.
    v = sorted(values)
    return v[max(0, math.ceil(q * len(v)) - 1)]


def synthesise(real: np.ndarray, n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    if n <= 0:
        return np.empty((0, real.shape[1]), dtype=np.float32)
    a = rng.integers(0, len(real), n)
    b = rng.integers(0, len(real), n)
    w = rng.uniform(0.5, 1.0, (n, 1)).astype(np.float32)
    v = w * real[a] + (1 - w) * real[b]
    v += rng.normal(0.0, noise / np.sqrt(real.shape[1]), v.shape).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32)


def time_queries(index: Any, queries: np.ndarray, k: int) -> tuple[list[list[str]], list[float]]:
    hits, lat = [], []
    index.search(queries[:1], k)  # untimed: the first search after a build or ef change
    for q in queries:
        t0 = time.perf_counter()
        res = index.search(q[None, :], k)[0]
        lat.append((time.perf_counter() - t0) * 1000)
        hits.append([i for i, _ in res])
    return hits, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--m", type=int, default=32, help="HNSW M (graph degree)")
    ap.add_argument("--noise", type=float, default=0.35)
    ap.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/storyline-bench-index.npz"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from storyline.index.vectors import VectorIndex

    default_ef = VectorIndex(1, "flat")._ef  # the product's default efSearch
    rng = np.random.default_rng(args.seed)
    sents = real_sentences(args.shared)
    from storyline.models.embedder import OnnxEmbedder

    embedder = OnnxEmbedder(args.models_dir)
    # Keyed by the embedder and the sentences, not by their count alone: after a model
    # rebuild the count still matched and the "real" vectors came from the previous model.
    key = hashlib.sha256("\n".join([embedder.model_id, *sents]).encode()).hexdigest()
    cached = None
    if args.cache.exists():
        with np.load(args.cache) as z:
            if "key" in z.files and str(z["key"]) == key:
                cached = z["vectors"]
    if cached is not None:
        real = cached
        log(f"{len(sents)} real sentence vectors from cache {args.cache}")
    else:
        log(f"embedding {len(sents)} real sentences with the int8 embedder ...")
        t0 = time.perf_counter()
        real = embedder.embed(sents)
        log(f"  {time.perf_counter() - t0:.0f} s")
        with args.cache.open("wb") as fh:
            np.savez(fh, vectors=real, key=np.asarray(key))
    del embedder
    order = rng.permutation(len(real))
    nq = min(args.queries, len(real) // 5)
    queries = real[order[:nq]]
    pool = real[order[nq:]][: args.vectors]
    coll = np.vstack([pool, synthesise(pool, args.vectors - len(pool), rng, args.noise)])
    ids = [f"v{i}" for i in range(len(coll))]
    log(f"collection {len(coll)} vectors ({len(pool)} real), {nq} held-out real queries")

    flat = VectorIndex(coll.shape[1], "flat")
    flat.add(ids, coll)
    exact, flat_lat = time_queries(flat, queries, args.k)

    t0 = time.perf_counter()
    hnsw = VectorIndex(coll.shape[1], "hnsw", hnsw_m=args.m, hnsw_ef_search=default_ef)
    for s in range(0, len(coll), 10_000):
        hnsw.add(ids[s : s + 10_000], coll[s : s + 10_000])
    build_s = time.perf_counter() - t0
    log(f"HNSW M={args.m} built in {build_s:.0f} s")

    rows = []
    for ef in sorted(set(args.ef) | {default_ef}):
        hnsw.ef_search = ef
        got, lat = time_queries(hnsw, queries, args.k)
        rec = float(
            np.mean([len(set(g) & set(e)) / len(e) for g, e in zip(got, exact, strict=True)])
        )
        rows.append({"ef_search": ef, "recall_at_10": round(rec, 4),
                     "ms_p50": round(float(np.median(lat)), 3),
                     "ms_p99": round(_p(lat, 0.99), 3)})
        log(f"efSearch {ef:>4}: recall@{args.k} {rec:.4f}  p50 {np.median(lat):.2f} ms")
    result = {
        "vectors": len(coll), "real_vectors": len(pool), "queries": nq, "k": args.k,
        "hnsw_m": args.m, "default_ef_search": default_ef,
        "flat_ms_p50": round(float(np.median(flat_lat)), 3),
        "flat_ms_p99": round(_p(flat_lat, 0.99), 3),
        "hnsw_build_s": round(build_s, 1), "hnsw": rows,
        "recall_at_10": next(r["recall_at_10"] for r in rows if r["ef_search"] == default_ef),
    }
    print(f"flat exact p50 {result['flat_ms_p50']} ms; HNSW recall@10 at efSearch "
          f"{default_ef}: {result['recall_at_10']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
