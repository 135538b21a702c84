"""The store, on SQLite and PostgreSQL: idempotent ingest, updates, duplicates, atomic batches,
persistence, outputs, digests and errors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from storyline.index.store import IngestItem
from storyline.index.types import ArticleBrief, Story
from storyline.models.errors import InvalidArticle, NotFound
from storyline.models.types import Article

pytestmark = pytest.mark.both_backends
MakeStore = Callable[..., Any]


def _item(aid: str, text: str, title: str = "", seed: int = 0) -> IngestItem:
    v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return IngestItem(Article(id=aid, text=text, title=title), v / np.linalg.norm(v), ("nato",))


def test_insert_unchanged_update_duplicate(make_store: MakeStore) -> None:
    st = make_store()
    r = st.ingest([_item("a", "alpha text"), _item("b", "beta text", seed=1)], "m")
    assert [x.outcome for x in r] == ["inserted", "inserted"]
    r = st.ingest([_item("a", "alpha text")], "m")
    assert r[0].outcome == "unchanged"
    r = st.ingest([_item("a", "alpha text, corrected", seed=2)], "m")
    assert r[0].outcome == "updated"
    assert st.get_article("a").text == "alpha text, corrected"
    _, vec = st.embeddings(["a"])
    assert np.allclose(vec[0], _item("a", "", seed=2).vector)
    # same content under a new id: recorded as a duplicate, not stored twice
    r = st.ingest([_item("b-copy", "  Beta   TEXT ")], "m")
    assert r[0].outcome == "duplicate" and r[0].duplicate_of == "b"
    assert st.count_articles() == 2
    assert st.duplicates_of("b") == ["b-copy"]
    assert st.canonical_id("b-copy") == "b"
    assert [c.op for c in st.changes_since(0)] == ["upsert", "upsert", "upsert"]


def test_reads_do_not_wait_for_an_open_write_transaction(make_store: MakeStore) -> None:
    """Lookups (related coverage, stored summaries) must not queue behind a writer's
    transaction and its fsync: a read answers while another thread holds one open."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    st = make_store()
    st.ingest([_item("a", "alpha")], "m")
    inside, release = threading.Event(), threading.Event()

    def writer() -> None:
        with st.transaction():
            inside.set()
            release.wait(10)

    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(writer)
        try:
            assert inside.wait(5)
            read = pool.submit(st.count_articles)
            assert read.result(timeout=5) == 1
            assert st.get_article("a").text == "alpha"
        finally:
            release.set()
        held.result(timeout=10)
    st.ingest([_item("b", "beta", seed=1)], "m")  # and writes still go through afterwards
    assert st.count_articles() == 2


def test_batch_is_atomic(make_store: MakeStore) -> None:
    st = make_store()
    bad = IngestItem(Article(id="bad", text="t"), np.array([np.nan, 1.0], np.float32))
    with pytest.raises(InvalidArticle):
        st.ingest([_item("good", "fine"), bad], "m")
    assert st.count_articles() == 0
    assert st.changes_since(0) == []


def test_persistence_and_delete(make_store: MakeStore) -> None:
    st = make_store()
    st.ingest([_item("a", "alpha"), _item("b", "beta", seed=1)], "m")
    st.close()
    st = make_store()
    assert st.article_ids() == ["a", "b"]
    assert st.entities(["a"]) == {"a": ("nato",)}
    st.delete_article("a")
    assert st.article_ids() == ["b"]
    assert st.embeddings(["a"])[0] == []
    assert st.changes_since(2)[-1].op == "delete"
    with pytest.raises(NotFound):
        st.delete_article("a")
    with pytest.raises(NotFound):
        st.get_article("a")


def test_outputs_and_digests_roundtrip(make_store: MakeStore) -> None:
    st = make_store()
    assert st.get_output("s1", "summary") is None
    st.put_output("s1", "summary", "h1", '{"x": 1}')
    assert st.get_output("s1", "summary") == ("h1", '{"x": 1}')
    st.put_digests("2021-10-18", {"md": "# hi"})
    assert st.get_digest("2021-10-18", "md") == "# hi"
    with pytest.raises(NotFound):
        st.get_digest("2021-10-19", "md")


