"""The int8 ONNX embedder against the sentence-transformers fp32 reference, and its guards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from storyline.models.embedder import OnnxEmbedder
from storyline.models.errors import InvalidInput, ModelUnavailable


@pytest.fixture(scope="module")
def texts(shared_data: Path) -> list[str]:
    with (shared_data / "allsides" / "articles.jsonl").open(encoding="utf-8") as fh:
        rows = [json.loads(x) for x in fh][:40]
    return [f"{r['title']}\n\n{r['text']}" for r in rows]


def test_matches_fp32_reference_including_long_texts(
    embedder: OnnxEmbedder, texts: list[str]
) -> None:
    from storyline.models.embedder_build import reference_embed

    assert max(embedder.token_counts(texts)) > 128  # the 128-token pitfall is exercised
    ours = embedder.embed(texts)
    ref = reference_embed(texts)
    cos = (ours * ref).sum(axis=1)
    assert cos.min() >= 0.98
    assert cos.mean() >= 0.99


def test_shape_norm_and_batch_consistency(embedder: OnnxEmbedder, texts: list[str]) -> None:
    batch = embedder.embed(texts[:8])
    assert batch.shape == (8, embedder.dim) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    one = np.stack([embedder.embed([t])[0] for t in texts[:8]])
    # dynamic int8 activation scales depend on the batch: vectors agree closely (measured
    # min 0.992), not bit for bit
    assert ((batch * one).sum(axis=1) >= 0.99).all()
    assert embedder.embed([]).shape == (0, embedder.dim)
    with pytest.raises(InvalidInput):
        embedder.embed("a single string")  # type: ignore[arg-type]


def test_corrupted_or_missing_model_is_refused(models_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "models"
    shutil.copytree(models_dir, copy, symlinks=False)
    model = copy / "minilm" / "model.int8.onnx"
    with model.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00" * 16)
    with pytest.raises(ModelUnavailable, match="sha256"):
        OnnxEmbedder(copy)
    model.unlink()
    with pytest.raises(ModelUnavailable, match="missing"):
        OnnxEmbedder(copy)
