"""FAISS index: search, removal, atomic persistence, HNSW."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def write_v1_index(path: Path, ids: list[str], vecs: np.ndarray, kind: str) -> None:
    """A file as format v1 wrote it: FAISS keys were a hash of the article id."""
    import hashlib
    import json
    import struct

    import faiss

    dim = vecs.shape[1]
    base: Any
    if kind == "flat":
        base = faiss.IndexFlatIP(dim)
    else:
        base = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    ix = faiss.IndexIDMap2(base)
    keys = [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "big") >> 1
            for i in ids]
    ix.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), np.asarray(keys, np.int64))
    pairs = [[k, i] for k, i in zip(keys, ids, strict=True)]
    header = json.dumps({"dim": dim, "kind": kind, "ids": pairs, "tombstones": []}).encode()
    path.write_bytes(b"SLVX1\n" + struct.pack("<Q", len(header)) + header
                     + faiss.serialize_index(ix).tobytes())


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_readd_replaces_the_vector_once_and_round_trips(kind: str, tmp_path: Path) -> None:
    # Regression: an hnsw re-add reused the tombstoned key, so the stale vector came back
    # (the id listed twice, once with its old score) and the saved file failed to load.
    old, new, other = _vecs(3, seed=5)
    ix = VectorIndex(16, kind)  # type: ignore[arg-type]
    ix.add(["a", "b"], np.stack([old, other]))
    ix.add(["a"], new[None])
    hits = ix.search(old[None], 3)[0]
    assert [h for h, _ in hits].count("a") == 1
    assert dict(hits)["a"] == pytest.approx(float(old @ new), abs=1e-5)
    assert ix.add(["a"], new[None]) == 0  # the same vector again: nothing to do
    assert ix.add(["a"], old[None]) == 1
    ix.add(["a"], new[None])
    np.testing.assert_array_equal(ix.reconstruct("a"), new)
    assert len(ix) == 2 and ix.ids == {"a", "b"}
    ix.add(["b", "a", "a"], np.stack([old, other, new]))  # the last row of an id wins
    np.testing.assert_array_equal(ix.vectors(["a", "b"])[1], np.stack([new, old]))
    ix.save(tmp_path / "v.idx", seq=7)
    back = VectorIndex.load(tmp_path / "v.idx")
    assert back.seq == 7 and back.ids == {"a", "b"}
    assert back.search(new[None], 3)[0] == ix.search(new[None], 3)[0]
    back.add(["a"], old[None])  # internal ids continue after the reload
    assert [h for h, _ in back.search(old[None], 3)[0]].count("a") == 1
    np.testing.assert_array_equal(back.reconstruct("a"), old)
    with pytest.raises(KeyError):
        back.reconstruct("zzz")


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_old_format_file_is_refused_with_value_error(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "v1.idx"
    write_v1_index(path, ["a", "b"], _vecs(2), kind)
    with pytest.raises(ValueError, match="older"):
        VectorIndex.load(path)


def test_hnsw_tombstones_are_compacted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import storyline.index.vectors as vectors

    monkeypatch.setattr(vectors, "COMPACT_MIN_TOMBSTONES", 8)
    v = _vecs(40, seed=6)
    ids = [f"id{i}" for i in range(10)]
    ix = VectorIndex.build(ids, v[:10], 16, "hnsw")
    ix.add(ids[:6], v[10:16])
    assert ix.tombstones == 6  # not yet more than the live entries
    ix.add(ids[:6], v[16:22])
    assert ix.tombstones == 0  # 12 > 10 live: the graph was rebuilt
    ix.remove(["id9"])
    for row, i in enumerate(ids[:9]):
        want = v[16 + row] if row < 6 else v[row]
        assert ix.search(want[None], 1)[0][0][0] == i
        np.testing.assert_array_equal(ix.reconstruct(i), want)
    ix.save(tmp_path / "c.idx")
    back = VectorIndex.load(tmp_path / "c.idx")
    assert back.ids == set(ids[:9]) and back.tombstones == 1