def test_unknown_ids_and_bad_input_raise_the_same_errors(make_store: MakeStore) -> None:
    st = make_store()
    st.ingest([_item("a", "alpha")], "m")
    for call in (
        lambda: st.get_article("nope"),
        lambda: st.delete_article("nope"),
        lambda: st.get_story("s_nope"),
        lambda: st.resolve_story("s_nope"),
        lambda: st.get_digest("2021-01-01", "md"),
    ):
        with pytest.raises(NotFound):
            call()
    assert st.get_articles(["nope", "a"])[0].id == "a"
    assert st.canonical_id("nope") is None
    assert st.story_of(["nope"]) == {} and st.entities(["nope"]) == {}
    assert st.embeddings(["nope"])[0] == []
    flat = IngestItem(Article(id="m", text="matrix"), np.ones((2, 2), np.float32))
    with pytest.raises(InvalidArticle):
        st.ingest([flat], "m")
    assert st.article_ids() == ["a"] and st.last_seq() == 1


def test_ordering_and_stories_roundtrip(make_store: MakeStore) -> None:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2024, 3, 5, 6, 0, tzinfo=UTC)
    st = make_store()
    # byte order, as SQLite compares: upper case before lower case, '-' before '_'
    ids = ["b", "B", "a_1", "a-1", "a", "Z9"]
    st.ingest([_item(i, f"text {k}", seed=k) for k, i in enumerate(ids)], "m")
    assert st.article_ids() == sorted(ids)
    assert [a.id for a in st.iter_articles(batch=2)] == sorted(ids)
    dated = [
        IngestItem(Article(id=f"d{k}", text=f"dated {k}", published_at=t0 + timedelta(hours=k),
                           source=f"S{k}"), _item("x", "", seed=k).vector)
        for k in range(3)
    ]
    st.ingest(dated, "m")
    assert st.articles_between(t0, t0 + timedelta(hours=2)) == ["d0", "d1"]
    assert st.articles_between(None, None) == ["d0", "d1", "d2"]
    assert st.get_article("d1").published_at == t0 + timedelta(hours=1)
    assert st.published_ts(["d0", "a"]) == {"d0": t0.timestamp(), "a": None}
    centroid = np.arange(4, dtype=np.float32)
    # an undated member sorts first, as SQLite orders NULL
    s1 = Story("s_1", "one", ["d2", "a", "d0"], t0, t0 + timedelta(hours=2), {"S2": 1, "S0": 1},
               centroid=centroid, content_hash="h1", extra={"dirty": False, "size": 3})
    s2 = Story("s_2", "undated", ["b"], None, None, {})
    with st.transaction() as db:
        st.save_story(s1, db)
        st.save_story(s2, db)
        st.record_history("s_0", "s_1", "merge", db)
    got = st.get_story("s_1")
    assert got.article_ids == ["a", "d0", "d2"]
    assert (got.label, got.first_at, got.last_at) == ("one", t0, t0 + timedelta(hours=2))
    assert list(got.outlets.items()) == [("S0", 1), ("S2", 1)]
    assert got.centroid is not None and np.array_equal(got.centroid, centroid)
    assert got.extra == {"dirty": False, "size": 3} and got.content_hash == "h1"
    # an undated story sorts last (SQLite: NULL last in DESC order)
    assert [s.id for s in st.list_stories()] == ["s_1", "s_2"]
    assert [s.id for s in st.list_stories(min_size=2)] == ["s_1"]
    assert [s.id for s in st.list_stories(limit=1, offset=1)] == ["s_2"]
    assert st.count_stories() == 2 and st.count_stories("merged") == 0
    assert st.story_of(["d0", "b", "B"]) == {"d0": "s_1", "b": "s_2"}
    # history: idempotent, and old ids resolve to the active story
    st.record_history("s_0", "s_1", "merge")
    assert [(h.old_id, h.new_id, h.kind) for h in st.story_history("s_1")] == [
        ("s_0", "s_1", "merge")
    ]
    st.save_story(Story("s_0", "old", [], t0, t0, {}, status="merged"))
    assert st.resolve_story("s_0") == ["s_1"]
    # a rolled-back transaction leaves nothing behind
    with pytest.raises(RuntimeError), st.transaction() as db:
        st.save_story(Story("s_3", "gone", ["B"], None, None, {}), db)
        raise RuntimeError("abort")
    with pytest.raises(NotFound):
        st.get_story("s_3")
    # outputs and digests are replaced in place
    st.put_output("s_1", "summary", "h1", "a")
    st.put_output("s_1", "summary", "h2", "b")
    assert st.get_output("s_1", "summary") == ("h2", "b")
    st.put_digests("2024-03-05", {"md": "one"})
    st.put_digests("2024-03-05", {"md": "two"})
    st.put_digests("2024-03-04", {"html": "<p>"})
    assert st.get_digest("2024-03-05", "md") == "two"
    assert st.digest_dates() == ["2024-03-04", "2024-03-05"]
    # deleting an article drops its membership and vector, and feeds a delete; its
    # duplicate keeps the content as a stored article (an upsert)
    st.ingest([_item("d0-copy", "dated 0")], "m")
    assert st.duplicates_of("d0") == ["d0-copy"] and st.count_duplicates() == 1
    before = st.last_seq()
    assert st.delete_article("d0") == ["d0-copy"]
    assert st.count_duplicates() == 0 and st.get_story("s_1").article_ids == ["a", "d2"]
    assert st.get_article("d0-copy").text == "dated 0"
    assert [(c.seq, c.article_id, c.op) for c in st.changes_since(before)] == [
        (before + 1, "d0-copy", "upsert"), (before + 2, "d0", "delete")
    ]


