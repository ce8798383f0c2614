"""Ray Serve allocator: FastAPI ingress in front of the cluster-state actor.

Routes: POST /allocate, POST /release, GET /partition, GET /bookings, GET /health, GET /ready,
GET /metrics, POST /telemetry, POST /scheduler/filter, POST /scheduler/prioritize, GET /docs,
/redoc, /openapi.json. With KETI_RAY_TOKEN set, every route but /health and /ready needs
`Authorization: Bearer <token>` (serve/http.py). Bodies over 1 MB get 413. The policy comes
from the deployment's `user_config` ({"policy": "ppo"}, the shipped learned policy, by
default; {"policy": "fgd"}, {"checkpoint": PATH} or {"pointer": PATH}), so a new checkpoint is
rolled out with `serve deploy` and no restart. FGD is the fallback: it decides until the PPO
checkpoint is loaded and verified, and keeps deciding (with the reason in /health) when a
checkpoint is refused.

Adding a router (another module's routes): build it with
`APIRouter(route_class=StrictRoute, dependencies=[Auth])`, reach the state actor with the
`allocator_state` dependency, and `api.include_router(router)` below.
"""

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import RayActorError, RayError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve import k8s_routes, telemetry_routes
from serve.extender import (
    MAX_EXTENDER_PRIORITY,
    ExtenderError,
    filter_result,
    node_names,
    pod_request,
)
from serve.http import (
    MAX_BODY_BYTES,
    Auth,
    BadJSON,
    JSONBody,
    StrictRoute,
    http_error,
    problem,
    strict_loads,
    validation_error,
)
from serve.schemas import AllocateIn, ReleaseIn
from serve.state import ClusterSource, get_or_create_state
from serve.ui import router as ui_router

log = logging.getLogger("keti_ray.serve")

api = FastAPI(
    title="keti-ray allocator",
    version="0.2.0",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,  # served below, behind the token
    max_body_size=MAX_BODY_BYTES,
)
api.router.route_class = StrictRoute
api.add_exception_handler(RequestValidationError, validation_error)
api.add_exception_handler(StarletteHTTPException, http_error)
api.include_router(k8s_routes.router)  # Kubernetes: the extender's bindVerb, /k8s/status
api.include_router(ui_router)  # /ui: the operator's view (serve/ui/)
api.include_router(telemetry_routes.router)  # POST /telemetry: node agents' pushes


class StateUnavailable(HTTPException):
    def __init__(self, what: str) -> None:
        super().__init__(
            status_code=503,
            detail=f"the allocator's state is restarting ({what}); retry: an allocate that "
            "is retried gets its booking back (idempotent) or a clean 409",
            headers={"Retry-After": "1"},
        )


async def call_state(method, *args):
    """One call to the state actor; its death mid-call is a 503 (retry), never a 500."""
    try:
        return await method.remote(*args)
    except RayActorError as exc:
        cause = str(exc).strip().splitlines()
        raise StateUnavailable(
            f"{type(exc).__name__}: {cause[-1][:300] if cause else ''}"
        ) from None
    except RayError as exc:
        log.error("state actor call failed: %s", exc)
        raise StateUnavailable(type(exc).__name__) from None


def allocator_state(request: Request):
    """Dependency for routes outside the ingress class: the state actor's handle."""
    return request.app.state.allocator_state


def _single(result: dict) -> JSONResponse:
    """One decision's answer with its status: 200, 409 (no fit, conflict), 422, 503."""
    status = result.pop("status")
    if status == 200:
        return JSONResponse(result)
    if status == 422:
        return problem(422, ["body", "pod"], result["error"])
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(
        status_code=status,
        content={
            "detail": result["error"],
            "pod": result["pod"],
            **({"conflict": result["conflict"]} if "conflict" in result else {}),
        },
        headers=headers,
    )


