"""storyline.index: the Store (SQLite), the FAISS vector index and story clustering."""

from storyline.index.store import IngestItem, SQLiteStore, Store
from storyline.index.types import Change, IngestResult, Story, StoryHistory
from storyline.index.vectors import VectorIndex

__all__ = [
    "Change",
    "IngestItem",
    "IngestResult",
    "SQLiteStore",
    "Store",
    "Story",
    "StoryHistory",
    "VectorIndex",
]
