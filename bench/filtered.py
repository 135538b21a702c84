"""Filtered related coverage and search at scale: latency and recall per filter breadth.

``related`` and ``search`` with ``since``/``until``/``source`` promise the best ``k`` among
the matching articles however far down the index they rank (``FILTER_DIRECT_MAX`` in
``service/pipeline.py``). This times them on a synthetic store of ``--articles`` articles
and checks that promise against brute force.

The store: ``bench/cluster.py``'s synthetic stories (real AllSides vectors of our int8
embedder moved by measured spreads, members within 36 h of their story's start, in
bursts; the vectors cached in ``bench/out/allsides_vectors.npz``) over ``--days`` days,
their outlets re-drawn from 50 with a Zipf skew (outlet r holds a share ~ 1/r^1.2: the top
three ~43 %, the smallest ~0.2 %) and their bodies padded to ``--text-chars`` (3,000: a
news article; the store reads whole rows where no index serves a filter). Because
stories are bursts in time, an article's nearest neighbours sit in its own days, so a date
window away from the query's days puts every match far down the index: the hard case for
a search that widens.

Cases (each with its match count): none; narrow (one day and the smallest outlet);
medium (the outlet nearest 5,000 articles); a date window ``FILTER_DIRECT_MAX - 500``
and ``+ 500`` wide; the largest outlet (not correlated with the vectors); broad (the
first 90 % of the period); nothing (an unknown outlet). Per case and index kind (flat,
hnsw at the default efSearch), ``--queries`` calls of ``Pipeline.related`` (random stored
articles) and ``Pipeline.search`` (held-out synthetic articles' vectors; the embedder is
a lookup of those vectors, so search times exclude the ~5-10 ms of embedding a text) with
``k=--k``, one thread, the product's code on a real SQLite store. p50/p99 are nearest
rank. ``recall`` is the mean share of the exact answer returned: search's exact answer is
the top ``k`` matches by cosine (numpy over every vector); related's is the top
``max(50, 5k)`` matches by cosine (the query article excluded) re-ranked by
``relatedness`` as ``Pipeline._rank`` ranks them. ``searches`` / ``briefs`` are the mean
index searches and briefs read per call (how far a filtered call widened).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/filtered.py --articles 100000 --json

``--store-dir DIR`` keeps the built store there and reuses it on the next run with the
same ``--articles``/``--days``/``--seed``. ``--listings`` times only the store's listing of
each case's matches (``Store.matching_ids`` with the direct path's cap, ``--queries``
calls; with ``--database-url`` on a PostgreSQL copy of the store) and skips the pipeline.
``--non-ascii`` names the outlets as a non-English deployment's (5 in 6 outside ASCII).
With ``--json`` the last line is one JSON object: ``articles``, ``queries``, ``k``,
``filter_direct_max``, ``cases`` (name -> matches) and ``results`` (list of {kind, case,
op, matches, ms_p50, ms_p99, recall, searches, briefs}); with ``--listings``,
``articles``, ``queries``, ``cases`` and ``listings`` (list of {backend, case, matches,
listed, ms_p50, ms_p99}).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
N_OUTLETS = 50
DIM = 384


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _p(values: list[float], q: float) -> float:
    v = sorted(values)  # nearest rank, as in the other benches
    return v[max(0, math.ceil(q * len(v)) - 1)]


def _cluster_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_cluster", ROOT / "bench" / "cluster.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: ``--non-ascii``: outlets of a non-English deployment, most of them outside ASCII (the
#: case a source filter served by ASCII folding alone left to a read of its whole window)
_MIXED_NAMES = ("Süddeutsche", "Ελληνικά Νέα", "Dziennik Łódzki", "Straßenblatt",
                "Le Monde diplomatique", "Ḱathimerini")


def outlet_name(r: int, non_ascii: bool = False) -> str:
    if non_ascii:
        return f"{_MIXED_NAMES[r % len(_MIXED_NAMES)]} {r:02d}"
    return f"Outlet {r:02d}"


class LookupEmbedder:
    """The embedder seam: search texts are keys of precomputed vectors."""

    dim = DIM
    model_id = "bench-lookup"

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self._vectors = vectors

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self._vectors[t] for t in texts]).astype(np.float32)


def build_store(path: Path, n: int, nq: int, days: float, seed: int, text_chars: int,
                non_ascii: bool = False) -> None:
    """Write ``n`` synthetic articles to a SQLite store at ``path`` and the ``nq`` held-out
    query vectors beside it (``queries.npy``)."""
    from storyline.index.store import SQLiteStore

    cl = _cluster_module()
    real = cl.real_stories(ROOT / "data" / "models")
    items, _ = cl.synthesise(n + nq, real, seed=seed, days=days)
    rng = np.random.default_rng(seed + 1)
    w = 1.0 / np.arange(1, N_OUTLETS + 1) ** 1.2
    outlets = rng.choice(N_OUTLETS, size=len(items), p=w / w.sum()) + 1
    held = set(rng.choice(len(items), size=nq, replace=False).tolist())
    queries = np.stack([items[i].vector for i in sorted(held)])
    filler = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * (text_chars // 50 + 1))
    keep = [replace(it, article=replace(it.article, source=outlet_name(int(outlets[i]), non_ascii),
                                        text=f"{it.article.text} {filler}"[:max(text_chars, 40)]))
            for i, it in enumerate(items) if i not in held]
    path.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(path / "storyline.db")
    try:
        for i in range(0, len(keep), 2000):
            store.ingest(keep[i : i + 2000], "synthetic")
    finally:
        store.close()
    np.save(path / "queries.npy", queries)


def time_listings(path: Path, cases: dict[str, dict[str, Any]], matches: dict[str, int],
                  repeat: int, limit: int, database_url: str | None) -> list[dict[str, Any]]:
    """p50/p99 ms of ``matching_ids`` per case, as the filtered search lists its candidates
    (SQLite, and PostgreSQL when ``database_url`` is given)."""
    from storyline.index.store import SQLiteStore

    stores: list[tuple[str, Any]] = [("sqlite", SQLiteStore(path))]
    if database_url:
        stores.append(("postgres", _postgres_copy(stores[0][1], database_url)))
    rows: list[dict[str, Any]] = []
    try:
        for backend, st in stores:
            for c, f in cases.items():
                args = (f.get("since"), f.get("until"), f.get("source"), limit)
                got = st.matching_ids(*args)  # untimed warm-up
                lat = []
                for _ in range(repeat):
                    t1 = time.perf_counter()
                    st.matching_ids(*args)
                    lat.append((time.perf_counter() - t1) * 1000)
                row = {"backend": backend, "case": c, "matches": matches[c],
                       "listed": len(got), "ms_p50": round(_p(lat, 0.5), 2),
                       "ms_p99": round(_p(lat, 0.99), 2)}
                rows.append(row)
                log(f"{backend:>8} {c:>16} ({matches[c]:>6} match, {len(got):>6} listed): "
                    f"p50 {row['ms_p50']:>8.2f} ms  p99 {row['ms_p99']:>8.2f} ms")
    finally:
        for _, st in stores:
            st.close()
    return rows


def _postgres_copy(src: Any, url: str) -> Any:
    """A PostgresStore at ``url`` holding ``src``'s articles (their rows only: listings
    read nothing else), analysed so the planner knows their spread."""
    import sqlalchemy as sa

    from storyline.index.pg import PostgresStore, articles

    st = PostgresStore(url)
    cols = [c.name for c in articles.columns]
    with st._engine.begin() as conn:
        if conn.execute(sa.select(sa.func.count()).select_from(articles)).scalar_one() == 0:
            t0 = time.perf_counter()
            last = ""
            while True:
                batch = src._query(f"SELECT {', '.join(cols)} FROM articles WHERE id > ?"
                                   " ORDER BY id LIMIT 5000", (last,))
                if not batch:
                    break
                conn.execute(articles.insert(), [
                    {**dict(r), "entities": json.loads(r["entities"]),
                     "published_at": datetime.fromisoformat(r["published_at"])
                     if r["published_at"] else None,
                     "ingested_at": datetime.fromisoformat(r["ingested_at"]),
                     "updated_at": datetime.fromisoformat(r["updated_at"])} for r in batch])
                last = batch[-1]["id"]
            log(f"postgres copy written in {time.perf_counter() - t0:.0f} s")
    with st._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE articles"))
    return st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--articles", type=int, default=100_000)
    ap.add_argument("--days", type=float, default=60.0)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--kinds", default="flat,hnsw")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-chars", type=int, default=3000,
                    help="article body length (rows a filter on source scans)")
    ap.add_argument("--store-dir", type=Path, default=None)
    ap.add_argument("--direct-max", type=int, default=None,
                    help="override FILTER_DIRECT_MAX (small stores, experiments)")
    ap.add_argument("--listings", action="store_true",
                    help="time only Store.matching_ids per case (no index, no pipeline)")
    ap.add_argument("--database-url", default=None,
                    help="with --listings: copy the store's articles into this (empty)"
                    " PostgreSQL database and time PostgresStore too")
    ap.add_argument("--non-ascii", action="store_true",
                    help="name 5 outlets in 6 with letters outside ASCII")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import storyline.service.pipeline as pl
    from storyline.service.pipeline import Pipeline, relatedness
    from storyline.service.settings import Settings

    if args.direct_max is not None:
        pl.FILTER_DIRECT_MAX = args.direct_max
    tmp = Path(tempfile.mkdtemp(prefix="storyline-filtered-"))
    try:
        key = f"n{args.articles}-d{args.days:g}-s{args.seed}-q{args.queries}-t{args.text_chars}"
        key += "-non-ascii" if args.non_ascii else ""
        base = args.store_dir or tmp / "store"
        if not (base / key / "queries.npy").exists():
            shutil.rmtree(base / key, ignore_errors=True)
            t0 = time.perf_counter()
            build_store(base / key, args.articles, args.queries, args.days, args.seed,
                        args.text_chars, args.non_ascii)
            log(f"store of {args.articles} articles built in {time.perf_counter() - t0:.0f} s")
        qvecs = np.load(base / key / "queries.npy")

        from storyline.index.store import SQLiteStore

        # ground truth straight from the stored rows, not through the code under test
        store = SQLiteStore(base / key / "storyline.db")
        ids, mat = store.embeddings()
        pos = {i: j for j, i in enumerate(ids)}
        rows = store._query("SELECT id, published_ts, source FROM articles")
        ts = np.empty(len(ids))
        src = np.empty(len(ids), dtype=object)
        for r in rows:
            ts[pos[r["id"]]] = r["published_ts"]
            src[pos[r["id"]]] = r["source"]
        order = np.sort(ts)
        n = len(ids)

        def window(start_q: float, size: int) -> dict[str, Any]:
            lo = int(start_q * n)
            lo = min(lo, n - size - 1)
            return {"since": datetime.fromtimestamp(order[lo], UTC),
                    "until": datetime.fromtimestamp(order[lo + size], UTC)}

        counts = {name: int((src == name).sum()) for name in set(src.tolist())}
        by_size = sorted(counts, key=lambda s: counts[s])
        day = datetime.fromtimestamp(order[n // 2], UTC).replace(hour=0, minute=0, second=0)
        medium = min(counts, key=lambda s: abs(counts[s] - 5000))
        fmax = pl.FILTER_DIRECT_MAX
        cases: dict[str, dict[str, Any]] = {
            "none": {},
            "narrow": {"since": day, "until": day + timedelta(days=1),
                       "source": by_size[0].upper()},
            "medium": {"source": medium.lower()},
            "under_direct_max": window(0.4, fmax - 500),
            "over_direct_max": window(0.4, fmax + 500),
            "largest_outlet": {"source": by_size[-1]},
            "broad": {"until": datetime.fromtimestamp(order[int(0.9 * n)], UTC)},
            "nothing": {"source": "No Such Outlet"},
        }
        if args.cases:
            cases = {c: cases[c] for c in args.cases.split(",")}

        def mask_of(f: dict[str, Any]) -> np.ndarray:
            m = np.ones(n, dtype=bool)
            if "since" in f:
                m &= ts >= f["since"].timestamp()
            if "until" in f:
                m &= ts < f["until"].timestamp()
            if f.get("source"):
                m &= np.array([s.casefold() == f["source"].casefold() for s in src])
            return m

        masks = {c: mask_of(f) for c, f in cases.items()}
        matches = {c: int(m.sum()) for c, m in masks.items()}
        log("cases: " + ", ".join(f"{c} {matches[c]}" for c in cases))

        if args.listings:
            store.close()
            out = time_listings(base / key / "storyline.db", cases, matches, args.queries,
                                pl.FILTER_DIRECT_MAX + 1, args.database_url)
            if args.json:
                print(json.dumps({"articles": n, "queries": args.queries, "cases": matches,
                                  "listings": out}))
            return
        rng = np.random.default_rng(args.seed + 2)
        rel_q = [ids[j] for j in rng.choice(n, size=args.queries, replace=False).tolist()]
        texts = {f"q{i}": qvecs[i] for i in range(len(qvecs))}
        settings0 = Settings(data_dir=tmp)
        pool = max(50, 5 * args.k)

        def top_of(idx: np.ndarray, sims: np.ndarray, want: int) -> list[int]:
            """Positions in ``idx`` of the ``want`` best, ties by id (as the product)."""
            if len(idx) > want:
                cut = np.partition(-sims, want - 1)[want - 1]
                near = np.flatnonzero(-sims <= cut)  # every tie at the cut
            else:
                near = np.arange(len(idx))
            return sorted(near.tolist(), key=lambda j: (-sims[j], ids[idx[j]]))[:want]

        def exact_search(q: np.ndarray, m: np.ndarray) -> list[str]:
            idx = np.flatnonzero(m)
            sims = mat[idx] @ q
            return [ids[idx[j]] for j in top_of(idx, sims, args.k)]

        def exact_related(qid: str, m: np.ndarray) -> list[str]:
            j0 = pos[qid]
            m = m.copy()
            m[j0] = False
            idx = np.flatnonzero(m)
            sims = mat[idx] @ mat[j0]
            top = top_of(idx, sims, pool)
            tq = datetime.fromtimestamp(ts[j0], UTC)
            scored = sorted(
                ((relatedness(float(sims[j]), tq, datetime.fromtimestamp(ts[idx[j]], UTC),
                              set(), set(), window_h=settings0.related_window_hours,
                              w_time=settings0.related_time_weight, w_ent=0.0), ids[idx[j]])
                 for j in top),
                key=lambda t: (-t[0], t[1]))
            return [i for _, i in scored[: args.k]]

        truth: dict[tuple[str, str], list[list[str]]] = {}
        for c, m in masks.items():
            truth[(c, "search")] = [exact_search(qvecs[i], m) for i in range(len(qvecs))]
            truth[(c, "related")] = [exact_related(q, m) for q in rel_q]
        store.close()

        results: list[dict[str, Any]] = []
        for kind in args.kinds.split(","):
            data = tmp / kind
            data.mkdir()
            settings = Settings(data_dir=data, index_kind=kind)
            st = SQLiteStore(base / key / "storyline.db")
            t0 = time.perf_counter()
            pipe = Pipeline(settings, store=st, embedder=LookupEmbedder(texts),
                            clusterer=False)
            log(f"{kind}: index of {len(pipe.index)} opened in {time.perf_counter() - t0:.0f} s")
            calls = {"search": 0, "briefs": 0}
            inner_search, inner_briefs = pipe.index.search, st.briefs

            def counted_search(q: Any, kk: int, _f: Any = inner_search,
                               _c: dict[str, int] = calls) -> Any:
                _c["search"] += 1
                return _f(q, kk)

            def counted_briefs(b: Sequence[str], _f: Any = inner_briefs,
                               _c: dict[str, int] = calls) -> Any:
                _c["briefs"] += len(b)
                return _f(b)

            pipe.index.search = counted_search
            st.briefs = counted_briefs
            for c, f in cases.items():
                for op in ("related", "search"):
                    qs = rel_q if op == "related" else list(texts)
                    fn = pipe.related if op == "related" else pipe.search
                    fn(qs[0], k=args.k, **f)  # untimed warm-up
                    calls.update(search=0, briefs=0)
                    lat, rec = [], []
                    for qi, q in enumerate(qs):
                        t1 = time.perf_counter()
                        got = [h.id for h in fn(q, k=args.k, **f)]
                        lat.append((time.perf_counter() - t1) * 1000)
                        ref = truth[(c, op)][qi]
                        rec.append(len(set(got) & set(ref)) / len(ref) if ref else
                                   float(not got))
                    row = {"kind": kind, "case": c, "op": op, "matches": matches[c],
                           "ms_p50": round(_p(lat, 0.5), 2), "ms_p99": round(_p(lat, 0.99), 2),
                           "recall": round(float(np.mean(rec)), 4),
                           "searches": round(calls["search"] / len(qs), 2),
                           "briefs": round(calls["briefs"] / len(qs), 1)}
                    results.append(row)
                    log(f"{kind:>4} {c:>16} {op:>7} ({matches[c]:>6} match): "
                        f"p50 {row['ms_p50']:>8.2f} ms  p99 {row['ms_p99']:>8.2f} ms  "
                        f"recall {row['recall']:.4f}  searches {row['searches']}  "
                        f"briefs {row['briefs']}")
            st.close()
        out = {"articles": n, "queries": args.queries, "k": args.k,
               "filter_direct_max": fmax, "cases": matches, "results": results}
        if args.json:
            print(json.dumps(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
