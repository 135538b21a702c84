"""The HTTP service's models in a child process, behind the stage Protocols.

Why: request threads (related coverage, stored summaries, listings) are milliseconds of
Python each, while model calls (embedding, spaCy, the summariser's selection, stance)
hold the interpreter lock between onnxruntime calls. In one process every lookup queues
for that lock behind inference; on a 2-core box under load that made ``related`` p99
~200 ms for a 3 ms lookup. In a child process the models have their own interpreter,
and at a lower CPU priority (``inference_nice``) the kernel gives the cores to the
request process first.

``ModelProcess`` starts one worker (``spawn``: forking a process that already runs
onnxruntime and threads is unsafe) that loads the stages with the same loaders the
in-process pipeline uses (``storyline.service.pipeline.load_*``), so the answers are the
same. The proxies implement ``Embedder``, ``Summariser``, ``ActorExtractor`` and
``StanceTagger`` and an entity-key function; the pipeline takes them as it takes any
stage. Arguments and results are plain dataclasses and arrays (pickled); errors raised in
the worker (``InvalidInput`` …) are raised again in the caller. Calls are serialised by
the caller's bounded inference pool; the worker runs one at a time. If the worker dies,
its calls fail with ``ModelUnavailable`` and the next call starts a fresh one.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import numpy.typing as npt

from storyline.models.errors import ModelUnavailable, StorylineError
from storyline.models.types import Actor, ActorStance, Article, Summary
from storyline.service.settings import Settings

__all__ = ["ModelProcess"]

log = logging.getLogger(__name__)

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


def _init(settings_json: str, nice: int, parent: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), name="sl-parent-watch",
                     daemon=True).start()
    if nice > 0 and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError as exc:  # not permitted: run at normal priority
            log.warning("model process: could not lower its priority: %s", exc)
    _STAGES["settings"] = Settings.model_validate_json(settings_json)


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
    return _STAGES[name]


def _call(stage: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    target = _stage(stage)
    fn = target if method == "__call__" else getattr(target, method)
    return fn(*args, **kwargs)


def _info() -> dict[str, Any]:
    emb = _stage("embedder")
    return {"dim": int(emb.dim), "model_id": str(emb.model_id), "pid": os.getpid()}


# -- the caller side ----------------------------------------------------------------------
class ModelProcess:
    """One child process holding the model stages; see the module docstring."""

    def __init__(self, settings: Settings, *, preload: Sequence[str] = ()) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        try:
            info = self.call_info()  # loads the embedder: the one stage that must load
        except BaseException:
            self.close()
            raise
        self.dim: int = info["dim"]
        self.model_id: str = info["model_id"]
        self.pid: int = info["pid"]
        for stage in preload:  # optional stages: a failure is logged, the service still serves
            try:
                self._submit(_stage_loaded, stage)
            except StorylineError as exc:
                log.warning("model process: stage %s not loaded: %s", stage, exc)
        self.embedder = _ProxyEmbedder(self)
        self.summariser = _ProxySummariser(self)
        self.actors = _ProxyActors(self)
        self.stance = _ProxyStance(self)

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init,
                    initargs=(self._settings.model_dump_json(), self._settings.inference_nice,
                              os.getpid()),
                )
            return self._pool

    def _submit(self, fn: Any, *args: Any) -> Any:
        pool = self._executor()
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool as exc:
            with self._lock:
                if self._pool is pool:
                    self._pool = None  # the next call starts a fresh worker
            pool.shutdown(wait=False, cancel_futures=True)
            raise ModelUnavailable(f"the model process stopped: {exc}") from exc

    def call_info(self) -> dict[str, Any]:
        info: dict[str, Any] = self._submit(_info)
        return info

    def call(self, stage: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._submit(_call, stage, method, args, kwargs)

    def entity_keys(self, texts: list[str]) -> list[tuple[str, ...]]:
        keys: list[tuple[str, ...]] = self.call("entities", "__call__", texts)
        return keys

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=False)


def _stage_loaded(name: str) -> bool:
    _stage(name)
    return True


class _ProxyEmbedder:
    def __init__(self, proc: ModelProcess) -> None:
        self._proc = proc

    @property
    def dim(self) -> int:
        return self._proc.dim

    @property
    def model_id(self) -> str:
        return self._proc.model_id

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        out: npt.NDArray[np.float32] = self._proc.call("embedder", "embed", list(texts))
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
