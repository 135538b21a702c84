"""Bad CLI input: one-line errors naming the file / line / option, documented exit codes,
no tracebacks, and good input never lost (audit 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storyline.models.errors import InvalidInput
from storyline.models.sentiment import load_newsmtsc
from storyline.models.summariser_train import load_allsides
from storyline.service.ingest import read_articles_jsonl, read_source, read_txt

NM_ROW = {"sentence_normalized": "Biden spoke well.",
          "targets": [{"from": 0, "to": 5, "polarity": 6.0}]}
ART = {"id": "a1", "title": "T", "text": "The council approved the budget on Monday."}
STORY = {"story_id": 1, "split": "dev", "summary": "The council approved it.",
         "article_ids": ["a1"]}


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STORYLINE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "storyline.service.cli", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )


def _jsonl(path: Path, *rows: object) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _one_line_error(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


# -- 1. eval input files: paths, JSON, fields, encoding -------------------------------------
def _eval_cmds(good: Path, bad: Path) -> dict[str, list[str]]:
    return {
        "retrieval": ["eval", "retrieval", "--articles", str(bad)],
        "clustering": ["eval", "clustering", "--articles", str(bad)],
        "summaries": ["eval", "summaries", "--articles", str(good), "--stories", str(bad)],
        "stance": ["eval", "stance", "--articles", str(good), "--gold", str(bad)],
        "target-sentiment": ["eval", "target-sentiment", "--newsmtsc", str(bad)],
    }


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_eval_commands_refuse_missing_files_and_folders(tmp_path: Path, kind: str) -> None:
    good = _jsonl(tmp_path / "good.jsonl", ART)
    bad = tmp_path / "nope.jsonl"
    if kind == "folder":
        bad.mkdir()
    for name, args in _eval_cmds(good, bad).items():
        r = run(tmp_path / "data", *args)
        option = args[-2]
        if kind == "missing":
            _one_line_error(r, 3, option, "nope.jsonl", "no such file")
        else:
            _one_line_error(r, 2, option, "nope.jsonl", "folder")
        assert not (tmp_path / "data").exists(), name  # refused before any work


def test_train_file_is_checked_too(tmp_path: Path) -> None:
    nm = _jsonl(tmp_path / "nm.jsonl", NM_ROW)
    r = run(tmp_path, "eval", "target-sentiment", "--newsmtsc", str(nm),
            "--train", str(tmp_path / "missing.jsonl"))
    _one_line_error(r, 3, "--train", "missing.jsonl")


@pytest.mark.parametrize(("lines", "needle"), [
    ([b'{"bad json'], "a.jsonl:1: invalid JSON"),
    ([json.dumps(ART).encode(), b'{"text": "x"}'], "a.jsonl:2: id"),
    ([b"[1]"], "a.jsonl:1: expected a JSON object"),
    ([b'\xff\xfe{"id": 1}'], "a.jsonl:1: invalid UTF-8"),
    ([json.dumps({"id": "a2", "text": 5}).encode()], "a.jsonl:1: text"),
])
def test_load_allsides_names_file_and_line_of_bad_articles(
    tmp_path: Path, lines: list[bytes], needle: str
) -> None:
    arts = tmp_path / "a.jsonl"
    arts.write_bytes(b"\n".join(lines) + b"\n")
    stories = _jsonl(tmp_path / "s.jsonl", STORY)
    with pytest.raises(InvalidInput, match=needle):
        load_allsides(arts, stories)


@pytest.mark.parametrize(("row", "needle"), [
    ({"story_id": 1, "split": "dev"}, "s.jsonl:1: article_ids"),
    ({"story_id": 1, "summary": "S.", "article_ids": "a1"}, "s.jsonl:1: article_ids"),
    ({"story_id": 1, "article_ids": [["a1"]]}, "s.jsonl:1: article_ids"),
    ({"split": "dev", "article_ids": ["a1"]}, "s.jsonl:1: story_id"),
    ({"story_id": 1, "summary": 3, "article_ids": ["a1"]}, "s.jsonl:1: summary"),
])
def test_load_allsides_names_file_and_line_of_bad_stories(
    tmp_path: Path, row: dict[str, object], needle: str
) -> None:
    arts = _jsonl(tmp_path / "a.jsonl", ART)
    stories = _jsonl(tmp_path / "s.jsonl", row)
    with pytest.raises(InvalidInput, match=needle):
        load_allsides(arts, stories)


def test_load_allsides_reads_bom_and_integer_ids(tmp_path: Path) -> None:
    arts = tmp_path / "a.jsonl"
    arts.write_bytes(b"\xef\xbb\xbf" + json.dumps({**ART, "id": 7}).encode() + b"\n")
    stories = tmp_path / "s.jsonl"
    stories.write_bytes(b"\xef\xbb\xbf" + json.dumps({**STORY, "article_ids": [7]}).encode())
    (story,) = load_allsides(arts, stories)
    assert story.story_id == "1" and [a.id for a in story.articles] == ["7"]


def test_eval_summaries_bad_articles_line_is_one_line_exit_2(tmp_path: Path) -> None:
    arts = tmp_path / "a.jsonl"
    arts.write_bytes(b'{"bad json\n')
    stories = _jsonl(tmp_path / "s.jsonl", STORY)
    r = run(tmp_path / "data", "eval", "summaries", "--articles", str(arts),
            "--stories", str(stories))
    _one_line_error(r, 2, "a.jsonl:1", "invalid JSON")


def test_eval_summaries_refuses_a_date_it_cannot_read(tmp_path: Path) -> None:
    # read as undated, it silently moved the article to the end of every reading order
    arts = _jsonl(tmp_path / "a.jsonl", ART, {**ART, "id": "a2", "published_at": "bogus"})
    stories = _jsonl(tmp_path / "s.jsonl", {**STORY, "article_ids": ["a1", "a2"]})
    r = run(tmp_path / "data", "eval", "summaries", "--articles", str(arts),
            "--stories", str(stories))
    _one_line_error(r, 2, "a.jsonl:2", "published_at", "bogus")
    with pytest.raises(InvalidInput, match=r"a\.jsonl:1: published_at must be a string"):
        load_allsides(_jsonl(arts, {**ART, "published_at": 20211018}), stories)


def test_eval_summaries_reads_dates_as_ingest_does(tmp_path: Path, data_dir: Path) -> None:
    # a named zone ingest takes is no ISO 8601, but an eval file in the article format may
    # hold it: it was read as undated, now as ingest reads it
    from storyline.service.ingest import parse_datetime

    arts = _jsonl(tmp_path / "a.jsonl", {**ART, "published_at": "2021-10-18 12:00:00 EDT"})
    stories = _jsonl(tmp_path / "s.jsonl", STORY)
    with pytest.raises(InvalidInput, match=r"a\.jsonl:1: published_at: '2021-10-18 12:00:00"):
        load_allsides(arts, stories)
    (story,) = load_allsides(arts, stories, parse_time=parse_datetime)
    assert story.articles[0].published_at == datetime(2021, 10, 18, 16, tzinfo=UTC)
    r = run(data_dir, "eval", "summaries", "--articles", str(arts),
            "--stories", str(stories), "--json")
    assert r.returncode == 0, r.stderr


def test_non_utf8_gold_and_newsmtsc_name_the_line(tmp_path: Path) -> None:
    from storyline.service.evaluation.stance import read_gold

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(json.dumps(NM_ROW).encode() + b"\n\xff\xfe{}\n")
    with pytest.raises(InvalidInput, match=r"bad\.jsonl:2: invalid UTF-8"):
        load_newsmtsc(bad)
    gold = tmp_path / "gold.jsonl"
    gold.write_bytes(json.dumps({"article_id": "a", "actor": "X", "label": "neutral"}).encode()
                     + b"\n\xff\xfe{}\n")
    with pytest.raises(InvalidInput, match=r"gold\.jsonl:2: invalid UTF-8"):
        read_gold(gold)


def test_main_maps_os_and_unicode_errors_to_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from storyline.service import cli

    cases: list[tuple[BaseException, int, str]] = [
        (FileNotFoundError(2, "No such file or directory", "/x/y.jsonl"), 3, "/x/y.jsonl"),
        (IsADirectoryError(21, "Is a directory", "/x/d"), 2, "/x/d: Is a directory"),
        (PermissionError(13, "Permission denied", "/x/p"), 2, "/x/p: Permission denied"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2,
         "invalid start byte"),
    ]
    for exc, code, needle in cases:
        def boom(exc: BaseException = exc) -> None:
            raise exc

        monkeypatch.setattr(cli, "app", boom)
        with pytest.raises(SystemExit) as info:
            cli.main()
        assert info.value.code == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


# -- 2. inputs that match nothing --------------------------------------------------------
def test_eval_summaries_refuses_unknown_split(tmp_path: Path) -> None:
    arts = _jsonl(tmp_path / "a.jsonl", ART)
    stories = _jsonl(tmp_path / "s.jsonl", STORY)
    r = run(tmp_path / "data", "eval", "summaries", "--articles", str(arts),
            "--stories", str(stories), "--split", "devv")
    _one_line_error(r, 2, "--split", "devv", "dev, train or all")


@pytest.mark.parametrize(("arts", "story"), [
    ([ART], {**STORY, "article_ids": ["nope1", "nope2"]}),  # unknown ids only
    ([], STORY),  # empty articles file
    ([ART], {**STORY, "split": "train"}),  # no dev story
    ([ART], {**STORY, "summary": "  "}),  # no reference
    ([{**ART, "text": "  "}], STORY),  # no article text
])
def test_eval_summaries_with_nothing_to_evaluate_is_invalid_input(
    tmp_path: Path, arts: list[dict[str, object]], story: dict[str, object]
) -> None:
    from storyline.service.evaluation.summaries import evaluate_summaries

    a = _jsonl(tmp_path / "a.jsonl", *arts)
    s = _jsonl(tmp_path / "s.jsonl", story)
    # models_dir is never reached: the inputs are refused first
    with pytest.raises(InvalidInput, match="nothing to evaluate"):
        evaluate_summaries(a, s, models_dir=tmp_path / "no-models")


def test_eval_stance_refuses_empty_gold(tmp_path: Path) -> None:
    from storyline.service.evaluation.stance import evaluate_stance

    arts = _jsonl(tmp_path / "a.jsonl", ART)
    gold = tmp_path / "g.jsonl"
    gold.write_text("\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"nothing to evaluate: .*g\.jsonl"):
        evaluate_stance(arts, gold, extractor=None, tagger=None)  # type: ignore[arg-type]


def test_eval_target_sentiment_refuses_empty_files(tmp_path: Path) -> None:
    from storyline.service.evaluation.sentiment import evaluate_target_sentiment

    good = _jsonl(tmp_path / "nm.jsonl", NM_ROW)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    no_targets = _jsonl(tmp_path / "nt.jsonl", {**NM_ROW, "targets": []})
    for f in (empty, no_targets):
        with pytest.raises(InvalidInput, match=rf"nothing to evaluate: .*{f.name}"):
            evaluate_target_sentiment(f, tmp_path / "no-models")
        with pytest.raises(InvalidInput, match=rf"--train.*{f.name}"):
            evaluate_target_sentiment(good, tmp_path / "no-models", train_file=f)


# -- 3. one bad source does not lose the others -------------------------------------------
def test_read_source_folder_reports_bad_files_and_keeps_the_rest(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    _jsonl(d / "a.jsonl", ART, {**ART, "id": "a2"})
    (d / "b.jsonl").write_bytes(b"")
    (d / "c.txt").write_bytes(b"")
    out = list(read_source(d))
    assert [p.article.id for p in out if p.article] == ["a1", "a2"]
    errs = [(p.source, p.error.detail) for p in out if p.error]
    assert [Path(s).name for s, _ in errs] == ["b.jsonl", "c.txt"]
    assert all("empty" in e for _, e in errs)


def test_ingest_keeps_good_sources_and_reports_bad_ones(data_dir: Path, tmp_path: Path) -> None:
    texts = ["The mayor resigned on Friday.", "A storm cut power to homes.",
             "The court backed the police.", "Rail workers went on strike."]
    good = _jsonl(tmp_path / "good.jsonl",
                  *({"id": f"a{i}", "text": t} for i, t in enumerate(texts[:3])))
    zero = tmp_path / "zero.jsonl"
    zero.write_bytes(b"")
    folder = tmp_path / "mix"
    folder.mkdir()
    _jsonl(folder / "a.jsonl", {"id": "m1", "text": texts[3]})
    (folder / "b.jsonl").write_bytes(b'{"id": "m2"}\n')
    (folder / "c.jsonl").write_bytes(b"")
    r = run(data_dir, "ingest", str(good), str(zero), str(tmp_path / "missing.jsonl"),
            str(folder), "--json")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["inserted"] == 4 and out["failed"] == 4, out
    err = r.stderr
    assert "zero.jsonl: no articles" in err and "missing.jsonl: no such file" in err
    assert f"{folder / 'b.jsonl'}: line 1, field 'text'" in err
    assert f"{folder / 'c.jsonl'}: no articles" in err
    assert len(out["errors"]) == 4


# -- 4. UTF-8 byte order mark -------------------------------------------------------------
def test_bom_is_not_part_of_the_first_line(tmp_path: Path) -> None:
    j = tmp_path / "bom.jsonl"
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps(ART).encode() + b"\n" + json.dumps(
        {**ART, "id": "a2"}).encode() + b"\n")
    assert [p.article.id for p in read_articles_jsonl(j) if p.article] == ["a1", "a2"]
    t = tmp_path / "bom.txt"
    t.write_bytes("\ufeffMy Title\nBody text.\n".encode())
    art = read_txt(t).article
    assert art is not None and art.title == "My Title"
    # a BOM anywhere but the start is still text, and still refused where it breaks JSON
    j2 = tmp_path / "bom2.jsonl"
    j2.write_bytes(json.dumps(ART).encode() + b"\n\xef\xbb\xbf" + json.dumps(ART).encode())
    assert [p.line for p in read_articles_jsonl(j2) if p.error] == [2]
    j3 = tmp_path / "bom3.jsonl"  # a byte order mark alone on the first line is blank
    j3.write_bytes(b"\xef\xbb\xbf\n" + json.dumps(ART).encode() + b"\n")
    assert [(p.line, p.error) for p in read_articles_jsonl(j3)] == [(2, None)]


# -- 4b. lone surrogates ("\ud800" in JSON decodes to no Unicode text) ----------------------
def test_a_lone_surrogate_escape_is_a_bad_line_not_a_traceback(
    data_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "s.jsonl"
    src.write_text(json.dumps({"id": "ok", "text": "The council approved the budget."}) + "\n"
                   + '{"id": "bad", "text": "Putin said \\ud800 NATO was a threat."}\n'
                   + '{"id": "bad2", "title": "x", "text": "fine", "tags": ["\\udfff"]}\n')
    assert [(p.line, p.article is not None) for p in read_articles_jsonl(src)] == [
        (1, True), (2, False), (3, False)]
    r = run(data_dir, "ingest", str(src), "--json")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["inserted"] == 1 and out["failed"] == 2, out
    assert "line 2" in r.stderr and "lone surrogate" in r.stderr
    # the eval readers refuse it with file:line, before any model sees it
    arts = tmp_path / "a.jsonl"
    arts.write_text('{"id": "a1", "title": "T", "text": "x \\ud83d y"}\n')
    r = run(tmp_path / "data", "eval", "summaries", "--articles", str(arts),
            "--stories", str(_jsonl(tmp_path / "st.jsonl", STORY)))
    _one_line_error(r, 2, "a.jsonl:1", "lone surrogate")


# -- 5. digest --out ---------------------------------------------------------------------
def _empty_db(data_dir: Path) -> Path:
    from storyline.index.store import SQLiteStore

    SQLiteStore(data_dir / "storyline.db").close()
    return data_dir


def test_digest_refuses_bad_out_before_any_work(tmp_path: Path) -> None:
    data = _empty_db(tmp_path / "data")
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    for out in (afile, afile / "sub"):
        r = run(data, "digest", "--date", "2021-10-20", "--out", str(out))
        # exit 2 (bad --out), not 3 (the period is empty): --out is checked first
        _one_line_error(r, 2, "--out", str(afile))
    assert afile.read_text(encoding="utf-8") == "x"


def test_build_digest_checks_out_dir_before_touching_the_pipeline(tmp_path: Path) -> None:
    from storyline.service.digest import build_digest

    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    since = datetime(2021, 10, 20, tzinfo=UTC)
    until = datetime(2021, 10, 21, tzinfo=UTC)
    targets = [afile, afile / "sub"]
    if Path("/proc/self").is_dir():
        targets.append(Path("/proc/nope"))
    for out in targets:
        with pytest.raises(InvalidInput, match="output folder"):
            build_digest(object(), since=since, until=until, out_dir=out)


# -- 6. option names and impossible days -------------------------------------------------
def test_dates_name_the_option() -> None:
    from storyline.service.cli import _dt
    from storyline.service.digest import resolve_period

    with pytest.raises(InvalidInput, match="--since") as info:
        _dt("garbage", "--since")
    assert "published_at" not in info.value.detail
    with pytest.raises(InvalidInput, match="2024-02-30 does not exist"):
        resolve_period("2024-02-30", None, None)
    with pytest.raises(InvalidInput, match="expected YYYY-MM-DD"):
        resolve_period("30-02-2024", None, None)


def test_digest_since_garbage_names_the_option(tmp_path: Path) -> None:
    r = run(tmp_path / "data", "digest", "--since", "garbage", "--until", "2024-01-01")
    _one_line_error(r, 2, "--since", "garbage")
    assert "published_at" not in r.stderr


# -- 7. eval stance gold ids and article errors ---------------------------------------------
def test_gold_accepts_integer_article_ids(tmp_path: Path) -> None:
    from storyline.service.evaluation.stance import read_gold

    gold = _jsonl(tmp_path / "g.jsonl", {"article_id": 5610, "actor": "Biden", "label": "neutral"},
                  {"article_id": True, "actor": "Biden", "label": "neutral"})
    with pytest.raises(InvalidInput, match=r"g\.jsonl:2: article_id"):
        read_gold(gold)
    gold = _jsonl(tmp_path / "g.jsonl", {"article_id": 5610, "actor": "Biden", "label": "neutral"})
    assert read_gold(gold)[0].article_id == "5610"


def test_eval_stance_article_errors_name_the_file(tmp_path: Path) -> None:
    from storyline.service.evaluation.stance import evaluate_stance

    arts = tmp_path / "arts.jsonl"
    arts.write_bytes(json.dumps(ART).encode() + b"\n{oops\n")
    gold = _jsonl(tmp_path / "g.jsonl", {"article_id": "a1", "actor": "X", "label": "neutral"})
    with pytest.raises(InvalidInput, match=r"arts\.jsonl: line 2: invalid JSON"):
        evaluate_stance(arts, gold, extractor=None, tagger=None)  # type: ignore[arg-type]



# -- settings -----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "value", "needle"), [
    ("STORYLINE_RATE_LIMIT_PER_MINUTE", "0", "greater than or equal to 1"),
    ("STORYLINE_FORWARDED_ALLOW_IPS", '["10.0.0.1/8"]', "'10.0.0.1/8' is not an IP address"),
    ("STORYLINE_FORWARDED_ALLOW_IPS", '["*", "10.0.0.0/8"]', "must stand alone"),
    ("STORYLINE_FORWARDED_ALLOW_IPS", "10.0.0.1", "list settings are JSON"),
    # read by the CLI before the settings (logging's ValueError was a traceback)
    ("STORYLINE_LOG_LEVEL", "loud", "expected one of DEBUG, INFO"),
])
def test_a_bad_setting_is_one_line_naming_it(tmp_path: Path, name: str, value: str,
                                             needle: str) -> None:
    env = {**os.environ, "STORYLINE_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1",
           name: value}
    r = subprocess.run([sys.executable, "-m", "storyline.service.cli", "serve", "--port", "1"],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    _one_line_error(r, 2, f"invalid setting {name}", needle)


def test_the_log_level_setting_is_checked_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from storyline.service.settings import Settings

    for raw, level in (("debug", "DEBUG"), (" Warning ", "WARNING"), ("", "INFO")):
        monkeypatch.setenv("STORYLINE_LOG_LEVEL", raw)
        assert Settings().log_level == level
    monkeypatch.setenv("STORYLINE_LOG_LEVEL", "verbose")  # uvicorn refused it only at serve
    with pytest.raises(ValidationError, match="expected one of"):
        Settings()


# -- digest periods at the calendar's ends and below the minute (audit w16) ------------------
@pytest.mark.parametrize(("args", "needles"), [
    (["--date", "9999-12-31"], ["--date", "9999-12-31", "out of range"]),
    (["--since", "0001-01-01T00:00+01:00", "--until", "0001-01-02T00:00Z"],
     ["--since", "out of range"]),
    (["--since", "2021-10-17T20:00Z", "--until", "2021-10-18T03:47:30Z"],
     ["--until", "whole minute"]),
    (["--since", "2021-10-17T20:00:00.5Z", "--until", "2021-10-18T03:47Z"],
     ["--since", "whole minute"]),
])
def test_digest_periods_a_key_cannot_name_are_one_line_errors(
    tmp_path: Path, args: list[str], needles: list[str],
) -> None:
    r = run(tmp_path / "data", "digest", *args)
    _one_line_error(r, 2, *needles)


# -- 6. audit 2: ingest sources ---------------------------------------------------------------
def test_ingest_same_id_twice_is_counted_whatever_the_batch(
    data_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    src = _jsonl(tmp_path / "dup.jsonl",
                 {"id": "d1", "text": "Rail workers went on strike on Monday."},
                 {"id": "other", "text": "The mayor resigned on Friday."},
                 {"id": "d1", "text": "Rail workers ended their strike on Tuesday."})
    second = tmp_path / "data2"
    second.mkdir()
    (second / "models").symlink_to(models_dir, target_is_directory=True)
    outs = []
    for d, args in ((data_dir, []), (second, ["--batch", "1"])):
        r = run(d, "ingest", str(src), "--json", *args)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    for out in outs:  # every line accounted for: the later d1 updates the earlier one
        assert (out["inserted"], out["updated"], out["failed"]) == (2, 1, 0), out


def test_ingest_reports_timeouts_empty_feeds_and_folder_skips_one_line_each(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from typer.testing import CliRunner

    import storyline.service.ingest as ingest_mod
    from storyline.service.cli import app

    good = _jsonl(tmp_path / "good.jsonl", ART)
    empty = tmp_path / "empty.xml"
    empty.write_text('<?xml version="1.0"?><rss version="2.0"><channel><title>E</title>'
                     "</channel></rss>")
    folder = tmp_path / "mix"
    folder.mkdir()
    (folder / "B.TXT").write_text("Storm\nA storm cut power to homes.\n")
    (folder / "loop.jsonl").symlink_to(".", target_is_directory=True)
    monkeypatch.setattr(ingest_mod, "FEED_TIMEOUT_S", 1.0)
    with socket.socket() as hang:  # connects, never answers
        hang.bind(("127.0.0.1", 0))
        hang.listen(4)
        url = f"http://127.0.0.1:{hang.getsockname()[1]}/feed.xml"
        r = CliRunner().invoke(app, ["ingest", str(good), url, str(empty), str(folder),
                                     "--data-dir", str(data_dir), "--json"])
    assert r.exit_code == 2, (r.output, r.exception)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (out["inserted"], out["failed"]) == (2, 3), out
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3 and all(ln.startswith("error: ") for ln in lines), lines
    assert f"{url}: cannot read (timed out" in lines[0]
    assert f"{empty}: no entries" in lines[1]
    assert f"{folder / 'loop.jsonl'}: a folder, skipped" in lines[2]
