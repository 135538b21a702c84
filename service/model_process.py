"""The HTTP service's models in a child process, behind the stage Protocols.

Why: request threads (related coverage, stored summaries, listings) are milliseconds of
Python each, while model calls (embedding, spaCy, the summariser's selection, stance)
hold the interpreter lock between onnxruntime calls. In one process every lookup queues
for that lock behind inference; on a 2-core box under load that made ``related`` p99
~200 ms for a 3 ms lookup. In a child process the models have their own interpreter;
ingest and the warmer run in another one at a lower CPU priority (``background_nice``),
so the kernel gives the cores to requests first. The request lane's own priority is
``inference_nice`` (0 by default: the summarise p99 was lower at 0 than at 5 in three
paired load runs).

``ModelProcess`` starts one worker per *lane* (``spawn``: forking a process that already
runs onnxruntime and threads is unsafe), each loading the stages with the same loaders the
in-process pipeline uses (``storyline.service.pipeline.load_*``), so the answers are the
same. A call goes to the lane of the thread that makes it (``use_lane``, set by the
service's pools): the ``read`` lane answers requests, the ``background`` lane
(``background_process``) runs ingest and the idle-time warmer at a still lower priority
(``background_nice``). A worker runs one call at a time, so with one lane a summary asked
for on request waited for a running ingest batch (~130 ms an article) or warmer analysis
to finish; in its own process the kernel scheduler hands it the core instead. The
proxies implement ``Embedder``, ``Summariser``, ``ActorExtractor`` and
``StanceTagger`` and an entity-key function; the pipeline takes them as it takes any
stage. Arguments and results are plain dataclasses and arrays (pickled); errors raised in
the worker (``InvalidInput`` …) are raised again in the caller. Calls are serialised by
the caller's bounded pools; each worker runs one at a time (the read lane has
``inference_workers`` workers, the background lane one). The workers share per-article
results (parses, sentence vectors, mention sentiment) through the feature cache file
(``storyline.models.shared_cache``), so what the background lane computed for a story a
read finds. If a worker dies, its calls fail with ``ModelUnavailable`` and the next call
starts a fresh one; a worker found dead before a call is given one (a worker the OOM
killer took while idle costs no failed answer), unless the lane is crash-looping. A call
not answered within ``model_call_timeout_s`` fails with ``ModelUnavailable`` and its
worker is killed (a native call that never returns ignores anything gentler); the next call
starts a fresh one. Each worker has its own pool (queues and call numbers), so a late
answer of a killed worker can never reach another call, and killing it fails only the
calls sent to that worker: the lane's other workers answer theirs (a call goes to the
worker with the fewest calls in flight). Once ``close`` has begun, calls
fail instead of starting workers nobody would stop.

``ModelProcess.unservable`` says, without a model call, when that cannot work: the
replacement found models rebuilt since the service started and refuses every call (only a
restart of the service fixes that), or a lane's replacement workers keep dying before they
answer anything. The HTTP service's health probes read it.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from storyline.models.errors import ModelUnavailable
from storyline.models.types import Actor, ActorStance, Article, Summary
from storyline.service.heap import settle_heap
from storyline.service.settings import Settings

__all__ = [
    "BACKGROUND_LANE",
    "READ_LANE",
    "ModelProcess",
    "ModelsChanged",
    "Unservable",
    "current_lane",
    "use_lane",
]

log = logging.getLogger(__name__)


class ModelsChanged(ModelUnavailable):  # type: ignore[misc]  # Any when mypy runs on folders
    """A worker's refusal of models rebuilt since the service started: its own type, so the
    service can tell this lasting condition from a passing ``ModelUnavailable``."""


#: what the health probes say about it (``ModelsChanged`` names the models folder, and the
#: probes are public)
MODELS_CHANGED = ("the built models changed since the service started (`storyline models "
                  "build` ran?); the model process refuses every call: restart the service "
                  "to use them")

#: a lane is crash-looping after this many workers in a row died before answering any call
CRASH_LOOP_STARTS = 3
#: and is reported unservable this long after the last such death. Not for good: a worker
#: is only started by a call, so a readiness 503 that never ended would keep away the
#: traffic whose next call could bring a working worker back (a half-open circuit).
CRASH_LOOP_COOLDOWN_S = 30.0
#: a fresh worker's first call also waits for it to start and load its stages (spawn,
#: imports, the preloaded models and their warm-up: seconds, far more on a busy box), so
#: it gets this much on top of ``model_call_timeout_s``
START_GRACE_S = 300.0


@dataclass(frozen=True)
class Unservable:
    """Why the model process cannot answer model calls now (``ModelProcess.unservable``)."""

    #: for the health probes' problem documents: names the cause, no file paths
    detail: str
    #: only restarting the service fixes it: liveness fails too
    restart: bool
    #: seconds after which asking again may find it fixed; None when waiting cannot help
    retry_after: int | None = None


# -- the worker side ------------------------------------------------------------------------
_STAGES: dict[str, Any] = {}


#: how often the worker checks that the process that started it is still alive
PARENT_CHECK_S = 1.0


def _exit_with_parent(parent: int) -> None:
    """Exit when the parent is gone. A parent killed outright (SIGKILL, OOM) cannot shut
    the pool down, and the worker would otherwise wait on its call queue forever, holding
    the models' memory (found as orphans after the crash test)."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(0)


