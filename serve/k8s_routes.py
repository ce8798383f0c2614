"""Kubernetes routes of the allocator: the extender's bindVerb and the cluster-sync status.

Included by serve/app.py with the app's token dependency (one line), so they are guarded as
every other route: kube-scheduler reaches them through the TLS gate (keti_ray/k8s/tlsgate.py),
which checks its client certificate and adds the bearer token.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import ray
from fastapi import APIRouter, Request

from keti_ray.k8s.bind import Binder
from keti_ray.k8s.runtime import RemoteFacade, api_from_env
from serve.state import RAY_NAMESPACE, STATE_ACTOR_NAME

CALL_TIMEOUT_S = 30.0

router = APIRouter()
_binder: Binder | None = None


def _state():
    return ray.get_actor(STATE_ACTOR_NAME, namespace=RAY_NAMESPACE)


def _call(method: str, *args: Any, **kwargs: Any) -> Any:
    return ray.get(_state().facade.remote(method, *args, **kwargs), timeout=CALL_TIMEOUT_S)


def binder() -> Binder | None:
    """The replica's Binder (its own API client; the bookings go to the state actor)."""
    global _binder
    if _binder is None:
        api = api_from_env()
        if api is None:
            return None
        _binder = Binder(api, RemoteFacade(_call))
    return _binder


@router.post("/scheduler/bind")
async def scheduler_bind(request: Request) -> dict:
    """ExtenderBindingArgs in, ExtenderBindingResult out (always 200: kube-scheduler reads
    `Error`)."""
    try:
        args = json.loads(await request.body())
    except ValueError:
        return {"Error": "ExtenderBindingArgs must be a JSON object"}
    b = binder()
    if b is None:
        return {"Error": "the allocator is not on Kubernetes (KETI_K8S_API is unset)"}
    return await asyncio.to_thread(b.bind, args)


@router.get("/k8s/status")
async def k8s_status() -> dict:
    """What the cluster sync saw: nodes (modelled or why not), watches, the last reconcile."""
    ref = _state().k8s_status.remote()
    return await asyncio.wrap_future(ref.future())
