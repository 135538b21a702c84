"""What the handlers share: the pipeline (once loaded), bounded worker pools, auth, body checks.

Blocking work never runs on the event loop. Model calls (embedding, summaries) go to the
``inference`` pool: ``inference_workers`` threads plus at most ``inference_queue`` waiting
calls; one more is refused at once with 503 + Retry-After instead of stalling the loop.
Store and index reads (related, lookups, listings) go to a separate ``io`` pool so a long
summary never delays a millisecond lookup. Writes (ingest, delete, index file flushes) wait
for the pipeline's write lock, so they run on the ``background`` pool, never on ``io``: two
deletes waiting behind a long ingest would otherwise take both I/O threads. With the models
on threads (``model_process`` off), on Linux the inference threads run ``inference_nice``
lower in CPU priority (threads they start inherit it): set it (10 measured best in that
mode) so on a small box they do not take the cores from the lookups whenever both are
runnable.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import itertools
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    ServiceUnavailableException,
)
from litestar.params import QueryParameter
from litestar.utils.scope.state import ScopeState

from storyline.index.store import SQLiteStore
from storyline.models.errors import InvalidInput, Overloaded
from storyline.service.api import metrics
from storyline.service.api.problems import SLASH_IN_ID, encoded_slash
from storyline.service.settings import Settings

__all__ = [
    "PRIORITY_BACKGROUND",
    "PRIORITY_READ",
    "PRIORITY_WRITE",
    "BoundedPool",
    "Rt",
    "Runtime",
    "authorize",
    "before_request",
    "check_write_key",
    "key_digest",
    "one_search_thread",
    "rate_limit_identifier",
    "strict_body",
]

log = logging.getLogger("storyline.api")

T = TypeVar("T")

#: Store/index reads are milliseconds and mostly hold the GIL: two threads keep them
#: flowing beside inference. Server CPU per related request at 16 concurrent clients
#: measured 4.9 / 4.3 / 3.8 ms with 4 / 2 / 1 threads (GIL hand-offs), requests/s
#: 201 / 217 / 224; one thread would let a slow read block every lookup.
IO_WORKERS = 2
IO_QUEUE = 256


def one_search_thread() -> None:
    """Run FAISS searches on the calling thread only (OpenMP settings are per thread).

    A single-vector search split over OpenMP threads spins on a barrier; on a busy
    2-core machine one flat search over 300 vectors took 20 ms instead of 0.1 ms, and
    the spinning slowed every other request too. Requests already give the parallelism.
    """
    import faiss

    faiss.omp_set_num_threads(1)


def lower_priority(nice: int) -> None:
    """Raise the calling *thread's* nice value by ``nice`` (Linux: nice is per thread)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
    except OSError as exc:  # not permitted in some sandboxes: run at normal priority
        log.warning("could not lower the priority of %s: %s",
                    threading.current_thread().name, exc)


#: ``BoundedPool.run`` priorities: a free worker takes the lowest value first, FIFO within
#: one. A reader waiting on an answer goes before an ingest (whose caller also waits, but
#: for a write that costs the same whenever it runs), which goes before background work.
PRIORITY_READ = 0
PRIORITY_WRITE = 1
PRIORITY_BACKGROUND = 2


