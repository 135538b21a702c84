"""FAISS index: search, removal, atomic persistence, HNSW."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storyline.index.vectors import VectorIndex
from storyline.models.errors import InvalidInput


def _vecs(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_remove_replace(kind: str) -> None:
    v = _vecs(50)
    ids = [f"id{i}" for i in range(50)]
    ix = VectorIndex.build(ids, v, 16, kind)  # type: ignore[arg-type]
    assert ix.search(v[3:4], 1)[0][0][0] == "id3"
    ix.remove(["id3"])
    assert "id3" not in [h for h, _ in ix.search(v[3:4], 5)[0]]
    assert len(ix) == 49
    ix.add(["id4"], v[5:6])  # replacing a vector moves the id
    assert ix.search(v[5:6], 2)[0][0][0] in {"id4", "id5"}
    assert len(ix) == 49


def test_save_load_roundtrip_is_atomic(tmp_path: Path) -> None:
    v = _vecs(20)
    ix = VectorIndex.build([f"a{i}" for i in range(20)], v, 16)
    path = tmp_path / "v.faiss"
    ix.save(path)
    assert not list(tmp_path.glob(".*.tmp"))
    back = VectorIndex.load(path)
    assert back.ids == ix.ids
    assert back.search(v[7:8], 1)[0][0][0] == "a7"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError):
        VectorIndex.load(path)


def test_hnsw_recall_against_exact() -> None:
    v = _vecs(3000, 32, seed=1)
    ids = [str(i) for i in range(3000)]
    exact = VectorIndex.build(ids, v, 32, "flat")
    approx = VectorIndex.build(ids, v, 32, "hnsw")
    q = _vecs(50, 32, seed=2)
    rec = np.mean([
        len({h for h, _ in a} & {h for h, _ in e}) / 10
        for a, e in zip(approx.search(q, 10), exact.search(q, 10), strict=True)
    ])
    assert rec >= 0.9


def test_hnsw_ef_search_is_settable_and_persisted(tmp_path: Path) -> None:
    v = _vecs(500, 16, seed=3)
    ids = [str(i) for i in range(500)]
    idx = VectorIndex.build(ids, v, 16, "hnsw")
    assert idx.ef_search == 128
    idx.ef_search = 16
    idx.save(tmp_path / "h.idx")
    assert VectorIndex.load(tmp_path / "h.idx").ef_search == 16
    with pytest.raises(InvalidInput):
        idx.ef_search = 0
    flat = VectorIndex.build(ids, v, 16, "flat")
    assert flat.ef_search is None
    with pytest.raises(InvalidInput):
        flat.ef_search = 64
