"""The Store protocol and its embedded SQLite implementation.

SQLite in WAL mode with ``synchronous=FULL``: an acknowledged write survives a crash.
Every public write method is one transaction: a batch goes in whole or not at all.
Vectors are stored beside the articles (float32 BLOBs) so the FAISS index can always be
rebuilt from the database, which is the source of truth.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from storyline.index.types import (
    ArticleBrief,
    Change,
    IngestResult,
    QueryContext,
    Story,
    StoryHistory,
)
from storyline.models.errors import (
    ConflictError,
    InvalidArticle,
    InvalidInput,
    NotFound,
    StoreError,
)
from storyline.models.types import Article

__all__ = ["IngestItem", "SQLiteStore", "Store", "StoriesChanged"]

#: 2: ``changes.story_id`` (the story a deleted article left); 3: a duplicate's own title,
#: text, lang, lean and story id (``duplicates.title`` .. ``own_meta``); 4: the indexes of
#: filtered listings (``_ADDED_INDEXES``); 5: ``articles.source_key``, the source's
#: ``str.casefold()``, so that a source filter is one index range for any source.
#: ``_migrate`` brings an older file to it (old duplicate rows keep NULL: "as the stored
#: article"; old articles get their key)
SCHEMA_VERSION = 5

#: columns added since version 1, with their type: (table, column, type)
_ADDED_COLUMNS: Final = (
    ("changes", "story_id", "TEXT"),
    ("duplicates", "title", "TEXT"),
    ("duplicates", "text", "TEXT"),
    ("duplicates", "lang", "TEXT"),
    ("duplicates", "lean", "TEXT"),
    ("duplicates", "gold_story_id", "TEXT"),
    ("duplicates", "own_meta", "INTEGER"),
    ("articles", "source_key", "TEXT"),
)

#: a row whose source has no key: written by a version before 5, which still works on
#: the file (see ``_migrate``); ``matching_ids`` lets Python's casefold decide it. The
#: planner uses the partial index ``articles_source_unkeyed`` only for a query that
#: spells this condition.
_UNKEYED: Final = "source_key IS NULL AND source IS NOT NULL"

#: indexes added since version 3: (name, what it indexes). ``(source_key, published_ts,
#: id)``: a source filter, ASCII or not, is one covering index range (version 4 compared
#: ``lower(source)`` and read every source outside ASCII in the window as a candidate).
#: ``(published_ts, id)``: a time window's ids from a covering index; it replaces the
#: old ``articles_published``.
_ADDED_INDEXES: Final = (
    # (not the rows without a source: a filter never lists them, and the unkeyed part of
    # a filter, ``source_key IS NULL``, must not be read from here)
    ("articles_source_key",
     "articles(source_key, published_ts, id) WHERE source_key IS NOT NULL"),
    # (usually empty; covering, so that listing it reads no article row: source_key too,
    # as SQLite before 3.41 covers with an index only the columns it holds)
    ("articles_source_unkeyed",
     f"articles(published_ts, id, source, source_key) WHERE {_UNKEYED}"),
    ("articles_published_id", "articles(published_ts, id)"),
)
#: indexes of older versions that nothing here reads, dropped by the upgrade
_DROPPED_INDEXES: Final = ("articles_published", "articles_source", "articles_source_non_ascii")

#: An older version keeps working on an upgraded file, and its updates of ``source`` do
#: not know the key: this clears a key such an update left behind, so the row becomes
#: unkeyed rather than listed under its old source. Kept: an unchanged key that is the
#: new source's ASCII lowering (``lower()``), which then is its casefold too (casefold
#: is per character and idempotent). This version writes the key itself and restores it
#: after the rare change the trigger cannot tell from an old one (``_rekey``).
_KEY_TRIGGER: Final = (
    "articles_source_key_stale",
    "CREATE TRIGGER articles_source_key_stale AFTER UPDATE OF source ON articles"
    " WHEN NEW.source IS NOT OLD.source AND NEW.source_key IS OLD.source_key"
    " AND NEW.source_key IS NOT lower(NEW.source)"
    " BEGIN UPDATE articles SET source_key = NULL WHERE id = NEW.id; END",
)

#: rows keyed per statement while an upgrade fills in ``source_key``
_KEY_BATCH: Final = 5000


def _source_key(source: str | None) -> str | None:
    """What ``source_key`` holds for ``source``: what a source filter compares."""
    return None if source is None else source.casefold()


def _ascii_lower(s: str) -> str:
    return s.translate(_ASCII_LOWER)


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _kept_by_trigger(source: str | None) -> bool:
    """Whether the stale-key trigger leaves this source's key alone when an update keeps
    the key: when its key is its ASCII lowering (see ``_KEY_TRIGGER``)."""
    return source is None or source.casefold() == _ascii_lower(source)


def _missing_columns(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    have: dict[str, set[str]] = {}
    for table, _, _ in _ADDED_COLUMNS:
        if table not in have:
            have[table] = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
    return [c for c in _ADDED_COLUMNS if c[1] not in have[c[0]]]


def _missing_indexes(db: sqlite3.Connection) -> list[tuple[str, str]]:
    have = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    return [i for i in _ADDED_INDEXES if i[0] not in have]


def _has_key_trigger(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                      (_KEY_TRIGGER[0],)).fetchone() is not None


def _key_unkeyed(db: sqlite3.Connection) -> None:
    """Give every unkeyed row its key, a batch at a time (inside the caller's
    transaction)."""
    last = 0
    while True:
        # in rowid order: each batch goes on where the last stopped (before the partial
        # index exists, starting over would read the keyed rows again each time)
        rows = db.execute(
            f"SELECT rowid, source FROM articles WHERE rowid > ? AND {_UNKEYED}"
            " ORDER BY rowid LIMIT ?", (last, _KEY_BATCH)).fetchall()
        if not rows:
            return
        db.executemany("UPDATE articles SET source_key = ? WHERE rowid = ?",
                       [(_source_key(src), rid) for rid, src in rows])
        last = rows[-1][0]


class StoriesChanged(ConflictError):
    """Another process wrote story records since this one loaded them (see
    ``Store.claim_stories_generation``): reload them before writing."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS articles (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL,
    source TEXT,
    url TEXT,
    published_at TEXT,
    published_ts REAL,
    lang TEXT,
    lean TEXT,
    gold_story_id TEXT,
    content_hash TEXT NOT NULL,
    entities TEXT NOT NULL DEFAULT '[]',
    ingested_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    -- source.casefold() (see _UNKEYED)
    source_key TEXT
);
CREATE INDEX IF NOT EXISTS articles_hash ON articles(content_hash);
CREATE TABLE IF NOT EXISTS duplicates (
    id TEXT PRIMARY KEY,
    canonical_id TEXT NOT NULL REFERENCES articles(id) ON DELETE CASCADE,
    source TEXT,
    url TEXT,
    published_at TEXT,
    recorded_at TEXT NOT NULL,
    -- what the duplicate was sent with, should it become a stored article: its title and
    -- text where they differ (in case or spacing) from its stored article's, else NULL;
    -- lang, lean and story id are its own where own_meta = 1 (NULL in a row an older
    -- version wrote: as the stored article)
    title TEXT,
    text TEXT,
    lang TEXT,
    lean TEXT,
    gold_story_id TEXT,
    own_meta INTEGER
);
CREATE INDEX IF NOT EXISTS duplicates_canonical ON duplicates(canonical_id);
CREATE TABLE IF NOT EXISTS embeddings (
    article_id TEXT PRIMARY KEY REFERENCES articles(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    article_id TEXT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    at TEXT NOT NULL,
    story_id TEXT
);
CREATE INDEX IF NOT EXISTS changes_deleted ON changes(article_id) WHERE op = 'delete';
CREATE TABLE IF NOT EXISTS stories (
    id TEXT PRIMARY KEY,
    label TEXT NOT NULL DEFAULT '',
    first_at TEXT,
    last_at TEXT,
    first_ts REAL,
    last_ts REAL,
    outlets TEXT NOT NULL DEFAULT '{}',
    centroid BLOB,
    content_hash TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'active',
    extra TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS stories_last ON stories(last_ts);
CREATE TABLE IF NOT EXISTS story_members (
    article_id TEXT PRIMARY KEY REFERENCES articles(id) ON DELETE CASCADE,
    story_id TEXT NOT NULL REFERENCES stories(id)
);
CREATE INDEX IF NOT EXISTS story_members_story ON story_members(story_id);
CREATE TABLE IF NOT EXISTS story_history (
    old_id TEXT NOT NULL,
    new_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (old_id, new_id)
);
CREATE TABLE IF NOT EXISTS story_outputs (
    story_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (story_id, kind)
);
CREATE TABLE IF NOT EXISTS digests (
    date TEXT NOT NULL,
    format TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (date, format)
);
"""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat() if dt else None


def _ts(dt: datetime | None) -> float | None:
    return dt.timestamp() if dt else None


_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode


def _parse(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s) if s else None


def _instant(s: str) -> float:
    """A stored ISO time as a Unix time (one without an offset is UTC, as stored)."""
    dt = datetime.fromisoformat(s)
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _vec(blob: bytes | None) -> npt.NDArray[np.float32] | None:
    return None if blob is None else np.frombuffer(blob, dtype=np.float32).copy()


@dataclass(frozen=True, slots=True)
class IngestItem:
    """An article ready to store: its vector and named entities already computed."""

    article: Article
    vector: npt.NDArray[np.float32]
    entities: tuple[str, ...] = ()


class Store(Protocol):
    """What the rest of the product needs from storage: :class:`SQLiteStore` (embedded)
    and :class:`storyline.index.pg.PostgresStore` (shared by replicas) both provide it.

    ``transaction()`` yields the backend's connection, which ``save_story`` and
    ``record_history`` accept as ``db`` to write inside that transaction.
    """

    def transaction(self) -> AbstractContextManager[Any]: ...
    def existing_hashes(self, ids: Sequence[str]) -> dict[str, str]: ...
    def ids_for_hashes(self, hashes: Sequence[str]) -> dict[str, str]: ...
    def ingest(
        self, items: Sequence[IngestItem], model: str, *, promoted: list[str] | None = None
    ) -> list[IngestResult]: ...
    def get_article(self, article_id: str) -> Article: ...
    def get_articles(self, ids: Sequence[str]) -> list[Article]: ...
    def briefs(self, ids: Sequence[str]) -> dict[str, ArticleBrief]: ...
    def iter_articles(self, batch: int = 1000) -> Iterator[Article]: ...
    def articles_between(self, since: datetime | None, until: datetime | None) -> list[str]: ...
    def matching_ids(
        self, since: datetime | None, until: datetime | None, source: str | None, limit: int
    ) -> list[str]: ...
    def delete_article(self, article_id: str) -> list[str]: ...
    def count_articles(self) -> int: ...
    def count_duplicates(self) -> int: ...
    def article_ids(self) -> list[str]: ...
    def duplicates_of(self, article_id: str) -> list[str]: ...
    def canonical_id(self, article_id: str) -> str | None: ...
    def query_context(
        self, article_id: str, briefs_of: Sequence[str] = ()
    ) -> QueryContext | None: ...
    def embeddings(
        self, ids: Sequence[str] | None = None
    ) -> tuple[list[str], npt.NDArray[np.float32]]: ...
    def entities(self, ids: Sequence[str]) -> dict[str, tuple[str, ...]]: ...
    def published_ts(self, ids: Sequence[str]) -> dict[str, float | None]: ...
    def ingested_ts(self, ids: Sequence[str]) -> dict[str, float]: ...
    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]: ...
    def deleted_story_of(self, article_ids: Sequence[str]) -> dict[str, str]: ...
    def last_seq(self) -> int: ...
    def stories_generation(self) -> int: ...
    def claim_stories_generation(self, expected: int, db: Any) -> int: ...
    def save_story(self, story: Story, db: Any = None) -> None: ...
    def get_story(self, story_id: str) -> Story: ...
    def list_stories(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        min_size: int = 1,
        limit: int = 1000,
        offset: int = 0,
        status: str = "active",
    ) -> list[Story]: ...
    def count_stories(self, status: str = "active") -> int: ...
    def story_of(self, article_ids: Sequence[str]) -> dict[str, str]: ...
    def record_history(self, old_id: str, new_id: str, kind: str, db: Any = None) -> None: ...
    def story_history(self, story_id: str) -> list[StoryHistory]: ...
    def resolve_story(self, story_id: str) -> list[str]: ...
    def put_output(
        self, story_id: str, kind: str, content_hash: str, payload: str, *,
        members: str | None = None,
    ) -> bool: ...
    def get_output(self, story_id: str, kind: str) -> tuple[str, str] | None: ...
    def put_digests(self, date: str, bodies: dict[str, str]) -> None: ...
    def delete_digest(self, date: str) -> bool: ...
    def get_digest(self, date: str, fmt: str) -> str: ...
    def digest_dates(self) -> list[str]: ...
    def close(self) -> None: ...


class SQLiteStore:
    """Embedded store: one SQLite database file in WAL mode.

    ``clock`` gives the store's wall-clock time (aware, any zone): when articles were
    ingested (``ingested_at``, which the story clusterer uses as the time of an undated
    article), records were written and changes made. Tests pass their own.
    """

    def __init__(
        self, path: Path, *, timeout_s: float = 30.0, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self.path = path
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                str(path), timeout=timeout_s, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database {path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        self._timeout_s = timeout_s
        # Writes: one connection shared by threads (sqlite3 objects are not safe to use
        # concurrently), every transaction holding this lock. Reads: one read-only
        # connection per thread, so under WAL a lookup never waits for a write
        # transaction or its fsync, nor for another thread's read.
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        # an in-memory database exists only on its one connection
        self._one_connection = str(path) == ":memory:"
        # (a file that is no database, or a locked or read-only one, fails here: a
        # StoreError as PostgresStore's, not a raw sqlite3 error)
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._db.executescript(_SCHEMA)
                self._migrate()
                # Outputs of stories retired before their retirement dropped them (older
                # versions kept them for good); nothing reads a retired story's outputs.
                self._db.execute(_PRUNE_RETIRED_OUTPUTS)
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot open the database {path}: {exc}") from exc

    def _migrate(self) -> None:
        """Bring a file an older version wrote to ``SCHEMA_VERSION`` (``_SCHEMA`` creates a
        new one at it). One transaction under the write lock that looks before it changes
        anything, so processes opening an old file together migrate it once; an older
        version keeps working on the migrated file (the new columns are nullable, SQLite
        keeps the new indexes up to date under any version's writes, and its articles are
        unkeyed: see ``_UNKEYED`` and ``_KEY_TRIGGER``). The next open of this version
        keys the rows it wrote."""
        db = self._db
        if (not _missing_columns(db) and not _missing_indexes(db) and _has_key_trigger(db)
                # rows an older version wrote since (read from articles_source_unkeyed)
                and db.execute(f"SELECT 1 FROM articles WHERE {_UNKEYED} LIMIT 1").fetchone()
                is None):
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            for table, column, kind in _missing_columns(db):
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            # before the indexes: one write per row now, not one per row and index. In
            # the same transaction as the rest: an upgrade cut short leaves the file as
            # it was, and the next open does it all again.
            _key_unkeyed(db)
            missing = _missing_indexes(db)
            for name, what in missing:
                db.execute(f"CREATE INDEX {name} ON {what}")
            if missing:
                # Only with the upgrade: an older version that opens the file again may
                # recreate them (harmless, it keeps them up to date); each open of this
                # version dropping them again would only cost that version's next open.
                for name in _DROPPED_INDEXES:
                    db.execute(f"DROP INDEX IF EXISTS {name}")
            if not _has_key_trigger(db):
                db.execute(_KEY_TRIGGER[1])
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?)"
                " ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(SCHEMA_VERSION),))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- plumbing ---------------------------------------------------------------
    def _now(self) -> str:
        return self._clock().astimezone(UTC).isoformat()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"database unavailable: {exc}") from exc
            self._local.in_tx = getattr(self._local, "in_tx", 0) + 1
            try:
                yield self._db
            except sqlite3.Error as exc:
                # a failed statement (a constraint, a full disk) is a StoreError, as
                # PostgresStore's are; SQLite may have rolled back already
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"query failed: {exc}") from exc
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            else:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._db.execute("ROLLBACK")
                    raise StoreError(f"commit failed: {exc}") from exc
            finally:
                self._local.in_tx -= 1

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "reader", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), timeout=self._timeout_s,
                                   check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA query_only=ON")
            with self._readers_lock:
                if self._closed:
                    conn.close()
                    raise StoreError("the store is closed")
                self._readers.append(conn)
            self._local.reader = conn
        return conn

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        in_tx: int = getattr(self._local, "in_tx", 0)
        try:
            if self._one_connection or in_tx:
                # (or inside this thread's own transaction: read its uncommitted writes)
                with self._lock:
                    return self._db.execute(sql, params).fetchall()
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc

    def _packed(self, columns: str, rest: str, params: Sequence[Any] = ()) -> list[list[Any]]:
        """``SELECT <columns> <rest>`` as lists, fetched as one JSON array in one row.

        sqlite3 lets go of the GIL around every step, one step per row, and must win it
        back after each. Beside a busy event loop every win can wait a whole switch
        interval: 60 rows took 83 ms at p50 next to a busy thread, against 2.5 ms for the
        same rows packed into one (0.14 / 0.12 ms with nothing else running). Blobs must
        come as ``hex(col)``; JSON cannot hold them. Row order is not guaranteed.
        """
        rows = self._query(f"SELECT json_group_array(json_array({columns})) AS j {rest}", params)
        # msgspec: the stdlib decoder was 3 % of the API's interpreter time under load
        out: list[list[Any]] = _json_decode(rows[0]["j"]) if rows else []
        return out

    def close(self) -> None:
        with self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        with self._lock:
            self._db.close()

    # -- articles ---------------------------------------------------------------
    def existing_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(_storable_ids(ids)):
            rows = self._query(
                f"SELECT id, content_hash FROM articles WHERE id IN ({_qs(chunk)})", chunk
            )
            out.update({r["id"]: r["content_hash"] for r in rows})
        return out

    def ids_for_hashes(self, hashes: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(_storable_ids(list(set(hashes)))):
            rows = self._query(
                f"SELECT content_hash, MIN(id) AS id FROM articles "
                f"WHERE content_hash IN ({_qs(chunk)}) GROUP BY content_hash",
                chunk,
            )
            out.update({r["content_hash"]: r["id"] for r in rows})
        return out

    def ingest(
        self, items: Sequence[IngestItem], model: str, *, promoted: list[str] | None = None
    ) -> list[IngestResult]:
        """Insert or update a batch in one transaction.

        Same id and the same fields: ``unchanged`` (nothing is written). Same id, new
        content: ``updated``. Same id and content hash but other metadata (source, url,
        published_at, lang, lean, story_id, or title/text differing only in case or
        spacing): ``updated`` too, the row takes the new fields and keeps its stored
        vector and entities (``item.vector`` is not used), and the stored outputs of its
        story are dropped (their keys cover content, not metadata). New id whose content
        hash matches another stored article: ``duplicate`` (recorded in ``duplicates``
        with its own fields, not stored twice; a re-sent duplicate's fields replace the
        record's). An update first hands the old content to the article's duplicates
        (see ``_promote_duplicates``); the ids that became stored articles that way are
        appended to ``promoted``.
        """
        _check_items(items, model)
        results: list[IngestResult] = []
        now = self._now()
        with self.transaction() as db:
            for item in items:
                a = item.article
                h = a.content_hash
                row = db.execute(
                    f"SELECT content_hash, {_ARTICLE_COLUMNS} FROM articles WHERE id=?", (a.id,)
                ).fetchone()
                if row is not None and row["content_hash"] == h:
                    if _article_of(tuple(row)[1:]) == a:  # every field (times by instant)
                        results.append(IngestResult(a.id, "unchanged"))
                        continue
                    self._update_metadata(db, a, now)
                    results.append(IngestResult(a.id, "updated"))
                    continue
                if row is None:
                    dup = db.execute(
                        "SELECT id, title, text FROM articles WHERE content_hash=?"
                        " ORDER BY id LIMIT 1", (h,)
                    ).fetchone()
                    if dup is not None:
                        rec = (
                            a.source, a.url, _iso(a.published_at),
                            None if a.title == dup["title"] else a.title,
                            None if a.text == dup["text"] else a.text,
                            a.lang, a.lean, a.story_id,
                        )
                        same = db.execute(
                            "SELECT 1 FROM duplicates WHERE id=? AND canonical_id=?"
                            " AND source IS ? AND url IS ? AND published_at IS ? AND title IS ?"
                            " AND text IS ? AND lang IS ? AND lean IS ? AND gold_story_id IS ?"
                            " AND own_meta = 1",
                            (a.id, dup["id"], *rec),
                        ).fetchone()
                        if same is not None:  # re-sent as it was recorded: nothing to write
                            results.append(
                                IngestResult(a.id, "duplicate", duplicate_of=dup["id"]))
                            continue
                        # a re-sent duplicate keeps the time it was first recorded (its
                        # ingest time, should it become a stored article)
                        db.execute(
                            "INSERT INTO duplicates(id, canonical_id, source, url,"
                            " published_at, title, text, lang, lean, gold_story_id, own_meta,"
                            " recorded_at) VALUES (?,?,?,?,?,?,?,?,?,?,1,?)"
                            " ON CONFLICT(id) DO UPDATE SET canonical_id=excluded.canonical_id,"
                            " source=excluded.source, url=excluded.url,"
                            " published_at=excluded.published_at, title=excluded.title,"
                            " text=excluded.text, lang=excluded.lang, lean=excluded.lean,"
                            " gold_story_id=excluded.gold_story_id, own_meta=1",
                            (a.id, dup["id"], *rec, now),
                        )
                        results.append(IngestResult(a.id, "duplicate", duplicate_of=dup["id"]))
                        continue
                vec = np.ascontiguousarray(item.vector, dtype=np.float32)
                if vec.ndim != 1 or not np.all(np.isfinite(vec)):
                    raise InvalidArticle("embedding is not a finite 1-d vector", field="vector")
                if row is None:  # stored under its own id now: no longer a duplicate
                    db.execute("DELETE FROM duplicates WHERE id=?", (a.id,))
                else:
                    _drop_outputs_of(db, a.id)
                    new = self._promote_duplicates(db, a.id, now)
                    if promoted is not None:
                        promoted.extend(new)
                values = (
                    a.title, a.text, a.source, _source_key(a.source), a.url,
                    _iso(a.published_at), _ts(a.published_at), a.lang, a.lean, a.story_id, h,
                    json.dumps(list(item.entities)), now,
                )
                if row is None:
                    db.execute(
                        "INSERT INTO articles(title, text, source, source_key, url, published_at,"
                        " published_ts, lang, lean, gold_story_id, content_hash, entities,"
                        " updated_at, ingested_at, id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (*values, now, a.id),
                    )
                    outcome: str = "inserted"
                else:
                    db.execute(
                        "UPDATE articles SET title=?, text=?, source=?, source_key=?, url=?,"
                        " published_at=?, published_ts=?, lang=?, lean=?, gold_story_id=?,"
                        " content_hash=?, entities=?, updated_at=? WHERE id=?",
                        (*values, a.id),
                    )
                    _rekey(db, a.id, a.source)
                    outcome = "updated"
                db.execute(
                    "INSERT OR REPLACE INTO embeddings(article_id, model, vector) VALUES (?,?,?)",
                    (a.id, model, vec.tobytes()),
                )
                db.execute(
                    "INSERT INTO changes(article_id, op, at) VALUES (?, 'upsert', ?)", (a.id, now)
                )
                results.append(IngestResult(a.id, outcome))  # type: ignore[arg-type]
        return results

    def get_article(self, article_id: str) -> Article:
        arts = self.get_articles([article_id])
        if not arts:
            raise NotFound(f"article '{_shown(article_id)}' not found")
        return arts[0]

    def get_articles(self, ids: Sequence[str]) -> list[Article]:
        """Articles in the order of ``ids``; unknown ids are skipped."""
        found: dict[str, Article] = {}
        for chunk in _chunks(_storable_ids(ids)):
            for r in self._packed(_ARTICLE_COLUMNS, f"FROM articles WHERE id IN ({_qs(chunk)})",
                                  chunk):
                found[r[0]] = _article_of(r)
        return [found[i] for i in ids if i in found]

    def briefs(self, ids: Sequence[str]) -> dict[str, ArticleBrief]:
        """Title, source, time and story of each known id (unknown ids are left out)."""
        out: dict[str, ArticleBrief] = {}
        for chunk in _chunks(_storable_ids(ids)):
            for r in self._packed(
                "a.id, a.title, a.source, a.published_at, m.story_id",
                "FROM articles a LEFT JOIN story_members m ON m.article_id = a.id"
                f" WHERE a.id IN ({_qs(chunk)})",
                chunk,
            ):
                out[r[0]] = _brief_of(r)
        return out

    def iter_articles(self, batch: int = 1000) -> Iterator[Article]:
        _at_least("batch", batch, 1)  # (0 read nothing, and said nothing of it)
        last = ""
        while True:
            rows = self._query(
                f"SELECT {_ARTICLE_COLUMNS} FROM articles WHERE id > ? ORDER BY id LIMIT ?",
                (last, batch),
            )
            if not rows:
                return
            yield from (_article_of(r) for r in rows)
            last = rows[-1]["id"]

    def articles_between(self, since: datetime | None, until: datetime | None) -> list[str]:
        lo = since.timestamp() if since else float("-inf")
        hi = until.timestamp() if until else float("inf")
        rows = self._query(
            "SELECT id FROM articles WHERE published_ts >= ? AND published_ts < ?"
            " ORDER BY published_ts, id",
            (lo, hi),
        )
        return [r["id"] for r in rows]

    def matching_ids(
        self, since: datetime | None, until: datetime | None, source: str | None, limit: int
    ) -> list[str]:
        """At most ``limit`` ids (no order) published in ``[since, until)`` (undated ones
        only when neither bound is set) whose source is ``source`` ignoring case (any
        source when None): the candidates of a filtered search."""
        _at_least("limit", limit)
        if source is not None and not _storable(source):
            return []
        where: list[str] = ["1"]
        params: list[Any] = []
        if since is not None:
            where.append("published_ts >= ?")
            params.append(since.timestamp())
        if until is not None:
            where.append("published_ts < ?")
            params.append(until.timestamp())
        window = " AND ".join(where)
        # read as one JSON row (``_packed``): up to 20,001 ids
        if source is None:
            # (a time window is read from the covering index articles_published_id)
            rows = self._packed("id", f"FROM (SELECT id FROM articles WHERE {window} LIMIT ?)",
                                [*params, limit])
            return [r[0] for r in rows]
        # Two disjoint parts, each read from its index (an OR of the two would scan the
        # table): the rows whose stored key is the filter's, exact for any source; and
        # the unkeyed rows an older version wrote (usually none), which Python decides.
        key = source.casefold()
        out: list[str] = []
        for i, src in self._packed(
            "id, src",
            f"FROM (SELECT * FROM (SELECT id, NULL AS src FROM articles WHERE {window}"
            " AND source_key = ? LIMIT ?) UNION ALL SELECT id, source AS src FROM articles"
            f" WHERE {window} AND {_UNKEYED})",
            [*params, key, limit, *params],
        ):
            if len(out) >= limit:
                break
            if src is None or src.casefold() == key:
                out.append(i)
        return out

    def _update_metadata(self, db: sqlite3.Connection, a: Article, now: str) -> None:
        """A stored article re-sent with the same content hash and other fields: they
        replace the stored ones; vector and entities stay (the text they come from did
        not change), and so do its duplicates (same content). The outputs stored for its
        story are dropped: their keys cover content, and portrayal by outlet and lean,
        the order in time and the quotes depend on these fields too. The change feed
        records an upsert, so replicas and the story clusterer pick it up."""
        # a duplicate recorded with the old title or text (NULL) keeps it
        db.execute(
            "UPDATE duplicates SET"
            " title=NULLIF(COALESCE(title, (SELECT title FROM articles WHERE id=?)), ?),"
            " text=NULLIF(COALESCE(text, (SELECT text FROM articles WHERE id=?)), ?)"
            " WHERE canonical_id=? AND own_meta = 1",
            (a.id, a.title, a.id, a.text, a.id),
        )
        db.execute(
            "UPDATE articles SET title=?, text=?, source=?, source_key=?, url=?, published_at=?,"
            " published_ts=?, lang=?, lean=?, gold_story_id=?, updated_at=? WHERE id=?",
            (a.title, a.text, a.source, _source_key(a.source), a.url, _iso(a.published_at),
             _ts(a.published_at), a.lang, a.lean, a.story_id, now, a.id),
        )
        _rekey(db, a.id, a.source)
        _drop_outputs_of(db, a.id)
        db.execute("INSERT INTO changes(article_id, op, at) VALUES (?, 'upsert', ?)", (a.id, now))

    def _promote_duplicates(self, db: sqlite3.Connection, article_id: str, now: str) -> list[str]:
        """Before stored article ``article_id`` changes content or goes: its duplicates
        keep the content they were acknowledged with. The first by id becomes a stored
        article (this content's embedding and entities; its own title, text, source, url,
        publication time, lang, lean and story id), the rest become its duplicates.
        Returns the promoted id (or nothing)."""
        d = db.execute(
            "SELECT * FROM duplicates WHERE canonical_id=? ORDER BY id LIMIT 1", (article_id,),
        ).fetchone()
        if d is None:
            return []
        c = db.execute(
            "SELECT title, text, lang, lean, gold_story_id FROM articles WHERE id=?",
            (article_id,),
        ).fetchone()
        mine = d if d["own_meta"] == 1 else c  # a row an older version wrote: as the stored
        title = c["title"] if d["title"] is None else d["title"]
        text = c["text"] if d["text"] is None else d["text"]
        db.execute(
            "INSERT INTO articles(id, title, text, source, source_key, url, published_at,"
            " published_ts, lang, lean, gold_story_id, content_hash, entities, ingested_at,"
            " updated_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, content_hash, entities, ?, ?"
            " FROM articles WHERE id=?",
            (d["id"], title, text, d["source"], _source_key(d["source"]), d["url"],
             d["published_at"],
             _ts(_parse(d["published_at"])), mine["lang"], mine["lean"], mine["gold_story_id"],
             d["recorded_at"], now, article_id),
        )
        db.execute(
            "INSERT OR REPLACE INTO embeddings(article_id, model, vector)"
            " SELECT ?, model, vector FROM embeddings WHERE article_id=?", (d["id"], article_id),
        )
        db.execute("DELETE FROM duplicates WHERE id=?", (d["id"],))
        # The rest move to the promoted article: what they have "as the stored article"
        # (NULL) is this one's, which is going, so it is written out.
        db.execute(
            "UPDATE duplicates SET canonical_id=?, title=NULLIF(COALESCE(title, ?), ?),"
            " text=NULLIF(COALESCE(text, ?), ?),"
            " lang=CASE WHEN own_meta = 1 THEN lang ELSE ? END,"
            " lean=CASE WHEN own_meta = 1 THEN lean ELSE ? END,"
            " gold_story_id=CASE WHEN own_meta = 1 THEN gold_story_id ELSE ? END, own_meta=1"
            " WHERE canonical_id=?",
            (d["id"], c["title"], title, c["text"], text, c["lang"], c["lean"],
             c["gold_story_id"], article_id),
        )
        db.execute(
            "INSERT INTO changes(article_id, op, at) VALUES (?, 'upsert', ?)", (d["id"], now)
        )
        return [d["id"]]

    def delete_article(self, article_id: str) -> list[str]:
        """Delete a stored article, or the duplicate record of a duplicate id.

        A stored article's duplicates keep its content (see ``_promote_duplicates``);
        returns the ids that became stored articles that way."""
        if not _storable(article_id):
            raise NotFound(f"article '{_shown(article_id)}' not found")
        now = self._now()
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM articles WHERE id=?", (article_id,)).fetchone() is None:
                cur = db.execute("DELETE FROM duplicates WHERE id=?", (article_id,))
                if cur.rowcount == 0:
                    raise NotFound(f"article '{_shown(article_id)}' not found")
                return []
            # the membership goes with the article: the feed keeps its story for replicas
            # whose clusterer never knew the article (``deleted_story_of``)
            member = db.execute(
                "SELECT story_id FROM story_members WHERE article_id=?", (article_id,)
            ).fetchone()
            _drop_outputs_of(db, article_id)
            promoted = self._promote_duplicates(db, article_id, now)
            db.execute("DELETE FROM articles WHERE id=?", (article_id,))
            db.execute(
                "INSERT INTO changes(article_id, op, at, story_id) VALUES (?, 'delete', ?, ?)",
                (article_id, now, member[0] if member else None),
            )
        return promoted

    def count_articles(self) -> int:
        return int(self._query("SELECT COUNT(*) AS n FROM articles")[0]["n"])

    def count_duplicates(self) -> int:
        return int(self._query("SELECT COUNT(*) AS n FROM duplicates")[0]["n"])

    def article_ids(self) -> list[str]:
        return [r["id"] for r in self._query("SELECT id FROM articles ORDER BY id")]

    def duplicates_of(self, article_id: str) -> list[str]:
        if not _storable(article_id):
            return []
        rows = self._query(
            "SELECT id FROM duplicates WHERE canonical_id=? ORDER BY id", (article_id,)
        )
        return [r["id"] for r in rows]

    def canonical_id(self, article_id: str) -> str | None:
        """The stored article id for ``article_id``, following duplicate records."""
        if not _storable(article_id):
            return None
        if self._query("SELECT 1 FROM articles WHERE id=?", (article_id,)):
            return article_id
        rows = self._query("SELECT canonical_id FROM duplicates WHERE id=?", (article_id,))
        return rows[0]["canonical_id"] if rows else None

    def query_context(
        self, article_id: str, briefs_of: Sequence[str] = ()
    ) -> QueryContext | None:
        """One statement for what ``related`` needs of its query article and of its
        candidates ``briefs_of`` (see ``_packed`` for why the number of statements
        matters); None when the id is unknown."""
        if not _storable(article_id):
            return None
        # (json_each reads a string up to a NUL: "b\x00" would have found "b")
        briefs_of = _storable_ids(briefs_of)
        rows = self._query(
            "SELECT json_array(a.id, a.title, a.source, a.published_at, m.story_id,"
            " hex(e.vector),"
            " json((SELECT json_group_array(d.id) FROM duplicates d"
            "       WHERE d.canonical_id = a.id)),"
            " json((SELECT json_group_array(json_array(sm.article_id, sa.published_ts))"
            "       FROM story_members sm JOIN articles sa ON sa.id = sm.article_id"
            "       WHERE sm.story_id = m.story_id)),"
            # the candidates' briefs by the json_each of one parameter: any number of ids
            " json((SELECT json_group_array(json_array(b.id, b.title, b.source,"
            "                                          b.published_at, bm.story_id))"
            "       FROM articles b LEFT JOIN story_members bm ON bm.article_id = b.id"
            "       WHERE b.id IN (SELECT value FROM json_each(?)"
            "                      UNION SELECT article_id FROM story_members"
            "                      WHERE story_id = m.story_id)))) AS j"
            " FROM articles a LEFT JOIN story_members m ON m.article_id = a.id"
            " LEFT JOIN embeddings e ON e.article_id = a.id"
            " WHERE a.id = COALESCE((SELECT id FROM articles WHERE id = ?),"
            "                       (SELECT canonical_id FROM duplicates WHERE id = ?))",
            (_json_encode(list(briefs_of)).decode(), article_id, article_id),
        )
        if not rows:
            return None
        row = _json_decode(rows[0]["j"])
        brief, (vec, dups, members, briefs) = _brief_of(row[:5]), row[5:]
        if vec is None:
            raise StoreError(f"article '{brief.id}' has no stored embedding")
        return QueryContext(
            brief,
            np.frombuffer(bytes.fromhex(vec), dtype=np.float32).copy(),
            tuple(sorted(dups)),
            tuple(_oldest_first(members)) if brief.story_id is not None else (),
            {b[0]: _brief_of(b) for b in briefs},
        )

    def embeddings(
        self, ids: Sequence[str] | None = None
    ) -> tuple[list[str], npt.NDArray[np.float32]]:
        # Rows, not _packed: hex in JSON made 60 vectors 4x dearer to read (1.9 vs 0.45 ms)
        # and the clusterer reads many; the related path reads its query vector through
        # query_context instead.
        if ids is None:
            rows = self._query("SELECT article_id, vector FROM embeddings ORDER BY article_id")
        else:
            rows = []
            for chunk in _chunks(_storable_ids(ids)):
                rows += self._query(
                    f"SELECT article_id, vector FROM embeddings WHERE article_id IN ({_qs(chunk)})",
                    chunk,
                )
            order = {i: k for k, i in enumerate(ids)}
            rows.sort(key=lambda r: order[r["article_id"]])
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        mat = np.stack([np.frombuffer(r["vector"], dtype=np.float32) for r in rows])
        return [r["article_id"] for r in rows], mat

    def entities(self, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for chunk in _chunks(_storable_ids(ids)):
            for r in self._query(
                f"SELECT id, entities FROM articles WHERE id IN ({_qs(chunk)})", chunk
            ):
                out[r["id"]] = tuple(json.loads(r["entities"]))
        return out

    def published_ts(self, ids: Sequence[str]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for chunk in _chunks(_storable_ids(ids)):
            for r in self._query(
                f"SELECT id, published_ts FROM articles WHERE id IN ({_qs(chunk)})", chunk
            ):
                out[r["id"]] = r["published_ts"]
        return out

    def ingested_ts(self, ids: Sequence[str]) -> dict[str, float]:
        """When each known id was first stored (its ``ingested_at``), as a Unix time: the
        time the story clusterer gives an undated article. An update keeps it; a promoted
        duplicate has the time its duplicate record was made."""
        out: dict[str, float] = {}
        for chunk in _chunks(_storable_ids(ids)):
            for r in self._query(
                f"SELECT id, ingested_at FROM articles WHERE id IN ({_qs(chunk)})", chunk
            ):
                out[r["id"]] = _instant(r["ingested_at"])
        return out

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        rows = self._query(
            "SELECT seq, article_id, op, story_id FROM changes WHERE seq > ? ORDER BY seq"
            " LIMIT ?", (seq, _at_least("limit", limit)),
        )
        return [Change(r["seq"], r["article_id"], r["op"], r["story_id"]) for r in rows]

    def deleted_story_of(self, article_ids: Sequence[str]) -> dict[str, str]:
        """The story each of ``article_ids`` was a member of when it was last deleted, as
        the change feed recorded it (the membership itself went with the article). Left
        out: ids never deleted, deleted from no story, or last deleted by a version that
        did not record it (schema version 1)."""
        last: dict[str, str | None] = {}
        for chunk in _chunks(_storable_ids(article_ids)):
            for r in self._query(
                "SELECT article_id, story_id FROM changes WHERE op = 'delete'"
                f" AND article_id IN ({_qs(chunk)}) ORDER BY seq", chunk,
            ):
                last[r["article_id"]] = r["story_id"]
        return {a: s for a, s in last.items() if s is not None}

    def last_seq(self) -> int:
        rows = self._query("SELECT MAX(seq) AS s FROM changes")
        return int(rows[0]["s"] or 0)

    def stories_generation(self) -> int:
        """How many story writes the store has seen (0 before the first)."""
        rows = self._query("SELECT value FROM meta WHERE key='stories_generation'")
        return int(rows[0]["value"]) if rows else 0

    def claim_stories_generation(self, expected: int, db: sqlite3.Connection) -> int:
        """Inside a story write's transaction: move the generation on from ``expected``,
        or raise :class:`StoriesChanged` if another writer has moved it since (the write
        then rolls back). ``BEGIN IMMEDIATE`` holds the write lock, so read-then-write is
        atomic across processes."""
        row = db.execute("SELECT value FROM meta WHERE key='stories_generation'").fetchone()
        now = int(row[0]) if row else 0
        if now != expected:
            raise StoriesChanged(
                f"stories were changed by another writer (generation {now}, expected"
                f" {expected}); retry")
        db.execute(
            "INSERT INTO meta(key, value) VALUES ('stories_generation', ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(now + 1),))
        return now + 1

    # -- stories ----------------------------------------------------------------
    def save_story(self, story: Story, db: sqlite3.Connection | None = None) -> None:
        """Upsert a story record and its membership (inside ``db``'s transaction if given)."""
        _check_story(story)
        if db is None:
            with self.transaction() as tx:
                self._save_story(tx, story)
        else:
            self._save_story(db, story)

    def _save_story(self, db: sqlite3.Connection, s: Story) -> None:
        now = self._now()
        centroid = None if s.centroid is None else np.asarray(s.centroid, np.float32).tobytes()
        db.execute(
            "INSERT INTO stories(id, label, first_at, last_at, first_ts, last_ts, outlets,"
            " centroid, content_hash, status, extra, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(id) DO UPDATE SET label=excluded.label,"
            " first_at=excluded.first_at, last_at=excluded.last_at, first_ts=excluded.first_ts,"
            " last_ts=excluded.last_ts, outlets=excluded.outlets, centroid=excluded.centroid,"
            " content_hash=excluded.content_hash, status=excluded.status, extra=excluded.extra,"
            " updated_at=excluded.updated_at",
            (
                s.id, s.label, _iso(s.first_at), _iso(s.last_at), _ts(s.first_at), _ts(s.last_at),
                json.dumps(s.outlets, sort_keys=True), centroid, s.content_hash, s.status,
                json.dumps(s.extra, sort_keys=True, default=str), now, now,
            ),
        )
        if s.status == "active":
            try:
                for aid in s.article_ids:
                    db.execute(
                        "INSERT INTO story_members(article_id, story_id) VALUES (?, ?)"
                        " ON CONFLICT(article_id) DO UPDATE SET story_id=excluded.story_id",
                        (aid, s.id),
                    )
            except sqlite3.IntegrityError as exc:
                # a member deleted since (in the change feed) is another writer's change;
                # one never stored stays a failed write (StoreError)
                if db.execute(
                    "SELECT 1 FROM changes WHERE op = 'delete' AND article_id IN"
                    " (SELECT value FROM json_each(?)) LIMIT 1", (json.dumps(s.article_ids),),
                ).fetchone() is None:
                    raise
                raise _member_gone(s, exc) from exc
        else:  # merged, split or deleted: nothing reads its outputs again
            db.execute("DELETE FROM story_outputs WHERE story_id=?", (s.id,))

    def get_story(self, story_id: str) -> Story:
        ok = _storable(story_id)
        rows = self._query(f"{_STORY_SELECT} WHERE s.id=?", (story_id,)) if ok else []
        if not rows:
            raise NotFound(f"story '{_shown(story_id)}' not found")
        return self._story(rows[0])

    def _story(self, r: sqlite3.Row) -> Story:
        """A story from a row of ``_STORY_SELECT`` (its members come in the same row)."""
        members = _oldest_first(_json_decode(r["members"]))
        return Story(
            id=r["id"], label=r["label"], article_ids=members, first_at=_parse(r["first_at"]),
            last_at=_parse(r["last_at"]), outlets=json.loads(r["outlets"]),
            centroid=_vec(r["centroid"]), updated_at=_parse(r["updated_at"]), status=r["status"],
            content_hash=r["content_hash"], extra=json.loads(r["extra"]),
        )

    def list_stories(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        min_size: int = 1,
        limit: int = 1000,
        offset: int = 0,
        status: str = "active",
    ) -> list[Story]:
        # A bound leaves out stories with no dated article (NULL compares false), as
        # articles_between leaves out undated articles; with neither bound they are listed.
        _at_least("limit", limit)
        _at_least("offset", offset)
        if not _storable(status):
            return []
        bounds = ""
        params: list[Any] = [status]
        if since is not None:
            bounds += " AND s.last_ts >= ?"
            params.append(since.timestamp())
        if until is not None:
            bounds += " AND s.first_ts < ?"
            params.append(until.timestamp())
        rows = self._query(
            f"{_STORY_SELECT} WHERE s.status=?{bounds} AND (SELECT COUNT(*) FROM story_members m"
            " WHERE m.story_id = s.id) >= ? ORDER BY s.last_ts DESC, s.id LIMIT ? OFFSET ?",
            (*params, min_size, limit, offset),
        )
        return [self._story(r) for r in rows]

    def count_stories(self, status: str = "active") -> int:
        if not _storable(status):
            return 0
        return int(
            self._query("SELECT COUNT(*) AS n FROM stories WHERE status=?", (status,))[0]["n"]
        )

    def story_of(self, article_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(_storable_ids(article_ids)):
            for i, sid in self._packed(
                "article_id, story_id", f"FROM story_members WHERE article_id IN ({_qs(chunk)})",
                chunk,
            ):
                out[i] = sid
        return out

    def record_history(
        self, old_id: str, new_id: str, kind: str, db: sqlite3.Connection | None = None
    ) -> None:
        _refuse_unstorable("a story history record", old_id, new_id, kind)
        sql = "INSERT OR IGNORE INTO story_history(old_id, new_id, kind, at) VALUES (?,?,?,?)"
        if db is None:
            with self.transaction() as tx:
                tx.execute(sql, (old_id, new_id, kind, self._now()))
        else:
            db.execute(sql, (old_id, new_id, kind, self._now()))

    def story_history(self, story_id: str) -> list[StoryHistory]:
        if not _storable(story_id):
            return []
        rows = self._query(
            "SELECT * FROM story_history WHERE old_id=? OR new_id=? ORDER BY at, old_id, new_id",
            (story_id, story_id),
        )
        return [
            StoryHistory(r["old_id"], r["new_id"], r["kind"], _parse(r["at"]) or datetime.now(UTC))
            for r in rows
        ]

    def resolve_story(self, story_id: str) -> list[str]:
        """Active ids that ``story_id`` became, following merges and splits."""
        if not _storable(story_id):
            raise NotFound(f"story '{_shown(story_id)}' not found")

        def status(sid: str) -> str | None:
            rows = self._query("SELECT status FROM stories WHERE id=?", (sid,))
            return str(rows[0]["status"]) if rows else None

        def successors(sid: str) -> list[str]:
            rows = self._query("SELECT new_id FROM story_history WHERE old_id=?", (sid,))
            return [r["new_id"] for r in rows]

        return resolve_successors(story_id, status, successors)

    # -- per-story outputs (summaries, stances) and digests ---------------------------
    def put_output(
        self, story_id: str, kind: str, content_hash: str, payload: str, *,
        members: str | None = None,
    ) -> bool:
        """Store an output of ``story_id``; False (nothing written) when the story is
        stored but no longer active (merged, split or deleted: its outputs went with it), or
        when ``members`` is given and is not ``members_hash`` of the ``article_print`` of
        the story's members as they are now. The check and the write are one transaction
        (``BEGIN IMMEDIATE`` holds every writer off), so an analysis is never stored under
        a member set that changed after it was checked."""
        _refuse_unstorable("a stored output", story_id, kind, content_hash, payload, members)
        with self.transaction() as db:
            row = db.execute("SELECT status FROM stories WHERE id=?", (story_id,)).fetchone()
            if row is not None and row["status"] != "active":
                return False
            if members is not None:
                # (imported here: storyline.index.stories imports this module)
                from storyline.index.stories import members_print

                if row is None:
                    return False
                ids = [r[0] for r in db.execute(
                    "SELECT article_id FROM story_members WHERE story_id=?", (story_id,))]
                arts = [_article_of(tuple(r)) for chunk in _chunks(ids) for r in db.execute(
                    f"SELECT {_ARTICLE_COLUMNS} FROM articles WHERE id IN ({_qs(chunk)})",
                    chunk)]
                if members_print(arts) != members:
                    return False
            db.execute(
                "INSERT OR REPLACE INTO story_outputs(story_id, kind, content_hash, payload,"
                " created_at) VALUES (?,?,?,?,?)",
                (story_id, kind, content_hash, payload, self._now()),
            )
        return True

    def get_output(self, story_id: str, kind: str) -> tuple[str, str] | None:
        """``(content_hash, payload)`` of a stored output, or None."""
        if not (_storable(story_id) and _storable(kind)):
            return None
        rows = self._query(
            "SELECT content_hash, payload FROM story_outputs WHERE story_id=? AND kind=?",
            (story_id, kind),
        )
        return (rows[0]["content_hash"], rows[0]["payload"]) if rows else None

    def put_digests(self, date: str, bodies: dict[str, str]) -> None:
        """Replace every stored format of digest ``date`` by ``bodies`` (format -> body) in one
        transaction: a format not in ``bodies`` is removed, so no older run's body is left."""
        _refuse_unstorable("a digest", date, bodies)
        now = self._now()
        with self.transaction() as db:
            db.execute("DELETE FROM digests WHERE date=?", (date,))
            db.executemany(
                "INSERT INTO digests(date, format, body, created_at) VALUES (?,?,?,?)",
                [(date, fmt, body, now) for fmt, body in sorted(bodies.items())],
            )

    def delete_digest(self, date: str) -> bool:
        """Remove every format of digest ``date``; True when one was stored."""
        if not _storable(date):
            return False
        with self.transaction() as db:
            return db.execute("DELETE FROM digests WHERE date=?", (date,)).rowcount > 0

    def get_digest(self, date: str, fmt: str) -> str:
        ok = _storable(date) and _storable(fmt)
        sql = "SELECT body FROM digests WHERE date=? AND format=?"
        rows = self._query(sql, (date, fmt)) if ok else []
        if not rows:
            raise NotFound(f"no {_shown(fmt)} digest for {_shown(date)}")
        return str(rows[0]["body"])

    def digest_dates(self) -> list[str]:
        return [r["date"] for r in self._query("SELECT DISTINCT date FROM digests ORDER BY date")]


def resolve_successors(
    story_id: str,
    status: Callable[[str], str | None],
    successors: Callable[[str], list[str]],
) -> list[str]:
    """The active stories ``story_id`` became, following the merge/split history (shared by
    the store backends; each supplies its two lookups). ``NotFound`` for an unknown id."""
    seen: set[str] = set()
    frontier = [story_id]
    out: list[str] = []
    while frontier:
        sid = frontier.pop()
        if sid in seen:
            continue
        seen.add(sid)
        if status(sid) == "active":
            out.append(sid)
            continue
        frontier += successors(sid)
    if not out and status(story_id) is None:
        raise NotFound(f"story '{story_id}' not found")
    return sorted(out)


_ARTICLE_COLUMNS: Final = "id, text, title, source, url, published_at, lang, gold_story_id, lean"


#: a story row with its members' ``[id, published_ts]`` as JSON: one statement per story
_STORY_SELECT: Final = (
    "SELECT s.*, (SELECT json_group_array(json_array(m.article_id, a.published_ts))"
    " FROM story_members m JOIN articles a ON a.id = m.article_id"
    " WHERE m.story_id = s.id) AS members FROM stories s"
)


def _oldest_first(members: list[list[Any]]) -> list[str]:
    """Ids of ``[id, published_ts]`` rows in SQLite's ``ORDER BY published_ts, id`` order
    (an article without a time first): a story's members as ``get_story`` gives them."""
    members.sort(key=lambda m: (m[1] is not None, m[1] or 0.0, m[0]))
    return [m[0] for m in members]


def _brief_of(r: Sequence[Any]) -> ArticleBrief:
    """A brief from ``[id, title, source, published_at, story_id]`` (a ``_packed`` row)."""
    i, title, source, published, story = r
    return ArticleBrief(i, title, source, _parse(published), story)


def _article_of(r: Sequence[Any]) -> Article:
    """An article from a row of ``_ARTICLE_COLUMNS`` (an sqlite3 row or a ``_packed`` one)."""
    i, text, title, source, url, published, lang, gold, lean = r
    return Article(id=i, text=text, title=title, source=source, url=url,
                   published_at=_parse(published), lang=lang, story_id=gold, lean=lean)


#: outputs of stories that are stored and no longer active
_PRUNE_RETIRED_OUTPUTS: Final = (
    "DELETE FROM story_outputs WHERE story_id IN (SELECT id FROM stories WHERE status != 'active')"
)


def _drop_outputs_of(db: sqlite3.Connection, article_id: str) -> None:
    """Before a stored article changes or goes: drop its story's stored outputs. Their
    keys cover the members' content only, and an analysis reads metadata too, so a key
    can match again later (the article re-sent with its old content, or deleted and sent
    again, under other metadata) while the analysis was of another version; and a
    deleted article's text must not stay behind in them."""
    db.execute(
        "DELETE FROM story_outputs WHERE story_id IN"
        " (SELECT story_id FROM story_members WHERE article_id=?)", (article_id,),
    )


def _member_gone(story: Story, exc: BaseException) -> StoriesChanged:
    """A story write named a member that is no longer stored: another writer deleted it
    after this one loaded the stories, and its own story write (``remove``) has not come
    yet. That is a change of the stories like any other: the writer reloads and redoes
    its change (the write rolls back), rather than failing on the foreign key."""
    return StoriesChanged(
        f"a member of story '{_shown(story.id)}' was deleted by another writer since the "
        f"stories were loaded ({exc}); retry")


def _rekey(db: sqlite3.Connection, article_id: str, source: str | None) -> None:
    """After an update that wrote ``source`` and its key: put the key back where the
    stale-key trigger took it (a change between spellings of one key, 'STRASSE' to
    'Straße', looks to it like an older version's update)."""
    if not _kept_by_trigger(source):
        db.execute(f"UPDATE articles SET source_key = ? WHERE id = ? AND {_UNKEYED}",
                   (_source_key(source), article_id))


def _qs(items: Sequence[Any]) -> str:
    return ",".join("?" * len(items))


def _chunks(items: list[str], n: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


#: what no database text can hold: NUL (PostgreSQL refuses it) and lone surrogates (no
#: UTF-8 form; both drivers fail on them)
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_MESSAGE: Final = "must not contain NUL (\\u0000) or lone surrogate characters"


def _storable(value: str) -> bool:
    return _UNSTORABLE.search(value) is None


def _storable_ids(ids: Sequence[str]) -> list[str]:
    """``ids`` less those no store can hold: a lookup of one finds nothing in either
    backend (PostgreSQL would fail on it, SQLite too for a lone surrogate). Ingest
    refuses them, but the CLI, eval and Python callers reach the store directly."""
    out = list(ids)
    return out if _storable("".join(out)) else [i for i in out if _storable(i)]


def _holds_unstorable(value: Any) -> bool:
    """True when a string anywhere in ``value`` (JSON-like) holds NUL or a lone surrogate."""
    if isinstance(value, str):
        return not _storable(value)
    if isinstance(value, dict):
        return any(_holds_unstorable(k) or _holds_unstorable(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        try:  # (a story's members: one scan, not one per id)
            return not _storable("".join(value))
        except TypeError:
            return any(_holds_unstorable(v) for v in value)
    return False


def _refuse_unstorable(what: str, *values: Any) -> None:
    """A write of text no store can hold is invalid input in both backends (PostgreSQL
    refused it as a StoreError, a 503 to retry; SQLite stored it)."""
    if any(_holds_unstorable(v) for v in values):
        raise InvalidInput(f"{what} {UNSTORABLE_MESSAGE}")


def _check_items(items: Sequence[IngestItem], model: str) -> None:
    """Before an ingest writes anything: every article field and entity storable."""
    _refuse_unstorable("the embedding model name", model)
    for item in items:
        a = item.article
        for name in ("id", "text", "title", "source", "url", "lang", "lean", "story_id"):
            if _holds_unstorable(getattr(a, name)):
                raise InvalidArticle(f"{UNSTORABLE_MESSAGE} (article '{_shown(a.id)}')",
                                     field=name)
        if _holds_unstorable(item.entities):
            raise InvalidArticle(f"{UNSTORABLE_MESSAGE} (article '{_shown(a.id)}')",
                                 field="entities")


def _shown(value: str) -> str:
    """``value`` safe to show: NUL and lone surrogates escaped."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)


def _at_least(name: str, value: int, least: int = 0) -> int:
    """A count argument checked alike in both backends (SQLite read a negative LIMIT as
    none, PostgreSQL failed on it)."""
    if value < least:
        raise InvalidInput(f"{name} must be at least {least}, not {value}")
    return value


def _check_story(s: Story) -> None:
    _refuse_unstorable(
        "a story record", s.id, s.label, s.status, s.content_hash, s.article_ids, s.outlets,
        s.extra,
    )
