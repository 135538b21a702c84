"""Undated articles: the story clusterer places one at the time the store first ingested it,
online and when it loads the store at start, so the stories of undated articles do not
depend on when the process last restarted; ad hoc sets place theirs at the set's latest
publication time, so their partition does not depend on when they are asked for.

The stores get an injectable clock (``clock=``): it decides ``ingested_at``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from storyline.index.store import IngestItem, SQLiteStore, Store
from storyline.index.stories import ClusterParams, StoryClusterer
from storyline.models.types import Article
from storyline.service.pipeline import Pipeline

T0 = datetime(2024, 3, 5, 6, 0, tzinfo=UTC)
DIM = 384
#: online assignment only, refine on demand
PARAMS = ClusterParams(refine_every=0)


class Clock:
    """A store clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


OpenStore = Callable[[Clock], Store]


@pytest.fixture()
def open_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OpenStore]:
    """``open_store(clock)``: this test's one database, opened with ``clock`` (a second
    call opens the same database again: a restart)."""
    url = request.getfixturevalue("pg_databases").create() if backend == "postgres" else None
    opened: list[Store] = []

    def open_(clock: Clock) -> Store:
        if url is None:
            store: Store = SQLiteStore(tmp_path / "db.sqlite", clock=clock)
        else:
            from storyline.index.pg import PostgresStore

            store = PostgresStore(url, clock=clock)
        opened.append(store)
        return store

    yield open_
    for st in opened:
        st.close()


