"""The ``storyline`` command line. Errors map to exit codes in one place: :func:`main`."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from storyline.models.errors import InvalidInput, NotFound, StorylineError
from storyline.service.settings import LOG_LEVELS, Settings

app = typer.Typer(
    name="storyline",
    help="Multi-document news summarisation, story clustering and actor stance.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Docstrings are wrapped at the source's line length; markdown reflows their paragraphs.
    rich_markup_mode="markdown",
)
models_app = typer.Typer(help="Build and train model artefacts.", no_args_is_help=True,
                         rich_markup_mode="markdown")
index_app = typer.Typer(help="The FAISS vector index.", no_args_is_help=True,
                        rich_markup_mode="markdown")
eval_app = typer.Typer(help="Quality evaluation on JSONL in the documented formats.",
                       no_args_is_help=True, rich_markup_mode="markdown")
cluster_app = typer.Typer(help="Story clustering maintenance.", no_args_is_help=True,
                          rich_markup_mode="markdown")
app.add_typer(models_app, name="models")
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
app.add_typer(cluster_app, name="cluster")

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object as the last line")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="overrides STORYLINE_DATA_DIR")
]
EngineOpt = Annotated[
    str, typer.Option(help="local, or ray: a Ray Data batch job (needs storyline\\[ray])")
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address",
                 help="Ray cluster to use with --engine ray (auto: this node's cluster); "
                 "default: an embedded single-node Ray"),
]
RayWorkersOpt = Annotated[
    int | None,
    typer.Option("--ray-workers", min=1, help="Ray actors \\[default: one per cluster CPU]"),
]


def settings(data_dir: Path | None = None) -> Settings:
    """The one settings object; a bad ``STORYLINE_*`` value is ``InvalidInput`` naming it."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        s = Settings()
    except SettingsError as exc:  # a list or dict setting whose value is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"STORYLINE_{field.group(1).upper()}" if field else "a STORYLINE_ variable"
        raise InvalidInput(f"invalid setting {name}: {exc.__cause__ or exc}"
                           " (list settings are JSON, e.g. [\"a\", \"b\"])") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"STORYLINE_{'_'.join(str(p) for p in e['loc'][:1]).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise InvalidInput(f"invalid setting {problems}") from None
    if data_dir is not None:
        s = s.model_copy(update={"data_dir": data_dir})
    return s


def emit(obj: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(obj, default=str, sort_keys=True))


def _dt(value: str | None, option: str) -> datetime | None:
    """``option``'s value as an aware UTC datetime; a bad one is ``InvalidInput`` naming it."""
    if value is None:
        return None
    from storyline.models.errors import InvalidArticle
    from storyline.service.ingest import parse_datetime

    try:
        parsed: datetime | None = parse_datetime(value)
    except InvalidArticle as exc:  # not a date, or out of range: parse_datetime says which
        raise InvalidInput(
            f"{option}: {exc.reason} (e.g. 2024-05-01 or 2024-05-01T12:00:00Z)") from None
    return parsed


