"""Who said what, audited on realistic news sentences (real spaCy pipeline, no mocks)."""

from __future__ import annotations

import pytest
from statement_helpers import pairs as _pairs
from statement_helpers import said as _said

from storyline.models.actors import SpacyActorExtractor
from storyline.models.types import Article

# -- quotations over several sentences ----------------------------------------------------------


def test_a_quotation_over_several_sentences_keeps_its_speaker(ex: SpacyActorExtractor) -> None:
    # the middle sentence holds no quotation mark of its own
    sts = _said(ex, "Putin said: “We will respond. We have no choice. The West has lied to us.”")
    assert [p[0] for p in _pairs(sts)] == ["Putin"] * 3
    assert [p[1] for p in _pairs(sts)][1:] == ["We have no choice.", "The West has lied to us.”"]
    assert all(s.statement.quoted for s in sts)

    sts = _said(
        ex,
        "“NATO is a threat,” Putin said. “We will respond. We have no choice. The West has "
        "lied to us.” Lavrov agreed.",
    )
    assert _pairs(sts)[2:] == [
        ("Putin", "We have no choice."),
        ("Putin", "The West has lied to us.”"),
    ]


def test_a_quotation_goes_to_the_speaker_it_closes_with(ex: SpacyActorExtractor) -> None:
    sts = _said(ex, "“We will respond. We have no choice,” Putin said.")
    assert _pairs(sts) == [("Putin", "“We will respond."), ("Putin", "We have no choice,”")]

    # a paragraph opening with a quotation is not the previous speaker's when it closes
    # with a speaker of its own (the earlier sentence only has "red line" in quotes)
    sts = _said(
        ex,
        "The two top congressional Republicans said Wednesday that tax hikes are a “red line” "
        "in negotiations.\n\n“We’re not interested in reopening the 2017 tax bill. We both made "
        "that clear to the president. That’s our red line,” Senate Minority Leader Mitch "
        "McConnell told reporters.",
    )
    assert [p[0] for p in _pairs(sts)] == ["Republicans"] + ["Mitch McConnell"] * 3


def test_a_closed_quotation_does_not_run_on(ex: SpacyActorExtractor) -> None:
    sts = _said(ex, "“We will respond,” Putin said. The crowd cheered. Nobody asked questions.")
    assert _pairs(sts) == [("Putin", "“We will respond,”")]
    # an unclosed quotation ends with its paragraph
    sts = _said(ex, "Putin said: “We will respond.\n\nReporters left the room. Nobody asked why.")
    assert [p[0] for p in _pairs(sts)] == ["Putin"]


def test_a_quotation_the_parser_splits_stays_whole(ex: SpacyActorExtractor) -> None:
    # the parser hangs "that as a victory, ..." on "told": the content was cut at "we view"
    (st,) = _said(
        ex,
        "“In terms of a temporary lifting of the debt ceiling, we view that as a victory, a "
        "temporary victory with more work to do,” Tammy Baldwin told CNN's Jake Tapper.",
    )
    assert st.statement.speaker == "Tammy Baldwin"
    assert st.statement.text.endswith("with more work to do,”")
    assert st.statement.text.startswith("“In terms of")


# -- pronouns -----------------------------------------------------------------------------------


def test_she_goes_to_the_woman_not_the_only_subject(ex: SpacyActorExtractor) -> None:
    # no title says who is a woman; the first names do
    (st,) = _said(
        ex, "Vladimir Putin spoke to Angela Merkel by phone. She said the ceasefire must hold."
    )
    assert st.statement.speaker == "Angela Merkel"
    (st,) = _said(
        ex, "Dmitry Peskov and Maria Zakharova spoke on Monday. She said the West was to blame."
    )
    assert st.statement.speaker == "Maria Zakharova"


# -- what is content and what is speech -----------------------------------------------------


def test_expletive_it_and_relative_which_are_no_content(ex: SpacyActorExtractor) -> None:
    (st,) = _said(ex, "It was announced by the Kremlin that the talks would resume.")
    assert _pairs([st]) == [("the Kremlin", "the talks would resume")]
    (st,) = _said(ex, "Milley's actions, which were reported by CNN on Tuesday, drew criticism.")
    assert _pairs([st]) == [("CNN", "Milley's actions")]


