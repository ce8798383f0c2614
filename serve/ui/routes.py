"""Routes of the operator's view: the page, its two static files, a session, and the
JSON it polls every 2 s (`/ui/state`: the summary plus `/partition`'s nodes)."""

from __future__ import annotations

import asyncio
import html
from importlib.resources import files

import ray
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from serve.state import RAY_NAMESPACE, STATE_ACTOR_NAME
from serve.ui.auth import authorized, end_session, require_ui, start_session
from serve.ui.summary import LatencyWindow, summarize

STATIC = files("serve.ui") / "static"
STATIC_TYPES = {"app.js": "text/javascript", "app.css": "text/css"}
NO_STORE = {"Cache-Control": "no-store"}
# Same-origin only, no framing, no referrer. The map uses inline style attributes (segment
# widths and colours); the sign-in page is self-contained (inline script and style).
PAGE_HEADERS = {
    "index.html": {
        **NO_STORE,
        "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
    },
    "signin.html": {
        **NO_STORE,
        "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
    },
}

router = APIRouter(prefix="/ui", tags=["operator view"])
_window = LatencyWindow()


_handle: list = []  # the state actor's handle, looked up once per process


def allocator_state():
    """The allocator's state actor (the facade): partition(), health(), metrics_text()."""
    if not _handle:
        _handle.append(ray.get_actor(STATE_ACTOR_NAME, namespace=RAY_NAMESPACE))
    return _handle[0]


async def ui_state() -> dict:
    """What the page shows, from the facade's public views, fetched concurrently."""
    state = allocator_state()
    try:
        partition, health, metrics = await asyncio.gather(
            state.partition.remote(), state.health.remote(), state.metrics_text.remote()
        )
    except Exception:
        _handle.clear()  # look the actor up again next time (it may have been replaced)
        raise
    return {"summary": summarize(health, metrics, _window), "nodes": partition["nodes"]}


def _page(name: str, request: Request) -> str:
    root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
    return (STATIC / name).read_text(encoding="utf-8").replace("{{ROOT}}", root)


@router.get("", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request) -> HTMLResponse:
    """The map when signed in (or no token is set); else the sign-in page, with 401."""
    if authorized(request):
        return HTMLResponse(_page("index.html", request), headers=PAGE_HEADERS["index.html"])
    return HTMLResponse(
        _page("signin.html", request), status_code=401, headers=PAGE_HEADERS["signin.html"]
    )


@router.get("/static/{name}", dependencies=[Depends(require_ui)], include_in_schema=False)
async def static(name: str) -> Response:
    if name not in STATIC_TYPES:
        return JSONResponse(status_code=404, content={"detail": f"no static file {name!r}"})
    return Response((STATIC / name).read_bytes(), media_type=STATIC_TYPES[name])


@router.post("/session", status_code=204)
async def session(request: Request) -> Response:
    """Exchange `Authorization: Bearer <token>` for the `/ui` session cookie."""
    response = Response(status_code=204)
    if not start_session(request, response):
        return JSONResponse(
            status_code=401,
            content={"detail": "wrong token: send 'Authorization: Bearer <KETI_RAY_TOKEN>'"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    return response


@router.delete("/session", status_code=204)
async def sign_out(request: Request) -> Response:
    response = Response(status_code=204)
    end_session(request, response)
    return response


@router.get("/state", dependencies=[Depends(require_ui)])
async def state() -> JSONResponse:
    return JSONResponse(await ui_state(), headers=NO_STORE)
