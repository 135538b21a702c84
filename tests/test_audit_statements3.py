"""Who said what, third audit: statements name their actors by index, headline mentions
flagged by the extractor, a name in apposition to an organisation inside the speaker's
phrase, parenthetical participles, and low quotation marks „…“ / ‚…‘ (real spaCy pipeline
and the VADER scorer, no mocks)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from statement_helpers import analyse as _analyse
from statement_helpers import pairs as _pairs

from storyline.models.actors import AttributedStatement, SpacyActorExtractor
from storyline.models.stance import ActorStanceTagger, VaderTargetScorer
from storyline.models.types import Article


def _verbs(sts: list[AttributedStatement]) -> list[tuple[str, str]]:
    return [(s.statement.speaker, s.statement.verb) for s in sts]


# -- statements say which actor speaks and which is spoken of ---------------------------------


def test_statements_name_the_given_actors_by_index(ex: SpacyActorExtractor) -> None:
    art = Article(
        id="a1",
        title="",
        text="Mr. Johnson praised Mrs. Johnson on Monday. "
        "Mrs. Johnson accused Mr. Johnson of lying.",
    )
    actors = ex.extract([art])
    # a caller may show both as "Johnson": the names then cannot tell them apart
    shown = [replace(a, name="Johnson") for a in actors]
    mr = next(n for n, a in enumerate(actors) if a.name == "Mr. Johnson")
    mrs = next(n for n, a in enumerate(actors) if a.name == "Mrs. Johnson")
    sts = ex.attribute([art], shown)
    assert [(s.speaker_index, [t.actor_index for t in s.targets]) for s in sts] == [
        (mr, [mrs]),
        (mrs, [mr]),
    ]
    assert {s.statement.speaker for s in sts} == {"Johnson"}


def test_analysed_statements_index_the_storys_own_actors(ex: SpacyActorExtractor) -> None:
    an = _analyse(
        ex,
        "Marines praised the Pentagon. The Marines said the Pentagon was slow. "
        "Vladimir Putin accused NATO of lying.",
    )
    assert an.statements
    for s in an.statements:
        assert s.speaker_index is not None
        assert an.actors[s.speaker_index].name == s.statement.speaker
        for t in s.targets:
            assert t.actor_index is not None and an.actors[t.actor_index].name == t.actor
    # the two "Marines" (the NER's NORP and ORG) each speak as themselves
    marines = {
        an.actors[s.speaker_index].type
        for s in an.statements
        if s.speaker_index is not None and s.statement.speaker == "Marines"
    }
    assert marines == {"NORP", "ORG"}


def test_no_index_without_actors_given(ex: SpacyActorExtractor) -> None:
    (st,) = ex.attribute([Article(id="a1", title="", text="Vladimir Putin accused NATO of lying.")])
    assert st.speaker_index is None and [t.actor_index for t in st.targets] == [None]


# -- headline mentions are the extractor's, not a text match -----------------------------------


def test_a_kicker_line_with_headline_words_is_no_headline_mention(ex: SpacyActorExtractor) -> None:
    # "Iran" over the body is whole words of the headline: it weighed double as one
    art = Article(
        id="a",
        title="Iran denies attack on tanker",
        text="Iran\n\nIran said the report was a terrible lie.",
    )
    actors = ex.extract([art])
    (iran,) = [a for a in actors if a.name == "Iran"]
    assert [(m.sentence, m.in_title) for m in iran.mentions] == [
        ("Iran denies attack on tanker", True),
        ("Iran", False),
        ("Iran said the report was a terrible lie.", False),
    ]
    scorer = VaderTargetScorer()
    stances = ActorStanceTagger(scorer, attributor=ex).tag(actors, [art])
    (st,) = [s for s in stances if s.actor.name == "Iran"]
    p = scorer.predict([(m.sentence, m.start, m.end) for m in iran.mentions])
    s = p[:, 2] - p[:, 0]
    assert s[0] != 0 and s[2] != 0
    assert st.portrayal.overall.score == pytest.approx((2 * s[0] + s[1] + s[2]) / 4, abs=1e-4)
    # a mention made without the flag (by hand, another extractor) is judged by its text
    unflagged = [
        replace(a, mentions=tuple(replace(m, in_title=None) for m in a.mentions)) for a in actors
    ]
    (st,) = [
        x
        for x in ActorStanceTagger(scorer, attributor=ex).tag(unflagged, [art])
        if x.actor.name == "Iran"
    ]
    assert st.portrayal.overall.score == pytest.approx((2 * s[0] + 2 * s[1] + s[2]) / 5, abs=1e-4)


# -- who is speaking ------------------------------------------------------------------------------


def test_a_name_in_apposition_to_an_organisation_speaks(ex: SpacyActorExtractor) -> None:
    # the parser hangs "Dmitry Peskov" on "the Kremlin": the Kremlin spoke for Peskov
    an = _analyse(
        ex,
        "A spokesperson for the Kremlin, Dmitry Peskov, told reporters that the talks had failed.",
    )
    assert _pairs(an.statements) == [("Dmitry Peskov", "the talks had failed")]
    an = _analyse(
        ex, "According to a spokesperson for the Kremlin, Dmitry Peskov, the talks had failed."
    )
    assert [p[0] for p in _pairs(an.statements)] == ["Dmitry Peskov"]
    # without a name the organisation still speaks
    an = _analyse(ex, "A spokesperson for the Kremlin told reporters that the talks had failed.")
    assert [p[0] for p in _pairs(an.statements)] == ["the Kremlin"]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        # "asked" parsed as the main verb: a false "Trump ask"
        ("Trump, asked about the deal, said it was bad.", [("Trump", "say")]),
        # "said" left as an unlabelled dependent: only the false "ask" was found
        (
            "Donald Trump, asked about the deal on Monday, said it was bad.",
            [("Donald Trump", "say")],
        ),
        # AllSides 5901: the chief of staff was criticised, Harris criticised no one
        (
            "Kamala Harris’ chief of staff, criticized for tough tactics, built reputation while "
            "working for Bill Clinton",
            [],
        ),
        # still speech: a verb of the subject's own, an aside that is no participle
        ("Kaitlan Collins, a CNN correspondent, asked Joe Biden about the deal.", None),
        ("Donald Trump, 75, said the deal was bad.", [("Donald Trump", "say")]),
    ],
)
def test_a_parenthetical_participle_is_no_speech(
    ex: SpacyActorExtractor, text: str, said: list[tuple[str, str]] | None
) -> None:
    got = _verbs(_analyse(ex, text).statements)
    if said is None:
        assert ("Kaitlan Collins", "ask") in got
    else:
        assert got == said


# -- low quotation marks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        (
            "Olaf Scholz said: „We will not retreat. We have no choice.“",
            [("Olaf Scholz", "„We will not retreat"), ("Olaf Scholz", "We have no choice.“")],
        ),
        ("„We will not retreat,“ Olaf Scholz said.", [("Olaf Scholz", "„We will not retreat,“")]),
        ("Olaf Scholz said: ‚We will not retreat.‘", [("Olaf Scholz", "‚We will not retreat.‘")]),
        ("‚We will not retreat,‘ Olaf Scholz said.", [("Olaf Scholz", "‚We will not retreat,‘")]),
        # ’ in a ‚ quotation is still the apostrophe; the tagger glued ‚ to the name
        (
            "‚Putin’s war is a crime,‘ Olaf Scholz told MPs.",
            [("Olaf Scholz", "‚Putin’s war is a crime,‘")],
        ),
        # “ closes a „ quotation and opens the next
        (
            "Olaf Scholz said: „We will not retreat.“ Joe Biden said: “We will help. We have no "
            "choice.”",
            [
                ("Olaf Scholz", "„We will not retreat.“"),
                ("Joe Biden", "“We will help"),
                ("Joe Biden", "We have no choice.”"),
            ],
        ),
    ],
)
def test_low_quotation_marks_are_quotations(
    ex: SpacyActorExtractor, text: str, pairs: list[tuple[str, str]]
) -> None:
    an = _analyse(ex, text)
    assert _pairs(an.statements) == pairs
    for s in an.statements:
        assert s.statement.quoted
        assert s.statement.sentence[s.content_start : s.content_end] == s.statement.text
    assert not [a.name for a in an.actors if a.name[0] in "„‚"]


def test_english_marks_still_work_beside_low_ones(ex: SpacyActorExtractor) -> None:
    # a ‘ closing a ‚ must not leave a British quotation open for the apostrophe after it
    an = _analyse(
        ex, "Olaf Scholz called it ‚historic‘. Joe Biden said the voters’ choice was clear."
    )
    assert ("Joe Biden", "the voters’ choice was clear") in _pairs(an.statements)
    assert not next(s for s in an.statements if s.statement.speaker == "Joe Biden").statement.quoted


def test_vader_reads_words_inside_low_quotation_marks() -> None:
    scorer = VaderTargetScorer()
    sentence = "Merkel called the plan „terrible“ on Monday."
    ascii_ = 'Merkel called the plan "terrible" on Monday.'
    low, plain = scorer.predict([(sentence, 0, 6), (ascii_, 0, 6)])
    assert low[0] > 0 and low.tolist() == pytest.approx(plain.tolist())
