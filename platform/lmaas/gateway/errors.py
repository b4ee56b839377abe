"""Domain errors of the gateway and the one place that turns any error into OpenAI's body.

Routes and services raise `ApiError` subclasses; FastAPI's validation errors (including
malformed JSON), unknown routes and unexpected exceptions are translated here too, so every
error a client sees is ``{"error": {"message", "type", "param", "code"}}`` with the right
status. A 5xx is logged with its traceback; a 4xx is the client's and only counted.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmaas.protocol import ErrorBody, ErrorInfo

__all__ = [
    "ApiError",
    "AuthenticationError",
    "BadGateway",
    "Conflict",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "ServiceUnavailable",
    "install_error_handlers",
]

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status and an OpenAI error body."""

    status = 400
    type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        info = ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorBody(error=info).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class InvalidRequest(ApiError):
    status = 400


class AuthenticationError(ApiError):
    status = 401

    def __init__(self, message: str, *, code: str = "invalid_api_key") -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class PermissionDenied(ApiError):
    status = 403
    type = "permission_error"


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class RateLimited(ApiError):
    """429 with ``Retry-After`` (whole seconds, at least 1)."""

    status = 429

    def __init__(self, message: str, *, kind: str, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(message, code="rate_limit_exceeded", headers={"Retry-After": str(seconds)})
        self.type = kind  # "requests" or "tokens", as OpenAI does
        self.retry_after_s = seconds


class BadGateway(ApiError):
    status = 502
    type = "server_error"


class ServiceUnavailable(ApiError):
    status = 503
    type = "service_unavailable"


_STATUS_TYPES = {
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
}


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        error = InvalidRequest(
            "We could not parse the JSON body of your request: send valid JSON with "
            "Content-Type: application/json.",
            code="invalid_json",
        )
        return error.response()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _param(tuple(first.get("loc", ())))
    where = f"{param}: " if param else ""
    return InvalidRequest(f"{where}{first.get('msg', 'invalid value')}", param=param).response()


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404:
        message = "Not found: no such endpoint"
    error = ApiError(message, status=exc.status_code, headers=getattr(exc, "headers", None))
    error.type = _STATUS_TYPES.get(exc.status_code, "invalid_request_error")
    return error.response()


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    error = ApiError(
        "The server had an error while processing your request; it has been logged.",
        status=500,
    )
    error.type = "server_error"
    return error.response()


def install_error_handlers(app: FastAPI) -> None:
    """Make every error of `app` answer with the OpenAI error body."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
