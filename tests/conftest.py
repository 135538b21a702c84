"""Shared fixtures. Tests use the real models built by `storyline models build`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STORYLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The built models (default: <repo>/data/models, as `make models` builds them)."""
    path = Path(os.environ.get("STORYLINE_TEST_MODELS_DIR", ROOT / "data" / "models"))
    if not (path / "manifest.json").exists():
        pytest.fail(f"models are not built in {path}: run `make models` first")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "allsides" / "articles.jsonl").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedder(models_dir: Path):  # type: ignore[no-untyped-def]
    from storyline.models.embedder import OnnxEmbedder

    return OnnxEmbedder(models_dir)


@pytest.fixture()
def data_dir(tmp_path: Path, models_dir: Path) -> Path:
    """An empty data dir whose models/ points at the built models."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "models").symlink_to(models_dir, target_is_directory=True)
    return d


@pytest.fixture()
def pipeline(data_dir: Path, embedder):  # type: ignore[no-untyped-def]
    from storyline.service.pipeline import Pipeline
    from storyline.service.settings import Settings

    pipe = Pipeline(Settings(data_dir=data_dir), embedder=embedder)
    yield pipe
    pipe.store.close()


@pytest.fixture(scope="session")
def seed_article():  # type: ignore[no-untyped-def]
    from storyline.service.ingest import read_txt

    path = next((ROOT / "seeds").glob("*.txt"))
    return read_txt(path).article
