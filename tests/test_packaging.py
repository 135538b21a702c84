"""The wheel installs only the ``storyline`` namespace, and the serving path needs no torch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_only_storyline(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("storyline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("storyline-")}
    assert tops == {"storyline"}
    for sub in ("models", "index", "service"):
        assert f"storyline/{sub}/__init__.py" in names
    # install into a fresh venv (no deps) and import the dependency-free core
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import storyline.models.errors as e; print(e.StorylineError.__name__)"],
        capture_output=True, text=True, check=True,
    )
    assert r.stdout.strip() == "StorylineError"


def test_serving_path_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import storyline.service.cli, storyline.service.pipeline, storyline.models.embedder\n"
        "import storyline.index.store, storyline.index.vectors\n"
        "try:\n    import storyline.service.api.app\nexcept ImportError:\n    pass\n"
        "for m in ('torch', 'transformers', 'sentence_transformers'):\n"
        "    assert m not in sys.modules, m\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_apps_pipeline_keeps_torch_out(data_dir: Path) -> None:
    """create_app's lifespan loads the stages through open_pipeline: spaCy's thinc must not
    pull in torch there, whether or not `storyline serve` started the process."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: nothing to keep out")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from storyline.service.api.app import open_pipeline\n"
        "from storyline.service.settings import Settings\n"
        f"pipe = open_pipeline(Settings(data_dir=Path({str(data_dir)!r}), model_process=False))\n"
        "pipe.store.close()\n"
        "bad = [m for m in ('torch', 'transformers') if sys.modules.get(m) is not None]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
