"""Request body size limit, enforced while the body is read (Content-Length and chunked bodies)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body


class BodyLimitMiddleware:
    """Answers 413 in the common error shape once a body exceeds ``max_bytes``.

    A declared ``Content-Length`` above the limit is refused before reading; otherwise
    the body is read chunk by chunk, counting bytes, and refused the moment the count
    passes the limit, so a chunked upload cannot grow memory past the limit either.
    The accepted body is replayed to the application unchanged.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send, detail: str) -> None:
        body = json.dumps(error_body("payload_too_large", detail, "body")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = f"the request body limit is {self.max_bytes} bytes (MCSERVE_MAX_BODY_BYTES)"
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._reject(send, f"body of {declared} bytes is too large; {limit}")
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send, f"body is too large; {limit}")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
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
