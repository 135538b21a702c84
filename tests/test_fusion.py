"""The optional fusion mode: the faithfulness guard (pure, fast), the 501 when the fusion
model is not built, and (slow) a real build with deterministic, guarded generation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from storyline.models.errors import NotImplementedStage
from storyline.models.fusion import (
    FUSION,
    GuardResult,
    clean_generation,
    guard_sentence,
    unsupported_facts,
)

SOURCE = ("The Senate voted 52-48 on Tuesday to confirm Janet Yellen as Treasury secretary, "
          "ending a months-long fight over the nomination.")


def _guard(text: str, sources: list[str] | None = None, cos: float = 0.9,
           entities: Any = None) -> GuardResult:
    srcs = sources or [SOURCE]
    return guard_sentence(text, srcs, cosines=[cos] * len(srcs), min_cosine=0.8,
                          entities=entities)


# -- the guard, pure ---------------------------------------------------------------------
def test_guard_rejects_an_invented_entity() -> None:
    text = "The Senate confirmed Janet Yellen in Geneva, said Élise Scholz."
    missing = unsupported_facts(text, [SOURCE])
    assert "name Geneva" in missing and "name Scholz" in missing
    res = _guard(text)
    assert not res.ok and res.reason.startswith("unsupported")


def test_guard_rejects_an_invented_or_changed_number() -> None:
    for text in ("The Senate voted 53-47 on Tuesday to confirm Janet Yellen.",
                 "The Senate voted 52-48 in 2023 to confirm Janet Yellen.",
                 "Three senators voted on Tuesday to confirm Janet Yellen as secretary."):
        res = _guard(text)
        assert not res.ok and "number" in res.reason, (text, res)


def test_guard_rejects_an_invented_date_and_a_flipped_negation() -> None:
    assert "date Friday" in unsupported_facts("The Senate voted on Friday.", [SOURCE])
    res = _guard("The Senate did not confirm Janet Yellen as Treasury secretary on Tuesday.")
    assert not res.ok and res.reason == "negation changed"


def test_guard_rejects_a_dropped_attribution_and_a_swapped_subject() -> None:
    src = ["Supply chains are at risk of collapse, business leaders warned on Monday."]
    assert _guard("Supply chains are at risk of collapse on Monday.", src).reason == \
        "attribution dropped"
    assert _guard("Business leaders warned supply chains are at risk.", src).ok
    src = ["The Department of Justice will mobilize the FBI in response to a spike in threats."]
    res = _guard("The FBI will mobilize the FBI against threats.", src)
    assert not res.ok and res.reason == "repeated FBI"


def test_guard_accepts_a_faithful_paraphrase() -> None:
    text = "On Tuesday the Senate confirmed Janet Yellen as Treasury secretary, 52-48."
    assert unsupported_facts(text, [SOURCE]) == []
    res = _guard(text)
    assert res.ok and res.support == (0,) and res.reason == ""


def test_guard_needs_meaning_shortness_and_no_chatter() -> None:
    faithful = "The Senate confirmed Janet Yellen as Treasury secretary on Tuesday."
    assert not _guard(faithful, cos=0.5).ok  # far from the source in meaning
    assert _guard(SOURCE).reason == "not shorter"
    assert _guard("Janet Yellen confirmed.").reason == "too short"
    assert _guard("Sure! The Senate confirmed Janet Yellen on Tuesday.").reason == "chatter"


def test_guard_checks_spacy_entities_when_given() -> None:
    from storyline.models.fusion import _entities_fn

    ents = _entities_fn()
    assert ents is not None
    # Every token of "Janet Powell" is in the evidence, but the person is not.
    src = [SOURCE + " Jerome Powell praised the vote."]
    res = _guard("The Senate confirmed Janet Powell on Tuesday.", src, entities=ents)
    assert not res.ok and "entity Janet Powell" in res.reason
    assert _guard("The Senate confirmed Janet Yellen on Tuesday.", src, entities=ents).ok


def test_guard_with_the_real_embedder(embedder: Any) -> None:
    def cos(a: str, b: str) -> float:
        v = embedder.embed([a, b])
        return float(v[0] @ v[1])

    para = "On Tuesday the Senate confirmed Janet Yellen as Treasury secretary, 52-48."
    other = "On Tuesday the Senate passed a bill on Treasury bonds, 52-48, Janet Yellen said."
    assert cos(para, SOURCE) > cos(other, SOURCE)
    assert guard_sentence(para, [SOURCE], cosines=[cos(para, SOURCE)], min_cosine=0.8).ok


def test_guard_rejects_recased_and_meta_words() -> None:
    assert "case Treasury" not in unsupported_facts("Janet Yellen leads the Treasury.", [SOURCE])
    assert "case Secretary" in unsupported_facts("Yellen is Treasury Secretary.", [SOURCE])
    missing = unsupported_facts("Janet Yellen was confirmed, the news sentence added.", [SOURCE])
    assert "meta sentence" in missing


def test_clean_generation() -> None:
    assert clean_generation('Rewritten sentence: "The bridge reopened on Friday." Also, '
                            "it rained.") == "The bridge reopened on Friday."
    assert clean_generation("**Shorter:** The bridge reopened.\nNote: none") == \
        "The bridge reopened."
    assert clean_generation("Supreme Court: The Supreme Court ruled on Monday.") == \
        "The Supreme Court ruled on Monday."


# -- API: 501 without the fusion model ------------------------------------------------------
def _models_without_fusion(src: Path, dst: Path) -> Path:
    dst.mkdir()
    recs = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    recs.pop(FUSION.name, None)
    (dst / "manifest.json").write_text(json.dumps(recs), encoding="utf-8")
    for child in src.iterdir():
        if child.is_dir() and child.name != FUSION.folder:
            (dst / child.name).symlink_to(child.resolve(), target_is_directory=True)
    return dst


def test_api_fusion_is_501_when_not_built(tmp_path: Path, models_dir: Path,
                                          embedder: Any) -> None:
    from storyline.service.api.app import create_app
    from storyline.service.pipeline import Pipeline
    from storyline.service.settings import Settings

    data = tmp_path / "data"
    data.mkdir()
    _models_without_fusion(models_dir, data / "models")
    pipe = Pipeline(Settings(data_dir=data), embedder=embedder)
    try:
        with pytest.raises(NotImplementedStage, match="--with-fusion"):
            pipe.summariser_for("fusion")
        arts = [{"id": "n1", "title": "Bridge reopens",
                 "text": "Officials said the bridge reopened on Friday after repairs."},
                {"id": "n2", "title": "Bridge open again",
                 "text": "The bridge reopened after three weeks of repairs, the city said."}]
        with TestClient(create_app(pipe.settings, pipeline=pipe)) as client:
            for mode in ("fusion", "fused"):
                r = client.post("/v1/summarise", json={"articles": arts, "mode": mode})
                assert r.status_code == 501, r.text
                assert r.headers["content-type"].startswith("application/problem+json")
                body = r.json()
                assert body["status"] == 501 and body["type"].endswith("not-implemented")
                assert "storyline models build --with-fusion" in body["detail"]
            r = client.post("/v1/summarise", json={"articles": arts, "mode": "extractive"})
            assert r.status_code == 200, r.text
            assert r.json()["stories"][0]["summary"]["mode"] == "extractive"
    finally:
        pipe.store.close()


# -- slow: a real build, deterministic guarded generation -----------------------------------
@pytest.mark.slow
def test_build_and_generate_deterministically(tmp_path: Path, models_dir: Path,
                                              shared_data: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("gguf")
    from storyline.models.fusion import FusionSummariser
    from storyline.models.llm_build import build_fusion
    from storyline.models.summariser import ExtractiveSummariser, normalise_ws
    from storyline.models.summariser_train import load_allsides

    built = Path(os.environ.get("STORYLINE_TEST_FUSION_MODELS_DIR", tmp_path / "models"))
    if not (built / "manifest.json").exists() or FUSION.name not in json.loads(
            (built / "manifest.json").read_text(encoding="utf-8")):
        _models_without_fusion(models_dir, built)
        meta = build_fusion(built, log=lambda _m: None)
        assert meta["check"]["top1_agreement"] >= 0.9
    ext = ExtractiveSummariser(built, threads=1)
    fus = FusionSummariser(built, extractive=ext)
    stories = [s for s in load_allsides(shared_data / "allsides" / "articles.jsonl",
                                        shared_data / "allsides" / "stories.jsonl")
               if s.split == "train"][:2]
    for rec in stories:
        story = ext.prepare(rec.articles)
        a = fus.summarise_prepared(story, rec.budget)
        fus._cache.clear()
        b = fus.summarise_prepared(story, rec.budget)
        assert a == b and a.mode == "fusion"
        picked = {*ext.select(story, rec.budget),
                  *ext.select(story, max(rec.budget, round(rec.budget * fus.params.expand)))}
        extracted = [story.sentences[i].text for i in picked]
        texts = {a_.id: normalise_ws(a_.text) for a_ in story.articles}
        for s in a.sentences:
            assert s.article_ids and all(i in texts for i in s.article_ids)
            if s.origin == "extracted":
                assert s.text in extracted and s.text in texts[s.article_ids[0]]
            else:
                assert s.origin == "fused" and s.text not in extracted
                assert any(t in texts[s.article_ids[0]] and fus._guard(s.text, [t]).ok
                           for t in extracted), s

    # the HTTP path serves the mode once the model is built
    from storyline.service.api.app import create_app
    from storyline.service.pipeline import Pipeline
    from storyline.service.settings import Settings

    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(built, target_is_directory=True)
    pipe = Pipeline(Settings(data_dir=data))
    try:
        arts = [{"id": a_.id, "title": a_.title, "text": a_.text}
                for a_ in stories[0].articles]
        with TestClient(create_app(pipe.settings, pipeline=pipe)) as client:
            r = client.post("/v1/summarise", json={"articles": arts, "mode": "fusion"})
            assert r.status_code == 200, r.text
            summ = r.json()["stories"][0]["summary"]
            assert summ["mode"] == "fusion" and summ["sentences"]
    finally:
        pipe.store.close()