def test_briefs_carry_title_source_time_and_story_without_text(make_store: MakeStore) -> None:
    st = make_store()
    t0 = datetime(2024, 3, 1, 12, tzinfo=UTC)
    arts = [Article("a", "alpha text", "Alpha", "Outlet A", published_at=t0),
            Article("b", "beta text", "", None)]
    st.ingest([IngestItem(a, _item(a.id, a.text, seed=i).vector, ())
               for i, a in enumerate(arts)], "m")
    with st.transaction() as db:
        st.save_story(Story("s_1", "one", ["a"], t0, t0, {"Outlet A": 1}), db)
    got = st.briefs(["b", "missing", "a"])
    assert set(got) == {"a", "b"}
    assert got["a"] == ArticleBrief("a", "Alpha", "Outlet A", t0, "s_1")
    assert got["b"] == ArticleBrief("b", "", None, None, None)
    assert st.briefs([]) == {}


def test_query_context_follows_duplicates_and_orders_the_story(make_store: MakeStore) -> None:
    from datetime import timedelta

    st = make_store()
    t0 = datetime(2024, 3, 1, 12, tzinfo=UTC)
    arts = [Article("a", "alpha text", "Alpha", "Outlet A", published_at=t0),
            Article("b", "beta text", "Beta", published_at=t0 + timedelta(hours=1)),
            Article("c", "gamma text"), Article("d", "delta text")]
    st.ingest([IngestItem(a, _item(a.id, a.text, seed=i).vector, ())
               for i, a in enumerate(arts)], "m")
    st.ingest([_item("a-copy", "alpha text", title="Alpha")], "m")
    assert st.duplicates_of("a") == ["a-copy"]
    with st.transaction() as db:
        st.save_story(Story("s_1", "one", ["b", "a", "c"], t0, t0, {}), db)
    ctx = st.query_context("a-copy")
    assert ctx is not None and ctx.brief == st.briefs(["a"])["a"]
    assert np.array_equal(ctx.vector, st.embeddings(["a"])[1][0])
    assert ctx.duplicates == ("a-copy",)
    # the order get_story gives: undated first, then by time
    assert ctx.story_members == ("c", "a", "b") == tuple(st.get_story("s_1").article_ids)
    assert ctx.briefs == st.briefs(["a", "b", "c"])  # the story's members
    # candidates' briefs come with it (unknown ids left out), the members' still
    with_cands = st.query_context("a", ["d", "missing", "b"])
    assert with_cands is not None and with_cands.briefs == st.briefs(["a", "b", "c", "d"])
    lone = st.query_context("d", ["c"])
    assert lone is not None and lone.brief.story_id is None
    assert (lone.duplicates, lone.story_members) == ((), ())
    assert lone.briefs == st.briefs(["c"])
    assert st.query_context("missing") is None


