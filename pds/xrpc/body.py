"""Request bodies between gunicorn and falcon: asked for only when read, and an answer
given before the whole body was read still reaches the client.

Two things go wrong without this (issue 9):

- `100 Continue` before a 413. falcon's ASGI app awaits the first `http.request` event
  before it routes a request, and gunicorn's ASGI worker answers `Expect: 100-continue`
  the first time the app calls `receive()`. So every request got its 100 at once, and the
  client sent a body the handler was about to refuse from its Content-Length alone (and a
  client that sent no body until told to left the request hanging). Here falcon's first
  event is an empty chunk made up without asking the server; the server is asked (and the
  100 sent) only when a handler reads the body.
- A reset instead of the answer. A handler that refuses a body without reading it (413
  from Content-Length, 401 before an upload, 413 part-way through a chunked upload)
  answered while the client was still sending; gunicorn then closed the socket with body
  bytes unread, the kernel answered with RST, and a client still writing (httpx writes the
  whole body before it reads) lost the answer. Here a small unread body (up to
  `DRAIN_LIMIT`) is read and discarded before answering, so the connection stays usable;
  a larger or unknown one gets `Connection: close` on the answer and is then read and
  discarded after it ("lingering close", as nginx does) until the client stops sending:
  at most `LINGER_TIME` seconds, and `LINGER_IDLE` seconds without a byte. Only then does
  gunicorn close the connection, with nothing unread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[dict, Receive, Send], Awaitable[None]]

DRAIN_LIMIT = 64 * 1024  # bytes of unread body discarded before answering
LINGER_TIME = 30.0  # seconds spent at most discarding a body after the answer
LINGER_IDLE = 5.0  # seconds without a byte that end the discarding


def _framing(scope: dict) -> tuple[int | None, bool, bool]:
    """(Content-Length, chunked, Expect: 100-continue) of a request."""
    length: int | None = None
    chunked = expect = False
    for name, value in scope.get("headers") or ():
        name = name.lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"expect":
            expect = value.strip().lower() == b"100-continue"
    return length, chunked, expect and scope.get("http_version", "1.1") != "1.0"


class _Body:
    """One request's body as the app sees it, and what is left of it to discard."""

    def __init__(self, receive: Receive, send: Send, length: int | None,
                 expect: bool) -> None:
        self._receive = receive
        self._send = send
        self.length = length
        self.expect = expect
        self.first = True  # the app's first receive() is answered without the server
        self.asked = False  # the server was asked (so it may have sent a 100)
        self.done = False  # the whole body was received, or the client is gone
        self.received = 0
        self.answered = False

    def _note(self, message: Message) -> None:
        if message.get("type") == "http.request":
            self.received += len(message.get("body") or b"")
            if not message.get("more_body"):
                self.done = True
        else:  # http.disconnect
            self.done = True

    async def receive(self) -> Message:
        if self.first:
            self.first = False
            return {"type": "http.request", "body": b"", "more_body": True}
        if self.done:
            return await self._receive()
        self.asked = True
        message = await self._receive()
        self._note(message)
        return message

    async def discard(self, seconds: float) -> bool:
        """Read and drop the rest of the body: True once it is all read (or the client is
        gone), False when `seconds` pass, or LINGER_IDLE of them without a byte."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.done:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self.asked = True
            try:
                message = await asyncio.wait_for(self._receive(), min(LINGER_IDLE, left))
            except TimeoutError:
                return False
            self._note(message)
        return True

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and not self.answered:
            self.answered = True
            if not self.done:
                await self._before_answer()
            if not self.done:
                headers = [(k, v) for k, v in message.get("headers") or ()
                           if (k.lower() if isinstance(k, bytes) else k.lower().encode())
                           != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await self._send(message)

    async def _before_answer(self) -> None:
        # A client waiting for a 100 that never came sends nothing: don't wait for it.
        if self.expect and not self.asked:
            return
        if self.length is not None and self.length - self.received <= DRAIN_LIMIT:
            await self.discard(LINGER_IDLE)


class RequestBody:
    """ASGI middleware, outermost: see the module docstring."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked, expect = _framing(scope)
        if not length and not chunked:
            await self.app(scope, receive, send)
            return
        body = _Body(receive, send, length, expect)
        await self.app(scope, body.receive, body.send)
        if body.answered and not body.done:
            await body.discard(LINGER_TIME)
