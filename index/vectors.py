"""FAISS vector index keyed by article ids, persisted atomically next to the database.

The database is the source of truth: the index file is a cache that is checked against
the stored ids at start and rebuilt from the stored embeddings when they disagree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput
from storyline.models.registry import atomic_write_bytes

__all__ = ["IndexKind", "VectorIndex", "faiss_id"]

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw"]
_MAGIC = b"SLVX1\n"


def faiss_id(article_id: str) -> int:
    """Stable 63-bit integer for a string id (FAISS keys are int64)."""
    return int.from_bytes(hashlib.blake2b(article_id.encode(), digest_size=8).digest(), "big") >> 1


class VectorIndex:
    """Inner-product search over L2-normalised vectors (cosine similarity).

    ``flat`` is exact. ``hnsw`` is approximate for large collections; FAISS cannot remove
    from HNSW graphs, so removed ids are filtered at query time until the next rebuild.
    """

    def __init__(self, dim: int, kind: IndexKind = "flat", *, hnsw_m: int = 32,
                 hnsw_ef_search: int = 128) -> None:
        self.dim = dim
        self.kind: IndexKind = kind
        self._hnsw_m = hnsw_m
        self._ef = hnsw_ef_search
        self._lock = threading.RLock()
        self._ids: dict[int, str] = {}
        self._tombstones: set[int] = set()
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
            return set(self._ids.values())

    def add(self, ids: Sequence[str], vectors: npt.NDArray[np.float32]) -> None:
        """Add or replace vectors for ``ids``."""
        if len(ids) == 0:
            return
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        keys = np.asarray([faiss_id(i) for i in ids], dtype=np.int64)
        with self._lock:
            present = [k for k in keys.tolist() if k in self._ids]
            if present:
                self._remove_keys(present)
            self._index.add_with_ids(vecs, keys)
            for k, i in zip(keys.tolist(), ids, strict=True):
                self._ids[k] = i
                self._tombstones.discard(k)

    def remove(self, ids: Sequence[str]) -> None:
        with self._lock:
            self._remove_keys([faiss_id(i) for i in ids if faiss_id(i) in self._ids])

    def _remove_keys(self, keys: list[int]) -> None:
        import faiss

        for k in keys:
            self._ids.pop(k, None)
        if self.kind == "flat":
            self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(keys, dtype=np.int64)))
        else:
            self._tombstones.update(keys)

    def reconstruct(self, article_id: str) -> npt.NDArray[np.float32]:
        with self._lock:
            return np.asarray(self._index.reconstruct(faiss_id(article_id)), dtype=np.float32)

    def vectors(self, ids: Sequence[str]) -> tuple[list[str], npt.NDArray[np.float32]]:
        """The indexed vectors of ``ids``, in their order; ids not indexed are left out."""
        with self._lock:
            found = [(i, k) for i in ids if (k := faiss_id(i)) in self._ids]
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

    # -- persistence --------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the index and its id map as one file: temp file, fsync, rename."""
        import faiss

        with self._lock:
            blob = faiss.serialize_index(self._index).tobytes()
            header = json.dumps({
                "dim": self.dim, "kind": self.kind,
                "ids": [[k, v] for k, v in self._ids.items()],
                "tombstones": sorted(self._tombstones),
            }).encode()
        atomic_write_bytes(path, _MAGIC + struct.pack("<Q", len(header)) + header + blob)

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        import faiss

        raw = path.read_bytes()
        if not raw.startswith(_MAGIC):
            raise ValueError(f"{path} is not a storyline vector index")
        off = len(_MAGIC)
        (hlen,) = struct.unpack("<Q", raw[off : off + 8])
        header = json.loads(raw[off + 8 : off + 8 + hlen])
        blob = np.frombuffer(raw[off + 8 + hlen :], dtype=np.uint8)
        self = cls(int(header["dim"]), header["kind"])
        self._index = faiss.deserialize_index(blob)
        self._ids = {int(k): v for k, v in header["ids"]}
        self._tombstones = set(header["tombstones"])
        if self.kind == "hnsw":
            hnsw: Any = faiss.downcast_index(self._index.index)
            self._ef = int(hnsw.hnsw.efSearch)
        if self._index.ntotal - len(self._tombstones) != len(self._ids):
            raise ValueError(
                f"{path}: index holds {self._index.ntotal} vectors, map {len(self._ids)}"
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
