"""Per-item model results shared between processes and kept across restarts.

The in-memory memos (``RowMemo``, the parsed-doc LRU) live in one process. The HTTP
service runs its models in two child processes (requests; ingest and the idle-time
warmer), so what the warmer computed for an article (its spaCy parse, its sentences'
vectors, the sentiment of each actor mention) was out of reach of a summary asked for a
moment later in the other process: a first-time 3-article analysis cost ~430 ms cold
against ~45 ms with those results at hand (``bench/RESULTS.md``). This is a second tier
behind the memos: one SQLite file (WAL, several processes may read and write) of small
binary rows, namespaced by what produced them.

Derived data only. The file's name carries a fingerprint of the built models
(``manifest.json``) and of the parser, so a rebuilt model never reads rows another model
wrote; each namespace keeps about its last ``cap`` rows (oldest written first out). Any
error reading or writing it is logged once and the caller computes as if it were absent:
the cache can make an answer faster, never different or missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["SharedCache", "cache_key"]

log = logging.getLogger(__name__)

#: bump when what a namespace stores changes shape
FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    seq INTEGER PRIMARY KEY,
    space TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    UNIQUE (space, key)
);
CREATE INDEX IF NOT EXISTS rows_space_seq ON rows (space, seq);
"""


def cache_key(item: object) -> bytes:
    """16 bytes naming ``item`` (a string, or a tuple of strings and ints)."""
    raw = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else repr(item).encode(
        "utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=16).digest()


class SharedCache:
    """``space -> key -> bytes`` in one SQLite file; see the module docstring.

    ``caps``: rows kept per space, by space name or name prefix (``{"doc:": 10_000}``).
    """

    def __init__(self, path: Path, *, caps: dict[str, int] | None = None,
                 timeout_s: float = 2.0) -> None:
        self.path = path
        self.caps = dict(caps or {})
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._broken = False
        self._writes: dict[str, int] = {}

    @classmethod
    def for_models(cls, cache_dir: Path, models_dir: Path, parser: str,
                   caps: dict[str, int] | None = None) -> SharedCache:
        """The cache file for the models built in ``models_dir`` (older ones removed)."""
        h = hashlib.sha256(f"{FORMAT}|{parser}|".encode())
        manifest = models_dir / "manifest.json"
        h.update(manifest.read_bytes() if manifest.exists() else b"no manifest")
        name = f"features-{h.hexdigest()[:16]}.sqlite"
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            for old in cache_dir.glob("features-*.sqlite*"):
                if not old.name.startswith(name):
                    old.unlink(missing_ok=True)
        except OSError as exc:  # read-only data dir: the cache disables itself on first use
            log.warning("feature cache in %s: %s", cache_dir, exc)
        return cls(cache_dir / name, caps=caps)

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is None and not self._broken:
            try:
                conn = sqlite3.connect(str(self.path), timeout=self._timeout_s,
                                       check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                self._conn = conn
            except sqlite3.Error as exc:
                self._disable(exc)
        return self._conn

    def _disable(self, exc: BaseException) -> None:
        if not self._broken:
            log.warning("feature cache %s disabled: %s", self.path, exc)
        self._broken = True
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _cap(self, space: str) -> int | None:
        """The cap of ``space``: ``caps`` by exact name, else by the longest prefix."""
        if space in self.caps:
            return self.caps[space]
        best = max((p for p in self.caps if space.startswith(p)), key=len, default=None)
        return None if best is None else self.caps[best]

    def get(self, space: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The stored values of those ``keys`` that have one."""
        if not keys:
            return {}
        out: dict[bytes, bytes] = {}
        with self._lock:
            conn = self._connect()
            if conn is None:
                return out
            try:
                uniq = list(dict.fromkeys(keys))
                for i in range(0, len(uniq), 500):  # SQLite's bound-parameter limit
                    part = uniq[i:i + 500]
                    marks = ",".join("?" * len(part))
                    for key, value in conn.execute(
                        f"SELECT key, value FROM rows WHERE space = ? AND key IN ({marks})",
                        (space, *part),
                    ):
                        out[bytes(key)] = bytes(value)
            except sqlite3.OperationalError as exc:  # busy past the timeout: compute instead
                log.debug("feature cache read skipped: %s", exc)
            except sqlite3.Error as exc:
                self._disable(exc)
        return out

    def put(self, space: str, items: Iterable[tuple[bytes, bytes]]) -> None:
        rows = [(space, k, v) for k, v in items]
        if not rows:
            return
        with self._lock:
            conn = self._connect()
            if conn is None:
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "INSERT OR IGNORE INTO rows (space, key, value) VALUES (?, ?, ?)", rows)
                    cap = self._cap(space)
                    every = max(1, cap // 10) if cap else 0
                    # Trim now and then, not on every write: a tenth over the cap at most.
                    # A handle's first write trims too: CLI runs are short-lived processes
                    # that each wrote fewer rows than ``every``, and the file grew without
                    # bound when no long-running process trimmed it.
                    self._writes[space] = self._writes.get(space, every) + len(rows)
                    if cap and self._writes[space] >= every:
                        self._writes[space] = 0
                        conn.execute(
                            "DELETE FROM rows WHERE space = ? AND seq IN (SELECT seq FROM rows"
                            " WHERE space = ? ORDER BY seq DESC LIMIT -1 OFFSET ?)",
                            (space, space, cap))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:  # busy: this write is only an optimisation
                log.debug("feature cache write skipped: %s", exc)
            except sqlite3.Error as exc:
                self._disable(exc)

    def count(self, space: str) -> int:
        with self._lock:
            conn = self._connect()
            if conn is None:
                return 0
            row = conn.execute("SELECT count(*) FROM rows WHERE space = ?", (space,)).fetchone()
            return int(row[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
