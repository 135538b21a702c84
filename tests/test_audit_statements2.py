"""Who said what and actor names, second audit: British single quotation marks, given names
and two-part surnames the NER leaves out, the non-speech senses of "claim", places the NER
tags as organisations, appositive speakers and passive speech verbs (real spaCy pipeline, no
mocks)."""

from __future__ import annotations

import pytest
from statement_helpers import analyse as _analyse
from statement_helpers import pairs as _pairs
from statement_helpers import people as _people

from storyline.models.actors import SpacyActorExtractor

# -- British single quotation marks ----------------------------------------------------------


def test_single_quotation_marks_are_quotations(ex: SpacyActorExtractor) -> None:
    # a quotation opening the sentence, its speaker after it: no statement was found
    an = _analyse(ex, "‘We will not retreat,’ Zelensky said on Tuesday.")
    assert _pairs(an.statements) == [("Zelensky", "‘We will not retreat,’")]
    assert an.statements[0].statement.quoted

    # a quotation over two sentences keeps its speaker, as with double marks
    an = _analyse(ex, "Putin said: ‘We will respond. We have no choice.’")
    assert _pairs(an.statements) == [
        ("Putin", "‘We will respond"),
        ("Putin", "We have no choice.’"),
    ]
    assert all(s.statement.quoted for s in an.statements)


def test_the_apostrophe_is_no_quotation_mark(ex: SpacyActorExtractor) -> None:
    # ’ is also the apostrophe: "Putin’s" and "voters’" neither close nor open a quotation
    an = _analyse(ex, "‘Putin’s war is a crime,’ Boris Johnson told MPs.")
    assert _pairs(an.statements) == [("Boris Johnson", "‘Putin’s war is a crime,’")]
    an = _analyse(ex, "‘It is the voters’ choice, not ours,’ Keir Starmer said.")
    assert _pairs(an.statements) == [("Keir Starmer", "‘It is the voters’ choice, not ours,’")]
    an = _analyse(ex, "Joe Biden said the Democrats’ plan would pass.")
    assert _pairs(an.statements) == [("Joe Biden", "the Democrats’ plan would pass")]
    assert not an.statements[0].statement.quoted


def test_single_marks_nested_in_a_double_quotation_do_not_close_it(
    ex: SpacyActorExtractor,
) -> None:
    # AllSides 5980: the nested ‘assault weapons’ closed the running quotation, and its
    # sentences lost their speaker
    an = _analyse(
        ex,
        "“Those arms are dangerous. Instead, the firearms deemed ‘assault weapons’ are ordinary "
        "rifles. This is an average case,” Judge Roger Benitez wrote.",
    )
    assert [p[0] for p in _pairs(an.statements)] == ["Roger Benitez"] * 3
    # a speech verb inside a quotation that stays open is the quoted voice's, not the speaker
    # the quotation closes with (AllSides 5673)
    an = _analyse(
        ex,
        "Donald Trump called the report a bombshell.\n\n“Huge findings in Arizona! However, the "
        "Fake News Media is already trying to ‘call it’ again for Biden",
    )
    assert "Fake News Media" not in [
        s.statement.speaker for s in an.statements if s.statement.text.startswith("“Huge")
    ]


@pytest.mark.parametrize(
    "text",
    [
        "‘We will not retreat,’ Zelensky said on Tuesday.",
        "‘We don’t want war,’ the Kremlin said. ‘The West has lied to us.’",
        "Putin said: ‘We will respond. We have no choice,’ and left.",
        "Keir Starmer said the voters’ choice was ‘clear’.",
    ],
)
def test_single_quoted_statements_are_sound(ex: SpacyActorExtractor, text: str) -> None:
    an = _analyse(ex, text)
    assert an.statements, text
    for s in an.statements:
        sent = s.statement.sentence
        assert sent[s.content_start : s.content_end] == s.statement.text
        assert s.statement.quoted


# -- given names and two-part surnames ----------------------------------------------------------


def test_given_names_opening_a_sentence_stay_with_the_name(ex: SpacyActorExtractor) -> None:
    # the NER finds no entity in the first sentence, and "Erdoğan" only from the second:
    # the actor was "Erdoğan", the given names lost
    an = _analyse(
        ex, "Recep Tayyip Erdoğan said Sweden must do more. Erdoğan added that Finland was welcome."
    )
    assert _people(an) == ["Recep Tayyip Erdoğan"]
    assert [p[0] for p in _pairs(an.statements)] == ["Recep Tayyip Erdoğan"] * 2
    # the NER reads "Tayyip Erdoğan", without the sentence's first word
    an = _analyse(
        ex,
        "Sweden must do more, Erdoğan said. Recep Tayyip Erdoğan added that Finland was welcome.",
    )
    assert _people(an) == ["Recep Tayyip Erdoğan"]


