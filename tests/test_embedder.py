"""The int8 ONNX embedder against the sentence-transformers fp32 reference, and its guards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from storyline.models.embedder import MAX_TOKENS, OnnxEmbedder
from storyline.models.errors import InvalidInput, ModelUnavailable
from storyline.models.registry import EMBEDDER


@pytest.fixture(scope="module")
def texts(shared_data: Path) -> list[str]:
    with (shared_data / "allsides" / "articles.jsonl").open(encoding="utf-8") as fh:
        rows = [json.loads(x) for x in fh][:40]
    return [f"{r['title']}\n\n{r['text']}" for r in rows]


def test_matches_fp32_reference_including_long_texts(
    embedder: OnnxEmbedder, texts: list[str]
) -> None:
    from storyline.models.embedder_build import reference_embed

    counts = embedder.token_counts(texts)
    # The shipped tokenizer truncates at 128: long texts must be in the sample to catch it.
    assert sum(c > 128 for c in counts) >= 10
    ours = embedder.embed(texts)
    ref = reference_embed(texts)
    cos = (ours * ref).sum(axis=1)
    assert cos.min() >= 0.98, f"worst text cosine {cos.min():.4f}"
    assert cos.mean() >= 0.99, f"mean cosine {cos.mean():.4f}"


def test_shape_dtype_and_unit_norm(embedder: OnnxEmbedder, texts: list[str]) -> None:
    vecs = embedder.embed(texts[:8])
    assert vecs.shape == (8, embedder.dim) == (8, 384)
    assert vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # Different articles get different vectors (a constant output would pass the above).
    assert float((vecs[0] * vecs[1]).sum()) < 0.95


def test_empty_input(embedder: OnnxEmbedder) -> None:
    out = embedder.embed([])
    assert out.shape == (0, embedder.dim) and out.dtype == np.float32
    assert embedder.token_counts([]) == []
    # An empty string is still a text ([CLS] [SEP]): a finite unit vector.
    (vec,) = embedder.embed([""])
    assert np.isfinite(vec).all() and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5


def test_vectors_do_not_depend_on_batch_or_order(embedder: OnnxEmbedder, texts: list[str]) -> None:
    batch = embedder.embed(texts[:12])
    one_by_one = np.stack([embedder.embed([t])[0] for t in texts[:12]])
    assert np.abs(batch - one_by_one).max() <= 1e-4
    reordered = embedder.embed(texts[:12][::-1])[::-1]
    assert np.abs(batch - reordered).max() <= 1e-4
    # Batch-mates of another length change nothing either (no padding, no shared scales).
    mixed = embedder.embed([texts[0], "Short.", texts[1]])
    assert np.abs(mixed[[0, 2]] - batch[:2]).max() <= 1e-4


def test_thread_and_batch_settings_do_not_change_vectors(
    models_dir: Path, embedder: OnnxEmbedder, texts: list[str]
) -> None:
    base = embedder.embed(texts[:6])
    for threads, batch_size in ((1, 32), (2, 1), (2, 4)):
        other = OnnxEmbedder(models_dir, threads=threads, batch_size=batch_size)
        assert np.abs(other.embed(texts[:6]) - base).max() <= 1e-4


def test_concurrent_calls_share_the_worker_pool_safely(
    embedder: OnnxEmbedder, texts: list[str]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    parts = [texts[i : i + 5] for i in range(0, 20, 5)]
    alone = [embedder.embed(p) for p in parts]
    with ThreadPoolExecutor(4) as ex:
        together = list(ex.map(embedder.embed, parts))
    for a, b in zip(alone, together, strict=True):
        assert np.abs(a - b).max() <= 1e-4


def test_token_counts_truncate_at_max_tokens(embedder: OnnxEmbedder) -> None:
    long_text = "word " * 2000
    short, long_ = embedder.token_counts(["Senate passes bill", long_text])
    assert short == 5  # [CLS] senate passes bill [SEP]
    assert long_ == MAX_TOKENS == 256


def test_rejects_a_string_or_non_strings(embedder: OnnxEmbedder) -> None:
    with pytest.raises(InvalidInput):
        embedder.embed("a single string")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        embedder.embed(["fine", 42])  # type: ignore[list-item]


def _copy_embedder(models_dir: Path, dest: Path) -> Path:
    """Only the manifest and the embedder folder: never touch the real models."""
    dest.mkdir()
    shutil.copy2(models_dir / "manifest.json", dest / "manifest.json")
    shutil.copytree(models_dir / EMBEDDER.folder, dest / EMBEDDER.folder)
    return dest


def test_corrupted_model_is_refused(models_dir: Path, tmp_path: Path) -> None:
    copy = _copy_embedder(models_dir, tmp_path / "models")
    OnnxEmbedder(copy)  # the intact copy loads
    model = copy / EMBEDDER.folder / EMBEDDER.file
    with model.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00" * 16)
    with pytest.raises(ModelUnavailable, match="sha256"):
        OnnxEmbedder(copy)


def test_missing_model_or_tokenizer_is_refused(models_dir: Path, tmp_path: Path) -> None:
    copy = _copy_embedder(models_dir, tmp_path / "models")
    (copy / EMBEDDER.folder / "tokenizer.json").unlink()
    with pytest.raises(ModelUnavailable, match="missing"):
        OnnxEmbedder(copy)
    copy2 = _copy_embedder(models_dir, tmp_path / "models2")
    (copy2 / EMBEDDER.folder / EMBEDDER.file).unlink()
    with pytest.raises(ModelUnavailable, match="missing"):
        OnnxEmbedder(copy2)


def test_unbuilt_models_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="not built"):
        OnnxEmbedder(tmp_path)


def test_caching_embedder_returns_the_models_vectors_and_bounds_itself(
    embedder: OnnxEmbedder, texts: list[str]
) -> None:
    from storyline.models.embedder import CachingEmbedder

    cached = CachingEmbedder(embedder, size=4)
    batch = [texts[0], texts[1], texts[0], texts[2]]
    ref = embedder.embed(batch)
    np.testing.assert_array_equal(cached.embed(batch), ref)
    assert (cached.hits, cached.misses) == (1, 3)  # the repeated text is embedded once
    np.testing.assert_array_equal(cached.embed(batch[::-1]), ref[::-1])
    assert cached.hits == 5
    cached.embed(texts[3:8])  # 5 new texts push the oldest out of a 4-entry cache
    misses = cached.misses
    cached.embed([texts[0]])
    assert cached.misses == misses + 1
    assert cached.embed([]).shape == (0, embedder.dim)
    with pytest.raises(InvalidInput):
        cached.embed("one string")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        CachingEmbedder(embedder, size=-1)
    seeded = CachingEmbedder(embedder, size=4)
    seeded.remember(texts[:2], ref[[0, 1]])  # vectors computed elsewhere are served as hits
    np.testing.assert_array_equal(seeded.embed(texts[:3]), embedder.embed(texts[:3]))
    assert (seeded.hits, seeded.misses) == (2, 1)


def test_every_graph_variant_computes_the_fused_models_vectors(
    tmp_path: Path, texts: list[str]
) -> None:
    """Each layout the build may pick (timed per CPU) is the same function before int8."""
    import onnxruntime as ort

    from storyline.models import embedder_build as eb
    from storyline.models.embedder import load_tokenizer

    src = eb.minilm_source_dir()
    eb._export_fp32(src, tmp_path / "fp32.onnx")
    eb._fuse(tmp_path / "fp32.onnx", tmp_path / "fused.onnx")
    eb._write_tokenizer(src, tmp_path / "tokenizer.json")
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    fused = ort.InferenceSession(str(tmp_path / "fused.onnx"), providers=["CPUExecutionProvider"])
    encs = tok.encode_batch([texts[0], texts[5], "Short one."])
    want = []
    for e in encs:
        ids = np.asarray(e.ids, dtype=np.int64)[None, :]
        (hidden,) = fused.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids},
        )
        v = hidden[0].mean(axis=0)
        want.append(v / np.linalg.norm(v))
    for variant in eb.VARIANTS:
        out = tmp_path / f"{variant.name}.onnx"
        eb._restructure(tmp_path / "fused.onnx", out, variant)
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["input_ids"]
        for e, w in zip(encs, want, strict=True):
            (got,) = sess.run(None, {"input_ids": np.asarray(e.ids, dtype=np.int64)[None, :]})
            # tanh GELU is an approximation: close, not equal.
            tol = 1e-5 if variant.gelu == "erf" else 2e-3
            assert np.abs(got[0] - w).max() <= tol, variant.name


def test_variant_order_prefers_exact_forms_within_timing_noise() -> None:
    from storyline.models.embedder_build import _preference

    def names(ms: dict[str, float]) -> list[str]:
        return [v.name for v in _preference(ms)]

    ms = {"flash-erf": 10.0, "flash-tanh": 9.9, "unfused-erf": 9.0, "unfused-tanh": 8.9}
    # unfused-erf is within 2 % of the fastest; flash-erf within 2 % of flash-tanh.
    assert names(ms) == ["unfused-erf", "unfused-tanh", "flash-erf", "flash-tanh"]
    ms["unfused-erf"] = 9.5
    assert names(ms)[:2] == ["unfused-tanh", "unfused-erf"]
    assert names(dict.fromkeys(ms, 5.0)) == [
        "flash-erf",
        "flash-tanh",
        "unfused-erf",
        "unfused-tanh",
    ]
