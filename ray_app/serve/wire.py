"""How a Router replica's answers leave its HTTP server: the status line and headers together
with the first part of the body, never a loop turn apart.

Serve runs the app's code on its own thread and hands each ASGI message to the replica's
server loop separately, so a response's headers could be written to the socket a loop turn
(and a thread hop) before its body. A replica that died in that gap (killed, OOM, node lost)
left HAProxy with headers already on their way to the client: the client saw the body cut
short, and the request could not be replayed on another replica (2 of 7,850 requests in one
run of tests/test_failures.py). Held back until the first body message, the headers are
written in the same loop step as it, two socket writes microseconds apart: a replica that dies
has, all but certainly, answered in full or not begun, which HAProxy replays
(RAY_SERVE_HAPROXY_RETRY_ON's empty-response).

Serve's replicas wrap their direct-ingress server (HAProxy's backends) in the middlewares that
the callback at RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH returns; serve_config.yaml sets it
for the app. A request that Serve gives up on between the two messages (a client gone, a
`request_timeout_s`) gets uvicorn's 500 rather than Serve's 499 or 408, since Serve took the
held headers as sent.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadersWithBody:
    """ASGI middleware: `http.response.start` is sent just before the first body message."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None

        async def send_together(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if start is not None:
                # Neither send yields to the loop unless the socket's buffer is full.
                held, start = start, None
                await send(held)
            await send(message)

        await self.app(scope, receive, send_together)


def middlewares() -> list[Middleware]:
    """Serve's HTTP callback (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH)."""
    return [Middleware(HeadersWithBody)]
