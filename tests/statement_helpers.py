"""One article through the real extractor, for the tests of who said what and of actor
names (the extractor itself is the session fixture ``ex`` in conftest.py)."""

from __future__ import annotations

from storyline.models.actors import AttributedStatement, SpacyActorExtractor, StoryAnalysis
from storyline.models.types import Article


def analyse(ex: SpacyActorExtractor, text: str) -> StoryAnalysis:
    return ex.analyse([Article(id="a1", title="", text=text)])


def said(ex: SpacyActorExtractor, text: str, title: str = "") -> list[AttributedStatement]:
    out: list[AttributedStatement] = ex.attribute([Article(id="a1", title=title, text=text)])
    return out


def pairs(sts: list[AttributedStatement]) -> list[tuple[str, str]]:
    return [(s.statement.speaker, s.statement.text) for s in sts]


def people(an: StoryAnalysis) -> list[str]:
    return sorted(a.name for a in an.actors if a.type == "PERSON")
