"""Liveness and readiness probes (public, not rate limited)."""

from __future__ import annotations

from litestar import Controller, get

from storyline.service.api.docs import ok, responses
from storyline.service.api.runtime import Rt
from storyline.service.api.schemas import LiveOut, ReadyOut

__all__ = ["HealthController"]


class HealthController(Controller):
    path = "/health"
    tags = ("health",)

    @get("/live", opt={"auth": "public"}, summary="Liveness: the process answers",
         responses={200: ok(LiveOut, {"status": "ok"})})
    async def live(self) -> LiveOut:
        return LiveOut()

    @get(
        "/ready", opt={"auth": "public"}, summary="Readiness: models and index loaded",
        description="503 (with Retry-After) until the pipeline has loaded its models and index, "
        "or if loading failed. When ready, `indexed` equals `articles` when the index is in "
        "step with the database.",
        responses=responses("/health/ready", common=(503,), success=(200, ok(ReadyOut, {
            "status": "ready", "articles": 1479, "indexed": 1479, "stories": 372,
            "index_kind": "flat", "embedder": "all-MiniLM-L6-v2-int8",
            "stories_pending_analysis": 0}))),
    )
    async def ready(self, rt: Rt) -> ReadyOut:
        pipe = rt.get_pipeline()

        pending = rt.warmer.pending

        def counts() -> ReadyOut:
            return ReadyOut("ready", pipe.store.count_articles(), len(pipe.index),
                            pipe.store.count_stories(), pipe.index.kind,
                            str(pipe.embedder.model_id), pending)

        return await rt.io.run(counts)
