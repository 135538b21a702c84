"""A real ``storyline serve`` process on a free loopback port, for tests that need one."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

KEY = "live-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def serving_data_dir(root: Path, models_dir: Path) -> Path:
    """A data dir under ``root`` with its own ``manifest.json`` (a test may "rebuild" the
    models by editing it) and links to the real built model folders."""
    import shutil

    data = root / "data"
    (data / "models").mkdir(parents=True)
    shutil.copy(models_dir / "manifest.json", data / "models" / "manifest.json")
    for sub in ("minilm", "summariser", "stance"):
        (data / "models" / sub).symlink_to(models_dir / sub, target_is_directory=True)
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``storyline serve`` on a free loopback port, its output kept in a log file."""

    def __init__(self, data_dir: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"serve-{self.port}.log"
        full_env = {
            **os.environ,
            "STORYLINE_API_KEYS_SHA256": json.dumps([hashlib.sha256(KEY.encode()).hexdigest()]),
            "STORYLINE_RATE_LIMIT_PER_MINUTE": "1000000",
            "STORYLINE_LOG_LEVEL": "WARNING",
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        }
        cmd = [sys.executable, "-m", "storyline.service.cli", "serve", "--data-dir",
               str(data_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("wb") as out:
            # cwd outside the repo: no stray .env changes the settings under test
            self.proc = subprocess.Popen(cmd, env=full_env, cwd=workdir, stdout=out,
                                         stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log.read_text()[-3000:]}")
            try:
                r = httpx.get(f"{self.url}/health/ready", timeout=5)
                if r.status_code == 200:
                    return dict(r.json())
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(60)
