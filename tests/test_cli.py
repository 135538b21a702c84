"""The CLI as a user runs it: real subprocesses, exit codes, JSON last lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STORYLINE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "storyline.service.cli", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_ingest_reports_bad_lines_and_exits_2(data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"id": "a", "title": "Senate passes bill", "text": "The Senate passed it."})
        + "\n{broken\n"
        + json.dumps({"id": "b", "published_at": "soon", "text": "x"}) + "\n",
        encoding="utf-8",
    )
    r = run(data_dir, "ingest", str(src), "--json")
    assert r.returncode == 2, r.stderr
    assert "line 2: invalid JSON" in r.stderr
    assert "line 3, field 'published_at'" in r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["inserted"] == 1 and out["failed"] == 2
    again = run(data_dir, "ingest", str(src), "--json")
    assert json.loads(again.stdout.strip().splitlines()[-1])["unchanged"] == 1


def test_demo_related_and_missing_ids(data_dir: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    r = run(data_dir, "demo", str(root / "seeds"))
    assert r.returncode == 0, r.stderr
    assert "index:" in r.stdout
    r2 = run(data_dir, "demo", str(root / "seeds"))  # idempotent
    assert "'unchanged': 1" in r2.stdout
    stats = json.loads(run(data_dir, "stats", "--json").stdout.strip().splitlines()[-1])
    assert stats["articles"] == 1 and stats["indexed"] == 1
    missing = run(data_dir, "related", "no-such-id")
    assert missing.returncode == 3
    assert "not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_search_and_index_rebuild(data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    rows = [
        {"id": "c1", "title": "Court backs police", "text": "The Supreme Court ruled for police."},
        {"id": "h1", "title": "Hurricane hits coast", "text": "A hurricane cut power to homes."},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert run(data_dir, "ingest", str(src)).returncode == 0
    (data_dir / "vectors.faiss").unlink()
    r = run(data_dir, "index", "rebuild")
    assert r.returncode == 0 and "2 vectors" in r.stdout
    res = json.loads(run(data_dir, "search", "storm power cut", "-k", "1", "--json").stdout
                     .strip().splitlines()[-1])
    assert res["results"][0]["id"] == "h1"


def test_help_keeps_square_brackets() -> None:
    from typer.testing import CliRunner

    from storyline.service.cli import app

    runner = CliRunner()
    env = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}
    digest = runner.invoke(app, ["digest", "--help"], env=env)
    assert digest.exit_code == 0, digest.output
    assert "(needs storyline[ray])" in digest.output
    assert "[default: one per cluster CPU]" in digest.output
    assert "[default: <data_dir>/digests]" in digest.output
    assert "[default: html,md,json]" in digest.output  # typer's own defaults still shown
    export = runner.invoke(app, ["models", "export-seq2seq", "--help"], env=env)
    assert "[default: the model's]" in export.output
