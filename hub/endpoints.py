"""The route table: every endpoint the hub forwards to a model's engine, the task a model must serve to take it, and
how its body is read. hub/gateway.py serves the table; the registry, the web app and /v1/models read it.

A model's kind (`type` in the registry) names the tasks it serves (KIND_TASKS); a model's own `tasks` list, where
the registry gives one, replaces them (an `openai` engine in front of a server that does chat and embeddings, a
`command` engine that does transcription and speech). A task is served at one or more paths.

Rules that are not obvious:
- Bodies go to the engine as received; only `model` is read (and, for JSON, `stream` and the fields each endpoint
  requires) so that the hub can route and refuse early. A multipart body's `stream` form field counts as well.
- Responses made by an engine are kept there; GET, DELETE, cancel and input_items of `/v1/responses/{id}` go to the
  model that made the response (the gateway remembers id -> model for the responses it relayed).
- The rerank paths are passed on as called: vLLM serves Jina's shape at /rerank and /v1/rerank and Cohere's v2 shape
  at /v2/rerank. /tokenize and /detokenize (vLLM's paths) are also served under /v1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Dialect = Literal["openai", "anthropic"]

# What each kind of model serves, in the order people look for it.
KIND_TASKS: dict[str, tuple[str, ...]] = {
    "text": ("chat", "completions", "responses", "messages", "tokenize"),
    "image": ("images",),
    "embedding": ("embeddings", "score", "rerank", "tokenize"),
    "rerank": ("score", "rerank", "tokenize"),
    "transcription": ("transcriptions", "translations"),
    "speech": ("speech",),
}
KINDS = tuple(KIND_TASKS)


@dataclass(frozen=True)
class Field:
    """A body field the hub checks before it starts a model: its name, the JSON types it takes, what it means."""

    name: str
    types: tuple[type, ...]
    what: str


@dataclass(frozen=True)
class Endpoint:
    """One forwarded endpoint: the hub's paths, the method, the task, how the body is read, where it goes."""

    paths: tuple[str, ...]
    task: str
    body: Literal["json", "multipart", "none"] = "json"
    method: str = "POST"
    upstream: str | None = None  # the engine's path; None: the path the client called
    required: tuple[Field, ...] = ()
    dialect: Dialect = "openai"
    files: bool = False  # answers may hold image URLs served by the hub under /files/<model>/
    # a complete event stream holds this (its protocol's last event); one that ends without it was cut
    end: re.Pattern[bytes] | None = None
    end_name: str = ""  # that last event, as a person reads it
    end_hints: tuple[bytes, ...] = ()  # bytes the last event holds: `end` is tried only where one of them is seen


DONE = re.compile(rb"^data: ?\[DONE\]", re.M)
# OpenAI's transcription streams end with transcript.text.done; vLLM's with data: [DONE]
TRANSCRIPT_END = re.compile(rb'^data: ?\[DONE\]|"type": ?"transcript\.text\.done"', re.M)


MESSAGES = Field("messages", (list,), "a list of messages")
IMAGE_FILE = Field("image", (), "one or more image files")

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(("/v1/chat/completions",), "chat", required=(MESSAGES,), end=DONE, end_name="data: [DONE]",
             end_hints=(b"[DONE]",)),
    Endpoint(("/v1/completions",), "completions",
             required=(Field("prompt", (str, list), "a string or a list of strings"),), end=DONE,
             end_name="data: [DONE]", end_hints=(b"[DONE]",)),
    Endpoint(("/v1/responses",), "responses",
             end=re.compile(rb'"type": ?"response\.(completed|failed|incomplete)"'),
             end_name="response.completed, response.failed or response.incomplete",
             end_hints=(b"response.completed", b"response.failed", b"response.incomplete")),
    Endpoint(("/v1/messages",), "messages", required=(MESSAGES,), dialect="anthropic",
             end=re.compile(rb'"type": ?"message_stop"'), end_name="message_stop", end_hints=(b"message_stop",)),
    Endpoint(("/v1/messages/count_tokens",), "messages", required=(MESSAGES,), dialect="anthropic"),
    Endpoint(("/v1/embeddings",), "embeddings",
             required=(Field("input", (str, list), "a string or a list of strings or token ids"),)),
    Endpoint(("/v1/score", "/score"), "score"),
    Endpoint(("/v1/rerank", "/rerank", "/v2/rerank"), "rerank",
             required=(Field("query", (str, dict), "the query to rank the documents against"),
                       Field("documents", (list,), "a list of documents"))),
    Endpoint(("/v1/audio/transcriptions",), "transcriptions", body="multipart",
             required=(Field("file", (), "an audio file"),), end=TRANSCRIPT_END,
             end_name="data: [DONE] or transcript.text.done", end_hints=(b"[DONE]", b"transcript.text.done")),
    Endpoint(("/v1/audio/translations",), "translations", body="multipart",
             required=(Field("file", (), "an audio file"),), end=TRANSCRIPT_END,
             end_name="data: [DONE] or transcript.text.done", end_hints=(b"[DONE]", b"transcript.text.done")),
    Endpoint(("/v1/audio/speech",), "speech", required=(Field("input", (str,), "the text to speak"),)),
    Endpoint(("/v1/images/generations",), "images", required=(Field("prompt", (str,), "a text prompt"),),
             files=True, end=re.compile(rb'"type": ?"image_generation\.completed"'),
             end_name="image_generation.completed", end_hints=(b"image_generation.completed",)),
    Endpoint(("/v1/images/edits",), "images", body="multipart", required=(IMAGE_FILE,), files=True,
             end=re.compile(rb'"type": ?"image_edit\.completed"'), end_name="image_edit.completed",
             end_hints=(b"image_edit.completed",)),
    Endpoint(("/tokenize", "/v1/tokenize"), "tokenize", upstream="/tokenize"),
    Endpoint(("/detokenize", "/v1/detokenize"), "tokenize", upstream="/detokenize",
             required=(Field("tokens", (list,), "a list of token ids"),)),
)

