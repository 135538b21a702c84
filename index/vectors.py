"""FAISS vector index keyed by article ids, persisted atomically next to the database.

The database is the source of truth: the index file is a cache. Its header records the
store change number (``seq``) its contents reflect, so at start the changes after it are
replayed from the store's change feed (see ``Pipeline._sync_index``); a file that cannot be
read, or is in an older format, is rebuilt from the stored embeddings.

File format v2: ``SLVX2\n``, a little-endian u64 header length, a JSON header (dim, kind,
next internal id, live map internal id -> article id, tombstones, seq), the FAISS blob.
"""

from __future__ import annotations

import glob
import json
import logging
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput
from storyline.models.registry import atomic_write_bytes

__all__ = ["IndexKind", "IndexSnapshot", "VectorIndex"]

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw"]
_FORMAT = 2
_MAGIC = b"SLVX2\n"
#: Earlier formats: recognised only to say why they are refused (the caller rebuilds).
#: v1 keyed FAISS entries by a hash of the article id, so an HNSW re-add reused the key
#: of the tombstoned stale vector and revived it.
_OLD_MAGICS = (b"SLVX1\n",)
#: HNSW graphs are rebuilt from the live vectors once tombstones outnumber them, and
#: there are at least this many (below it the dead entries cost next to nothing).
COMPACT_MIN_TOMBSTONES = 256


#: A temp file of ``save`` older than this is left by a process killed mid-write.
STALE_TEMP_S = 3600.0


def _drop_stale_temps(path: Path) -> None:
    """Remove temp files that killed writers of ``path`` left (``atomic_write_bytes`` names).

    A process killed while writing (OOM, SIGKILL at a stop timeout) leaves a full-size
    temp file that nothing reads or removes; each such restart adds one (~150 MB at 100k
    articles) until the disk is full. Only old ones go: replicas sharing a data dir write
    the same file, and a young temp file may be another process's write in progress.
    """
    cutoff = time.time() - STALE_TEMP_S
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                log.info("removed %s, left by a write that did not finish", tmp)
        except OSError:  # gone meanwhile, or not ours to remove: the write goes on
            continue


class IndexSnapshot:
    """A copy of a ``VectorIndex``'s contents, written without holding the index's lock."""

    def __init__(self, index: Any, meta: dict[str, Any], ids: dict[int, str],
                 tombstones: set[int]) -> None:
        self._index: Any = index
        self._meta = meta
        self._ids = ids
        self._tombstones = tombstones

    @property
    def seq(self) -> int:
        return int(self._meta["seq"])

    def write(self, path: Path) -> None:
        """Write it as one file: temp file, fsync, rename (readers see old or new)."""
        import faiss

        if self._index is None:
            raise RuntimeError("an index snapshot is written once")
        blob = faiss.serialize_index(self._index)
        self._index = None  # its memory, before the file's bytes are built
        header = json.dumps({**self._meta, "ids": [[k, v] for k, v in self._ids.items()],
                             "tombstones": sorted(self._tombstones)}).encode()
        _drop_stale_temps(path)
        data = b"".join((_MAGIC, struct.pack("<Q", len(header)), header, blob.data))
        del blob
        atomic_write_bytes(path, data)


