"""Ray Serve allocator: FastAPI ingress in front of the cluster-state actor.

Routes: POST /allocate, POST /release, GET /partition, GET /health, GET /metrics,
POST /scheduler/filter, POST /scheduler/prioritize. With KETI_RAY_TOKEN set, every route
but /health needs `Authorization: Bearer <token>`. The policy comes from the deployment's
`user_config` ({"policy": "fgd"} or {"checkpoint": PATH}), so a new checkpoint is rolled out
with `serve deploy` and no restart.
"""

import hmac
import os
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from starlette.middleware.base import BaseHTTPMiddleware

from keti_ray.constants import ENV_TOKEN
from serve.extender import (
    MAX_EXTENDER_PRIORITY,
    ExtenderError,
    filter_result,
    node_names,
    pod_request,
)
from serve.schemas import AllocateIn, ReleaseIn
from serve.state import ClusterSource, get_or_create_state
from serve.ui import router as ui_router

MAX_BODY_BYTES = 1024 * 1024


def too_large() -> JSONResponse:
    return JSONResponse(
        status_code=422,
        content={
            "detail": [
                {
                    "loc": ["body"],
                    "msg": f"body is larger than 1 MB ({MAX_BODY_BYTES} bytes); "
                    "split a batch into smaller requests",
                    "type": "too_large",
                }
            ]
        },
    )


class BodyLimit(BaseHTTPMiddleware):
    """Refuse bodies over 1 MB before they are parsed (422, naming the body)."""

    async def dispatch(self, request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return too_large()
        if request.method in ("POST", "PUT", "PATCH") and length is None:
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                return too_large()
        return await call_next(request)


api = FastAPI(title="keti-ray allocator", version="0.1.0")
api.add_middleware(BodyLimit)
api.include_router(ui_router)  # /ui: the operator's view (serve/ui/)


def require_token(request: Request) -> None:
    """Bearer-token check, active only when KETI_RAY_TOKEN is set (env or app argument)."""
    token = request.app.state.token if hasattr(request.app.state, "token") else None
    token = token or os.environ.get(ENV_TOKEN)
    if not token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong token: send 'Authorization: Bearer <KETI_RAY_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


Auth = Depends(require_token)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field (`loc`) and the reason, without echoing large inputs back."""
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": errors})


@serve.deployment(
    name="Allocator",
    num_replicas=1,
    max_ongoing_requests=128,
    ray_actor_options={"num_cpus": 0},
    user_config={"policy": "fgd"},
)
@serve.ingress(api)
class AllocatorIngress:
    """Thin HTTP layer: validates, then asks the state actor, which decides and books."""

    def __init__(self, source: ClusterSource | None = None, token: str | None = None) -> None:
        self.state = get_or_create_state(source or ClusterSource.from_env())
        api.state.token = token

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Hot reload: the state actor swaps the policy between two decisions."""
        await self.state.set_policy.remote(config)

    @api.post("/allocate", dependencies=[Auth])
    async def allocate(self, body: AllocateIn) -> JSONResponse:
        if body.pods is not None:
            results = await self.state.allocate_batch.remote(
                [p.to_request() for p in body.pods], body.dry_run
            )
            placed = sum(1 for r in results if r["status"] == 200)
            return JSONResponse({"results": results, "placed": placed, "total": len(results)})
        assert body.pod is not None
        result = dict(await self._decide((body.pod.to_request(), body.dry_run)))
        status = result.pop("status")
        if status == 409:
            return JSONResponse(
                status_code=409, content={"detail": result["error"], "pod": result["pod"]}
            )
        if status == 422:
            return JSONResponse(
                status_code=422,
                content={"detail": [{"loc": ["body", "pod", "name"], "msg": result["error"]}]},
            )
        return JSONResponse(result)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _decide(self, requests: list[tuple]) -> list[dict]:
        """Concurrent requests share one call to the state actor: the actor hop, not the
        decision, is what a single request costs (bench/serve_allocate.py)."""
        return await self.state.allocate_many.remote(requests)

    @api.post("/release", dependencies=[Auth])
    async def release(self, body: ReleaseIn) -> dict:
        released = await self.state.release.remote(body.pod)
        return {"pod": body.pod, "released": released}

    @api.get("/partition", dependencies=[Auth])
    async def partition(self) -> dict:
        return await self.state.partition.remote()

    @api.get("/health")
    async def health(self) -> dict:
        return await self.state.health.remote()

    @api.get("/metrics", dependencies=[Auth])
    async def metrics(self) -> Response:
        return Response(await self.state.metrics_text.remote(), media_type=CONTENT_TYPE_LATEST)

    @api.post("/scheduler/filter", dependencies=[Auth])
    async def scheduler_filter(self, request: Request) -> dict:
        args = await request.json()
        try:
            names, as_nodes = node_names(args)
            pod = pod_request(args)
        except ExtenderError as exc:
            return {"NodeNames": [], "FailedNodes": {}, "Error": str(exc)}
        ok, failed = await self.state.filter_nodes.remote(pod, names)
        return filter_result(args, ok, failed, as_nodes)

    @api.post("/scheduler/prioritize", dependencies=[Auth])
    async def scheduler_prioritize(self, request: Request) -> list[dict]:
        args = await request.json()
        try:
            names, _ = node_names(args)
            pod = pod_request(args)
        except ExtenderError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        scores = await self.state.prioritize.remote(pod, names)
        assert all(0 <= s["Score"] <= MAX_EXTENDER_PRIORITY for s in scores)
        return scores


def build_app(args: dict[str, Any] | None = None):
    """Serve application builder (`serve run serve.app:build_app nodes_csv=...`)."""
    args = dict(args or {})
    sim = args.pop("sim_nodes", None)
    source = ClusterSource(
        nodes_csv=args.pop("nodes_csv", None),
        sim_nodes=int(sim) if sim is not None else None,
        pods_csv=args.pop("pods_csv", None),
        journal=args.pop("journal", None),
        telemetry_dir=args.pop("telemetry_dir", None),
    )
    if args:
        accepted = "nodes_csv, sim_nodes, pods_csv, journal, telemetry_dir"
        raise ValueError(f"unknown app argument(s) {sorted(args)}; accepted: {accepted}")
    defaults = ClusterSource.from_env()
    for name in ("nodes_csv", "sim_nodes", "pods_csv", "journal", "telemetry_dir"):
        if getattr(source, name) is None:
            setattr(source, name, getattr(defaults, name))
    return AllocatorIngress.bind(source)


app = build_app()