def input_file(path: Path, option: str) -> Path:
    """An input file the user named with ``option``: it must exist (else ``NotFound``, exit
    3) and be a readable file (else ``InvalidInput``, exit 2)."""
    if not path.exists():
        raise NotFound(f"{option}: {path}: no such file")
    if path.is_dir():
        raise InvalidInput(f"{option}: {path} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise InvalidInput(f"{option}: {path} is not readable")
    return path


def open_pipeline(data_dir: Path | None = None) -> Any:
    from storyline.service.pipeline import Pipeline

    return Pipeline(settings(data_dir))


# -- models -----------------------------------------------------------------------------
#: Joined texts added to the embedder self-check, and the words each has at least.
CHECK_LONG_TEXTS = 64
CHECK_LONG_WORDS = 320


def check_texts(limit: int | None = None) -> list[str]:
    """Texts for the embedder self-check: the AllSides articles if present, else seeds/.

    The articles are excerpts of at most ~230 tokens, short of the embedder's 256-token
    window, so :func:`long_check_texts` joins consecutive ones into texts that reach it
    (appended after them; the build times its graph variants on the first texts only).
    ``limit``: the first N articles only, and the joined texts made of them.
    """
    from storyline.service.ingest import read_source
    from storyline.service.pipeline import article_text

    for cand in (_shared_data() / "allsides" / "articles.jsonl", Path("seeds")):
        if cand.exists():
            arts = [p.article for p in read_source(cand) if p.article is not None]
            texts = [article_text(a) for a in arts][:limit]
            return texts + long_check_texts(texts)
    return []


def long_check_texts(
    texts: list[str], *, n: int = CHECK_LONG_TEXTS, min_words: int = CHECK_LONG_WORDS
) -> list[str]:
    """Up to ``n`` texts of ``texts`` joined in order, a blank line apart, each taking the
    next ones until it has ``min_words`` whitespace-separated words.

    Every word is at least one word piece, so 320 words pass 256 tokens in any language
    the tokenizer splits on spaces, with no tokenizer needed here.
    """
    out: list[str] = []
    run: list[str] = []
    words = 0
    for text in texts:
        if len(out) == n:
            break
        run.append(text)
        words += len(text.split())
        if words >= min_words:
            out.append("\n\n".join(run))
            run, words = [], 0
    return out


def _shared_data() -> Path:
    env = os.environ.get("STORYLINE_SHARED_DATA")
    if env:
        return Path(env)
    for base in (Path.cwd(), *Path.cwd().parents):
        if (base / "shared" / "data").is_dir():
            return base / "shared" / "data"
        if (base.parent / "shared" / "data").is_dir():
            return base.parent / "shared" / "data"
    return Path("../shared/data")


@models_app.command("build")
def models_build(
    force: Annotated[bool, typer.Option(help="rebuild even when up to date")] = False,
    only: Annotated[
        list[str] | None, typer.Option(help="embedder | summariser | stance (repeatable)")
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Build every model artefact from the pip-installed weight packages (cached).

    Each step is skipped when its artefact is current (same inputs, intact files).
    """
    from storyline.models.embedder_build import build_embedder

    s = settings(data_dir)
    steps = set(only or ("embedder", "summariser", "stance"))
    unknown = steps - {"embedder", "summariser", "stance"}
    if unknown:
        raise typer.BadParameter(f"unknown model(s): {', '.join(sorted(unknown))}")
    data = _shared_data()
    if "embedder" in steps:
        build_embedder(s.models_dir, check_texts=check_texts(), force=force, log=typer.echo)
    if "summariser" in steps:
        from storyline.models.summariser_train import train_summariser

        train_summariser(
            s.models_dir, articles_file=data / "allsides" / "articles.jsonl",
            stories_file=data / "allsides" / "stories.jsonl", force=force, log=typer.echo,
        )
    if "stance" in steps:
        from storyline.models.stance_train import build_stance

        build_stance(s.models_dir, data_dir=data / "newsmtsc", force=force, log=typer.echo)


# -- a user's own seq2seq summariser (models/seq2seq*.py) ---------------------------------
@models_app.command("export-seq2seq")
def models_export_seq2seq(
    src: Annotated[Path, typer.Argument(help="local Hugging Face seq2seq model folder")],
    quantise: Annotated[bool, typer.Option(help="int8 dynamic quantisation")] = True,
    prefix: Annotated[
        str | None, typer.Option(help="input prefix, e.g. 'summarize: ' \\[default: the model's]")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="cap on generated tokens")] = 256,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a local seq2seq model to ONNX for `Seq2SeqSummariser`, checked against torch."""
    from storyline.models.seq2seq_build import export_seq2seq

    meta = export_seq2seq(src, settings(data_dir).models_dir, quantise=quantise, prefix=prefix,
                          max_new_tokens=max_new_tokens, log=typer.echo)
    emit({"config": meta["config"], "check": meta["check"]}, as_json)


@models_app.command("train-stance")
def models_train_stance(
    epochs: Annotated[int, typer.Option(min=1, help="fine-tuning epochs")] = 3,
    seed: int = 13,
    force: Annotated[bool, typer.Option(help="retrain even when up to date")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Fine-tune the target-sentiment model on NewsMTSC train and export it to int8 ONNX."""
    from storyline.models.stance_train import build_stance

    build_stance(settings(data_dir).models_dir, data_dir=_shared_data() / "newsmtsc",
                 epochs=epochs, seed=seed, force=force, log=typer.echo)


@models_app.command("info")
def models_info(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Show the built artefacts and their sha256."""
    from storyline.models.registry import Manifest

    recs = Manifest(settings(data_dir).models_dir).load()
    out: dict[str, dict[str, Any]] = {
        k: {"files": v.files, "check": v.meta.get("check")} for k, v in recs.items()
    }
    if not as_json:
        for name, r in out.items():
            typer.echo(f"{name}: {', '.join(f'{f} {h[:12]}' for f, h in r['files'].items())}")
    emit(out, as_json)


# -- ingest / read ----------------------------------------------------------------------
@app.command()
def ingest(
    sources: Annotated[
        list[str], typer.Argument(help="JSONL / .txt / RSS-Atom files, folders or feed URLs")
    ],
    data_dir: DataDirOpt = None,
    batch: Annotated[int, typer.Option(help="articles per transaction")] = 256,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_workers: RayWorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest articles from JSONL, text or RSS/Atom files, folders or feed URLs.

    Bad lines and unreadable sources are reported and skipped (the rest is ingested);
    exit 2 if any failed.

    With --engine ray the new and changed articles are embedded by a Ray Data job (in
    chunks of 10,000), then stored as usual."""
    import contextlib

    from storyline.service.ingest import read_source

    if engine not in ("local", "ray"):
        raise InvalidInput(f"unknown engine '{engine}' (use local or ray)")
    pipe = open_pipeline(data_dir)
    errors: list[str] = []
    totals = {"inserted": 0, "updated": 0, "unchanged": 0, "duplicate": 0, "failed": 0}
    pending: list[Any] = []
    pending_ids: set[str] = set()
    chunk = batch
    session: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if engine == "ray":
        from storyline.service import ray_engine

        chunk = max(batch, 10_000)
        session = ray_engine.ray_session(ray_address, num_cpus=pipe.settings.threads)

    def flush(ray: Any) -> None:
        vecs: dict[str, Any] = {}
        if ray is not None and pending:
            s = pipe.settings
            vecs = ray_engine.embed_articles(
                ray, ray_engine.needs_embedding(pipe, pending), models_dir=s.models_dir,
                threads=s.threads, embed_batch_size=s.embed_batch_size, workers=ray_workers)
        for i in range(0, len(pending), batch):
            rep = pipe.ingest(pending[i:i + batch], precomputed=vecs or None)
            for key, val in rep.as_dict().items():
                if key in totals:
                    totals[key] += val
        pending.clear()
        pending_ids.clear()

    def lines_of(src: str) -> Iterator[Any]:
        """read_source, with a source that cannot be read at all (missing, empty, not a
        feed) reported like a bad line, so that the other sources still go in."""
        try:
            yield from read_source(src, max_chars=pipe.settings.max_article_chars)
        except InvalidInput as exc:
            errors.append(exc.detail)
            totals["failed"] += 1
        except OSError as exc:
            errors.append(f"{src}: cannot read ({exc.strerror or exc})")
            totals["failed"] += 1

    try:
        with session as ray:
            for src in sources:
                for parsed in lines_of(src):
                    if parsed.error is not None:
                        errors.append(f"{parsed.source or src}: {parsed.error.detail}")
                        totals["failed"] += 1
                        continue
                    if parsed.article.id in pending_ids:
                        # the same id again before its batch went in: store the earlier
                        # record first, so that the later one counts as an update of it
                        # (as with --batch 1) rather than replacing it unreported
                        flush(ray)
                    pending.append(parsed.article)
                    pending_ids.add(parsed.article.id)
                    if len(pending) >= chunk:
                        flush(ray)
            flush(ray)
    finally:
        pipe.close()
    for e in errors:
        typer.echo(f"error: {e}", err=True)
    if not as_json:
        typer.echo(", ".join(f"{k} {v}" for k, v in totals.items()))
    emit({**totals, "errors": errors}, as_json)
    if errors:
        raise typer.Exit(2)


def _print_hits(hits: list[Any]) -> None:
    for h in hits:
        when = h.published_at.date().isoformat() if h.published_at else "-"
        typer.echo(
            f"  {h.score:6.3f}  {h.id:<24} {when}  {(h.source or '-')[:18]:<18} {h.title[:70]}"
        )


def _hits_json(hits: list[Any]) -> list[dict[str, Any]]:
    return [
        {"id": h.id, "score": h.score, "similarity": h.similarity, "title": h.title,
         "source": h.source, "published_at": h.published_at, "story_id": h.story_id}
        for h in hits
    ]


@app.command()
def related(
    article_id: str,
    k: Annotated[int, typer.Option("-k", "--k", help="how many results")] = 10,
    since: str | None = None,
    until: str | None = None,
    source: str | None = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Related coverage for a stored article (itself and its exact duplicates excluded)."""
    start, end = _dt(since, "--since"), _dt(until, "--until")
    pipe = open_pipeline(data_dir)
    hits = pipe.related(article_id, k=k, since=start, until=end, source=source)
    if not as_json:
        _print_hits(hits)
    emit({"id": article_id, "related": _hits_json(hits)}, as_json)


@app.command()
def search(
    text: str,
    k: Annotated[int, typer.Option("-k", "--k", help="how many results")] = 10,
    since: str | None = None,
    until: str | None = None,
    source: str | None = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Free-text search over stored articles."""
    start, end = _dt(since, "--since"), _dt(until, "--until")
    pipe = open_pipeline(data_dir)
    hits = pipe.search(text, k=k, since=start, until=end, source=source)
    if not as_json:
        _print_hits(hits)
    emit({"query": text, "results": _hits_json(hits)}, as_json)


@app.command()
def stats(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Counts of stored articles, duplicates, index entries and stories."""
    st = open_pipeline(data_dir).stats()
    if not as_json:
        for key, val in st.items():
            typer.echo(f"{key:>12}: {val}")
    emit(st, as_json)


@index_app.command("rebuild")
def index_rebuild(data_dir: DataDirOpt = None) -> None:
    """Rebuild the FAISS index from the embeddings stored in the database."""
    pipe = open_pipeline(data_dir)
    idx = pipe.rebuild_index(save=True)
    typer.echo(f"rebuilt {idx.kind} index with {len(idx)} vectors at {pipe.settings.index_path}")


# -- the main job -------------------------------------------------------------------------
@app.command()
def demo(
    source: Annotated[Path, typer.Argument(help="what to ingest")] = Path("seeds"),
    data_dir: DataDirOpt = None,
    k: int = 5,
    digest_step: Annotated[
        bool, typer.Option("--digest/--no-digest", help="also build the digest of SOURCE")
    ] = True,
) -> None:
    """The main job: ingest SOURCE, show related coverage, build its days' digest.

    Ingests SOURCE, prints related coverage and index statistics, and builds the digest
    of the days SOURCE covers. Bad lines are reported and skipped, as by ``ingest``; exit 2
    if any."""
    from storyline.service.ingest import read_source

    pipe = open_pipeline(data_dir)
    errors: list[str] = []
    try:
        arts: list[Any] = []
        for parsed in read_source(source, max_chars=pipe.settings.max_article_chars):
            if parsed.error is not None:
                errors.append(f"{parsed.source or source}: {parsed.error.detail}")
            elif parsed.article is not None:
                arts.append(parsed.article)
        rep = pipe.ingest(arts)
        typer.echo(f"ingested {source}: {rep.as_dict() | {'failed': len(errors)}}")
        for e in errors:
            typer.echo(f"error: {e}", err=True)
        for a in arts:
            typer.echo(f"\n[{a.id}] {a.title[:90]}")
            hits = pipe.related(a.id, k=k)
            if hits:
                _print_hits(hits)
            else:
                typer.echo("  (no related coverage stored yet)")
        typer.echo("\nindex: " + json.dumps(pipe.stats(), default=str))
        if digest_step:
            from storyline.service.digest import build_digest, digest_period_for

            period = digest_period_for(arts)
            if period is None:
                typer.echo("\ndigest: skipped (no ingested article carries a publication date)")
            else:
                res = build_digest(pipe, since=period[0], until=period[1],
                                   out_dir=pipe.settings.data_dir / "digests")
                typer.echo(f"\n{res.summary_line()}")
                for path in res.files.values():
                    typer.echo(f"  {path}")
    finally:
        pipe.close()
    if errors:
        raise typer.Exit(2)


# -- digest ---------------------------------------------------------------------------------
@app.command()
def digest(
    date: Annotated[
        str | None, typer.Option(help="a UTC day, YYYY-MM-DD (default: yesterday)")
    ] = None,
    since: Annotated[str | None, typer.Option(help="period start (ISO 8601), with --until")] = None,
    until: Annotated[str | None, typer.Option(help="period end, exclusive")] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="comma-separated: html,md,json; the files written"
                          " to --out (the store always gets all three)")
    ] = "html,md,json",
    out: Annotated[
        Path | None, typer.Option(help="output folder \\[default: <data_dir>/digests]")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="stories to feature")] = 10,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_workers: RayWorkersOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the digest of a day or period (HTML, Markdown, JSON).

    Ranked stories with cited summaries and stances, as HTML, Markdown and JSON; stored
    for GET /v1/digests/{key} and written to --out.

    With --engine ray the summaries and stances not computed yet run as a Ray Data job."""
    import sqlite3

    from storyline.models.errors import StoreError
    from storyline.service.digest import (
        build_digest,
        make_progress,
        parse_formats,
        prepare_out_dir,
        resolve_period,
    )

    start, end = resolve_period(date, _dt(since, "--since"), _dt(until, "--until"))
    fmts = parse_formats(fmt)
    if out is not None:  # before any work: a bad --out used to fail after the digest
        prepare_out_dir(out, name="--out")
    s = settings(data_dir)
    if s.database_url is None and not s.db_path.exists():
        raise StoreError(f"no database at {s.db_path}: ingest articles first")
    try:
        pipe = open_pipeline(data_dir)
    except sqlite3.Error as exc:
        raise StoreError(f"database {s.db_path} unavailable: {exc}") from exc
    progress = make_progress()
    try:
        res = build_digest(pipe, since=start, until=end, top=top, formats=fmts,
                           out_dir=out or s.data_dir / "digests", progress=progress,
                           engine=engine, ray_address=ray_address, ray_workers=ray_workers)
    finally:
        progress.close()
        pipe.close()
    typer.echo(res.summary_line(), err=as_json)
    emit({"key": res.key, "stories": len(res.featured), "candidates": res.stories,
          "articles": res.articles, "recomputed": len(res.recomputed), "seconds": res.seconds,
          "stages": res.stages, "files": {k: str(v) for k, v in res.files.items()}}, as_json)


# -- HTTP service -------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="overrides STORYLINE_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="overrides STORYLINE_PORT")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run the HTTP API (litestar on uvicorn) until SIGINT/SIGTERM; OpenAPI at /schema."""
    import uvicorn

    from storyline.models.nlp import keep_torch_out
    from storyline.service.api.app import create_app

    keep_torch_out()  # serving never needs torch; spaCy would import it when installed
    s = settings(data_dir)
    s = s.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v})
    # Model threads run Python between onnxruntime calls; a request thread waiting for the
    # GIL waits up to this interval per hand-off (CPython's default is 5 ms).
    sys.setswitchinterval(s.gil_switch_interval_ms / 1000)
    uvicorn.run(create_app(s), host=s.host, port=s.port, log_level=s.log_level.lower(),
                timeout_graceful_shutdown=30, proxy_headers=True,
                forwarded_allow_ips=s.forwarded_allow_ips)


# -- evaluation ---------------------------------------------------------------------------
@eval_app.command("retrieval")
def eval_retrieval(
    articles: Annotated[Path, typer.Option(help="JSONL in the article format, with story_id")],
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Related-coverage recall@k / MRR against gold story ids, ours vs the plain baseline."""
    from storyline.service.evaluation.retrieval import evaluate_retrieval, format_table

    input_file(articles, "--articles")
    s = settings(data_dir)
    # the article length limit ingest applies, so the eval reads what ingest takes
    res = evaluate_retrieval(articles, models_dir=s.models_dir, max_chars=s.max_article_chars)
    if not as_json:
        typer.echo(format_table(res))
    emit(res, as_json)


@eval_app.command("target-sentiment")
def eval_target_sentiment(
    newsmtsc: Annotated[Path, typer.Option(help="NewsMTSC-format JSONL (sentence, targets)")],
    train: Annotated[
        Path | None, typer.Option(help="NewsMTSC train file to tune the VADER floor on")
    ] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Macro-F1 / accuracy of the served int8 target-sentiment model, VADER floor beside it."""
    from storyline.service.evaluation.sentiment import evaluate_target_sentiment

    input_file(newsmtsc, "--newsmtsc")
    if train is not None:
        input_file(train, "--train")
    s = settings(data_dir)
    res = evaluate_target_sentiment(newsmtsc, s.models_dir, train_file=train, threads=s.threads)
    if n_bad := res["mention_mismatches"]:
        lines = ", ".join(map(str, res["mention_mismatch_lines"])) + (", …" if n_bad > 5 else "")
        typer.echo(f"warning: {newsmtsc}: {n_bad} target(s) whose mention is not the "
                   f"sentence's text at from..to (line {lines}); scored at the offsets", err=True)
    if not as_json:
        v = res["baseline_vader"]
        typer.echo(f"{'system':<22}{'macro-F1':>10}{'accuracy':>10}")
        typer.echo(f"{'storyline int8':<22}{res['macro_f1']:>10.3f}{res['accuracy']:>10.3f}")
        typer.echo(f"{'VADER (floor)':<22}{v['macro_f1']:>10.3f}{v['accuracy']:>10.3f}")
        typer.echo(f"{res['n']} targets, {res['ms_per_target']:.1f} ms per target")
    emit(res, as_json)


@eval_app.command("stance")
def eval_stance(
    articles: Annotated[Path, typer.Option(help="JSONL in the article format")],
    gold: Annotated[Path, typer.Option(help="gold portrayal / speaker->target lines (README)")],
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Actor coverage and stance macro-F1 against gold labels."""
    from storyline.models.actors import SpacyActorExtractor
    from storyline.models.stance import ActorStanceTagger, load_target_scorer
    from storyline.service.evaluation.stance import evaluate_stance

    input_file(articles, "--articles")
    input_file(gold, "--gold")
    extractor = SpacyActorExtractor()
    s = settings(data_dir)
    scorer = load_target_scorer(s.models_dir, fallback=False)
    tagger = ActorStanceTagger(scorer, attributor=extractor)
    res = evaluate_stance(articles, gold, extractor=extractor, tagger=tagger,
                          max_chars=s.max_article_chars)
    if not as_json:
        for key in ("coverage", "macro_f1", "edge_coverage", "edge_macro_f1"):
            val = res.get(key)
            typer.echo(f"{key:>14}: {'-' if val is None else f'{val:.3f}'}")
    emit(res, as_json)


# -- story clustering (index/stories.py, service/evaluation/clustering.py) ------------------
@eval_app.command("clustering")
def eval_clustering(
    articles: Annotated[Path, typer.Option(help="JSONL in the article format, with story_id")],
    order: Annotated[str, typer.Option(help="ingest order: date | shuffle")] = "date",
    baselines: Annotated[
        bool, typer.Option("--baselines", help="also agglomerative and single-pass baselines")
    ] = False,
    seed: Annotated[int, typer.Option(help="shuffle seed")] = 0,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Story clustering BCubed / pairwise F1 against gold story ids (throwaway data dir)."""
    from storyline.service.evaluation.clustering import evaluate_clustering, format_table

    input_file(articles, "--articles")
    s = settings(data_dir)
    res = evaluate_clustering(articles, order=order, baselines=baselines, seed=seed,
                              models_dir=s.models_dir, max_chars=s.max_article_chars)
    if not as_json:
        typer.echo(format_table(res))
    emit(res, as_json)


@cluster_app.command("refine")
def cluster_refine(
    full: Annotated[bool, typer.Option("--full", help="re-cluster every story")] = False,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Merge stories that now belong together and split those that drifted apart.

    Old ids keep resolving to the new ones. Run it periodically, e.g. from cron."""
    pipe = open_pipeline(data_dir)
    if pipe.clusterer is None:
        raise InvalidInput("story clustering is switched off for this pipeline")
    res = pipe.clusterer.refine(full=full)
    pipe.close()
    if not as_json:
        typer.echo(", ".join(f"{k} {v}" for k, v in res.items()))
    emit(res, as_json)
# -- end of story clustering ----------------------------------------------------------------


# -- summaries (models/summariser*.py, service/evaluation/summaries.py) ---------------------
@models_app.command("train-summariser")
def models_train_summariser(
    articles: Annotated[
        Path | None, typer.Option(help="AllSides articles.jsonl (default: shared data)")
    ] = None,
    stories: Annotated[
        Path | None, typer.Option(help="AllSides stories.jsonl (default: shared data)")
    ] = None,
    seed: Annotated[int, typer.Option(help="training seed")] = 13,
    force: Annotated[bool, typer.Option(help="retrain even when up to date")] = False,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the extractive summariser's ONNX scorer on the split=train stories."""
    from storyline.models.summariser_train import train_summariser

    for path, option in ((articles, "--articles"), (stories, "--stories")):
        if path is not None:
            input_file(path, option)
    data = _shared_data() / "allsides"
    res = train_summariser(
        settings(data_dir).models_dir, articles_file=articles or data / "articles.jsonl",
        stories_file=stories or data / "stories.jsonl", seed=seed, force=force,
        log=lambda m: typer.echo(m, err=as_json),
    )
    emit(res, as_json)


@eval_app.command("summaries")
def eval_summaries(
    articles: Annotated[Path, typer.Option(help="JSONL in the article format")],
    stories: Annotated[Path, typer.Option(help="stories JSONL: story_id, split, summary, "
                                                "article_ids")],
    split: Annotated[
        str, typer.Option(help="dev | train | all, or another split the stories file names")
    ] = "dev",
    baselines: Annotated[
        bool, typer.Option("--baselines", help="also lead, LexRank, TextRank, centroid+MMR")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="first N stories only")] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """ROUGE-1/2/L F1, faithfulness and latency of the summariser at the reference length."""
    from storyline.service.evaluation.summaries import evaluate_summaries, format_table

    input_file(articles, "--articles")
    input_file(stories, "--stories")
    s = settings(data_dir)
    res = evaluate_summaries(articles, stories, split=split, baselines=baselines,
                             models_dir=s.models_dir, threads=s.threads, limit=limit)
    if not as_json:
        typer.echo(format_table(res))
    emit(res, as_json)
# -- end of summaries -----------------------------------------------------------------------


def main() -> None:
    """Entry point: run the app, mapping storyline errors to exit codes in one place."""
    # Read before the settings are (the CLI's default is quieter than the service's), so a
    # bad value is checked here: logging's own ValueError was a traceback.
    raw_level = os.environ.get("STORYLINE_LOG_LEVEL", "")
    level = raw_level.strip().upper() or "WARNING"
    if level not in LOG_LEVELS:
        typer.echo(f"error: invalid setting STORYLINE_LOG_LEVEL: expected one of "
                   f"{', '.join(LOG_LEVELS)}, got {raw_level!r}", err=True)
        sys.exit(InvalidInput.exit_code)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # Standalone mode lets click report usage errors itself; our errors reach here.
        app()
    except StorylineError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        sys.exit(exc.exit_code)
    # Backstops, so a path or encoding problem no check caught is still one line, never a
    # traceback: a missing file is "not found" (3), any other file problem bad input (2).
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(NotFound.exit_code if isinstance(exc, FileNotFoundError)
                 else InvalidInput.exit_code)
    except UnicodeError as exc:
        typer.echo(f"error: text encoding: {exc}", err=True)
        sys.exit(InvalidInput.exit_code)
    except OverflowError as exc:  # a date or number at the edge of what Python represents
        typer.echo(f"error: out of range: {exc}", err=True)
        sys.exit(InvalidInput.exit_code)


if __name__ == "__main__":
    main()