def test_it_is_hard_to_maintain_has_no_speaker(ex: SpacyActorExtractor) -> None:
    # "it" (resolved to the United States) did not "maintain" anything
    sts = _said(
        ex,
        "The United States is in crisis. Experts say it can become difficult to maintain "
        "standards of care for the sickest patients.",
    )
    assert [s.statement.verb for s in sts] == []


def test_parallel_reports_keep_their_own_content(ex: SpacyActorExtractor) -> None:
    sts = _said(
        ex,
        "Walgreens reported wasting 2.6 million doses, CVS reported 2.2 million, Walmart "
        "reported 1.6 million and Rite Aid reported 1.1 million.",
    )
    got = dict(_pairs(sts))
    assert got["CVS"] == "2.2 million" and got["Walmart"] == "1.6 million"
    # a reported statement that is all a speaker says stays that speaker's content
    sts = _said(ex, "Putin said the talks failed, Dmitry Peskov told reporters.")
    assert _pairs(sts)[-1] == ("Dmitry Peskov", "Putin said the talks failed")


def test_adding_seats_is_no_speech(ex: SpacyActorExtractor) -> None:
    for title, text in [
        ("Census Bureau announces 331 million people in US, Texas will add two seats", "."),
        ("", "The Census Bureau said Texas will add two congressional seats."),
    ]:
        sts = _said(ex, text, title)
        assert "Texas" not in [s.statement.speaker for s in sts]


def test_a_question_reports_no_speech(ex: SpacyActorExtractor) -> None:
    assert not _said(ex, "Did Putin say that NATO was a threat?")
    assert not _said(ex, "“Did Putin say that NATO was a threat?” Biden asked.")
    # the question is what Biden asked, not what Putin said
    sts = _said(ex, "Biden asked: “Did Putin say that NATO was a threat?”")
    assert [s.statement.speaker for s in sts] == ["Biden"]


# -- invariants over many sentences ---------------------------------------------------------

PROBES = [
    "“We will not retreat,” Volodymyr Zelensky said on Tuesday.",
    "The talks were useless, said Dmitry Peskov.",
    "In a statement, the Pentagon said it would send more troops to Poland.",
    "Joe Biden did not say whether the sanctions would be lifted.",
    "Vladimir Putin said, “NATO is a threat to Russia. We will respond.” He added that the "
    "West had lied.",
    'Sergei Lavrov said: "We will respond."',
    "Emmanuel Macron said «nous sommes prêts» on Monday.",
    "“We are ready,” Putin said, “but we will not wait forever.”",
    "Biden told reporters on Tuesday that Putin was a war criminal.",
    "Olaf Scholz and Emmanuel Macron said they would support Ukraine.",
    'Putin said: "We will respond.\n"We have no choice," he added.',
    "Biden was, Putin said, a weak leader.",
    "“There will be no negotiations,” the Kremlin said in a statement.",
    "Lavrov called on the West to stop arming Ukraine.",
    "Putin said: “We will respond. We have no choice,\nbut we will not wait forever.”",
    "Zelensky said ‘we will not retreat’ on Monday.",
    "Ursula von der Leyen said the European Union would impose new sanctions on Russia.",
]


@pytest.mark.parametrize("text", PROBES)
def test_statement_offsets_and_speakers_are_sound(ex: SpacyActorExtractor, text: str) -> None:
    art = Article(id="a1", title="", text=text)
    analysis = ex.analyse([art])
    names = {a.name for a in analysis.actors}
    assert analysis.statements, text
    for s in analysis.statements:
        st, sent = s.statement, s.statement.sentence
        assert st.speaker in names and st.article_id == "a1"
        assert sent in text and st.text.strip() == st.text != ""
        assert 0 <= s.content_start < s.content_end <= len(sent)
        span = sent[s.content_start : s.content_end]
        if " … " not in st.text:  # content in one piece is the sentence's own text
            assert span == st.text
        else:  # pieces joined: the span runs from the first piece to the last
            first, *_, last = st.text.split(" … ")
            assert span.startswith(first) and span.endswith(last)
        # never cut inside a word
        assert s.content_start == 0 or not sent[s.content_start - 1].isalnum()
        assert s.content_end == len(sent) or not sent[s.content_end].isalnum()
