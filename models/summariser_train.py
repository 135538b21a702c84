"""Train the extractive summariser's sentence scorer on AllSides train; export it to ONNX.

Build-time only: torch is imported inside the functions that need it, so importing this
module costs nothing on the serving path. Features come from
``storyline.models.summariser.story_features``, the very function the runtime calls.

Recipe (``train_summariser``):

1. Split and embed every train story with the built MiniLM embedder (embeddings cached on
   disk, keyed by text and embedder id, so tuning sweeps and rebuilds skip the encoder).
2. Labels from the reference: each candidate's ROUGE-1 + ROUGE-2 recall against the
   story's summary (rouge-score tokenisation, Porter stemming), plus greedy-oracle
   membership. The scorer is trained listwise (softmax over a story's candidates against
   the label distribution), which matches how it is used: ranking within a story.
3. Model and selection choice by 5-fold cross-validation over train *stories*: out-of-fold
   scores go through the real selection (beam search / MMR under the budget, eval-style
   truncation) and are scored with ROUGE against the references. The best selection
   parameters are kept; the final scorer is refit on all train stories.
4. Citation threshold and headline rule are tuned on train as well (see ``_tune_support``
   and ``_tune_headline``).
5. Export: standardisation + MLP as one ONNX graph; selection parameters and feature names
   in its metadata. ``training.json`` records seed, data hashes and the CV metrics.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import platform
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput, ModelBuildError
from storyline.models.jsonl import jsonl_objects
from storyline.models.registry import (
    EMBEDDER,
    SUMMARISER,
    Manifest,
    atomic_write_bytes,
    package_versions,
    sha256_file,
)
from storyline.models.summariser import (
    _STOP,
    CONCEPT_FEATURE_NAMES,
    FEATURE_NAMES,
    PreparedStory,
    Prior,
    SelectionParams,
    StoryConcepts,
    choose_headline,
    concept_tokens,
    load_scorer,
    order_key,
    prepare_story,
    select_sentences,
    story_concepts,
    story_features,
)
from storyline.models.types import Article

__all__ = [
    "AllSidesStory",
    "FastRouge",
    "build_key",
    "cached_embed",
    "load_allsides",
    "train_summariser",
    "truncate_words",
]

Log = Callable[[str], None]
F32 = npt.NDArray[np.float32]

#: Bump when the code changes what a build produces, so old artefacts are rebuilt.
RECIPE_VERSION = 2
DEFAULT_CACHE_DIR = Path("/tmp/storyline-summariser-cache")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class AllSidesStory:
    story_id: str
    split: str
    headline: str
    summary: str
    articles: tuple[Article, ...]

    @property
    def budget(self) -> int:
        """Evaluation budget: the reference summary's length in words."""
        return len(self.summary.split())


def _iso_time(raw: str) -> datetime:
    return datetime.fromisoformat(raw.strip())