# /v1/responses/{id}[/cancel|/input_items]: routed by the id to the model that made the response.
RESPONSE_BY_ID = re.compile(r"^/v1/responses/([^/]+)(/cancel|/input_items)?$")
BY_ID_METHODS = {"": ("GET", "DELETE"), "/cancel": ("POST",), "/input_items": ("GET",)}

BY_PATH: dict[str, Endpoint] = {p: e for e in ENDPOINTS for p in e.paths}
TASKS: tuple[str, ...] = tuple(dict.fromkeys(e.task for e in ENDPOINTS))


def paths_of(task: str) -> list[str]:
    """The hub's main path of each endpoint that serves `task` (what a person would call)."""
    return [e.paths[0] for e in ENDPOINTS if e.task == task]


def tasks_of(kind: str, tasks: list[str] | None = None) -> tuple[str, ...]:
    """The tasks a model serves: its own list where the registry gives one, else its kind's."""
    return tuple(tasks) if tasks else KIND_TASKS.get(kind, ())


def endpoints_of(kind: str, tasks: list[str] | None = None) -> list[str]:
    """Every main path a model of this kind (or with these tasks) serves."""
    return [p for t in tasks_of(kind, tasks) for p in paths_of(t)]


def dialect_of(path: str) -> Dialect:
    """Which error shape a client of `path` understands."""
    return "anthropic" if path == "/v1/messages" or path.startswith("/v1/messages/") else "openai"


ROOT_PATHS = tuple(p for e in ENDPOINTS for p in e.paths if not p.startswith("/v1/"))


@dataclass(frozen=True)
class Area:
    """A part of the hub's URL space: whether it needs the API key, whether POST/PUT/PATCH bodies there are the
    hub's own JSON (bounded and checked before the route runs), and whether it is the API's (an unknown path there
    gets an API error, never the web app)."""

    prefix: str  # a path prefix ending in "/", or a whole path
    key: bool
    admin_body: bool = False
    api: bool = True


# The URL space: the gateway's key check and admin bodies, and the router's API prefixes, all read this one table.
URL_SPACE: tuple[Area, ...] = (
    Area("/v1/", key=True),
    Area("/v2/", key=True),
    Area("/hub/", key=True, admin_body=True),
    Area("/files/", key=False),  # image URLs handed to clients, followed by browsers without the key
    Area("/metrics", key=True, api=False),
    *(Area(p, key=True, api=False) for p in ROOT_PATHS),
)
KEY_PREFIXES = tuple(a.prefix for a in URL_SPACE if a.key and a.prefix.endswith("/"))
KEY_PATHS = frozenset(a.prefix for a in URL_SPACE if a.key and not a.prefix.endswith("/"))
ADMIN_BODY_PREFIXES = tuple(a.prefix for a in URL_SPACE if a.admin_body)
API_PREFIXES = tuple(a.prefix.rstrip("/") for a in URL_SPACE if a.api)


def needs_key(path: str) -> bool:
    """Whether `path` needs the hub's API key (when the hub has one)."""
    return path.startswith(KEY_PREFIXES) or path in KEY_PATHS
