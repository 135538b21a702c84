"""Writes the vector index file while the service runs.

Ingest and delete change the in-memory FAISS index at once, but its file is only a
cache of the stored embeddings (the pipeline repairs it from the store at start). So the
file is written at most every ``STORYLINE_INDEX_SAVE_INTERVAL_S`` and at shutdown, not on
every write: at 100k articles one flat index file is ~150 MB.
"""

from __future__ import annotations

import logging
from typing import Any

from storyline.service.api.background import PeriodicTask
from storyline.service.api.runtime import PRIORITY_BACKGROUND

__all__ = ["IndexSaver"]

log = logging.getLogger(__name__)


class IndexSaver(PeriodicTask):
    task_name = "storyline-index-saver"
    priority = PRIORITY_BACKGROUND

    def applies(self, pipe: Any) -> bool:
        return hasattr(pipe, "flush_index")

    def pool(self) -> Any:
        # flush_index waits for the pipeline's write lock (held by ingest and delete): on
        # the I/O pool that wait would hold up the lookups, so it runs where writes do.
        return self._rt.background

    def step(self, pipe: Any) -> None:
        # this task's tick is the interval: write whatever changed since the last write
        if pipe.flush_index(force=True):
            log.debug("vector index file written")