def _parse_time(
    raw: Any, where: str, parse: Callable[[str], datetime] = _iso_time
) -> datetime | None:
    """``published_at`` read by ``parse``; absent, null or empty is undated. Anything else
    that does not parse is refused: read as undated, it silently moved the article to the
    end of every reading order."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise InvalidInput(f"{where}: published_at must be a string, got {raw!r:.60}")
    try:
        return parse(raw)
    except InvalidInput as exc:  # the parser's own words name the field
        raise InvalidInput(f"{where}: {exc.detail}") from None
    except ValueError:
        raise InvalidInput(
            f"{where}: published_at: '{raw[:40]}' is not an ISO 8601 date-time"
        ) from None


def _is_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool) and bool(str(value).strip())


def _opt_str(obj: dict[str, Any], name: str, where: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{where}: {name} must be a string")
    return value


def load_allsides(
    articles_file: Path, stories_file: Path, *, parse_time: Callable[[str], datetime] = _iso_time
) -> list[AllSidesStory]:
    """Stories with their member articles, in the stories file's order.

    Article ids named by a story but absent from ``articles_file`` are left out of it. A
    malformed line raises ``InvalidInput`` naming ``file:line`` and the field.
    ``parse_time`` reads ``published_at`` (ISO 8601 by default; the eval command passes
    ingest's reader, so it takes every date ingest takes) and raises ``ValueError``.
    """
    arts: dict[str, Article] = {}
    for n, r in jsonl_objects(articles_file):
        where = f"{articles_file}:{n}"
        if not _is_id(r.get("id")):
            raise InvalidInput(f"{where}: id must be a non-empty string or integer")
        aid = str(r["id"]).strip()
        fields = {k: _opt_str(r, k, where) for k in ("text", "title", "source", "url", "lean")}
        arts[aid] = Article(
            id=aid,
            text=fields["text"] or "",
            title=fields["title"] or "",
            source=fields["source"],
            url=fields["url"],
            published_at=_parse_time(r.get("published_at"), where, parse_time),
            story_id=str(r.get("story_id")),
            lean=fields["lean"],
        )
    out = []
    for n, r in jsonl_objects(stories_file):
        where = f"{stories_file}:{n}"
        if not _is_id(r.get("story_id")):
            raise InvalidInput(f"{where}: story_id must be a non-empty string or integer")
        ids = r.get("article_ids")
        if not isinstance(ids, list) or not all(_is_id(i) for i in ids):
            raise InvalidInput(f"{where}: article_ids must be a list of article ids "
                               "(strings or integers)")
        fields = {k: _opt_str(r, k, where) for k in ("split", "headline", "summary")}
        members = tuple(arts[k] for k in (str(i).strip() for i in ids) if k in arts)
        out.append(
            AllSidesStory(
                story_id=str(r["story_id"]).strip(),
                split=fields["split"] or "",
                headline=fields["headline"] or "",
                summary=fields["summary"] or "",
                articles=members,
            )
        )
    return out


def cached_embed(
    embed: Callable[[Sequence[str]], F32], model_id: str, cache_dir: Path | None
) -> Callable[[Sequence[str]], F32]:
    """Wrap ``embed`` with an on-disk cache of text -> vector (one .npz per embedder id)."""
    if cache_dir is None:
        return embed
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"emb-{hashlib.sha256(model_id.encode()).hexdigest()[:16]}.npz"
    store: dict[str, F32] = {}
    if path.exists():
        with np.load(path) as z:
            store = {k: z[k] for k in z.files}

    def key(t: str) -> str:
        return hashlib.sha1(t.encode("utf-8")).hexdigest()

    def wrapped(texts: Sequence[str]) -> F32:
        keys = [key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in store}.items())
        if missing:
            vecs = embed([t for _, t in missing])
            for (k, _), v in zip(missing, vecs, strict=True):
                store[k] = np.asarray(v, dtype=np.float32)
        return np.stack([store[k] for k in keys]) if keys else np.zeros((0, 1), np.float32)

    def save() -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **store)  # type: ignore[arg-type]
        tmp.replace(path)

    wrapped.save = save  # type: ignore[attr-defined]
    return wrapped


def truncate_words(text: str, budget: int) -> str:
    """The evaluation's hard cap: the first ``budget`` whitespace words."""
    return " ".join(text.split()[:budget])


# --------------------------------------------------------------------------- fast ROUGE


class FastRouge:
    """rouge-score's tokenisation (lowercase, [a-z0-9] runs, Porter stem if len > 3) with a
    per-word cache, and ROUGE-1/2/L F1 on token lists: identical numbers, ~50x faster in
    tuning loops."""

    def __init__(self) -> None:
        from rouge_score import tokenize
        from rouge_score.tokenizers import DefaultTokenizer

        self._tok = DefaultTokenizer(use_stemmer=True)
        self._tokenize = tokenize
        self._memo: dict[str, list[str]] = {}

    def tokens(self, text: str) -> list[str]:
        out: list[str] = []
        for w in text.split():
            t = self._memo.get(w)
            if t is None:
                t = self._tok.tokenize(w)
                self._memo[w] = t
            out.extend(t)
        return out

    @staticmethod
    def _f(overlap: int, n_pred: int, n_ref: int) -> float:
        if overlap == 0 or n_pred == 0 or n_ref == 0:
            return 0.0
        p, r = overlap / n_pred, overlap / n_ref
        return 2 * p * r / (p + r)

    @staticmethod
    def ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
        return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))

    def scores(
        self,
        pred: list[str],
        ref: list[str],
        lcs: bool = False,
        ref_counts: Sequence[Counter[tuple[str, ...]]] | None = None,
    ) -> tuple[float, ...]:
        out = []
        for n in (1, 2):
            pc = self.ngrams(pred, n)
            rc = ref_counts[n - 1] if ref_counts is not None else self.ngrams(ref, n)
            ov = sum((pc & rc).values())
            out.append(self._f(ov, sum(pc.values()), sum(rc.values())))
        if lcs:
            out.append(self._f(_lcs(pred, ref), len(pred), len(ref)))
        return tuple(out)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


