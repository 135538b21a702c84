"""Digest benchmark: one day of >= 2,000 articles, end to end, then a re-run with nothing new.

The AllSides articles (``<shared>/allsides/articles.jsonl``, 1,479) are replicated with small
perturbations until ``--articles`` is reached: each copy gets a unique id, one sentence of its
text dropped and two neighbouring sentences swapped (so no copy is an exact duplicate, which
the store would record instead of storing), and keeps its story, outlet and lean. Every
article is placed inside one UTC day: a story's articles share a random hour, each article a
few minutes apart.

Stages (seconds): ``ingest`` (embedding, storing, online story assignment; reported apart
from the digest), then the digest's ``refine``, ``select``, ``summarise``, ``actors``,
``stance``, ``render`` and ``store``; ``seconds`` is the digest end to end, ``rerun_seconds``
the same digest built again with nothing changed (every story from the cache).

    .venv/bin/python bench/digest.py [--articles 2000] [--top 10] [--json]

Goals: <= 300 s for 2,000 new articles, <= 20 s for the re-run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
DAY = datetime(2022, 3, 1, tzinfo=UTC)


def shared_data() -> Path:
    env = os.environ.get("STORYLINE_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def _sentences(text: str) -> list[str]:
    from storyline.models.summariser import split_sentences

    return [text[s:e] for s, e, _ in split_sentences(text)] or [text]


def perturb(text: str, rng: random.Random) -> str:
    """Drop one sentence and swap two neighbours (when there are enough sentences)."""
    sents = _sentences(text)
    if len(sents) >= 3:
        del sents[rng.randrange(1, len(sents))]
    if len(sents) >= 3:
        i = rng.randrange(1, len(sents) - 1)
        sents[i], sents[i + 1] = sents[i + 1], sents[i]
    out = " ".join(s.strip() for s in sents)
    # The store compares whitespace-normalised content: make sure a copy differs.
    return out if out.split() != text.split() else text + " (Updated.)"


def make_day(n: int, seed: int = 7) -> list[Any]:
    """``n`` articles in one day, built from the AllSides articles (see the module doc)."""
    from dataclasses import replace

    from storyline.service.ingest import read_source

    src = shared_data() / "allsides" / "articles.jsonl"
    base = [p.article for p in read_source(src) if p.article is not None]
    rng = random.Random(seed)
    hour = {sid: rng.randrange(0, 23 * 3600) for sid in sorted({str(a.story_id) for a in base})}
    out: list[Any] = []
    k = 0
    while len(out) < n:
        for a in base:
            if len(out) >= n:
                break
            copy = k > 0
            when = DAY + timedelta(seconds=hour[str(a.story_id)] + rng.randrange(0, 3000))
            out.append(replace(
                a, id=f"{a.id}~{k}" if copy else a.id,
                text=perturb(a.text, rng) if copy else a.text,
                published_at=when,
            ))
        k += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--articles", type=int, default=2000)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a temporary folder")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "data" / "models")
    ap.add_argument("--json", action="store_true", help="one JSON object as the last line")
    args = ap.parse_args()

    from storyline.service.digest import PlainProgress, build_digest, day_period
    from storyline.service.pipeline import Pipeline
    from storyline.service.settings import Settings

    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-digest-")
        data_dir = Path(tmp.name)
    else:
        data_dir = args.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "models").exists():
        (data_dir / "models").symlink_to(args.models_dir.resolve(), target_is_directory=True)
    settings = Settings(data_dir=data_dir)
    pipe = Pipeline(settings)  # with its story clusterer, as in production
    assert pipe.clusterer is not None
    log = PlainProgress(sys.stderr)

    arts = make_day(args.articles)
    t0 = time.perf_counter()
    for i in range(0, len(arts), 256):
        pipe.ingest(arts[i : i + 256])
    ingest_s = time.perf_counter() - t0
    log.log(f"ingested {len(arts)} articles in {ingest_s:.1f} s")

    since, until = day_period(DAY.date())
    first = build_digest(pipe, since=since, until=until, top=args.top,
                         out_dir=data_dir / "digests", progress=log)
    log.log(first.summary_line())
    again = build_digest(pipe, since=since, until=until, top=args.top,
                         out_dir=data_dir / "digests", progress=log)
    log.log(again.summary_line())
    same = all(first.bodies[f] == again.bodies[f] for f in first.bodies)
    result = {
        "articles": first.articles, "stories": first.stories, "featured": len(first.featured),
        "top": args.top, "seconds": first.seconds, "rerun_seconds": again.seconds,
        "rerun_recomputed": len(again.recomputed), "rerun_identical": same,
        "ingest_seconds": round(ingest_s, 2), "stages": first.stages,
        "rerun_stages": again.stages, "threads": settings.threads,
    }
    pipe.close()
    if tmp is not None:
        tmp.cleanup()
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, val in result.items():
            print(f"{key:>18}: {val}")


if __name__ == "__main__":
    main()
