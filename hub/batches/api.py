"""The routes of OpenAI's Files and Batches APIs: /v1/files[/{id}[/content]] and /v1/batches[/{id}[/cancel]].
Errors are HubErrors, answered in OpenAI's shape by the app's handler (hub/router.py)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from hub.batches.service import MB, Batches
from hub.batches.shapes import BatchCreate, BatchObject, FileObject
from hub.errors import RequestError

router = APIRouter(tags=["batches"])
FORM_SLACK = 64 * 1024  # a multipart body's own bytes around the file (boundaries, the purpose field)


def batches_of(request: Request) -> Batches:
    """The Batches of the app serving the request (create_app keeps it in app.state)."""
    return request.app.state.batches


def page(items: list[BaseModel], limit: int) -> dict[str, Any]:
    """OpenAI's cursor page of `items` (fetched one over `limit`, to tell has_more)."""
    data = [i.model_dump() for i in items[:limit]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(items) > limit}


@router.post("/v1/files")
async def upload_file(request: Request, batches: Batches = Depends(batches_of)) -> FileObject:
    """Upload a JSONL file with purpose "batch" (multipart: file, purpose)."""
    if (length := request.headers.get("content-length", "")).isdigit():
        batches.check_size(max(0, int(length) - FORM_SLACK))
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError("POST /v1/files takes multipart/form-data with `file` and `purpose` (\"batch\")")
    limit = int(batches.registry.hub.max_batch_file_mb * MB) + 1
    async with request.form(max_files=1, max_fields=8, max_part_size=1024 * 1024) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or isinstance(upload, str):
            raise RequestError("missing required parameter 'file' (the JSONL file)", param="file")
        if not isinstance(purpose, str):
            raise RequestError("missing required parameter 'purpose' (\"batch\")", param="purpose")
        content = await upload.read(limit)
        return await batches.add_file(upload.filename or "", purpose, content)


@router.get("/v1/files")
async def list_files(purpose: str | None = None, after: str | None = None, limit: int = Query(10000, ge=1, le=10000),
                     order: Literal["asc", "desc"] = "desc", batches: Batches = Depends(batches_of)) -> dict[str, Any]:
    return page(await batches.files(purpose, after, limit + 1, order), limit)


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, batches: Batches = Depends(batches_of)) -> FileObject:
    return await batches.file(file_id)


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, batches: Batches = Depends(batches_of)) -> dict[str, Any]:
    return await batches.delete_file(file_id)


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, batches: Batches = Depends(batches_of)) -> Response:
    return Response(await batches.content(file_id), media_type="application/octet-stream")


@router.post("/v1/batches")
async def create_batch(req: BatchCreate, batches: Batches = Depends(batches_of)) -> BatchObject:
    return await batches.create(req)


@router.get("/v1/batches")
async def list_batches(after: str | None = None, limit: int = Query(20, ge=1, le=100),
                       batches: Batches = Depends(batches_of)) -> dict[str, Any]:
    return page(await batches.batches(after, limit + 1), limit)


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, batches: Batches = Depends(batches_of)) -> BatchObject:
    return await batches.batch(batch_id)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, batches: Batches = Depends(batches_of)) -> BatchObject:
    return await batches.cancel(batch_id)
