"""The /hub admin API: list the models with their state and budget, load and unload them, record measured memory
peaks, read engine logs, reload the registry. hub/client.py is its client (the `hub` CLI and the web app).

GET /hub/models answers {"object": "list", "data": [model entries], "budgets": [per host], "time": now}; the
entries and budgets are built here from the manager's slots, and the CLI, the web app and the benchmarks read them.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict

from hub import __version__
from hub.errors import ConfigError
from hub.ledger import MemoryReport
from hub.manager import Manager, Slot
from hub.reloading import reload_file
from hub.vocab import error_body


def model_entry(manager: Manager, s: Slot) -> dict[str, Any]:
    """One model's public state, as listed by GET /hub/models and answered by load, unload and memory."""
    return {
        "id": s.id,
        "type": s.cfg.type,
        "engine": s.cfg.engine,
        "runtime": s.runtime_name if s.engine.managed else "external",
        "host": s.host,
        "hosts": s.cfg.hosts,
        "state": s.state.value,
        "pending": manager.reloads.pending(s),  # what a registry reload left to do (hub/manager/reload.py)
        "memory_gb": s.cfg.memory_gb,
        "budget_gb": manager.memory_of(s),
        "measured_gb": m.peak_gb if (m := manager.ledger.get(s.id)) else None,
        "measured_device": m.device if m else None,
        "pinned": s.cfg.pinned,
        "sleep": s.cfg.sleep,
        "ttl": manager.ttl_of(s),
        "in_flight": s.in_flight,
        "queued": s.queued,
        "max_concurrency": s.limits.max_concurrency or None,
        "max_queue": s.limits.max_queue,
        "last_used": s.last_used or None,
        "reason": s.reason,
        "starts": s.starts,
        "wakes": s.wakes,
        "ready_seconds": (s.ready_at - s.started_at) if s.ready_at and s.started_at else None,
        **({"process": s.handle.info} if s.handle else {}),
        **({"download": job.to_json()} if (job := manager.downloads.of_model(s.id)) else {}),  # hub/downloads/
    }


def model_entries(manager: Manager) -> list[dict[str, Any]]:
    """Every registered model's entry, in registry order."""
    return [model_entry(manager, s) for s in manager.slots.values()]


def budgets(manager: Manager) -> list[dict[str, Any]]:
    """Budget and use per host: the local one first, then the registry's remote hosts."""
    registry = manager.registry
    hosts = ["local", *registry.hosts]
    return [{"host": h, "budget_gb": registry.budget_of(h), "used_gb": manager.used_gb(h),
             "sleep_budget_gb": registry.sleep_budget_of(h), "sleep_used_gb": manager.sleep_used_gb(h)} for h in hosts]


def listing(manager: Manager) -> dict[str, Any]:
    """The body of GET /hub/models."""
    return {"object": "list", "data": model_entries(manager), "budgets": budgets(manager), "time": time.time(),
            "version": __version__}


# "token" as a word: hf_token, --api-token, not max_tokens, --max-num-batched-tokens nor --tokenizer
SECRET = re.compile(r"key|token(?![a-z])|secret|passw|auth|credential", re.IGNORECASE)
URL_SECRETS = (re.compile(r"(://)[^/@\s]+(@)"),  # user:password@host
               re.compile(r"([?&][^=&\s]*(?:key|token|secret|passw|auth)[^=&\s]*=)[^&\s]*()", re.IGNORECASE))


