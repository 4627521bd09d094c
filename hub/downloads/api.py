"""The download routes of the /hub admin API (hub/client.py's Admin calls them; the CLI's `hub pull` and the web app
use it):

    POST   /hub/models/{id}/pull    start the model's pull, or join the one under way: 202 with the job; 200 with a
                                    job already done when the cache holds the model complete (no network asked)
    GET    /hub/downloads           {"object": "list", "data": [jobs, newest first]}
    GET    /hub/downloads/{job}     one job
    DELETE /hub/downloads/{job}     cancel it (its worker is killed): the job, cancelled; 409 once it has ended

A job is hub/downloads/status.py's Job.to_json(); a model's entry in GET /hub/models carries its running (else newest)
job under "download". Errors are the hub's (OpenAI-shaped): 404 for an unknown model or job, 409 for a model with
nothing to pull (a local folder, an engine that reads no repo, a remote Docker host).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from hub.downloads.jobs import Downloads
from hub.downloads.target import models_sharing, target_of

router = APIRouter()


def _parts(request: Request) -> tuple[Any, Downloads]:
    manager = request.app.state.manager
    return manager, manager.downloads


@router.post("/hub/models/{model_id}/pull")
async def pull(model_id: str, request: Request) -> JSONResponse:
    manager, downloads = _parts(request)
    manager.slot(model_id)  # ModelNotFound, listing the models
    registry = manager.registry
    target = target_of(registry, model_id, strict=True)
    assert target is not None  # strict: it raised instead
    job = await downloads.pull(target, models_sharing(registry, target) or [model_id])
    return JSONResponse(job.to_json(), 202 if job.running else 200)


@router.get("/hub/downloads")
async def listing(request: Request) -> dict[str, Any]:
    _, downloads = _parts(request)
    return {"object": "list", "data": [j.to_json() for j in downloads.listing()]}


@router.get("/hub/downloads/{job_id}")
async def one(job_id: str, request: Request) -> dict[str, Any]:
    _, downloads = _parts(request)
    return downloads.get(job_id).to_json()


@router.delete("/hub/downloads/{job_id}")
async def cancel(job_id: str, request: Request) -> dict[str, Any]:
    _, downloads = _parts(request)
    return (await downloads.cancel(job_id)).to_json()