def _models_fingerprint(settings: Settings) -> str:
    """The built files' sha256s as the manifest lists them now (``-`` when unreadable)."""
    import hashlib
    import json

    from storyline.models.registry import Manifest

    try:
        recs = Manifest(settings.models_dir).load()
    except ModelUnavailable:
        return "-"
    files = {name: rec.files for name, rec in recs.items()}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _init(settings_json: str, nice: int, parent: int, preload: tuple[str, ...] = (),
          expected_models: str | None = None) -> None:
    from storyline.models.nlp import keep_torch_out

    keep_torch_out()  # the stages load spaCy, whose thinc imports torch if it is installed
    threading.Thread(target=_exit_with_parent, args=(parent,), name="sl-parent-watch",
                     daemon=True).start()
    if hasattr(os, "getpriority"):
        # Relative to the parent process, not to the thread that happened to start this
        # worker: a worker started from a lower-priority pool thread inherits that
        # thread's nice, and both lanes then ended up at 19, the read lane competing as
        # an equal with the background one.
        try:
            target = min(19, os.getpriority(os.PRIO_PROCESS, parent) + nice)
            if target != os.getpriority(os.PRIO_PROCESS, 0):
                os.setpriority(os.PRIO_PROCESS, 0, target)
        except OSError as exc:  # raising priority back needs a privilege: keep what it has
            log.warning("model process: could not set its priority to %s: %s", nice, exc)
    settings = _STAGES["settings"] = Settings.model_validate_json(settings_json)
    _STAGES["models"] = found = _models_fingerprint(settings)
    if expected_models is not None and found != expected_models:
        # A worker started after a crash would load models rebuilt since the service
        # started, and e.g. index new articles with another embedder than the index's,
        # under the analysis keys of the old models. Refuse every call instead.
        _STAGES["stale"] = (
            f"the models in {settings.models_dir} changed since the service started "
            "(`storyline models build` ran?); restart the service to use them")
        return
    # In the initializer, so every worker of a lane (and one started after a crash) is
    # ready before it takes a call.
    for stage in preload:  # optional stages: a failure is logged, the service still serves
        try:
            _stage_loaded(stage)
        except Exception as exc:
            log.warning("model process: stage %s not loaded: %s", stage, exc)