def _unit(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    return (v / np.linalg.norm(v)).astype(np.float32)


_BASE = np.random.default_rng(7).standard_normal(DIM)


def _vec(k: int) -> npt.NDArray[np.float32]:
    """Vectors of one event: pairwise cosine about 0.98."""
    return _unit(_BASE + 0.15 * np.random.default_rng(100 + k).standard_normal(DIM))


def _art(aid: str, k: int, published_at: datetime | None = None) -> Article:
    return Article(id=aid, title=f"Harbour bridge closed after crane collapse ({k})",
                   text=f"A crane collapsed onto the harbour bridge, report {k}.",
                   source=f"Outlet {k}", published_at=published_at)


def _ingest(store: Store, *arts: tuple[Article, int]) -> None:
    store.ingest([IngestItem(a, _vec(k)) for a, k in arts], "test")


def _stories(store: Store, ids: list[str]) -> dict[str, str]:
    got = store.story_of(ids)
    assert set(got) == set(ids)
    return got



# -- the clusterer, online and after a restart ----------------------------------------------
@pytest.mark.both_backends
def test_undated_articles_days_apart_stay_apart_after_a_restart(open_store: OpenStore) -> None:
    clock = Clock(T0)
    store = open_store(clock)
    x, y, z = _art("x", 1), _art("y", 2), _art("z", 3)
    _ingest(store, (x, 1))
    clu = StoryClusterer(store, params=PARAMS)
    clu.assign(["x"])
    clock.now = T0 + timedelta(days=5)
    _ingest(store, (y, 2))
    clu.assign(["y"])
    before = _stories(store, ["x", "y"])
    assert before["x"] != before["y"]  # five days apart: past the 36-hour window
    clu.refine(full=True)
    assert _stories(store, ["x", "y"]) == before
    store.close()

    clock.now = T0 + timedelta(days=5, hours=2)  # restarted two hours after y came in
    store = open_store(clock)
    again = StoryClusterer(store, params=PARAMS)  # rebuilt from the store
    assert {i: again.story_of(i) for i in ("x", "y")} == before
    again.refine(full=True)
    assert _stories(store, ["x", "y"]) == before
    # a similar undated article now joins y's story (two hours), not x's (five days)
    _ingest(store, (z, 3))
    assert again.assign(["z"]) == {"z": before["y"]}
    again.refine(full=True)
    assert _stories(store, ["x", "y", "z"]) == {**before, "z": before["y"]}


@pytest.mark.both_backends
def test_undated_articles_hours_apart_stay_together_after_a_restart(
    open_store: OpenStore,
) -> None:
    clock = Clock(T0)
    store = open_store(clock)
    _ingest(store, (_art("x", 1), 1))
    clu = StoryClusterer(store, params=PARAMS)
    clu.assign(["x"])
    clock.now = T0 + timedelta(hours=3)
    _ingest(store, (_art("y", 2), 2))
    clu.assign(["y"])
    before = _stories(store, ["x", "y"])
    assert before["x"] == before["y"]
    store.close()

    clock.now = T0 + timedelta(days=10)  # restarted ten days later
    store = open_store(clock)
    again = StoryClusterer(store, params=PARAMS)
    again.refine(full=True)
    assert _stories(store, ["x", "y"]) == before
    # an undated article ingested now is ten days after them: a story of its own
    _ingest(store, (_art("z", 3), 3))
    z = again.assign(["z"])["z"]
    assert z != before["x"]
    again.refine(full=True)
    assert _stories(store, ["x", "y", "z"]) == {**before, "z": z}


@pytest.mark.both_backends
def test_an_article_corrected_to_undated_takes_its_first_ingest_time(
    open_store: OpenStore,
) -> None:
    """A metadata update that drops the publication time: the article's time becomes the
    time it was first ingested (not the time of the update, nor the clusterer's clock),
    online and after a restart."""
    clock = Clock(T0)
    store = open_store(clock)
    x = _art("x", 1, published_at=T0 - timedelta(days=10))  # ingested at T0
    _ingest(store, (x, 1), (_art("d", 2, published_at=T0 + timedelta(hours=1)), 2))
    clu = StoryClusterer(store, params=PARAMS)
    clu.assign(["x", "d"])
    clock.now = T0 + timedelta(days=5)
    _ingest(store, (_art("a", 3), 3))  # undated, ingested five days after x
    clu.assign(["a"])
    first = _stories(store, ["x", "d", "a"])
    assert len(set(first.values())) == 3
    # the outlet withdraws x's date (same content: a metadata update)
    assert store.ingest([IngestItem(replace(x, published_at=None), _vec(1))], "test")[0].outcome \
        == "updated"
    assert store.ingested_ts(["x"]) == {"x": T0.timestamp()}
    clu.assign(["x"])
    clu.refine(full=True)
    now = _stories(store, ["x", "d", "a"])
    assert now["x"] == now["d"] != now["a"]  # at T0, an hour from d, five days from a
    store.close()

    clock.now = T0 + timedelta(days=30)
    store = open_store(clock)
    again = StoryClusterer(store, params=PARAMS)
    again.refine(full=True)
    assert _stories(store, ["x", "d", "a"]) == now


@pytest.mark.both_backends
def test_ingest_time_is_the_first_ingest(open_store: OpenStore) -> None:
    """``ingested_ts`` is the first ingest: updates keep it, and a duplicate promoted to
    a stored article has the time its record was first made (a re-send keeps it)."""
    clock = Clock(T0)
    store = open_store(clock)
    a = _art("a", 1)
    _ingest(store, (a, 1))
    clock.now = T0 + timedelta(hours=1)
    dup = replace(a, id="b", source="Elsewhere")
    assert store.ingest([IngestItem(dup, _vec(1))], "test")[0].outcome == "duplicate"
    clock.now = T0 + timedelta(hours=2)
    store.ingest([IngestItem(replace(dup, url="https://example.com/b"), _vec(1))], "test")
    clock.now = T0 + timedelta(hours=3)
    store.ingest([IngestItem(replace(a, source="Renamed"), _vec(1))], "test")  # metadata
    assert store.ingested_ts(["a", "missing"]) == {"a": T0.timestamp()}
    clock.now = T0 + timedelta(hours=4)
    promoted: list[str] = []
    store.ingest([IngestItem(replace(a, text=a.text + " More."), _vec(2))], "test",
                 promoted=promoted)  # new content: b keeps the old one as a stored article
    assert promoted == ["b"]
    assert store.ingested_ts(["a", "b"]) == {
        "a": T0.timestamp(), "b": (T0 + timedelta(hours=1)).timestamp()}


def test_undated_at_gives_every_undated_article_one_time(tmp_path: Path) -> None:
    """The ad hoc seam: ``undated_at`` overrides the ingest time; dated articles keep theirs."""
    clock = Clock(T0)
    store = SQLiteStore(tmp_path / "db.sqlite", clock=clock)
    try:
        _ingest(store, (_art("x", 1), 1), (_art("d", 3, T0 + timedelta(days=9)), 3))
        clock.now = T0 + timedelta(days=5)
        _ingest(store, (_art("y", 2), 2))
        clu = StoryClusterer(store, params=PARAMS, undated_at=(T0 + timedelta(days=9)).timestamp())
        clu.assign(["x", "y", "d"])
        clu.refine(full=True)
        got = _stories(store, ["x", "y", "d"])
        assert got["x"] == got["y"] == got["d"]
    finally:
        store.close()


# -- ad hoc sets -------------------------------------------------------------------------------
VOLCANO = [
    ("Reuters", 0.0, "Volcano erupts near Grindavik in Iceland",
     "A volcano on Iceland's Reykjanes peninsula erupted on Tuesday, sending lava fountains "
     "into the night sky near the fishing town of Grindavik. Residents had been evacuated "
     "days earlier after a swarm of earthquakes."),
    ("BBC", 2.5, "Iceland eruption: lava flows towards evacuated town",
     "Lava from a fissure eruption in south-west Iceland flowed towards Grindavik, whose "
     "4,000 residents were evacuated. The Icelandic Met Office said the eruption on the "
     "Reykjanes peninsula was the most powerful so far."),
    ("AP", 5.0, "Iceland's Blue Lagoon closes as volcanic eruption continues",
     "The Blue Lagoon spa closed as an eruption near Grindavik on Iceland's Reykjanes "
     "peninsula continued to spew lava. Civil protection officials said flights at Keflavik "
     "airport were not affected by the volcano."),
]


def test_an_ad_hoc_undated_article_is_placed_at_the_sets_latest_time(
    pipeline: Pipeline,
) -> None:
    """Two dated reports of an eruption in 2024 and an undated third: the undated one is
    clustered at the set's latest publication time, so it joins them (at the time of the
    request, years later, it would stand alone, and the answer would depend on when the
    set is sent)."""
    arts = [Article(id=f"v{k}", title=title, text=text, source=outlet,
                    published_at=T0 + timedelta(hours=hours) if k < 2 else None)
            for k, (outlet, hours, title, text) in enumerate(VOLCANO)]
    views: Any = pipeline.summarise_articles(arts)
    assert len(views) == 1
    assert sorted(views[0].story.article_ids) == ["v0", "v1", "v2"]
