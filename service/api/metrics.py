"""Prometheus metrics beyond litestar's request metrics (registered once per process).

Per-stage inference seconds (``storyline_stage_seconds{stage="embed|summarise|actors|stance"}``)
are recorded by the pipeline itself; this module adds the gauges only the app can see.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, route
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.plugins.prometheus import PrometheusController
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Info, generate_latest

from storyline.service.api.docs import GET_HEAD, get_head_operation_id, responses

__all__ = [
    "ARTICLE_COUNT",
    "INDEX_SIZE",
    "MODEL_INFO",
    "POOL_PENDING",
    "REJECTED",
    "REPLICA_LAG",
    "REPLICA_LAST_SYNC",
    "REPLICA_SYNC_FAILURES",
    "STORY_COUNT",
    "MetricsController",
]

INDEX_SIZE = Gauge("storyline_index_size", "Vectors in the FAISS index")
ARTICLE_COUNT = Gauge("storyline_articles", "Stored articles")
STORY_COUNT = Gauge("storyline_stories", "Active stories")
POOL_PENDING = Gauge("storyline_pool_pending", "Calls running or waiting per worker pool",
                     ["pool"])
REJECTED = Counter("storyline_pool_rejected", "Calls refused with 503, per pool", ["pool"])
WARM_PENDING = Gauge("storyline_stories_pending_analysis",
                     "Changed stories waiting for their summary + stances to be recomputed")
REPLICA_LAG = Gauge("storyline_replica_lag_changes",
                    "Store change-feed entries not yet applied to this process's index, as of "
                    "the last sync that worked (see storyline_replica_last_sync_timestamp_seconds)")
# The lag alone keeps its last value, often 0, while the feed cannot be read: these two
# say whether it is current.
REPLICA_LAST_SYNC = Gauge("storyline_replica_last_sync_timestamp_seconds",
                          "Unix time of this replica's last successful change-feed poll "
                          "(0 until the first)")
REPLICA_SYNC_FAILURES = Counter("storyline_replica_sync_failures",
                                "Change-feed polls that failed (the store unreadable, an "
                                "error applying a change)")
MODEL_INFO = Info("storyline_model", "Models and index in use")
#: the exposition's media type without its charset: litestar adds the charset of text/*
#: types itself, and naming it here too would send it twice
MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")

_EXAMPLE = """# TYPE storyline_index_size gauge
storyline_index_size 1479.0
# TYPE storyline_stage_seconds histogram
storyline_stage_seconds_count{stage="embed"} 42.0
storyline_model_info{embedder="all-MiniLM-L6-v2-int8:9cd7803394e8",index_kind="flat"} 1.0
"""


class MetricsController(PrometheusController):
    """``GET /metrics``: litestar's Prometheus exposition, gauges refreshed on each scrape."""

    path = "/metrics"
    tags = ("metrics",)

    @route(http_method=GET_HEAD, operation_id=get_head_operation_id,
           summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST,
           description="Prometheus text exposition: request counts and latencies, "
           "storyline_stage_seconds{stage=embed|summarise|actors|stance}, index size, article "
           "and story counts, worker-pool depth and rejections, replica change-feed lag, "
           "last sync time and failed polls, model info. Needs the API key when reads do "
           "(`STORYLINE_READ_REQUIRES_KEY`).",
           responses=responses("/metrics", 401, common=(), success=(200, ResponseSpec(
               str, description="Prometheus text format", media_type=CONTENT_TYPE_LATEST,
               generate_examples=False, examples=[Example(value=_EXAMPLE)]))))
    async def get(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        rt = request.app.state.runtime
        pipe = rt.pipeline
        if pipe is not None:
            INDEX_SIZE.set(len(pipe.index))
            # Counting is a quick SQLite query; do it off the loop with the other reads.
            counts = await rt.io.run(lambda: (pipe.store.count_articles(),
                                              pipe.store.count_stories()))
            ARTICLE_COUNT.set(counts[0])
            STORY_COUNT.set(counts[1])
        return Response(generate_latest(REGISTRY), status_code=200, media_type=MEDIA_TYPE)
