"""Stance: the aggregation rule, the VADER scorer, the tagger on the seed article, and the eval.

The seed-article test runs with every available target scorer: the learned int8 model when
``<repo>/data/models/stance`` is built and intact (override with STORYLINE_MODELS_DIR),
and always with the VADER low-resource scorer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from storyline.models.actors import SpacyActorExtractor
from storyline.models.errors import InvalidInput, ModelUnavailable
from storyline.models.protocols import StanceTagger
from storyline.models.registry import STANCE, Manifest
from storyline.models.stance import (
    PORTRAYAL_RULE,
    ActorStanceTagger,
    AggregationRule,
    TargetScorer,
    VaderTargetScorer,
    aggregate,
    load_target_scorer,
)
from storyline.models.types import ActorStance, Article, Evidence
from storyline.service.evaluation.stance import LABEL_TO_POLARITY, evaluate_stance, read_gold

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("STORYLINE_MODELS_DIR", REPO / "data" / "models"))
SEEDS = REPO / "seeds"


def _model_built() -> bool:
    try:
        Manifest(MODELS_DIR).verify(STANCE)
    except ModelUnavailable:
        return False
    return True


@pytest.fixture(scope="module", params=["model", "vader"])
def scorer(request: pytest.FixtureRequest) -> TargetScorer:
    if request.param == "vader":
        return VaderTargetScorer()
    if not _model_built():
        pytest.skip(f"target-sentiment model not built in {MODELS_DIR}")
    return load_target_scorer(MODELS_DIR, fallback=False)


def _ev(n: int) -> list[Evidence]:
    return [Evidence("a", f"sentence {i}") for i in range(n)]


POS = [0.05, 0.15, 0.80]
NEG = [0.80, 0.15, 0.05]
NEU = [0.10, 0.80, 0.10]


# -- aggregation --------------------------------------------------------------------------------


def test_mixed_needs_both_sides_over_thirty_percent() -> None:
    st = aggregate([POS, POS, NEG, NEG, NEU], _ev(5))
    assert st.label == "mixed"
    assert abs(st.score) < 0.05
    # mixed evidence alternates the most positive and the most negative sentences
    assert [e.text for e in st.evidence] == ["sentence 0", "sentence 2", "sentence 1"]
    # one negative in five is 20% < 30%: not mixed, and the mean decides
    st = aggregate([POS, POS, POS, NEG, NEU], _ev(5))
    assert st.label == "supportive" and st.score > 0.15
    # exactly at the 30% boundary on both sides counts as mixed
    st = aggregate([POS] * 3 + [NEG] * 3 + [NEU] * 4, _ev(10))
    assert st.label == "mixed"
    # weak (unconfident) polar items do not make a mix
    weak_pos, weak_neg = [0.2, 0.35, 0.45], [0.45, 0.35, 0.2]
    assert aggregate([weak_pos, weak_neg], _ev(2)).label == "neutral"


def test_polar_threshold_weights_and_confidence() -> None:
    assert aggregate([NEG, NEU, NEU], _ev(3)).label == "critical"  # score -0.25
    assert aggregate([NEG, NEU, NEU, NEU, NEU, NEU], _ev(6)).label == "neutral"  # -0.125
    # weights move the mean: a headline mention weighing 2
    assert aggregate([NEG, NEU, NEU, NEU], _ev(4), weights=[2, 1, 1, 1]).label == "critical"
    one = aggregate([NEG], _ev(1))
    many = aggregate([NEG] * 6, _ev(6))
    assert one.label == many.label == "critical"
    assert 0 < one.confidence <= 0.5 < many.confidence <= 1  # more items, more trust
    assert aggregate(np.zeros((0, 3)), []).confidence == 0.0
    custom = AggregationRule(polar_threshold=0.5)
    assert aggregate([NEG, NEU, NEU], _ev(3), rule=custom).label == "neutral"
    with pytest.raises(InvalidInput):
        aggregate([NEG], _ev(2))
    # evidence of a polar label is the strongest items, distinct sentences only
    dup = [Evidence("a", "same"), Evidence("a", "same"), Evidence("a", "other")]
    st = aggregate([NEG, NEG, [0.6, 0.3, 0.1]], dup)
    assert [e.text for e in st.evidence] == ["same", "other"]


def test_portrayal_rule_takes_the_class_with_the_highest_mean() -> None:
    r = PORTRAYAL_RULE
    assert aggregate([NEG, NEG, NEU], _ev(3), rule=r).label == "critical"
    # score -0.25 (critical under the position rule), but the mean probability is highest
    # for neutral: the model's own call
    assert aggregate([NEG, NEU, NEU], _ev(3)).label == "critical"
    assert aggregate([NEG, NEU, NEU], _ev(3), rule=r).label == "neutral"
    # weights move the mean: a headline mention weighing 2
    assert aggregate([NEG, NEU], _ev(2), rule=r).label == "neutral"
    assert aggregate([NEG, NEU], _ev(2), weights=[2, 1], rule=r).label == "critical"
    # a tie between the polar classes is no call either way
    no_mix = replace(r, mixed_share=0.6)
    assert aggregate([NEG, POS], _ev(2), rule=no_mix).label == "neutral"
    st = aggregate([NEG] * 6, _ev(6), rule=r)
    assert st.label == "critical" and 0.5 < st.confidence <= 1
    # mixed works as under the position rule; a stricter share lets the majority decide
    items = [POS, POS, POS, NEG, NEG, NEU]
    assert aggregate(items, _ev(6), rule=r).label == "mixed"
    assert aggregate(items, _ev(6), rule=replace(r, mixed_share=0.5)).label == "supportive"


def test_label_mapping_for_scoring() -> None:
    assert LABEL_TO_POLARITY == {
        "supportive": "positive",
        "critical": "negative",
        "neutral": "neutral",
        "mixed": "neutral",
    }


# -- scorers --------------------------------------------------------------------------------------


def test_vader_scorer_is_windowed_and_sums_to_one() -> None:
    v = VaderTargetScorer(window_words=3)
    s = (
        "Critics praised Merkel for her wise and calm leadership on Monday, "
        "long after the disastrous and shameful scandal that destroyed Johnson."
    )
    items = [(s, s.index("Merkel"), s.index("Merkel") + 6), (s, s.index("Johnson"), len(s) - 1)]
    p = v.predict(items)
    assert p.shape == (2, 3) and p.dtype == np.float32
    assert np.allclose(p.sum(axis=1), 1.0)
    assert p[0, 2] > p[0, 0] and p[1, 0] > p[1, 2]  # same sentence, opposite targets
    # curly quotes do not hide words from VADER's lexicon
    q = "He called it an “aggressive” policy by Moscow"
    assert v.predict([(q, q.index("Moscow"), len(q))])[0, 0] > 0
    with pytest.raises(InvalidInput):
        v.predict([(q, 5, 500)])


def test_load_target_scorer_falls_back_to_vader(tmp_path: Path) -> None:
    assert isinstance(load_target_scorer(tmp_path), VaderTargetScorer)
    with pytest.raises(ModelUnavailable):
        load_target_scorer(tmp_path, fallback=False)


# -- the tagger -----------------------------------------------------------------------------------


class _Neutral:
    """Always neutral: isolates the tagger's own verb-cue logic (the caller under test)."""

    def predict(self, items: Sequence[tuple[str, int, int]]) -> npt.NDArray[np.float32]:
        return np.tile(np.array([0.0, 1.0, 0.0], dtype=np.float32), (len(items), 1))


