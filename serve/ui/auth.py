"""`/ui` behind the allocator's token, usable from a browser.

A browser cannot attach `Authorization` to a page load, so the sign-in page's script sends
the token once, in that header, to `POST /ui/session`; the answer is an HttpOnly,
SameSite=Strict cookie scoped to `/ui` holding an expiry and an HMAC of it keyed by the
token. Any replica checks it without shared state, changing the token ends every session, and
the cookie grants only `/ui` (the API routes still need the header). The token never goes
into a URL.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from fastapi import HTTPException, Request, Response

from serve.http import configured_token

SESSION_COOKIE = "keti_ui_session"
SESSION_TTL_S = 12 * 3600


def _bearer_ok(request: Request, token: str) -> bool:
    """Compared as bytes, as serve/http.py's require_token does: a non-ASCII header is a
    refusal, never a 500 (Starlette decodes headers as latin-1; encoding back is exact)."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("latin-1"), token.encode("utf-8")
    )


def _signature(token: str, expires: int) -> str:
    message = f"keti-ui-session|{expires}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def session_value(token: str, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + SESSION_TTL_S)
    return f"{expires}.{_signature(token, expires)}"


def _session_ok(request: Request, token: str) -> bool:
    expires, _, signature = request.cookies.get(SESSION_COOKIE, "").partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(signature, _signature(token, int(expires)))


def authorized(request: Request) -> bool:
    """No token configured, or the right bearer token, or a valid session cookie."""
    token = configured_token(request)
    return token is None or _bearer_ok(request, token) or _session_ok(request, token)


def require_ui(request: Request) -> None:
    """Dependency for `/ui/*`: 401 without the token or a session."""
    if not authorized(request):
        raise HTTPException(
            status_code=401,
            detail="sign in at /ui (POST /ui/session with 'Authorization: Bearer "
            "<KETI_RAY_TOKEN>'), or send that header",
            headers={"WWW-Authenticate": "Bearer"},
        )


def start_session(request: Request, response: Response) -> bool:
    """Set the session cookie for a request that carries the right bearer token."""
    token = configured_token(request)
    if token is None:
        return True  # nothing to sign in to
    if not _bearer_ok(request, token):
        return False
    response.set_cookie(
        SESSION_COOKIE,
        session_value(token),
        max_age=SESSION_TTL_S,
        path=cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return True


def end_session(request: Request, response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=cookie_path(request))


def cookie_path(request: Request) -> str:
    return f"{request.scope.get('root_path', '').rstrip('/')}/ui"
