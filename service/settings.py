"""The one settings object. Read from ``STORYLINE_*`` environment variables (and ``.env``)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["LOG_LEVELS", "Settings"]

#: what both logging and uvicorn accept (case-insensitive)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STORYLINE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # -- storage -------------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="SQLite db, FAISS files and built models")
    database_url: str | None = Field(
        None,
        description="PostgreSQL store, e.g. postgresql+psycopg://user@host/db (needs the"
        " `postgres` extra); unset = the SQLite file <data_dir>/storyline.db",
    )
    models_path: Path | None = Field(
        None, alias="STORYLINE_MODELS_DIR",
        description="built models (default <data_dir>/models); read-only at serve time",
    )
    index_kind: Literal["flat", "hnsw"] = Field("flat", description="exact or approximate search")
    index_hnsw_ef_search: int = Field(
        128, ge=1, le=4096,
        description="hnsw search breadth: recall@10 0.990 at 128 on 100k vectors "
        "(bench/index.py, session 17)",
    )

    index_save_interval_s: float = Field(
        30.0, ge=0, le=86_400,
        description="write the vector index file at most this often while articles change "
        "(and at shutdown); the file records the store change number it reflects, and the "
        "changes after it are replayed from the store at start, so a crash loses no "
        "article or update. 0 = after every ingest or delete",
    )

    # -- inference -----------------------------------------------------------------
    threads: int = Field(2, ge=1, le=64, description="onnxruntime intra-op threads")
    embed_batch_size: int = Field(32, ge=1, le=512)
    inference_workers: int = Field(1, ge=1, le=16, description="threads running model calls")
    inference_queue: int = Field(32, ge=1, description="waiting requests before 503")
    model_process: bool = Field(
        True, description="HTTP service: run the models in a child process (at "
        "inference_nice), so lookups never wait for the interpreter lock inference holds "
        "(+21 % and +22 % requests/s in two paired load runs, bench/RESULTS.md); false "
        "runs them on threads of the service process",
    )
    background_process: bool = Field(
        True, description="with model_process: ingest and the idle-time warmer run their "
        "model calls in a second child process (at background_nice), so a summary computed "
        "on request never waits for an ingest batch or a warmer analysis to finish "
        "(costs that process's memory, ~0.5 GB)",
    )
    model_call_timeout_s: float = Field(
        300.0, gt=0, le=3600,
        description="with model_process: a model call that has not answered after this "
        "many seconds fails with 503 (model unavailable, Retry-After) and its worker is "
        "killed and replaced, so a wedged worker cannot hang requests. Legitimate calls "
        "can be long: analysing a 150-article story (55k words) took 35 s cold on the "
        "2-core Xeon, and the background lane runs at nice 19 behind every request. A "
        "fresh worker's first call gets 300 s more to load the models",
    )
    background_nice: int = Field(
        19, ge=0, le=19,
        description="Linux: CPU priority (nice) of the background model process; at least "
        "inference_nice",
    )
    inference_nice: int = Field(
        0, ge=0, le=19,
        description="Linux: how much lower the CPU priority of the model process answering "
        "requests (without model_process: of the inference threads) is than the request "
        "threads' (0 = same). Three paired full load runs, 0 vs 5 (ingest and the warmer "
        "run apart at background_nice): summarise p99 384 vs 597 ms (medians; lower in all "
        "three), related p99 142 vs 126 ms (higher in two), req/s higher in two. Without "
        "model_process, 10 measured better for the threads (session 4; bench/RESULTS.md)",
    )

    # -- related coverage ranking (tuned on the AllSides train split) ----------------
    related_window_hours: float = Field(
        72.0, ge=0, description="candidates within this many hours rank higher (0 = off)"
    )
    related_time_weight: float = Field(0.6, ge=0)
    #: shared named entities measured no gain on the train split (see docs/quality.md)
    related_entity_weight: float = Field(0.0, ge=0)
    #: train split: recall@2 0.899 -> 0.918 from 0 to 0.3, flat beyond (docs/quality.md)
    related_story_weight: float = Field(
        0.3, ge=0, description="bonus for candidates in the query article's story"
    )

    # -- summaries -----------------------------------------------------------------
    summary_words: int = Field(80, ge=10, le=1000)
    replica_sync_s: float = Field(
        0.0, ge=0, le=3600,
        description="poll the store's change feed this often to keep the index current with "
        "other processes' writes (0 = off; set it on API replicas sharing one store)",
    )
    warm_stories: bool = Field(
        True, description="recompute changed stories' summaries + stances while the service is idle"
    )
    sentence_cache_size: int = Field(
        20_000, ge=0,
        description="sentence vectors the summariser keeps (~1.5 kB each): a changed story "
        "re-embeds only its new sentences",
    )
    analysis_cache_size: int = Field(
        2048, ge=0, description="ad hoc article sets whose summary + stances, and whose "
        "whole answers (their articles' text included), stay in memory; the analyses' LRU also "
        "keeps stored stories' decoded analyses"
    )
    inline_lookups: bool = Field(
        False, description="HTTP, embedded SQLite store only: run related-coverage lookups "
        "and cached-summary probes on the event loop instead of the I/O pool (no hop to a "
        "thread and back). Session 11, 16-client load, best phases: summarise p99 117-130 "
        "vs 201 ms and req/s level, but related p99 54.5-59.0 vs 49.6 ms, so off by "
        "default. PostgreSQL always uses the I/O pool",
    )
    gil_switch_interval_ms: float = Field(
        1.0, gt=0, le=100,
        description="`storyline serve`: how long a thread may hold the GIL while another "
        "waits (CPython default 5): shorter keeps reads responsive beside model threads",
    )
    stance_cache_size: int = Field(
        50_000, ge=0,
        description="target-sentiment answers kept (sentence + target span -> 3 floats): "
        "a changed story or an ad hoc set of stored articles scores only new mentions",
    )
    feature_cache: bool = Field(
        True, description="keep per-article model results (spaCy parses, sentence vectors, "
        "mention sentiment) in <data_dir>/cache, shared by every process on this data dir "
        "and kept across restarts: an analysis of already-seen articles skips the models "
        "(derived data: safe to delete; up to ~0.5 GB)",
    )
    parse_cache_size: int = Field(
        2048, ge=0,
        description="spaCy parses of articles kept for actors and statements (~70 kB each)",
    )

    # -- story clustering (index/stories.py; defaults = ClusterParams, tuned on AllSides train) --
    cluster_window_hours: float = Field(
        36.0, gt=0, description="a story's articles lie within this many hours of each other"
    )
    cluster_join_threshold: float = Field(0.5, description="online: min score to join a story")
    cluster_refine_threshold: float = Field(
        -1.0, description="refine: min average pair logit to keep articles in one story"
    )
    cluster_refine_every: int = Field(
        1000, ge=0, description="refine after this many newly assigned articles (0 = on demand)"
    )

    def cluster_params(self) -> Any:
        """The clusterer's :class:`ClusterParams` with these settings applied."""
        from dataclasses import replace

        from storyline.index.stories import ClusterParams

        return replace(
            ClusterParams(), window_hours=self.cluster_window_hours,
            join_threshold=self.cluster_join_threshold,
            refine_threshold=self.cluster_refine_threshold,
            refine_every=self.cluster_refine_every,
        )
    # -- end of story clustering ---------------------------------------------------------

    # -- limits --------------------------------------------------------------------
    max_article_chars: int = Field(200_000, ge=100, description="longer texts are refused")
    max_articles_per_request: int = Field(256, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_k: int = Field(100, ge=1)
    max_page_size: int = Field(100, ge=1)

    # -- HTTP ----------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_keys_sha256: list[str] = Field(
        default_factory=list, description="sha256 hex digests of accepted API keys"
    )
    read_requires_key: bool = False
    rate_limit_per_minute: int = Field(600, ge=1)
    cors_origins: list[str] = Field(default_factory=list)
    forwarded_allow_ips: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="`storyline serve`: peers (addresses or CIDR networks, or '*') whose"
        " X-Forwarded-For / X-Forwarded-Proto are believed; the client address the rate"
        " limit and the logs use comes from them",
    )

    @field_validator("data_dir", "models_path", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        # `STORYLINE_MODELS_DIR=` (compose's `${VAR:-}`, a blanked .env line) read as
        # Path(""), i.e. the working directory: models were looked for, and built, there.
        if isinstance(value, str) and not value.strip() and info.field_name:
            return cls.model_fields[info.field_name].default
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        # uvicorn silently keeps an entry it cannot parse as a literal host name, so a
        # typo here would put every client behind the proxy in one rate-limit bucket.
        if "*" in value and value != ["*"]:
            raise ValueError("'*' trusts every peer and must stand alone")
        for entry in value:
            if entry == "*":
                continue
            try:  # as uvicorn reads them: a network is strict (no host bits set)
                ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or a CIDR network like 10.0.0.0/8"
                ) from None
        return value

    log_level: str = "INFO"

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper() or "INFO"  # blank (compose's `${VAR:-}`): the default
        if level not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return level

    @property
    def models_dir(self) -> Path:
        return self.models_path or self.data_dir / "models"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "storyline.db"

    @property
    def index_path(self) -> Path:
        return self.data_dir / "vectors.faiss"
