from __future__ import annotations

import asyncio

from fastapi import Response, status
from fastapi.responses import JSONResponse

from asyncblog.api.deps import State
from asyncblog.api.routing import service_router
from asyncblog.schemas import Health, Readiness

router = service_router(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: State) -> Response:
    try:
        async with asyncio.timeout(state.settings.readiness_timeout):
            await state.db.ping()
    except Exception:
        return JSONResponse(
            {"status": "unavailable", "database": "unreachable"},
            status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    body: dict[str, object] = {"status": "ok", "database": "ok"}
    if state.db.replicas:  # a replica down or lagging is reported, never a 503
        body["replicas"] = await state.db.replica_states(state.settings.readiness_timeout)
    return JSONResponse(body)
