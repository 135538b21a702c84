"""Who said what and actor names, fifth audit: a pronoun inside a quotation is the quoted
voice's, not evidence about the people the narrative names around it; content with no word
of substance; an indefinite article the NER takes into a name (real spaCy pipeline, no
mocks)."""

from __future__ import annotations

import pytest
from statement_helpers import analyse as _analyse
from statement_helpers import pairs as _pairs
from statement_helpers import people as _people

from storyline.models.actors import SpacyActorExtractor

# -- pronouns inside quotations ----------------------------------------------------------------


def test_a_quoted_he_does_not_make_the_person_before_it_male(ex: SpacyActorExtractor) -> None:
    # the quoted "he" (the governor) made Brittany Commisso male, so "Ms Commisso" could
    # not join her and became an actor of its own (AllSides story 5795)
    an = _analyse(
        ex,
        "Brittany Commisso filed a criminal complaint against the governor last week.\n\n"
        '"What he did to me was a crime," Ms Commisso said.',
    )
    assert _people(an) == ["Brittany Commisso"]
    assert _pairs(an.statements) == [("Brittany Commisso", '"What he did to me was a crime,"')]


def test_a_pronoun_outside_quotations_still_tells_the_gender(ex: SpacyActorExtractor) -> None:
    # the same evidence outside a quotation keeps "Mr Commisso" off a woman's full name
    an = _analyse(
        ex,
        "Brittany Commisso filed a criminal complaint against the governor last week. "
        "She said the complaint was true. Mr Commisso declined to comment.",
    )
    assert _people(an) == ["Brittany Commisso", "Commisso"]


def test_a_quoted_he_is_not_the_quoted_voice_itself(ex: SpacyActorExtractor) -> None:
    # "He told me" went to Brittany Commisso, the only person in reach outside the
    # quotation, who is the one speaking about him
    an = _analyse(
        ex,
        "Brittany Commisso filed a complaint against the governor. "
        '"He told me that nobody would believe me. He warned me not to talk," '
        "Ms Commisso said.",
    )
    assert [s.statement.verb for s in an.statements] == ["", "say"]
    assert {s.statement.speaker for s in an.statements} == {"Brittany Commisso"}


def test_a_quoted_he_is_not_a_person_named_before_the_quotation(
    ex: SpacyActorExtractor,
) -> None:
    # the narrative's subject before the quotation is not who the quoted voice talks about
    an = _analyse(
        ex,
        'Donald Trump met Joe Biden on Monday. "He told me that the deal was dead," she said.',
    )
    assert not [s for s in an.statements if s.statement.verb == "tell"]


def test_a_quoted_he_resolves_to_a_person_named_in_the_quotation(
    ex: SpacyActorExtractor,
) -> None:
    an = _analyse(
        ex,
        'Brittany Commisso spoke on Monday. "Andrew Cuomo lied again. He said that I made '
        'it up," Ms Commisso said.',
    )
    assert ("Andrew Cuomo", 'I made it up,"') in _pairs(an.statements)
    assert _people(an) == ["Andrew Cuomo", "Brittany Commisso"]


def test_a_name_quoted_before_a_he_is_not_the_one_speaking(ex: SpacyActorExtractor) -> None:
    # "he" went to Brittany Commisso, named inside the quotation before it: she was made
    # the speaker of "I never touched Brittany Commisso" and male, so "Ms Commisso" split
    an = _analyse(
        ex,
        'Andrew Cuomo resigned in August. "I never touched Brittany Commisso," he said. '
        "Ms Commisso disagreed.",
    )
    assert _pairs(an.statements) == [("Andrew Cuomo", '"I never touched Brittany Commisso,"')]
    assert _people(an) == ["Andrew Cuomo", "Brittany Commisso"]


# -- statements that report nothing ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # the article's excerpt ends in the middle of the reported clause
        "Analisa Torres dismissed the case. Torres said in a ruling Monday that",
        "Nebraska Governor Pete Ricketts announced last week that he would be",
        # a pronoun standing for what was said
        "Senate Republicans offered $928 billion, far short of what the White House has proposed.",
    ],
)
def test_content_without_a_word_of_substance_is_no_statement(
    ex: SpacyActorExtractor, text: str
) -> None:
    assert not [s for s in _analyse(ex, text).statements if s.statement.verb != "dismiss"]


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        ('"That was it," Mr. Biden said.', [("Biden", '"That was it,"')]),
        ('"We will," Mr. Biden said.', [("Biden", '"We will,"')]),
        ('Mr. Biden said: "It is."', [("Biden", '"It is."')]),
        # an indefinite pronoun says something
        (
            "Mr. Biden said the plan would pass. Mr. Trump denied everything.",
            [("Biden", "the plan would pass"), ("Trump", "everything")],
        ),
    ],
)
def test_a_short_quotation_stays_a_statement(
    ex: SpacyActorExtractor, text: str, pairs: list[tuple[str, str]]
) -> None:
    assert _pairs(_analyse(ex, text).statements) == pairs


# -- names ---------------------------------------------------------------------------------------


def test_an_indefinite_article_is_no_part_of_a_name(ex: SpacyActorExtractor) -> None:
    # the NER took "a" into the entity: "a George W. Bush" was an actor, and "a White
    # House" one apart from the White House
    an = _analyse(
        ex,
        "“The proper origination point for the DACA program was, and is, Congress,” Judge "
        "Hanen, a George W. Bush appointee, wrote. The privilege can be asserted by a White "
        "House to keep deliberations private. The White House said it disagreed.",
    )
    names = [a.name for a in an.actors]
    assert "George W. Bush" in names
    assert [n for n in names if "White House" in n] == ["the White House"]
    assert not [n for n in names if n.split()[0] in {"a", "an"}]


def test_a_speech_verb_inside_the_quotation_is_not_the_one_it_closes_with(
    ex: SpacyActorExtractor,
) -> None:
    # the quotation's first sentence went to Cuomo, the speaker of the nested "He said"
    an = _analyse(
        ex,
        "Brittany Commisso spoke to reporters on Monday.\n\n"
        '"Andrew Cuomo lied to all of us. He said that I was lying," Ms Commisso said.',
    )
    speakers = {st.statement.text: st.statement.speaker for st in an.statements}
    assert speakers.get('"Andrew Cuomo lied to all of us.') == "Brittany Commisso"
    assert speakers.get('He said that I was lying,"') == "Brittany Commisso"
