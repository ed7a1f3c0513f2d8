"""Statuses over HTTP: the one table from a Tandem error's gRPC code to an HTTP status,
and OpenAI's error object ``{"error": {"message", "type", "param", "code"}}``.

Every error the app can raise leaves through `install_error_handlers`: Tandem errors by
the table, malformed bodies as 400, unknown routes as 404; anything else is a bug, logged
and answered 500 (never a client's mistake: those all have a row here).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tandem.shared.errors import ResourceExhausted, TandemError

logger = logging.getLogger(__name__)

# gRPC status -> (HTTP status, OpenAI error type).
HTTP_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.FAILED_PRECONDITION: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}
INTERNAL = (500, "server_error")
# OpenAI's `code` for the errors its clients look for.
CODES = {grpc.StatusCode.UNAUTHENTICATED: "invalid_api_key",
         grpc.StatusCode.NOT_FOUND: "model_not_found",
         grpc.StatusCode.RESOURCE_EXHAUSTED: "rate_limit_exceeded"}
# Messages name their field first ("max_tokens: must be >= 1"): that field is `param`.
FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*): ")
# The parts of a pydantic error location that name a union member, not a field.
UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|function-.*)$")


class ModelNotFound(TandemError):
    """A model that is not one of the router's policies (404, as OpenAI answers)."""

    code = grpc.StatusCode.NOT_FOUND


class BodyTooLarge(Exception):
    """A request body over the limit (413), found while it was read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


def error_body(message: str, kind: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def tandem_error_body(exc: TandemError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and error object of a Tandem error; a refused request's message
    names the field first, which becomes `param`."""
    status, kind = HTTP_STATUS.get(exc.code, INTERNAL)
    match = FIELD_PREFIX.match(exc.message) if status in (400, 403, 404) else None
    return status, error_body(exc.message, kind, match.group(1) if match else None,
                              CODES.get(exc.code))


def too_large_response(exc: BodyTooLarge) -> JSONResponse:
    return JSONResponse(error_body(f"body: {exc}", "invalid_request_error", "body"), 413)


def tandem_error_response(exc: TandemError) -> JSONResponse:
    status, body = tandem_error_body(exc)
    headers = {}
    if isinstance(exc, ResourceExhausted) and exc.retry_after_s is not None:
        # Retry-After is whole seconds; the openai client reads retry-after-ms first.
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s))),
                   "retry-after-ms": str(max(1, round(exc.retry_after_s * 1000)))}
    if status == 500:
        logger.error("error %s: %s", exc.code.name, exc.message)
    return JSONResponse(body, status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a field path: ("body", "messages", 0, "role") ->
    messages[0].role."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not UNION_MEMBER.match(str(part)):
            path += f".{part}" if path else str(part)
    return path or "body"


def validation_response(exc: RequestValidationError) -> JSONResponse:
    error = exc.errors()[0]
    field = _location(tuple(error.get("loc", ())))
    if error.get("type") == "extra_forbidden":
        message = f"{field}: unknown or unsupported field"
    elif error.get("type") == "json_invalid":
        field, message = "body", "body: not valid JSON"
    elif field == "body":
        message = "body: must be a JSON object (send Content-Type: application/json)"
    else:
        message = f"{field}: {error.get('msg', 'invalid value')}"
    return JSONResponse(error_body(message, "invalid_request_error", field), 400)


def install_error_handlers(app: FastAPI) -> None:
    async def on_tandem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TandemError)
        return tandem_error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_response(exc)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), exc.status_code,
                            headers=exc.headers)

    async def on_too_large(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyTooLarge)
        return too_large_response(exc)

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error in %s %s", request.method, request.url.path,
                     exc_info=(type(exc), exc, exc.__traceback__))
        status, kind = INTERNAL
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", kind), status)

    app.add_exception_handler(TandemError, on_tandem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(BodyTooLarge, on_too_large)
    app.add_exception_handler(Exception, on_bug)
