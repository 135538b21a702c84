"""``storyline eval clustering``: story clustering quality against gold story ids.

The articles go through the real :class:`Pipeline` (embedding, entities, store, online story
assignment with its periodic refine) on a throwaway data dir that reuses the built models;
a final refine follows, as the periodic job would run it. Scores are BCubed precision /
recall / F1 (per article, averaged) and pairwise F1, over the articles that carry a gold
``story_id``. Baselines run on the same stored embeddings: agglomerative average linkage
and single-pass nearest-centroid, each at its best threshold *on the evaluated file itself*
(an optimistic bound for them), with and without a 48 h time window.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput
from storyline.models.types import Article
from storyline.service.ingest import read_articles_jsonl
from storyline.service.settings import Settings

__all__ = [
    "bcubed",
    "clustering_metrics",
    "evaluate_clustering",
    "format_table",
    "load_gold_articles",
    "pairwise_f1",
]

#: thresholds swept for the baselines (cosine similarity)
_SWEEP = tuple(round(x, 3) for x in np.arange(0.30, 0.901, 0.025))
_BATCH = 64  # articles per ingest call, as a feed poller would send them


def bcubed(
    pred: Mapping[str, str], gold: Mapping[str, str], items: Sequence[str] | None = None
) -> tuple[float, float, float]:
    """BCubed precision, recall and F1 of ``pred`` against ``gold`` over ``items``.

    For each item: precision = share of its predicted cluster that shares its gold label,
    recall = share of its gold cluster found in its predicted cluster; both averaged over
    items (Bagga & Baldwin 1998; Amigó et al. 2009). Items default to those in ``gold``.
    """
    keys = list(gold) if items is None else list(items)
    if not keys:
        return 0.0, 0.0, 0.0
    missing = [k for k in keys if k not in pred]
    if missing:
        raise InvalidInput(f"{len(missing)} items have no predicted cluster (e.g. {missing[0]})")
    cell = Counter((pred[k], gold[k]) for k in keys)
    psize = Counter(pred[k] for k in keys)
    gsize = Counter(gold[k] for k in keys)
    p = sum(cell[(pred[k], gold[k])] / psize[pred[k]] for k in keys) / len(keys)
    r = sum(cell[(pred[k], gold[k])] / gsize[gold[k]] for k in keys) / len(keys)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def pairwise_f1(
    pred: Mapping[str, str], gold: Mapping[str, str], items: Sequence[str] | None = None
) -> float | None:
    """F1 over item pairs: a pair is positive when both items share a cluster. ``None``
    when no two items share a gold story: recall over no pairs is undefined, and 0.0
    would report a clustering that keeps every article apart, rightly, as a total miss."""
    keys = list(gold) if items is None else list(items)

    def pairs(counts: Counter[Any]) -> int:
        return sum(n * (n - 1) // 2 for n in counts.values())

    both = pairs(Counter((pred[k], gold[k]) for k in keys))
    in_pred = pairs(Counter(pred[k] for k in keys))
    in_gold = pairs(Counter(gold[k] for k in keys))
    if in_gold == 0:
        return None
    if both == 0:
        return 0.0
    prec, rec = both / in_pred, both / in_gold
    return 2 * prec * rec / (prec + rec)


def clustering_metrics(
    pred: Mapping[str, str], gold: Mapping[str, str], items: Sequence[str] | None = None
) -> dict[str, Any]:
    keys = list(gold) if items is None else list(items)
    p, r, f = bcubed(pred, gold, keys)
    return {
        "bcubed_precision": round(p, 4), "bcubed_recall": round(r, 4), "bcubed_f1": round(f, 4),
        "pairwise_f1": None if (pf := pairwise_f1(pred, gold, keys)) is None else round(pf, 4),
        "n_predicted": len({pred[k] for k in keys}), "n_gold": len({gold[k] for k in keys}),
        "n_articles": len(keys),
    }


# -- baselines ------------------------------------------------------------------------------
def _agglomerative(
    sims: npt.NDArray[np.float32], hours: npt.NDArray[np.float64] | None, threshold: float,
    window_h: float | None,
) -> npt.NDArray[np.int64]:
    from sklearn.cluster import AgglomerativeClustering  # eval-time dependency

    if len(sims) < 2:  # scikit-learn refuses a single sample; it is its own cluster
        return np.zeros(len(sims), dtype=np.int64)
    dist = np.clip(1.0 - sims.astype(np.float64), 0.0, None)
    if window_h is not None and hours is not None:
        dist = np.where(hours > window_h, 2.0, dist)  # beyond the window: never the same story
    np.fill_diagonal(dist, 0.0)
    model = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="average",
        distance_threshold=1.0 - threshold,
    )
    return np.asarray(model.fit_predict(dist), dtype=np.int64)


def _single_pass(
    vecs: npt.NDArray[np.float32], ts: npt.NDArray[np.float64], threshold: float,
    window_h: float | None,
) -> npt.NDArray[np.int64]:
    """Each article (in the given order) joins the nearest centroid at or above ``threshold``."""
    n, d = vecs.shape
    labels = np.empty(n, dtype=np.int64)
    sums = np.zeros((n, d), dtype=np.float64)
    cents = np.zeros((n, d), dtype=np.float64)
    last = np.zeros(n, dtype=np.float64)
    k = 0
    for i, v in enumerate(vecs):
        best = -1
        if k:
            s = cents[:k] @ v
            if window_h is not None:
                s = np.where(np.abs(last[:k] - ts[i]) / 3600.0 > window_h, -1.0, s)
            j = int(np.argmax(s))
            if s[j] >= threshold:
                best = j
        if best < 0:
            best, k = k, k + 1
        sums[best] += v
        cents[best] = sums[best] / np.linalg.norm(sums[best])
        last[best] = max(last[best], float(ts[i]))
        labels[i] = best
    return labels


def _baselines(
    ids: list[str], vecs: npt.NDArray[np.float32], ts: npt.NDArray[np.float64],
    gold: Mapping[str, str], splits: Mapping[str, str],
) -> dict[str, Any]:
    sims = vecs @ vecs.T
    hours = np.abs(ts[:, None] - ts[None, :]) / 3600.0
    order = np.argsort(ts, kind="stable")
    out: dict[str, Any] = {}
    for name, window in (("", None), ("_48h", 48.0)):
        for kind in ("agglomerative", "single_pass"):
            best: tuple[float, float, dict[str, str]] | None = None
            for th in _SWEEP:
                if kind == "agglomerative":
                    lab = _agglomerative(sims, hours, th, window)
                    pred = {ids[i]: str(lab[i]) for i in range(len(ids))}
                else:
                    lab = _single_pass(vecs[order], ts[order], th, window)
                    pred = {ids[j]: str(lab[k]) for k, j in enumerate(order)}
                f = bcubed(pred, gold, ids)[2]
                if best is None or f > best[0]:
                    best = (f, th, pred)
            assert best is not None
            res = clustering_metrics(best[2], gold, ids)
            res["threshold"] = best[1]
            res["by_split"] = _by_split(best[2], gold, ids, splits)
            out[kind + name] = res
    return out


def _by_split(
    pred: Mapping[str, str], gold: Mapping[str, str], ids: Sequence[str],
    splits: Mapping[str, str],
) -> dict[str, Any]:
    """The same clustering scored on each split's articles only."""
    names = sorted({splits[i] for i in ids if i in splits})
    return {
        s: clustering_metrics(pred, gold, [i for i in ids if splits.get(i) == s]) for s in names
    }


