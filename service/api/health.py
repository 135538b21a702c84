"""Liveness and readiness probes (public, not rate limited).

Both answer from state the process already holds: no model call, no store query beyond
readiness's counts. Readiness is 503 while the service cannot do its job and traffic
should go elsewhere; liveness is 503 only when nothing but a restart can fix it (the
model process refuses models rebuilt since the start), so an orchestrator that restarts
on a failed liveness probe does what the error asks for.
"""

from __future__ import annotations

from litestar import Controller, route
from litestar.exceptions import ServiceUnavailableException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from storyline.service.api.docs import GET_HEAD, get_head_operation_id, ok, responses
from storyline.service.api.problems import PROBLEM_JSON, TYPE_PREFIX
from storyline.service.api.runtime import Rt
from storyline.service.api.schemas import LiveOut, ProblemDetails, ReadyOut

__all__ = ["HealthController"]

_RESTART = ResponseSpec(
    data_container=ProblemDetails, media_type=PROBLEM_JSON, generate_examples=False,
    description="the process cannot serve again until it is restarted (no Retry-After)",
    examples=[Example(summary="Service unavailable", value={
        "type": TYPE_PREFIX + "service-unavailable", "title": "Service unavailable",
        "status": 503, "instance": "/health/live",
        "detail": "the built models changed since the service started (`storyline models "
                  "build` ran?); the model process refuses every call: restart the service "
                  "to use them"})],
)


class HealthController(Controller):
    path = "/health"
    tags = ("health",)

    @route("/live", http_method=GET_HEAD, operation_id=get_head_operation_id,
           opt={"auth": "public"}, summary="Liveness: the process answers",
           description="200 while the process answers and could serve again without a "
           "restart (also while loading). 503, without Retry-After, when only a restart can "
           "fix it: a model worker restarted after a crash found the models rebuilt since "
           "the service started and refuses every model call. HEAD answers as GET, "
           "without the body.",
           responses={200: ok(LiveOut, {"status": "ok"}), 503: _RESTART})
    async def live(self, rt: Rt) -> LiveOut:
        cond = rt.model_condition()
        if cond is not None and cond.restart:
            raise ServiceUnavailableException(cond.detail)
        return LiveOut()

    @route(
        "/ready", http_method=GET_HEAD, operation_id=get_head_operation_id,
        opt={"auth": "public"}, summary="Readiness: models and index loaded",
        description="503 (with Retry-After) until the pipeline has loaded its models and index, "
        "or if loading failed. Also 503 once the model process cannot serve: without "
        "Retry-After when the models were rebuilt since the start (restart the service; "
        "`/health/live` fails too), with it while a model lane's workers keep dying before "
        "they answer; and on a replica whose index has not followed the store's change feed "
        "for a while (with Retry-After). When ready, `indexed` equals `articles` when the "
        "index is in step with the database. HEAD answers as GET, without the body.",
        responses=responses("/health/ready", common=(503,), success=(200, ok(ReadyOut, {
            "status": "ready", "articles": 1479, "indexed": 1479, "stories": 372,
            "index_kind": "flat", "embedder": "all-MiniLM-L6-v2-int8",
            "stories_pending_analysis": 0}))),
    )
    async def ready(self, rt: Rt) -> ReadyOut:
        pipe = rt.get_pipeline()
        down = rt.not_serving()
        if down is not None:
            raise down

        pending = rt.warmer.pending

        def counts() -> ReadyOut:
            return ReadyOut("ready", pipe.store.count_articles(), len(pipe.index),
                            pipe.store.count_stories(), pipe.index.kind,
                            str(pipe.embedder.model_id), pending)

        return await rt.io.run(counts)