# --------------------------------------------------------------------------- labels


@dataclass(slots=True)
class TrainStory:
    record: AllSidesStory
    story: PreparedStory
    feats: F32  # sentence features, candidate order
    ref_tokens: list[str]  # rouge-score tokens of the reference
    ref_counts: list[Counter[tuple[str, ...]]]
    oracle: F32  # greedy-oracle membership (0/1) per candidate
    concepts: StoryConcepts
    concept_labels: F32  # per concept row (g, k): reference holds g at least k times
    src_keys: set[str]
    hit_keys: set[str]


def summary_text(story: PreparedStory, picked: Iterable[int]) -> str:
    return " ".join(story.sentences[i].text
                    for i in sorted(picked, key=lambda i: order_key(story, i)))


def greedy_oracle(
    story: PreparedStory, ref: list[str], budget: int, rouge: FastRouge
) -> list[int]:
    """Greedy ROUGE-1 + ROUGE-2 F1 oracle over the candidates, eval-style truncation."""
    picked: list[int] = []
    best = 0.0
    counts = [FastRouge.ngrams(ref, 1), FastRouge.ngrams(ref, 2)]
    while True:
        step, step_val = -1, best
        for i in story.candidates:
            if i in picked:
                continue
            text = truncate_words(summary_text(story, [*picked, i]), budget)
            r1, r2 = rouge.scores(rouge.tokens(text), ref, ref_counts=counts)
            if r1 + r2 > step_val + 1e-9:
                step, step_val = i, r1 + r2
        if step < 0:
            return picked
        picked.append(step)
        best = step_val
        if sum(story.sentences[i].n_words for i in picked) >= budget:
            return picked


def make_train_story(rec: AllSidesStory, story: PreparedStory, rouge: FastRouge) -> TrainStory:
    ref = rouge.tokens(rec.summary)
    oracle_set = set(greedy_oracle(story, ref, rec.budget, rouge))
    oracle = np.array([float(i in oracle_set) for i in story.candidates], dtype=np.float32)
    concepts = story_concepts(story)
    rt = concept_tokens(rec.summary)
    ref_grams: Counter[tuple[str, ...]] = Counter((t,) for t in rt)
    ref_grams.update(itertools.pairwise(rt))
    labels = np.array([float(ref_grams[concepts.grams[g]] >= k) for g, k in concepts.rows],
                      dtype=np.float32)
    src = concepts.keys()
    hits = {k for k in src if ref_grams[tuple(k.split(" "))] > 0}
    return TrainStory(rec, story, story_features(story), ref,
                      [FastRouge.ngrams(ref, 1), FastRouge.ngrams(ref, 2)], oracle,
                      concepts, labels, src, hits)


def build_prior(stories: Sequence[TrainStory], m: float = 5.0, min_stories: int = 2) -> Prior:
    hits: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for s in stories:
        seen.update(s.src_keys)
        hits.update(s.hit_keys)
    uni = [k for k in seen if " " not in k]
    p0 = sum(hits[k] for k in uni) / max(1, sum(seen[k] for k in uni))
    counts = {k: (hits[k], n) for k, n in sorted(seen.items()) if n >= min_stories}
    return Prior(counts, round(p0, 6), m, min_stories)


