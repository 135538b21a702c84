"""Crash safety of the HTTP service: an acknowledged write survives SIGKILL.

Starts ``storyline serve`` as a real process, streams ingests from two writers, kills the
process mid-stream with SIGKILL, restarts it on the same data dir and checks that every
article the server acknowledged is there and that the vector index holds exactly the
stored articles.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import AUTH, Server

FIELDS = ("id", "title", "text", "source", "url", "published_at", "lean", "story_id")


@pytest.fixture()
def articles(shared_data: Path) -> list[dict[str, Any]]:
    out = []
    with (shared_data / "allsides" / "articles.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            out.append({k: obj[k] for k in FIELDS if obj.get(k) is not None})
            if len(out) >= 400:
                break
    return out


@pytest.fixture()
def workdir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "run"
    d.mkdir()
    yield d


def _stat(pid: int) -> list[str] | None:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    return {int(d.name) for d in Path("/proc").iterdir()
            if d.name.isdigit() and (st := _stat(int(d.name))) and st[1] == str(pid)}


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


@pytest.mark.slow
def test_acknowledged_ingests_survive_sigkill(
    data_dir: Path, workdir: Path, articles: list[dict[str, Any]]
) -> None:
    server = Server(data_dir, workdir)
    try:
        server.wait_ready()
        acked: set[str] = set()
        lock = threading.Lock()
        stop = threading.Event()
        batches = [articles[i:i + 4] for i in range(0, len(articles), 4)]
        cursor = iter(batches)

        def writer() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                while not stop.is_set():
                    with lock:
                        batch = next(cursor, None)
                    if batch is None:
                        return
                    try:
                        r = c.post("/v1/articles", json={"articles": batch}, headers=AUTH)
                    except httpx.TransportError:
                        return  # the server died under us: this batch was not acknowledged
                    assert r.status_code == 200, r.text
                    with lock:
                        acked.update(x["id"] for x in r.json()["results"])

        threads = [threading.Thread(target=writer, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < 24:
            assert time.monotonic() < deadline, "ingest too slow"
            time.sleep(0.02)
        children = _children(server.proc.pid)  # the model process (STORYLINE_MODEL_PROCESS)
        assert children, "serve runs its models in a child process by default"
        server.proc.kill()  # SIGKILL while both writers have a batch in flight
        server.proc.wait(30)
        # A killed server cannot stop its model process: the child notices and exits
        # rather than holding the models' memory as an orphan.
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in children):
            assert time.monotonic() < deadline, f"orphaned children: {children}"
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(30)
        with lock:
            survivors = set(acked)
        assert len(survivors) < len(articles), "the stream ended before the kill"
    finally:
        server.stop(signal.SIGKILL)

    again = Server(data_dir, workdir)
    try:
        ready = again.wait_ready()
        assert ready["articles"] == ready["indexed"] >= len(survivors)
        with httpx.Client(base_url=again.url, timeout=30) as c:
            missing = [i for i in sorted(survivors)
                       if c.get(f"/v1/articles/{i}").status_code != 200]
            assert missing == [], f"acknowledged but lost: {missing}"
            one = sorted(survivors)[0]
            r = c.get(f"/v1/articles/{one}/related", params={"k": 3})
            assert r.status_code == 200 and len(r.json()["related"]) == 3
            # the service keeps taking writes after the restart
            r = c.post("/v1/articles", json={"articles": articles[-1:]}, headers=AUTH)
            assert r.status_code == 200
    finally:
        # uvicorn shuts down gracefully, then re-raises the signal: -SIGTERM is a clean stop
        rc = again.stop(signal.SIGTERM)
        assert rc in (0, -signal.SIGTERM), again.log.read_text()[-3000:]

    # After a clean stop, the saved index holds exactly the stored articles.
    from storyline.index.vectors import VectorIndex

    with sqlite3.connect(data_dir / "storyline.db") as db:
        stored = {row[0] for row in db.execute("SELECT id FROM articles")}
    assert survivors <= stored | _duplicate_ids(data_dir)
    assert VectorIndex.load(data_dir / "vectors.faiss").ids == stored


def _duplicate_ids(data_dir: Path) -> set[str]:
    with sqlite3.connect(data_dir / "storyline.db") as db:
        return {row[0] for row in db.execute("SELECT id FROM duplicates")}
