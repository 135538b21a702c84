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

A failure that is not the story's own (models or store unavailable) keeps the queue and
backs off; one that says waiting cannot help (``lasting``: the models were rebuilt under the
running service, which only a restart fixes) stops the warmer until the runtime loads
another pipeline, with the queue kept and counted and the state in the log and in
``storyline_story_warmer_stopped``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import Gauge

from storyline.models.errors import (
    ConflictError,
    ModelUnavailable,
    NotFound,
    Overloaded,
    StoreError,
    StorylineError,
)
from storyline.service.api import metrics
from storyline.service.api.background import BackgroundTask
from storyline.service.api.runtime import PRIORITY_BACKGROUND

__all__ = ["StoryWarmer"]

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.05
#: After a failure that is not the story's own (models or store unavailable): wait this
#: long before the next try, doubling per failure in a row up to ``_RETRY_MAX_S``.
_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 60.0
#: Failures that say nothing about the story: it stays queued and the warmer backs off.
_TRANSIENT = (ModelUnavailable, StoreError, ConflictError)
#: how often a stopped warmer looks whether the runtime loaded another pipeline
_STOPPED_POLL_S = 5.0

STOPPED = Gauge("storyline_story_warmer_stopped",
                "1 while the idle-time warmer has stopped on a failure that waiting cannot fix "
                "(models rebuilt since the start: restart the service); its stories stay "
                "pending")


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
        #: failures in a row that kept stories queued (models or store unavailable)
        self.failures = 0
        #: why the warmer stopped trying (a ``lasting`` failure), or None; the pipeline it
        #: failed with, so that another one loaded by the runtime is tried again
        self.stopped: str | None = None
        self._stopped_on: Any | None = None

    @property
    def pending(self) -> int:
        """Stories waiting or being analysed right now (a story re-marked while it is
        analysed waits again, and counts once)."""
        running = self._running is not None and self._running not in self._dirty
        return len(self._dirty) + running

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
            if self.stopped is not None:
                if self._rt.pipeline is self._stopped_on:
                    await asyncio.sleep(_STOPPED_POLL_S)
                    continue
                log.info("warming stories resumed: another pipeline was loaded")
                self._resume()
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
            retry_in = 0.0
            try:
                await pool.run(pipe.story_view, sid, priority=PRIORITY_BACKGROUND)
                self.done += 1
                if self.failures:
                    log.info("warming stories resumed after %d failed tries", self.failures)
                    self.failures = 0
            except ModelUnavailable as exc:
                self._dirty.setdefault(sid, None)
                if exc.extra.get("lasting"):
                    # Retrying cannot help (and each try costs a model call): stop, keep the
                    # queue counted, and say so once.
                    self.stopped, self._stopped_on = exc.detail, pipe
                    STOPPED.set(1)
                    log.error("warming stories stopped: %s; %d stories wait", exc.detail,
                              self.pending)
                else:
                    retry_in = self._failed(exc)
            except Overloaded:  # a burst arrived between the check and the call
                self._dirty.setdefault(sid, None)
                retry_in = _IDLE_POLL_S
            except NotFound as exc:
                # Merged, split or deleted since it was marked: what it became (if
                # anything) holds the changed articles now, and nothing else marks it.
                log.debug("story %s not warmed: %s", sid, exc)
                moved = exc.extra.get("moved_to")
                self.mark(moved if isinstance(moved, list) else ())
            except _TRANSIENT as exc:
                self._dirty.setdefault(sid, None)
                retry_in = self._failed(exc)
            except StorylineError as exc:
                log.warning("story %s not warmed: %s", sid, exc)
            except Exception:
                log.exception("warming story %s failed", sid)
            finally:
                self._running = None
                metrics.WARM_PENDING.set(self.pending)
            if retry_in:
                await asyncio.sleep(retry_in)

    def _failed(self, exc: Exception) -> float:
        """After a failure that is not the story's own: the seconds to wait. Every story
        would fail alike: the caller keeps this one (and the rest) queued, so `pending`
        still counts them, and the loop waits instead of draining the queue."""
        self.failures += 1
        if self.failures == 1:
            log.warning("warming stories paused: %s; retrying with back-off", exc)
        return float(min(_RETRY_MAX_S, _RETRY_MIN_S * 2 ** (self.failures - 1)))

    def _resume(self) -> None:
        self.stopped = self._stopped_on = None
        self.failures = 0
        STOPPED.set(0)