# -- our system through the pipeline ------------------------------------------------------------
def _ordered(arts: list[Article], order: str, seed: int) -> list[Article]:
    if order == "date":
        return sorted(arts, key=lambda a: (a.published_at is None, a.published_at or 0, a.id))
    if order == "shuffle":
        rng = np.random.default_rng(seed)
        return [arts[i] for i in rng.permutation(len(arts))]
    raise InvalidInput(f"order must be 'date' or 'shuffle', not '{order}'")


def _run_pipeline(
    arts: list[Article], tmp: Path, models_dir: Path, *, embedder: Any = None,
    entities: Any = None,
) -> dict[str, Any]:
    from storyline.service.pipeline import Pipeline

    tmp.mkdir(parents=True)
    (tmp / "models").symlink_to(models_dir.resolve(), target_is_directory=True)
    pipe = Pipeline(Settings(data_dir=tmp), embedder=embedder, entities=entities)
    if pipe.clusterer is None:
        raise InvalidInput("the pipeline was built without a story clusterer")
    t0 = time.perf_counter()
    for i in range(0, len(arts), _BATCH):
        pipe.ingest(arts[i : i + _BATCH])
    ingest_s = time.perf_counter() - t0
    canon = {a.id: pipe.store.canonical_id(a.id) or a.id for a in arts}

    def partition() -> dict[str, str]:
        story = pipe.store.story_of(sorted(set(canon.values())))
        return {aid: story.get(c, f"unassigned:{c}") for aid, c in canon.items()}

    online = partition()
    t1 = time.perf_counter()
    refine = pipe.clusterer.refine()
    refine_s = time.perf_counter() - t1
    final = partition()
    ids, vecs = pipe.store.embeddings()
    texts = {a.id: a for a in pipe.store.get_articles(ids)}
    ents = pipe.store.entities(ids)
    from storyline.service.pipeline import article_text

    out = {
        "pipe": pipe, "online": online, "final": final, "ingest_seconds": ingest_s,
        "refine_seconds": refine_s, "refine": refine,
        "vectors": {article_text(texts[i]): vecs[k] for k, i in enumerate(ids)},
        "entities": {article_text(texts[i]): ents.get(i, ()) for i in ids},
        "params": asdict(pipe.clusterer.params),
    }
    return out


