"""Errors as ``application/problem+json`` (RFC 9457) with the CLI's wording; never a stack trace to a client."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from granary.errors import (
    AlreadyExistsError,
    AmbiguousRefError,
    AuthorizationError,
    ConflictError,
    GranaryError,
    IntegrityError,
    NotFoundError,
)
from granary.models.errors import ModelNotFoundError, PromotionRefusedError
from granary.sched.errors import JobNotFoundError, NodeNotFoundError, TransitionError
from granary.secure.errors import AuthenticationError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"

_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (AuthenticationError, 401, "unauthenticated"),
    (AuthorizationError, 403, "forbidden"),
    (JobNotFoundError, 404, "not-found"),
    (NodeNotFoundError, 404, "not-found"),
    (NotFoundError, 404, "not-found"),
    (ModelNotFoundError, 404, "not-found"),
    (PromotionRefusedError, 409, "promotion-refused"),
    (AmbiguousRefError, 400, "ambiguous-ref"),
    (AlreadyExistsError, 409, "already-exists"),
    (ConflictError, 409, "conflict"),
    (TransitionError, 409, "conflict"),
    (IntegrityError, 500, "integrity"),
    (ValueError, 400, "bad-request"),
    (GranaryError, 400, "bad-request"),
)


def problem(status: int, kind: str, detail: str, *, hint: str | None = None, **extra: Any) -> JSONResponse:
    """A problem response."""
    body: dict[str, Any] = {"type": f"https://granary.dev/problems/{kind}", "title": kind.replace("-", " "),
                            "status": status, "detail": detail}
    if hint:
        body["hint"] = hint
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def problem_for(exc: BaseException) -> JSONResponse:
    """The problem response of a library error (its message without the hint, and the hint apart)."""
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            hint = getattr(exc, "hint", None)
            detail = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
            return problem(status, kind, detail, hint=hint)
    raise exc


def install(app: FastAPI) -> None:
    """Register the handlers: library errors, validation errors, HTTP errors and anything unexpected."""

    async def granary_error(_request: Request, exc: Exception) -> JSONResponse:
        return problem_for(exc)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()]
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return problem(422, "invalid-request", f"invalid request: {where}", errors=errors)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem(exc.status_code, "http-" + str(exc.status_code), str(exc.detail))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal", "internal server error; the server log has the details")

    app.add_exception_handler(GranaryError, granary_error)
    app.add_exception_handler(ValueError, granary_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
