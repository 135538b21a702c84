"""Writes the vector index file while the service runs.

Ingest and delete change the in-memory FAISS index at once, but its file is only a
cache of the stored embeddings (the pipeline repairs it from the store at start). So the
file is written at most every ``STORYLINE_INDEX_SAVE_INTERVAL_S`` and at shutdown, not on
every write: at 100k articles one flat index file is ~150 MB.

A write that fails (a full disk, a read-only data dir) leaves the previous file, which
the next start repairs by replaying the changes after it, so the service keeps serving;
``failing_since`` / ``last_error`` say that the file is falling behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from storyline.service.api.background import PeriodicTask
from storyline.service.api.runtime import PRIORITY_BACKGROUND

__all__ = ["IndexSaver"]

log = logging.getLogger(__name__)

#: While writes keep failing, say so again at most this often (a tick can be every 0.1 s).
LOG_EVERY_S = 600.0

T = TypeVar("T")


class _OwnThread:
    """``pool()`` for the saver: each step on a thread of its own (the loop's default
    executor; the task runs one step at a time)."""

    async def run(self, fn: Callable[..., T], *args: Any, priority: int = 0,
                  **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)


class IndexSaver(PeriodicTask):
    task_name = "storyline-index-saver"
    priority = PRIORITY_BACKGROUND

    def __init__(self, runtime: Any, interval_s: float) -> None:
        super().__init__(runtime, interval_s)
        #: ``time.monotonic`` of the first failed write since the last one that worked
        self.failing_since: float | None = None
        self.failures = 0  # in a row
        self.last_error: str | None = None
        self._logged_at = 0.0

    def applies(self, pipe: Any) -> bool:
        return hasattr(pipe, "flush_index")

    def pool(self) -> Any:
        # flush_index waits for the pipeline's write lock (held by ingest and delete) and
        # then writes the file (~1 s at 100k vectors): on the I/O pool that would hold up
        # the lookups, and on the background pool (one thread with the model process) the
        # ingests and deletes queued behind it, so it has a thread of its own.
        return _OwnThread()

    def step(self, pipe: Any) -> None:
        # Whatever changed, once this task's interval has passed since the file was last
        # written or tried, by this task or by an ingest that found it due: "at most this
        # often" (a forced write here followed an ingest's own write moments later).
        try:
            written = pipe.flush_index(interval_s=self.interval_s)
        except Exception as exc:
            self._failed(exc)
            return
        if written:
            log.debug("vector index file written")
        if self.failing_since is not None:
            log.warning("vector index file written again after %d failed tries (%.0f s)",
                        self.failures, time.monotonic() - self.failing_since)
        self.failing_since = None
        self.failures = 0
        self.last_error = None

    def _failed(self, exc: Exception) -> None:
        # The loop would log the same trace at every tick for as long as the disk is full.
        now = time.monotonic()
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.failing_since is None:
            self.failing_since = now
        if self.failures == 1 or now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.error("writing the vector index file failed (%d in a row, for %.0f s); the "
                      "service keeps serving from memory and the next tick retries",
                      self.failures, now - self.failing_since, exc_info=exc)
