"""The Batch API's external shapes (OpenAI's File and Batch objects, the create request, an input line) and the
input file's checks: every line a `{"custom_id", "method": "POST", "url", "body"}` object, custom_ids unique, the
url the batch's endpoint, the body's model a registered model that serves it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from hub.endpoints import BY_PATH
from hub.errors import RequestError

# What a batch line may call: OpenAI's batch endpoints the hub serves, and (the hub's own) image generations
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
                   "/v1/images/generations")
SHOWN_PROBLEMS = 10  # a bad input file's first problems, listed in its 400


class FileObject(BaseModel):
    """OpenAI's File object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class RequestCounts(BaseModel):
    """How many of a batch's lines there are, and how many completed or failed."""

    total: int
    completed: int
    failed: int


class BatchError(BaseModel):
    """One problem of a batch (OpenAI's BatchError)."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    """A batch's problems."""

    object: Literal["list"] = "list"
    data: list[BatchError]


Status = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                 "cancelled"]


class BatchObject(BaseModel):
    """OpenAI's Batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Status
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> BatchObject:
        """The object of a batch's database row."""
        counts = RequestCounts(total=row["total"], completed=row["completed"], failed=row["failed"])
        meta = json.loads(row["metadata"]) if row.get("metadata") else None
        errors = BatchErrors.model_validate_json(row["errors"]) if row.get("errors") else None
        fields = {k: v for k, v in row.items() if k in cls.model_fields and k not in ("metadata", "errors")}
        return cls(**fields, request_counts=counts, metadata=meta, errors=errors)


class BatchCreate(BaseModel):
    """POST /v1/batches."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str = Field(description='"24h" as OpenAI takes it; the hub takes any duration ("2s", "1h")')
    # OpenAI's limits: 16 pairs, keys of 64 characters, values of 512
    metadata: dict[Annotated[str, StringConstraints(max_length=64)],
                   Annotated[str, StringConstraints(max_length=512)]] | None = Field(None, max_length=16)


class InputLine(BaseModel):
    """One line of a batch's input file."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: str
    body: dict[str, Any]


def parse_input(content: bytes, endpoint: str, max_lines: int,
                refusal: Callable[[str, str], str | None]) -> list[InputLine]:
    """The input file's lines, checked; a RequestError listing the first problems, each with its line number and
    what to fix. `refusal(model, url)` says why a model cannot serve a url (None: it can)."""
    problems: list[str] = []
    lines: list[InputLine] = []
    seen: dict[str, int] = {}
    text = content.decode("utf-8", errors="replace").splitlines()
    numbered = [(n, s) for n, s in enumerate(text, 1) if s.strip()]
    if not numbered:
        raise RequestError("the input file has no lines: write one JSON object per line, "
                           '{"custom_id", "method": "POST", "url", "body"}', param="input_file_id")
    if len(numbered) > max_lines:
        raise RequestError(f"the input file has {len(numbered)} lines, more than the hub takes in one batch "
                           f"({max_lines}: max_batch_lines in [hub] of the registry); split it into several batches",
                           param="input_file_id")
    for n, raw in numbered:
        if len(problems) >= SHOWN_PROBLEMS:
            break
        try:
            line = InputLine.model_validate_json(raw)
        except ValidationError as err:
            e = err.errors()[0]
            where = ".".join(str(p) for p in e["loc"])
            problems.append(f"line {n}: {where + ': ' if where else ''}{e['msg']} (each line is a JSON object "
                            '{"custom_id": "...", "method": "POST", "url": "...", "body": {...}})')
            continue
        why = line_problem(line, endpoint, refusal)
        if line.custom_id in seen:
            why = f"custom_id {line.custom_id!r} is used on line {seen[line.custom_id]} too: custom_ids must be unique"
        if why:
            problems.append(f"line {n}: {why}")
            continue
        seen[line.custom_id] = n
        lines.append(line)
    if problems:
        more = " (and maybe more)" if len(problems) >= SHOWN_PROBLEMS else ""
        raise RequestError(f"the input file has {len(problems)} bad line(s){more}: " + "; ".join(problems),
                           param="input_file_id")
    return lines


def line_problem(line: InputLine, endpoint: str, refusal: Callable[[str, str], str | None]) -> str | None:
    """What is wrong with one parsed line (None: nothing)."""
    if line.url != endpoint:
        return f"url {line.url!r} is not the batch's endpoint {endpoint!r}: every line of a batch calls its endpoint"
    model = line.body.get("model")
    if not isinstance(model, str) or not model:
        return "body.model is missing: name a registered model (see GET /v1/models)"
    if line.body.get("stream"):
        return "body.stream is true: batch lines cannot stream (leave stream out)"
    for f in BY_PATH[endpoint].required:
        value = line.body.get(f.name)
        if value is None or (f.types and not isinstance(value, f.types)):
            return f"body.{f.name} must be {f.what}"
    return refusal(model, endpoint)
