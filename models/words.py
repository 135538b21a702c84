"""Words as a summary's budget counts them, for scripts with and without spaces."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["BUDGET_WORD", "count_words"]

#: Han, kana and their half-width / compatibility forms: scripts written without spaces
#: between words, where each character counts as one word (as ROUGE for Chinese counts
#: characters). Hangul is left out: Korean puts spaces between words.
_UNSPACED_SCRIPT: Final = (
    "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
)
_HAS_UNSPACED = re.compile(f"[{_UNSPACED_SCRIPT}]")
#: One word against the budget: an unspaced-script character with whatever leads up to it
#: and the punctuation after it, or else a whitespace-separated token (so, for text without
#: those scripts, exactly ``str.split()``).
BUDGET_WORD = re.compile(
    f"[^\\s{_UNSPACED_SCRIPT}]*[{_UNSPACED_SCRIPT}][^\\w\\s]*|[^\\s{_UNSPACED_SCRIPT}]+"
)


def count_words(text: str) -> int:
    """Words of ``text`` as the budget counts them (``BUDGET_WORD``)."""
    if _HAS_UNSPACED.search(text) is None:
        return len(text.split())
    return sum(1 for _ in BUDGET_WORD.finditer(text))
