"""The litestar app factory: ``create_app(settings)``.

Start-up loads the pipeline (embedder, spaCy, store, index) in a thread while the server
already answers: ``/health/live`` is 200 at once, ``/health/ready`` and the /v1 endpoints
answer 503 with Retry-After until loading is done. Shut-down lets running and queued calls
finish, then saves the index and closes the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Response, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.logging.config import LoggingConfig
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig

from storyline.service.api.articles import ArticlesController
from storyline.service.api.background import stop_all
from storyline.service.api.digests import DigestsController
from storyline.service.api.health import HealthController
from storyline.service.api.metrics import MODEL_INFO, MetricsController
from storyline.service.api.openapi import refine_openapi
from storyline.service.api.problems import problem_handler
from storyline.service.api.ratelimit import WindowCountRateLimitMiddleware
from storyline.service.api.runtime import (
    Runtime,
    before_request,
    provide_runtime,
    rate_limit_identifier,
)
from storyline.service.api.search import SearchController
from storyline.service.api.stories import StoriesController
from storyline.service.api.summarise import SummariseController
from storyline.service.api.timing import server_timing_middleware
from storyline.service.heap import settle_heap
from storyline.service.settings import Settings

__all__ = ["create_app", "open_pipeline"]

log = logging.getLogger("storyline.api")

API_VERSION = "1.0.0"


def open_pipeline(settings: Settings) -> Any:
    """Open the pipeline and load what the serving path needs, so no request pays for it.

    The embedder and the spaCy entity model are required (a failure keeps the service
    not ready). Summary and stance models are warmed best-effort: without them related
    coverage and search still serve, and the summary endpoints answer 503/501.
    """
    from storyline.models.nlp import keep_torch_out
    from storyline.service.pipeline import Pipeline

    keep_torch_out()  # as `storyline serve`: spaCy's thinc would import torch, never needed here
    if settings.model_process:
        from storyline.service.model_process import ModelProcess

        proc = ModelProcess(settings, preload=("summariser", "actors", "stance"))
        try:
            pipe = Pipeline(settings, embedder=proc.embedder, entities=proc.entity_keys,
                            summariser=proc.summariser, actors=proc.actors, stance=proc.stance)
        except BaseException:
            proc.close()
            raise
        pipe.closers.append(proc.close)
    else:
        pipe = Pipeline(settings)
    try:
        pipe.embedder.embed(["warm up"])
        pipe.entity_keys(["Warm up in Paris."])
    except BaseException:
        pipe.store.close()
        for close in pipe.closers:
            close()
        raise
    for stage in ("summariser", "actor_extractor", "stance_tagger"):
        try:
            getattr(pipe, stage, None)
        except Exception as exc:  # optional stage: log and serve without it
            log.warning("stage %s not loaded: %s", stage, exc)
    return pipe


def _model_info(settings: Settings, pipe: Any) -> None:
    info = {"index_kind": str(pipe.index.kind)}
    try:
        info["embedder"] = str(pipe.embedder.model_id)
        from storyline.models.registry import Manifest

        info["models"] = ",".join(sorted(Manifest(settings.models_dir).load()))
    except Exception as exc:  # metrics must never stop the service
        log.warning("model info unavailable: %s", exc)
    MODEL_INFO.info(info)


def _lifespan(runtime: Runtime) -> Any:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async def load() -> None:
            try:
                # on an inference thread, so the model runtimes' own threads inherit its
                # (lower) CPU priority
                pipe = await runtime.inference.run(open_pipeline, runtime.settings)
                runtime.attach(pipe)  # first: no probe may see the pipeline without it
                runtime.pipeline = pipe
                _model_info(runtime.settings, runtime.pipeline)
                settle_heap("API process")
                log.info("storyline ready")
            except Exception as exc:
                runtime.load_error = f"{type(exc).__name__}: {exc}"
                log.error("loading the pipeline failed: %s", runtime.load_error)
            finally:
                runtime.loading = False

        task = asyncio.create_task(load()) if runtime.pipeline is None else None
        if task is None:
            runtime.attach(runtime.pipeline)
            _model_info(runtime.settings, runtime.pipeline)
        runtime.warmer.start()
        runtime.follower.start()
        runtime.index_saver.start()
        try:
            yield
        finally:
            await stop_all(runtime.index_saver, runtime.follower, runtime.warmer)
            if task is not None and not task.done():
                await task  # a half-loaded pipeline must not be left writing
            await asyncio.to_thread(runtime.inference.shutdown)
            if runtime.background is not runtime.inference:
                await asyncio.to_thread(runtime.background.shutdown)
            await asyncio.to_thread(runtime.io.shutdown)
            if runtime.owns_pipeline and runtime.pipeline is not None:
                await asyncio.to_thread(runtime.pipeline.close)

    return lifespan


def _schema_not_found_as_problem(response: Response[Any]) -> Response[Any]:
    # litestar's schema router answers an unknown /schema/<name> with its own HTML 404
    # page; raised instead, it reaches problem_handler like every other 404
    if response.status_code == 404:
        raise NotFoundException()
    return response


def create_app(settings: Settings, *, pipeline: Any | None = None) -> Litestar:
    """The HTTP app. Pass ``pipeline`` to serve an already open one (the caller closes it)."""
    runtime = Runtime(settings, pipeline)
    rate_limit = RateLimitConfig(
        rate_limit=("minute", settings.rate_limit_per_minute),
        # litestar matches these as one unanchored regex: anchored, so that a client-chosen
        # id such as /v1/articles/health-1 cannot slip past the limit
        exclude=[r"^/health(/|$)", r"^/metrics$", r"^/schema(/|$)"],
        identifier_for_request=rate_limit_identifier,
        middleware_class=WindowCountRateLimitMiddleware,
    )
    prometheus = PrometheusConfig(app_name="storyline", prefix="storyline_http",
                                  group_path=True, exclude=[r"^/metrics$"])
    cors = None
    if settings.cors_origins:
        cors = CORSConfig(allow_origins=list(settings.cors_origins),
                          allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                          allow_headers=["Authorization", "Content-Type"],
                          expose_headers=["Retry-After", "Location"])
    openapi = OpenAPIConfig(
        title="storyline",
        version=API_VERSION,
        description="Multi-document news summarisation, story clustering and actor stance. "
        "Errors are RFC 9457 problem details (application/problem+json). Write endpoints "
        "need `Authorization: Bearer <API key>`. Request bodies are JSON; unknown fields are "
        "refused (422 naming the field).",
        path="/schema",
        openapi_router=Router("/schema", route_handlers=[], include_in_schema=False,
                              after_request=_schema_not_found_as_problem),
        render_plugins=[ScalarRenderPlugin()],
        components=Components(security_schemes={
            "bearer": SecurityScheme(type="http", scheme="bearer",
                                     description="an API key whose sha256 is configured"),
        }),
        use_handler_docstrings=False,
    )
    app = Litestar(
        route_handlers=[
            ArticlesController, StoriesController, SummariseController, SearchController,
            DigestsController, HealthController, MetricsController,
        ],
        dependencies={"rt": Provide(provide_runtime, sync_to_thread=False)},
        before_request=before_request,
        exception_handlers={Exception: problem_handler},
        middleware=[server_timing_middleware, rate_limit.middleware, prometheus.middleware],
        cors_config=cors,
        openapi_config=openapi,
        request_max_body_size=settings.max_body_bytes,
        # problem_handler logs unexpected errors once; litestar need not log them again
        logging_config=LoggingConfig(
            root={"handlers": ["queue_listener"], "level": settings.log_level.upper()},
            log_exceptions="never",
        ),
        lifespan=[_lifespan(runtime)],
        state=State({"runtime": runtime}),
        debug=False,
    )
    refine_openapi(app, settings)
    return app