def _stance(stances: list[ActorStance], name: str) -> ActorStance:
    (hit,) = [s for s in stances if s.actor.name == name]
    return hit


def test_speech_verb_cues_drive_positions(ex: SpacyActorExtractor) -> None:
    arts = [
        Article(
            id="c1",
            text="Emmanuel Macron praised Angela Merkel for her leadership on Monday. "
            "Joe Biden condemned Russia for the invasion. "
            "Boris Johnson did not criticise Germany.",
            source="Outlet",
        )
    ]
    tagger = ActorStanceTagger(_Neutral(), attributor=ex)
    assert isinstance(tagger, StanceTagger)
    stances = tagger.tag(ex.extract(arts), arts)
    macron = _stance(stances, "Emmanuel Macron")
    (tw,) = macron.position.toward
    assert (tw.actor, tw.stance.label) == ("Angela Merkel", "supportive")
    assert tw.stance.evidence[0].text.startswith("Emmanuel Macron praised")
    (tw,) = _stance(stances, "Joe Biden").position.toward
    assert (tw.actor, tw.stance.label) == ("Russia", "critical")
    # negated verb: no cue, the (neutral) model decides
    (tw,) = _stance(stances, "Boris Johnson").position.toward
    assert (tw.actor, tw.stance.label) == ("Germany", "neutral")
    assert [s.verb for s in _stance(stances, "Joe Biden").statements] == ["condemn"]
    # an actor who says nothing has no issue stance, and a neutral portrayal here
    merkel = _stance(stances, "Angela Merkel")
    assert merkel.position.issue is None and merkel.portrayal.overall.label == "neutral"