def test_a_two_part_surname_joins_the_full_name(ex: SpacyActorExtractor) -> None:
    an = _analyse(
        ex,
        "Andrés Manuel López Obrador said the wall was a mistake. Mr. López Obrador added that "
        "Mexico would not pay.",
    )
    assert _people(an) == ["Andrés Manuel López Obrador"]
    assert [p[0] for p in _pairs(an.statements)] == ["Andrés Manuel López Obrador"] * 2
    # tagged ORG, before the full name
    an = _analyse(
        ex,
        "The wall was a mistake, López Obrador said. Andrés Manuel López Obrador added that "
        "Mexico would not pay.",
    )
    assert [p[0] for p in _pairs(an.statements)] == ["Andrés Manuel López Obrador"] * 2
    # AllSides 5883: two actors, "Daniella Levine Cava" and "Levine Cava"
    an = _analyse(
        ex,
        "Miami-Dade Mayor Daniella Levine Cava said the search would go on. Levine Cava added "
        "that families had been told.",
    )
    assert _people(an) == ["Daniella Levine Cava"]


def test_vp_is_a_title(ex: SpacyActorExtractor) -> None:
    # AllSides 6103: "VP Kamala Harris" was an actor apart from "Kamala Harris"
    an = _analyse(
        ex, "VP Kamala Harris said the border was closed. Kamala Harris added that help would come."
    )
    assert _people(an) == ["Kamala Harris"]


# -- "claim" that takes, not says ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The Taliban claimed responsibility for the attack.",
        "Biden claimed a victory on Tuesday.",
        "Novak Djokovic claimed the title on Sunday.",
        "Responsibility for the attack was claimed by the Taliban.",
        # AllSides 5632, 5991
        "Trump has claimed executive privilege in seeking to evade the committee’s demands.",
        "Democrat Melanie Stansbury claimed a resounding victory Tuesday night in a contested "
        "special election.",
    ],
)
def test_claiming_a_thing_is_no_speech(ex: SpacyActorExtractor, text: str) -> None:
    assert not [s for s in _analyse(ex, text).statements if s.statement.verb == "claim"]


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("Trump claimed that the election was stolen.", "the election was stolen"),
        # AllSides 6016: a threat claimed is a threat alleged
        ("Belarus forced the plane to land, claiming a bomb threat.", "a bomb threat"),
        ("Biden claimed that the deal was a victory.", "the deal was a victory"),
    ],
)
def test_claiming_that_stays_speech(ex: SpacyActorExtractor, text: str, content: str) -> None:
    assert [s.statement.text for s in _analyse(ex, text).statements] == [content]


# -- a place the NER tags as an organisation -------------------------------------------------------


def test_defending_a_town_the_ner_calls_an_organisation_is_no_speech(
    ex: SpacyActorExtractor,
) -> None:
    # "Bakhmut" is ORG in the second sentence, GPE as "the city of Bakhmut" in the first
    an = _analyse(
        ex,
        "Russian forces have shelled the eastern city of Bakhmut for weeks. Ukraine defended "
        "Bakhmut for months.",
    )
    assert not [s for s in an.statements if s.statement.verb == "defend"]
    # an organisation a country stands up for is still defended in words
    an = _analyse(ex, "China defended Huawei at the WTO.")
    assert [(s.statement.speaker, s.statement.verb) for s in an.statements] == [("China", "defend")]


# -- who is speaking ------------------------------------------------------------------------------


def test_a_name_in_apposition_is_the_speaker(ex: SpacyActorExtractor) -> None:
    # the owner "Russia" was found first and spoke for Lavrov
    an = _analyse(ex, "Russia's foreign minister, Sergei Lavrov, said the talks had failed.")
    assert _pairs(an.statements) == [("Sergei Lavrov", "the talks had failed")]


def test_a_passive_speech_verb_has_no_speaker(ex: SpacyActorExtractor) -> None:
    # AllSides 6089: Scott was announced; he did not announce "for the role"
    an = _analyse(
        ex,
        "When Tim Scott was announced for the role, he said in a statement that he would be proud.",
    )
    assert [(s.statement.speaker, s.statement.verb) for s in an.statements] == [
        ("Tim Scott", "say")
    ]
    an = _analyse(ex, "Asked about the deal, Donald Trump said it was bad.")
    assert [(s.statement.speaker, s.statement.verb) for s in an.statements] == [
        ("Donald Trump", "say")
    ]


def test_the_subject_of_a_passive_speaks_in_its_coordinated_verb(
    ex: SpacyActorExtractor,
) -> None:
    # no statement: the subject was looked for as the passive's agent only
    an = _analyse(ex, "Joe Biden was asked about the deal and said it was good.")
    assert _pairs(an.statements) == [("Joe Biden", "it was good")]
    # with an agent, the one criticised is still the one who says
    an = _analyse(ex, "Joe Biden was criticised by Trump and said the criticism was unfair.")
    assert ("Joe Biden", "the criticism was unfair") in _pairs(an.statements)
