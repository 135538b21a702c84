"""Keeps this process's vector index current with a store other processes write to.

Several API replicas can share one store (one SQLite file on a shared volume, or one
PostgreSQL database). Each holds its own FAISS index in memory, loaded at start from the
index file and brought up to the store by replaying the change feed after the change
number the file records; with ``STORYLINE_REPLICA_SYNC_S`` > 0 this task polls the store's
change feed and applies other replicas' ingests and deletes (``Pipeline.follow_changes``),
so the replicas converge. What it applies reaches the file only at the next flush; a crash
before that loses nothing, as the next start replays those changes again.
``storyline_replica_lag_changes`` says how far behind it is.
"""

from __future__ import annotations

import logging
from typing import Any

from storyline.service.api import metrics
from storyline.service.api.background import PeriodicTask

__all__ = ["ChangeFollower"]

log = logging.getLogger(__name__)


class ChangeFollower(PeriodicTask):
    task_name = "storyline-change-follower"

    def applies(self, pipe: Any) -> bool:
        return hasattr(pipe, "follow_changes")

    def step(self, pipe: Any) -> None:
        applied = pipe.follow_changes()
        lag = max(0, pipe.store.last_seq() - pipe.applied_seq)
        metrics.REPLICA_LAG.set(lag)
        if applied:
            metrics.INDEX_SIZE.set(len(pipe.index))
            log.debug("applied %d changes from the store (lag %d)", applied, lag)
