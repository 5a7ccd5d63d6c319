"""Errors over HTTP: every one is JSON, ``{"error": {"code": ..., "message": ...}}``, never a traceback.

Route handlers and middleware raise :class:`ApiError` (a status, a stable machine-readable code
and one line for people); ``EXCEPTION_HANDLERS`` turns it, FastAPI's validation errors (400
malformed JSON, 422 wrong shape), Starlette's 404/405 and any bug (a bare 500, the traceback only
in the server log) into that body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from gpt2clf.serve.extra import missing_extra

try:
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
except ImportError as err:  # pragma: no cover - exercised by a test that hides the extra
    raise missing_extra(err) from err

__all__ = ["EXCEPTION_HANDLERS", "STATUS_CODES", "ApiError", "error_response", "http_error", "internal_error",
           "invalid_request", "validation_message"]

log = logging.getLogger("gpt2clf.serve.app")


class ApiError(HTTPException):
    """An HTTP error with a machine-readable ``code``; rendered as the JSON error body."""

    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code


STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
                415: "unsupported_media_type", 422: "invalid_request", 500: "internal_error",
                503: "unavailable", 504: "timeout"}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def validation_message(errors: Sequence[dict[str, Any]]) -> str:
    """The first pydantic error as one line: ``body.top_k: Input should be greater than or equal to 1``."""
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid request')}{more}"



async def http_error(request: Request, err: HTTPException) -> JSONResponse:
    """Any HTTP error (ours, FastAPI's or Starlette's 404/405) as the JSON error body."""
    code = getattr(err, "code", None) or STATUS_CODES.get(err.status_code, "error")
    return error_response(err.status_code, code, str(err.detail), getattr(err, "headers", None))


async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """400 for malformed JSON, 422 for valid JSON of the wrong shape."""
    errors = err.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "JSON decode error")
        return error_response(400, "malformed_json", f"request body is not valid JSON: {reason}")
    return error_response(422, "invalid_request", validation_message(errors))


async def internal_error(request: Request, err: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered with a bare 500 (never the traceback)."""
    log.exception("gpt2clf: internal error on %s", request.url.path)
    return error_response(500, "internal_error", "internal error; see the server log")


EXCEPTION_HANDLERS: dict[Any, Callable[..., Any]] = {
    HTTPException: http_error, RequestValidationError: invalid_request, Exception: internal_error}

