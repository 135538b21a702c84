"""An LRU of per-item result rows, for stages whose answer for an item depends on that
item only (each text or target runs alone, unpadded): the sentence embedder and the
target-sentiment scorer put one in front of their model."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput, ModelUnavailable

__all__ = ["RowMemo"]

K = TypeVar("K", bound=Hashable)


class RowMemo(Generic[K]):
    """The rows of the last ``size`` distinct keys; ``hits`` / ``misses`` count items."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise InvalidInput("cache size must be >= 0")
        self._size = size
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
        if todo:
            fresh = np.asarray(compute(list(todo)), dtype=np.float32)
            if fresh.shape != (len(todo), width):
                raise ModelUnavailable(
                    f"model returned shape {fresh.shape}, expected ({len(todo)}, {width})")
            with self._lock:
                for (key, rows), row in zip(todo.items(), fresh, strict=True):
                    out[rows] = row
                    if self._size:
                        self._rows[key] = row.copy()
                while len(self._rows) > self._size:
                    self._rows.popitem(last=False)
        return out
