"""Embedding throughput: our int8 ONNX embedder vs sentence-transformers torch fp32.

Both paths embed the same texts (title + "\\n\\n" + text), truncated at the same 256 word
pieces, with the same batch size and the same number of threads, in ONE process. The
two are timed interleaved (ours, reference, reference, ours, ...) so that load from
other people on this shared machine hits both alike; each repeat gives one paired
ratio and we report medians. Batch-1 latency is measured the same way on single texts.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/embed.py --json

The last line with ``--json`` is one JSON object (see ``RESULT_KEYS``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARTICLES = Path("/work/shared/data/allsides/articles.jsonl")
DEFAULT_SEEDS = REPO / "seeds"
DEFAULT_MODELS = REPO / "data" / "models"

RESULT_KEYS = (
    "ours_articles_per_s",
    "reference_articles_per_s",
    "speedup",
    "mean_cosine",
    "min_cosine",
    "ours_batch1_ms",
    "reference_batch1_ms",
    "batch1_speedup",
    "n_texts",
    "threads",
    "batch_size",
)

Vectors = npt.NDArray[np.float32]


def load_texts(articles: Path | None, seeds: Path = DEFAULT_SEEDS) -> tuple[list[str], str]:
    """Texts as the product embeds them: title + blank line + body."""
    path = articles if articles is not None else DEFAULT_ARTICLES
    if path.exists():
        texts = []
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    art = json.loads(line)
                    texts.append(f"{art.get('title', '')}\n\n{art.get('text', '')}")
        return texts, str(path)
    if articles is not None:
        raise SystemExit(f"no such file: {articles}")
    files = sorted(seeds.glob("*.txt"))
    if not files:
        raise SystemExit(f"neither {path} nor any {seeds}/*.txt")
    return [f.read_text(encoding="utf-8") for f in files], f"{seeds}/*.txt"


def _timed(fn: Callable[[], Vectors]) -> tuple[float, Vectors]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _batch1_sample(texts: Sequence[str], n: int) -> list[str]:
    # Evenly spaced over the file (its order is unrelated to length), so short and
    # long texts both appear.
    step = max(1, len(texts) // max(1, n))
    return list(texts[::step][:n])


def run(
    texts: Sequence[str],
    *,
    models_dir: Path,
    threads: int,
    batch_size: int,
    repeats: int,
    batch1_n: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    # The reference needs torch; the thread count must be set before the first op.
    import torch
    from sentence_transformers import SentenceTransformer

    from storyline.models.embedder import MAX_TOKENS, OnnxEmbedder
    from storyline.models.embedder_build import minilm_source_dir

    torch.set_num_threads(threads)
    st = SentenceTransformer(str(minilm_source_dir()), device="cpu")
    st.max_seq_length = MAX_TOKENS
    ours = OnnxEmbedder(models_dir, threads=threads, batch_size=batch_size)

    def ref_embed(items: Sequence[str], bs: int = batch_size) -> Vectors:
        vecs = st.encode(
            list(items), batch_size=bs, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vecs, dtype=np.float32)

    def our_embed(items: Sequence[str]) -> Vectors:
        return np.asarray(ours.embed(list(items)), dtype=np.float32)

    # Warm-up: first-call allocations, lazy imports, thread-pool start.
    warm = list(texts[: min(len(texts), 2 * batch_size)])
    our_embed(warm)
    ref_embed(warm)
    # A lone text runs on our other session (all threads on one run), which the batches
    # above never touch: its first run would otherwise be one of the timed batch-1 samples.
    our_embed(warm[:1])
    ref_embed(warm[:1], 1)

    n = len(texts)
    ours_s: list[float] = []
    ref_s: list[float] = []
    ratios: list[float] = []
    ours_vecs: Vectors | None = None
    ref_vecs: Vectors | None = None
    for r in range(repeats):
        # ABBA order: a slow phase of the shared machine does not always hit one side.
        if r % 2 == 0:
            t_o, v_o = _timed(lambda: our_embed(texts))
            t_r, v_r = _timed(lambda: ref_embed(texts))
        else:
            t_r, v_r = _timed(lambda: ref_embed(texts))
            t_o, v_o = _timed(lambda: our_embed(texts))
        ours_s.append(t_o)
        ref_s.append(t_r)
        ratios.append(t_r / t_o)
        if ours_vecs is None:
            ours_vecs, ref_vecs = v_o, v_r
        log(
            f"repeat {r + 1}/{repeats}: ours {n / t_o:7.1f} art/s, "
            f"reference {n / t_r:7.1f} art/s, ratio {t_r / t_o:.2f}x"
        )
    assert ours_vecs is not None and ref_vecs is not None
    cos = (ours_vecs * ref_vecs).sum(axis=1)

    sample = _batch1_sample(texts, batch1_n)
    b1_ours: list[float] = []
    b1_ref: list[float] = []
    for i, text in enumerate(sample):
        pair = [
            (b1_ours, lambda t=text: our_embed([t])),
            (b1_ref, lambda t=text: ref_embed([t], 1)),
        ]
        for sink, fn in pair if i % 2 == 0 else pair[::-1]:
            sink.append(_timed(fn)[0] * 1000.0)
    b1_o = statistics.median(b1_ours)
    b1_r = statistics.median(b1_ref)
    return {
        "ours_articles_per_s": round(n / statistics.median(ours_s), 2),
        "reference_articles_per_s": round(n / statistics.median(ref_s), 2),
        # Median of the per-repeat paired ratios: robust to load drifting between repeats.
        "speedup": round(statistics.median(ratios), 3),
        "mean_cosine": round(float(cos.mean()), 5),
        "min_cosine": round(float(cos.min()), 5),
        "ours_batch1_ms": round(b1_o, 2),
        "reference_batch1_ms": round(b1_r, 2),
        "batch1_speedup": round(b1_r / b1_o, 3),
        "n_texts": n,
        "threads": threads,
        "batch_size": batch_size,
        "model_id": ours.model_id,
        "repeat_ratios": [round(x, 3) for x in ratios],
        "batch1_n": len(sample),
    }


def format_table(res: dict[str, Any]) -> str:
    rows = [
        ("path", "articles/s", "batch-1 ms", "cosine vs ref (mean / min)"),
        (
            "ours: OnnxEmbedder int8",
            f"{res['ours_articles_per_s']:.1f}",
            f"{res['ours_batch1_ms']:.1f}",
            f"{res['mean_cosine']:.4f} / {res['min_cosine']:.4f}",
        ),
        (
            "reference: sentence-transformers torch fp32",
            f"{res['reference_articles_per_s']:.1f}",
            f"{res['reference_batch1_ms']:.1f}",
            "-",
        ),
        (
            "ratio (ours faster by)",
            f"{res['speedup']:.2f}x",
            f"{res['batch1_speedup']:.2f}x",
            "",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        f"{res['n_texts']} texts, batch {res['batch_size']}, {res['threads']} threads; "
        f"throughput ratio = median of paired repeats {res['repeat_ratios']}; "
        f"batch-1 = median over {res['batch1_n']} single texts"
    )
    return "\n".join(lines)


def op_profile(texts: Sequence[str], models_dir: Path) -> dict[str, Any]:
    """Share of kernel time per operator type in our graph, one thread, each text alone
    (as served): where the time goes, for deciding what is worth optimising."""
    import tempfile
    from collections import Counter

    import onnxruntime as ort

    from storyline.models.embedder import DISABLED_OPTIMIZERS, load_tokenizer
    from storyline.models.registry import EMBEDDER, Manifest

    folder = Manifest(models_dir).verify(EMBEDDER)
    tok = load_tokenizer(folder / "tokenizer.json")
    ids = [e.ids for e in tok.encode_batch(list(texts))]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.enable_profiling = True
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "embed")
        sess = ort.InferenceSession(str(folder / EMBEDDER.file), opts,
                                    providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(DISABLED_OPTIMIZERS))
        t0 = time.perf_counter()
        for one in ids:
            sess.run(None, {"input_ids": np.asarray([one], dtype=np.int64)})
        wall = time.perf_counter() - t0
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1
    return {
        "n_texts": len(ids),
        "mean_tokens": round(float(np.mean([len(i) for i in ids])), 1),
        "ms_per_text_1_thread": round(wall / len(ids) * 1000, 2),
        "op_share": {k: round(v / total, 3) for k, v in per_op.most_common()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--articles", type=Path, help="JSONL with title/text (default: AllSides)")
    ap.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, help="use only the first N texts")
    ap.add_argument("--batch1-n", type=int, default=50, help="single texts for latency")
    ap.add_argument("--json", action="store_true", help="print one JSON object as last line")
    ap.add_argument("--profile", type=int, metavar="N",
                    help="instead of the comparison: kernel time per operator type of our "
                         "graph over the first N texts (one thread, each text alone)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.threads < 1 or args.batch_size < 1:
        ap.error("--repeats, --threads and --batch-size must be >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    texts, source = load_texts(args.articles)
    if args.limit:
        texts = texts[: args.limit]
    if not texts:
        raise SystemExit("no texts to embed")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"{len(texts)} texts from {source}; models from {args.models_dir}")
    if args.profile:
        prof = op_profile(texts[: args.profile], args.models_dir)
        for op, share in prof["op_share"].items():
            print(f"{op:<32} {share * 100:5.1f} %")
        print(f"{prof['ms_per_text_1_thread']} ms per text on one thread, "
              f"mean {prof['mean_tokens']} tokens")
        if args.json:
            print(json.dumps(prof))
        return 0
    res = run(
        texts,
        models_dir=args.models_dir,
        threads=args.threads,
        batch_size=args.batch_size,
        repeats=args.repeats,
        batch1_n=args.batch1_n,
        log=log,
    )
    print(format_table(res))
    if args.json:
        print(json.dumps(res, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
