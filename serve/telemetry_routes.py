"""POST /telemetry: the stand-alone node agents push their samples here (HttpSink).

Included by serve/app.py; guarded as every route (bearer token), strict JSON, bounded body.
The state actor claims the batch ID (dropping a re-sent batch) and queues the rows for the
telemetry store off the request path (keti_ray/booking/ingest.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from ray.exceptions import RayError

from serve.http import Auth, JSONBody, StrictRoute, problem
from serve.schemas import TelemetryIn

router = APIRouter(route_class=StrictRoute, dependencies=[Auth])


@router.post("/telemetry", dependencies=[JSONBody])
async def telemetry(body: TelemetryIn, request: Request) -> JSONResponse:
    """200 {"duplicate": false, "queued": n} for a new batch, {"duplicate": true} for one seen
    before; 422 naming the record the store refuses; 503 (retry) when the ID cannot be kept."""
    state = request.app.state.allocator_state
    try:
        result = await state.push_telemetry.remote(
            body.node,
            body.batch,
            [g.model_dump() for g in body.inventory],
            [r.model_dump() for r in body.records],
        )
    except RayError as exc:  # the state actor restarts: the agent keeps the batch, retries
        result = {
            "status": 503,
            "error": f"the allocator's state is restarting ({exc.__class__.__name__})",
        }
    status = result.pop("status")
    if status == 200:
        return JSONResponse(result)
    if status == 422:
        return problem(422, ["body", "records"], result["error"])
    return JSONResponse(
        status_code=503, content={"detail": result["error"]}, headers={"Retry-After": "1"}
    )


@router.get("/telemetry/status")
async def telemetry_status(request: Request) -> dict:
    """Batches taken, duplicates dropped, nodes heard from, rows written."""
    return await request.app.state.allocator_state.telemetry_status.remote()
