"""Stand-ins for the warmer's tests: a runtime with a real ``BoundedPool`` and a pipeline
whose ``story_view`` does what a test says (a story merged away, models down, ...)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from storyline.service.api.runtime import BoundedPool


class FakeRuntime:
    def __init__(self, pipeline: Any, name: str = "warmer-test") -> None:
        self.pipeline = pipeline
        self.background = BoundedPool(name, 1, 8)
        self.io = self.background


class FakePipeline:
    """``story_view`` answers from ``behaviour(story_id)``, recording every call."""

    def __init__(self, behaviour: Callable[[str], None]) -> None:
        self.calls: list[str] = []
        self._behaviour = behaviour

    def story_view(self, story_id: str) -> None:
        self.calls.append(story_id)
        self._behaviour(story_id)


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
