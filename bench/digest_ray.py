"""Digest analysis stage: the local engine against the Ray engine, same stories, same run.

AllSides stories (``<shared>/allsides/articles.jsonl``) of at least two articles, the first
``--stories`` of them, are placed inside one UTC day and ingested once; the data dir is then
copied, and the day's digest (``--stories`` featured, so every story is analysed) is built
from scratch on each copy: once with ``engine="local"`` and once with ``engine="ray"`` on an
embedded single-node Ray of ``--workers`` CPUs (its start-up is counted: a nightly job pays
it). Reports the analysis stage (the local loop's summarise + actors + stance seconds; the
Ray job's wall time, start-up included) and the whole digest, and checks the bodies match.

    .venv/bin/python bench/digest_ray.py [--stories 48] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
DAY = datetime(2022, 3, 1, tzinfo=UTC)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stories", type=int, default=48)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from storyline.service import digest as dg
    from storyline.service.ingest import read_source
    from storyline.service.pipeline import Pipeline
    from storyline.service.settings import Settings

    shared = Path(os.environ.get("STORYLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))
    by: dict[str, list[Any]] = {}
    for p in read_source(shared / "allsides" / "articles.jsonl"):
        if p.article is not None:
            by.setdefault(str(p.article.story_id), []).append(p.article)
    groups = [v for _, v in sorted(by.items()) if len(v) >= 2][: args.stories]
    arts = [replace(a, published_at=DAY + timedelta(minutes=20 * s + j))
            for s, g in enumerate(groups) for j, a in enumerate(g)]
    models = Path(os.environ.get("STORYLINE_MODELS_DIR", ROOT / "data" / "models"))
    out: dict[str, Any] = {"stories_in": len(groups), "articles": len(arts),
                           "workers": args.workers, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "local"
        base.mkdir()
        (base / "models").symlink_to(models.resolve(), target_is_directory=True)
        pipe = Pipeline(Settings(data_dir=base))
        t0 = time.perf_counter()
        pipe.ingest(arts)
        # Settle merges/splits before the copy: refine mints fresh ids for the stories it
        # creates, so refining each copy separately would name the same stories differently.
        if pipe.clusterer is not None:
            pipe.clusterer.refine()
        out["ingest_s"] = round(time.perf_counter() - t0, 2)
        pipe.close()
        shutil.copytree(base, Path(tmp) / "ray", symlinks=True)
        res: dict[str, Any] = {}
        for engine in ("local", "ray"):
            pipe = Pipeline(Settings(data_dir=Path(tmp) / engine))
            t0 = time.perf_counter()
            r = dg.build_digest(pipe, since=DAY, until=DAY + timedelta(days=1),
                                top=args.stories, engine=engine, ray_workers=args.workers)
            total = time.perf_counter() - t0
            pipe.close()
            st = r.stages
            analysis = st["ray"] if engine == "ray" else sum(
                st.get(k, 0.0) for k in ("summarise", "actors", "stance"))
            res[engine] = r
            out[engine] = {"featured": len(r.featured), "recomputed": len(r.recomputed),
                           "analysis_s": round(analysis, 2), "digest_s": round(total, 2),
                           "worker_cpu_s": round(sum(st.get(k, 0.0) for k in
                                                     ("summarise", "actors", "stance")), 2)}
        out["identical"] = res["ray"].bodies == res["local"].bodies
        if not out["identical"] and os.environ.get("DIGEST_RAY_DUMP"):
            for engine in ("local", "ray"):
                Path(os.environ["DIGEST_RAY_DUMP"], f"{engine}.json").write_text(
                    res[engine].bodies["json"])
        out["speedup"] = round(out["local"]["analysis_s"] / out["ray"]["analysis_s"], 2)
    left = subprocess.run(["pgrep", "-f", "raylet"], capture_output=True, text=True).stdout
    out["ray_processes_left"] = len(left.split())
    if not args.json:
        for k, v in out.items():
            print(f"{k}: {v}")
    print(json.dumps(out, sort_keys=True))
    sys.exit(0 if out["identical"] else 1)


if __name__ == "__main__":
    main()
