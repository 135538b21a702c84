"""Two API processes over one store: the replica's index follows the primary's writes.

Both run ``storyline serve`` on the same data dir (one SQLite file, as on a shared
volume); the replica polls the store's change feed (STORYLINE_REPLICA_SYNC_S). Ingests
and deletes made through the primary must reach the replica's in-memory FAISS index
without a restart, and its related-coverage answers must follow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import AUTH, Server

FIELDS = ("id", "title", "text", "source", "url", "published_at", "story_id")


@pytest.fixture()
def pair(tmp_path: Path, models_dir: Path) -> Iterator[tuple[Server, Server]]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(models_dir, target_is_directory=True)
    primary = Server(data, tmp_path, env={"STORYLINE_WARM_STORIES": "false"})
    primary.wait_ready()  # creates the database before the replica opens it
    replica = Server(data, tmp_path, env={"STORYLINE_REPLICA_SYNC_S": "0.1",
                                          "STORYLINE_WARM_STORIES": "false"})
    try:
        replica.wait_ready()
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


def _indexed_within(server: Server, n: int, timeout: float = 20.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if httpx.get(f"{server.url}/health/ready", timeout=5).json()["indexed"] == n:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"replica index did not reach {n} vectors in {timeout} s")


@pytest.mark.slow
def test_replica_converges_on_the_primarys_writes(pair: tuple[Server, Server],
                                                  shared_data: Path) -> None:
    primary, replica = pair
    arts: list[dict[str, Any]] = []
    with (shared_data / "allsides" / "articles.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            arts.append({k: obj[k] for k in FIELDS if obj.get(k) is not None})
            if len(arts) == 30:
                break
    r = httpx.post(f"{primary.url}/v1/articles", json={"articles": arts}, headers=AUTH,
                   timeout=120)
    assert r.status_code == 200, r.text
    stored = r.json()["inserted"]
    assert _indexed_within(replica, stored) < 5.0
    q = arts[0]["id"]
    same = [a["id"] for a in arts[1:] if a.get("story_id") == arts[0].get("story_id")]
    hits = httpx.get(f"{replica.url}/v1/articles/{q}/related", params={"k": 5}).json()
    assert same and same[0] in [h["id"] for h in hits["related"]]

    assert httpx.delete(f"{primary.url}/v1/articles/{same[0]}", headers=AUTH).status_code == 204
    assert _indexed_within(replica, stored - 1) < 5.0
    hits = httpx.get(f"{replica.url}/v1/articles/{q}/related", params={"k": 5}).json()
    assert same[0] not in [h["id"] for h in hits["related"]]
    metrics = httpx.get(f"{replica.url}/metrics").text
    assert "storyline_replica_lag_changes 0.0" in metrics
