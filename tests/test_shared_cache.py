"""The feature cache shared between processes: rows read back exactly, namespaces and
model builds never mix, it stays bounded, it never changes an answer, and a broken cache
only costs speed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from storyline.models.memo import RowMemo
from storyline.models.shared_cache import SharedCache, cache_key
from storyline.models.types import Article


def test_rows_round_trip_between_handles_and_spaces_stay_apart(tmp_path: Path) -> None:
    a, b = SharedCache(tmp_path / "c.sqlite"), SharedCache(tmp_path / "c.sqlite")
    a.put("embed:m1", [(cache_key("x"), b"\x01\x02"), (cache_key("y"), b"\x03")])
    # A second handle on the same file stands for another process.
    assert b.get("embed:m1", [cache_key("x"), cache_key("y"), cache_key("z")]) == {
        cache_key("x"): b"\x01\x02", cache_key("y"): b"\x03"}
    assert b.get("embed:m2", [cache_key("x")]) == {}
    a.put("embed:m1", [(cache_key("x"), b"other")])  # first write wins: rows are derived
    assert b.get("embed:m1", [cache_key("x")])[cache_key("x")] == b"\x01\x02"
    a.close()
    b.close()


def test_keys_name_their_item() -> None:
    assert cache_key("a") == cache_key("a") != cache_key("b")
    assert cache_key(("s", 1, 2)) != cache_key(("s", 1, 3)) and len(cache_key("a")) == 16


def test_each_space_keeps_about_its_cap(tmp_path: Path) -> None:
    c = SharedCache(tmp_path / "c.sqlite", caps={"doc:": 50})
    for i in range(30):
        c.put("doc:m", [(cache_key(f"{i}-{j}"), b"v") for j in range(10)])
        c.put("embed:m", [(cache_key(f"{i}-{j}"), b"v") for j in range(10)])
    assert 50 <= c.count("doc:m") <= 55  # trimmed every cap/10 writes
    assert c.count("embed:m") == 300  # no cap
    newest = c.get("doc:m", [cache_key("29-9"), cache_key("0-0")])
    assert cache_key("29-9") in newest and cache_key("0-0") not in newest  # oldest out


def test_a_cache_that_cannot_open_only_costs_speed(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()  # a directory where the file should be
    c = SharedCache(tmp_path / "dir.sqlite")
    c.put("s", [(b"k" * 16, b"v")])
    assert c.get("s", [b"k" * 16]) == {}
    calls: list[list[str]] = []

    def compute(keys: list[str]) -> np.ndarray:
        calls.append(keys)
        return np.ones((len(keys), 2), np.float32)

    memo: RowMemo[str] = RowMemo(10, (c, "s"))
    assert memo.get(["a"], 2, compute).tolist() == [[1.0, 1.0]] and calls == [["a"]]


def test_a_rebuilt_model_gets_a_fresh_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "manifest.json").write_text(json.dumps({"m": {"sha": "1"}}))
    first = SharedCache.for_models(tmp_path / "cache", models, "parser-1")
    first.put("s", [(b"k" * 16, b"v")])
    first.close()
    assert SharedCache.for_models(tmp_path / "cache", models, "parser-1").path == first.path
    (models / "manifest.json").write_text(json.dumps({"m": {"sha": "2"}}))
    second = SharedCache.for_models(tmp_path / "cache", models, "parser-1")
    assert second.path != first.path and not first.path.exists()
    assert second.get("s", [b"k" * 16]) == {}
    assert SharedCache.for_models(tmp_path / "cache", models, "parser-2").path != second.path


def test_a_memo_reads_rows_another_process_computed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = {k: rng.standard_normal(4).astype(np.float32) for k in "abcde"}
    calls: list[list[str]] = []

    def compute(keys: list[str]) -> np.ndarray:
        calls.append(list(keys))
        return np.stack([table[k] for k in keys])

    first: RowMemo[str] = RowMemo(10, (SharedCache(tmp_path / "c.sqlite"), "vec"))
    want = first.get(list("abca"), 4, compute)
    assert calls == [list("abc")]
    second: RowMemo[str] = RowMemo(10, (SharedCache(tmp_path / "c.sqlite"), "vec"))
    got = second.get(list("cbade"), 4, compute)
    assert calls[1:] == [list("de")] and second.shared_hits == 3
    np.testing.assert_array_equal(got[:3], want[[2, 1, 0]])
    np.testing.assert_array_equal(got, np.stack([table[k] for k in "cbade"]))


def test_actors_from_cached_parses_equal_actors_from_fresh_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from storyline.models.actors import SpacyActorExtractor

    arts = [
        Article(id="a1", title="Putin warns NATO over Ukraine",
                text="Russian President Vladimir Putin on Friday warned NATO against "
                     "expanding east. \"We will respond,\" Putin told reporters in Moscow. "
                     "NATO Secretary General Jens Stoltenberg said the alliance was calm."),
        Article(id="a2", title="NATO rejects Kremlin demands",
                text="The North Atlantic Treaty Organization rejected the Kremlin's demands. "
                     "Stoltenberg said Mr. Putin could not veto membership."),
    ]
    cache = tmp_path / "c.sqlite"
    plain = SpacyActorExtractor().extract(arts)
    writer = SpacyActorExtractor(shared=SharedCache(cache))
    assert writer.extract(arts) == plain
    reader = SpacyActorExtractor(writer.nlp, shared=SharedCache(cache))

    def no_parse(*_: object, **__: object) -> None:
        raise AssertionError("parsed again: the docs should come from the cache file")

    monkeypatch.setattr(writer.nlp, "pipe", no_parse)
    assert reader.extract(arts) == plain


@pytest.mark.parametrize("bad", [b"", b"not a doc"])
def test_an_unreadable_parse_row_is_parsed_again(tmp_path: Path, bad: bytes) -> None:
    from storyline.models.actors import SpacyActorExtractor

    art = Article(id="a", title="Biden meets Macron", text="Joe Biden met Emmanuel Macron.")
    cache = SharedCache(tmp_path / "c.sqlite")
    ext = SpacyActorExtractor(shared=cache)
    cache.put(ext._space, [(cache_key(art.full_text), bad)])
    assert ext.extract([art]) == SpacyActorExtractor().extract([art])
