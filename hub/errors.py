"""Every error the hub raises, in one tree. They are converted to HTTP, UI or CLI errors only at the boundary.

    HubError                       base; `status`, `type`, `code`, `param` say how the API boundary shows it
    ├── ConfigError                the registry is invalid; `problems` holds one "key.path: message" per line
    ├── RequestError (400)         the request is malformed (bad JSON, a missing or wrong field)
    │   ├── WrongModelType (400)   a text request for an image model or the other way round; names the endpoint
    │   └── ContextLengthExceeded  the prompt alone fills the model's context (hub/fit.py counted it)
    ├── AuthError (401)            API key missing or wrong
    ├── NotFound (404)             no such thing: a path the hub does not serve, a response it did not relay
    │   └── ModelNotFound (404)    no such model in the registry; lists the ones that exist
    ├── MethodNotAllowed (405)     the path is served, not with this method; carries Allow
    ├── Conflict (409)             the thing is not in a state that allows it (cancelling a finished batch)
    ├── PayloadTooLarge (413)      the body is over the hub's limit for its kind
    ├── HeadersTooLarge (431)      the request line and headers are over the hub's limits (sent by `hub serve`)
    ├── TooManyRequests (429)      the model's queue is full (max_concurrency, max_queue); carries Retry-After
    ├── ClientLeft (499)           the client left while its request waited for its model; nobody reads the answer
    ├── UpstreamError (502)        the engine broke off or crashed while serving a request, or ended a stream
    │                              without its last event
    ├── EngineTimeout (504)        the engine did not answer within answer_timeout, or went silent mid-answer past
    │                              stream_idle_timeout; names the key
    └── ModelUnavailable (503)     the model cannot serve now
        ├── StartFailed (503)      the engine failed to start; carries the reason and the tail of its log
        │   └── DownloadFailed     the pull of the model's source before its start failed; says what to do
        ├── StartTimeout (503)     the engine was not ready within start_timeout; carries Retry-After
        ├── MemoryBusy (503)       the budget cannot be freed because the models holding it are busy
        └── WaitTimeout (503)      the request waited max_wait for its model and gave up; carries Retry-After
    RuntimeFailure                 a runtime (process, docker) could not do what was asked; the manager turns it
                                   into StartFailed, the CLI into a one-line message
"""

from __future__ import annotations


class HubError(Exception):
    """Base of every hub error; `status` is the HTTP status the API boundary answers with."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class ConfigError(HubError):
    """The registry is invalid: every problem names its key path and, where it helps, the valid values."""

    code = "invalid_config"

    def __init__(self, problems: list[str], source: str = "registry") -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class RequestError(HubError):
    """The request is malformed: bad JSON, a missing field, a value out of range."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceeded(RequestError):
    """The prompt alone fills the model's context: no room for an answer (OpenAI's code for it; on /v1/messages the
    message starts as Anthropic's does, "prompt is too long")."""

    code = "context_length_exceeded"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="messages")


class WrongModelType(RequestError):
    """The model exists but serves another kind of request; the message names the endpoint to use."""

    code = "wrong_model_type"


class AuthError(HubError):
    """The API key is missing or wrong."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(HubError):
    """No such thing here: a path the hub does not serve, a response it did not relay."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """No model of that id is registered."""

    code = "model_not_found"


class MethodNotAllowed(HubError):
    """The path is served, but not with this method."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, method: str, path: str, allowed: list[str]) -> None:
        super().__init__(f"{method} {path} is not allowed: use {' or '.join(allowed)}",
                         headers={"Allow": ", ".join(allowed)})


class Conflict(HubError):
    """The thing exists but its state does not allow what was asked (cancel a batch that has ended)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(HubError):
    """The request body is larger than the hub takes for that kind of body ([hub] max_body_mb, max_upload_mb)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HeadersTooLarge(HubError):
    """The request line and headers are longer, or the headers more, than the hub takes ([hub] max_header_kb,
    max_headers)."""

    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"
class TooManyRequests(HubError):
    """The model has max_concurrency requests in flight and max_queue waiting: come back after Retry-After."""

    status = 429
    type = "requests"
    code = "queue_full"


class ClientLeft(HubError):
    """The client went away while its request waited for its model (the request left the queue)."""

    status = 499  # nginx's "client closed request": never sent, there is nobody to read it
    type = "invalid_request_error"
    code = "client_closed_request"


class UpstreamError(HubError):
    """The engine broke off or crashed while it served the request."""

    status = 502
    type = "server_error"
    code = "engine_error"


class EngineTimeout(HubError):
    """The engine kept the request past one of the hub's timeouts towards engines; the message names the key."""

    status = 504
    type = "server_error"
    code = "engine_timeout"


class ModelUnavailable(HubError):
    """The model cannot serve right now."""

    status = 503
    type = "server_error"
    code = "model_unavailable"


class StartFailed(ModelUnavailable):
    """The engine failed to start; the message carries the reason and the tail of its log."""

    code = "engine_start_failed"


class DownloadFailed(StartFailed):
    """The pull of the model's hub repo source (before its start) failed or was cancelled; the message names the
    repo and what to do (hub/downloads/worker.py explains each cause)."""

    code = "download_failed"


class StartTimeout(ModelUnavailable):
    """The engine did not become ready within start_timeout."""

    code = "engine_start_timeout"


class MemoryBusy(ModelUnavailable):
    """The memory budget cannot be freed: the models holding it have requests in flight."""

    code = "memory_busy"


class WaitTimeout(ModelUnavailable):
    """The request waited max_wait for its model (a start, another model's run, a free place) and gave up."""

    code = "queue_timeout"


class RuntimeFailure(Exception):
    """A runtime could not start, reach or stop an engine (no such executable, daemon unreachable, image missing)."""
