"""Keeps stored stories' summaries and stances computed while the service is idle.

An analysis costs ~0.5 s of CPU for a three-article story (stance ~60 %, actors ~20 %,
summary ~15 %, measured in docs/quality.md), far above what a read should cost. Ingest
marks the stories it touched; this task recomputes them through the background pool
(shared with ingest; with ``background_process`` it has its own low-priority model
process, else it is the inference pool) *only when that pool is idle*, one story at a
time, so requests never queue behind more than one background analysis.
``Pipeline.story_view`` stores the result keyed by the story's content, so a later
``POST /v1/summarise`` / ``GET /v1/stories/{id}`` (and the digest) read it instead of
computing it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from storyline.models.errors import Overloaded, StorylineError
from storyline.service.api import metrics
from storyline.service.api.background import BackgroundTask
from storyline.service.api.runtime import PRIORITY_BACKGROUND

__all__ = ["StoryWarmer"]

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.05


class StoryWarmer(BackgroundTask):
    """Background recomputation of changed stories' analyses (event-loop side)."""

    task_name = "storyline-story-warmer"

    def __init__(self, runtime: Any, *, enabled: bool = True) -> None:
        super().__init__()
        self._rt = runtime
        self.enabled = enabled
        self._dirty: dict[str, None] = {}  # insertion-ordered set: oldest change first
        self._wake = asyncio.Event()
        self._running: str | None = None
        self.done = 0

    @property
    def pending(self) -> int:
        """Stories waiting or being analysed right now."""
        return len(self._dirty) + (self._running is not None)

    def mark(self, story_ids: Iterable[str | None]) -> None:
        if not self.enabled:
            return
        for sid in story_ids:
            if sid:
                self._dirty.pop(sid, None)
                self._dirty[sid] = None  # re-marked: moves to the back
        metrics.WARM_PENDING.set(self.pending)
        if self._dirty:
            self._wake.set()

    def should_run(self) -> bool:
        return self.enabled

    async def _loop(self) -> None:
        pool = self._rt.background
        while True:
            if not self._dirty:
                self._wake.clear()
                await self._wake.wait()
            # Requests first: wait for a moment when nothing runs or waits in the pool.
            if pool.pending > 0:
                await asyncio.sleep(_IDLE_POLL_S)
                continue
            sid = next(iter(self._dirty))
            del self._dirty[sid]
            pipe = self._rt.pipeline
            if pipe is None:
                continue
            self._running = sid
            try:
                await pool.run(pipe.story_view, sid, priority=PRIORITY_BACKGROUND)
                self.done += 1
            except Overloaded:  # a burst arrived between the check and the call
                self._dirty.setdefault(sid, None)
                await asyncio.sleep(_IDLE_POLL_S)
            except StorylineError as exc:
                # Merged away or deleted since it was marked: nothing to keep warm.
                log.debug("story %s not warmed: %s", sid, exc)
            except Exception:
                log.exception("warming story %s failed", sid)
            finally:
                self._running = None
                metrics.WARM_PENDING.set(self.pending)
