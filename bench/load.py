"""Bounded loopback load test of the HTTP service.

Starts ``storyline serve`` itself on 127.0.0.1 with a temporary data dir (models/ linked
to the built models), seeds it through the API with AllSides articles, then runs N
concurrent async clients (aiohttp; ``--client httpx`` for httpx) for a fixed duration
mixing

* ``related``   GET /v1/articles/{id}/related?k=10 for a random seeded article,
* ``summarise`` POST /v1/summarise {"article_ids": [...]} for a random 3-article story,
* ``ingest``    POST /v1/articles with 2 held-out articles (idempotent by id),

and stops by itself. Afterwards every acknowledged article id is read back. By default
each client sends its next request as soon as the last one returns (a closed loop: it
measures saturation); ``--think-ms`` makes each client pause between requests instead.

    .venv/bin/python bench/load.py --duration 60 --json

Goals: zero errors, zero lost articles, related p99 <= 50 ms, summarise p99 <= 300 ms.
With ``--json`` the last line is one JSON object: requests, errors, accepted_articles,
stored_articles, p50/p99 of related, summarise and ingest in ms (null when not measured),
summarise split into answers served from a cache and computed ones
(``p50/p99_summarise_cached_ms``, ``p50/p99_summarise_computed_ms``), the service's own
time per operation from its ``Server-Timing`` header (``p50/p99_<op>_server_ms``; the rest
of the client's figure is this generator's event loop and the loopback), rps, and the CPU
seconds the server process and this load generator used during the load
(``server_cpu_s``, ``loadgen_cpu_s``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "load-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FIELDS = ("id", "title", "text", "source", "url", "published_at", "lean", "story_id")
HOST = "127.0.0.1"  # loopback only, by design


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)  # nearest-rank percentile
    return round(v[max(0, math.ceil(q * len(v)) - 1)], 2)


def load_articles(path: Path) -> list[dict[str, Any]]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            out.append({k: obj[k] for k in FIELDS if obj.get(k) is not None})
    return out


class Server:
    def __init__(self, data_dir: Path, workers: int, queue: int, logfile: Path,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "STORYLINE_API_KEYS_SHA256": json.dumps([hashlib.sha256(KEY.encode()).hexdigest()]),
            "STORYLINE_RATE_LIMIT_PER_MINUTE": "100000000",
            "STORYLINE_INFERENCE_WORKERS": str(workers),
            "STORYLINE_INFERENCE_QUEUE": str(queue),
            "STORYLINE_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        self.logfile = logfile
        with logfile.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "storyline.service.cli", "serve", "--data-dir",
                 str(data_dir), "--host", HOST, "--port", str(self.port)],
                env=env, cwd=data_dir.parent, stdout=out, stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit("server exited:\n" + self.logfile.read_text()[-2000:])
                try:
                    r = await c.get("/health/ready")
                    if r.status_code == 200:
                        return dict(r.json())
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
        raise SystemExit("server not ready in time:\n" + self.logfile.read_text()[-2000:])

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Stats:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.requests = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.accepted: set[str] = set()
        self.summarise_cached = 0
        self.sub_lat: dict[str, list[float]] = defaultdict(list)
        # The service's own time per answer (its Server-Timing header): what the client
        # measured minus this is the load generator's own queueing and the loopback.
        self.server_lat: dict[str, list[float]] = defaultdict(list)

    def record_server(self, op: str, server_timing: str) -> None:
        for part in server_timing.split(","):
            name, _, params = part.strip().partition(";")
            if name == "app" and params.startswith("dur="):
                self.server_lat[op].append(float(params[4:]))

    def record(self, op: str, ms: float, ok: bool, what: str = "") -> None:
        self.requests += 1
        if ok:
            self.lat[op].append(ms)
        else:
            self.errors += 1
            if len(self.error_samples) < 10:
                self.error_samples.append(f"{op}: {what[:200]}")


async def seed(url: str, arts: list[dict[str, Any]], batch: int, stats: Stats) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        for i in range(0, len(arts), batch):
            r = await c.post("/v1/articles", json={"articles": arts[i:i + batch]}, headers=AUTH)
            if r.status_code != 200:
                raise SystemExit(f"seeding failed: {r.status_code} {r.text[:300]}")
            stats.accepted.update(x["id"] for x in r.json()["results"])
            if (i // batch) % 5 == 0:
                log(f"  seeded {min(i + batch, len(arts))}/{len(arts)}")


class _Answer:
    """The parts of an HTTP answer the mix reads, whichever client library fetched it."""

    __slots__ = ("body", "server_timing", "status_code")

    def __init__(self, status_code: int, body: bytes, server_timing: str) -> None:
        self.status_code, self.body, self.server_timing = status_code, body, server_timing

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _HttpxSession:
    """httpx.AsyncClient behind the small request API the mix uses."""

    errors: tuple[type[Exception], ...] = (httpx.HTTPError,)

    def __init__(self, url: str) -> None:
        self._c = httpx.AsyncClient(base_url=url, timeout=60)

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      json_body: Any = None, headers: dict[str, str] | None = None) -> _Answer:
        r = await self._c.request(method, path, params=params, json=json_body, headers=headers)
        return _Answer(r.status_code, r.content, r.headers.get("server-timing", ""))

    async def close(self) -> None:
        await self._c.aclose()


class _AiohttpSession:
    """aiohttp.ClientSession behind the same API: ~0.7 ms of client CPU a request here
    against ~2 ms for httpx, CPU the service shares on this 2-core box."""

    def __init__(self, url: str) -> None:
        import aiohttp

        self.errors: tuple[type[Exception], ...] = (aiohttp.ClientError, asyncio.TimeoutError)
        self._url = url
        self._c = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=60))

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      json_body: Any = None, headers: dict[str, str] | None = None) -> _Answer:
        async with self._c.request(method, self._url + path, params=params, json=json_body,
                                   headers=headers) as r:
            body = await r.read()
            return _Answer(r.status, body, r.headers.get("server-timing", ""))

    async def close(self) -> None:
        await self._c.close()


CLIENTS: dict[str, type[_AiohttpSession] | type[_HttpxSession]] = {
    "aiohttp": _AiohttpSession, "httpx": _HttpxSession}


async def client(
    n: int, url: str, deadline: float, mix: dict[str, float], seeded: list[str],
    stories: list[list[str]], held_out: list[dict[str, Any]],
    held_all: list[dict[str, Any]], stats: Stats, think_ms: float = 0.0,
    library: str = "aiohttp",
) -> None:
    rng = random.Random(n)
    ops, weights = zip(*mix.items(), strict=True)
    c = CLIENTS[library](url)
    try:
        while time.monotonic() < deadline:
            if think_ms > 0:
                # A user's pause between requests (exponential, mean think_ms): an open
                # offered load instead of a closed loop that only measures saturation.
                await asyncio.sleep(rng.expovariate(1000.0 / think_ms))
                if time.monotonic() >= deadline:
                    break
            op = rng.choices(ops, weights)[0]
            if op == "ingest":
                batch = [held_out.pop() for _ in range(min(2, len(held_out)))]
                if not batch:  # all held-out articles in: re-send (idempotent)
                    batch = [rng.choice(held_all)]
            t0 = time.perf_counter()
            try:
                if op == "related":
                    r = await c.request("GET", f"/v1/articles/{rng.choice(seeded)}/related",
                                        params={"k": 10})
                elif op == "summarise":
                    r = await c.request("POST", "/v1/summarise",
                                        json_body={"article_ids": rng.choice(stories)})
                else:
                    r = await c.request("POST", "/v1/articles", json_body={"articles": batch},
                                        headers=AUTH)
            except c.errors as exc:
                stats.record(op, 0.0, False, f"{type(exc).__name__}: {exc}")
                continue
            # Stopped before this generator decodes the answer's JSON, which summarise and
            # ingest did inside their timing and related did not.
            ms = (time.perf_counter() - t0) * 1000
            ok = r.status_code == 200
            if ok and op == "summarise":
                hit = all(x["cached"] for x in r.json()["stories"])
                stats.summarise_cached += hit
                # Cache hits and computed analyses cost differently: keep both.
                stats.sub_lat["summarise_cached" if hit else "summarise_computed"].append(ms)
            elif ok and op == "ingest":
                stats.accepted.update(x["id"] for x in r.json()["results"])
            if ok:
                stats.record_server(op, r.server_timing)
            stats.record(op, ms, ok, "" if ok else f"{r.status_code} {r.text}")
    finally:
        await c.close()


async def verify(url: str, ids: set[str]) -> int:
    found = 0
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def one(i: str) -> int:
            async with sem:
                r = await c.get(f"/v1/articles/{i}")
                return 1 if r.status_code == 200 else 0

        found = sum(await asyncio.gather(*(one(i) for i in sorted(ids))))
    return found


async def run(args: argparse.Namespace) -> dict[str, Any]:
    arts = load_articles(args.articles)
    rng = random.Random(0)
    by_story: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in arts:
        by_story[str(a.get("story_id"))].append(a)
    story_ids = sorted(by_story)
    rng.shuffle(story_ids)
    n_hold = max(1, int(len(story_ids) * args.hold_out))
    held_stories, seed_stories = story_ids[:n_hold], story_ids[n_hold:]
    if args.seed_articles:
        keep, total = [], 0
        for s in seed_stories:
            if total >= args.seed_articles:
                break
            keep.append(s)
            total += len(by_story[s])
        seed_stories = keep
    seed_arts = [a for s in seed_stories for a in by_story[s]]
    held_out = [a for s in held_stories for a in by_story[s]]
    held_all = list(held_out)
    three = [[a["id"] for a in by_story[s]] for s in seed_stories if len(by_story[s]) == 3]

    work = Path(tempfile.mkdtemp(prefix="storyline-load-"))
    data_dir = work / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(args.models_dir.resolve(), target_is_directory=True)
    server = Server(data_dir, args.workers, args.queue, work / "serve.log")
    stats = Stats()
    try:
        log(f"server on {server.url} (data {data_dir}); waiting until ready")
        await server.wait_ready(300)
        t_seed = time.perf_counter()
        await seed(server.url, seed_arts, 64, stats)
        log(f"seeded {len(seed_arts)} articles in {time.perf_counter() - t_seed:.1f} s; "
            f"{len(three)} 3-article stories, {len(held_out)} held out for ingest")
        warm_s = None
        if not args.no_warm_wait:
            # As between bursts in production: the idle-time warmer analyses the stories
            # the seed created (GET /health/ready counts what is left).
            t_warm = time.perf_counter()
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                while (await c.get("/health/ready")).json().get("stories_pending_analysis"):
                    if time.perf_counter() - t_warm > 900:
                        raise SystemExit("warmer did not finish in 900 s")
                    await asyncio.sleep(0.5)
            warm_s = round(time.perf_counter() - t_warm, 1)
            log(f"story analyses warm after {warm_s} s")

        mix = dict(args.mix)
        probe_note = None
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            r = await c.post("/v1/summarise", json={"article_ids": three[0]})
            if r.status_code != 200:
                probe_note = f"{r.status_code}: {r.json().get('detail', r.text)[:200]}"
                log(f"summarise unavailable ({probe_note}); left out of the mix")
                mix.pop("summarise", None)
        deadline = time.monotonic() + args.duration
        seeded_ids = [a["id"] for a in seed_arts]
        t0 = time.perf_counter()
        cpu0_server, cpu0_self = server.cpu_seconds(), time.process_time()
        await asyncio.gather(*(
            client(n, server.url, deadline, mix, seeded_ids, three, held_out, held_all, stats,
                   args.think_ms, args.client)
            for n in range(args.clients)
        ))
        wall = time.perf_counter() - t0
        # Where the two cores went: the server, or this load generator beside it.
        cpu = {"server_cpu_s": round(server.cpu_seconds() - cpu0_server, 1),
               "loadgen_cpu_s": round(time.process_time() - cpu0_self, 1)}
        stored = await verify(server.url, stats.accepted)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    n_sum = len(stats.lat.get("summarise", []))
    ing = stats.lat.get("ingest", [])
    result: dict[str, Any] = {
        "requests": stats.requests,
        "errors": stats.errors,
        "accepted_articles": len(stats.accepted),
        "stored_articles": stored,
        "p50_related_ms": pct(stats.lat.get("related", []), 0.50),
        "p99_related_ms": pct(stats.lat.get("related", []), 0.99),
        "p50_summarise_ms": pct(stats.lat.get("summarise", []), 0.50),
        "p99_summarise_ms": pct(stats.lat.get("summarise", []), 0.99),
        "summarise_cached_share": round(stats.summarise_cached / n_sum, 3) if n_sum else None,
        **{f"p{q}_{k}_ms": pct(v, q / 100) for k, v in sorted(stats.sub_lat.items())
           for q in (50, 99)},
        "warm_wait_s": warm_s,
        **{f"p{q}_{k}_server_ms": pct(v, q / 100) for k, v in sorted(stats.server_lat.items())
           for q in (50, 99)},
        "p50_ingest_ms": pct(ing, 0.50),
        "p99_ingest_ms": pct(ing, 0.99),
        "by_op": {k: len(v) for k, v in sorted(stats.lat.items())},
        # Samples behind each split p99: the computed share is a few dozen answers, where
        # the nearest-rank p99 is the slowest one or two.
        "by_summarise_kind": {k: len(v) for k, v in sorted(stats.sub_lat.items())},
        "duration_s": round(wall, 1),
        **cpu,
        "rps": round(stats.requests / wall, 1) if wall else None,
        "clients": args.clients,
        "think_ms": args.think_ms,
        "client_library": args.client,
        "inference_workers": args.workers,
        "summarise_note": probe_note,
        "error_samples": stats.error_samples,
    }
    return result


def parse_mix(text: str) -> list[tuple[str, float]]:
    out = []
    for part in text.split(","):
        name, _, w = part.partition("=")
        if name not in ("related", "summarise", "ingest"):
            raise argparse.ArgumentTypeError(f"unknown operation '{name}'")
        out.append((name, float(w)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--clients", type=int, default=16, help="concurrent async clients")
    p.add_argument("--client", choices=sorted(CLIENTS), default="aiohttp",
                   help="HTTP client library of the load phase (default aiohttp: the "
                   "lighter one, so the generator takes less of the CPU it shares with "
                   "the service)")
    p.add_argument("--think-ms", type=float, default=0.0,
                   help="mean pause of each client between requests (exponential; default 0: "
                        "closed loop, every client sends its next request at once)")
    p.add_argument("--mix", type=parse_mix, default=parse_mix(
        "related=0.7,summarise=0.2,ingest=0.1"), help="operation weights")
    p.add_argument("--workers", type=int, default=1, help="STORYLINE_INFERENCE_WORKERS")
    p.add_argument("--queue", type=int, default=32, help="STORYLINE_INFERENCE_QUEUE")
    p.add_argument("--articles", type=Path,
                   default=ROOT.parent / "shared" / "data" / "allsides" / "articles.jsonl")
    p.add_argument("--models-dir", type=Path, default=ROOT / "data" / "models")
    p.add_argument("--seed-articles", type=int, default=0,
                   help="seed at most this many articles (0 = all but the held-out ones)")
    p.add_argument("--hold-out", type=float, default=0.15,
                   help="fraction of stories kept back for the ingest part of the mix")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    p.add_argument("--no-warm-wait", action="store_true",
                   help="start the load right after seeding, before the idle-time warmer "
                        "has analysed the seeded stories (every summarise then computes)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args()
    if not (args.models_dir / "manifest.json").exists():
        raise SystemExit(f"no built models in {args.models_dir}: run `make models`")
    res = asyncio.run(run(args))
    for key in ("requests", "errors", "accepted_articles", "stored_articles", "p50_related_ms",
                "p99_related_ms", "p50_summarise_ms", "p99_summarise_ms", "p50_ingest_ms",
                "p99_ingest_ms", "by_op", "rps", "summarise_cached_share", "warm_wait_s",
                "summarise_note"):
        log(f"{key:>18}: {res[key]}")
    for s in res["error_samples"]:
        log(f"  error: {s}")
    goals = {
        "zero errors": res["errors"] == 0,
        "zero lost articles": res["stored_articles"] == res["accepted_articles"],
        "related p99 <= 50 ms": (res["p99_related_ms"] or 1e9) <= 50,
        "summarise p99 <= 300 ms": (res["p99_summarise_ms"] or 1e9) <= 300,
    }
    for goal, ok in goals.items():
        log(f"  {'PASS' if ok else 'MISS'}  {goal}")
    if args.json:
        print(json.dumps(res, sort_keys=True))


if __name__ == "__main__":
    main()
