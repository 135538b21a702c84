"""Who said what and actor names, fourth audit: single guillemets ‹…›, a role noun a
headline capitalises before a name, and defending a town the NER tags as an organisation
against armed forces (real spaCy pipeline, no mocks)."""

from __future__ import annotations

import pytest
from statement_helpers import analyse as _analyse
from statement_helpers import pairs as _pairs
from statement_helpers import people as _people

from storyline.models.actors import SpacyActorExtractor
from storyline.models.types import Article

# -- single guillemets ‹…› ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        # the tokenizer glued ‹ and › to the words: no quotation, no statement at all
        (
            "‹We will not retreat,› Vladimir Putin said.",
            [("Vladimir Putin", "‹We will not retreat,›")],
        ),
        (
            "‹We will not retreat›, said Emmanuel Macron.",
            [("Emmanuel Macron", "‹We will not retreat›")],
        ),
        # a quotation over two sentences keeps its speaker and its closing mark
        (
            "Putin said: ‹We will respond. We have no choice.›",
            [("Putin", "‹We will respond"), ("Putin", "We have no choice.›")],
        ),
        # ’ inside stays the apostrophe
        (
            "‹Putin’s war is a crime,› Boris Johnson told MPs.",
            [("Boris Johnson", "‹Putin’s war is a crime,›")],
        ),
    ],
)
def test_single_guillemets_are_quotations(
    ex: SpacyActorExtractor, text: str, pairs: list[tuple[str, str]]
) -> None:
    an = _analyse(ex, text)
    assert _pairs(an.statements) == pairs
    for s in an.statements:
        assert s.statement.quoted
        assert s.statement.sentence[s.content_start : s.content_end] == s.statement.text
    assert not [a.name for a in an.actors if set(a.name) & set("‹›")]


def test_a_british_quotation_inside_single_guillemets_does_not_close_them(
    ex: SpacyActorExtractor,
) -> None:
    # the ’ closing the inner ‘…’ closed the running ‹ quotation, and its last sentences
    # lost their speaker
    an = _analyse(
        ex,
        "‹Those arms are dangerous. Instead, the firearms deemed ‘assault weapons’ are "
        "ordinary rifles. This is an average case,› Judge Roger Benitez wrote.",
    )
    assert [p[0] for p in _pairs(an.statements)] == ["Roger Benitez"] * 3


def test_a_lone_closing_guillemet_is_no_quotation(ex: SpacyActorExtractor) -> None:
    # › as a separator ("Home › News") neither opens nor closes a quotation
    an = _analyse(ex, "Home › News › World\n\nJoe Biden said the plan would pass.")
    assert _pairs(an.statements) == [("Joe Biden", "the plan would pass")]
    assert not an.statements[0].statement.quoted


# -- a role noun a headline capitalises before a name -----------------------------------------


def test_a_headline_role_noun_is_no_part_of_the_name(ex: SpacyActorExtractor) -> None:
    # AllSides 5795: the actor was named "Accuser Brittany Commisso"
    arts = [
        Article(
            id="center",
            title="Andrew Cuomo: Accuser Brittany Commisso says governor broke law",
            text="An executive assistant to New York Governor Andrew Cuomo has broken her "
            "anonymity.\n\nBrittany Commisso's claims were first detailed in a report which "
            "found Mr Cuomo sexually harassed 11 women.",
        ),
        Article(
            id="left",
            title="‘What He Did to Me Was a Crime’: Cuomo Accuser Brittany Commisso Speaks Up",
            text="Brittany Commisso, the woman who last week filed a criminal complaint "
            "against New York Gov. Andrew Cuomo, is going public.",
        ),
    ]
    an = ex.analyse(arts)
    assert _people(an) == ["Andrew Cuomo", "Brittany Commisso"]
    assert _pairs(an.statements) == [("Brittany Commisso", "governor broke law")]
    commisso = next(a for a in an.actors if a.name == "Brittany Commisso")
    assert not [m.text for m in commisso.mentions if "Accuser" in m.text]


def test_a_given_name_the_text_writes_stays_in_the_name(ex: SpacyActorExtractor) -> None:
    # "Holly" is also a common noun, but the text writes the full name with it
    an = ex.analyse(
        [
            Article(
                id="a1",
                title="Holly Jackson Lee wins the primary in Texas",
                text="Holly Jackson Lee won the primary on Tuesday. Jackson Lee said she was "
                "grateful to her voters.",
            )
        ]
    )
    assert _people(an) == ["Holly Jackson Lee"]
    holly = next(a for a in an.actors if a.name == "Holly Jackson Lee")
    assert [m.text for m in holly.mentions if m.in_title] == ["Holly Jackson Lee"]


# -- defending a town against armed forces -----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # "Bakhmut" and "Soledar" are ORG to the small model, and nothing else in the story
        # names them as places
        "Ukraine defended Bakhmut for months against Russian troops.",
        "Ukraine defended Soledar against Russian shelling.",
        "Ukraine defended Bakhmut against Russian forces.",
    ],
)
def test_defending_against_armed_forces_is_no_speech(ex: SpacyActorExtractor, text: str) -> None:
    assert not [s for s in _analyse(ex, text).statements if s.statement.verb == "defend"]


@pytest.mark.parametrize(
    ("text", "speaker"),
    [
        # a stand taken in words, against someone armed
        ("Israel defended the strike against Hamas militants.", "Israel"),
        # an organisation defended against what is no armed force
        ("China defended Huawei against US sanctions.", "China"),
    ],
)
def test_defending_a_decision_or_against_sanctions_stays_speech(
    ex: SpacyActorExtractor, text: str, speaker: str
) -> None:
    sts = _analyse(ex, text).statements
    assert [(s.statement.speaker, s.statement.verb) for s in sts] == [(speaker, "defend")]


def test_vader_reads_words_inside_single_guillemets() -> None:
    # VADER strips only ASCII punctuation: "‹terrible›" missed its lexicon entry
    from storyline.models.stance import VaderTargetScorer

    s = "Merkel called the plan ‹terrible› on Monday."
    probs = VaderTargetScorer().predict([(s, 0, 6)])
    assert probs[0][0] > 0.3