class BoundedPool:
    """A thread pool that refuses work beyond ``workers + queue`` instead of queueing it.

    Waiting calls run by priority, then in arrival order: with one inference worker, a
    summary computed on request would otherwise wait behind every queued ingest batch.
    """

    def __init__(self, name: str, workers: int, queue: int, nice: int = 0,
                 lane: str | None = None) -> None:
        self.name = name
        self.workers = workers
        self.capacity = workers + queue
        self.pending = 0  # touched only on the event loop thread
        self.calls = 0  # calls run so far
        self._run_s = 0.05  # moving average of one call's run time, for Retry-After
        # the labelled children, looked up once: .labels() costs a lock and a tuple per call
        self._pending_gauge = metrics.POOL_PENDING.labels(name)
        self._rejected = metrics.REJECTED.labels(name)

        def init() -> None:
            one_search_thread()
            lower_priority(nice)
            if lane is not None:
                from storyline.service.model_process import use_lane

                use_lane(lane)

        self._exec = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"sl-{name}",
                                        initializer=init)
        # Each executor job pops the best waiting call, so the executor's own FIFO only
        # counts jobs and the heap decides the order.
        self._waiting: list[tuple[int, int, Future[Any], Callable[[], Any]]] = []
        self._order = itertools.count()
        self._heap_lock = threading.Lock()

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._exec

    def retry_after(self) -> int:
        waiting = max(1, self.pending - self.workers + 1)
        return max(1, math.ceil(self._run_s * waiting / self.workers))

    async def run(self, fn: Callable[..., T], *args: Any, priority: int = PRIORITY_READ,
                  **kwargs: Any) -> T:
        if self.pending >= self.capacity:
            self._rejected.inc()
            raise Overloaded(
                f"the {self.name} queue is full ({self.capacity} calls); retry later",
                retry_after=self.retry_after(),
            )
        loop = asyncio.get_running_loop()

        def job() -> T:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._run_s = 0.8 * self._run_s + 0.2 * (time.perf_counter() - t0)

        self.pending += 1
        self._pending_gauge.set(self.pending)
        fut: Future[T] = Future()
        with self._heap_lock:
            heapq.heappush(self._waiting, (priority, next(self._order), fut, job))
        self._exec.submit(self._run_next)

        # Released when the thread is really done, even if the awaiting request is cancelled.
        def release(_: Future[T]) -> None:
            loop.call_soon_threadsafe(self._release)

        fut.add_done_callback(release)
        return await asyncio.wrap_future(fut)

    def _run_next(self) -> None:
        with self._heap_lock:
            _, _, fut, job = heapq.heappop(self._waiting)
        if not fut.set_running_or_notify_cancel():
            return  # its request went away while it waited
        self.calls += 1
        try:
            result = job()
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _release(self) -> None:
        self.pending -= 1
        self._pending_gauge.set(self.pending)

    def shutdown(self) -> None:
        """Let running and queued calls finish (accepted writes are never dropped)."""
        self._exec.shutdown(wait=True)


