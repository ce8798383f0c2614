"""HTTP plumbing shared by every allocator route: auth, strict JSON, errors, the body limit.

- Auth: `Authorization: Bearer <KETI_RAY_TOKEN>` on every route but /health and /ready (docs
  and OpenAPI included), through FastAPI's HTTPBearer; compared as bytes, so a non-ASCII
  token is a 401, never a 500.
- Strict JSON: UTF-8 only, no duplicate keys, no NaN/Infinity, bounded nesting. Every problem
  is a 4xx naming the body position; nothing is echoed back beyond a short prefix.
- Body limit: 1 MB, enforced while the body streams in (Starlette's RequestBodyLimitMiddleware
  through FastAPI's `max_body_size`): reading stops at the limit and the answer is 413.

A router another module adds gets the same behaviour with
`APIRouter(route_class=StrictRoute, dependencies=[Auth])`.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Depends, HTTPException, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from keti_ray.constants import ENV_TOKEN

MAX_BODY_BYTES = 1024 * 1024
MAX_ECHO = 40  # characters of a bad value an error may repeat
MAX_MSG = 300

bearer = HTTPBearer(auto_error=False, description="KETI_RAY_TOKEN")


def short(value: Any) -> str:
    """A value as an error may echo it: its repr, cut to a short prefix."""
    text = repr(value)
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "..."


class BadJSON(ValueError):
    """A request body that is not strict JSON; `pos` is where the problem is."""

    def __init__(self, msg: str, pos: int = 0) -> None:
        super().__init__(msg)
        self.pos = pos


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise BadJSON(f"duplicate key {short(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise BadJSON(f"{name} is not a JSON number")


def strict_loads(body: bytes) -> Any:
    """JSON as RFC 8259 means it, or BadJSON saying what is wrong and where."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJSON("body is not UTF-8", exc.start) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadJSON(exc.msg, exc.pos) from None
    except RecursionError:
        raise BadJSON("nested too deeply") from None


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = strict_loads(body)
            except BadJSON as exc:
                # FastAPI turns a JSONDecodeError into a 422 at ("body", pos).
                raise json.JSONDecodeError(str(exc), "", exc.pos) from None
        return self._json


class StrictRoute(APIRoute):
    """A route whose JSON body is parsed by `strict_loads`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


def configured_token(request: Request) -> str | None:
    token = getattr(request.app.state, "token", None)
    return token or os.environ.get(ENV_TOKEN) or None


def require_token(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
) -> None:
    """Bearer-token check, active only when a token is configured (env or app argument)."""
    token = configured_token(request)
    if not token:
        return
    # Starlette decodes header bytes as latin-1: encoding back gives the exact bytes sent.
    given = credentials.credentials.encode("latin-1") if credentials else b""
    if not hmac.compare_digest(given, token.encode("utf-8")):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong token: send 'Authorization: Bearer <KETI_RAY_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_json(request: Request) -> None:
    """POST bodies must say they are JSON (415 naming the header otherwise)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise HTTPException(
            status_code=415,
            detail=f"header content-type must be application/json, got {short(kind)}",
        )


Auth = Depends(require_token)
JSONBody = Depends(require_json)


def field_errors(errors: list[dict]) -> list[dict]:
    """Validation errors as {loc, msg, type}: the field and the rule, never the input."""
    out = []
    for e in errors[:20]:
        msg = str(e.get("msg", ""))
        ctx = e.get("ctx") or {}
        if e.get("type") == "json_invalid" and ctx.get("error"):
            msg = f"{msg}: {ctx['error']}"
        out.append(
            {
                "loc": [x if isinstance(x, int) else str(x)[:MAX_ECHO] for x in e.get("loc", ())],
                "msg": msg[:MAX_MSG],
                "type": str(e.get("type", "")),
            }
        )
    return out


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field (`loc`) and the reason, without echoing inputs back."""
    on_refused = getattr(request.app.state, "on_refused", None)
    if on_refused is not None:
        on_refused()
    return JSONResponse(status_code=422, content={"detail": field_errors(list(exc.errors()))})


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    if exc.status_code == 413:
        detail = [
            {
                "loc": ["body"],
                "msg": f"body is larger than 1 MB ({MAX_BODY_BYTES} bytes); "
                "split a batch into smaller requests",
                "type": "too_large",
            }
        ]
    return JSONResponse(
        status_code=exc.status_code,
        content={"detail": detail},
        headers=getattr(exc, "headers", None),
    )


def problem(status: int, loc: list, msg: str, kind: str = "value_error") -> JSONResponse:
    """One field's problem in the shape FastAPI's validation errors have."""
    return JSONResponse(
        status_code=status,
        content={"detail": [{"loc": loc, "msg": msg[:MAX_MSG], "type": kind}]},
    )
