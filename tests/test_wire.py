"""A server that dies between a response's headers and its body, with and without
`ray_app.serve.wire`: with it, the client gets nothing rather than a cut-short answer, which
is what lets HAProxy replay the request on another replica (retry-on empty-response).

The server is a real uvicorn process (the server Serve's replicas run) that exits mid-answer;
this file is its script: `python tests/test_wire.py PORT wire|bare`.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

BODY = b'{"probability": 0.5}'


@pytest.fixture(params=["wire", "bare"])
def server(request):
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, str(port), request.param])
    deadline = time.monotonic() + 30
    while True:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=5).connect()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
    yield request.param, port, process
    process.kill()
    process.wait()


def _get(port: int, path: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", path, body=b"{}")
    return connection.getresponse()


def test_a_server_that_dies_mid_answer_has_sent_all_of_it_or_nothing(server):
    mode, port, process = server
    if mode == "wire":
        # Nothing sent: the request can be replayed elsewhere.
        with pytest.raises(http.client.RemoteDisconnected):
            _get(port, "/die")
    else:  # what clients saw of a Router replica killed at that moment
        response = _get(port, "/die")
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    assert process.wait(timeout=10) == 3  # it did die there


def test_answers_arrive_whole_through_the_middleware(server):
    _, port, _ = server
    response = _get(port, "/stream")
    assert response.status == 200 and response.getheader("x-part") == "head"
    assert response.read() == BODY * 3


def _app(wire: bool):
    """An app answering /die (headers, a loop turn, then its process exits) and /stream (a
    body in parts), wrapped in the middlewares Serve's callback returns when `wire`."""
    from starlette.middleware import Middleware
    from starlette.types import Receive, Scope, Send

    from ray_app.serve.wire import middlewares

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        if scope["path"] == "/die":
            headers = [(b"content-type", b"application/json"), (b"content-length", b"20")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await asyncio.sleep(0.2)  # the loop turns: the headers are written, unless held
            os._exit(3)
        headers = [(b"x-part", b"head")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(3):
            await send({"type": "http.response.body", "body": BODY, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})

    wrapped = app
    for middleware in middlewares() if wire else []:
        assert isinstance(middleware, Middleware)  # as Serve checks the callback's list
        wrapped = middleware.cls(wrapped, *middleware.args, **middleware.kwargs)
    return wrapped


if __name__ == "__main__":
    import uvicorn

    port, mode = sys.argv[1:]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    uvicorn.run(_app(mode == "wire"), host="127.0.0.1", port=int(port), log_level="warning")
