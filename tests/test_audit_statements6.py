"""Who said what, sixth audit: a pronoun's speaker is the subject of a main clause, not of a
clause inside it; people the NER tags as works or products; newsletter lead-ins ("Why it
matters:") kept out of statements (real spaCy pipeline, no mocks)."""

from __future__ import annotations

from statement_helpers import analyse as _analyse
from statement_helpers import pairs as _pairs
from statement_helpers import people as _people
from statement_helpers import said as _said

from storyline.models.actors import SpacyActorExtractor

# -- pronouns: subject of the main clause ------------------------------------------------------


def test_they_is_not_the_subject_of_an_embedded_clause(ex: SpacyActorExtractor) -> None:
    # "they" (the U.S. officials) went to China, the only grammatical subject of the
    # sentence before, but only of the clause the officials said (AllSides story 5749)
    sts = _said(
        ex,
        "U.S. officials said only China can help solve questions about the true origins of "
        "the virus. \"China's cooperation most likely would be needed to reach a conclusive "
        'assessment of the origins of COVID-19," they said.',
    )
    assert [s.statement.speaker for s in sts] == ["United States", "United States"]


def test_it_still_takes_the_subject_of_the_main_clause(ex: SpacyActorExtractor) -> None:
    sts = _said(ex, "Russia said Ukraine was lying about the talks. It said the West was to blame.")
    assert _pairs(sts) == [
        ("Russia", "Ukraine was lying about the talks"),
        ("Russia", "the West was to blame"),
    ]


def test_an_embedded_subject_alone_leaves_the_pronoun_ambiguous(
    ex: SpacyActorExtractor,
) -> None:
    # neither Germany nor France is the subject of the main clause: no guess
    sts = _said(
        ex,
        "The report found that France had blocked the deal with Germany. "
        "It said the deal was dead.",
    )
    assert _pairs(sts) == []


# -- people the NER tags with a label of no actor ----------------------------------------------


def test_a_person_tagged_as_a_work_of_art_speaks(ex: SpacyActorExtractor) -> None:
    # the small model reads "Nancy Pelosi" after a quotation as WORK_OF_ART: no actor, no
    # statement
    an = _analyse(ex, '"We will not back down on this bill," Nancy Pelosi said.')
    assert _people(an) == ["Nancy Pelosi"]
    assert _pairs(an.statements) == [("Nancy Pelosi", '"We will not back down on this bill,"')]


def test_a_surname_tagged_as_a_work_of_art_joins_the_full_name(
    ex: SpacyActorExtractor,
) -> None:
    # AllSides story 5705: "Menendez told Blinken" with "Menendez" a WORK_OF_ART
    an = _analyse(
        ex,
        '"The execution of the U.S. withdrawal was clearly and fatally flawed," Menendez '
        "told Blinken. Sen. Bob Menendez chairs the committee.",
    )
    assert "Bob Menendez" in _people(an)
    assert [s.statement.speaker for s in an.statements] == ["Bob Menendez"]


def test_a_work_named_after_a_person_stays_no_person(ex: SpacyActorExtractor) -> None:
    an = _analyse(
        ex,
        "Joe Rogan interviewed the doctor. On Wednesday's installment of \"The Joe Rogan "
        'Experience," Rogan grilled the doctor.',
    )
    assert _people(an) == ["Joe Rogan"]
    assert all(a.name != "The Joe Rogan Experience" for a in an.actors)


# -- newsletter lead-ins -----------------------------------------------------------------------

_AXIOS = (
    "President Biden will not appoint his own commission, White House officials tell Axios."
    "\n\nWhy it matters: Some House Democrats suggested Biden create a presidential commission "
    "after Senate Republicans blocked an independent panel. This decision signals his "
    "preference for House Speaker Nancy Pelosi to take the lead."
    "\n\nWhat they're saying:\u00a0\u201cCongress was attacked on that day, and President "
    "Biden agrees with Speaker Pelosi.\u201d"
)


def test_a_lead_in_is_not_part_of_the_content(ex: SpacyActorExtractor) -> None:
    # AllSides story 5985: "Why it matters … Biden create a presidential commission"
    sts = _said(ex, _AXIOS)
    assert _pairs(sts)[1] == (
        "Democrats",
        "Biden create a presidential commission after Senate Republicans blocked an "
        "independent panel",
    )
    assert all("matters" not in s.statement.sentence for s in sts)


def test_a_lead_in_gives_no_speaker(ex: SpacyActorExtractor) -> None:
    # "What they're saying: “…”" was "House" (of "House Speaker") saying the quotation
    sts = _said(ex, _AXIOS)
    assert [s.statement.speaker for s in sts] == ["the White House", "Democrats"]


def test_a_speaker_before_a_colon_is_no_lead_in(ex: SpacyActorExtractor) -> None:
    # a name or a clause before the colon introduces the speaker's words
    sts = _said(
        ex,
        "The senator spoke on Monday.\n\nTrump said: \u201cWe will win the election.\u201d"
        "\n\nHe said: \u201cThe bill is dead.\u201d",
    )
    assert [(s.statement.speaker, s.statement.sentence) for s in sts] == [
        ("Trump", "Trump said: \u201cWe will win the election.\u201d"),
        ("Trump", "He said: \u201cThe bill is dead.\u201d"),
    ]
