"""Actor names of unusual shape and the physical senses of speech verbs, audited on realistic
news sentences (real spaCy pipeline, no mocks)."""

from __future__ import annotations

import pytest
from statement_helpers import analyse as _analyse
from statement_helpers import pairs as _pairs
from statement_helpers import people as _people

from storyline.models.actors import SpacyActorExtractor

# -- name particles ------------------------------------------------------------------------------


def test_a_name_cut_after_its_particle_is_made_whole(ex: SpacyActorExtractor) -> None:
    # the NER reads "Ursula von der" PERSON and "Leyen" GPE: the speaker was "Leyen"
    an = _analyse(
        ex,
        "European Commission President Ursula von der Leyen said the EU would act. Von der "
        "Leyen added that sanctions were coming.",
    )
    assert [p[0] for p in _pairs(an.statements)] == ["Ursula von der Leyen"] * 2
    assert _people(an) == ["Ursula von der Leyen"]
    assert not any(a.name == "Leyen" or a.name.endswith(" der") for a in an.actors)


def test_a_lone_surname_with_its_particle_joins_the_full_name(ex: SpacyActorExtractor) -> None:
    an = _analyse(
        ex,
        "New York Mayor Bill de Blasio said schools would reopen. Mr. de Blasio added that "
        "masks were required. De Blasio said the city was ready.",
    )
    assert _people(an) == ["Bill de Blasio"]
    assert [p[0] for p in _pairs(an.statements)] == ["Bill de Blasio"] * 3

    an = _analyse(
        ex, "Marine Le Pen said France must leave. Le Pen added that the euro had failed."
    )
    assert [p[0] for p in _pairs(an.statements)] == ["Marine Le Pen"] * 2


def test_the_word_after_a_particle_is_no_surname_of_its_own(ex: SpacyActorExtractor) -> None:
    # "Salman" alone is King Salman, not his son Mohammed bin Salman
    an = _analyse(
        ex,
        "Mohammed bin Salman said the kingdom would invest. King Salman said nothing. Bin "
        "Salman added that oil prices would rise.",
    )
    assert _pairs(an.statements) == [
        ("Mohammed bin Salman", "the kingdom would invest"),
        ("Salman", "nothing"),
        ("Mohammed bin Salman", "oil prices would rise"),
    ]
    # an Arabic article is dropped as usual: "Assad" is Bashar al-Assad
    an = _analyse(ex, "Bashar al-Assad said the war was over. Assad added that Syria had won.")
    assert [p[0] for p in _pairs(an.statements)] == ["Bashar al-Assad"] * 2


# -- people the NER tags as organisations --------------------------------------------------------


def test_a_name_the_ner_tags_an_organisation_is_a_person_by_its_surname(
    ex: SpacyActorExtractor,
) -> None:
    # "Recep Tayyip Erdoğan" is ORG here (with "Erdogan" it is PERSON), "Erdoğan" PERSON
    an = _analyse(
        ex,
        "The talks failed, Recep Tayyip Erdoğan said on Tuesday. Later, Erdoğan said Sweden "
        "must do more.",
    )
    assert _people(an) == ["Recep Tayyip Erdoğan"]
    assert [p[0] for p in _pairs(an.statements)] == ["Recep Tayyip Erdoğan"] * 2
    assert not [a for a in an.actors if a.type == "ORG"]


def test_a_name_the_ner_tags_an_organisation_is_a_person_by_its_first_name(
    ex: SpacyActorExtractor,
) -> None:
    an = _analyse(ex, "Hakeem Jeffries said the vote would pass.")
    assert [(a.name, a.type) for a in an.actors] == [("Hakeem Jeffries", "PERSON")]
    # organisations opening with a first name stay organisations
    an = _analyse(
        ex, "Al Jazeera reported that the Marine Corps had left the base in Helmand province."
    )
    assert {a.name: a.type for a in an.actors}["Al Jazeera"] == "ORG"
    assert {a.name: a.type for a in an.actors}["Marine Corps"] == "ORG"


def test_a_person_glued_to_a_title_or_an_institution_is_cut_out(
    ex: SpacyActorExtractor,
) -> None:
    # the NER reads "the House Nancy Pelosi" and "Defense Lloyd Austin" as organisations
    an = _analyse(
        ex,
        "The speaker of the House Nancy Pelosi said the vote would happen. Nancy Pelosi added "
        "that the House was ready.",
    )
    assert [p[0] for p in _pairs(an.statements)] == ["Nancy Pelosi"] * 2
    an = _analyse(
        ex,
        "Secretary of Defense Lloyd Austin wrote that the force must be ready. Lloyd Austin "
        "told reporters that vaccines were safe.",
    )
    assert [p[0] for p in _pairs(an.statements)] == ["Lloyd Austin"] * 2
    assert _people(an) == ["Lloyd Austin"]


# -- one actor, one statement ----------------------------------------------------------------------


def test_a_subject_naming_one_actor_twice_speaks_once(ex: SpacyActorExtractor) -> None:
    # "Johnson & Johnson" parses as two coordinated subjects, both the company
    an = _analyse(ex, "Johnson & Johnson said the vaccine was safe and effective.")
    assert _pairs(an.statements) == [("Johnson & Johnson", "the vaccine was safe and effective")]


# -- physical senses of speech verbs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Russia attacked Ukraine on Thursday, the defence ministry in Kyiv said.",
        "The Russian army attacked the city of Kharkiv overnight.",
        "Samuel Cassidy, 57, attacked San Jose’s VTA Light Rail Facility near the airport.",
        "Israel slammed the Gaza Strip with airstrikes on Saturday.",
        "Ukraine defended the city of Bakhmut for months.",
        "Officials said Israel had attacked Iranian interests in Syria at least 200 times.",
        "Los Angeles County requires masks, and the state of Hawaii has maintained a similar "
        "requirement.",
        "Joe Biden, unlike his predecessors, has maintained his skepticism of Vladimir Putin.",
    ],
)
def test_physical_senses_report_no_speech(ex: SpacyActorExtractor, text: str) -> None:
    an = _analyse(ex, text)
    assert not [
        s for s in an.statements if s.statement.verb in {"attack", "defend", "slam", "maintain"}
    ]


@pytest.mark.parametrize(
    ("text", "speaker", "verb"),
    [
        (
            "President Donald Trump attacked Joe Biden over trade on Monday.",
            "Donald Trump",
            "attack",
        ),
        (
            "Joe Biden defended the withdrawal of U.S. forces from Afghanistan.",
            "Joe Biden",
            "defend",
        ),
        ("China slammed the United States over its Taiwan policy.", "China", "slam"),
        ("Senator Ted Cruz maintained that he was innocent.", "Ted Cruz", "maintain"),
        ("Senator Ted Cruz maintained his innocence.", "Ted Cruz", "maintain"),
    ],
)
def test_verbal_senses_stay_speech(
    ex: SpacyActorExtractor, text: str, speaker: str, verb: str
) -> None:
    an = _analyse(ex, text)
    assert (speaker, verb) in [(s.statement.speaker, s.statement.verb) for s in an.statements]