# --------------------------------------------------------------------------- scorers


@dataclass(frozen=True, slots=True)
class ScorerConfig:
    #: sentence scorer hidden width (0 = logistic regression); BCE on oracle membership
    hidden: int = 16
    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-3
    dropout: float = 0.1
    #: concept scorer: logistic regression, full-batch L-BFGS
    concept_steps: int = 100
    concept_l2: float = 1e-4


def _standardiser(x: F32) -> tuple[F32, F32]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std < 1e-6, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass(slots=True)
class FittedScorer:
    sent_net: Any
    sent_mean: F32
    sent_std: F32
    concept_net: Any
    concept_mean: F32
    concept_std: F32

    def sentence_scores(self, feats: F32) -> F32:
        return _predict(self.sent_net, self.sent_mean, self.sent_std, feats)

    def concept_weights(self, feats: F32) -> F32:
        import torch

        logits = _predict(self.concept_net, self.concept_mean, self.concept_std, feats)
        return torch.sigmoid(torch.from_numpy(logits)).numpy().astype(np.float32)


def _predict(net: Any, mean: F32, std: F32, feats: F32) -> F32:
    import torch

    if feats.shape[0] == 0:
        return np.zeros(0, np.float32)
    with torch.no_grad():
        out = net(torch.from_numpy((feats - mean) / std)).squeeze(-1)
    return np.asarray(out.numpy(), dtype=np.float32).reshape(-1)


def _fit_sentence(x: F32, y: F32, cfg: ScorerConfig, seed: int) -> tuple[Any, F32, F32]:
    import torch

    mean, std = _standardiser(x)
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    if cfg.hidden:
        net = torch.nn.Sequential(
            torch.nn.Linear(x.shape[1], cfg.hidden), torch.nn.Tanh(),
            torch.nn.Dropout(cfg.dropout), torch.nn.Linear(cfg.hidden, 1))
    else:
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 1))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    batch = 128
    for _ in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=gen)
        for b in range(0, len(perm), batch):
            idx = perm[b : b + batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                net(xt[idx]).squeeze(-1), yt[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    net.eval()
    return net, mean, std


def _fit_concepts(x: F32, y: F32, cfg: ScorerConfig) -> tuple[Any, F32, F32]:
    import torch

    mean, std = _standardiser(x)
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    linear = torch.nn.Linear(x.shape[1], 1)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    net = torch.nn.Sequential(linear)
    # Full-batch L-BFGS: a convex problem on ~200k rows converges in a few dozen steps.
    opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=cfg.concept_steps,
                            line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt).squeeze(-1), yt)
        # a touch of L2 keeps the weights finite on separable columns
        loss = loss + cfg.concept_l2 * (linear.weight ** 2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    net.eval()
    return net, mean, std


def fit_scorer(
    stories: Sequence[TrainStory], prior: Prior, cfg: ScorerConfig, seed: int
) -> FittedScorer:
    """Fit both heads on ``stories``; concept features use ``prior`` leave-one-story-out."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    xs = np.concatenate([s.feats for s in stories])
    ys = np.concatenate([s.oracle for s in stories])
    sent = _fit_sentence(xs, ys, cfg, seed)
    xc = np.concatenate([s.concepts.features(prior, (s.src_keys, s.hit_keys)) for s in stories])
    yc = np.concatenate([s.concept_labels for s in stories])
    conc = _fit_concepts(xc, yc, cfg)
    return FittedScorer(*sent, *conc)


# --------------------------------------------------------------------------- evaluation


@dataclass(slots=True)
class Scored:
    """One story's model outputs, ready for selection."""

    sentence_scores: F32
    concept_weights: F32


def score_story(s: TrainStory, model: FittedScorer, prior: Prior) -> Scored:
    return Scored(model.sentence_scores(s.feats),
                  model.concept_weights(s.concepts.features(prior)))


def per_story_objective(
    stories: Sequence[TrainStory],
    scored: Sequence[Scored],
    params: SelectionParams,
    rouge: FastRouge,
) -> npt.NDArray[np.float64]:
    """Per story ``[ROUGE-1 F1, ROUGE-2 F1]`` of the selection, eval-style truncation."""
    out = np.zeros((len(stories), 2))
    for n, (s, sc) in enumerate(zip(stories, scored, strict=True)):
        picked = select_sentences(s.story, sc.sentence_scores, s.record.budget, params,
                                  s.concepts, sc.concept_weights)
        text = truncate_words(summary_text(s.story, picked), s.record.budget)
        out[n] = rouge.scores(rouge.tokens(text), s.ref_tokens, ref_counts=s.ref_counts)
    return out


def _summary(per_story: npt.NDArray[np.float64]) -> dict[str, float]:
    r1, r2 = per_story.mean(axis=0) if len(per_story) else (0.0, 0.0)
    return {"rouge1": float(r1), "rouge2": float(r2), "objective": float(r1 + r2)}


def eval_selection(
    stories: Sequence[TrainStory],
    scored: Sequence[Scored],
    params: SelectionParams,
    rouge: FastRouge,
) -> dict[str, float]:
    return _summary(per_story_objective(stories, scored, params, rouge))


def _folds(n: int, k: int, seed: int) -> list[npt.NDArray[np.int64]]:
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[i::k] for i in range(k)]


