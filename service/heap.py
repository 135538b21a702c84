"""Garbage-collector settings for the long-running service processes.

Under the load bench the API process ran a full (generation 2) collection every ~6 s.
Each took 70-106 ms, and all 16 requests in flight waited for it. Eight such pauses in
60 s were about 1 % of the requests, which is the p99 of ``related``: the timeline of
completions stopped at each collection's timestamp. Two causes, two settings:

* **What is walked.** CPython's cyclic collector walks every tracked object on a full
  pass: the app, its routes and OpenAPI schema, the store and index state, and in the
  model processes the spaCy pipelines and ONNX sessions. ``gc.freeze()`` after loading
  moves all of that out of the collector's view. Later garbage is still collected.
* **How often.** With the default young-generation threshold (700 net allocations), a
  request's objects outlive two young collections while it waits on a pool or the
  loop, so they are promoted and trigger full passes. At 20,000 they are freed before
  a collection sees them. In the same bench the API process then ran no full pass and
  no generation-1 pass in 60 s (bench/RESULTS.md, session 9). Freezing alone left a
  30 ms full pass in a 30 s related-only run; the threshold is what removed them.
"""

from __future__ import annotations

import gc
import logging
import time

__all__ = ["YOUNG_THRESHOLD", "settle_heap"]

log = logging.getLogger(__name__)

#: allocations (net of frees) between young-generation collections (CPython's default 700)
YOUNG_THRESHOLD = 20_000


def settle_heap(what: str) -> None:
    """After loading: collect once, freeze what is alive, collect the young less often."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    log.debug("%s: froze %d objects in %.0f ms", what, gc.get_freeze_count(),
              (time.perf_counter() - t0) * 1000)