class Runtime:
    """Per-app state: settings, the pipeline once loaded, the pools."""

    def __init__(self, settings: Settings, pipeline: Any | None) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.owns_pipeline = pipeline is None
        self.load_error: str | None = None
        self.loading = pipeline is None
        #: the pipeline's ``ModelProcess`` once loaded (``attach``); None with in-process models
        self.model_process: Any | None = None
        # With the models in child processes the pool threads here only wait on them and
        # run the store's Python: at a lower nice one that holds the interpreter lock
        # would be preempted while every request thread waits for that lock.
        thread_nice = 0 if settings.model_process else settings.inference_nice
        self.inference = BoundedPool("inference", settings.inference_workers,
                                     settings.inference_queue, nice=thread_nice)
        self.io = BoundedPool("io", IO_WORKERS, IO_QUEUE)
        #: ingest and the warmer; their own pool (and model process) when the models run
        #: in child processes, else they share ``inference`` (ranked below reads)
        self.background = self.inference
        if settings.model_process and settings.background_process:
            from storyline.service.model_process import BACKGROUND_LANE

            self.background = BoundedPool("background", 1, settings.inference_queue,
                                          lane=BACKGROUND_LANE)
        from storyline.service.api.warmer import StoryWarmer

        self.warmer = StoryWarmer(self, enabled=settings.warm_stories)
        from storyline.service.api.replica import ChangeFollower

        self.follower = ChangeFollower(self, settings.replica_sync_s)
        from storyline.service.api.index_saver import IndexSaver

        self.index_saver = IndexSaver(self, settings.index_save_interval_s)
        self._digests = frozenset(d.strip().lower() for d in settings.api_keys_sha256)
        self._lock = threading.Lock()

    async def lookup(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a short store/index read: on the event loop when ``inline_lookups`` and the
        store is the embedded SQLite, else on the I/O pool. Inline saves the hop to a pool
        thread and back, but holds up every other request meanwhile: off by default, as
        it lowered summarise p99 and raised related p99 (bench/RESULTS.md, session 11)."""
        if self.settings.inline_lookups and isinstance(
                getattr(self.pipeline, "store", None), SQLiteStore):
            return fn(*args, **kwargs)
        return await self.io.run(fn, *args, **kwargs)

    def get_pipeline(self) -> Any:
        if self.pipeline is not None:
            return self.pipeline
        if self.load_error is not None:
            raise ServiceUnavailableException(
                "the service could not load its models; see the server log",
                headers={"Retry-After": "30"},
            )
        raise ServiceUnavailableException(
            "the service is starting (loading models and the index)",
            headers={"Retry-After": "2"},
        )

    def attach(self, pipeline: Any) -> None:
        """Note the loaded pipeline's model process (the health probes ask it), if any."""
        proc = getattr(getattr(pipeline, "embedder", None), "process", None)
        self.model_process = proc if callable(getattr(proc, "unservable", None)) else None

    def model_condition(self) -> Any | None:
        """What the model process says it cannot serve (``model_process.Unservable``), or
        None: it can, or the models run in this process. Its state only: a probe costs no
        model call."""
        if self.model_process is None:
            return None
        return self.model_process.unservable()

    def not_serving(self) -> ServiceUnavailableException | None:
        """Why the loaded service should take no traffic now (a readiness 503), or None.
        Retry-After only where waiting can fix it."""
        cond = self.model_condition()
        if cond is not None:
            after = cond.retry_after
            return ServiceUnavailableException(
                cond.detail, headers={"Retry-After": str(after)} if after else None)
        lagging = self.follower.failing_for()
        if lagging is not None:
            return ServiceUnavailableException(
                f"this replica's index has not followed the store's changes for {lagging:.0f} "
                "s: every poll of the store's change feed failed (see the server log)",
                headers={"Retry-After": str(self.follower.retry_after())})
        return None

    def key_ok(self, token: str | None) -> bool:
        if not token or not self._digests:
            return False
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        ok = False
        for d in self._digests:  # no early exit: the time taken does not depend on which key
            ok |= hmac.compare_digest(digest, d)
        return ok


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    auth = connection.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def runtime_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Runtime:
    rt: Runtime = connection.app.state.runtime
    return rt


def check_write_key(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    rt = runtime_of(connection)
    if not rt._digests:
        raise NotAuthorizedException(
            "writes need an API key and none is configured (set STORYLINE_API_KEYS_SHA256)"
        )
    token = bearer_token(connection)
    if token is None:
        raise NotAuthorizedException("this endpoint needs 'Authorization: Bearer <API key>'")
    if not rt.key_ok(token):
        raise NotAuthorizedException("the API key is not valid")


def authorize(request: Request[Any, Any, Any]) -> None:
    """``opt={"auth": "write"}`` needs a key; reads need one if configured.

    Run by ``before_request`` rather than as a litestar guard: litestar hands each guard a
    ``copy()`` of the route handler, 2 % of the service's interpreter time under load.
    """
    if request.method == "OPTIONS":  # answers Allow only; reads nothing
        return
    level = request.route_handler.opt.get("auth", "read")
    if level == "write":
        check_write_key(request)
        return
    if level == "public" or request.scope["path"].startswith("/schema"):
        return
    rt = runtime_of(request)
    if rt.settings.read_requires_key:
        token = bearer_token(request)
        if token is None:
            raise NotAuthorizedException("reads need 'Authorization: Bearer <API key>' here")
        if not rt.key_ok(token):
            raise NotAuthorizedException("the API key is not valid")


def rate_limit_identifier(request: Request[Any, Any, Any]) -> str:
    """Per API key when a valid one is presented, else per client address."""
    token = bearer_token(request)
    if token is not None and runtime_of(request).key_ok(token):
        return "key:" + key_digest(token)[:16]
    client = request.client
    return "ip:" + (client.host if client else "unknown")


def _query_fields(handler: Any) -> dict[str, Any]:
    """The handler's query parameters: name as sent -> its ``FieldDefinition``."""
    return {
        fd.kwarg_definition.query or name: fd
        for name, fd in handler.parsed_fn_signature.parameters.items()
        if isinstance(fd.kwarg_definition, QueryParameter)
    }


#: a query integer, written plainly: litestar converted laxly (``1e3`` was 1000, ``10.0``
#: 10) and refused a leading zero only as "Expected `int`, got `str`"
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)")
#: digits beyond any limit of ours, and beyond what litestar converts (64 bits)
_MAX_DIGITS = 18
#: a query boolean as JSON and the OpenAPI document spell it (litestar also took 1/0/True)
_BOOLEAN = frozenset({"true", "false"})


def _query_kind(fd: Any) -> str:
    """``list``, ``bool``, ``int`` or ``str``: how a query value of ``fd``'s type is read."""
    if fd.is_optional:
        inner = [t for t in fd.inner_types if t.annotation is not type(None)]
        fd = inner[0] if len(inner) == 1 else fd
    if fd.is_non_string_sequence:
        return "list"
    if fd.is_subclass_of(bool):
        return "bool"
    return "int" if fd.is_subclass_of(int) else "str"


def _strict_query(request: Request[Any, Any, Any]) -> None:
    """422 for an unknown parameter, a scalar one given more than once (litestar keeps the
    last: ``?page=1&page=2`` served page 2), or an integer or boolean not written plainly."""
    declared = _query_fields(request.route_handler)
    query = request.query_params
    unknown = sorted(set(query) - set(declared))
    if unknown:
        raise InvalidInput(
            f"unknown query parameter(s): {', '.join(unknown)}",
            errors=[{"field": u, "message": "unknown query parameter", "source": "query"}
                    for u in unknown],
        )
    errors: list[dict[str, str]] = []
    for name in query:
        kind = _query_kind(declared[name])
        values = query.getall(name)
        if kind == "list":
            continue
        if len(values) > 1:
            msg = "given more than once"
        elif kind == "int" and not _DECIMAL.fullmatch(values[0]):
            msg = f"must be a decimal integer (got {values[0][:40]!r})"
        elif kind == "int" and len(values[0].lstrip("-")) > _MAX_DIGITS:
            msg = f"out of range (more than {_MAX_DIGITS} digits)"
        elif kind == "bool" and values[0] not in _BOOLEAN:
            msg = f"must be true or false (got {values[0][:40]!r})"
        else:
            continue
        errors.append({"field": name, "message": msg, "source": "query"})
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidInput(f"{errors[0]['field']}: {errors[0]['message']}{more}", errors=errors)


_PARAM_TYPE = re.compile(r"\{(\w+):[^}]*\}")  # "/a/{x:str}" -> "/a/{x}", as in path_template


def _options(request: Request[Any, Any, Any]) -> Response[None] | None:
    """``Allow`` listing every method of the path (litestar's own lists one handler's)."""
    template = request.scope.get("path_template")
    methods: set[str] = set()
    for route in request.app.routes:
        if _PARAM_TYPE.sub(r"{\1}", route.path) == template:
            methods |= set(getattr(route, "methods", ()))
    if not methods:
        return None
    return Response(None, status_code=204, headers={"Allow": ", ".join(sorted(methods))})


async def before_request(request: Request[Any, Any, Any]) -> Response[None] | None:
    """The app's ``before_request`` hook: ``authorize``, then ``strict_body``. It runs
    before the handler's parameters are parsed, so a missing key is a 401 before any 422."""
    authorize(request)
    return await strict_body(request)


async def strict_body(request: Request[Any, Any, Any]) -> Response[None] | None:
    """Check the query parameters (``_strict_query``) and the JSON body.

    litestar's own body conversion is lax (``"3"`` passes as an int) and answers a
    string holding invalid UTF-8 with a 500; this decodes the body strictly against the
    handler's ``data`` type and names the offending field. A misspelt query parameter
    (``?pagesize=5``) is a 422 naming it rather than silently ignored. A charset other than
    UTF-8 and any Content-Encoding are 415 rather than misread.
    """
    handler = request.route_handler
    if request.method == "OPTIONS":
        return _options(request)
    if request.scope["path"].startswith("/v1/"):
        if encoded_slash(request):  # /v1/articles/a%2F served article "a"
            raise NotFoundException(SLASH_IN_ID)
        _strict_query(request)
    param = handler.parsed_fn_signature.parameters.get("data")
    if param is None:
        return None
    ctype, *params = request.headers.get("content-type", "application/json").split(";")
    ctype = ctype.strip().lower()
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise HTTPException(status_code=415, detail=f"send application/json, not '{ctype}'")
    for item in params:
        name, _, value = item.partition("=")
        charset = value.strip().strip('"')
        # the body is read as UTF-8 (RFC 8259): another charset would be misread
        if name.strip().lower() == "charset" and charset.lower() not in ("utf-8", "utf8"):
            raise HTTPException(status_code=415,
                                detail=f"send the body in UTF-8, not charset '{charset}'")
    coding = request.headers.get("content-encoding", "").strip()
    if coding and coding.lower() != "identity":
        # A compressed body would be read as JSON and fail; decoding it would let a small
        # request past request_max_body_size (it applies to the bytes sent).
        raise HTTPException(
            status_code=415, headers={"Accept-Encoding": "identity"},
            detail=f"Content-Encoding '{coding}' not supported: send the body uncompressed")
    body = await request.body()  # enforces request_max_body_size (413)
    if not body.strip():
        raise ClientException("the request body is empty; send a JSON object")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClientException(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = msgspec.json.decode(body, type=param.annotation, strict=True)
    except msgspec.ValidationError as exc:
        from storyline.service.api.problems import field_errors_from_msgspec

        errors = field_errors_from_msgspec(str(exc))
        raise InvalidInput(f"{errors[0]['field']}: {errors[0]['message']}",
                           errors=errors) from None
    except msgspec.DecodeError as exc:
        raise ClientException(f"the body is not valid JSON: {exc}") from None
    # Hand litestar the decoded value so it does not parse the body a second time.
    ScopeState.from_scope(request.scope).json = data
    return None


#: handler parameter type of the injected :class:`Runtime` (dependency name ``rt``)
Rt = NamedDependency[Runtime]


def provide_runtime(request: Request[Any, Any, Any]) -> Runtime:
    """Dependency ``rt`` of every handler."""
    return runtime_of(request)


def query_time(value: str | None, name: str, source: str = "query") -> Any:
    """An ISO 8601 query/body value as an aware UTC datetime; a 422 naming ``name`` if not."""
    if value is None:
        return None
    from storyline.models.errors import InvalidArticle
    from storyline.service.ingest import parse_datetime

    try:
        return parse_datetime(value)
    except InvalidArticle as exc:  # not a date, or out of range: parse_datetime says which
        msg = exc.reason
        raise InvalidInput(f"{name}: {msg}",
                           errors=[{"field": name, "message": msg, "source": source}]) from None


def check_range(value: int, name: str, lo: int, hi: int, source: str = "query") -> int:
    if not lo <= value <= hi:
        msg = f"must be between {lo} and {hi}"
        raise InvalidInput(f"{name}: {msg} (got {value})",
                           errors=[{"field": name, "message": msg, "source": source}])
    return value
