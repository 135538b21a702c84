"""``Server-Timing: app;dur=<ms>`` on every HTTP response (W3C Server Timing).

A client that sees a slow answer can tell the service's own time (from the request
reaching the app to the response headers leaving it) from time spent in its own event
loop, the network or a proxy; the load bench reports both. Pure ASGI, outermost, so the
figure includes rate limiting, metrics, routing, validation and serialisation.
"""

from __future__ import annotations

import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["server_timing_middleware"]


def server_timing_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                dur = (time.perf_counter() - t0) * 1000
                headers = list(message.get("headers") or ())
                headers.append((b"server-timing", f"app;dur={dur:.2f}".encode()))
                message = {**message, "headers": headers}  # type: ignore[typeddict-item]
            await send(message)

        await app(scope, receive, timed_send)

    return middleware
