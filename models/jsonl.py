"""JSON Lines files read line by line, with errors that name ``file:line``.

Shared by the evaluation and training readers (AllSides, NewsMTSC, stance gold): each
validates its own fields; what every line must be (UTF-8, one JSON object) is checked once
here. A leading UTF-8 BOM is skipped and blank lines are ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from storyline.models.errors import InvalidInput

__all__ = ["SURROGATE_MESSAGE", "jsonl_objects", "lone_surrogate"]

# JSON's "\ud800" escape decodes to a lone surrogate: a valid Python str, but no Unicode
# text. SQLite, PostgreSQL and the tokenizers all fail on it (a traceback from deep in
# ingest or eval), and the HTTP API's decoder already refuses it: refuse it at the line.
_SURROGATE = re.compile("[\ud800-\udfff]")
SURROGATE_MESSAGE = "invalid Unicode (a lone surrogate escape such as \\ud800)"


def lone_surrogate(value: Any) -> bool:
    """True when a string anywhere in the decoded JSON ``value`` holds a lone surrogate."""
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(lone_surrogate(k) or lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(lone_surrogate(v) for v in value)
    return False


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line; ``InvalidInput`` naming ``path:line`` for
    a line that is not UTF-8, not JSON, or not a JSON object."""
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"{path}:{n}: invalid UTF-8 ({exc.reason})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path}:{n}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InvalidInput(f"{path}:{n}: expected a JSON object")
            if lone_surrogate(obj):
                raise InvalidInput(f"{path}:{n}: {SURROGATE_MESSAGE}")
            yield n, obj
