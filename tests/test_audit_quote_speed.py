"""Quotation handling is linear in paragraph length: which ’ closes a ‘ (and “ a „) is
worked out once per doc, not by walking back to the paragraph start for every mark. A
200k-character article is often one paragraph (real spaCy pipeline, no mocks)."""

from __future__ import annotations

import time

from storyline.models.actors import SpacyActorExtractor
from storyline.models.types import Article

N = 500


def _text(sep: str) -> str:
    return sep.join(
        f"Smith said the plan was ‘bad number {i}’ and Jones disagreed." for i in range(N)
    )


def _analyse_s(ex: SpacyActorExtractor, art: Article) -> float:
    """Best of two ``analyse`` runs, the parse done beforehand (a loaded box is noisy)."""
    ex.prepare([art])
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        an = ex.analyse([art])
        best = min(best, time.perf_counter() - t0)
        assert len(an.statements) == N
        assert all(s.statement.quoted for s in an.statements)
    return best


def test_one_long_paragraph_analyses_as_fast_as_many_short_ones(ex: SpacyActorExtractor) -> None:
    one = _analyse_s(ex, Article("one", _text(" "), "S"))
    paras = _analyse_s(ex, Article("paras", _text("\n\n"), "S"))
    # same words, same statements: only the paragraph length differs. Walking back to the
    # paragraph start for every ‘ and ’ made the single paragraph ~45x slower at this size.
    assert one < 5 * paras + 0.5, (one, paras)


def test_a_single_quotation_does_not_close_in_the_next_paragraph(
    ex: SpacyActorExtractor,
) -> None:
    def said(sep: str) -> list[tuple[str, str, bool]]:
        text = (
            f"Smith called the plan ‘bad for everyone.{sep}"
            "Jones said the talks were over’ and left."
        )
        an = ex.analyse([Article(f"p{len(sep)}", text, "S")])
        return [(s.statement.speaker, s.statement.text, s.statement.quoted) for s in an.statements]

    # in one paragraph the ’ closes the ‘ ...
    assert said(" ")[-1] == ("Jones", "the talks were over’", True)
    # ... but a paragraph starts outside any ‘ quotation: the ’ is a stray apostrophe
    assert said("\n\n") == [("Jones", "the talks were over", False)]
