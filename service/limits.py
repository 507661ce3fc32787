"""Request body size limit, enforced while the body is read (Content-Length and chunked bodies), and the
drain that lets a client which writes its whole body before reading the answer read a refusal.

Why drain: an answer sent before the body is read leaves the rest of the body unread. When the connection
is then closed (the client sent ``Connection: close``, as Python's urllib does, or spoke HTTP/1.0), the
kernel finds unread data in the socket and answers with a TCP reset instead of a FIN; the reset can reach
the client before it read the answer, and what it sees is ``ConnectionResetError``/``BrokenPipeError``, not
the 413. Reading the body to its end first (and dropping it, chunk by chunk) makes the close an orderly one.
This is bounded: at most ``DRAIN_LIMIT_BYTES`` in all and ``DRAIN_TIMEOUT_S``; past either (or when the
client waits for ``100 Continue`` and so has sent nothing), the answer goes out at once with
``Connection: close`` and such a client may still see a reset.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body

# The most request-body bytes read and dropped before a refusal (413, or 401/403/429 from other layers) so
# that the client reads it; a longer body gets the refusal at once and the connection closed.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
# The longest a drain may take (a body trickling in is not waited for past this), as nginx's lingering_time.
DRAIN_TIMEOUT_S = 30.0
CLOSE = (b"connection", b"close")


async def discard_body(
    receive: Receive, limit: int = DRAIN_LIMIT_BYTES, timeout: float | None = DRAIN_TIMEOUT_S
) -> bool:
    """Read the rest of the request body from ``receive`` and drop it, keeping none of it in memory.

    True when the whole body was read (the answer can then be sent and the connection kept); False when the
    client disconnected, or more than ``limit`` bytes came with the body still going on, or ``timeout``
    seconds passed: then answer with ``Connection: close``. Call it only while the body is not yet complete
    (the last message read had ``more_body``, or none was read): uvicorn's ``receive`` after the last body
    message waits for the disconnect.
    """
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return False
                if not message.get("more_body", False):
                    return True
                size += len(message.get("body", b""))
                if size > limit:
                    return False
    except TimeoutError:
        return False


def body_framing(scope: Scope) -> tuple[int | None, bool, bool]:
    """``(Content-Length or None, chunked, expects 100-continue)`` from the request's headers."""
    declared, chunked, expect = None, False, False
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            declared = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"expect":
            expect = value.strip().lower() == b"100-continue"
    return declared, chunked, expect


async def drain_request(scope: Scope, receive: Receive, limit: int = DRAIN_LIMIT_BYTES) -> bool:
    """Before answering a request without reading its body (a refusal): read and drop the body, if it has one.

    Call it before anything has read the body. True when the connection can stay open: no body, or the whole
    body was read (``discard_body``). False when the answer should carry ``Connection: close``: the client
    waits for ``100 Continue`` (reading would invite the body; it has sent none, so closing resets nothing),
    the declared length is over ``limit``, or the drain stopped (see ``discard_body``).
    """
    declared, chunked, expect = body_framing(scope)
    if not chunked and not declared:
        return True
    if expect:
        return False
    if declared is not None and declared > limit:
        return False
    return await discard_body(receive, limit)


class BodyLimitMiddleware:
    """Answers 413 in the common error shape once a body exceeds ``max_bytes``.

    A declared ``Content-Length`` above the limit is refused without keeping any of the body; otherwise
    the body is read chunk by chunk, counting bytes, and refused the moment the count passes the limit,
    so a chunked upload cannot grow memory past the limit either. The accepted body is replayed to the
    application unchanged. Before the 413 the rest of the body is read and dropped (``drain_request`` /
    ``discard_body``: up to ``DRAIN_LIMIT_BYTES`` of body in all, within ``DRAIN_TIMEOUT_S``), so that a
    client writing its whole body before reading gets the 413 rather than a reset; a longer body, or one
    whose client waits for ``100 Continue``, is answered at once with ``Connection: close``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send, detail: str, keep_alive: bool) -> None:
        body = json.dumps(error_body("payload_too_large", detail, "body")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if not keep_alive:
            headers.append(CLOSE)
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = f"the request body limit is {self.max_bytes} bytes (MCSERVE_MAX_BODY_BYTES)"
        declared = body_framing(scope)[0]
        if declared is not None and declared > self.max_bytes:
            keep_alive = await drain_request(scope, receive)
            await self._reject(send, f"body of {declared} bytes is too large; {limit}", keep_alive)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                chunks.clear()  # nothing of it is kept while the rest is dropped
                keep_alive = not more or await discard_body(receive, max(DRAIN_LIMIT_BYTES - size, 0))
                await self._reject(send, f"body is too large; {limit}", keep_alive)
                return
            chunks.append(chunk)
            if not more:
                break
        await self.app(scope, replay_body(b"".join(chunks), receive), send)


def replay_body(body: bytes, receive: Receive, more_body: bool = False) -> Receive:
    """A ``receive`` that hands an already-read body to the application once, then defers to ``receive``.

    ``more_body``: ``body`` is only the first part of the request body; the rest still comes from ``receive``."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more_body}
        return await receive()

    return replay