def redacted(value: Any, name: str = "") -> Any:
    """A registry value with what may be a secret hidden: every value of an environment table, any value under a
    key that names a key, token, secret, password or credential, the value after such a flag in a command line
    (`--api-key X`, `--hf-token=X`), and the password and key parameters of a URL."""
    if isinstance(value, dict):
        hide = name == "env"
        return {k: "***" if (hide or SECRET.search(str(k))) and v not in (None, "") else redacted(v, str(k))
                for k, v in value.items()}
    if isinstance(value, list):
        out: list[Any] = []
        for i, v in enumerate(value):
            before = value[i - 1] if i else None
            if (isinstance(before, str) and before.startswith("-") and "=" not in before and SECRET.search(before)
                    and not (isinstance(v, str) and v.startswith("-"))):
                out.append("***")
            elif isinstance(v, str) and v.startswith("-") and "=" in v and SECRET.search(v.partition("=")[0]):
                out.append(v.partition("=")[0] + "=***")
            else:
                out.append(redacted(v))
        return out
    if isinstance(value, str):
        for pattern in URL_SECRETS:
            value = pattern.sub(r"\1***\2", value)
        return value
    return value


def model_config(manager: Manager, s: Slot) -> dict[str, Any]:
    """A model's registry entry as the file gives it (defaults left out), secrets hidden: what a run's manifest
    keeps of the models it used."""
    return redacted(s.cfg.model_dump(mode="json", exclude_unset=True))


def manager_of(request: Request) -> Manager:
    """The manager of the app serving the request (create_app keeps it in app.state)."""
    return request.app.state.manager


router = APIRouter()


@router.get("/hub/models")
async def hub_models(manager: Manager = Depends(manager_of)) -> dict[str, Any]:
    return listing(manager)


@router.get("/hub/models/{model_id}")
async def hub_model(model_id: str, manager: Manager = Depends(manager_of)) -> dict[str, Any]:
    """One model's entry, with its registry entry under "config" (secrets hidden) and the hub's version."""
    s = manager.slot(model_id)
    return {**model_entry(manager, s), "config": model_config(manager, s), "version": __version__}


@router.post("/hub/models/{model_id}/load")
async def hub_load(model_id: str, manager: Manager = Depends(manager_of)) -> dict[str, Any]:
    return model_entry(manager, await manager.load(model_id))


@router.post("/hub/models/{model_id}/unload")
async def hub_unload(model_id: str, manager: Manager = Depends(manager_of)) -> dict[str, Any]:
    return model_entry(manager, await manager.unload(model_id))


@router.post("/hub/models/{model_id}/memory")
async def hub_memory(model_id: str, report: MemoryReport, manager: Manager = Depends(manager_of)) -> dict[str, Any]:
    """Keep a measured peak (benchmarks/memory.py) in the memory ledger; it budgets undeclared models."""
    s = manager.slot(model_id)  # a LoRA adapter's id (<id>:<name>) measures its model: kept under the model's id
    manager.ledger.record(s.id, report.peak_gb, report.device, report.source)
    return model_entry(manager, s)


@router.get("/hub/models/{model_id}/logs")
async def hub_logs(model_id: str, tail: int = 200, manager: Manager = Depends(manager_of)) -> PlainTextResponse:
    # the runtime reads the log from a Docker host or a Ray actor: blocking, so off the event loop
    return PlainTextResponse(await asyncio.to_thread(manager.logs, model_id, max(1, min(tail, 10000))))


class ReloadRequest(BaseModel):
    """The body of POST /hub/reload."""

    model_config = ConfigDict(extra="forbid")
    restart: bool = False  # restart changed engines at once (drained first), rather than once each is idle


@router.post("/hub/reload", response_model=None)
async def hub_reload(request: Request, body: ReloadRequest | None = None,
                     manager: Manager = Depends(manager_of)) -> dict[str, Any] | JSONResponse:
    """Reread the registry file the hub was started from and apply it (hub/manager/reload.py); the report, or a
    400 with every problem of a broken file (nothing changed then)."""
    try:
        report = await reload_file(manager, request.app.state.reloading, (body or ReloadRequest()).restart, "POST")
    except ConfigError as err:
        return JSONResponse(error_body(f"registry not reloaded, nothing changed: {err.message}",
                                       "invalid_request_error", None, "invalid_config"), 400)
    return report.model_dump()
