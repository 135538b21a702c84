"""Replica lag: how long until a write made through one API process is searchable in another.

Starts two ``storyline serve`` processes on ONE data dir (one SQLite store, as on a
shared volume): a primary, and a replica that follows the store's change feed every
``--sync-s`` seconds. Then ``--writes`` times: wait a random time in [0, ``--sync-s``),
ingest one AllSides article through the primary, and time from the primary's
acknowledgement until the replica's in-memory FAISS index holds it (``indexed`` on the
replica's ``/health/ready``, polled every 5 ms). Finally a delete through the primary,
timed the same way, and a convergence check (``converged``: both processes index the
same number of vectors; the ids themselves are not compared).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/replica.py --json

The last line with ``--json`` is one JSON object: ``writes``, ``sync_s``, ``lag_ms_p50``,
``lag_ms_p99``, ``lag_ms_max``, ``delete_lag_ms``, ``converged``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from load import AUTH, ROOT, Server, load_articles, log, pct


async def indexed(c: httpx.AsyncClient) -> int:
    return int((await c.get("/health/ready")).json()["indexed"])


async def wait_for(c: httpx.AsyncClient, n: int, timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    while await indexed(c) != n:
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"replica did not reach {n} vectors in {timeout} s")
        await asyncio.sleep(0.005)
    return (time.perf_counter() - t0) * 1000


async def run(args: argparse.Namespace) -> dict[str, Any]:
    arts = load_articles(args.articles)[: args.seed + args.writes]
    work = Path(tempfile.mkdtemp(prefix="storyline-replica-"))
    data = work / "data"
    data.mkdir()
    (data / "models").symlink_to(args.models_dir.resolve(), target_is_directory=True)
    quiet = {"STORYLINE_WARM_STORIES": "false"}
    primary = Server(data, 1, 32, work / "primary.log", env=quiet)
    replica: Server | None = None
    try:
        await primary.wait_ready(300)
        replica = Server(data, 1, 32, work / "replica.log",
                         env={**quiet, "STORYLINE_REPLICA_SYNC_S": str(args.sync_s)})
        await replica.wait_ready(300)
        async with httpx.AsyncClient(base_url=primary.url, timeout=120) as p, \
                httpx.AsyncClient(base_url=replica.url, timeout=30) as r:
            seed = arts[: args.seed]
            # A failed seed would otherwise go on to time lags over an empty store.
            (await p.post("/v1/articles", json={"articles": seed}, headers=AUTH)
             ).raise_for_status()
            n = await indexed(p)
            await wait_for(r, n)
            lags = []
            rng = random.Random(0)
            for a in arts[args.seed :]:
                # Each write would otherwise be sent right after the replica's last poll
                # was seen (phase-locked to its timer), so every lag came out as about
                # sync_s minus the ingest time and the tail never showed a write that just
                # missed a poll. A random phase gives the lag a write arriving at any time.
                await asyncio.sleep(rng.uniform(0.0, args.sync_s))
                res = await p.post("/v1/articles", json={"articles": [a]}, headers=AUTH)
                res.raise_for_status()
                if res.json()["inserted"]:
                    n += 1
                    lags.append(await wait_for(r, n))
            victim = seed[0]["id"]
            (await p.delete(f"/v1/articles/{victim}", headers=AUTH)).raise_for_status()
            delete_ms = await wait_for(r, n - 1)
            converged = await indexed(r) == await indexed(p) == n - 1
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "writes": len(lags), "sync_s": args.sync_s,
        "lag_ms_p50": pct(lags, 0.50), "lag_ms_p99": pct(lags, 0.99),
        "lag_ms_max": round(max(lags), 1) if lags else None,
        "delete_lag_ms": round(delete_ms, 1), "converged": converged,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=200, help="articles stored before timing")
    ap.add_argument("--sync-s", type=float, default=0.2, help="STORYLINE_REPLICA_SYNC_S")
    ap.add_argument("--articles", type=Path,
                    default=ROOT.parent / "shared" / "data" / "allsides" / "articles.jsonl")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "data" / "models")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = asyncio.run(run(args))
    for k, v in res.items():
        log(f"{k:>14}: {v}")
    if args.json:
        print(json.dumps(res))
    sys.exit(0 if res["converged"] else 1)


if __name__ == "__main__":
    main()
