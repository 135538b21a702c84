"""Story clustering: metrics, online assignment, stable ids, refine (merge / split with id
history), persistence across restarts, order robustness, and the clustering evaluation.

The articles are hand-written (three unrelated events, three outlets each) and go through the
real embedder and entity extractor, so the clusterer sees real vectors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storyline.index.store import IngestItem, Store
from storyline.index.stories import ClusterParams, StoryClusterer, title_tokens
from storyline.models.errors import InvalidInput, NotFound
from storyline.models.types import Article
from storyline.service.evaluation.clustering import (
    bcubed,
    clustering_metrics,
    evaluate_clustering,
    pairwise_f1,
)
from storyline.service.pipeline import Pipeline, article_text
from storyline.service.settings import Settings

# store-backed tests run on SQLite and on PostgreSQL (see conftest.py)
pytestmark = pytest.mark.both_backends

T0 = datetime(2024, 3, 5, 6, 0, tzinfo=UTC)

# (story, outlet, hours after T0, title, text)
RAW = [
    ("volcano", "Reuters", 0.0, "Volcano erupts near Grindavik in Iceland",
     "A volcano on Iceland's Reykjanes peninsula erupted on Tuesday, sending lava fountains "
     "into the night sky near the fishing town of Grindavik. Residents had been evacuated "
     "days earlier after a swarm of earthquakes."),
    ("volcano", "BBC", 2.5, "Iceland eruption: lava flows towards evacuated town",
     "Lava from a fissure eruption in south-west Iceland flowed towards Grindavik, whose "
     "4,000 residents were evacuated. The Icelandic Met Office said the eruption on the "
     "Reykjanes peninsula was the most powerful so far."),
    ("volcano", "AP", 5.0, "Iceland's Blue Lagoon closes as volcanic eruption continues",
     "The Blue Lagoon spa closed as an eruption near Grindavik on Iceland's Reykjanes "
     "peninsula continued to spew lava. Civil protection officials said flights at Keflavik "
     "airport were not affected by the volcano."),
    ("rates", "Bloomberg", 1.0, "European Central Bank holds interest rates at record high",
     "The European Central Bank kept its deposit rate at 4% on Thursday, as policymakers "
     "in Frankfurt said inflation in the euro zone was falling but wage growth remained "
     "too strong to start cutting borrowing costs."),
    ("rates", "Financial Times", 3.0, "ECB leaves rates unchanged, Lagarde signals June cut",
     "Christine Lagarde said the ECB's governing council would know more by June, after the "
     "central bank left interest rates unchanged. Euro zone inflation has dropped towards "
     "the 2% target, and markets expect the first rate cut this summer."),
    ("rates", "CNBC", 6.0, "ECB keeps rates steady and lowers its inflation forecast",
     "The European Central Bank held rates steady and cut its inflation projections for the "
     "euro area, Lagarde told reporters in Frankfurt. Economists said the bank was edging "
     "closer to lowering its record 4% deposit rate."),
    ("final", "ESPN", 1.5, "Arsenal beat Chelsea 2-1 to win the FA Cup final at Wembley",
     "Arsenal won the FA Cup on Saturday, beating Chelsea 2-1 at Wembley Stadium. Bukayo "
     "Saka scored the winning goal in the 80th minute after Chelsea had equalised early in "
     "the second half of the football final."),
    ("final", "Sky Sports", 4.0, "Saka late winner sinks Chelsea in FA Cup final",
     "Bukayo Saka's late goal gave Arsenal a 2-1 victory over Chelsea in the FA Cup final at "
     "Wembley. Mikel Arteta's side lifted the trophy in front of 90,000 fans after a tense "
     "second half."),
    ("final", "The Guardian", 7.0, "Arteta hails Arsenal spirit after FA Cup triumph",
     "Mikel Arteta praised his Arsenal players after they beat Chelsea 2-1 in the FA Cup "
     "final at Wembley, with Saka scoring the decisive goal. It is the club's first major "
     "trophy in four years."),
]


def _articles() -> list[Article]:
    return [
        Article(
            id=f"{story}-{k}", title=title, text=text, source=outlet,
            published_at=T0 + timedelta(hours=hours), story_id=story,
        )
        for k, (story, outlet, hours, title, text) in enumerate(RAW)
    ]


def _partition(store: Store, arts: list[Article]) -> dict[str, str]:
    story = store.story_of([a.id for a in arts])
    return {a.id: story[a.id] for a in arts}


def _assert_gold(pred: dict[str, str], arts: list[Article]) -> None:
    gold = {a.id: a.story_id or "" for a in arts}
    assert bcubed(pred, gold) == (1.0, 1.0, 1.0), pred


@pytest.fixture(scope="module")
def vectors(models_dir: Path) -> dict[str, Any]:
    """Real vectors and entities for the hand-written articles (computed once)."""
    from storyline.models.embedder import OnnxEmbedder
    from storyline.models.nlp import entity_keys

    arts = _articles()
    texts = [article_text(a) for a in arts]
    vecs = OnnxEmbedder(models_dir).embed(texts)
    ents = entity_keys(texts)
    return {a.id: (vecs[i], ents[i]) for i, a in enumerate(arts)}


@pytest.fixture()
def refining(data_dir: Path, embedder: Any, database_url: str | None) -> Any:
    """A pipeline that refines after every ingest batch (as the periodic job would)."""
    pipe = Pipeline(
        Settings(data_dir=data_dir, database_url=database_url, cluster_refine_every=1),
        embedder=embedder,
    )
    yield pipe
    pipe.store.close()


def _store(make_store: Any, vectors: dict[str, Any], arts: list[Article]) -> Store:
    store: Store = make_store("stories")
    store.ingest([IngestItem(a, *vectors[a.id]) for a in arts], "test")
    return store


# -- metrics ---------------------------------------------------------------------------------
def test_bcubed_and_pairwise_on_hand_computed_partitions() -> None:
    gold = {"a": "1", "b": "1", "c": "1", "d": "2", "e": "2"}
    assert bcubed(gold, gold) == (1.0, 1.0, 1.0)
    assert pairwise_f1(gold, gold) == 1.0
    # everything in one cluster: precision (3*3/5 + 2*2/5)/5 = 13/25, recall 1
    one = dict.fromkeys(gold, "x")
    p, r, f = bcubed(one, gold)
    assert (p, r) == pytest.approx((13 / 25, 1.0))
    assert f == pytest.approx(2 * p * r / (p + r))
    # singletons: precision 1, recall (3*1/3 + 2*1/2)/5 = 2/5; no predicted pairs at all
    single = {k: k for k in gold}
    assert bcubed(single, gold)[:2] == pytest.approx((1.0, 0.4))
    assert pairwise_f1(single, gold) == 0.0
    # one article moved: pairs true {ab, ac, bc, de}; predicted {ab, cd, ce, de}
    moved = {"a": "1", "b": "1", "c": "2", "d": "2", "e": "2"}
    assert pairwise_f1(moved, gold) == pytest.approx(0.5)
    # no two articles share a gold story: no pair to recall, so no pairwise F1 (it was
    # 0.0, a total miss, for keeping every article apart as the gold does)
    apart = {k: k for k in gold}
    assert pairwise_f1(apart, apart) is None and pairwise_f1(one, apart) is None
    assert clustering_metrics(apart, apart)["pairwise_f1"] is None
    m = clustering_metrics(moved, gold)
    assert m["n_predicted"] == 2 and m["n_gold"] == 2 and m["n_articles"] == 5
    with pytest.raises(InvalidInput):
        bcubed({"a": "1"}, gold)


def test_title_tokens_drop_function_words_and_possessives() -> None:
    assert title_tokens("The ECB's rates are on hold") == {"ecb", "rates", "hold"}
    assert title_tokens("") == frozenset()


# -- assignment through the pipeline ------------------------------------------------------------
def test_pipeline_assigns_stories_with_records(pipeline: Pipeline) -> None:
    assert isinstance(pipeline.clusterer, StoryClusterer)  # wired by default
    arts = _articles()
    gold = {a.id: a.story_id or "" for a in arts}
    report = pipeline.ingest(arts)
    online = _partition(pipeline.store, arts)
    assert {r.id: r.story_id for r in report.results} == online
    # online, an article joins a story only when clearly similar: no event is mixed with
    # another (two rate articles at cosine 0.47 may stay apart until the refine)
    assert bcubed(online, gold)[0] == 1.0
    pipeline.clusterer.refine()
    pred = _partition(pipeline.store, arts)
    _assert_gold(pred, arts)
    for sid in set(pred.values()):
        st = pipeline.store.get_story(sid)
        assert st.id.startswith("s_") and st.status == "active" and st.size == 3
        members = [a for a in arts if pred[a.id] == sid]
        assert st.label in {a.title for a in members}
        assert st.outlets == {a.source: 1 for a in members if a.source}
        assert st.first_at == min(a.published_at for a in members if a.published_at)
        assert st.last_at == max(a.published_at for a in members if a.published_at)
        assert st.centroid is not None and abs(float(np.linalg.norm(st.centroid)) - 1) < 1e-5
        assert len(st.content_hash) == 64


def test_story_keeps_its_id_as_it_grows_and_hash_follows_content(refining: Pipeline) -> None:
    arts = _articles()
    first = [a for a in arts if a.id.endswith(("-0", "-1", "-3", "-5", "-6", "-7"))]
    refining.ingest(first)
    ids = _partition(refining.store, first)
    hashes = {sid: refining.store.get_story(sid).content_hash for sid in set(ids.values())}
    refining.ingest([a for a in arts if a not in first])
    pred = _partition(refining.store, arts)
    _assert_gold(pred, arts)
    assert all(pred[a.id] == ids[a.id] for a in first)
    for sid, before in hashes.items():
        grown = refining.store.get_story(sid)
        assert grown.size == 3 and grown.content_hash != before
    # the same content again: nothing changes
    refining.ingest(arts)
    assert _partition(refining.store, arts) == pred
    assert all(refining.store.get_story(s).size == 3 for s in hashes)


def test_time_window_separates_the_same_topic_weeks_apart(pipeline: Pipeline) -> None:
    first, second = [a for a in _articles() if a.story_id == "rates"][:2]
    assert first.published_at is not None
    later = replace(second, id="rates-later", published_at=first.published_at + timedelta(days=42))
    pipeline.ingest([first, later])
    story = pipeline.store.story_of([first.id, later.id])
    assert story[first.id] != story[later.id]


def test_delete_shrinks_and_finally_retires_a_story(pipeline: Pipeline) -> None:
    arts = [a for a in _articles() if a.story_id == "final"]
    pipeline.ingest(arts)
    sid = pipeline.store.story_of([arts[0].id])[arts[0].id]
    pipeline.delete(arts[0].id)
    st = pipeline.store.get_story(sid)
    assert st.size == 2 and arts[0].id not in st.article_ids
    for a in arts[1:]:
        pipeline.delete(a.id)
    assert pipeline.store.get_story(sid).status == "deleted"
    assert pipeline.store.list_stories() == []


def test_updated_article_is_reassigned(refining: Pipeline) -> None:
    arts = _articles()
    refining.ingest(arts)
    vol = refining.store.story_of(["volcano-0"])["volcano-0"]
    rates = refining.store.story_of(["rates-3"])["rates-3"]
    # the outlet rewrote the article: it now reports the rate decision
    rewritten = replace(arts[0], title=arts[4].title, text=arts[4].text + " Updated.")
    refining.ingest([rewritten])
    assert refining.store.story_of(["volcano-0"])["volcano-0"] == rates
    assert refining.store.get_story(vol).size == 2


# -- refine: merge and split with id history -------------------------------------------------
def test_refine_merges_and_old_ids_resolve(make_store: Any, vectors: dict[str, Any]) -> None:
    arts = _articles()
    store = _store(make_store, vectors, arts)
    # online assignment that never joins: every article opens its own story
    params = ClusterParams(join_threshold=99.0, refine_every=0)
    clusterer = StoryClusterer(store, params=params)
    first = clusterer.assign([a.id for a in arts])
    assert len(set(first.values())) == len(arts)
    stats = clusterer.refine()
    assert stats["merged"] == len(arts) - 3 and stats["split"] == 0
    pred = _partition(store, arts)
    _assert_gold(pred, arts)
    for a in arts:
        old = first[a.id]
        now = pred[a.id]
        assert store.resolve_story(old) == [now]
        if old != now:
            assert store.get_story(old).status == "merged"
            assert [(h.old_id, h.new_id, h.kind) for h in store.story_history(old)] == [
                (old, now, "merge")
            ]
    # each surviving story kept the id of one of its members' first stories
    assert set(pred.values()) <= set(first.values())
    # a second refine has nothing left to do
    again = clusterer.refine()
    assert again["merged"] == again["split"] == again["moved_articles"] == 0


def test_refine_splits_and_largest_part_keeps_the_id(
    make_store: Any, vectors: dict[str, Any]
) -> None:
    vol = [a for a in _articles() if a.story_id == "volcano"]
    final = [a for a in _articles() if a.story_id == "final"][:2]
    arts = vol + final
    store = _store(make_store, vectors, arts)
    # online assignment that always joins the best candidate: one story for everything
    clusterer = StoryClusterer(
        store, params=ClusterParams(join_threshold=-99.0, refine_every=0)
    )
    first = clusterer.assign([a.id for a in arts])
    (sid,) = set(first.values())
    stats = clusterer.refine()
    assert stats["split"] == 1 and stats["merged"] == 0 and stats["new_stories"] == 1
    pred = _partition(store, arts)
    _assert_gold(pred, arts)
    assert {pred[a.id] for a in vol} == {sid}  # three volcano articles: the largest part
    (new,) = {pred[a.id] for a in final}
    assert new != sid
    assert [(h.old_id, h.new_id, h.kind) for h in store.story_history(new)] == [
        (sid, new, "split")
    ]
    assert store.resolve_story(sid) == [sid]
    assert store.get_story(sid).size == 3


def test_unknown_story_id_does_not_resolve(make_store: Any, vectors: dict[str, Any]) -> None:
    store = _store(make_store, vectors, _articles()[:1])
    StoryClusterer(store).assign([_articles()[0].id])
    with pytest.raises(NotFound):
        store.resolve_story("s_missing")


# -- persistence and order -----------------------------------------------------------------------
def test_restart_continues_the_same_stories(
    data_dir: Path, embedder: Any, database_url: str | None
) -> None:
    arts = _articles()
    early = [a for a in arts if a.id.endswith(("-0", "-3", "-6", "-1", "-4", "-7"))]
    late = [a for a in arts if a not in early]
    settings = Settings(data_dir=data_dir, database_url=database_url, cluster_refine_every=1)
    pipe = Pipeline(settings, embedder=embedder)
    pipe.ingest(early)
    before = _partition(pipe.store, early)
    pipe.close()

    pipe2 = Pipeline(settings, embedder=embedder)  # rebuilt from the db
    assert pipe2.clusterer is not None
    assert {pipe2.clusterer.story_of(a.id) for a in early} == set(before.values())
    pipe2.ingest(late)
    after = _partition(pipe2.store, arts)
    _assert_gold(after, arts)
    assert all(after[a.id] == before[a.id] for a in early)
    pipe2.close()


def test_articles_stored_without_clustering_are_placed_by_refine(
    make_store: Any, vectors: dict[str, Any]
) -> None:
    arts = _articles()
    store = _store(make_store, vectors, arts)  # nobody assigned these
    clusterer = StoryClusterer(store, params=ClusterParams(refine_every=0))
    stats = clusterer.refine()
    assert stats["unassigned_placed"] == len(arts)
    _assert_gold(_partition(store, arts), arts)


# -- several writers on one store -----------------------------------------------------------------
def _records_agree(store: Store) -> None:
    """Every active story record matches its members (size and content hash)."""
    from storyline.index.stories import members_hash

    for st in store.list_stories(limit=10**6, min_size=0):
        got = store.get_articles(st.article_ids)
        assert st.article_ids, f"active story {st.id} without members"
        assert st.extra.get("size") == len(st.article_ids), st.id
        assert st.content_hash == members_hash((a.id, a.content_hash) for a in got), st.id


def test_a_second_writer_reloads_instead_of_overwriting(
    make_store: Any, vectors: dict[str, Any]
) -> None:
    # The API's clusterer holds stories in memory; a digest job in another process refines
    # the same store; the API's next write must build on that refine, not undo it.
    arts = _articles()
    early, late = arts[:-3], arts[-3:]
    store = _store(make_store, vectors, early)
    api = StoryClusterer(store, params=ClusterParams(join_threshold=99.0, refine_every=0))
    api.assign([a.id for a in early])  # every article its own story
    digest = StoryClusterer(make_store("stories"), params=ClusterParams(refine_every=0))
    stats = digest.refine(full=True)
    assert stats["merged"] > 0
    merged = {st.id for st in store.list_stories(limit=100, status="merged")}
    store.ingest([IngestItem(a, *vectors[a.id]) for a in late], "test")
    api.assign([a.id for a in late])
    _records_agree(store)
    # what the refine retired stays retired, and its partition of the early articles stands
    assert {st.id for st in store.list_stories(limit=100, status="merged")} == merged
    assert {api.story_of(a.id) for a in early} == set(_partition(store, early).values())
    _assert_gold(_partition(store, early), early)


def test_a_story_write_on_stale_state_is_refused_and_redone(
    make_store: Any, vectors: dict[str, Any]
) -> None:
    from storyline.index.store import StoriesChanged

    arts = _articles()
    store = _store(make_store, vectors, arts[:6])
    a = StoryClusterer(store, params=ClusterParams(refine_every=0))
    a.assign([x.id for x in arts[:3]])
    b = StoryClusterer(make_store("stories"), params=ClusterParams(refine_every=0))
    gen = store.stories_generation()
    # the store refuses a claim from a stale generation, inside the writer's transaction
    with pytest.raises(StoriesChanged), store.transaction() as db:
        store.claim_stories_generation(gen - 1, db)
    assert store.stories_generation() == gen
    # b writes after a's check: a's write fails its claim, reloads and is redone
    real = a.store.stories_generation
    calls = {"n": 0}

    def stale_once() -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            b.assign([x.id for x in arts[3:6]])  # lands between a's check and a's write
            return gen
        return real()

    store.delete_article("volcano-0")  # as the pipeline does: the store first
    a.store.stories_generation = stale_once  # type: ignore[method-assign]
    try:
        a.remove(["volcano-0"])
    finally:
        del a.store.stories_generation
    assert calls["n"] >= 2
    assert store.stories_generation() == gen + 2  # b's write, then a's redone one
    placed = store.story_of([x.id for x in arts[1:6]])
    assert set(placed) == {x.id for x in arts[1:6]}  # b's placements survived a's write
    assert store.story_of(["volcano-0"]) == {}
    _records_agree(store)


def test_records_left_stale_by_a_crash_are_rewritten(
    make_store: Any, vectors: dict[str, Any]
) -> None:
    arts = _articles()
    store = _store(make_store, vectors, arts[:3])
    StoryClusterer(store, params=ClusterParams(refine_every=0)).assign([a.id for a in arts[:3]])
    # a process committed an update and a delete, then died before writing the stories
    changed = replace(arts[0], text=arts[0].text + " Updated.")
    store.ingest([IngestItem(changed, *vectors[arts[0].id])], "test")
    store.delete_article(arts[1].id)
    again = StoryClusterer(make_store("stories"), params=ClusterParams(refine_every=0))
    store.ingest([IngestItem(arts[3], *vectors[arts[3].id])], "test")
    again.assign([arts[3].id])  # the next write also rewrites what the crash left behind
    _records_agree(store)


def test_a_metadata_update_moves_the_article_in_time_within_its_story(
    make_store: Any, vectors: dict[str, Any]
) -> None:
    """Finding 6: a corrected outlet or time (same content, same vector) refreshes the
    article where it is; its story's dates and outlets follow, and its id stays. A time
    outside the story's window takes it out of the story."""
    arts = [a for a in _articles() if a.story_id == "volcano"]
    store = _store(make_store, vectors, arts)
    clu = StoryClusterer(store, params=ClusterParams(refine_every=0))
    clu.assign([a.id for a in arts])
    sid = clu.story_of(arts[0].id)
    assert sid is not None and {clu.story_of(a.id) for a in arts} == {sid}
    assert arts[2].published_at is not None
    fixed = replace(arts[2], source="Associated Press",
                    published_at=arts[2].published_at + timedelta(hours=20))
    r = store.ingest([IngestItem(fixed, np.zeros(len(vectors[fixed.id][0]), np.float32))], "t")
    assert r[0].outcome == "updated"
    assert clu.assign([fixed.id]) == {fixed.id: sid}
    st = store.get_story(sid)
    assert st.outlets == {"Associated Press": 1, "BBC": 1, "Reuters": 1}
    assert (st.first_at, st.last_at) == (arts[0].published_at, fixed.published_at)
    _records_agree(store)
    # 60 hours after the first article: past the 36-hour window, a story of its own
    far = replace(fixed, published_at=T0 + timedelta(hours=60))
    store.ingest([IngestItem(far, *vectors[far.id])], "t")
    moved = clu.assign([far.id])[far.id]
    assert moved != sid and store.get_story(sid).article_ids == [a.id for a in arts[:2]]
    assert store.get_story(moved).first_at == far.published_at
    # a restart reads the same times
    again = StoryClusterer(store, params=ClusterParams(refine_every=0))
    assert again.story_of(far.id) == moved and again.story_of(arts[0].id) == sid