def _stage(name: str) -> Any:
    from storyline.service import pipeline as p

    if name not in _STAGES:
        s: Settings = _STAGES["settings"]
        if name == "embedder":
            _STAGES[name] = p.load_embedder(s)
        elif name == "summariser":
            _STAGES[name] = p.load_summariser(s, _stage("embedder"))
        elif name == "actors":
            _STAGES[name] = p.load_actor_extractor(s)
        elif name == "stance":
            _STAGES[name] = p.load_stance_tagger(s, _stage("actors"))
        elif name == "entities":
            from storyline.models.nlp import entity_keys

            _STAGES[name] = entity_keys
        else:  # pragma: no cover - the proxies below name only these
            raise ValueError(f"unknown stage {name}")
        # a stage is kept for the process's lifetime: out of the collector's full passes
        settle_heap(f"model process, stage {name}")
    return _STAGES[name]


def _fresh() -> None:
    stale = _STAGES.get("stale")
    if stale is not None:
        raise ModelsChanged(stale, lasting=True)


def _call(stage: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    _fresh()
    target = _stage(stage)
    fn = target if method == "__call__" else getattr(target, method)
    return fn(*args, **kwargs)


def _info() -> dict[str, Any]:
    _fresh()
    emb = _stage("embedder")
    return {"dim": int(emb.dim), "model_id": str(emb.model_id), "pid": os.getpid(),
            "models": _STAGES["models"]}


# -- the caller side ----------------------------------------------------------------------
READ_LANE = "read"
BACKGROUND_LANE = "background"
_THREAD = threading.local()


def use_lane(lane: str) -> None:
    """Send this thread's model calls to ``lane`` (a lane the process lacks means read)."""
    _THREAD.lane = lane


def current_lane() -> str:
    lane: str = getattr(_THREAD, "lane", READ_LANE)
    return lane


class ModelProcess:
    """Child processes holding the model stages, one per lane; see the module docstring."""

    def __init__(self, settings: Settings, *, preload: Sequence[str] = ()) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        #: lane -> CPU nice of its worker; the read lane always exists
        self.lanes: dict[str, int] = {READ_LANE: settings.inference_nice}
        if settings.background_process:
            self.lanes[BACKGROUND_LANE] = max(settings.inference_nice, settings.background_nice)
        #: lane -> worker processes: the read lane runs ``inference_workers`` calls at once
        self.workers = {lane: settings.inference_workers if lane == READ_LANE else 1
                        for lane in self.lanes}
        self._preload = tuple(preload)
        self._timeout = settings.model_call_timeout_s
        #: set by ``close``: no call starts a worker after it
        self._closed = False
        #: lane -> one single-worker pool per worker (None until a call starts it): a
        #: pool of several workers is broken as a whole when one of them is killed
        self._pools: dict[str, list[ProcessPoolExecutor | None]] = {
            lane: [None] * n for lane, n in self.workers.items()}
        #: calls sent to a pool and not finished yet, for picking the least busy worker
        self._in_flight: dict[ProcessPoolExecutor, int] = {}
        #: finished calls already taken off ``_in_flight``: a call is settled by whichever
        #: comes first, its waiter or its done-callback (see ``_done``), and only once
        self._settled: weakref.WeakSet[Future[Any]] = weakref.WeakSet()
        #: the built models as the first workers found them (``_models_fingerprint``);
        #: workers started later (after a crash) refuse calls unless they find the same
        self._models: str | None = None
        #: set once a worker refused rebuilt models (or a crash found them): for good
        self._stale: str | None = None
        #: pools whose worker answered at least one call (a refusal or error included)
        self._answered: set[ProcessPoolExecutor] = set()
        #: lane -> workers in a row that died before answering anything, and when the
        #: last one did (``time.monotonic``)
        self._failed_starts: dict[str, int] = dict.fromkeys(self.lanes, 0)
        self._last_failed_start: dict[str, float] = {}
        try:
            # Every lane loads the embedder (the one stage that must load) at once.
            infos = self._gather({lane: self._start(lane, _info) for lane in self.lanes})
            if len({i["models"] for i in infos.values()}) > 1:
                raise ModelUnavailable("the models changed while the service started; "
                                       "start it again")
        except BaseException:
            self.close()
            raise
        info = infos[READ_LANE]
        self._models = info["models"]
        self.dim: int = info["dim"]
        self.model_id: str = info["model_id"]
        self.pids: dict[str, int] = {lane: i["pid"] for lane, i in infos.items()}
        self.pid: int = self.pids[READ_LANE]
        self.embedder = _ProxyEmbedder(self)
        self.summariser = _ProxySummariser(self)
        self.actors = _ProxyActors(self)
        self.stance = _ProxyStance(self)

    def _executor(self, lane: str) -> ProcessPoolExecutor:
        """The lane's worker with the fewest calls in flight (a running one before a new
        one), counted as busy with one more until ``_done``."""
        with self._lock:
            if self._closed:
                # A fresh pool now would outlive close() (it never shuts it down), its
                # worker loading the models while the service stops.
                raise ModelUnavailable("the model process is shutting down")
            slots = self._pools[lane]

            def load(i: int) -> tuple[int, bool]:
                p = slots[i]
                return (0, True) if p is None else (self._in_flight.get(p, 0), False)

            i = min(range(len(slots)), key=load)
            pool = slots[i]
            if pool is None:
                pool = slots[i] = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"), initializer=_init,
                    initargs=(self._settings.model_dump_json(), self.lanes[lane], os.getpid(),
                              self._preload, self._models),
                )
            self._in_flight[pool] = self._in_flight.get(pool, 0) + 1
            return pool

    def _done(self, pool: ProcessPoolExecutor, fut: Future[Any] | None = None) -> None:
        """A call sent to ``pool`` has finished: called with its future by the future's
        done-callback and by the waiter that saw it finish, whichever comes first counts
        (a waiter wakes before the callbacks run, so a caller's next call could otherwise
        find this worker still busy), or without one for a call that never started."""
        with self._lock:
            if fut is not None:
                if fut in self._settled:
                    return
                self._settled.add(fut)
            left = self._in_flight.get(pool, 0) - 1
            if left > 0:
                self._in_flight[pool] = left
            else:
                self._in_flight.pop(pool, None)

    def _start(self, lane: str, fn: Any, *args: Any) -> tuple[ProcessPoolExecutor, Future[Any]]:
        for attempt in (1, 2):
            pool = self._executor(lane)
            died = _stopped(pool)
            if died is None:
                try:
                    fut = pool.submit(fn, *args)
                except BrokenProcessPool as exc:
                    died = str(exc)
                except RuntimeError:
                    # Shut down by another thread since _executor handed it out (its call
                    # timed out, or close): the next round takes the fresh one, or refuses.
                    self._done(pool)
                    continue
                else:
                    fut.add_done_callback(functools.partial(self._done, pool))
                    return pool, fut
            self._done(pool)
            # It died before this call reached it (the OOM killer took it while idle), so
            # this call did not kill it: it gets one fresh worker rather than an error.
            # Not while the lane is crash-looping: that worker would likely die as well.
            error = self._broken(lane, pool, died)
            if attempt == 2 or self._crash_loop_left(lane) > 0:
                raise error
            log.warning("model process: the %s-lane worker had stopped while idle (%s); "
                        "starting a fresh one", lane, died)
        raise ModelUnavailable(f"the model process ({lane} lane) is shutting down")

    def _gather(self, started: dict[str, tuple[ProcessPoolExecutor, Future[Any]]],
                ) -> dict[str, Any]:
        """Wait for calls started on several lanes (by lane); a dead worker becomes
        ``ModelUnavailable`` (after every call has finished, so none runs unobserved)."""
        out: dict[str, Any] = {}
        error: BaseException | None = None
        begun = time.monotonic()
        for lane, (pool, fut) in started.items():
            limit = self._timeout + (0.0 if pool in self._answered else START_GRACE_S)
            if not wait_futures([fut], timeout=max(0.0, begun + limit - time.monotonic())).done:
                error = error or self._timed_out(lane, pool, limit)
                continue
            self._done(pool, fut)
            try:
                out[lane] = fut.result()
            except BrokenProcessPool as exc:
                error = error or self._broken(lane, pool, exc)
                continue
            except CancelledError:
                # Its pool was shut down (another call on it timed out) before a worker
                # took it: the caller sees the same error as for a dead worker, not a 500.
                error = error or ModelUnavailable(
                    f"the model process stopped ({lane} lane) before the call ran")
                continue
            except ModelsChanged as exc:
                self._mark_stale(exc.detail)
                error = error or exc
            except BaseException as exc:
                error = error or exc
            self._answered_by(lane, pool)
        if error is not None:
            raise error
        return out

    def _answered_by(self, lane: str, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if pool in self._pools[lane]:  # not a late answer from a replaced pool
                self._answered.add(pool)
                self._failed_starts[lane] = 0

    def _mark_stale(self, reason: str) -> None:
        with self._lock:
            first = self._stale is None
            self._stale = self._stale or reason
        if first:
            log.error("model process: %s", reason)

    def _timed_out(self, lane: str, pool: ProcessPoolExecutor, limit: float) -> ModelUnavailable:
        # Read before _broken's shutdown drops the executor's reference to them.
        procs = list((getattr(pool, "_processes", None) or {}).values())
        self._broken(lane, pool, "call timed out")  # the next call gets a fresh pool
        # SIGKILL: nothing the wedged call runs (a native loop, a signal handler) can delay
        # it. The pool is this one worker's: calls queued behind the wedged one fail with
        # it, as in a crash; the lane's other workers go on with theirs.
        for proc in procs:
            proc.kill()
        log.error("model process: a %s-lane call did not answer within %g s; killed its "
                  "worker (pids %s), the next call starts a fresh one", lane, limit,
                  ", ".join(str(p.pid) for p in procs) or "-")
        return ModelUnavailable(
            f"a model call did not answer within {limit:g} s ({lane} lane); its worker was "
            "stopped and the next call starts a fresh one")

    def _broken(self, lane: str, pool: ProcessPoolExecutor,
                exc: BaseException | str) -> ModelUnavailable:
        with self._lock:
            slots = self._pools.get(lane, [])
            current = pool in slots
            if current:
                slots[slots.index(pool)] = None  # the next call there starts a fresh worker
                self._in_flight.pop(pool, None)
                # Once per dead pool, however many of its calls see it die.
                if pool not in self._answered:
                    self._failed_starts[lane] += 1
                    self._last_failed_start[lane] = time.monotonic()
                    if self._failed_starts[lane] == CRASH_LOOP_STARTS:
                        log.error("model process: %d %s-lane workers in a row died before "
                                  "answering a call", CRASH_LOOP_STARTS, lane)
            self._answered.discard(pool)
        pool.shutdown(wait=False, cancel_futures=True)
        if current and self._models is not None and self._stale is None:
            # The replacement will refuse rebuilt models; the manifest (one small file,
            # read only when a worker died) says so now rather than at the next call.
            found = _models_fingerprint(self._settings)
            if found != self._models:
                self._mark_stale(
                    f"the models in {self._settings.models_dir} changed since the service "
                    "started (`storyline models build` ran?); restart the service to use them")
        return ModelUnavailable(f"the model process stopped ({lane} lane): {exc}")

    def unservable(self) -> Unservable | None:
        """Why model calls cannot be answered now, or None; no model call, no I/O."""
        if self._stale is not None:
            return Unservable(MODELS_CHANGED, restart=True)
        for lane, failed in self._failed_starts.items():
            left = self._crash_loop_left(lane)
            if left > 0:
                return Unservable(
                    f"the model process's {lane} lane keeps failing: its last {failed} "
                    "workers died before answering a call; the next call after Retry-After "
                    "starts another", restart=False, retry_after=max(1, math.ceil(left)))
        return None

    def _crash_loop_left(self, lane: str) -> float:
        """Seconds left of the lane's crash-loop cooldown (0: not crash-looping)."""
        if self._failed_starts.get(lane, 0) < CRASH_LOOP_STARTS:
            return 0.0
        left = self._last_failed_start.get(lane, 0.0) + CRASH_LOOP_COOLDOWN_S - time.monotonic()
        return max(0.0, left)

    def _submit(self, fn: Any, *args: Any, lane: str | None = None) -> Any:
        lane = lane or current_lane()
        if lane not in self.lanes:
            lane = READ_LANE
        return self._gather({lane: self._start(lane, fn, *args)})[lane]

    def call_info(self) -> dict[str, Any]:
        info: dict[str, Any] = self._submit(_info, lane=READ_LANE)
        return info

    def call(self, stage: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._submit(_call, stage, method, args, kwargs)

    def entity_keys(self, texts: list[str]) -> list[tuple[str, ...]]:
        keys: list[tuple[str, ...]] = self.call("entities", "__call__", texts)
        return keys

    def close(self) -> None:
        """Stop the workers once their calls in flight have answered (or timed out)."""
        with self._lock:
            self._closed = True
            pools = [p for slots in self._pools.values() for p in slots if p is not None]
            self._pools = {lane: [None] * len(slots) for lane, slots in self._pools.items()}
            self._answered.clear()
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=False)


def _stopped(pool: ProcessPoolExecutor) -> str | None:
    """Why ``pool`` cannot take a call (a worker of it has exited), or None.

    The executor notices a dead worker only once it next waits for one, and the call
    submitted meanwhile then failed with it. A poll of the workers' sentinels is one
    syscall."""
    broken = getattr(pool, "_broken", False)
    if broken:
        return str(broken)
    procs = list((getattr(pool, "_processes", None) or {}).values())
    exited = multiprocessing.connection.wait([p.sentinel for p in procs], timeout=0)
    if exited:
        codes = [p.exitcode for p in procs if p.sentinel in exited]
        return f"a worker exited (code {', '.join(map(str, codes))})"
    return None


_WARM_UP = [Article(id="warm-up", title="Warm up",
                   text="Mayor Anne Hidalgo said Paris would host the summit. "
                        "France's president praised the decision on Monday.")]


def _stage_loaded(name: str) -> None:
    """Load a stage and run it once: some load their parts on first use (the spaCy
    pipeline), and the first request to a fresh worker would pay ~1 s for it while
    the requests behind it wait."""
    stage = _stage(name)
    if name == "summariser":
        stage.summarise(_WARM_UP, 20)
    elif name == "actors":
        stage.extract(_WARM_UP)
    elif name == "stance":
        stage.tag(_stage("actors").extract(_WARM_UP), _WARM_UP)


class _ProxyEmbedder:
    def __init__(self, proc: ModelProcess) -> None:
        self._proc = proc

    @property
    def process(self) -> ModelProcess:
        """The model process behind it: the service's health probes ask it what it can
        serve (the pipeline holds only the proxies)."""
        return self._proc

    @property
    def dim(self) -> int:
        return self._proc.dim

    @property
    def model_id(self) -> str:
        return self._proc.model_id

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        # A str goes as is, for the embedder to refuse: list() made one text per character.
        arg = texts if isinstance(texts, str) else list(texts)
        out: npt.NDArray[np.float32] = self._proc.call("embedder", "embed", arg)
        return out


class _ProxySummariser:
    def __init__(self, proc: ModelProcess) -> None:
        self._proc = proc

    def summarise(self, articles: Sequence[Article], budget_words: int = 80) -> Summary:
        out: Summary = self._proc.call("summariser", "summarise", list(articles), budget_words)
        return out


class _ProxyActors:
    def __init__(self, proc: ModelProcess) -> None:
        self._proc = proc

    def extract(self, articles: Sequence[Article]) -> list[Actor]:
        out: list[Actor] = self._proc.call("actors", "extract", list(articles))
        return out


class _ProxyStance:
    def __init__(self, proc: ModelProcess) -> None:
        self._proc = proc

    def tag(self, actors: Sequence[Actor], articles: Sequence[Article]) -> list[ActorStance]:
        out: list[ActorStance] = self._proc.call("stance", "tag", list(actors), list(articles))
        return out
