"""Keeps this process's vector index current with a store other processes write to.

Several API replicas can share one store (one SQLite file on a shared volume, or one
PostgreSQL database). Each holds its own FAISS index in memory, rebuilt from the store
at start; with ``STORYLINE_REPLICA_SYNC_S`` > 0 this task polls the store's change feed
and applies other replicas' ingests and deletes (``Pipeline.follow_changes``), so the
replicas converge. ``storyline_replica_lag_changes`` says how far behind it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from storyline.service.api import metrics

__all__ = ["ChangeFollower"]

log = logging.getLogger(__name__)


class ChangeFollower:
    def __init__(self, runtime: Any, interval_s: float) -> None:
        self._rt = runtime
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="storyline-change-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _step(self, pipe: Any) -> None:
        applied = pipe.follow_changes()
        lag = max(0, pipe.store.last_seq() - pipe.applied_seq)
        metrics.REPLICA_LAG.set(lag)
        if applied:
            metrics.INDEX_SIZE.set(len(pipe.index))
            log.debug("applied %d changes from the store (lag %d)", applied, lag)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            pipe = self._rt.pipeline
            if pipe is None or not hasattr(pipe, "follow_changes"):
                continue
            try:
                await self._rt.io.run(self._step, pipe)
            except Exception:  # keep following; the next poll retries
                log.exception("following the store's change feed failed")