def test_records_left_stale_by_a_metadata_update_are_rewritten(
    make_store: Any, vectors: dict[str, Any]
) -> None:
    """An outlet corrected by a process that died before writing the story: the next
    clusterer sees the record's outlets disagree with the members and rewrites it."""
    arts = _articles()
    store = _store(make_store, vectors, arts[:3])
    StoryClusterer(store, params=ClusterParams(refine_every=0)).assign([a.id for a in arts[:3]])
    sid = store.story_of([arts[0].id])[arts[0].id]
    store.ingest([IngestItem(replace(arts[0], source="Reuters UK"), *vectors[arts[0].id])], "t")
    again = StoryClusterer(make_store("stories"), params=ClusterParams(refine_every=0))
    store.ingest([IngestItem(arts[3], *vectors[arts[3].id])], "test")
    again.assign([arts[3].id])
    assert "Reuters UK" in store.get_story(sid).outlets
    _records_agree(store)


def test_a_story_counts_an_outlet_spelt_two_ways_once(
    make_store: Any, vectors: dict[str, Any]
) -> None:
    """Two feeds spell one outlet "Reuters" and "REUTERS" (the source filter reads them as
    one): the story listed two outlets."""
    arts = [a for a in _articles() if a.story_id == "volcano"]
    arts = [replace(arts[0], source="Reuters"), replace(arts[1], source="REUTERS"),
            replace(arts[2], source="Reuters")]
    store = _store(make_store, vectors, arts)
    clu = StoryClusterer(store, params=ClusterParams(refine_every=0))
    clu.assign([a.id for a in arts])
    sid = clu.story_of(arts[0].id)
    assert sid is not None and {clu.story_of(a.id) for a in arts} == {sid}
    assert store.get_story(sid).outlets == {"Reuters": 3}
    _records_agree(store)


