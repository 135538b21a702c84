"""The Ray engine (service/ray_engine.py): `digest --engine ray` and `ingest --engine ray`
give what the local engine gives, on a small batch and one local Ray instance per module."""

from __future__ import annotations

import builtins
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from storyline.index.store import SQLiteStore
from storyline.models.errors import MissingDependency
from storyline.models.types import Article
from storyline.service import digest as dg
from storyline.service import ray_engine
from storyline.service.cli import app
from storyline.service.pipeline import Pipeline
from storyline.service.settings import Settings

DAY = datetime(2021, 10, 20, tzinfo=UTC)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """One embedded Ray for the module (2 CPUs); the engine reuses it and leaves it up."""
    ray = ray_engine.import_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _batch(shared_data: Path, n_stories: int = 13) -> list[Article]:
    """About 40 AllSides articles: ``n_stories`` stories of up to 3, dated inside DAY; one
    story has a member the day after (analysed as of the period's end)."""
    from storyline.service.ingest import read_source

    by: dict[str, list[Article]] = {}
    for p in read_source(shared_data / "allsides" / "articles.jsonl"):
        if p.article is not None:
            by.setdefault(str(p.article.story_id), []).append(p.article)
    groups = [sorted(v, key=lambda a: a.id)[:3] for _, v in sorted(by.items()) if len(v) >= 3]
    out: list[Article] = []
    for s, arts in enumerate(groups[:n_stories]):
        for j, a in enumerate(arts):
            hours = 1.0 + 1.7 * s + 0.1 * j
            if s == 0 and j == 2:
                hours = 25.0  # after the period: this story is digested as of DAY's end
            out.append(replace(a, published_at=DAY + timedelta(hours=hours)))
    return out


def _open(d: Path, embedder: Any) -> Pipeline:
    return Pipeline(Settings(data_dir=d), embedder=embedder)


def _analyses(pipe: Pipeline, res: dg.DigestResult) -> dict[tuple[str, str], Any]:
    kinds = ("analysis", f"analysis@{res.until.isoformat()}")
    return {(sid, k): pipe.store.get_output(sid, k) for sid in res.featured for k in kinds}


@pytest.mark.slow
def test_digest_ray_engine_equals_local_byte_for_byte(
    ray_local: Any, data_dir: Path, tmp_path: Path, embedder: Any, shared_data: Path
) -> None:
    pipe = _open(data_dir, embedder)
    pipe.ingest(_batch(shared_data))
    pipe.close()
    other = tmp_path / "copy"
    shutil.copytree(data_dir, other, symlinks=True)
    since, until = DAY, DAY + timedelta(days=1)

    local = _open(data_dir, embedder)
    on_ray = _open(other, embedder)
    try:
        a = dg.build_digest(local, since=since, until=until, top=20)
        b = dg.build_digest(on_ray, since=since, until=until, top=20, engine="ray",
                            ray_workers=2)
        assert b.bodies == a.bodies and set(b.bodies) == {"json", "html", "md"}
        assert b.featured == a.featured and len(a.featured) >= 10
        assert sorted(b.recomputed) == sorted(a.recomputed) == sorted(a.featured)
        assert "ray" in b.stages and b.stages["summarise"] > 0
        stored = _analyses(on_ray, b)
        assert stored == _analyses(local, a)
        # both kinds are exercised: current stories and one analysed as of the period's end
        assert any(k.startswith("analysis@") and v for (_, k), v in stored.items())
        assert any(k == "analysis" and v for (_, k), v in stored.items())
        # a re-run on Ray finds everything stored and computes nothing
        again = dg.build_digest(on_ray, since=since, until=until, top=20, engine="ray")
        assert again.recomputed == [] and again.bodies == a.bodies
        # a digest at another budget keeps entries of its own: the stored default
        # analyses (what API reads and the nightly digest use) stay as they are
        before = _analyses(on_ray, b)
        short = dg.build_digest(on_ray, since=since, until=until, top=20, engine="ray",
                                ray_workers=2, budget_words=30)
        assert short.bodies != a.bodies and short.recomputed
        assert _analyses(on_ray, b) == before
        assert dg.build_digest(on_ray, since=since, until=until, top=20).recomputed == []
    finally:
        local.close()
        on_ray.close()

    # the CLI flags reach the engine (everything is cached: nothing to run)
    runner = CliRunner()
    res = runner.invoke(app, ["digest", "--date", DAY.date().isoformat(), "--engine", "ray",
                              "--ray-workers", "2", "--top", "20", "--data-dir", str(other),
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["recomputed"] == 0 and out["stories"] == len(a.featured)


@pytest.mark.slow
def test_ingest_ray_engine_stores_the_local_vectors_and_stories(
    ray_local: Any, data_dir: Path, tmp_path: Path, shared_data: Path
) -> None:
    src = tmp_path / "batch.jsonl"
    with (shared_data / "allsides" / "articles.jsonl").open(encoding="utf-8") as f:
        src.write_text("".join(next(f) for _ in range(40)), encoding="utf-8")
    other = tmp_path / "copy"
    shutil.copytree(data_dir, other, symlinks=True)
    runner = CliRunner()
    for d, extra in ((data_dir, []), (other, ["--engine", "ray", "--ray-workers", "2"])):
        res = runner.invoke(app, ["ingest", str(src), "--data-dir", str(d), "--json", *extra])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout.strip().splitlines()[-1])["inserted"] > 30

    stores = [SQLiteStore(d / "storyline.db") for d in (data_dir, other)]
    try:
        (ids_a, va), (ids_b, vb) = (s.embeddings() for s in stores)
        assert list(ids_a) == list(ids_b) and len(ids_a) > 30
        np.testing.assert_allclose(vb, va, atol=1e-6, rtol=0)

        def partition(store: Any) -> set[frozenset[str]]:
            by: dict[str, set[str]] = {}
            for aid, sid in store.story_of(list(ids_a)).items():
                by.setdefault(sid, set()).add(aid)
            return {frozenset(v) for v in by.values()}

        assert partition(stores[1]) == partition(stores[0])
    finally:
        for s in stores:
            s.close()


@pytest.mark.slow
def test_ray_workers_do_not_import_torch(ray_local: Any, models_dir: Path) -> None:
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    def probe(models: str) -> bool:
        ray_engine._AnalyseWorker(models, 1, 32)
        return sys.modules.get("torch") is not None  # None: blocked, never imported

    assert ray_local.get(ray_local.remote(probe).remote(str(models_dir))) is False


def test_missing_ray_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_ray(name: str, *args: Any, **kw: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named '{name}'")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(MissingDependency) as err:
        ray_engine.import_ray()
    assert "pip install 'storyline[ray]'" in err.value.detail
    assert err.value.extra_name == "ray" and err.value.exit_code == 10
    # the digest fails before any work (no pipeline is touched)
    with pytest.raises(MissingDependency):
        dg.build_digest(None, since=DAY, until=DAY + timedelta(days=1), engine="ray")
    with pytest.raises(dg.InvalidInput):
        dg.build_digest(None, since=DAY, until=DAY + timedelta(days=1), engine="spark")