def test_portrayal_breaks_down_by_outlet_and_lean(ex: SpacyActorExtractor) -> None:
    arts = [
        Article(
            id="p1",
            text="Boris Johnson won praise for a brilliant, generous and wise budget.",
            source="Left Daily",
            lean="left",
        ),
        Article(
            id="p2",
            text="Boris Johnson faced fury over a disastrous, cruel and shameful scandal.",
            source="Right Post",
            lean="right",
        ),
        Article(id="p3", text="Boris Johnson met officials in London.", source=None),
    ]
    tagger = ActorStanceTagger(VaderTargetScorer(), attributor=ex)
    johnson = _stance(tagger.tag(ex.extract(arts), arts), "Boris Johnson")
    p = johnson.portrayal
    assert set(p.by_outlet) == {"Left Daily", "Right Post"}  # no source, no outlet entry
    assert set(p.by_lean) == {"left", "right"}
    assert p.by_lean["left"].label == "supportive" and p.by_lean["right"].label == "critical"
    assert p.by_outlet["Right Post"].evidence[0].article_id == "p2"
    assert p.overall.label in {"mixed", "neutral"}


def test_portrayal_by_lean_groups_spellings_of_one_lean(ex: SpacyActorExtractor) -> None:
    # Feeds spell leans freely: "Left" and "left" are one group, holding both articles
    # (the digest keys leans by this spelling, and used to keep only one group's score).
    arts = [
        Article(id="q1", text="Boris Johnson won praise for a brilliant, generous budget.",
                source="Left Daily", lean="Left"),
        Article(id="q2", text="Boris Johnson faced fury over a disastrous, cruel scandal.",
                source="Other Left", lean="left"),
        Article(id="q3", text="Boris Johnson met officials in London.", source="Centre",
                lean=" Lean-Center "),
    ]
    tagger = ActorStanceTagger(VaderTargetScorer(), attributor=ex)
    p = _stance(tagger.tag(ex.extract(arts), arts), "Boris Johnson").portrayal
    assert set(p.by_lean) == {"left", "lean center"}
    assert {e.article_id for e in p.by_lean["left"].evidence} == {"q1", "q2"}


def test_portrayal_by_outlet_is_one_group_per_outlet_whatever_its_case(
    ex: SpacyActorExtractor,
) -> None:
    # Two feeds spell one outlet "Reuters" and "REUTERS" (the source filter already reads
    # them as one): its portrayal was split in two groups.
    arts = [
        Article(id="r1", text="Boris Johnson won praise for a brilliant, generous budget.",
                source="Reuters"),
        Article(id="r2", text="Boris Johnson faced fury over a disastrous, cruel scandal.",
                source="REUTERS"),
        Article(id="r3", text="Boris Johnson met officials in London.", source="Reuters"),
    ]
    tagger = ActorStanceTagger(VaderTargetScorer(), attributor=ex)
    p = _stance(tagger.tag(ex.extract(arts), arts), "Boris Johnson").portrayal
    assert set(p.by_outlet) == {"Reuters"}  # the more frequent spelling names it
    assert {e.article_id for e in p.by_outlet["Reuters"].evidence} >= {"r1", "r2"}


def _seed() -> Article:
    path = sorted(SEEDS.glob("*.txt"))[0]
    title, text = path.read_text(encoding="utf-8").split("\n", 1)
    return Article(id=path.stem, title=title.strip(), text=text.strip(), source="seed")


def test_seed_putin_is_critical_of_the_west(ex: SpacyActorExtractor, scorer: TargetScorer) -> None:
    art = _seed()
    actors = ex.extract([art])
    stances = ActorStanceTagger(scorer, attributor=ex).tag(actors, [art])
    assert [s.actor for s in stances] == actors
    putin = _stance(stances, "Vladimir Putin")
    toward = {t.actor: t.stance for t in putin.position.toward}
    assert {"the West", "North Atlantic Treaty Organization", "United States"} <= toward.keys()
    west = toward["the West"]
    assert west.label == "critical" and west.score <= -0.15
    texts = [e.text for e in west.evidence]
    # the quoted evidence: the attack and the “aggressive” policy
    assert any("attacked the West" in t for t in texts)
    assert any("“aggressive”" in t or "“immediate”" in t for t in texts)
    assert all(e.article_id == art.id for e in west.evidence)
    assert putin.position.issue is not None
    assert len(putin.statements) >= 6
    # statements of others land on their own actors
    peskov = _stance(stances, "Dmitry Peskov")
    assert any("matter of life or death" in s.text for s in peskov.statements)
    lavrov = _stance(stances, "Sergei Lavrov")
    assert [s.verb for s in lavrov.statements] == ["confirm"]
    # Russia accuses Ukraine: a direct critical cue
    russia = {t.actor: t.stance for t in _stance(stances, "Russia").position.toward}
    assert russia["Ukraine"].label == "critical"
    # the Kremlin talking about Russian soldiers is not a stance toward its own side
    kremlin = _stance(stances, "the Kremlin")
    assert "Russian" not in {t.actor for t in kremlin.position.toward}
    for s in stances:
        o = s.portrayal.overall
        assert -1 <= o.score <= 1 and 0 <= o.confidence <= 1
        assert o.label in {"supportive", "critical", "neutral", "mixed"}