@pytest.mark.parametrize("seed", [1, 2])
def test_ingest_order_does_not_change_the_stories(
    make_store: Any, vectors: dict[str, Any], seed: int
) -> None:
    arts = _articles()
    results = []
    for run, order in enumerate((sorted(range(len(arts)), key=lambda i: arts[i].published_at
                                        or T0),
                                 list(np.random.default_rng(seed).permutation(len(arts))))):
        store = make_store(f"run{run}")
        clusterer = StoryClusterer(store, params=ClusterParams(refine_every=0))
        for i in order:  # one article at a time, as a live feed would deliver them
            a = arts[int(i)]
            store.ingest([IngestItem(a, *vectors[a.id])], "test")
            clusterer.assign([a.id])
        clusterer.refine()
        results.append(_partition(store, arts))
    assert bcubed(results[1], results[0])[2] == 1.0
    _assert_gold(results[0], arts)


def test_undated_articles_cluster_by_content(make_store: Any, vectors: dict[str, Any]) -> None:
    arts = [replace(a, published_at=None) for a in _articles()]
    store = make_store()
    store.ingest([IngestItem(a, *vectors[a.id]) for a in arts], "test")
    clusterer = StoryClusterer(store)
    clusterer.assign([a.id for a in arts])
    clusterer.refine()
    pred = _partition(store, arts)
    _assert_gold(pred, arts)
    st = store.get_story(pred[arts[0].id])
    assert st.first_at is None and st.last_at is None


