"""Size limits of a request: the body (:class:`BodyLimitMiddleware`), the number and length of texts.

Each answers 413 with the JSON error body. An oversized body is read and discarded first (at
most ``DRAIN_MAX_BYTES`` within ``DRAIN_TIMEOUT_S``, on the event loop) so that clients that
send a whole body before reading see the 413 rather than a reset; the connection is then closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from gpt2clf.config import ServeSettings
from gpt2clf.serve.http_errors import ApiError, error_response

__all__ = ["DRAIN_MAX_BYTES", "DRAIN_TIMEOUT_S", "BodyLimitMiddleware", "BodyTooLarge", "check_text_limits"]

log = logging.getLogger("gpt2clf.serve.app")

# The most of an oversized body that is read (and thrown away) before the 413, and for how
# long: enough for clients that send a whole body before reading the answer to see the 413,
# little enough that slow or endless bodies cannot hold a connection (BodyLimitMiddleware).
DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_TIMEOUT_S = 10.0


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "body_too_large", f"request body is over the limit of {limit} bytes")


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes: by Content-Length up front, and by counting what
    actually arrives (a client may lie about, or leave out, Content-Length).

    Before it answers, it reads and throws away the rest of an oversized body, as a lingering
    close does: many clients (Python's urllib and http.client among them) send the whole body
    before they read any answer, and a socket closed under them while they send is a
    connection reset, not a 413. The drain is bounded, so that it cannot hold the server: at
    most ``drain_max_bytes`` within ``drain_timeout_s`` (a body declared larger than that is
    not read at all), and it waits on the event loop like any other read, so every other
    request keeps being answered meanwhile. The 413 then closes the connection
    (``Connection: close``). A client that asked ``Expect: 100-continue`` (curl does for large
    bodies) has sent nothing yet and gets the 413 at once.
    """

    def __init__(self, app: Any, limit: int, *, drain_max_bytes: int = DRAIN_MAX_BYTES,
                 drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        self.app, self.limit = app, limit
        self.drain_max_bytes, self.drain_timeout_s = drain_max_bytes, drain_timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        try:
            declared = int(headers[b"content-length"]) if b"content-length" in headers else None
        except ValueError:
            declared = None  # uvicorn rejects a malformed Content-Length before we see it
        if declared is not None and declared > self.limit:
            if declared <= self.drain_max_bytes and headers.get(b"expect", b"").lower() != b"100-continue":
                await self.drain(receive)
            await error_response(413, "body_too_large", f"request body is over the limit of {self.limit} bytes",
                                 headers={"Connection": "close"})(scope, receive, send)
            return
        received = 0
        over = False

        async def counting_receive() -> dict:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    over = True
                    if message.get("more_body", False):
                        await self.drain(receive)
                    # An HTTPException passes FastAPI's body parsing unchanged and reaches our handler.
                    raise BodyTooLarge(self.limit)
            return message

        async def send_closing(message: dict) -> None:
            if over and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, counting_receive, send_closing)

    async def drain(self, receive: Callable) -> None:
        """Read and discard the rest of the body: at most ``drain_max_bytes``, within ``drain_timeout_s``."""
        drained = 0

        async def discard() -> None:
            nonlocal drained
            while drained <= self.drain_max_bytes:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return  # all of it arrived, or the client went away
                drained += len(message.get("body", b""))
            log.info("gpt2clf: stopped reading an oversized request body after %d bytes", drained)

        try:
            await asyncio.wait_for(discard(), self.drain_timeout_s)
        except asyncio.TimeoutError:
            log.info("gpt2clf: stopped reading an oversized request body after %g s (%d bytes)",
                     self.drain_timeout_s, drained)



def check_text_limits(texts: Sequence[str], settings: ServeSettings) -> None:
    """413 for more than ``max_texts`` texts or a text over ``max_text_chars`` characters."""
    if len(texts) > settings.max_texts:
        raise ApiError(413, "too_many_texts",
                       f"{len(texts)} texts is over the limit of {settings.max_texts} per request")
    for i, text in enumerate(texts):
        if len(text) > settings.max_text_chars:
            raise ApiError(413, "text_too_long", f"texts[{i}] has {len(text)} characters, over the limit "
                           f"of {settings.max_text_chars}")

