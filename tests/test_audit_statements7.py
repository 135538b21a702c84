"""Who said what, seventh audit: "declare" with only an object is an act, not speech; "they"
after a sentence about a plural group that is no actor; a lone surname the NER tags NORP
(real spaCy pipeline, no mocks)."""

from __future__ import annotations

from statement_helpers import analyse as _analyse
from statement_helpers import pairs as _pairs
from statement_helpers import said as _said

from storyline.models.actors import SpacyActorExtractor

# -- "declare": speech with a clause, a quotation or a predicate, not with an object alone -----


def test_declaring_an_emergency_is_no_statement(ex: SpacyActorExtractor) -> None:
    # AllSides story 5921: "DeSantis declare | the emergency"
    sts = _said(
        ex,
        "Gov. Ron DeSantis on Thursday declared a state of emergency in Miami-Dade County. "
        "The federal government was ready to help once Ron DeSantis formally declared the "
        "emergency. Eric Adams declared victory in the primary.",
    )
    assert _pairs(sts) == []


def test_declaring_that_or_a_predicate_is_still_a_statement(ex: SpacyActorExtractor) -> None:
    sts = _said(
        ex,
        "Joe Biden declared Tuesday he is sticking to his deadline. "
        "China has declared all cryptocurrency transactions illegal. "
        "Joe Biden declared the pandemic over in an interview.",
    )
    assert [(s.statement.speaker, s.statement.verb) for s in sts] == [
        ("Joe Biden", "declare"),
        ("China", "declare"),
        ("Joe Biden", "declare"),
    ]


# -- "they" after a plural common noun -----------------------------------------------------------


def test_they_after_a_plural_group_is_no_older_actor(ex: SpacyActorExtractor) -> None:
    # AllSides story 5935: "They" are the student athletes, not the Supreme Court
    sts = _said(
        ex,
        "The Supreme Court ruled Monday that the NCAA has illegally restricted benefits. "
        "The case was brought by current and former student athletes. "
        "They sued the NCAA, claiming that the rules violated antitrust laws.",
    )
    assert _pairs(sts) == []


def test_they_after_a_plural_subject_naming_an_actor_resolves(ex: SpacyActorExtractor) -> None:
    # "U.S. officials" names the United States: the plural noun is that actor
    sts = _said(
        ex,
        "Russia announced new drills. U.S. officials met on Monday. "
        "They said the drills were a threat.",
    )
    assert _pairs(sts)[-1] == ("United States", "the drills were a threat")


# -- a lone surname the NER tags NORP ------------------------------------------------------------


def test_a_surname_tagged_as_a_group_joins_the_full_name(ex: SpacyActorExtractor) -> None:
    # AllSides story 5797: "Beckham reportedly explained" (NORP) was an actor "Beckham"
    # of its own, apart from the person named in full before
    an = _analyse(
        ex,
        "Rapper Trap Beckham and his manager posted photos from the party. "
        '"Had to delete everything due to the rules," Beckham reportedly explained.',
    )
    assert [(a.name, a.type) for a in an.actors] == [("Rapper Trap Beckham", "PERSON")]
    assert [s.statement.speaker for s in an.statements] == ["Rapper Trap Beckham"]


def test_a_fauci_tagged_as_a_group_is_fauci(ex: SpacyActorExtractor) -> None:
    # AllSides story 6052: "wrote Fauci" (NORP)
    an = _analyse(
        ex,
        "Anthony Fauci spoke on CNN on Sunday. Daszak and others wrote Fauci personally to "
        "thank him.",
    )
    assert "Fauci" not in [a.name for a in an.actors]
    assert next(a for a in an.actors if a.name == "Anthony Fauci").type == "PERSON"


def test_group_words_stay_groups_beside_people(ex: SpacyActorExtractor) -> None:
    an = _analyse(
        ex,
        "Democrats said the bill would pass. Sen. Joe Manchin opposed it. "
        "Republicans said it would fail.",
    )
    assert sorted((a.name, a.type) for a in an.actors) == [
        ("Democrats", "NORP"),
        ("Joe Manchin", "PERSON"),
        ("Republicans", "NORP"),
    ]