def oof_scored(
    stories: Sequence[TrainStory], cfg: ScorerConfig, seed: int, k: int = 5
) -> list[Scored]:
    """Out-of-fold outputs for every story (each from a model and prior that never saw it)."""
    out: list[Scored | None] = [None] * len(stories)
    for f, held in enumerate(_folds(len(stories), k, seed)):
        held_set = set(held.tolist())
        train = [s for i, s in enumerate(stories) if i not in held_set]
        prior = build_prior(train)
        model = fit_scorer(train, prior, cfg, seed + f)
        for i in held:
            out[i] = score_story(stories[i], model, prior)
    return [o for o in out if o is not None]


# --------------------------------------------------------------------------- tuning

#: coordinate-ascent grid for the selection parameters
SELECTION_GRID: dict[str, tuple[float, ...]] = {
    "alpha": (0.75, 0.9, 1.0),
    "mu": (0.0, 0.1, 0.2, 0.35),
    "bigram_weight": (1.0, 1.5, 2.0),
    "beam": (0, 4, 8),
    "min_fit": (0.3, 0.5, 0.7),
    "mmr_lambda": (1.0, 0.9, 0.8),
    "max_redundancy": (0.9, 0.95, 1.01),
}


def tune_selection(
    stories: Sequence[TrainStory],
    scored: Sequence[Scored],
    base: SelectionParams,
    rouge: FastRouge,
    passes: int = 2,
    se_factor: float = 1.0,
    log: Log | None = None,
) -> tuple[SelectionParams, dict[str, float]]:
    """Coordinate ascent on mean ROUGE-1 + ROUGE-2 with a one-standard-error rule.

    ``base`` holds the simplest settings (no sentence-score mixing, gain per word, no MMR
    penalty, a small beam on the coverage objective). A move is accepted only when its
    mean paired per-story gain exceeds ``se_factor`` standard errors: with ~400 stories,
    smaller gains are noise, and chasing them bought nothing on held-out data in
    development.
    """
    best = base
    best_rows = per_story_objective(stories, scored, base, rouge)
    for _ in range(passes):
        changed = False
        for name, values in SELECTION_GRID.items():
            for v in values:
                if getattr(best, name) == v:
                    continue
                p = replace(best, **{name: v})  # type: ignore[arg-type]  # grid is typed by name
                rows = per_story_objective(stories, scored, p, rouge)
                diff = rows.sum(axis=1) - best_rows.sum(axis=1)
                se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
                if float(diff.mean()) > se_factor * se and float(diff.mean()) > 0:
                    best, best_rows, changed = p, rows, True
        if log:
            m = _summary(best_rows)
            log(f"  selection pass: R1 {m['rouge1']:.4f} R2 {m['rouge2']:.4f} {best}")
        if not changed:
            break
    return best, _summary(best_rows)


