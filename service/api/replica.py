"""Keeps this process's vector index current with a store other processes write to.

Several API replicas can share one store (one SQLite file on a shared volume, or one
PostgreSQL database). Each holds its own FAISS index in memory, loaded at start from the
index file and brought up to the store by replaying the change feed after the change
number the file records; with ``STORYLINE_REPLICA_SYNC_S`` > 0 this task polls the store's
change feed and applies other replicas' ingests and deletes (``Pipeline.follow_changes``),
so the replicas converge. What it applies reaches the file only at the next flush; a crash
before that loses nothing, as the next start replays those changes again.
``storyline_replica_lag_changes`` says how far behind it is as of the last sync that
worked, ``storyline_replica_last_sync_timestamp_seconds`` when that was, and
``storyline_replica_sync_failures_total`` counts the polls that failed: a lag read alone
keeps its last value (often 0) while the store cannot be read. After ``stale_after_s``
of failures in a row, readiness answers 503 until a poll works again.

The stories those changes touched are marked in the idle-time warmer (when it runs), as
this process's own ingests and deletes mark theirs, so they are analysed before a reader
asks: an article's story is read once the other process has placed it (it stores the
article first, then places it), and a deleted article's story is the one the change feed
recorded with the delete (``Store.deleted_story_of``), or for a delete recorded before the
feed kept it, the one this process's clusterer last knew it in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from storyline.service.api import metrics
from storyline.service.api.background import PeriodicTask

__all__ = ["STALE_AFTER_MIN_S", "STALE_AFTER_POLLS", "ChangeFollower"]

log = logging.getLogger(__name__)

#: Readiness fails after this many polls' worth of failures in a row, and never sooner
#: than STALE_AFTER_MIN_S: a blip of a few seconds in the store (a failover, a restart)
#: should not take every replica out of the load balancer at once, and one minute of
#: missed writes is what a reader of related coverage hardly notices. A tighter bound
#: belongs in an alert on the last-sync gauge, not here.
STALE_AFTER_POLLS = 10
STALE_AFTER_MIN_S = 60.0
#: failures logged with a traceback at most this often (a poll can run every 0.1 s)
LOG_EVERY_S = 60.0
#: an article another process stored is looked for in a story this long (it is placed
#: after it is stored; one ingested without clustering never is), at most this many
PLACE_WAIT_S = 120.0
PLACE_WAIT_MAX = 10_000


class ChangeFollower(PeriodicTask):
    task_name = "storyline-change-follower"

    def __init__(self, runtime: Any, interval_s: float) -> None:
        super().__init__(runtime, interval_s)
        #: failing this long in a row makes readiness 503 (``failing_for``)
        self.stale_after_s = max(STALE_AFTER_MIN_S, STALE_AFTER_POLLS * interval_s)
        #: ``time.monotonic`` of the first failure since the last poll that worked
        self.failing_since: float | None = None
        self.failures = 0  # in a row
        self._logged_at = 0.0
        #: stored by another process, not placed in a story yet: id -> first seen
        self._unplaced: dict[str, float] = {}
        self._event_loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        # the warmer is marked on the event loop; steps run on a pool thread
        self._event_loop = asyncio.get_running_loop()
        super().start()

    def applies(self, pipe: Any) -> bool:
        return hasattr(pipe, "follow_changes")

    def step(self, pipe: Any) -> None:
        try:
            applied = pipe.follow_changes()
            lag = max(0, pipe.store.last_seq() - pipe.applied_seq)
        except Exception:
            self._failed()
            return
        metrics.REPLICA_LAG.set(lag)
        metrics.REPLICA_LAST_SYNC.set(time.time())
        if self.failing_since is not None:
            log.warning("following the store's changes again after %d failed polls (%.0f s)",
                        self.failures, time.monotonic() - self.failing_since)
        self.failing_since = None
        self.failures = 0
        if applied:
            metrics.INDEX_SIZE.set(len(pipe.index))
            log.debug("applied %d changes from the store (lag %d)", applied, lag)
        try:
            self._mark_changed_stories(pipe)
        except Exception:  # the stories are analysed on their next read instead
            log.warning("marking the stories changed by other processes failed",
                        exc_info=True)

    def _mark_changed_stories(self, pipe: Any) -> None:
        warmer = getattr(self._rt, "warmer", None)
        take = getattr(pipe, "take_followed", None)
        if warmer is None or not warmer.enabled or take is None or self._event_loop is None:
            return
        now = time.monotonic()
        followed: dict[str, str] = take()
        for aid, op in followed.items():
            if op == "upsert":
                self._unplaced.setdefault(aid, now)
            else:
                self._unplaced.pop(aid, None)
        placed: dict[str, str] = pipe.store.story_of(list(self._unplaced))
        sids = set(placed.values())
        self._unplaced = {a: t for a, t in self._unplaced.items()
                          if a not in placed and now - t < PLACE_WAIT_S}
        while len(self._unplaced) > PLACE_WAIT_MAX:
            del self._unplaced[next(iter(self._unplaced))]
        # The store drops a deleted article's membership with it, and records the story in
        # the change feed: that covers an article that came and went since this process's
        # clusterer last loaded. Deletes recorded before the feed kept it fall back to what
        # the clusterer knows.
        deleted = [a for a, op in followed.items() if op == "delete"]
        recorded: dict[str, str] = pipe.store.deleted_story_of(deleted) if deleted else {}
        sids.update(recorded.values())
        story_of = getattr(getattr(pipe, "clusterer", None), "story_of", None)
        if story_of is not None:
            sids.update(s for a in deleted if a not in recorded and (s := story_of(a)))
        if sids:
            self._event_loop.call_soon_threadsafe(warmer.mark, sorted(sids))

    def _failed(self) -> None:
        now = time.monotonic()
        metrics.REPLICA_SYNC_FAILURES.inc()
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
        # The loop would log every failure with its trace, five a second at 0.2 s polling.
        if self.failures == 1 or now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.exception("reading the store's change feed failed (%d in a row, for %.0f s);"
                          " the next poll retries", self.failures, now - self.failing_since)

    def failing_for(self) -> float | None:
        """Seconds the follower has failed in a row, once past ``stale_after_s``; else None."""
        since = self.failing_since
        if since is None or not self.should_run():
            return None
        failing = time.monotonic() - since
        return failing if failing >= self.stale_after_s else None

    def retry_after(self) -> int:
        return max(1, round(self.interval_s))
