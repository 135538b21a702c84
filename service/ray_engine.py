"""Ray Data batch jobs: the digest's analysis stage and bulk-ingest embedding.

Both run the product's ONNX / spaCy models in Ray actors (one model load per actor) over a
Ray Data dataset of plain rows, and hand the results back to the driver, which alone
touches the store. Ray is an optional extra (``pip install 'storyline[ray]'``), imported
only here and only when a job runs.

* :func:`analyse_stories`: rows ``{story_id, articles (JSON), budget, kind, key, members}``
  -> ``{story_id, kind, key, members, payload, summarise, actors, stance}``; ``payload`` is
  the analysis serialised exactly as the store keeps it (``msgspec.json.encode((summary,
  stances))``), so the driver writes it with ``store.put_output`` unchanged, and
  ``members`` (the print of the story's members the job was planned on) comes back as it
  went, for ``put_output(members=)``.
* :func:`embed_articles`: articles -> ``{id: vector}`` of ``article_text(a)``, for
  ``Pipeline.ingest(..., precomputed=...)``.

Workers get the models directory as a path (the same path on every node, or a shared
volume) and never import torch.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from storyline.models import errors
from storyline.models.errors import MissingDependency, StorylineError
from storyline.models.nlp import keep_torch_out
from storyline.models.types import Article, reading_order

__all__ = [
    "RAY_INSTALL_HINT",
    "analyse_stories",
    "embed_articles",
    "import_ray",
    "ray_session",
]

RAY_INSTALL_HINT = "pip install 'storyline[ray]'"
#: rows per map_batches call: small, so work spreads over the actors
ANALYSE_BATCH = 4
EMBED_BATCH = 64


def import_ray() -> Any:
    """The ``ray`` module (with ``ray.data``), or ``MissingDependency`` naming the extra."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingDependency(
            f"the Ray engine needs the ray extra: {RAY_INSTALL_HINT} ({exc})", extra="ray"
        ) from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int = 2) -> Iterator[Any]:
    """Ray connected to ``address`` (``auto``: the local node's cluster) or, without one,
    an embedded single-node instance of ``num_cpus`` CPUs. What this call started, it
    shuts down (an embedded instance's processes with it); an already initialised Ray is
    used as it is and left running."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "ignore_reinit_error": True}
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus, **kw)
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


#: exception lines of a traceback Ray prints into an error's message: one of ours, any
_OUR_ERROR = re.compile(rf"^{re.escape(errors.__name__)}\.(?P<cls>\w+): (?P<detail>.+)$")
_ANY_ERROR = re.compile(r"^(?:[\w.]+\.)?\w+(?:Error|Exception): .+$")


def _job_error(exc: BaseException) -> StorylineError:
    """A failed Ray job as one storyline error. Ray wraps what a worker raised (an actor
    that cannot load its models dies in its constructor, and the driver gets
    ``ActorDiedError`` with the worker's traceback as text only); unwrapped, the CLI shows
    the worker's own message and exit code (e.g. a models dir missing on a node: exit 5)
    instead of pages of Ray traceback."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StorylineError):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:  # a chained traceback prints the root cause first
        m = _OUR_ERROR.match(line)
        cls = getattr(errors, m.group("cls"), None) if m else None
        if m and isinstance(cls, type) and issubclass(cls, StorylineError):
            err = cls.__new__(cls)
            StorylineError.__init__(err, m.group("detail"))
            return err
    cause = next((ln for ln in lines if _ANY_ERROR.match(ln)),
                 lines[0] if lines else type(exc).__name__)
    return StorylineError(f"the Ray job failed: {cause}")


@contextlib.contextmanager
def _job(ray: Any) -> Iterator[None]:
    try:
        yield
    except ray.exceptions.RayError as exc:
        raise _job_error(exc) from exc


def _workers(ray: Any, workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _col(values: Sequence[Any]) -> npt.NDArray[Any]:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


class _AnalyseWorker:
    """One Ray actor: summariser, actor extractor and stance tagger loaded once, built as
    ``Pipeline`` builds them (same models, same thread count)."""

    def __init__(self, models_dir: str, threads: int, embed_batch_size: int) -> None:
        keep_torch_out()
        from storyline.models.actors import SpacyActorExtractor
        from storyline.models.embedder import OnnxEmbedder
        from storyline.models.stance import ActorStanceTagger, load_target_scorer
        from storyline.models.summariser import ExtractiveSummariser

        d = Path(models_dir)
        embedder = OnnxEmbedder(d, threads=threads, batch_size=embed_batch_size)
        self.summariser = ExtractiveSummariser(d, embedder=embedder, threads=threads)
        self.actors = SpacyActorExtractor()
        scorer = load_target_scorer(d, fallback=False)
        self.stance = ActorStanceTagger(scorer, attributor=self.actors)  # type: ignore[arg-type]

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        payloads: list[str] = []
        timing: dict[str, list[float]] = {"summarise": [], "actors": [], "stance": []}
        for arts_json, budget in zip(batch["articles"], batch["budget"], strict=True):
            # as Pipeline.analyse reads them, so both engines give one answer per member set
            arts = reading_order(msgspec.json.decode(arts_json, type=list[Article]))
            t0 = time.perf_counter()
            summary = self.summariser.summarise(arts, int(budget))
            t1 = time.perf_counter()
            actors = self.actors.extract(arts)
            t2 = time.perf_counter()
            stances = self.stance.tag(actors, arts)
            t3 = time.perf_counter()
            payloads.append(msgspec.json.encode((summary, stances)).decode())
            timing["summarise"].append(t1 - t0)
            timing["actors"].append(t2 - t1)
            timing["stance"].append(t3 - t2)
        return {
            "story_id": batch["story_id"], "kind": batch["kind"], "key": batch["key"],
            "members": batch["members"], "payload": _col(payloads),
            **{k: np.asarray(v, dtype=np.float64) for k, v in timing.items()},
        }


class _EmbedWorker:
    """One Ray actor: the int8 ONNX embedder, loaded once."""

    def __init__(self, models_dir: str, threads: int, embed_batch_size: int) -> None:
        keep_torch_out()
        from storyline.models.embedder import OnnxEmbedder

        self.embedder = OnnxEmbedder(Path(models_dir), threads=threads,
                                     batch_size=embed_batch_size)

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        vecs = np.asarray(self.embedder.embed([str(t) for t in batch["text"]]), np.float32)
        return {"id": batch["id"], "vector": vecs}


def encode_articles(articles: Sequence[Article]) -> str:
    """Articles as a JSON array of plain objects (every field; exact round trip)."""
    return msgspec.json.encode(list(articles)).decode()


def analyse_stories(
    ray: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    models_dir: Path,
    threads: int,
    embed_batch_size: int,
    workers: int | None = None,
    batch_size: int = ANALYSE_BATCH,
) -> list[dict[str, Any]]:
    """Run the analysis of ``rows`` (``story_id``, ``articles`` from
    :func:`encode_articles`, ``budget``, ``kind``, ``key``, ``members``) on ``workers`` Ray
    actors (default: one per CPU of the cluster). Returns one dict per row: ``story_id``,
    ``kind``, ``key``, ``members``, ``payload`` and the seconds per stage."""
    if not rows:
        return []
    n = min(_workers(ray, workers), len(rows))
    ds = ray.data.from_items([dict(r) for r in rows])
    out = ds.map_batches(
        _AnalyseWorker, batch_size=batch_size, batch_format="numpy", concurrency=n,
        num_cpus=1,
        fn_constructor_kwargs={"models_dir": str(models_dir), "threads": threads,
                               "embed_batch_size": embed_batch_size},
    )
    results: list[dict[str, Any]] = []
    with _job(ray):
        for b in out.iter_batches(batch_format="numpy", batch_size=None):
            for i in range(len(b["story_id"])):
                results.append({k: (str(v[i]) if v.dtype.kind in "OUS" else float(v[i]))
                                for k, v in b.items()})
    return results


def embed_articles(
    ray: Any,
    articles: Sequence[Article],
    *,
    models_dir: Path,
    threads: int,
    embed_batch_size: int,
    workers: int | None = None,
    batch_size: int = EMBED_BATCH,
) -> dict[str, npt.NDArray[np.float32]]:
    """Vectors of ``article_text(a)`` by id, computed on Ray actors."""
    from storyline.service.pipeline import article_text

    if not articles:
        return {}
    n = min(_workers(ray, workers), max(1, len(articles) // batch_size))
    ds = ray.data.from_items([{"id": a.id, "text": article_text(a)} for a in articles])
    out = ds.map_batches(
        _EmbedWorker, batch_size=batch_size, batch_format="numpy", concurrency=n, num_cpus=1,
        fn_constructor_kwargs={"models_dir": str(models_dir), "threads": threads,
                               "embed_batch_size": embed_batch_size},
    )
    vecs: dict[str, npt.NDArray[np.float32]] = {}
    with _job(ray):
        for b in out.iter_batches(batch_format="numpy", batch_size=None):
            for i, v in zip(b["id"], b["vector"], strict=True):
                vecs[str(i)] = np.asarray(v, dtype=np.float32)
    return vecs


def needs_embedding(pipeline: Any, articles: Sequence[Article]) -> list[Article]:
    """The articles ``Pipeline.ingest`` would embed: new or changed ones whose content is
    not stored under another id (the later of one id twice wins)."""
    latest = {a.id: a for a in articles}
    known = pipeline.store.existing_hashes(list(latest))
    todo = [a for a in latest.values() if known.get(a.id) != a.content_hash]
    stored = pipeline.store.ids_for_hashes([a.content_hash for a in todo if a.id not in known])
    return [a for a in todo if a.id in known or a.content_hash not in stored]