def _dup(aid: str, text: str, source: str, seed: int = 9) -> IngestItem:
    a = Article(id=aid, text=text, source=source, url=f"http://{source}/{aid}",
                published_at=datetime(2021, 10, 19, tzinfo=UTC))
    return IngestItem(a, _item(aid, text, seed=seed).vector)


def test_an_update_hands_the_old_content_to_the_duplicates(make_store: MakeStore) -> None:
    """An acknowledged duplicate keeps the content it was sent with when its canonical
    article is updated: the first becomes a stored article (old text, embedding, entities;
    its own source and url), the others repeat it."""
    st = make_store()
    st.ingest([_item("b", "beta text", seed=1), _item("z", "zeta text", seed=3)], "m")
    r = st.ingest([_dup("b-copy", "beta text", "wire"), _dup("b-copy2", "beta text", "feed")],
                  "m")
    assert [x.outcome for x in r] == ["duplicate", "duplicate"]
    seq = st.last_seq()
    promoted: list[str] = []
    r = st.ingest([_item("b", "something else entirely", seed=2)], "m", promoted=promoted)
    assert r[0].outcome == "updated" and promoted == ["b-copy"]
    assert st.get_article("b").text == "something else entirely"
    copy = st.get_article("b-copy")
    assert (copy.text, copy.source, copy.url) == ("beta text", "wire", "http://wire/b-copy")
    assert copy.published_at == datetime(2021, 10, 19, tzinfo=UTC)
    assert np.allclose(st.embeddings(["b-copy"])[1][0], _item("b", "", seed=1).vector)
    assert st.entities(["b-copy"]) == {"b-copy": ("nato",)}
    assert st.canonical_id("b-copy") == "b-copy" and st.canonical_id("b-copy2") == "b-copy"
    assert st.duplicates_of("b") == [] and st.duplicates_of("b-copy") == ["b-copy2"]
    assert sorted(c.article_id for c in st.changes_since(seq)) == ["b", "b-copy"]
    # re-sending it is now a no-op, and its content is a duplicate of it again
    assert st.ingest([_dup("b-copy", "beta text", "wire")], "m")[0].outcome == "unchanged"
    r = st.ingest([_dup("b-copy3", "beta text", "x")], "m")
    assert r[0].duplicate_of == "b-copy"


def test_deleting_a_canonical_article_keeps_its_duplicates(make_store: MakeStore) -> None:
    st = make_store()
    st.ingest([_item("b", "beta text", seed=1)], "m")
    st.ingest([_dup("b-copy", "beta text", "wire"), _dup("b-copy2", "beta text", "feed")], "m")
    assert st.delete_article("b") == ["b-copy"]
    assert st.article_ids() == ["b-copy"]
    assert st.get_article("b-copy").text == "beta text"
    assert st.embeddings(["b-copy"])[0] == ["b-copy"]
    assert st.canonical_id("b-copy2") == "b-copy" and st.count_duplicates() == 1
    assert [(c.article_id, c.op) for c in st.changes_since(1)] == [
        ("b-copy", "upsert"), ("b", "delete")]
    # without duplicates: nothing promoted
    assert st.delete_article("b-copy") == ["b-copy2"]
    assert st.delete_article("b-copy2") == [] and st.count_articles() == 0