# -- evaluation -----------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_evaluate_stance_on_a_tiny_fixture(ex: SpacyActorExtractor, tmp_path: Path) -> None:
    articles = _write_jsonl(
        tmp_path / "articles.jsonl",
        [
            {
                "id": "e1",
                "title": "Putin accuses NATO of aggression",
                "text": "President Vladimir Putin accused NATO of reckless aggression on Monday. "
                "Separately, Angela Merkel was praised for her calm and wise leadership.",
                "source": "Outlet A",
                "lean": "left",
                "published_at": "2021-12-27T10:00:00Z",
            },
            {
                "id": "e2",
                "title": "",
                "text": "The United States announced new funding for schools on Tuesday.",
                "source": "Outlet B",
            },
        ],
    )
    gold = _write_jsonl(
        tmp_path / "gold.jsonl",
        [
            {"article_id": "e1", "actor": "Mrs. Merkel", "label": "positive"},
            {"article_id": "e1", "actor": "President Putin", "label": "negative"},
            {"article_id": "e1", "actor": "Boris Johnson", "label": "neutral"},  # absent
            {"article_id": "e2", "actor": "U.S.", "label": "neutral"},  # alias table
            {"article_id": "e1", "speaker": "Putin", "target": "NATO", "label": "negative"},
            {"article_id": "e1", "speaker": "Merkel", "target": "NATO", "label": "neutral"},
        ],
    )
    tagger = ActorStanceTagger(VaderTargetScorer(), attributor=ex)
    res = evaluate_stance(articles, gold, extractor=ex, tagger=tagger)
    assert res["n_gold"] == 4 and res["n_edges"] == 2
    assert res["coverage"] == 0.75 and res["n_matched"] == 3
    assert res["edge_coverage"] == 0.5
    assert res["edge_macro_f1"] == 1.0  # "accused NATO" is critical
    # the portrayal F1 equals a hand recomputation from the tagger's own labels
    rows = {r["id"]: r for r in map(json.loads, articles.read_text().splitlines())}
    pred = {}
    for aid in ("e1", "e2"):
        arts = [Article(id=aid, title=rows[aid]["title"], text=rows[aid]["text"])]
        for s in tagger.tag(ex.extract(arts), arts):
            pred[s.actor.name] = LABEL_TO_POLARITY[s.portrayal.overall.label]
    gold_labels = ["positive", "negative", "neutral"]
    pred_labels = [pred["Angela Merkel"], pred["Vladimir Putin"], pred["United States"]]
    classes = set(gold_labels) | set(pred_labels)
    f1s = []
    for c in classes:
        tp = sum(g == p == c for g, p in zip(gold_labels, pred_labels, strict=True))
        fp = sum(p == c and g != c for g, p in zip(gold_labels, pred_labels, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold_labels, pred_labels, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    assert res["macro_f1"] == pytest.approx(sum(f1s) / len(f1s), abs=1e-4)


def test_gold_full_name_matches_an_actor_known_by_surname(
    ex: SpacyActorExtractor, tmp_path: Path
) -> None:
    articles = _write_jsonl(
        tmp_path / "articles.jsonl",
        [{"id": "b1", "text": "President Biden signed the infrastructure bill on Friday."}],
    )
    gold = _write_jsonl(
        tmp_path / "gold.jsonl",
        [
            {"article_id": "b1", "actor": "Joe Biden", "label": "neutral"},
            {"article_id": "b1", "actor": "Hunter Smith", "label": "neutral"},  # absent
        ],
    )
    res = evaluate_stance(
        articles, gold, extractor=ex, tagger=ActorStanceTagger(VaderTargetScorer(), attributor=ex)
    )
    assert res["n_matched"] == 1 and res["coverage"] == 0.5


def test_gold_file_errors_name_the_line(tmp_path: Path, ex: SpacyActorExtractor) -> None:
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"article_id": "a", "actor": "X", "label": "good"}])
    with pytest.raises(InvalidInput, match=r"bad.jsonl:1: label"):
        read_gold(bad)
    articles = _write_jsonl(tmp_path / "a.jsonl", [{"id": "a", "text": "Some text here."}])
    missing = _write_jsonl(
        tmp_path / "g.jsonl", [{"article_id": "zzz", "actor": "X", "label": "neutral"}]
    )
    with pytest.raises(InvalidInput, match="zzz"):
        evaluate_stance(
            articles, missing, extractor=ex, tagger=ActorStanceTagger(VaderTargetScorer())
        )
