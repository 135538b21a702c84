"""Waiting on OS processes in tests of the model process's workers."""

from __future__ import annotations

import os
import time


def gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` has exited within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
