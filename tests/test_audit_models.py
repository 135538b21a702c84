"""Model artefact bookkeeping under operator mistakes and accidents: a damaged or
hand-edited manifest, a record that no longer covers a model's files, two builds at once,
files other users must read, a feature cache used by many short-lived processes, and
settings left empty."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import serving_data_dir

from storyline.models.errors import InvalidInput, ModelUnavailable
from storyline.models.registry import (
    ArtefactRecord,
    Manifest,
    ModelSpec,
    atomic_write_bytes,
)
from storyline.models.shared_cache import SharedCache, cache_key
from storyline.service.model_process import ModelProcess
from storyline.service.settings import Settings

SPEC = ModelSpec(name="tiny", folder="tiny", file="model.onnx", dim=1, quantisation="none",
                 source_package="test", extra_files=("tokenizer.json",))


def _built(tmp_path: Path) -> Manifest:
    """A models dir holding one small 'built' artefact and its manifest record."""
    models = tmp_path / "models"
    (models / SPEC.folder).mkdir(parents=True)
    (models / SPEC.folder / SPEC.file).write_bytes(b"graph")
    (models / SPEC.folder / "tokenizer.json").write_text("{}")
    manifest = Manifest(models)
    manifest.record_files(SPEC, {"build_key": "k1"})
    return manifest


@pytest.mark.parametrize("body", [
    b"",                                     # emptied
    b'{"tiny": {"name": "tiny", "files": {',  # cut short mid-write
    b"[]",                                   # not an object
    b'{"tiny": {"files": {}}}',              # a record without its name
    b'{"tiny": {"name": "tiny", "files": ["a"]}}',  # files not a mapping
    b'{"tiny": {"name": "tiny", "files": {}, "sha": "x"}}',  # an unknown field
    b"\x00\x01\xff",                         # not text
])
def test_a_damaged_manifest_is_model_unavailable_naming_the_fix(tmp_path: Path,
                                                                body: bytes) -> None:
    manifest = _built(tmp_path)
    manifest.path.write_bytes(body)
    with pytest.raises(ModelUnavailable, match=r"manifest\.json.*storyline models build"):
        manifest.load()
    with pytest.raises(ModelUnavailable, match="storyline models build"):
        manifest.verify(SPEC)
    # ... and `storyline models build` can repair it: the artefact is not current, and
    # recording a fresh build replaces the damaged file.
    assert not manifest.is_current(SPEC, "k1")
    manifest.record_files(SPEC, {"build_key": "k1"})
    assert manifest.is_current(SPEC, "k1")


def test_the_embedder_refuses_a_truncated_manifest_in_one_line(models_dir: Path,
                                                               tmp_path: Path) -> None:
    from storyline.models.embedder import OnnxEmbedder

    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "minilm").symlink_to(models_dir / "minilm", target_is_directory=True)
    full = (models_dir / "manifest.json").read_bytes()
    (dest / "manifest.json").write_bytes(full[: len(full) // 2])
    with pytest.raises(ModelUnavailable, match="storyline models build") as err:
        OnnxEmbedder(dest)
    assert "\n" not in err.value.detail


def test_a_record_must_cover_every_file_the_model_loads(tmp_path: Path) -> None:
    manifest = _built(tmp_path)
    raw = json.loads(manifest.path.read_text())
    del raw["tiny"]["files"]["tiny/tokenizer.json"]  # an old or hand-edited record
    manifest.path.write_text(json.dumps(raw))
    # the unrecorded file is swapped: nothing would notice if verify trusted the record
    (manifest.models_dir / "tiny" / "tokenizer.json").write_text('{"swapped": true}')
    with pytest.raises(ModelUnavailable, match=r"tiny/tokenizer\.json.*storyline models build"):
        manifest.verify(SPEC)
    assert not manifest.is_current(SPEC, "k1")


def test_concurrent_builds_keep_every_record(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "models")
    n_threads, per_thread = 6, 15
    start = threading.Barrier(n_threads)

    def build(t: int) -> None:
        mine = Manifest(manifest.models_dir)  # each build holds its own handle
        start.wait()
        for i in range(per_thread):
            mine.put(ArtefactRecord(name=f"m{t}-{i}", files={}, meta={"t": t}))

    threads = [threading.Thread(target=build, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(manifest.load()) == n_threads * per_thread


def test_removing_a_record_beside_a_build_keeps_the_build_s_record(tmp_path: Path) -> None:
    # A seq2seq re-export forgets its old record while another build records its own:
    # the forget used to write back the manifest it had read, outside the lock.
    manifest = Manifest(tmp_path / "models")
    manifest.put(ArtefactRecord(name="seq2seq", files={}, meta={}))
    start = threading.Barrier(2)

    def forget() -> None:
        start.wait()
        for _ in range(30):
            Manifest(manifest.models_dir).remove("seq2seq")

    def build() -> None:
        start.wait()
        for i in range(30):
            Manifest(manifest.models_dir).put(ArtefactRecord(name=f"m{i}", files={}, meta={}))

    threads = [threading.Thread(target=f) for f in (forget, build)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(manifest.load()) == sorted(f"m{i}" for i in range(30))
    manifest.remove("absent")  # nothing to forget is not an error


def test_written_artefacts_are_readable_by_the_service_user(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "manifest.json", b"{}")
        atomic_write_bytes(tmp_path / "manifest.json", b"{}")  # replacing keeps it readable
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == 0o644


def test_the_cap_holds_when_every_process_writes_a_little(tmp_path: Path) -> None:
    # A CLI run (ingest, the nightly digest) is one short-lived process: each writes fewer
    # rows than the trimming interval, and the file must still stay near its cap.
    path = tmp_path / "c.sqlite"
    for run in range(40):
        c = SharedCache(path, caps={"doc:": 50})
        c.put("doc:m", [(cache_key(f"{run}-{j}"), b"v") for j in range(4)])
        c.close()
    c = SharedCache(path, caps={"doc:": 50})
    assert c.count("doc:m") <= 55
    newest = c.get("doc:m", [cache_key("39-3"), cache_key("0-0")])
    assert cache_key("39-3") in newest and cache_key("0-0") not in newest
    c.close()


@pytest.mark.parametrize("var", ["STORYLINE_MODELS_DIR", "STORYLINE_DATA_DIR"])
def test_an_empty_path_setting_means_its_default(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path, var: str) -> None:
    # e.g. compose's `STORYLINE_MODELS_DIR: ${MODELS_DIR:-}`: empty must not mean the cwd
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STORYLINE_DATA_DIR", "/srv/storyline")
    monkeypatch.setenv(var, "")
    s = Settings()
    expected_data = Path("data") if var == "STORYLINE_DATA_DIR" else Path("/srv/storyline")
    assert s.data_dir == expected_data
    assert s.models_dir == expected_data / "models"


# -- the model process -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           models_dir: Path) -> Iterator[tuple[ModelProcess, Path]]:
    data = serving_data_dir(tmp_path_factory.mktemp("served"), models_dir)
    mp = ModelProcess(Settings(data_dir=data, background_process=False, feature_cache=False))
    yield mp, data
    mp.close()


def test_the_proxy_refuses_one_string_as_the_embedder_does(
        served: tuple[ModelProcess, Path]) -> None:
    mp, _ = served
    with pytest.raises(InvalidInput, match="not one string"):
        mp.embedder.embed("three")  # type: ignore[arg-type]
    assert mp.embedder.embed([]).shape == (0, mp.dim)


def test_a_worker_restarted_after_a_rebuild_refuses_the_new_models(
        tmp_path: Path, models_dir: Path) -> None:
    data = serving_data_dir(tmp_path, models_dir)
    mp = ModelProcess(Settings(data_dir=data, background_process=False, feature_cache=False))
    try:
        mp.embedder.embed(["hello"])
        manifest = data / "models" / "manifest.json"
        raw = json.loads(manifest.read_text())
        # `storyline models build` ran while serving: another model's files are recorded
        raw["rebuilt"] = {"name": "rebuilt", "files": {}, "meta": {}}
        manifest.write_text(json.dumps(raw))
        os.kill(mp.pid, signal.SIGKILL)
        time.sleep(0.2)
        # the worker that replaces it must not serve the rebuilt models under the old ids
        with pytest.raises(ModelUnavailable, match="changed since the service started"):
            mp.embedder.embed(["hello"])
    finally:
        mp.close()
