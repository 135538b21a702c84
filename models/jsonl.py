"""JSON Lines files read line by line, with errors that name ``file:line``.

Shared by the evaluation and training readers (AllSides, NewsMTSC, stance gold): each
validates its own fields; what every line must be (UTF-8, one JSON object) is checked once
here. A leading UTF-8 BOM is skipped and blank lines are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from storyline.models.errors import InvalidInput

__all__ = ["jsonl_objects"]


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
            yield n, obj
