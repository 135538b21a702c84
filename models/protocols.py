"""One small Protocol per pipeline stage, so stages are swappable and testable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from storyline.models.types import Actor, ActorStance, Article, Summary

if TYPE_CHECKING:  # keeps `import storyline.models` free of third-party imports
    import numpy as np
    import numpy.typing as npt

__all__ = ["ActorExtractor", "Embedder", "StanceTagger", "Summariser"]


@runtime_checkable
class Embedder(Protocol):
    """Texts in, L2-normalised float32 vectors out (shape ``[n, dim]``)."""

    @property
    def dim(self) -> int: ...

    @property
    def model_id(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


@runtime_checkable
class Summariser(Protocol):
    def summarise(
        self, articles: Sequence[Article], budget_words: int = 80
    ) -> Summary: ...


@runtime_checkable
class ActorExtractor(Protocol):
    def extract(self, articles: Sequence[Article]) -> list[Actor]: ...


@runtime_checkable
class StanceTagger(Protocol):
    def tag(self, actors: Sequence[Actor], articles: Sequence[Article]) -> list[ActorStance]: ...
