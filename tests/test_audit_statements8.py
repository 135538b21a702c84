"""Who said what, eighth audit: a clause-only speech verb ("note", "declare", "write", ...)
is speech with a quotation only when the quotation is what it reports, not a scare-quoted
phrase inside its object (real spaCy pipeline, no mocks)."""

from __future__ import annotations

from statement_helpers import pairs as _pairs
from statement_helpers import said as _said

from storyline.models.actors import SpacyActorExtractor


def test_scare_quote_inside_an_object_is_no_statement(ex: SpacyActorExtractor) -> None:
    # AllSides story 5889: "Cuomo declare | a state of “disaster emergency” over gun violence"
    sts = _said(
        ex,
        "Gov. Ron DeSantis declared a state of “disaster emergency” in the county on Monday. "
        "Joe Biden noted a rise in “gig work” across the country.",
    )
    assert _pairs(sts) == []


def test_a_quotation_the_verb_reports_is_still_a_statement(ex: SpacyActorExtractor) -> None:
    sts = _said(
        ex,
        "“We will win this fight,” Joe Biden added. "
        "Joe Biden wrote of “a deep sense of betrayal among voters.”",
    )
    assert [(s.statement.speaker, s.statement.verb) for s in sts] == [
        ("Joe Biden", "add"),
        ("Joe Biden", "write"),
    ]


def test_a_clause_parsed_as_an_open_complement_is_a_statement(ex: SpacyActorExtractor) -> None:
    # AllSides story 5626: kept before only because the sentence held a scare quote
    sts = _said(
        ex,
        "The agency will target unscrupulous employers, whom Alejandro Mayorkas noted often "
        "pay workers substandard wages.",
    )
    assert _pairs(sts) == [("Alejandro Mayorkas", "whom … often pay workers substandard wages")]
