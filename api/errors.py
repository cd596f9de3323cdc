"""Typed domain errors, mapped once to RFC 9457 `application/problem+json` responses."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers


class Unauthorized(Problem):
    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="constellation"'})


class Forbidden(Problem):
    status = 403
    title = "Forbidden"


class MethodNotAllowed(Problem):
    status = 405
    title = "Method not allowed"


class NotFound(Problem):
    status = 404
    title = "Not found"


class InvalidInput(Problem):
    status = 422
    title = "Invalid input"


class Conflict(Problem):
    status = 409
    title = "Conflict"


class PayloadTooLarge(Problem):
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(Problem):
    status = 415
    title = "Unsupported media type"


class ServiceUnavailable(Problem):
    status = 503
    title = "Service unavailable"


def problem_response(
    status: int, title: str, detail: str, *, instance: str | None = None,
    errors: list[dict[str, Any]] | None = None, headers: dict | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status, exc.title, exc.detail, instance=request.url.path, errors=exc.errors, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable_errors(list(exc.errors()))
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"][1:] or first["loc"]) or "request"
        return problem_response(
            422, "Invalid input", f"{where}: {first['msg']}", instance=request.url.path, errors=errors
        )

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        # Text with a NUL character cannot be stored or compared by Postgres; psycopg refuses it
        # before anything is sent, so nothing was written. Anything else is a server error.
        if "NUL (0x00)" not in str(exc.orig):
            raise exc
        return problem_response(422, "Invalid input", "text must not contain NUL (\\u0000) characters",
                                instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a body that is not JSON at all (bytes that are not UTF-8, say):
            # invalid input like any other, with the field it concerns.
            return problem_response(422, "Invalid input", "the body is not valid JSON", instance=request.url.path,
                                    errors=[{"loc": ["body"], "msg": "not valid JSON", "type": "json_invalid"}])
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names only the first route on the path; every method the path answers is allowed.
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=headers)
        return problem_response(
            exc.status_code, _TITLES.get(exc.status_code, "Error"), str(exc.detail),
            instance=request.url.path, headers=headers,
        )


# Methods a path takes only to refuse them with 405 (see `api.jobs.router.estimate_other_methods`).
REFUSED_METHODS: dict[str, set[str]] = {"/jobs/estimate": {"GET", "PUT", "PATCH", "DELETE"}}
PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> str:
    """The methods the request's path answers, as an `Allow` header value: each method some route takes
    for this path (the router asked as it dispatches), less those a path takes only to refuse them."""
    methods = {"OPTIONS"}
    for method in PROBED_METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            methods.add(method)
    return ", ".join(sorted(methods - REFUSED_METHODS.get(request.url.path, set())))


_TITLES = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 413: "Payload too large"}
