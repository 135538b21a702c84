"""The PostgreSQL store: the :class:`~storyline.index.store.Store` interface for several
processes (replicas) sharing one database.

Same behaviour and return types as :class:`~storyline.index.store.SQLiteStore`; built on
SQLAlchemy 2 Core with the psycopg 3 driver. The schema is owned by Alembic (migrations in
``storyline/index/migrations``) and is brought to the latest revision when a store opens,
under an advisory lock so that replicas starting together migrate once. A database a newer
version migrated is used as it is when that version's migrations recorded that this
version's code still works on it (``compatible_from``, see ``record_schema_compat``), so
that replicas left at the older version can restart during a rolling upgrade.

Every public write method is one transaction. Writers of the change feed (ingest, delete)
take a transaction-level advisory lock first: ``changes.seq`` (an identity sequence) is
then handed out in commit order, so a reader that has seen ``seq = n`` never later finds a
smaller ``seq`` committed, and ingest's read-then-write (same id? same content under
another id?) cannot race another replica's. Readers never wait (MVCC). Other writes
(stories, outputs, digests) are upserts (``INSERT .. ON CONFLICT``) and need no lock. A
rolled-back ingest consumes sequence numbers, so after a failed batch the feed may skip
numbers (SQLite's does not); it stays strictly increasing and in commit order.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

try:
    import psycopg  # noqa: F401  (the driver behind postgresql+psycopg://)
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.dialects import postgresql as pgd
except ImportError as _exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the PostgreSQL store needs SQLAlchemy, Alembic and psycopg: "
        f"pip install 'storyline[postgres]' ({_exc})"
    ) from _exc

from storyline.index.store import (
    IngestItem,
    StoriesChanged,
    _at_least,
    _check_items,
    _check_story,
    _kept_by_trigger,
    _member_gone,
    _refuse_unstorable,
    _shown,
    _source_key,
    _storable,
    _storable_ids,
    resolve_successors,
)
from storyline.index.stories import members_print
from storyline.index.types import (
    ArticleBrief,
    Change,
    IngestResult,
    QueryContext,
    Story,
    StoryHistory,
)
from storyline.models.errors import InvalidArticle, NotFound, StoreError
from storyline.models.types import Article

__all__ = ["MIGRATIONS", "PostgresStore", "migrate", "normalise_url", "record_schema_compat"]

log = logging.getLogger(__name__)

#: the Alembic script directory, shipped as package data
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: pg_advisory_xact_lock keys (arbitrary 63-bit constants private to storyline)
_MIGRATE_LOCK = 0x5354_4F52_594C_0001
_FEED_LOCK = 0x5354_4F52_594C_0002
#: one row: the oldest code revision that works on the database (``oldest_code``) and the
#: Alembic head(s) that was worked out for (``at_revision``). Outside the migrations: a
#: revision that created it would be one that released versions refuse.
_COMPAT_TABLE = "storyline_schema_compat"

# -- table descriptions for query building (the schema itself is the migrations') -----------
_md = sa.MetaData()
_KEY = sa.Text(collation="C")
_TS = sa.DateTime(timezone=True)
_F8 = sa.Float(precision=53)

articles = sa.Table(
    "articles", _md,
    sa.Column("id", _KEY, primary_key=True), sa.Column("title", sa.Text),
    sa.Column("text", sa.Text), sa.Column("source", sa.Text), sa.Column("url", sa.Text),
    sa.Column("published_at", _TS), sa.Column("published_ts", _F8),
    sa.Column("lang", sa.Text), sa.Column("lean", sa.Text), sa.Column("gold_story_id", sa.Text),
    sa.Column("content_hash", _KEY), sa.Column("entities", pgd.JSONB),
    sa.Column("ingested_at", _TS), sa.Column("updated_at", _TS),
    # source.casefold(), as SQLite's (revision 0006)
    sa.Column("source_key", _KEY),
)
duplicates = sa.Table(
    "duplicates", _md,
    sa.Column("id", _KEY, primary_key=True), sa.Column("canonical_id", _KEY),
    sa.Column("source", sa.Text), sa.Column("url", sa.Text),
    sa.Column("published_at", _TS), sa.Column("recorded_at", _TS),
    sa.Column("title", sa.Text), sa.Column("text", sa.Text), sa.Column("lang", sa.Text),
    sa.Column("lean", sa.Text), sa.Column("gold_story_id", sa.Text),
    sa.Column("own_meta", sa.Boolean),
)
embeddings_t = sa.Table(
    "embeddings", _md,
    sa.Column("article_id", _KEY, primary_key=True), sa.Column("model", sa.Text),
    sa.Column("vector", sa.LargeBinary),
)
changes = sa.Table(
    "changes", _md,
    sa.Column("seq", sa.BigInteger, primary_key=True), sa.Column("article_id", _KEY),
    sa.Column("op", sa.Text), sa.Column("at", _TS), sa.Column("story_id", _KEY),
)
stories = sa.Table(
    "stories", _md,
    sa.Column("id", _KEY, primary_key=True), sa.Column("label", sa.Text),
    sa.Column("first_at", _TS), sa.Column("last_at", _TS),
    sa.Column("first_ts", _F8), sa.Column("last_ts", _F8),
    sa.Column("outlets", pgd.JSONB), sa.Column("centroid", sa.LargeBinary),
    sa.Column("content_hash", sa.Text), sa.Column("status", sa.Text),
    sa.Column("extra", pgd.JSONB), sa.Column("created_at", _TS), sa.Column("updated_at", _TS),
)
story_members = sa.Table(
    "story_members", _md,
    sa.Column("article_id", _KEY, primary_key=True), sa.Column("story_id", _KEY),
)
story_history_t = sa.Table(
    "story_history", _md,
    sa.Column("old_id", _KEY, primary_key=True), sa.Column("new_id", _KEY, primary_key=True),
    sa.Column("kind", sa.Text), sa.Column("at", _TS),
)
story_outputs = sa.Table(
    "story_outputs", _md,
    sa.Column("story_id", _KEY, primary_key=True), sa.Column("kind", _KEY, primary_key=True),
    sa.Column("content_hash", sa.Text), sa.Column("payload", sa.Text),
    sa.Column("created_at", _TS),
)
counters = sa.Table(
    "counters", _md,
    sa.Column("name", _KEY, primary_key=True), sa.Column("value", sa.BigInteger),
)
digests = sa.Table(
    "digests", _md,
    sa.Column("date", _KEY, primary_key=True), sa.Column("format", _KEY, primary_key=True),
    sa.Column("body", sa.Text), sa.Column("created_at", _TS),
)

_CHUNK = 5000
#: as ``storyline.index.store._UNKEYED``: a row a version before revision 0006 wrote (or
#: whose source it changed: see the trigger of revision 0006). Written as the partial
#: index ``articles_source_unkeyed`` is defined, which the planner then reads.
_UNKEYED = sa.and_(articles.c.source_key.is_(None), articles.c.source.is_not(None))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(dt: datetime | None) -> datetime | None:
    """To UTC as SQLite's ``_iso`` does (a naive datetime is taken as local time)."""
    return dt.astimezone(UTC) if dt else None


