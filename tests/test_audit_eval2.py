"""`storyline eval` on held-out-like files in the documented formats (audit: eval 2).

Each file is derived from the shared AllSides / NewsMTSC data (renamed ids, other splits,
duplicates, blank labels) and run through the real command, as the project's owners run
it on their own held-out data: one JSON object as the last line, one-line errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storyline.models.actors import SpacyActorExtractor
from storyline.models.stance import ActorStanceTagger, VaderTargetScorer
from storyline.service.evaluation.stance import evaluate_stance


def _run(models_dir: Path, tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "STORYLINE_DATA_DIR": str(tmp / "data"),
        "STORYLINE_MODELS_DIR": str(models_dir),
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "storyline.service.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=600,
    )


def _no_constant(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON")


def _json(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout  # with --json, the object is all of stdout
    obj = json.loads(lines[-1], parse_constant=_no_constant)
    assert isinstance(obj, dict)
    return obj


def _error(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


@pytest.fixture(scope="module")
def allsides(shared_data: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Four AllSides dev stories (three articles each) and their articles, renamed as a
    held-out file would name them: string ids, string story ids, split ``test``."""
    base = shared_data / "allsides"
    stories = [json.loads(x) for x in (base / "stories.jsonl").read_text("utf-8").splitlines()]
    picked = [s for s in stories if s["split"] == "dev" and len(s["article_ids"]) == 3][:4]
    by_id = {
        a["id"]: a
        for a in map(json.loads, (base / "articles.jsonl").read_text("utf-8").splitlines())
    }
    arts: list[dict[str, Any]] = []
    out_stories = []
    for k, s in enumerate(picked):
        ids = []
        for j, aid in enumerate(s["article_ids"]):
            new = f"h{k}-{j}"
            arts.append({**by_id[aid], "id": new, "story_id": f"s{k}", "split": "test"})
            ids.append(new)
        out_stories.append({**s, "story_id": f"s{k}", "article_ids": ids, "split": "test"})
    return arts, out_stories