def _tune_support(stories: Sequence[TrainStory], rouge: FastRouge) -> dict[str, Any]:
    """Citation threshold: the cosine that best separates cross-article sentence pairs that
    share a fact from those that do not.

    Silver truth for "article b supports sentence i": some sentence of b holds >= 50% of
    i's stemmed content words (stop words out). The threshold maximises F0.5 against it
    (precision weighs double: a wrong citation misleads more than a missing one).
    """
    sims, truth = [], []
    for s in stories:
        st = s.story
        toks = [{t for t in rouge.tokens(x.text) if t not in _STOP and len(t) > 1}
                for x in st.sentences]
        for i in st.candidates:
            own = st.sentences[i].article
            if not toks[i]:
                continue
            for a in range(st.n_articles):
                js = [j for j, x in enumerate(st.sentences) if x.article == a]
                if a == own or not js:
                    continue
                sims.append(max(float(st.emb[i] @ st.emb[j]) for j in js))
                truth.append(max(len(toks[i] & toks[j]) / len(toks[i]) for j in js) >= 0.5)
    sim_a, truth_a = np.array(sims), np.array(truth)
    best: dict[str, Any] = {"threshold": 0.6, "f05": -1.0}
    for th in np.arange(0.40, 0.951, 0.01):
        pred = sim_a >= th
        tp = float(np.sum(pred & truth_a))
        p = tp / max(1.0, float(pred.sum()))
        r = tp / max(1.0, float(truth_a.sum()))
        f05 = 1.25 * p * r / (0.25 * p + r) if p + r else 0.0
        if f05 > best["f05"]:
            best = {"threshold": round(float(th), 2), "f05": round(f05, 4),
                    "precision": round(p, 4), "recall": round(r, 4)}
    best["pairs"] = len(sims)
    best["positive_rate"] = round(float(truth_a.mean()), 4) if len(truth_a) else 0.0
    return best


def _tune_headline(stories: Sequence[TrainStory], rouge: FastRouge) -> dict[str, Any]:
    """The headline rule whose pick has the best ROUGE-1 F1 against AllSides' headline."""
    res: dict[str, float] = {}
    for rule in ("centroid", "title_centroid"):
        vals = [
            rouge.scores(rouge.tokens(choose_headline(s.story, rule)),
                         rouge.tokens(s.record.headline))[0]
            for s in stories
        ]
        res[rule] = round(float(np.mean(vals)), 4)
    return {"rule": max(res, key=lambda k: res[k]), "rouge1": res}


# --------------------------------------------------------------------------- export


def export_onnx(
    model: FittedScorer, prior: Prior, params: SelectionParams, path: Path, opset: int = 17
) -> None:
    """One graph, two heads: ``features [n, F] -> score [n]`` (sentence logits) and
    ``concepts [m, G] -> concept_weight [m]`` (probabilities); standardisation inside.
    Selection parameters, feature names and the lexical prior travel in the metadata."""
    import io

    import onnx
    import torch

    class Scorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("s_mean", torch.from_numpy(model.sent_mean))
            self.register_buffer("s_std", torch.from_numpy(model.sent_std))
            self.register_buffer("c_mean", torch.from_numpy(model.concept_mean))
            self.register_buffer("c_std", torch.from_numpy(model.concept_std))
            self.sent = model.sent_net
            self.concept = model.concept_net

        def forward(self, features: Any, concepts: Any) -> tuple[Any, Any]:
            score = self.sent((features - self.s_mean) / self.s_std).squeeze(-1)
            weight = torch.sigmoid(self.concept((concepts - self.c_mean) / self.c_std))
            return score, weight.squeeze(-1)

    module = Scorer().eval()
    buf = io.BytesIO()
    with torch.inference_mode(), warnings.catch_warnings():
        # dynamo=False is deliberate: the TorchScript exporter handles this two-layer graph
        # with plain dynamic axes; its "legacy exporter" notice is not actionable here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (torch.zeros(3, len(FEATURE_NAMES)), torch.zeros(5, len(CONCEPT_FEATURE_NAMES))),
            buf,  # type: ignore[arg-type]  # a file object works; the stub only names paths
            input_names=["features", "concepts"],
            output_names=["score", "concept_weight"],
            dynamic_axes={"features": {0: "n"}, "score": {0: "n"},
                          "concepts": {0: "m"}, "concept_weight": {0: "m"}},
            opset_version=opset,
            dynamo=False,
        )
    onnx_model = onnx.load_from_string(buf.getvalue())
    for key, value in (("selection", params.to_json()),
                       ("features", json.dumps(list(FEATURE_NAMES))),
                       ("concept_features", json.dumps(list(CONCEPT_FEATURE_NAMES))),
                       ("prior", prior.to_json())):
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(onnx_model)
    atomic_write_bytes(path, onnx_model.SerializeToString())


