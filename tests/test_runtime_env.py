"""The runtime dependency set alone (no build extra) imports, embeds and serves — torch absent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_runtime_only_venv_serves_without_torch(tmp_path: Path, data_dir: Path) -> None:
    venv = tmp_path / "rt"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Runtime requirements only (no extras), pinned like the image's runtime stage.
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), str(ROOT)],
        check=True, timeout=1200,
    )
    frozen = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True,
                            check=True).stdout.lower()
    for heavy in ("torch", "transformers", "sentence-transformers"):
        assert f"\n{heavy}==" not in "\n" + frozen, f"{heavy} leaked into the runtime set"
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from storyline.models.embedder import OnnxEmbedder\n"
        f"v = OnnxEmbedder(Path({str(data_dir / 'models')!r})).embed(['Senate passes bill'])\n"
        "assert v.shape == (1, 384)\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([str(py), "-c", code], check=True, timeout=300)
    port = _free_port()
    env = {**os.environ, "STORYLINE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [str(venv / "bin" / "storyline"), "serve", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{port}/health/ready"
                with urllib.request.urlopen(url, timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(1)
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