def test_deleting_a_duplicate_id_removes_only_its_record(make_store: MakeStore) -> None:
    st = make_store()
    st.ingest([_item("b", "beta text", seed=1)], "m")
    st.ingest([_dup("b-copy", "beta text", "wire")], "m")
    seq = st.last_seq()
    assert st.delete_article("b-copy") == []
    assert st.canonical_id("b-copy") is None and st.duplicates_of("b") == []
    assert st.get_article("b").text == "beta text" and st.last_seq() == seq
    with pytest.raises(NotFound):
        st.delete_article("b-copy")


def test_storing_an_id_recorded_as_a_duplicate_clears_the_record(make_store: MakeStore) -> None:
    st = make_store()
    st.ingest([_item("b", "beta text", seed=1)], "m")
    st.ingest([_dup("b-copy", "beta text", "wire")], "m")
    r = st.ingest([_item("b-copy", "its own text now", seed=4)], "m")
    assert r[0].outcome == "inserted"
    assert st.duplicates_of("b") == [] and st.count_duplicates() == 0
    assert st.delete_article("b") == []  # the old record does not come back to life
    assert st.get_article("b-copy").text == "its own text now"


def _meta(aid: str, text: str, seed: int = 0, **fields: Any) -> IngestItem:
    base: dict[str, Any] = {
        "title": "Alpha title", "source": "Politico", "url": "http://politico/a",
        "published_at": datetime(2021, 10, 17, 14, 18, tzinfo=UTC), "lean": "left",
        "lang": "en", "story_id": "g1"}
    v = _item(aid, "", seed=seed).vector
    return IngestItem(Article(id=aid, text=text, **{**base, **fields}), v, ("nato",))


def test_corrected_metadata_is_an_update_that_keeps_the_vector(make_store: MakeStore) -> None:
    """Finding 6: the same title and text with corrected published_at / source / lean / url
    used to answer ``unchanged`` and drop the correction."""
    st = make_store()
    st.ingest([_meta("a", "alpha text"), _meta("z", "zeta text", seed=3)], "m")
    st.save_story(Story("s1", "", ["a"], None, None, {}))
    st.save_story(Story("s2", "", ["z"], None, None, {}))
    st.put_output("s1", "analysis", "k1", "p1")
    st.put_output("s1", "analysis@2021-10-18T00:00:00+00:00", "k2", "p2")
    st.put_output("s2", "analysis", "k3", "p3")
    seq = st.last_seq()
    # every field the same (the time in another zone is the same instant): no write at all
    same = _meta("a", "alpha text", seed=7, published_at=datetime.fromisoformat(
        "2021-10-17T10:18:00-04:00"))
    assert st.ingest([same], "m")[0].outcome == "unchanged" and st.last_seq() == seq
    fixed = datetime(2021, 10, 20, 9, tzinfo=UTC)
    # (the vector given is not the stored one: a metadata change must not replace it)
    r = st.ingest([_meta("a", "alpha text", seed=7, published_at=fixed,
                         source="Politico Europe", lean="center", url="http://p.eu/a",
                         lang="en-GB", story_id="g2")], "m")
    assert r[0].outcome == "updated"
    got = st.get_article("a")
    assert (got.published_at, got.source, got.lean, got.url, got.lang, got.story_id) == (
        fixed, "Politico Europe", "center", "http://p.eu/a", "en-GB", "g2")
    assert np.allclose(st.embeddings(["a"])[1][0], _item("a", "", seed=0).vector)
    assert st.entities(["a"]) == {"a": ("nato",)}
    assert [(c.article_id, c.op) for c in st.changes_since(seq)] == [("a", "upsert")]
    assert st.articles_between(datetime(2021, 10, 20, tzinfo=UTC), None) == ["a"]
    # the outputs of its story (the API's and the digest's) are stale; others stay
    assert st.get_output("s1", "analysis") is None
    assert st.get_output("s1", "analysis@2021-10-18T00:00:00+00:00") is None
    assert st.get_output("s2", "analysis") == ("k3", "p3")
    # the corrected article re-sent: unchanged again
    seq = st.last_seq()
    again = _meta("a", "alpha text", published_at=fixed, source="Politico Europe",
                  lean="center", url="http://p.eu/a", lang="en-GB", story_id="g2")
    assert st.ingest([again], "m")[0].outcome == "unchanged" and st.last_seq() == seq
    # a title fixed in letter case only (same content hash) is kept too
    cased = _meta("a", "alpha text", title="ALPHA Title", published_at=fixed,
                  source="Politico Europe", lean="center", url="http://p.eu/a",
                  lang="en-GB", story_id="g2")
    assert st.ingest([cased], "m")[0].outcome == "updated"
    assert st.get_article("a").title == "ALPHA Title" and st.count_articles() == 2


