"""The service's long-running asyncio tasks: started by the lifespan, cancelled at shutdown.

A ``PeriodicTask``'s ``stop`` also waits (up to ``stop_wait_s``) for a step running on a
pool thread: cancelling the task does not stop that thread, and the lifespan goes on to
close the store and write the index file, which the step (a change-feed poll, an index
file write) would otherwise still be using."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from storyline.models.errors import Overloaded
from storyline.service.api.runtime import PRIORITY_READ

__all__ = ["BackgroundTask", "PeriodicTask", "stop_all"]

log = logging.getLogger(__name__)


class BackgroundTask:
    """One named task running ``_loop`` while ``should_run()`` held at ``start``."""

    task_name = "storyline-task"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def should_run(self) -> bool:
        return True

    def start(self) -> None:
        if self.should_run() and self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.task_name)
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        # A loop that dies stops its work for good: say so now, not at shutdown.
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped: its loop failed", self.task_name,
                      exc_info=task.exception())

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            # A loop that died (logged by ``_ended``) must not abort the shutdown: the
            # lifespan still has to drain the pools and write the index file after this.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _loop(self) -> None:
        raise NotImplementedError


class PeriodicTask(BackgroundTask):
    """Every ``interval_s`` (0 = never started): ``step(pipeline)`` on ``pool()`` (the I/O
    pool unless overridden), once the pipeline is loaded and ``applies`` to it. A failed
    step is logged; the next tick tries again, and a full pool skips the tick."""

    priority = PRIORITY_READ
    #: ``stop`` waits at most this long for a running step (a poll or a file write takes
    #: seconds at most; one stuck on a dead store must not hang the shutdown)
    stop_wait_s = 30.0

    def __init__(self, runtime: Any, interval_s: float) -> None:
        super().__init__()
        self._rt = runtime
        self.interval_s = interval_s
        #: the step handed to the pool, until it has finished (awaited by ``stop``)
        self._step: asyncio.Future[None] | None = None
        #: set by ``stop``: a step still queued in the pool is skipped when it comes up
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        super().start()

    async def stop(self) -> None:
        self._stopping = True
        step = self._step  # read before the cancelled loop lets go of it
        await super().stop()
        if step is None or step.done():
            return
        done, _ = await asyncio.wait({step}, timeout=self.stop_wait_s)
        if not done:
            log.warning("%s: a step still runs %g s after stop; shutting down without it",
                        self.task_name, self.stop_wait_s)
        elif not step.cancelled() and not isinstance(step.exception(), Overloaded | None):
            # the cancelled loop no longer logs it, and the shield marked it retrieved
            log.error("%s: the step running at stop failed", self.task_name,
                      exc_info=step.exception())

    def should_run(self) -> bool:
        return self.interval_s > 0

    def applies(self, pipe: Any) -> bool:
        return True

    def pool(self) -> Any:
        """The pool ``step`` runs on: the I/O pool, for steps that only read."""
        return self._rt.io

    def step(self, pipe: Any) -> None:
        raise NotImplementedError

    def _run_step(self, pipe: Any) -> None:
        if not self._stopping:
            self.step(pipe)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            pipe = self._rt.pipeline
            if pipe is None or not self.applies(pipe):
                continue
            step = self._step = asyncio.ensure_future(
                self.pool().run(self._run_step, pipe, priority=self.priority))
            try:
                # Shielded: cancelling this loop must leave the step for ``stop`` to await,
                # not report it finished while its thread still runs.
                await asyncio.shield(step)
            except Overloaded:
                pass
            except Exception:
                log.exception("%s: a step failed; the next tick retries", self.task_name)
            finally:
                if step.done():
                    self._step = None


async def stop_all(*tasks: BackgroundTask) -> None:
    """Stop ``tasks`` together: each may wait up to its ``stop_wait_s`` for a running step,
    and one after another those waits would add up."""
    await asyncio.gather(*(t.stop() for t in tasks))
