"""Behind a reverse proxy: whose ``X-Forwarded-For`` the rate limit believes.

Real ``storyline serve`` processes, since the proxy-header handling is uvicorn's, set up
from ``STORYLINE_FORWARDED_ALLOW_IPS``. The test client talks to them over loopback, so
it plays the proxy: trusted by default, untrusted when the setting names another network.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_server import Server


def _serve(root: Path, models_dir: Path, env: dict[str, str]) -> Server:
    data = root / "data"
    data.mkdir()
    (data / "models").symlink_to(models_dir, target_is_directory=True)
    server = Server(data, root, env={"STORYLINE_RATE_LIMIT_PER_MINUTE": "2", **env})
    server.wait_ready()
    return server


@pytest.fixture
def trusting(tmp_path: Path, models_dir: Path) -> Iterator[Server]:
    server = _serve(tmp_path, models_dir, {})  # default: loopback peers are proxies
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def distrusting(tmp_path: Path, models_dir: Path) -> Iterator[Server]:
    server = _serve(tmp_path, models_dir, {"STORYLINE_FORWARDED_ALLOW_IPS": '["10.0.0.0/8"]'})
    try:
        yield server
    finally:
        server.stop()


def _get(server: Server, client_ip: str) -> int:
    r = httpx.get(f"{server.url}/v1/stories", headers={"X-Forwarded-For": client_ip},
                  timeout=30)
    return r.status_code


def test_clients_behind_a_trusted_proxy_get_their_own_rate_limit(trusting: Server) -> None:
    assert [_get(trusting, "203.0.113.1") for _ in range(3)] == [200, 200, 429]
    # Another client through the same proxy is not held back by the first one's use.
    assert _get(trusting, "203.0.113.2") == 200
    # The proxy appends the address it saw: the last untrusted hop is the client.
    assert _get(trusting, "198.51.100.7, 203.0.113.1") == 429


def test_an_untrusted_peer_cannot_choose_its_rate_limit_bucket(distrusting: Server) -> None:
    assert [_get(distrusting, "203.0.113.1") for _ in range(2)] == [200, 200]
    # A forged header from a peer that is not a configured proxy changes nothing.
    assert _get(distrusting, "203.0.113.2") == 429
