"""Writes the vector index file while the service runs.

Ingest and delete change the in-memory FAISS index at once, but its file is only a
cache of the stored embeddings (the pipeline repairs it from the store at start). So the
file is written at most every ``STORYLINE_INDEX_SAVE_INTERVAL_S`` and at shutdown, not on
every write: at 100k articles one flat index file is ~150 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from storyline.models.errors import Overloaded
from storyline.service.api.runtime import PRIORITY_BACKGROUND

__all__ = ["IndexSaver"]

log = logging.getLogger(__name__)


class IndexSaver:
    def __init__(self, runtime: Any, interval_s: float) -> None:
        self._rt = runtime
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="storyline-index-saver")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            pipe = self._rt.pipeline
            if pipe is None or not hasattr(pipe, "flush_index"):
                continue
            try:
                # this loop is the interval: write whatever changed since the last write
                if await self._rt.io.run(pipe.flush_index, force=True,
                                         priority=PRIORITY_BACKGROUND):
                    log.debug("vector index file written")
            except Overloaded:
                pass  # busy: the next tick
            except Exception:  # the next tick retries; the store still holds every vector
                log.exception("writing the vector index file failed")