def _check_export(
    path: Path, model: FittedScorer, prior: Prior, stories: Sequence[TrainStory]
) -> None:
    """The ONNX graph must score like the torch modules it came from."""
    scorer = load_scorer(path, 1)
    if scorer.prior != prior:
        raise ModelBuildError("exported summariser prior does not round-trip")
    for s in stories:
        a = scorer.sentence_scores(s.feats)
        cf = s.concepts.features(scorer.prior)
        b = scorer.concept_weights(cf)
        if not (np.allclose(a, model.sentence_scores(s.feats), atol=1e-4)
                and np.allclose(b, model.concept_weights(cf), atol=1e-4)):
            raise ModelBuildError("exported summariser scorer disagrees with torch")
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ModelBuildError("summariser scorer produced non-finite scores")


# --------------------------------------------------------------------------- build


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(),
            **package_versions("torch", "onnx", "onnxruntime", "numpy", "rouge-score",
                               missing="missing")}


def _embedder_digest(models_dir: Path) -> str:
    rec = Manifest(models_dir).get(EMBEDDER.name)
    return rec.files.get(f"{EMBEDDER.folder}/{EMBEDDER.file}", "") if rec else ""


def _embedder_files_digest(models_dir: Path) -> str:
    """One sha256 over every embedder file: the scorer is trained on its vectors, which
    the tokenizer shapes as much as the graph does."""
    rec = Manifest(models_dir).get(EMBEDDER.name)
    return hashlib.sha256(json.dumps(rec.files, sort_keys=True).encode()).hexdigest() if rec else ""


def build_key(models_dir: Path, articles_file: Path, stories_file: Path, seed: int) -> str:
    """Hash of everything a build depends on: data, embedder, seed, recipe and code."""
    h = hashlib.sha256()
    for p in (articles_file, stories_file):
        h.update(sha256_file(p).encode())
    h.update(_embedder_files_digest(models_dir).encode())
    for mod in ("summariser.py", "summariser_train.py", "words.py"):
        h.update(sha256_file(Path(__file__).with_name(mod)).encode())
    h.update(json.dumps({"seed": seed, "v": RECIPE_VERSION}).encode())
    return h.hexdigest()


def prepare_train_stories(
    records: Sequence[AllSidesStory],
    embed: Callable[[Sequence[str]], F32],
    rouge: FastRouge,
) -> list[TrainStory]:
    out = []
    for rec in records:
        if not rec.articles or not rec.summary.strip():
            continue
        story = prepare_story(rec.articles, embed)
        if not story.candidates:
            continue
        out.append(make_train_story(rec, story, rouge))
    return out


