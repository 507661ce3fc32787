"""One JSON error shape for every failure, and the handlers that produce it.

Every error body is ``{"error": {"code": str, "message": str, "field": str | null}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service")

_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "not_ready",
}


class ServiceError(Exception):
    """An error with an HTTP status, a stable machine code, a message and the offending field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def headers(self) -> dict[str, str]:
        """The HTTP headers this error's answer carries (a 503 says when to retry)."""
        return {"Retry-After": "1"} if self.status == 503 else {}


class InputError(ServiceError):
    """A request field that is well-formed JSON but wrong (422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(422, "validation_error", f"{field}: {message}", field)


class DecodeError(ServiceError):
    """Bytes that cannot be decoded: bad base64, not a PNG, a broken PNG (400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(400, "undecodable_input", f"{field}: {message}", field)


class NotReadyError(ServiceError):
    def __init__(self) -> None:
        super().__init__(503, "not_ready", "the model is not loaded yet; retry when GET /readyz returns 200")


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    if headers is None and status == 503:
        headers = {"Retry-After": "1"}
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str | None:
    parts = [p for p in loc if p != "body"]
    if not parts:
        return None
    name = str(parts[0])
    for part in parts[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers())


def _is_json(content_type: str | None) -> bool:
    """FastAPI parses a body as JSON when the type is absent, application/json or */*+json."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if not errors:
        return error_response(422, "validation_error", "request validation failed")
    content_type = request.headers.get("content-type")
    if not _is_json(content_type):  # the body was never parsed: say so rather than "not an object"
        message = f"body: content type {content_type!r} is not supported; send application/json"
        return error_response(415, "unsupported_media_type", message, "body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        message = f"request body is not valid JSON ({first.get('msg', '')})"
        return error_response(400, "invalid_json", message, "body")
    field = _field_name(first.get("loc", ()))
    message = f"{field}: {first.get('msg', 'invalid')}" if field else f"body: {first.get('msg', 'invalid')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(422, "validation_error", message, field or "body")


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODES.get(exc.status_code, "http_error")
    field = "body" if exc.status_code == 400 else None  # FastAPI's 400: a body it could not parse (e.g. too deep)
    response = error_response(exc.status_code, code, str(exc.detail), field)
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error; the request was not processed")


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