def test_vectors_of_another_dimension_are_refused(make_store: Any) -> None:
    store = make_store()
    a, b = _articles()[:2]
    store.ingest([IngestItem(a, np.ones(8, np.float32) / np.sqrt(8))], "small")
    clusterer = StoryClusterer(store)  # follows the stored dimension (8)
    assert clusterer.dim == 8
    clusterer.assign([a.id])
    store.ingest([IngestItem(b, np.ones(16, np.float32) / 4)], "other")
    with pytest.raises(InvalidInput):
        clusterer.assign([b.id])


# -- evaluation -----------------------------------------------------------------------------------
def _gold_file(path: Path) -> Path:
    with path.open("w") as fh:
        for k, a in enumerate(_articles()):
            fh.write(json.dumps({
                "id": a.id, "title": a.title, "text": a.text, "source": a.source,
                "published_at": a.published_at.isoformat() if a.published_at else None,
                "story_id": a.story_id, "split": "dev" if k % 3 == 0 else "train",
            }) + "\n")
    return path


def test_evaluate_clustering_on_a_small_gold_file(tmp_path: Path, models_dir: Path) -> None:
    path = _gold_file(tmp_path / "gold.jsonl")
    res = evaluate_clustering(path, order="shuffle", baselines=True, models_dir=models_dir)
    assert res["bcubed_f1"] == 1.0 and res["pairwise_f1"] == 1.0
    assert res["n_predicted"] == res["n_gold"] == 3 and res["n_articles"] == 9
    assert res["order_robustness_bcubed_f1"] == 1.0
    assert res["other_order"]["order"] == "date"
    assert set(res["by_split"]) == {"dev", "train"}
    for name in ("agglomerative", "single_pass", "agglomerative_48h", "single_pass_48h"):
        b = res["baselines"][name]
        assert 0.0 < b["bcubed_f1"] <= 1.0 and 0.3 <= b["threshold"] <= 0.9
    assert res["seconds"] > 0
    json.dumps(res)  # the CLI prints it as JSON

    no_gold = tmp_path / "none.jsonl"
    no_gold.write_text(json.dumps({"id": "x", "text": "no label"}) + "\n")
    with pytest.raises(InvalidInput):
        evaluate_clustering(no_gold, models_dir=models_dir)


@pytest.mark.slow
def test_cli_eval_clustering_and_cluster_refine(data_dir: Path, tmp_path: Path) -> None:
    path = _gold_file(tmp_path / "gold.jsonl")
    env = {**os.environ, "STORYLINE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}

    def cli(*args: str) -> dict[str, Any]:
        r = subprocess.run([sys.executable, "-m", "storyline.service.cli", *args],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr
        out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        return out

    res = cli("eval", "clustering", "--articles", str(path), "--order", "shuffle", "--json")
    assert res["bcubed_f1"] == 1.0 and "baselines" not in res
    cli("ingest", str(path), "--json")
    first = cli("cluster", "refine", "--json")
    assert first["stories_after"] == 3 and first["articles"] == 9
    again = cli("cluster", "refine", "--full", "--json")
    assert again["merged"] == again["split"] == again["moved_articles"] == 0
