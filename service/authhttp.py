"""The API-key check of every HTTP request (REST and v2 REST): the outermost ASGI layer when a keys file is set.

It asks :class:`~service.auth.Authenticator` for the key the ``Authorization`` header presents and the scope the
path needs (:func:`~service.auth.scope_of_path`; health is open), answers a refusal itself in the route's error
shape (REST: ``{"error": {"code", "message", "field"}}``; ``/v2``: ``{"error": "<message>"}``), and otherwise
hands the request on with the key in :data:`~service.auth.current_key`, where the core charges its MC work. One
log line per refusal (key id or ``anonymous``, method, path, reason; never the token) and the metrics
``mcserve_auth_denied_total`` / ``mcserve_key_requests_total``.
"""

from __future__ import annotations

import logging
import time

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import ANONYMOUS, Authenticator, AuthError, current_key, scope_of_path
from .errors import error_body
from .limits import CLOSE, drain_request
from .metrics import Metrics

log = logging.getLogger("service.auth")


def log_denial(exc: AuthError, key_id: str | None, where: str, protocol: str) -> None:
    log.warning("denied %s (%s): %s, key %s", where, protocol, exc.reason, key_id or ANONYMOUS)


class AuthLayer:
    """ASGI front: lets a request on only with a valid key holding the path's scope, within its request rate."""

    def __init__(self, app: ASGIApp, auth: Authenticator, metrics: Metrics, max_body: int) -> None:
        self.app = app
        self.auth = auth
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        needed = scope_of_path(path)
        if needed is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        v2 = path == "/v2" or path.startswith("/v2/")
        protocol = "v2_http" if v2 else "rest"
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        try:
            key = self.auth.authorize(header, needed)
        except AuthError as exc:
            self.metrics.record_denied(exc.reason, protocol)
            presented = None
            if exc.reason not in ("missing", "invalid"):
                presented = self.auth.identify(header).id
            log_denial(exc, presented, f"{scope['method']} {path}", protocol)
            # drop the body first: a client that writes its whole body before reading still reads the refusal
            drained = await drain_request(scope, receive, self.max_body)
            await _send(send, exc, v2, drained)
            route = "/v2" if v2 else "unauthorized"
            self.metrics.record_http(route, scope["method"], str(exc.status), time.perf_counter() - start, protocol)
            return
        self.metrics.record_key_request(key.id, protocol)
        token = current_key.set(key)
        try:
            await self.app(scope, receive, send)
        finally:
            current_key.reset(token)


async def _send(send: Send, exc: AuthError, v2: bool, drained: bool) -> None:
    data = orjson.dumps({"error": exc.message} if v2 else error_body(exc.code, exc.message, exc.field))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers().items()]
    if not drained:  # the body was not read to its end: the connection cannot carry another request
        headers.append(CLOSE)
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