class VectorIndex:
    """Inner-product search over L2-normalised vectors (cosine similarity).

    ``flat`` is exact. ``hnsw`` is approximate for large collections; FAISS cannot remove
    from HNSW graphs, so removed ids are filtered at query time until the next rebuild.

    Every added vector gets its own internal FAISS id (a counter that only grows and is
    persisted), so replacing an article's vector never reuses the id of the entry it
    supersedes: the old entry is removed (flat) or tombstoned (hnsw), and a tombstoned
    internal id can never become live again.
    """

    def __init__(self, dim: int, kind: IndexKind = "flat", *, hnsw_m: int = 32,
                 hnsw_ef_search: int = 128) -> None:
        self.dim = dim
        self.kind: IndexKind = kind
        self._hnsw_m = hnsw_m
        self._ef = hnsw_ef_search
        self._lock = threading.RLock()
        self._ids: dict[int, str] = {}  # live internal id -> article id
        self._key_of: dict[str, int] = {}  # article id -> its current internal id
        self._tombstones: set[int] = set()  # superseded or removed entries still in the graph
        self._next = 0  # next internal id
        #: The store change number (``Store.last_seq``) the contents reflect; 0 = unknown.
        self.seq = 0
        self._index = self._new_index()

    def _new_index(self) -> Any:
        import faiss

        base: Any
        if self.kind == "flat":
            base = faiss.IndexFlatIP(self.dim)
        elif self.kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, self._hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = 80
            base.hnsw.efSearch = self._ef
        else:
            raise InvalidInput(f"unknown index kind '{self.kind}' (flat | hnsw)")
        return faiss.IndexIDMap2(base)

    @property
    def ef_search(self) -> int | None:
        """HNSW breadth of search (recall vs latency); ``None`` for exact indexes."""
        return self._ef if self.kind == "hnsw" else None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        import faiss

        if self.kind != "hnsw":
            raise InvalidInput("ef_search applies to hnsw indexes only")
        if value < 1:
            raise InvalidInput("ef_search must be >= 1")
        with self._lock:
            self._ef = value
            hnsw: Any = faiss.downcast_index(self._index.index)
            hnsw.hnsw.efSearch = value

    # -- contents -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> set[str]:
        with self._lock:
            return set(self._key_of)

    @property
    def tombstones(self) -> int:
        """Dead entries still in an HNSW graph (always 0 for flat)."""
        return len(self._tombstones)

    def add(self, ids: Sequence[str], vectors: npt.NDArray[np.float32]) -> int:
        """Add or replace vectors for ``ids`` (the same id twice: the later row wins).

        An id already indexed with exactly this vector is left alone, so replaying a change
        twice costs a comparison. Returns the number of ids whose vector was added or replaced.
        """
        if len(ids) == 0:
            return 0
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock:
            last = {i: row for row, i in enumerate(ids)}
            rows: list[int] = []
            for i, row in last.items():
                old = self._key_of.get(i)
                if old is not None and np.array_equal(self._index.reconstruct(old), vecs[row]):
                    continue
                rows.append(row)
            if not rows:
                return 0
            new_ids = [ids[r] for r in rows]
            self._drop_keys([self._key_of[i] for i in new_ids if i in self._key_of])
            keys = np.arange(self._next, self._next + len(rows), dtype=np.int64)
            self._index.add_with_ids(np.ascontiguousarray(vecs[rows]), keys)
            self._next += len(rows)
            for k, i in zip(keys.tolist(), new_ids, strict=True):
                self._ids[k] = i
                self._key_of[i] = k
            self._maybe_compact()
            return len(rows)

    def remove(self, ids: Sequence[str]) -> int:
        """Remove ``ids`` (unknown ones are ignored). Returns the number removed."""
        with self._lock:
            keys = [self._key_of[i] for i in dict.fromkeys(ids) if i in self._key_of]
            self._drop_keys(keys)
            self._maybe_compact()
            return len(keys)

    def _drop_keys(self, keys: list[int]) -> None:
        import faiss

        if not keys:
            return
        for k in keys:
            self._key_of.pop(self._ids.pop(k))
        if self.kind == "flat":
            self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(keys, dtype=np.int64)))
        else:
            self._tombstones.update(keys)

    def _maybe_compact(self) -> None:
        # Compaction runs here, on the write that tips the balance, rather than at save:
        # the dead entries cost at every search (each query asks FAISS for k + tombstones
        # candidates and walks a graph mostly made of dead nodes) and in memory whether or
        # not the file is written, and a save that sometimes rebuilds would make the
        # periodic saver's latency unpredictable. Rebuilding only once tombstones outnumber
        # live entries keeps the cost amortised: at most one re-insert per superseded entry.
        t = len(self._tombstones)
        if t >= COMPACT_MIN_TOMBSTONES and t > len(self._ids):
            self.compact()

    def compact(self) -> None:
        """Rebuild an HNSW graph from its live vectors, dropping tombstoned entries.

        The live entries keep their internal ids. A no-op for flat indexes (no tombstones).
        """
        import faiss

        with self._lock:
            if not self._tombstones:
                return
            labels = faiss.vector_to_array(self._index.id_map)
            live = np.asarray([k in self._ids for k in labels.tolist()], dtype=bool)
            vecs = self._index.index.reconstruct_n(0, self._index.ntotal)[live]
            fresh = self._new_index()  # carries the current efSearch
            if live.any():
                fresh.add_with_ids(np.ascontiguousarray(vecs), labels[live].astype(np.int64))
            log.info("hnsw index compacted: %d live, %d tombstones dropped",
                     len(self._ids), len(self._tombstones))
            self._index = fresh
            self._tombstones = set()

    def reconstruct(self, article_id: str) -> npt.NDArray[np.float32]:
        """The current vector of ``article_id`` (KeyError if it is not indexed)."""
        with self._lock:
            key = self._key_of.get(article_id)
            if key is None:
                raise KeyError(article_id)
            return np.asarray(self._index.reconstruct(key), dtype=np.float32)

    def vectors(self, ids: Sequence[str]) -> tuple[list[str], npt.NDArray[np.float32]]:
        """The indexed vectors of ``ids``, in their order; ids not indexed are left out."""
        with self._lock:
            found = [(i, k) for i in ids if (k := self._key_of.get(i)) is not None]
            mat = np.zeros((len(found), self.dim), dtype=np.float32)
            for row, (_, key) in enumerate(found):
                mat[row] = self._index.reconstruct(key)
        return [i for i, _ in found], mat

    # -- search -------------------------------------------------------------------
    def search(
        self, queries: npt.NDArray[np.float32], k: int
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` (id, cosine) per query row, best first."""
        import faiss

        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        # OpenMP threads spin-wait on a busy box (a flat search went from 0.1 to ~20 ms);
        # the setting is per calling thread, so set it on every call.
        faiss.omp_set_num_threads(1)
        with self._lock:
            n = len(self._ids)
            if n == 0 or k <= 0:
                return [[] for _ in range(q.shape[0])]
            kk = min(k + len(self._tombstones), self._index.ntotal)
            scores, keys = self._index.search(q, kk)
            out = []
            for srow, krow in zip(scores, keys, strict=True):
                hits = [
                    (self._ids[key], float(s))
                    for s, key in zip(srow.tolist(), krow.tolist(), strict=True)
                    if key >= 0 and key in self._ids
                ]
                out.append(hits[:k])
            return out

    def search_among(
        self, query: npt.NDArray[np.float32], ids: Sequence[str], k: int
    ) -> list[tuple[str, float]]:
        """Top-``k`` (id, cosine) among ``ids`` (those not indexed are skipped), best
        first, ties by id: exact for both kinds, since it scores the stored vectors (an
        HNSW graph's flat storage) rather than walking the graph.

        Only the vectors of ``ids`` are scored, in FAISS: reconstructing 19,500 of 100k
        vectors one Python call at a time and sorting their scores in Python took 0.3 s.
        """
        import faiss

        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        faiss.omp_set_num_threads(1)  # as in ``search``
        with self._lock:
            keys = np.fromiter((kk for i in ids if (kk := self._key_of.get(i)) is not None),
                               dtype=np.int64)
            if k <= 0 or len(keys) == 0:
                return []
            base: Any = faiss.downcast_index(self._index.index)
            storage = base if self.kind == "flat" else faiss.downcast_index(base.storage)
            # positions in the storage are positions in the id map (tombstones are not
            # among ``keys``, being no id's current key)
            inner = faiss.IDSelectorBatch(keys)
            params = faiss.SearchParameters()
            params.sel = faiss.IDSelectorTranslated(self._index.id_map, inner)
            scores, pos = storage.search(q, min(k, len(keys)), params=params)
            id_map = self._index.id_map
            hits = [(self._ids[int(id_map.at(p))], s)
                    for s, p in zip(scores[0].tolist(), pos[0].tolist(), strict=True) if p >= 0]
        hits.sort(key=lambda h: (-h[1], h[0]))
        return hits

    # -- persistence --------------------------------------------------------------
    def save(self, path: Path, *, seq: int | None = None) -> None:
        """Write the index and its id map as one file: temp file, fsync, rename.

        ``seq``: the store change number the contents reflect (kept as ``self.seq``).
        Searches and adds wait only while the snapshot is copied, not while it is
        serialised and written (see ``snapshot``).
        """
        self.snapshot(seq=seq).write(path)

    def snapshot(self, *, seq: int | None = None) -> IndexSnapshot:
        """A consistent copy of the contents, for ``IndexSnapshot.write`` outside the lock.

        The lock is held for one copy of the vectors (and the graph, for hnsw): 0.2 s at
        100k flat vectors on a busy 2-core box, where serialising under it (FAISS blob,
        bytes, JSON header: 0.8 s) held searches and adds up to 1.1 s per save.
        A change made after the copy is not in it: a caller that marks the index dirty
        must take its mark before the snapshot, so that change stays due.
        """
        import faiss

        with self._lock:
            if seq is not None:
                self.seq = int(seq)
            meta = {"format": _FORMAT, "dim": self.dim, "kind": self.kind,
                    "next": self._next, "seq": self.seq}
            return IndexSnapshot(faiss.clone_index(self._index), meta, dict(self._ids),
                                 set(self._tombstones))

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        """Read a file written by ``save``. ValueError if it is not one, is in an older
        format, or is inconsistent: the caller rebuilds it from the store."""
        import faiss

        raw = path.read_bytes()
        if raw.startswith(_OLD_MAGICS):
            raise ValueError(f"{path} is in an older vector index format; it must be rebuilt")
        if not raw.startswith(_MAGIC):
            raise ValueError(f"{path} is not a storyline vector index")
        off = len(_MAGIC)
        try:
            (hlen,) = struct.unpack("<Q", raw[off : off + 8])
            header = json.loads(raw[off + 8 : off + 8 + hlen])
            if int(header["format"]) != _FORMAT:
                raise ValueError(f"format {header['format']}")
            blob = np.frombuffer(raw[off + 8 + hlen :], dtype=np.uint8)
            self = cls(int(header["dim"]), header["kind"])
            self._index = faiss.deserialize_index(blob)
            self._ids = {int(k): str(v) for k, v in header["ids"]}
            self._tombstones = {int(k) for k in header["tombstones"]}
            self._next = int(header["next"])
            self.seq = int(header["seq"])
        except (KeyError, TypeError, struct.error, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable vector index header ({exc!r})") from exc
        self._key_of = {v: k for k, v in self._ids.items()}
        if self.kind == "hnsw":
            hnsw: Any = faiss.downcast_index(self._index.index)
            self._ef = int(hnsw.hnsw.efSearch)
        labels = set(faiss.vector_to_array(self._index.id_map).tolist())
        if (
            self._index.ntotal != len(self._ids) + len(self._tombstones)
            or len(self._key_of) != len(self._ids)
            or labels != self._ids.keys() | self._tombstones
            or (bool(labels) and max(labels) >= self._next)
        ):
            raise ValueError(
                f"{path}: index holds {self._index.ntotal} vectors, map {len(self._ids)}"
                f" + {len(self._tombstones)} tombstones"
            )
        return self

    @classmethod
    def build(
        cls, ids: Sequence[str], vectors: npt.NDArray[np.float32], dim: int,
        kind: IndexKind = "flat",
    ) -> VectorIndex:
        self = cls(dim, kind)
        self.add(ids, vectors)
        return self