# -- retrieval -------------------------------------------------------------------------------
def test_retrieval_duplicate_copy_blank_labels_and_empty_splits(
    tmp_path: Path, models_dir: Path, allsides: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    arts, _ = allsides
    story_a, story_b = arts[:3], arts[3:6]
    # Distractors: articles whose gold label is blank ("" / "  ": unlabelled, not one story)
    # and a story of one article (no query: its split has nothing to score).
    unlabelled = [
        {**arts[6], "story_id": "", "split": "extra"},
        {**arts[7], "story_id": "  ", "split": "extra"},
    ]
    solo = [{**arts[9], "split": "solo"}]
    plain = _write(tmp_path / "plain.jsonl", story_a + story_b + unlabelled + solo)
    # A wire copy: the same text under another id in the same story. It is recorded as a
    # duplicate, never stored, so related coverage can never return it.
    copy = {**story_a[0], "id": "copy-of-h0-0", "source": "Wire"}
    dup = _write(tmp_path / "dup.jsonl", [*story_a, copy, *story_b, *unlabelled, *solo])

    r_plain = _json(
        _run(models_dir, tmp_path, "eval", "retrieval", "--articles", str(plain), "--json")
    )
    r_dup = _json(_run(models_dir, tmp_path, "eval", "retrieval", "--articles", str(dup), "--json"))
    keys = ("recall@1", "recall@2", "recall@5", "mrr", "p@1", "queries")
    assert r_plain["queries"] == 6
    # The copy is no query and no relevant item: the figures are those of the plain file.
    assert {k: r_dup[k] for k in keys} == {k: r_plain[k] for k in keys}
    assert {k: r_dup["baseline"][k] for k in keys} == {k: r_plain["baseline"][k] for k in keys}
    # "extra" holds no gold article; "solo" has one but no query: no figure, not 0.0.
    assert set(r_plain["by_split"]) == {"test", "solo"}
    assert r_plain["by_split"]["solo"]["queries"] == 0
    assert r_plain["by_split"]["solo"]["recall@2"] is None
    assert r_plain["by_split"]["test"]["queries"] == 6


def test_retrieval_without_any_query_is_nothing_to_evaluate(
    tmp_path: Path, models_dir: Path, allsides: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    arts, _ = allsides
    singles = _write(tmp_path / "singles.jsonl", [{**a, "story_id": a["id"]} for a in arts[:4]])
    r = _run(models_dir, tmp_path, "eval", "retrieval", "--articles", str(singles), "--json")
    _error(r, 2, "nothing to evaluate", str(singles))
    assert r.stdout == ""
    # a story whose second article is a copy of the first: one stored article, no query
    copies = _write(tmp_path / "copies.jsonl", [arts[0], {**arts[0], "id": "copy"}, arts[3]])
    r = _run(models_dir, tmp_path, "eval", "retrieval", "--articles", str(copies), "--json")
    _error(r, 2, "nothing to evaluate", str(copies))


def test_eval_reads_articles_up_to_the_configured_length_limit(
    tmp_path: Path, models_dir: Path, allsides: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    # ingest refuses texts over STORYLINE_MAX_ARTICLE_CHARS; the evals read the same limit
    arts, _ = allsides
    long = {**arts[0], "text": "Word " * 400}
    path = _write(tmp_path / "long.jsonl", [long, *arts[1:3]])
    gold = _write(
        tmp_path / "gold.jsonl",
        [{"article_id": arts[1]["id"], "actor": "Biden", "label": "neutral"}],
    )
    for cmd in ("retrieval", "clustering", "stance"):
        extra = ["--gold", str(gold)] if cmd == "stance" else []
        r = _run(
            models_dir,
            tmp_path,
            "eval",
            cmd,
            "--articles",
            str(path),
            *extra,
            "--json",
            STORYLINE_MAX_ARTICLE_CHARS="1000",
        )
        _error(r, 2, "line 1", "text", "1,000")


# -- clustering ------------------------------------------------------------------------------
def test_clustering_blank_and_superseded_labels_are_unlabelled(
    tmp_path: Path, models_dir: Path, allsides: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    arts, _ = allsides
    rows = [
        *arts[:3],
        {**arts[3], "story_id": ""},
        {**arts[6], "story_id": " "},
        {**arts[9], "story_id": "s3"},
        # the same id again, now without a label: the later line is what ingest stores
        {k: v for k, v in arts[9].items() if k != "story_id"},
    ]
    path = _write(tmp_path / "c.jsonl", rows)
    res = _json(_run(models_dir, tmp_path, "eval", "clustering", "--articles", str(path), "--json"))
    assert res["n_articles"] == 3 and res["n_gold"] == 1
    assert res["articles"] == 6


def test_clustering_baselines_on_a_single_gold_article(
    tmp_path: Path, models_dir: Path, allsides: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    arts, _ = allsides
    path = _write(tmp_path / "one.jsonl", arts[:1])
    res = _json(
        _run(
            models_dir,
            tmp_path,
            "eval",
            "clustering",
            "--articles",
            str(path),
            "--baselines",
            "--json",
        )
    )
    assert res["n_articles"] == 1 and res["bcubed_f1"] == 1.0
    assert res["baselines"]["agglomerative"]["n_predicted"] == 1


# -- summaries -------------------------------------------------------------------------------
def test_summaries_take_a_split_the_file_names(
    tmp_path: Path, models_dir: Path, allsides: tuple[list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    arts, stories = allsides
    a = _write(tmp_path / "a.jsonl", arts)
    s = _write(tmp_path / "s.jsonl", stories[:2])
    res = _json(
        _run(
            models_dir,
            tmp_path,
            "eval",
            "summaries",
            "--articles",
            str(a),
            "--stories",
            str(s),
            "--split",
            "test",
            "--json",
        )
    )
    assert res["split"] == "test" and res["n_stories"] == 2
    assert res["rouge1"] > 0
    # the default (dev) finds none: the error names the splits the file has
    r = _run(
        models_dir,
        tmp_path,
        "eval",
        "summaries",
        "--articles",
        str(a),
        "--stories",
        str(s),
        "--json",
    )
    _error(r, 2, "nothing to evaluate", "no dev story", "its splits: test")
    r = _run(
        models_dir,
        tmp_path,
        "eval",
        "summaries",
        "--articles",
        str(a),
        "--stories",
        str(s),
        "--split",
        "tset",
    )
    _error(r, 2, "nothing to evaluate", "--split", "tset", "dev, train or all", "test")


# -- target sentiment ------------------------------------------------------------------------
def test_target_sentiment_warns_when_mentions_disagree_with_offsets(
    tmp_path: Path, models_dir: Path, shared_data: Path
) -> None:
    rows = [
        json.loads(x)
        for x in (shared_data / "newsmtsc" / "devtest_rw.jsonl").read_text("utf-8").splitlines()[:6]
    ]
    good = _write(tmp_path / "good.jsonl", rows)
    # offsets one character off (as from a tool that counts another unit), mention kept
    shifted = [
        {**r, "targets": [{**t, "from": t["from"] + 1, "to": t["to"] + 1} for t in r["targets"]]}
        if k in (1, 4)
        else r
        for k, r in enumerate(rows)
    ]
    bad = _write(tmp_path / "bad.jsonl", shifted)
    r_good = _run(
        models_dir, tmp_path, "eval", "target-sentiment", "--newsmtsc", str(good), "--json"
    )
    assert _json(r_good)["mention_mismatches"] == 0 and "warning" not in r_good.stderr
    r_bad = _run(models_dir, tmp_path, "eval", "target-sentiment", "--newsmtsc", str(bad), "--json")
    res = _json(r_bad)  # the warning goes to stderr; stdout is still the one object
    assert res["mention_mismatches"] == 2 and res["mention_mismatch_lines"] == [2, 5]
    assert "warning:" in r_bad.stderr and "line 2, 5" in r_bad.stderr


def test_mention_check_reads_offsets_as_the_loader_does(tmp_path: Path) -> None:
    # "0.0" passes load_newsmtsc; the mention check's int("0.0") raised a traceback
    from storyline.service.evaluation.sentiment import _mention_mismatches

    row = {"sentence_normalized": "Trump spoke.", "targets": [
        {"from": "0.0", "to": "5", "polarity": 4.0, "mention": "Trump"},
        {"from": 1.0, "to": 6.0, "polarity": 4.0, "mention": "Trump"}]}
    assert _mention_mismatches(_write(tmp_path / "n.jsonl", [row])) == [1]


# -- stance ----------------------------------------------------------------------------------
def test_stance_coverage_of_an_absent_kind_is_null(tmp_path: Path) -> None:
    arts = _write(
        tmp_path / "a.jsonl",
        [
            {
                "id": 7,
                "title": "Putin accuses NATO",
                "text": "President Vladimir Putin accused NATO of reckless aggression on Monday.",
            },
        ],
    )
    edges = _write(
        tmp_path / "edges.jsonl",
        [{"article_id": 7, "speaker": "Putin", "target": "NATO", "label": "negative"}],
    )
    portrayal = _write(
        tmp_path / "portrayal.jsonl",
        [{"article_id": "7", "actor": "Vladimir Putin", "label": "negative"}],
    )
    ex = SpacyActorExtractor()
    tagger = ActorStanceTagger(VaderTargetScorer(), attributor=ex)
    only_edges = evaluate_stance(arts, edges, extractor=ex, tagger=tagger)
    # no portrayal item: no share of them was missed, there is none
    assert only_edges["n_gold"] == 0 and only_edges["coverage"] is None
    assert only_edges["edge_coverage"] == 1.0
    only_portrayal = evaluate_stance(arts, portrayal, extractor=ex, tagger=tagger)
    assert only_portrayal["coverage"] == 1.0
    assert only_portrayal["n_edges"] == 0 and only_portrayal["edge_coverage"] is None
