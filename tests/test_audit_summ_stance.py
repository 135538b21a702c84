"""Regression tests from an audit of the summariser and stance runtime (edge inputs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from storyline.models.errors import InvalidInput, ModelUnavailable
from storyline.models.registry import STANCE, SUMMARISER, Manifest
from storyline.models.stance import PORTRAYAL_RULE, ActorStanceTagger, aggregate
from storyline.models.summariser import ExtractiveSummariser, normalise_ws, split_sentences
from storyline.models.types import Actor, ActorMention, Article, Evidence

# --------------------------------------------------------------------------- summariser

# Text hard-wrapped at a fixed width (plain-text feeds, e-mail newsletters): a line break
# inside a sentence, with a capitalised word after it.
_WRAPPED = ("The storm knocked out power to thousands of homes in the region, according to\n"
            "Duke Energy, which said crews would work through the night to restore service.\n"
            "Residents were told to stay indoors until the winds subside on Wednesday.")


def _sentences(text: str) -> list[tuple[str, bool]]:
    return [(normalise_ws(text[s:e]), c) for s, e, c in split_sentences(text)]


def test_a_hard_wrapped_line_does_not_cut_a_sentence_in_two() -> None:
    assert _sentences(_WRAPPED) == [
        ("The storm knocked out power to thousands of homes in the region, according to "
         "Duke Energy, which said crews would work through the night to restore service.", True),
        ("Residents were told to stay indoors until the winds subside on Wednesday.", True),
    ]
    assert _sentences("The bill, passed by the\r\nSenate on Monday, now goes to the House.") \
        == [("The bill, passed by the Senate on Monday, now goes to the House.", True)]
    # A line that ends a heading, a byline or a sentence still ends its piece.
    assert _sentences("Why it matters\nThe court ruled on Monday.\nBy Jane Doe\nIt was final.") \
        == [("Why it matters", False), ("The court ruled on Monday.", True),
            ("By Jane Doe", False), ("It was final.", True)]


@pytest.fixture(scope="module")
def summariser(models_dir: Path) -> ExtractiveSummariser:
    if Manifest(models_dir).get(SUMMARISER.name) is None:
        pytest.skip("summariser not built: run `storyline models train-summariser`")
    return ExtractiveSummariser(models_dir)


def test_a_summary_of_hard_wrapped_text_passes_no_fragment_off_as_a_sentence(
    summariser: ExtractiveSummariser,
) -> None:
    arts = [Article(id="a", text=_WRAPPED),
            Article(id="b", text="Duke Energy said crews would work through the night to "
                                 "restore service to the region.")]
    summary = summariser.summarise(arts, 60)
    fragment = "Duke Energy, which said crews would work through the night to restore service."
    assert fragment not in {s.text for s in summary.sentences}
    assert summary.headline != fragment
    for s in summary.sentences:
        src = normalise_ws({a.id: a for a in arts}[s.article_ids[0]].text)
        # a whole sentence of its source: at its start or right after a sentence's end
        at = src.index(s.text)
        assert at == 0 or src[:at].rstrip()[-1] in ".!?", s.text


# --------------------------------------------------------------------------- stance

_EV = [Evidence("a", "x"), Evidence("a", "y")]


@pytest.mark.parametrize("weights", [[float("nan"), 1.0], [float("inf"), 1.0]])
def test_aggregate_refuses_non_finite_weights(weights: list[float]) -> None:
    with pytest.raises(InvalidInput):
        aggregate([[0.1, 0.2, 0.7], [0.6, 0.2, 0.2]], _EV, weights=weights)


def test_aggregate_refuses_non_finite_probabilities() -> None:
    for bad in (np.nan, np.inf):
        with pytest.raises(InvalidInput):
            aggregate([[bad, 0.2, 0.7], [0.6, 0.2, 0.2]], _EV, rule=PORTRAYAL_RULE)


class _NanScorer:
    def predict(self, items: Sequence[tuple[str, int, int]]) -> npt.NDArray[np.float32]:
        return np.full((len(items), 3), np.nan, dtype=np.float32)


class _NoSpeech:
    def attribute(self, articles: Sequence[Article], actors: Sequence[Actor] | None = None,
                  ) -> list[object]:
        return []


def test_a_scorer_returning_nan_is_named_not_turned_into_a_nan_stance() -> None:
    sentence = "NATO said Putin was lying."
    actor = Actor(name="NATO", type="ORG",
                  mentions=(ActorMention("a", sentence, 0, 4, "NATO"),), article_ids=("a",))
    tagger = ActorStanceTagger(_NanScorer(), attributor=_NoSpeech())  # type: ignore[arg-type]
    with pytest.raises(ModelUnavailable):
        tagger.tag([actor], [Article(id="a", text=sentence)])


def test_a_lone_surrogate_in_a_sentence_is_scored_not_a_type_error(models_dir: Path) -> None:
    from storyline.models.sentiment import TargetSentimentModel

    if Manifest(models_dir).get(STANCE.name) is None:
        pytest.skip("stance model not built: run `storyline models build --only stance`")
    model = TargetSentimentModel(models_dir, threads=1)
    # json.loads('"\\ud800"') gives a lone surrogate: a valid str that the tokenizer refused
    probs = model.predict([("NATO said \ud800 Putin was lying.", 0, 4)])
    np.testing.assert_allclose(probs, model.predict([("NATO said \ufffd Putin was lying.", 0, 4)]))
