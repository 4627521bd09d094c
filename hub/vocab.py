"""Errors in each protocol's own words, at the API boundary: OpenAI's shape and types everywhere, Anthropic's on
/v1/messages. The hub's own errors (hub/errors.py) carry their type and code; an engine's error is rewritten here,
keeping its message, because engines use their own names (vLLM answers `{"type": "BadRequestError", "code": 400}`,
on /v1/messages too), and clients act on the protocol's: LangChain trims a conversation on
`context_length_exceeded`, and Claude Code compacts one on Anthropic's "prompt is too long".
"""

from __future__ import annotations

import json
import re
from typing import Any

from hub.endpoints import Dialect, Endpoint
from hub.errors import HubError

ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
                   504: "timeout_error", 529: "overloaded_error"}
ANTHROPIC_KINDS = frozenset({*ANTHROPIC_TYPES.values(), "api_error", "billing_error"})
# OpenAI's type and code of an engine error, by its status (a code the engine gave as a string is kept)
OPENAI_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"), 404: ("invalid_request_error", "not_found"),
    413: ("invalid_request_error", "request_too_large"), 422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}
# How engines say that a prompt does not fit the context (vLLM's wordings across its versions, and the
# OpenAI-compatible servers that copy OpenAI's "maximum context length"); a message that names an output-limit
# parameter is about the limit, not the prompt ("max_tokens must be less than the context length")
CONTEXT_EXCEEDED = re.compile(r"maximum context length|context window|prompt is too long|"
                              r"(input|prompt)[^.]{0,80}exceeds?[^.]{0,40}(context|max_model_len)", re.I)
OUTPUT_PARAM = re.compile(r"\bmax_(completion_|output_|new_)?tokens\b")


def context_exceeded(message: str) -> bool:
    """Whether an engine's error message says that the prompt does not fit the model's context."""
    return CONTEXT_EXCEEDED.search(message) is not None and OUTPUT_PARAM.search(message) is None


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def anthropic_error_body(message: str, status: int, kind: str | None = None) -> dict[str, Any]:
    """Anthropic's error shape."""
    kind = kind or ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def shaped_error(err: HubError, dialect: Dialect = "openai") -> dict[str, Any]:
    """A HubError's body in the client's dialect."""
    if dialect == "anthropic":
        return anthropic_error_body(err.message, err.status)
    return error_body(err.message, err.type, err.param, err.code)


def stream_error(err: HubError, ep: Endpoint, sequence: int = 0) -> bytes:
    """The last event of a broken stream, as the client's SDK reads an error: Anthropic's `error` event, the
    Responses API's `error` event (numbered `sequence`, after the engine's last), or a chunk carrying an OpenAI
    error."""
    if ep.dialect == "anthropic":
        return f"event: error\ndata: {json.dumps(anthropic_error_body(err.message, err.status))}\n\n".encode()
    body = error_body(err.message, err.type, None, err.code)
    if ep.task == "responses":
        event = {"type": "error", "code": err.code, "message": err.message, "param": None,
                 "sequence_number": sequence, **body}
        return f"event: error\ndata: {json.dumps(event)}\n\n".encode()
    return f"data: {json.dumps(body)}\n\n".encode()


def engine_error(data: bytes, status: int, dialect: Dialect) -> bytes:
    """An engine's error answer (`status` >= 400) in the client's dialect and vocabulary, with the engine's
    message: its OpenAI or Anthropic body, Starlette's {"detail": ...} for a path or method it does not serve, or
    any text."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        message, param, code = err["message"], err.get("param"), err.get("code")
    elif isinstance(body, dict) and (err or body.get("detail") or body.get("message")):
        message, param, code = f"the engine answered: {err or body.get('detail') or body.get('message')}", None, None
    else:
        text = data.decode("utf-8", "replace")[:2000].strip()
        message, param, code = f"the engine answered: {text}" if text else f"the engine answered {status}", None, None
    context = status in (400, 413, 422) and context_exceeded(message)
    if status in (401, 403):  # the engine refused the hub's own credentials (an `openai` engine's api_key_env)
        message = f"the engine refused the hub's credentials for it (the model's args.api_key_env): {message}"
        code = "engine_unauthorized"
    if dialect == "anthropic":
        kind = err.get("type") if isinstance(err, dict) else None
        if context:
            kind = "invalid_request_error"
            if not message.lower().startswith("prompt is too long"):
                message = f"prompt is too long: {message}"
        return json.dumps(anthropic_error_body(message, status, kind if kind in ANTHROPIC_KINDS else None)).encode()
    kind, default_code = OPENAI_KINDS.get(status, ("invalid_request_error", None) if status < 500
                                          else ("server_error", None))
    if context:
        code = "context_length_exceeded"
    elif status not in (401, 403) and (not isinstance(code, str) or not code or code.isdigit()):
        code = default_code
    return json.dumps(error_body(message, kind, param if isinstance(param, str) else None, code)).encode()