def load_gold_articles(path: Path, *, max_chars: int = 200_000) -> list[Article]:
    """The articles of an eval file in the article format, read as ingest reads them (its
    length limit; a bad line is ``InvalidInput``). A blank ``story_id`` is no gold label (as
    a blank optional field is absent elsewhere in the format), not one story of every
    such article."""
    arts = []
    for p in read_articles_jsonl(path, max_chars=max_chars):
        if p.error is not None:
            raise InvalidInput(f"{path}: {p.error.detail}")
        if p.article is not None:
            a = p.article
            if a.story_id is not None and not a.story_id.strip():
                a = replace(a, story_id=None)
            arts.append(a)
    return arts


def _read_splits(path: Path) -> dict[str, str]:
    """The optional ``split`` field per article id (the Article type does not keep it)."""
    out: dict[str, str] = {}
    with path.open("rb") as fh:
        for raw in fh:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("split"), str) and "id" in obj:
                out[str(obj["id"]).strip()] = obj["split"]
    return out


def evaluate_clustering(
    articles_file: Path,
    *,
    order: str = "date",
    baselines: bool = False,
    models_dir: Path,
    seed: int = 0,
    robustness: bool = True,
    max_chars: int = 200_000,
) -> dict[str, Any]:
    """Cluster ``articles_file`` through the pipeline and score it against gold story ids.

    ``order``: ingest in published order (``date``) or shuffled with ``seed``. With
    ``robustness`` the other order is run too (reusing the vectors and entities, so only
    the clustering runs again) and ``order_robustness_bcubed_f1`` is the BCubed F1 between
    the two final partitions (1.0 = ingest order made no difference).
    """
    t0 = time.perf_counter()
    # The same id twice: the later line is the stored article (ingest's rule), gold too.
    arts = list({a.id: a for a in load_gold_articles(articles_file, max_chars=max_chars)}.values())
    gold = {a.id: a.story_id for a in arts if a.story_id is not None}
    if not gold:
        raise InvalidInput(f"{articles_file}: no article has a story_id; nothing to evaluate")
    ids = sorted(gold)
    splits = _read_splits(articles_file)
    with tempfile.TemporaryDirectory(prefix="storyline-eval-") as tmp_s:
        tmp = Path(tmp_s)
        run = _run_pipeline(_ordered(arts, order, seed), tmp / "a", models_dir)
        res: dict[str, Any] = clustering_metrics(run["final"], gold, ids)
        res.update(
            order=order, seed=seed, articles=len(arts),
            ingest_seconds=round(run["ingest_seconds"], 2),
            refine_seconds=round(run["refine_seconds"], 2), refine=run["refine"],
            online=clustering_metrics(run["online"], gold, ids),
            by_split=_by_split(run["final"], gold, ids, splits),
            params=run["params"],
        )
        pipe = run["pipe"]
        if robustness:
            other = "shuffle" if order == "date" else "date"
            from storyline.models.embedder import CachingEmbedder

            cache = run["vectors"]
            # every text of the second run was embedded by the first: nothing is evicted
            emb = CachingEmbedder(pipe.embedder, size=len(cache) + len(arts))
            if cache:
                emb.remember(list(cache), np.stack(list(cache.values())))
            ent_cache = run["entities"]
            def ents(texts: list[str]) -> list[tuple[str, ...]]:
                todo = [t for t in texts if t not in ent_cache]
                if todo:
                    for t, e in zip(todo, pipe.entity_keys(todo), strict=True):
                        ent_cache[t] = e
                return [tuple(ent_cache[t]) for t in texts]

            run2 = _run_pipeline(
                _ordered(arts, other, seed + 1), tmp / "b", models_dir, embedder=emb,
                entities=ents,
            )
            res["order_robustness_bcubed_f1"] = round(
                bcubed(run2["final"], run["final"], ids)[2], 4
            )
            res["order_robustness_online_bcubed_f1"] = round(
                bcubed(run2["online"], run["online"], ids)[2], 4
            )
            res["other_order"] = {
                "order": other, **clustering_metrics(run2["final"], gold, ids),
                "online": clustering_metrics(run2["online"], gold, ids),
            }
            run2["pipe"].store.close()
        if baselines:
            sids, vecs = pipe.store.embeddings()
            canon = {a.id: pipe.store.canonical_id(a.id) or a.id for a in arts}
            row = {i: k for k, i in enumerate(sids)}
            rows = [row[canon[i]] for i in ids]
            pub = {a.id: a.published_at for a in arts}
            ts = np.asarray(
                [t.timestamp() if (t := pub[i]) is not None else 0.0 for i in ids], np.float64
            )
            res["baselines"] = _baselines(ids, vecs[rows], ts, gold, splits)
        pipe.store.close()
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def format_table(res: Mapping[str, Any]) -> str:
    """A human table: ours (final and online) against the baselines, per split."""
    rows: list[tuple[str, Mapping[str, Any]]] = [
        ("storyline (online + refine)", res), ("storyline (online only)", res["online"]),
    ]
    if "other_order" in res:
        rows.append((f"storyline, {res['other_order']['order']} order", res["other_order"]))
    for name, b in res.get("baselines", {}).items():
        rows.append((f"{name} @ {b['threshold']}", b))
    cols = ("bcubed_precision", "bcubed_recall", "bcubed_f1", "pairwise_f1", "n_predicted")
    head = ["P", "R", "F1", "pair F1", "stories"]
    lines = [f"{'system':<34}" + "".join(f"{h:>9}" for h in head)]
    for name, r in rows:
        lines.append(f"{name:<34}" + "".join(
            f"{r[c]:>9.4f}" if isinstance(r[c], float) else f"{r[c]:>9}" for c in cols))
        for split, sr in r.get("by_split", {}).items():
            lines.append(f"{'  ' + split:<34}" + "".join(
                f"{sr[c]:>9.4f}" if isinstance(sr[c], float) else f"{sr[c]:>9}" for c in cols))
    lines.append(f"{res['n_gold']} gold stories, {res['n_articles']} articles; ingest "
                 f"{res['ingest_seconds']} s, refine {res['refine_seconds']} s, "
                 f"total {res['seconds']} s")
    if "order_robustness_bcubed_f1" in res:
        lines.append(f"order robustness (BCubed F1 between {res['order']} and "
                     f"{res['other_order']['order']} order): {res['order_robustness_bcubed_f1']}")
    return "\n".join(lines)
