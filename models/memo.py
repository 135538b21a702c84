"""An LRU of per-item result rows, for stages whose answer for an item depends on that
item only (each text or target runs alone, unpadded): the sentence embedder and the
target-sentiment scorer put one in front of their model. Optionally backed by a
``SharedCache`` namespace, which other processes (and later runs) read and fill too."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput, ModelUnavailable

if TYPE_CHECKING:
    from storyline.models.shared_cache import SharedCache

__all__ = ["RowMemo"]

K = TypeVar("K", bound=Hashable)


class RowMemo(Generic[K]):
    """The rows of the last ``size`` distinct keys; ``hits`` / ``misses`` count items."""

    def __init__(self, size: int, shared: tuple[SharedCache, str] | None = None) -> None:
        if size < 0:
            raise InvalidInput("cache size must be >= 0")
        self._size = size
        self._shared = shared
        #: rows found in the shared tier (they count as misses of this process's memo)
        self.shared_hits = 0
        self._rows: OrderedDict[K, npt.NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def put(self, keys: Sequence[K], rows: npt.ArrayLike) -> None:
        """Remember rows computed elsewhere (the most recent last)."""
        arr = np.asarray(rows, dtype=np.float32)
        with self._lock:
            for key, row in zip(keys, arr, strict=True):
                if self._size:
                    self._rows[key] = row.copy()
                    self._rows.move_to_end(key)
            while len(self._rows) > self._size:
                self._rows.popitem(last=False)

    def get(
        self, keys: Sequence[K], width: int, compute: Callable[[list[K]], npt.ArrayLike]
    ) -> npt.NDArray[np.float32]:
        """``[len(keys), width]``: remembered rows, and ``compute`` (called once, outside the
        lock, with each missing key once) for the rest."""
        out = np.empty((len(keys), width), dtype=np.float32)
        todo: dict[K, list[int]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                row = self._rows.get(key)
                if row is None:
                    todo.setdefault(key, []).append(i)
                else:
                    self._rows.move_to_end(key)
                    out[i] = row
            # a key repeated within the call is computed once: the repeats count as hits
            self.hits += len(keys) - len(todo)
            self.misses += len(todo)
        if todo and self._shared is not None:
            todo = self._from_shared(todo, out, width)
        if todo:
            fresh = np.asarray(compute(list(todo)), dtype=np.float32)
            if fresh.shape != (len(todo), width):
                raise ModelUnavailable(
                    f"model returned shape {fresh.shape}, expected ({len(todo)}, {width})")
            self._keep(todo, fresh, out)
            if self._shared is not None:
                from storyline.models.shared_cache import cache_key

                cache, space = self._shared
                cache.put(space, ((cache_key(k), np.ascontiguousarray(row).tobytes())
                                  for k, row in zip(todo, fresh, strict=True)))
        return out

    def _from_shared(self, todo: dict[K, list[int]], out: npt.NDArray[np.float32],
                     width: int) -> dict[K, list[int]]:
        """Fill ``out`` from the shared tier; the keys still to compute."""
        from storyline.models.shared_cache import cache_key

        assert self._shared is not None
        cache, space = self._shared
        names = {k: cache_key(k) for k in todo}
        found = cache.get(space, list(names.values()))
        got: dict[K, list[int]] = {}
        rows = []
        for k, idx in todo.items():
            raw = found.get(names[k])
            if raw is not None and len(raw) == 4 * width:
                got[k] = idx
                rows.append(np.frombuffer(raw, dtype=np.float32))
        if got:
            self._keep(got, np.stack(rows), out)
            with self._lock:
                self.shared_hits += len(got)
        return {k: v for k, v in todo.items() if k not in got}

    def _keep(self, keys: dict[K, list[int]], rows: npt.NDArray[np.float32],
              out: npt.NDArray[np.float32]) -> None:
        with self._lock:
            for (key, idx), row in zip(keys.items(), rows, strict=True):
                out[idx] = row
                if self._size:
                    self._rows[key] = row.copy()
            while len(self._rows) > self._size:
                self._rows.popitem(last=False)