def test_a_re_sent_duplicate_keeps_its_metadata_and_leaves_the_canonical(
    make_store: MakeStore,
) -> None:
    from dataclasses import replace

    st = make_store()
    st.ingest([_meta("b", "beta text", title="")], "m")
    canonical = st.get_article("b")
    r = st.ingest([_dup("b-copy", "beta text", "wire")], "m")
    assert r[0].outcome == "duplicate" and r[0].duplicate_of == "b"
    seq = st.last_seq()
    # re-sent with a corrected time and outlet: still a duplicate of b, record updated
    moved = IngestItem(replace(_dup("b-copy", "beta text", "wire2").article,
                               published_at=datetime(2021, 10, 25, tzinfo=UTC)),
                       _item("x", "", seed=5).vector)
    r = st.ingest([moved], "m")
    assert r[0].outcome == "duplicate" and r[0].duplicate_of == "b"
    assert st.get_article("b") == canonical and st.last_seq() == seq
    assert st.duplicates_of("b") == ["b-copy"]
    # the corrected record is what the duplicate becomes when its canonical goes
    assert st.delete_article("b") == ["b-copy"]
    copy = st.get_article("b-copy")
    assert (copy.source, copy.url, copy.published_at) == (
        "wire2", "http://wire2/b-copy", datetime(2021, 10, 25, tzinfo=UTC))


def test_time_bounds_leave_out_undated_stories(make_store: MakeStore) -> None:
    """Finding 10: a story with no dated article was listed as if published 1970-01-01."""
    st = make_store()
    st.ingest([_item("u", "undated text"), _item("d", "dated text", seed=1)], "m")
    st.save_story(Story("s_undated", "", ["u"], None, None, {}))
    when = datetime(2021, 10, 17, tzinfo=UTC)
    st.save_story(Story("s_dated", "", ["d"], when, when, {}))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert [s.id for s in st.list_stories()] == ["s_dated", "s_undated"]  # no bound: all
    assert st.list_stories(since=datetime(1960, 1, 1, tzinfo=UTC),
                           until=epoch.replace(second=1)) == []
    assert st.list_stories(until=epoch.replace(second=1)) == []
    assert [s.id for s in st.list_stories(since=epoch)] == ["s_dated"]
    assert [s.id for s in st.list_stories(until=datetime(2022, 1, 1, tzinfo=UTC))] == [
        "s_dated"]


def test_put_digests_replaces_every_format_of_a_key_and_delete_digest(
    make_store: MakeStore,
) -> None:
    """A digest run stores all its formats as one set: a format the new set lacks is gone
    (no older run's body is left behind), other keys are untouched; delete_digest removes
    every format of one key."""
    st = make_store()
    st.put_digests("2021-10-17", {"json": "{1}", "html": "<p>1", "md": "# 1"})
    st.put_digests("2021-10-18", {"json": "{x}", "html": "<p>x"})
    st.put_digests("2021-10-17", {"json": "{2}", "md": "# 2"})
    assert st.get_digest("2021-10-17", "json") == "{2}"
    assert st.get_digest("2021-10-17", "md") == "# 2"
    with pytest.raises(NotFound):
        st.get_digest("2021-10-17", "html")  # not the first run's page
    assert st.get_digest("2021-10-18", "html") == "<p>x"
    assert st.delete_digest("2021-10-17") is True
    assert st.delete_digest("2021-10-17") is False
    with pytest.raises(NotFound):
        st.get_digest("2021-10-17", "json")
    assert st.digest_dates() == ["2021-10-18"]
    st.put_digests("2021-10-18", {})
    assert st.digest_dates() == []