def _ts(dt: datetime | None) -> float | None:
    return dt.timestamp() if dt else None


def _vec(blob: bytes | None) -> npt.NDArray[np.float32] | None:
    return None if blob is None else np.frombuffer(blob, dtype=np.float32).copy()


def _json_dumps(obj: Any) -> str:
    # as the SQLite store writes its JSON columns
    return json.dumps(obj, sort_keys=True, default=str)


def _sorted_keys(obj: Any) -> Any:
    """jsonb keeps its own key order; give back what a ``sort_keys`` JSON text would."""
    if isinstance(obj, dict):
        return {k: _sorted_keys(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_sorted_keys(v) for v in obj]
    return obj


def _chunks(items: list[str], n: int = _CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def normalise_url(url: str) -> sa.URL:
    """A SQLAlchemy URL for the psycopg 3 driver (``postgres://`` and ``postgresql://``
    are taken to mean it)."""
    try:
        u = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"invalid database URL: {exc}") from exc
    if u.drivername in ("postgres", "postgresql"):
        u = u.set(drivername="postgresql+psycopg")
    if u.drivername != "postgresql+psycopg":
        raise StoreError(
            f"unsupported database URL scheme '{u.drivername}': use postgresql+psycopg://"
        )
    return u


def _oldest_code(script: ScriptDirectory, heads: Sequence[str]) -> str:
    """The strictest ``compatible_from`` of the revisions up to ``heads``: the oldest code
    revision that works on a database at ``heads``."""
    applied = list(script.iterate_revisions(tuple(heads), "base"))
    age = {s.revision: i for i, s in enumerate(applied)}  # newest first
    oldest = applied[-1].revision  # the base: code at any revision
    for s in applied:
        declared = getattr(s.module, "compatible_from", s.revision)
        # one that names no revision before it is a slip: only its own code is safe
        c = declared if declared in age and age[declared] >= age[s.revision] else s.revision
        if age[c] < age[oldest]:
            oldest = c
    return oldest


def record_schema_compat(conn: sa.Connection, script: ScriptDirectory) -> None:
    """Record which code works on the database at its current revision (in
    ``_COMPAT_TABLE``). Called by the migration environment after every online upgrade or
    downgrade, in its transaction."""
    heads = MigrationContext.configure(
        conn, opts={"version_table": "storyline_alembic_version"}
    ).get_current_heads()
    # looked up first: CREATE TABLE IF NOT EXISTS needs the right to create, every start
    if not _has_compat_table(conn):
        conn.execute(
            sa.text(
                f"CREATE TABLE {_COMPAT_TABLE}"
                " (at_revision text NOT NULL, oldest_code text NOT NULL)"
            )
        )
    want = [(",".join(sorted(heads)), _oldest_code(script, heads))] if heads else []
    have = [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {_COMPAT_TABLE}"))]
    if have != want:  # most starts find it written: no write then
        conn.execute(sa.text(f"DELETE FROM {_COMPAT_TABLE}"))
        for at, oldest in want:
            conn.execute(
                sa.text(f"INSERT INTO {_COMPAT_TABLE} VALUES (:at, :oldest)"),
                {"at": at, "oldest": oldest},
            )


def _has_compat_table(conn: sa.Connection) -> bool:
    return conn.execute(sa.text(f"SELECT to_regclass('{_COMPAT_TABLE}')")).scalar() is not None


def _recorded_oldest_code(conn: sa.Connection, heads: Sequence[str]) -> str | None:
    """What the migrations to ``heads`` recorded as the oldest code that works on them;
    None when nothing was recorded for ``heads`` (a version without the record migrated,
    or the schema changed since without one)."""
    if not _has_compat_table(conn):
        return None
    rows = list(conn.execute(sa.text(f"SELECT at_revision, oldest_code FROM {_COMPAT_TABLE}")))
    if len(rows) == 1 and rows[0][0] == ",".join(sorted(heads)):
        return str(rows[0][1])
    return None


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the latest revision (creates it in an empty database).

    Serialised by an advisory lock: replicas opening together migrate once. A database at
    a revision this version does not know (a newer version migrated it) is left as it is
    and used when its recorded oldest compatible code revision is one this version has;
    else refused.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    with engine.begin() as conn:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATE_LOCK)))
        # A database a newer version migrated: Alembic cannot upgrade from a revision it
        # does not know and failed with its own error (an internal error, not a store
        # one); say which versions are involved instead.
        at = MigrationContext.configure(
            conn, opts={"version_table": "storyline_alembic_version"}
        ).get_current_heads()
        script = ScriptDirectory.from_config(cfg)
        known = {r.revision for r in script.walk_revisions()}
        newer = sorted(set(at) - known)
        if newer:
            ours = script.get_current_head()
            oldest = _recorded_oldest_code(conn, at)
            if oldest in known:
                # Replicas still at this version must restart during a rolling upgrade.
                log.warning(
                    "the database schema is at revision %s, newer than this version of"
                    " storyline knows (up to %s); its migrations record that code from"
                    " revision %s on works on it: using it without migrating",
                    ", ".join(newer),
                    ours,
                    oldest,
                )
                return
            needs = f", and it needs storyline at revision {oldest} or later" if oldest else ""
            raise StoreError(
                f"the database schema is at revision {', '.join(newer)}, newer than this"
                f" version of storyline knows (up to {ours}){needs}:"
                " upgrade storyline to use it"
            )
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class PostgresStore:
    """Shared store: one PostgreSQL database, any number of processes. ``clock``: the
    store's wall-clock time, as for ``SQLiteStore``."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        max_overflow: int = 10,
        connect_timeout_s: int = 10,
        migrate_schema: bool = True,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.url = normalise_url(url)
        self._clock = clock
        self._closed = False
        self._engine = sa.create_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            json_serializer=_json_dumps,
            connect_args={"connect_timeout": connect_timeout_s, "options": "-c timezone=UTC"},
        )
        # Like a sqlite3 connection, a store that is dropped unclosed closes its connections.
        self._finalizer = weakref.finalize(self, self._engine.dispose)
        try:
            if migrate_schema:
                migrate(self._engine)
            else:
                with self._engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
            # As ``SQLiteStore``: outputs of stories retired before retiring dropped them;
            # and the articles older replicas wrote during a rolling upgrade get their
            # source key (usually none: read from the partial index).
            with self._engine.begin() as conn:
                conn.execute(_prune_retired_outputs())
                _key_unkeyed(conn)
        except StoreError:
            self._finalizer()
            raise
        except sa.exc.SQLAlchemyError as exc:
            self._finalizer()
            raise StoreError(
                f"cannot open the database {self.url.render_as_string(hide_password=True)}:"
                f" {exc}"
            ) from exc

    # -- plumbing ---------------------------------------------------------------
    def _now(self) -> datetime:
        """The store's clock (see ``SQLiteStore``), in UTC."""
        return self._clock().astimezone(UTC)

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """One transaction; the connection is what ``save_story``/``record_history`` take."""
        self._check_open()
        try:
            conn = self._engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"database unavailable: {exc}") from exc
        try:
            tx = conn.begin()
            try:
                yield conn
            except sa.exc.SQLAlchemyError as exc:
                tx.rollback()
                raise StoreError(f"query failed: {exc}") from exc
            except BaseException:
                tx.rollback()
                raise
            try:
                tx.commit()
            except sa.exc.SQLAlchemyError as exc:
                raise StoreError(f"commit failed: {exc}") from exc
        finally:
            conn.close()

    def _check_open(self) -> None:
        # A disposed engine opens a new pool on its next use: a closed store went on
        # reading and writing (and held connections) where a closed SQLiteStore fails.
        if self._closed:
            raise StoreError("the store is closed")

    def _rows(self, stmt: sa.Executable) -> list[sa.RowMapping]:
        self._check_open()
        try:
            with self._engine.connect() as conn:
                return list(conn.execute(stmt).mappings())
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"query failed: {exc}") from exc

    def _scalar(self, stmt: sa.Executable) -> Any:
        rows = self._rows(stmt)
        return next(iter(rows[0].values())) if rows else None

    @staticmethod
    def _lock_feed(db: sa.Connection) -> None:
        db.execute(sa.select(sa.func.pg_advisory_xact_lock(_FEED_LOCK)))

    def close(self) -> None:
        self._closed = True
        self._finalizer()

    # -- articles ---------------------------------------------------------------
    def existing_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(_storable_ids(ids)):
            rows = self._rows(
                sa.select(articles.c.id, articles.c.content_hash).where(articles.c.id.in_(chunk))
            )
            out.update({r["id"]: r["content_hash"] for r in rows})
        return out

    def ids_for_hashes(self, hashes: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(_storable_ids(list(set(hashes)))):
            rows = self._rows(
                sa.select(articles.c.content_hash, sa.func.min(articles.c.id).label("id"))
                .where(articles.c.content_hash.in_(chunk))
                .group_by(articles.c.content_hash)
            )
            out.update({r["content_hash"]: r["id"] for r in rows})
        return out

    def ingest(
        self, items: Sequence[IngestItem], model: str, *, promoted: list[str] | None = None
    ) -> list[IngestResult]:
        """Insert or update a batch in one transaction (outcomes, and duplicates promoted
        by an update, as in ``SQLiteStore``)."""
        _check_items(items, model)
        results: list[IngestResult] = []
        now = self._now()
        with self.transaction() as db:
            self._lock_feed(db)
            for item in items:
                a = item.article
                h = a.content_hash
                row = db.execute(
                    sa.select(articles).where(articles.c.id == a.id)
                ).mappings().first()
                if row is not None and row["content_hash"] == h:
                    if _article(row) == a:  # every field (times by instant)
                        results.append(IngestResult(a.id, "unchanged"))
                        continue
                    self._update_metadata(db, a, now)
                    results.append(IngestResult(a.id, "updated"))
                    continue
                if row is None:
                    dup = db.execute(
                        sa.select(articles.c.id, articles.c.title, articles.c.text)
                        .where(articles.c.content_hash == h).order_by(articles.c.id).limit(1)
                    ).first()
                    if dup is not None:
                        # as SQLiteStore's: title and text where they differ from the
                        # stored article's, and its own lang, lean and story id
                        keep: dict[str, Any] = {
                            "canonical_id": dup.id, "source": a.source, "url": a.url,
                            "published_at": _utc(a.published_at),
                            "title": None if a.title == dup.title else a.title,
                            "text": None if a.text == dup.text else a.text,
                            "lang": a.lang, "lean": a.lean, "gold_story_id": a.story_id,
                            "own_meta": True,
                        }
                        d = duplicates.c
                        same = db.execute(sa.select(d.id).where(
                            d.id == a.id,
                            *(d[k].is_not_distinct_from(v) for k, v in keep.items()),
                        )).first()
                        if same is not None:  # re-sent as it was recorded: nothing to write
                            results.append(
                                IngestResult(a.id, "duplicate", duplicate_of=dup.id))
                            continue
                        # a re-sent duplicate keeps the time it was first recorded
                        ins = pgd.insert(duplicates).values(id=a.id, recorded_at=now, **keep)
                        db.execute(ins.on_conflict_do_update(index_elements=["id"], set_=keep))
                        results.append(IngestResult(a.id, "duplicate", duplicate_of=dup.id))
                        continue
                vec = np.ascontiguousarray(item.vector, dtype=np.float32)
                if vec.ndim != 1 or not np.all(np.isfinite(vec)):
                    raise InvalidArticle("embedding is not a finite 1-d vector", field="vector")
                if row is None:  # stored under its own id now: no longer a duplicate
                    db.execute(sa.delete(duplicates).where(duplicates.c.id == a.id))
                else:
                    _drop_outputs_of(db, a.id)
                    new = self._promote_duplicates(db, a.id, now)
                    if promoted is not None:
                        promoted.extend(new)
                values = {
                    "title": a.title, "text": a.text, "source": a.source,
                    "source_key": _source_key(a.source), "url": a.url,
                    "published_at": _utc(a.published_at), "published_ts": _ts(a.published_at),
                    "lang": a.lang, "lean": a.lean, "gold_story_id": a.story_id,
                    "content_hash": h, "entities": list(item.entities), "updated_at": now,
                }
                if row is None:
                    db.execute(sa.insert(articles).values(id=a.id, ingested_at=now, **values))
                    outcome: str = "inserted"
                else:
                    db.execute(sa.update(articles).where(articles.c.id == a.id).values(**values))
                    _rekey(db, a.id, a.source)
                    outcome = "updated"
                emb = {"model": model, "vector": vec.tobytes()}
                db.execute(
                    pgd.insert(embeddings_t).values(article_id=a.id, **emb)
                    .on_conflict_do_update(index_elements=["article_id"], set_=emb)
                )
                db.execute(sa.insert(changes).values(article_id=a.id, op="upsert", at=now))
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
            for r in self._rows(sa.select(articles).where(articles.c.id.in_(chunk))):
                found[r["id"]] = _article(r)
        return [found[i] for i in ids if i in found]

    def briefs(self, ids: Sequence[str]) -> dict[str, ArticleBrief]:
        """Title, source, time and story of each known id (unknown ids are left out)."""
        out: dict[str, ArticleBrief] = {}
        joined = articles.outerjoin(story_members, story_members.c.article_id == articles.c.id)
        for chunk in _chunks(_storable_ids(ids)):
            for r in self._rows(
                sa.select(articles.c.id, articles.c.title, articles.c.source,
                          articles.c.published_at, story_members.c.story_id)
                .select_from(joined).where(articles.c.id.in_(chunk))
            ):
                out[r["id"]] = ArticleBrief(r["id"], r["title"], r["source"],
                                            _utc(r["published_at"]), r["story_id"])
        return out

    def iter_articles(self, batch: int = 1000) -> Iterator[Article]:
        _at_least("batch", batch, 1)
        last = ""
        while True:
            rows = self._rows(
                sa.select(articles).where(articles.c.id > last)
                .order_by(articles.c.id).limit(batch)
            )
            if not rows:
                return
            yield from (_article(r) for r in rows)
            last = rows[-1]["id"]

    def articles_between(self, since: datetime | None, until: datetime | None) -> list[str]:
        q = sa.select(articles.c.id).where(articles.c.published_ts.is_not(None))
        if since is not None:
            q = q.where(articles.c.published_ts >= since.timestamp())
        if until is not None:
            q = q.where(articles.c.published_ts < until.timestamp())
        return [r["id"] for r in self._rows(q.order_by(articles.c.published_ts, articles.c.id))]

    def matching_ids(
        self, since: datetime | None, until: datetime | None, source: str | None, limit: int
    ) -> list[str]:
        """As ``SQLiteStore.matching_ids``."""
        _at_least("limit", limit)
        if source is not None and not _storable(source):
            return []
        q = sa.select(articles.c.id, articles.c.source)
        if since is not None:
            q = q.where(articles.c.published_ts >= since.timestamp())
        if until is not None:
            q = q.where(articles.c.published_ts < until.timestamp())
        if source is None:
            # (ids alone: a time window is read from the index articles_published_id)
            return [r["id"] for r in self._rows(q.with_only_columns(articles.c.id).limit(limit))]
        # Two disjoint parts as SQLiteStore's, each read from its index of revision 0006:
        # the rows keyed as the filter, and the unkeyed ones, which Python decides.
        key = source.casefold()
        keyed = q.with_only_columns(articles.c.id, sa.null().label("source")).where(
            articles.c.source_key == key).limit(limit)
        stmt = sa.union_all(keyed, q.where(_UNKEYED))
        out = [r["id"] for r in self._rows(stmt)
               if r["source"] is None or r["source"].casefold() == key]
        return out[:limit]

    def _update_metadata(self, db: sa.Connection, a: Article, now: datetime) -> None:
        """As ``SQLiteStore._update_metadata``: the new fields replace the stored ones
        (vector, entities and duplicates stay), the story's stored outputs are dropped and
        the change feed records an upsert; a duplicate recorded with the old title or
        text keeps it."""
        d = duplicates.c
        old = sa.select(articles.c.title, articles.c.text).where(articles.c.id == a.id)
        old_title = old.with_only_columns(articles.c.title).scalar_subquery()
        old_text = old.with_only_columns(articles.c.text).scalar_subquery()
        db.execute(sa.update(duplicates).where(
            d.canonical_id == a.id, d.own_meta.is_(True)).values(
            title=sa.func.nullif(sa.func.coalesce(d.title, old_title),
                                 sa.literal(a.title, sa.Text)),
            text=sa.func.nullif(sa.func.coalesce(d.text, old_text), sa.literal(a.text, sa.Text)),
        ))
        db.execute(sa.update(articles).where(articles.c.id == a.id).values(
            title=a.title, text=a.text, source=a.source, source_key=_source_key(a.source),
            url=a.url, published_at=_utc(a.published_at), published_ts=_ts(a.published_at),
            lang=a.lang, lean=a.lean, gold_story_id=a.story_id, updated_at=now,
        ))
        _rekey(db, a.id, a.source)
        _drop_outputs_of(db, a.id)
        db.execute(sa.insert(changes).values(article_id=a.id, op="upsert", at=now))

    def _promote_duplicates(self, db: sa.Connection, article_id: str, now: datetime) -> list[str]:
        """As ``SQLiteStore._promote_duplicates``: the first duplicate of ``article_id``
        becomes a stored article with this content and its own fields, the rest its
        duplicates."""
        d = db.execute(
            sa.select(duplicates).where(duplicates.c.canonical_id == article_id)
            .order_by(duplicates.c.id).limit(1)
        ).mappings().first()
        if d is None:
            return []
        a = articles.c
        c = db.execute(sa.select(a.title, a.text, a.lang, a.lean, a.gold_story_id).where(
            a.id == article_id)).mappings().one()
        mine = d if d["own_meta"] else c  # a row an older version wrote: as the stored
        title = c["title"] if d["title"] is None else d["title"]
        text = c["text"] if d["text"] is None else d["text"]
        db.execute(sa.insert(articles).from_select(
            ["id", "title", "text", "source", "source_key", "url", "published_at",
             "published_ts", "lang", "lean", "gold_story_id", "content_hash", "entities",
             "ingested_at", "updated_at"],
            sa.select(
                sa.literal(d["id"], _KEY), sa.literal(title, sa.Text), sa.literal(text, sa.Text),
                sa.literal(d["source"], sa.Text), sa.literal(_source_key(d["source"]), _KEY),
                sa.literal(d["url"], sa.Text), sa.literal(d["published_at"], _TS),
                sa.literal(_ts(d["published_at"]), _F8), sa.literal(mine["lang"], sa.Text),
                sa.literal(mine["lean"], sa.Text), sa.literal(mine["gold_story_id"], sa.Text),
                a.content_hash, a.entities, sa.literal(d["recorded_at"], _TS),
                sa.literal(now, _TS),
            ).where(a.id == article_id),
        ))
        e = embeddings_t.c
        db.execute(sa.delete(embeddings_t).where(e.article_id == d["id"]))
        db.execute(sa.insert(embeddings_t).from_select(
            ["article_id", "model", "vector"],
            sa.select(sa.literal(d["id"], _KEY), e.model, e.vector).where(
                e.article_id == article_id),
        ))
        db.execute(sa.delete(duplicates).where(duplicates.c.id == d["id"]))
        # as SQLiteStore's: what the rest had "as the stored article" is written out
        dc = duplicates.c

        def own(col: sa.ColumnElement[Any], value: str | None) -> sa.ColumnElement[Any]:
            return sa.case((dc.own_meta.is_(True), col), else_=sa.literal(value, sa.Text))

        db.execute(sa.update(duplicates).where(dc.canonical_id == article_id).values(
            canonical_id=d["id"],
            title=sa.func.nullif(sa.func.coalesce(dc.title, sa.literal(c["title"], sa.Text)),
                                 sa.literal(title, sa.Text)),
            text=sa.func.nullif(sa.func.coalesce(dc.text, sa.literal(c["text"], sa.Text)),
                                sa.literal(text, sa.Text)),
            lang=own(dc.lang, c["lang"]), lean=own(dc.lean, c["lean"]),
            gold_story_id=own(dc.gold_story_id, c["gold_story_id"]), own_meta=True,
        ))
        db.execute(sa.insert(changes).values(article_id=d["id"], op="upsert", at=now))
        return [str(d["id"])]

    def delete_article(self, article_id: str) -> list[str]:
        """As ``SQLiteStore.delete_article``: a duplicate id loses just its record; a
        stored article's duplicates keep its content. Returns the promoted ids."""
        if not _storable(article_id):
            raise NotFound(f"article '{_shown(article_id)}' not found")
        now = self._now()
        with self.transaction() as db:
            self._lock_feed(db)
            found = db.execute(
                sa.select(articles.c.id).where(articles.c.id == article_id)
            ).first()
            if found is None:
                res = db.execute(sa.delete(duplicates).where(duplicates.c.id == article_id))
                if res.rowcount == 0:
                    raise NotFound(f"article '{_shown(article_id)}' not found")
                return []
            # as SQLiteStore's: the feed keeps the story the membership leaves with it
            story_id = db.execute(sa.select(story_members.c.story_id).where(
                story_members.c.article_id == article_id)).scalar()
            _drop_outputs_of(db, article_id)
            promoted = self._promote_duplicates(db, article_id, now)
            db.execute(sa.delete(articles).where(articles.c.id == article_id))
            db.execute(sa.insert(changes).values(
                article_id=article_id, op="delete", at=now, story_id=story_id))
        return promoted

    def count_articles(self) -> int:
        return int(self._scalar(sa.select(sa.func.count()).select_from(articles)))

    def count_duplicates(self) -> int:
        return int(self._scalar(sa.select(sa.func.count()).select_from(duplicates)))

    def article_ids(self) -> list[str]:
        return [r["id"] for r in self._rows(sa.select(articles.c.id).order_by(articles.c.id))]

    def duplicates_of(self, article_id: str) -> list[str]:
        if not _storable(article_id):
            return []
        rows = self._rows(
            sa.select(duplicates.c.id).where(duplicates.c.canonical_id == article_id)
            .order_by(duplicates.c.id)
        )
        return [r["id"] for r in rows]

    def canonical_id(self, article_id: str) -> str | None:
        """The stored article id for ``article_id``, following duplicate records."""
        if not _storable(article_id):
            return None
        if self._rows(sa.select(articles.c.id).where(articles.c.id == article_id)):
            return article_id
        rows = self._rows(
            sa.select(duplicates.c.canonical_id).where(duplicates.c.id == article_id)
        )
        return str(rows[0]["canonical_id"]) if rows else None

    def query_context(
        self, article_id: str, briefs_of: Sequence[str] = ()
    ) -> QueryContext | None:
        """What ``related`` needs of its query article and of its candidates ``briefs_of``.
        Composed of the single reads: a PostgreSQL client waits on the network, not on
        sqlite3's per-row GIL hand-offs."""
        cid = self.canonical_id(article_id)
        if cid is None:
            return None
        brief = self.briefs([cid]).get(cid)
        ids, vecs = self.embeddings([cid])
        if brief is None:  # deleted since its id was resolved
            return None
        if not ids:
            raise StoreError(f"article '{cid}' has no stored embedding")
        members: tuple[str, ...] = ()
        if brief.story_id is not None:
            try:
                members = tuple(self.get_story(brief.story_id).article_ids)
            except NotFound:  # the story was replaced since the brief was read
                members = ()
        return QueryContext(brief, vecs[0], tuple(self.duplicates_of(cid)), members,
                            self.briefs([*briefs_of, *members]))

    def embeddings(
        self, ids: Sequence[str] | None = None
    ) -> tuple[list[str], npt.NDArray[np.float32]]:
        cols = sa.select(embeddings_t.c.article_id, embeddings_t.c.vector)
        if ids is None:
            rows = self._rows(cols.order_by(embeddings_t.c.article_id))
        else:
            rows = []
            for chunk in _chunks(_storable_ids(ids)):
                rows += self._rows(cols.where(embeddings_t.c.article_id.in_(chunk)))
            order = {i: k for k, i in enumerate(ids)}
            rows.sort(key=lambda r: order[r["article_id"]])
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        mat = np.stack([np.frombuffer(r["vector"], dtype=np.float32) for r in rows])
        return [r["article_id"] for r in rows], mat

    def entities(self, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for chunk in _chunks(_storable_ids(ids)):
            for r in self._rows(
                sa.select(articles.c.id, articles.c.entities).where(articles.c.id.in_(chunk))
            ):
                out[r["id"]] = tuple(r["entities"])
        return out

    def published_ts(self, ids: Sequence[str]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for chunk in _chunks(_storable_ids(ids)):
            for r in self._rows(
                sa.select(articles.c.id, articles.c.published_ts).where(articles.c.id.in_(chunk))
            ):
                out[r["id"]] = r["published_ts"]
        return out

    def ingested_ts(self, ids: Sequence[str]) -> dict[str, float]:
        """As ``SQLiteStore.ingested_ts``: each known id's ``ingested_at`` as a Unix time."""
        out: dict[str, float] = {}
        for chunk in _chunks(_storable_ids(ids)):
            for r in self._rows(
                sa.select(articles.c.id, articles.c.ingested_at).where(articles.c.id.in_(chunk))
            ):
                out[r["id"]] = float(r["ingested_at"].timestamp())
        return out

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        rows = self._rows(
            sa.select(changes.c.seq, changes.c.article_id, changes.c.op, changes.c.story_id)
            .where(changes.c.seq > seq).order_by(changes.c.seq)
            .limit(_at_least("limit", limit))
        )
        return [Change(r["seq"], r["article_id"], r["op"], r["story_id"]) for r in rows]

    def deleted_story_of(self, article_ids: Sequence[str]) -> dict[str, str]:
        """As ``SQLiteStore.deleted_story_of``."""
        last: dict[str, str | None] = {}
        for chunk in _chunks(_storable_ids(article_ids)):
            for r in self._rows(
                sa.select(changes.c.article_id, changes.c.story_id)
                .where(changes.c.op == "delete", changes.c.article_id.in_(chunk))
                .order_by(changes.c.seq)
            ):
                last[r["article_id"]] = r["story_id"]
        return {a: s for a, s in last.items() if s is not None}

    def last_seq(self) -> int:
        return int(self._scalar(sa.select(sa.func.max(changes.c.seq))) or 0)

    def stories_generation(self) -> int:
        """How many story writes the store has seen (0 before the first)."""
        return int(self._scalar(
            sa.select(counters.c.value).where(counters.c.name == "stories_generation")) or 0)

    def claim_stories_generation(self, expected: int, db: sa.Connection) -> int:
        """Inside a story write's transaction: move the generation on from ``expected``,
        or raise :class:`StoriesChanged` if another writer has moved it since. A
        compare-and-set: under READ COMMITTED a concurrent writer's committed increment
        makes the WHERE fail after the row lock is released."""
        row = db.execute(
            sa.update(counters)
            .where(counters.c.name == "stories_generation", counters.c.value == expected)
            .values(value=counters.c.value + 1)
            .returning(counters.c.value)
        ).first()
        if row is None:
            raise StoriesChanged(
                f"stories were changed by another writer (expected generation {expected});"
                " retry")
        return int(row[0])

    # -- stories ----------------------------------------------------------------
    def save_story(self, story: Story, db: sa.Connection | None = None) -> None:
        """Upsert a story record and its membership (inside ``db``'s transaction if given)."""
        _check_story(story)
        if db is None:
            with self.transaction() as tx:
                self._save_story(tx, story)
        else:
            self._save_story(db, story)

    def _save_story(self, db: sa.Connection, s: Story) -> None:
        now = self._now()
        centroid = None if s.centroid is None else np.asarray(s.centroid, np.float32).tobytes()
        values = {
            "label": s.label, "first_at": _utc(s.first_at), "last_at": _utc(s.last_at),
            "first_ts": _ts(s.first_at), "last_ts": _ts(s.last_at), "outlets": s.outlets,
            "centroid": centroid, "content_hash": s.content_hash, "status": s.status,
            # through JSON text and back, as SQLite stores it (default=str for odd values)
            "extra": json.loads(_json_dumps(s.extra)), "updated_at": now,
        }
        db.execute(
            pgd.insert(stories).values(id=s.id, created_at=now, **values)
            .on_conflict_do_update(index_elements=["id"], set_=values)
        )
        if s.status == "active" and s.article_ids:
            ins = pgd.insert(story_members)
            try:
                db.execute(
                    ins.on_conflict_do_update(
                        index_elements=["article_id"], set_={"story_id": ins.excluded.story_id}
                    ),
                    [{"article_id": aid, "story_id": s.id} for aid in s.article_ids],
                )
            except sa.exc.IntegrityError as exc:
                # (foreign_key_violation; the transaction is aborted and rolls back)
                if getattr(exc.orig, "sqlstate", None) != "23503" or not self._deleted_any(
                    s.article_ids
                ):
                    raise
                raise _member_gone(s, exc.orig or exc) from exc
        elif s.status != "active":  # merged, split or deleted: nothing reads its outputs
            db.execute(sa.delete(story_outputs).where(story_outputs.c.story_id == s.id))

    def _deleted_any(self, article_ids: Sequence[str]) -> bool:
        """Whether the change feed records a delete of any of these ids: after a foreign-key
        failure, a member deleted since is another writer's change (``_member_gone``), one
        never stored a failed write. Read on a connection of its own, as the failure has
        aborted the write's transaction (the delete was committed by its writer)."""
        with self._engine.connect() as conn:
            return conn.execute(
                sa.select(changes.c.seq).where(
                    changes.c.op == "delete", changes.c.article_id.in_(list(article_ids))
                ).limit(1)
            ).first() is not None

    def get_story(self, story_id: str) -> Story:
        ok = _storable(story_id)
        rows = self._rows(_STORY_SELECT.where(stories.c.id == story_id)) if ok else []
        if not rows:
            raise NotFound(f"story '{_shown(story_id)}' not found")
        return self._story(rows[0])

    @staticmethod
    def _story(r: sa.RowMapping) -> Story:
        members = list(r["members"] or ())
        return Story(
            id=r["id"], label=r["label"], article_ids=members, first_at=_utc(r["first_at"]),
            last_at=_utc(r["last_at"]), outlets=_sorted_keys(r["outlets"]),
            centroid=_vec(r["centroid"]), updated_at=_utc(r["updated_at"]), status=r["status"],
            content_hash=r["content_hash"], extra=_sorted_keys(r["extra"]),
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
        _at_least("limit", limit)
        _at_least("offset", offset)
        if not _storable(status):
            return []
        size = (
            sa.select(sa.func.count()).select_from(story_members)
            .where(story_members.c.story_id == stories.c.id).scalar_subquery()
        )
        q = _STORY_SELECT.where(stories.c.status == status, size >= min_size)
        # a bound leaves out stories with no dated article (NULL compares false), as
        # articles_between leaves out undated articles
        if since is not None:
            q = q.where(stories.c.last_ts >= since.timestamp())
        if until is not None:
            q = q.where(stories.c.first_ts < until.timestamp())
        rows = self._rows(
            # SQLite sorts NULL last in DESC order
            q.order_by(stories.c.last_ts.desc().nulls_last(), stories.c.id)
            .limit(limit).offset(offset)
        )
        return [self._story(r) for r in rows]

    def count_stories(self, status: str = "active") -> int:
        if not _storable(status):
            return 0
        return int(self._scalar(
            sa.select(sa.func.count()).select_from(stories).where(stories.c.status == status)
        ))

    def story_of(self, article_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(_storable_ids(article_ids)):
            for r in self._rows(
                sa.select(story_members.c.article_id, story_members.c.story_id)
                .where(story_members.c.article_id.in_(chunk))
            ):
                out[r["article_id"]] = r["story_id"]
        return out

    def record_history(
        self, old_id: str, new_id: str, kind: str, db: sa.Connection | None = None
    ) -> None:
        _refuse_unstorable("a story history record", old_id, new_id, kind)
        stmt = (
            pgd.insert(story_history_t)
            .values(old_id=old_id, new_id=new_id, kind=kind, at=self._now())
            .on_conflict_do_nothing(index_elements=["old_id", "new_id"])
        )
        if db is None:
            with self.transaction() as tx:
                tx.execute(stmt)
        else:
            db.execute(stmt)

    def story_history(self, story_id: str) -> list[StoryHistory]:
        if not _storable(story_id):
            return []
        h = story_history_t.c
        rows = self._rows(
            sa.select(story_history_t).where(sa.or_(h.old_id == story_id, h.new_id == story_id))
            .order_by(h.at, h.old_id, h.new_id)
        )
        return [
            StoryHistory(r["old_id"], r["new_id"], r["kind"], _utc(r["at"]) or datetime.now(UTC))
            for r in rows
        ]

    def resolve_story(self, story_id: str) -> list[str]:
        """Active ids that ``story_id`` became, following merges and splits."""
        if not _storable(story_id):
            raise NotFound(f"story '{_shown(story_id)}' not found")

        def status(sid: str) -> str | None:
            rows = self._rows(sa.select(stories.c.status).where(stories.c.id == sid))
            return str(rows[0]["status"]) if rows else None

        def successors(sid: str) -> list[str]:
            h = story_history_t.c
            return [r["new_id"] for r in self._rows(sa.select(h.new_id).where(h.old_id == sid))]

        return resolve_successors(story_id, status, successors)

    # -- per-story outputs (summaries, stances) and digests ---------------------------
    def put_output(
        self, story_id: str, kind: str, content_hash: str, payload: str, *,
        members: str | None = None,
    ) -> bool:
        """As ``SQLiteStore.put_output``. Under READ COMMITTED the checks need locks: the
        story-generation row (shared), which every story write updates first, holds off
        retirements and membership changes; with ``members`` the change feed's advisory
        lock too, which every ingest and delete takes (content and metadata changes)."""
        _refuse_unstorable("a stored output", story_id, kind, content_hash, payload, members)
        values = {"content_hash": content_hash, "payload": payload, "created_at": self._now()}
        with self.transaction() as db:
            if members is not None:
                # the feed lock first, the generation row second: no writer takes
                # both, so no other order can deadlock with this one
                self._lock_feed(db)
            db.execute(sa.select(counters.c.value)
                       .where(counters.c.name == "stories_generation").with_for_update(read=True))
            status = db.execute(
                sa.select(stories.c.status).where(stories.c.id == story_id)).scalar()
            if status is not None and status != "active":
                return False
            if members is not None:
                if status is None:
                    return False
                arts = [_article(r) for r in db.execute(
                    sa.select(articles).join(
                        story_members, story_members.c.article_id == articles.c.id)
                    .where(story_members.c.story_id == story_id)).mappings()]
                if members_print(arts) != members:
                    return False
            db.execute(
                pgd.insert(story_outputs).values(story_id=story_id, kind=kind, **values)
                .on_conflict_do_update(index_elements=["story_id", "kind"], set_=values)
            )
        return True

    def get_output(self, story_id: str, kind: str) -> tuple[str, str] | None:
        """``(content_hash, payload)`` of a stored output, or None."""
        if not (_storable(story_id) and _storable(kind)):
            return None
        rows = self._rows(
            sa.select(story_outputs.c.content_hash, story_outputs.c.payload)
            .where(story_outputs.c.story_id == story_id, story_outputs.c.kind == kind)
        )
        return (rows[0]["content_hash"], rows[0]["payload"]) if rows else None

    def put_digests(self, date: str, bodies: dict[str, str]) -> None:
        """Replace every stored format of digest ``date`` by ``bodies`` (format -> body) in one
        transaction: a format not in ``bodies`` is removed, so no older run's body is left."""
        _refuse_unstorable("a digest", date, bodies)
        now = self._now()
        with self.transaction() as db:
            db.execute(sa.delete(digests).where(digests.c.date == date))
            if bodies:  # an upsert, in case a concurrent run inserted the key meanwhile
                ins = pgd.insert(digests)
                db.execute(ins.on_conflict_do_update(
                    index_elements=["date", "format"],
                    set_={"body": ins.excluded.body, "created_at": ins.excluded.created_at},
                ), [{"date": date, "format": fmt, "body": body, "created_at": now}
                    for fmt, body in sorted(bodies.items())])

    def delete_digest(self, date: str) -> bool:
        """Remove every format of digest ``date``; True when one was stored."""
        if not _storable(date):
            return False
        with self.transaction() as db:
            return db.execute(sa.delete(digests).where(digests.c.date == date)).rowcount > 0

    def get_digest(self, date: str, fmt: str) -> str:
        ok = _storable(date) and _storable(fmt)
        rows = self._rows(
            sa.select(digests.c.body).where(digests.c.date == date, digests.c.format == fmt)
        ) if ok else []
        if not rows:
            raise NotFound(f"no {_shown(fmt)} digest for {_shown(date)}")
        return str(rows[0]["body"])

    def digest_dates(self) -> list[str]:
        rows = self._rows(sa.select(digests.c.date).distinct().order_by(digests.c.date))
        return [r["date"] for r in rows]


#: a story row with its members, read in the same statement: read in a second one, a merge
#: or delete committed in between listed the story with no members (READ COMMITTED)
_STORY_SELECT = sa.select(
    stories,
    sa.select(sa.func.array_agg(pgd.aggregate_order_by(
        story_members.c.article_id,
        # SQLite sorts NULL first
        articles.c.published_ts.asc().nulls_first(), articles.c.id)))
    .select_from(story_members.join(articles, articles.c.id == story_members.c.article_id))
    .where(story_members.c.story_id == stories.c.id)
    .scalar_subquery().label("members"),
)


def _rekey(db: sa.Connection, article_id: str, source: str | None) -> None:
    """As ``storyline.index.store._rekey``: the key back where revision 0006's trigger
    took it from an update that changed between spellings of one key."""
    if not _kept_by_trigger(source):
        db.execute(sa.update(articles).where(articles.c.id == article_id, _UNKEYED)
                   .values(source_key=_source_key(source)))


def _key_unkeyed(db: sa.Connection) -> None:
    """Key the rows older replicas wrote (see ``PostgresStore.__init__``), each once, in id
    order. A row only if its source is still the one its key was computed from: nothing
    holds off a concurrent update."""
    last = ""
    while True:
        rows = db.execute(sa.select(articles.c.id, articles.c.source)
                          .where(_UNKEYED, articles.c.id > last)
                          .order_by(articles.c.id).limit(_CHUNK)).all()
        if not rows:
            return
        db.execute(
            sa.update(articles).where(
                articles.c.id == sa.bindparam("b_id"),
                articles.c.source == sa.bindparam("b_source"), _UNKEYED)
            .values(source_key=sa.bindparam("b_key")),
            [{"b_id": i, "b_source": src, "b_key": _source_key(src)} for i, src in rows])
        last = rows[-1][0]


def _drop_outputs_of(db: sa.Connection, article_id: str) -> None:
    """As ``storyline.index.store._drop_outputs_of``: a stored article changes or goes, so
    its story's stored outputs go."""
    db.execute(sa.delete(story_outputs).where(story_outputs.c.story_id.in_(
        sa.select(story_members.c.story_id).where(story_members.c.article_id == article_id))))


def _prune_retired_outputs() -> sa.Delete:
    return sa.delete(story_outputs).where(story_outputs.c.story_id.in_(
        sa.select(stories.c.id).where(stories.c.status != "active")))


def _article(r: sa.RowMapping) -> Article:
    return Article(
        id=r["id"], text=r["text"], title=r["title"], source=r["source"], url=r["url"],
        published_at=_utc(r["published_at"]), lang=r["lang"], story_id=r["gold_story_id"],
        lean=r["lean"],
    )