@serve.deployment(
    name="Allocator",
    num_replicas=1,
    max_ongoing_requests=128,
    ray_actor_options={"num_cpus": 0},
    user_config={"policy": "ppo"},
)
@serve.ingress(api)
class AllocatorIngress:
    """Thin HTTP layer: validates, then asks the state actor, which decides and books."""

    def __init__(self, source: ClusterSource | None = None, token: str | None = None) -> None:
        self.state = get_or_create_state(source or ClusterSource.from_env())
        api.state.token = token
        api.state.allocator_state = self.state
        api.state.on_refused = lambda: self.state.count_refused.remote(1)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Hot reload: the state actor swaps the policy between two decisions."""
        await self.state.set_policy.remote(config)

    @api.post("/allocate", dependencies=[Auth, JSONBody])
    async def allocate(self, body: AllocateIn) -> JSONResponse:
        if body.pods is not None:
            calls = [(p.to_request(), body.dry_run, None, p.uid) for p in body.pods]
            results = await call_state(self.state.allocate_many, calls)
            placed = sum(1 for r in results if r["status"] == 200)
            return JSONResponse({"results": results, "placed": placed, "total": len(results)})
        assert body.pod is not None
        result = await self._decide((body.pod.to_request(), body.dry_run, body.node, body.pod.uid))
        return _single(dict(result))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, max_concurrent_batches=2)
    async def _decide(self, requests: list[tuple]) -> list[dict]:
        """Concurrent requests share one call to the state actor (and one commit): the actor
        hop and the fsync, not the decision, are what a single request costs."""
        return await call_state(self.state.allocate_many, requests)

    @api.post("/release", dependencies=[Auth, JSONBody])
    async def release(self, body: ReleaseIn) -> JSONResponse:
        result = await call_state(self.state.release, body.key, body.uid)
        if result.get("status") == 503:
            return JSONResponse(
                status_code=503,
                content={"detail": result["error"], "pod": body.key},
                headers={"Retry-After": "1"},
            )
        return JSONResponse({"pod": body.key, "released": result["released"]})

    @api.get("/partition", dependencies=[Auth])
    async def partition(self) -> dict:
        return await call_state(self.state.partition)

    @api.get("/bookings", dependencies=[Auth])
    async def bookings(self) -> list[dict]:
        return await call_state(self.state.bookings)

    @api.get("/health")
    async def health(self) -> dict:
        return await call_state(self.state.health)

    @api.get("/ready")
    async def ready(self) -> dict:
        """Readiness: 200 once the state actor answers (503 while it restarts)."""
        await call_state(self.state.ping)
        return {"ready": True}

    @api.get("/metrics", dependencies=[Auth])
    async def metrics(self) -> Response:
        text = await call_state(self.state.metrics_text)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @api.post("/scheduler/filter", dependencies=[Auth, JSONBody])
    async def scheduler_filter(self, request: Request) -> JSONResponse:
        parsed = await self._extender_args(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        args, names, as_nodes, pod = parsed
        ok, failed = await call_state(self.state.filter_nodes, pod, names)
        return JSONResponse(filter_result(args, ok, failed, as_nodes))

    @api.post("/scheduler/prioritize", dependencies=[Auth, JSONBody])
    async def scheduler_prioritize(self, request: Request) -> JSONResponse:
        parsed = await self._extender_args(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        _, names, _, pod = parsed
        scores = await call_state(self.state.prioritize, pod, names)
        assert all(0 <= s["Score"] <= MAX_EXTENDER_PRIORITY for s in scores)
        return JSONResponse(scores)

    async def _extender_args(self, request: Request):
        """ExtenderArgs, strictly parsed; a 422 naming the field (and in `Error`, which
        kube-scheduler reads) for anything it cannot use."""
        try:
            args = strict_loads(await request.body())
            names, as_nodes = node_names(args)
            pod = pod_request(args)
        except BadJSON as exc:
            return self._extender_refusal(["body", exc.pos], f"JSON decode error: {exc}")
        except ExtenderError as exc:
            return self._extender_refusal(["body", *exc.field.split(".")], str(exc))
        return args, names, as_nodes, pod

    def _extender_refusal(self, loc: list, msg: str) -> JSONResponse:
        self.state.count_refused.remote(1)
        return JSONResponse(
            status_code=422,
            content={
                "detail": [{"loc": loc, "msg": msg[:300], "type": "value_error"}],
                "Error": msg[:300],
            },
        )

    @api.get("/openapi.json", dependencies=[Auth], include_in_schema=False)
    async def openapi(self) -> JSONResponse:
        return JSONResponse(api.openapi())

    @api.get("/docs", dependencies=[Auth], include_in_schema=False)
    async def docs(self, request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=api.title)

    @api.get("/redoc", dependencies=[Auth], include_in_schema=False)
    async def redoc(self, request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(openapi_url=f"{root}/openapi.json", title=api.title)


APP_ARGS = ("nodes_csv", "sim_nodes", "pods_csv", "state", "journal", "telemetry_dir")


def build_app(args: dict[str, Any] | None = None):
    """Serve application builder (`serve run serve.app:build_app nodes_csv=...`)."""
    args = dict(args or {})
    unknown = sorted(set(args) - set(APP_ARGS))
    if unknown:
        raise ValueError(f"unknown app argument(s) {unknown}; accepted: {', '.join(APP_ARGS)}")
    sim = args.get("sim_nodes")
    source = ClusterSource(
        nodes_csv=args.get("nodes_csv"),
        sim_nodes=int(sim) if sim is not None else None,
        pods_csv=args.get("pods_csv"),
        state=args.get("state") or args.get("journal"),
        telemetry_dir=args.get("telemetry_dir"),
    )
    defaults = ClusterSource.from_env()
    for name in ("nodes_csv", "sim_nodes", "pods_csv", "state", "telemetry_dir"):
        if getattr(source, name) is None:
            setattr(source, name, getattr(defaults, name))
    return AllocatorIngress.bind(source)


app = build_app()
