"""Request ids: ``X-Request-ID`` accepted or generated, echoed on every HTTP response, and put in every log line.

:class:`RequestIdLayer` is the application's outermost ASGI layer (``service.app.create_app``), so every HTTP
answer gets the header: REST, v2, the fast path, auth refusals and every error. A client's id is kept when it is
1-128 printable ASCII characters (a proxy's or a client's trace id, say); otherwise, or when there is none, the
service makes one (32 hex digits, unique per process and across replicas). The id lives in a context variable for
the request's task (and the worker threads it starts), where :class:`RequestIdFilter` adds it to each log record as
``request_id``.

``configure_logging`` sets up ``python -m service``'s logging: ``MCSERVE_LOG_FORMAT=text`` (one line per record,
``request_id=...`` appended inside a request) or ``json`` (one JSON object per line: time, level, logger, message,
request_id, and exc_info for an exception) for log pipelines. uvicorn's own records (startup, access log) go
through the same handler.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
MAX_LENGTH = 128
request_id: ContextVar[str | None] = ContextVar("mcserve_request_id", default=None)


def valid(value: bytes) -> bool:
    """1-128 printable ASCII characters (space to tilde)."""
    return 0 < len(value) <= MAX_LENGTH and all(0x20 <= b <= 0x7E for b in value)


_PREFIX = uuid.uuid4().hex[:16]  # random per process: ids from several replicas do not collide
_COUNTER = itertools.count(1)


def new_id() -> str:
    """32 hex digits: the process's random prefix and a counter (cheaper than a uuid4 per request, as unique)."""
    return f"{_PREFIX}{next(_COUNTER):016x}"


class RequestIdLayer:
    """ASGI: take or make the request's id, keep it in ``request_id`` while the request runs, echo it on the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), None)
        rid = given.decode("ascii") if given is not None and valid(given) else new_id()
        header = (HEADER, rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":  # no layer inside sets the header itself
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id``: the id of the request being served, or None outside one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, with `` request_id=...`` inside a request."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return line if rid is None else f"{line} request_id={rid}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id[, exc_info]."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        doc: dict[str, Any] = {
            "time": ts,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def handler(fmt: str, stream: Any = None) -> logging.Handler:
    out = logging.StreamHandler(stream if stream is not None else sys.stderr)
    out.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    out.addFilter(RequestIdFilter())
    return out


def configure_logging(level: str, fmt: str) -> None:
    """The root logger writes ``fmt`` (text | json) records to stderr; uvicorn's loggers propagate to it."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler(fmt))
    root.setLevel(level.upper())
    if fmt == "json":
        logging.captureWarnings(True)  # warnings.warn from libraries: JSON lines too