def train_summariser(
    models_dir: Path,
    *,
    articles_file: Path,
    stories_file: Path,
    seed: int = 13,
    log: Log = print,
    force: bool = False,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    threads: int = 2,
    cfg: ScorerConfig | None = None,
) -> dict[str, Any]:
    """Train on ``split == "train"`` stories into ``models_dir/summariser``; record it.

    Skipped (returning the recorded meta) when the manifest already holds a build with the
    same build key, unless ``force``. Returns the training report (also ``training.json``).
    """
    cfg = cfg or ScorerConfig()
    key = build_key(models_dir, articles_file, stories_file, seed)
    manifest = Manifest(models_dir)
    if not force and manifest.is_current(SUMMARISER, key):
        rec = manifest.get(SUMMARISER.name)
        log(f"{SUMMARISER.name} is current (build_key {key[:12]}); skipping")
        return dict(rec.meta) if rec else {}
    t0 = time.perf_counter()
    from storyline.models.embedder import OnnxEmbedder

    embedder = OnnxEmbedder(models_dir, threads=threads)
    embed = cached_embed(embedder.embed, embedder.model_id, cache_dir)
    records = [r for r in load_allsides(articles_file, stories_file) if r.split == "train"]
    if not records:
        raise ModelBuildError(f"no split=train stories in {stories_file}")
    rouge = FastRouge()
    log(f"preparing {len(records)} train stories (embeddings cached in {cache_dir})")
    stories = prepare_train_stories(records, embed, rouge)
    if hasattr(embed, "save"):
        embed.save()
    log(f"prepared {len(stories)} stories, {sum(len(s.feats) for s in stories)} candidates, "
        f"{sum(len(s.concept_labels) for s in stories)} concept rows "
        f"in {time.perf_counter() - t0:.1f}s")

    scored = oof_scored(stories, cfg, seed)
    # The base searches the coverage objective with a small beam (see _beam_select);
    # tuning may still fall back to plain greedy (beam 0) if that scores better on train.
    base = SelectionParams(beam=4)
    base_m = eval_selection(stories, scored, base, rouge)
    log(f"5-fold CV, default selection: R1 {base_m['rouge1']:.4f} R2 {base_m['rouge2']:.4f}")
    params, best_m = tune_selection(stories, scored, base, rouge, log=log)
    support = _tune_support(stories, rouge)
    headline = _tune_headline(stories, rouge)
    params = replace(params, support_threshold=support["threshold"], headline=headline["rule"])
    log(f"support threshold {support['threshold']} (silver P {support.get('precision')}, "
        f"R {support.get('recall')}); headline rule {headline['rule']}")

    prior = build_prior(stories)
    model = fit_scorer(stories, prior, cfg, seed)
    final = models_dir / SUMMARISER.folder
    with manifest.work_dir(".summariser-build-") as work:
        export_onnx(model, prior, params, work / SUMMARISER.file)
        _check_export(work / SUMMARISER.file, model, prior, stories[:20])
        info = {
            "seed": seed,
            "build_key": key,
            "recipe_version": RECIPE_VERSION,
            "articles_sha256": sha256_file(articles_file),
            "stories_sha256": sha256_file(stories_file),
            "embedder_sha256": _embedder_digest(models_dir),
            "n_train_stories": len(stories),
            "n_candidates": int(sum(len(s.feats) for s in stories)),
            "n_prior_grams": len(prior.counts),
            "features": list(FEATURE_NAMES),
            "concept_features": list(CONCEPT_FEATURE_NAMES),
            "scorer": {k: getattr(cfg, k) for k in cfg.__slots__},
            "selection": json.loads(params.to_json()),
            "holdout": {
                "kind": "5-fold CV over train stories (out-of-fold scores and prior)",
                "default_selection": {k: round(v, 4) for k, v in base_m.items()},
                "tuned_selection": {k: round(v, 4) for k, v in best_m.items()},
            },
            "support": support,
            "headline": headline,
            "versions": _versions(),
            "build_seconds": round(time.perf_counter() - t0, 1),
        }
        body = json.dumps(info, indent=2, sort_keys=True).encode()
        atomic_write_bytes(work / "training.json", body)
        final.mkdir(parents=True, exist_ok=True)
        for name in (SUMMARISER.file, "training.json"):
            (work / name).replace(final / name)
    meta = {k: info[k] for k in ("build_key", "seed", "scorer", "selection", "holdout",
                                 "articles_sha256", "stories_sha256", "versions",
                                 "build_seconds")}
    manifest.record_files(SUMMARISER, meta)
    log(f"wrote {final / SUMMARISER.file} in {info['build_seconds']}s")
    return info
