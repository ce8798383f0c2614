"""Kubernetes routes of the allocator: the extender's bindVerb and the cluster-sync status.

Included by serve/app.py (one line). Guarded as every other route (bearer token): kube-scheduler
reaches them through the TLS gate (keti_ray/k8s/tlsgate.py), which checks its client
certificate and adds the token. The bind runs here in the replica (its API calls do not hold the
state actor); only the bookings go to the state actor.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from keti_ray.booking.service import Conflict, NoFit
from keti_ray.k8s.bind import Binder
from keti_ray.k8s.runtime import api_from_env
from serve.http import Auth, JSONBody, StrictRoute, strict_loads

CALL_TIMEOUT_S = 30.0

router = APIRouter(route_class=StrictRoute, dependencies=[Auth])
_binders: dict[int, Binder] = {}


class StateFacade:
    """The allocation service's facade as the state actor offers it (serve/state.py), with the
    service's outcomes as exceptions, as the Binder expects (CONTRACTS §4)."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def _get(self, ref):
        return ray.get(ref, timeout=CALL_TIMEOUT_S)

    def allocate(self, pod, dry_run: bool = False, node: str | None = None, uid: str | None = None):
        (result,) = self._get(self.state.allocate_many.remote([(pod, dry_run, node, uid)]))
        status = result.get("status")
        if status == 200:
            return result
        error = str(result.get("error", ""))
        if status == 409 and result.get("conflict") is True:
            raise Conflict(error)
        if status == 409:
            raise NoFit(error)
        raise Refused(f"{status}: {error}")

    def release(self, key: str, uid: str | None = None) -> bool:
        result = self._get(self.state.release.remote(key, uid))
        if result.get("status") == 503:
            raise Refused(f"503: {result.get('error')}")
        return bool(result.get("released"))


class Refused(Exception):
    """The service refused the request or its store is unavailable."""


def binder(state: Any) -> Binder | None:
    """The replica's Binder (its own API client); None when not on Kubernetes."""
    found = _binders.get(id(state))
    if found is None:
        api = api_from_env()
        if api is None:
            return None
        found = _binders[id(state)] = Binder(api, StateFacade(state))
    return found


@router.post("/scheduler/bind", dependencies=[JSONBody])
async def scheduler_bind(request: Request) -> JSONResponse:
    """ExtenderBindingArgs in, ExtenderBindingResult out (200 with `Error` set on failure:
    that is what kube-scheduler reads)."""
    try:
        args = strict_loads(await request.body())
    except ValueError as exc:
        return JSONResponse({"Error": f"ExtenderBindingArgs: JSON decode error: {exc}"})
    b = binder(request.app.state.allocator_state)
    if b is None:
        return JSONResponse({"Error": "the allocator is not on Kubernetes (KETI_K8S_API unset)"})
    return JSONResponse(await asyncio.to_thread(b.bind, args))


@router.get("/k8s/status")
async def k8s_status(request: Request) -> dict:
    """What the cluster sync saw: nodes (modelled or why not), watches, the last reconcile."""
    return await request.app.state.allocator_state.k8s_status.remote()
