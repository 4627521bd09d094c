"""Output limits that fit the model: a request whose `max_tokens` (or `max_completion_tokens`, `max_output_tokens`)
is more than the model's context leaves after the prompt is clamped to what fits, as hosted APIs treat a limit as a
ceiling. Clients ask for what suits the largest models they know: Claude Code asks for 32000 tokens, and vLLM refuses
anything above what the context leaves (`max_completion_tokens=32000 cannot be greater than max_model_len=2048`).

The cost stays off requests that fit. A request's prompt holds at most as many tokens as its body has bytes (each
token of a byte-level tokenizer is at least one byte; JSON's quoting only adds bytes), plus what the chat template
adds (TEMPLATE_SLACK). When the output limit and that bound fit in the context, the request goes on untouched, with
no round trip. Only otherwise is the prompt counted by the engine's own tokenizer: vLLM's /tokenize (chat and
completions) or /v1/messages/count_tokens (Anthropic), both exact; a Responses input is converted to chat messages,
an estimate that errs high. The context is the model's `max_model_len` from the registry, else what the engine's
/tokenize says, asked once per engine start; an engine that does not say is left alone.

The clamp keeps what depends on the limit consistent: Anthropic's `thinking.budget_tokens` must stay below
`max_tokens` (lowered, or thinking turned off where the room is under vLLM's minimum budget), and `min_tokens` may
not pass it. A prompt that an exact count finds at or past the context gets a 400 from the hub itself
(`context_length_exceeded`; Anthropic's "prompt is too long", on which Claude Code compacts), not a limit error.
A request that truncates its own prompt (`truncate_prompt_tokens`), or whose count fails, is left unchanged.
Clamping is on by default; `fit_max_tokens = false` ([hub] or a model's table) passes the engine's 400 on instead.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any

from hub.errors import ContextLengthExceeded
from hub.upstream import Call, EngineError, EnginePool
from hub.vocab import context_exceeded

log = logging.getLogger("hub.fit")
# The output-limit keys by path, in the order the engine reads them (vLLM: max_completion_tokens before max_tokens);
# /v1/messages/count_tokens shares its task with /v1/messages but generates nothing
OUTPUT_KEYS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
    "/v1/messages": ("max_tokens",),
}
TEMPLATE_SLACK = 512  # tokens a chat template may add around the body's text (roles, special tokens, tool prose)
COUNT_TIMEOUT_S = 30.0
JSON_HEADERS = b"user-agent: hub\r\naccept: application/json\r\ncontent-type: application/json\r\n"
REMEMBERED_ENGINES = 1024
CHAT_FIELDS = ("tools", "chat_template_kwargs", "mm_processor_kwargs")
MIN_THINKING_BUDGET = 1024  # Anthropic's (and vLLM's) smallest thinking.budget_tokens
FULL = -1  # a count's answer when the engine says the prompt alone passes its context


class Fitted:
    """A clamped request: its new body, and the header that tells the client."""

    __slots__ = ("body", "note")

    def __init__(self, body: bytes, note: str) -> None:
        self.body, self.note = body, note


def whole(v: Any) -> int | None:
    """A positive whole number of tokens (an int, or a float such as 100.0, which vLLM takes), else None."""
    if type(v) is int:
        return v if v > 0 else None
    if type(v) is float and v.is_integer() and v > 0:
        return int(v)
    return None


class Fit:
    """Clamps output limits to a model's context (see the module's docstring); one per gateway."""

    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool
        # an engine start (its address and start count) -> its max_model_len (0: it does not say)
        self.contexts: OrderedDict[str, int] = OrderedDict()

    def may_clamp(self, path: str, body: dict[str, Any], raw: bytes, engine: str, context: int | None) -> bool:
        """Whether fit() has anything to do (the cheap test, without a coroutine, on every request): the body sets
        an output limit, and the engine's context is not known to hold it with the body's bound."""
        keys = OUTPUT_KEYS.get(path)
        if keys is None or not any(k in body for k in keys):
            return False
        limit = next((n for k in keys if (n := whole(body.get(k))) is not None), None)
        if limit is None or body.get("truncate_prompt_tokens") is not None:
            return False
        context = context or self.contexts.get(engine)
        return context is None or (context > 0 and limit + len(raw) + TEMPLATE_SLACK > context)

    async def fit(self, path: str, body: dict[str, Any], raw: bytes, base_url: str, engine: str, model: str,
                  context: int | None) -> Fitted | None:
        """The request with its output limit clamped, or None when it fits as it is (or cannot be counted);
        ContextLengthExceeded when an exact count finds the prompt alone at or past the context."""
        keys = OUTPUT_KEYS[path]
        limit = next((n for k in keys if (n := whole(body.get(k))) is not None), None)
        context = context or await self.context_of(base_url, engine, model)
        if limit is None or not context or limit + len(raw) + TEMPLATE_SLACK <= context:
            return None  # an engine that does not say its context is left alone, as is a request that fits
        prompt = await self.count(path, body, base_url, model)
        if prompt is None:
            return None
        exact = path != "/v1/responses"
        if exact and (prompt == FULL or prompt >= context):
            counted = "more tokens than that" if prompt == FULL else f"{prompt} tokens"
            raise ContextLengthExceeded(
                f"prompt is too long: model {model!r} has a context of {context} tokens (its max_model_len) and the "
                f"prompt has {counted}, which leaves no room for an answer; shorten the conversation")
        room = context - prompt
        if room < 1 or limit <= room:
            return None  # it fits, or (an estimate) the engine decides
        out = {**body, **{k: min(n, room) for k in keys if (n := whole(body.get(k))) is not None}}
        if (n := whole(body.get("min_tokens"))) is not None and n > room:
            out["min_tokens"] = room
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and (budget := whole(thinking.get("budget_tokens"))) and budget >= room:
            out["thinking"] = ({**thinking, "budget_tokens": room - 1} if room - 1 >= MIN_THINKING_BUDGET
                               else {"type": "disabled"})
        note = f"{room} (asked {limit}; the context of {context} tokens leaves {room} after the prompt's {prompt})"
        log.info("model %r: output limit clamped to %s", model, note)
        return Fitted(json.dumps(out).encode(), note)

    def remember(self, engine: str, context: int) -> None:
        self.contexts[engine] = context
        self.contexts.move_to_end(engine)
        while len(self.contexts) > REMEMBERED_ENGINES:
            self.contexts.popitem(last=False)

    async def count(self, path: str, body: dict[str, Any], base_url: str, model: str) -> int | None:
        """The prompt's tokens by the engine's tokenizer (FULL: past the context); None if it cannot say."""
        if path == "/v1/messages":
            ask = {k: v for k, v in body.items() if k not in ("max_tokens", "stream", "metadata")}
            _, answer = await self.ask(base_url, "/v1/messages/count_tokens", {**ask, "model": model})
            n = answer.get("input_tokens")
            return n if type(n) is int else None
        if path == "/v1/completions":
            prompt = body.get("prompt")
            if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
                return len(prompt)
            if not isinstance(prompt, str):
                return None  # a batch of prompts: each is counted by the engine, which refuses what does not fit
            ask: dict[str, Any] = {"model": model, "prompt": prompt}
        else:
            messages = body.get("messages") if path == "/v1/chat/completions" else responses_messages(body)
            if not isinstance(messages, list):
                return None
            ask = {"model": model, "messages": messages, "add_generation_prompt": True}
            ask.update({k: body[k] for k in CHAT_FIELDS if body.get(k) is not None})
            if path == "/v1/responses":
                ask["tools"] = responses_tools(body)
        _, answer = await self.ask(base_url, "/tokenize", ask)
        n = answer.get("count")
        return n if type(n) is int else None

    async def context_of(self, base_url: str, engine: str, model: str) -> int:
        """The engine's context, asked once per engine start (vLLM's /tokenize says it with any count); 0: it does
        not say (remembered only from a definite answer: a failure or a 5xx is asked again next time)."""
        if (known := self.contexts.get(engine)) is not None:
            return known
        status, answer = await self.ask(base_url, "/tokenize", {"model": model, "prompt": "."})
        context = answer.get("max_model_len")
        if type(context) is int and context > 0:
            self.remember(engine, context)
            return context
        if status and status < 500:
            self.remember(engine, 0)
        return 0

    async def ask(self, base_url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST a JSON body to the engine: its status (0: no answer) and JSON answer ({} on any failure, logged).
        A 400 saying that the prompt passes the context answers FULL."""
        try:
            resp = await self.pool.request("POST", base_url, path, JSON_HEADERS, json.dumps(body).encode(),
                                           COUNT_TIMEOUT_S, Call())
            try:
                data = await resp.read(COUNT_TIMEOUT_S)
            finally:
                resp.release()
        except EngineError as err:
            log.warning("counting a prompt at %s%s failed: %s", base_url, path, err)
            return 0, {}
        try:
            answer = json.loads(data)
        except (ValueError, RecursionError):
            answer = None
        if resp.status == 400:
            err = answer.get("error") if isinstance(answer, dict) else None
            message = str(err.get("message") if isinstance(err, dict) else data[:2000].decode("utf-8", "replace"))
            if context_exceeded(message) and ("prompt" in message or "input" in message):
                return 400, {"count": FULL, "input_tokens": FULL}
        if resp.status != 200 or not isinstance(answer, dict):
            log.info("counting a prompt at %s%s: the engine answered %s: %s", base_url, path, resp.status,
                     data[:300].decode("utf-8", "replace"))
            return resp.status, {}
        return 200, answer


def _content(content: Any) -> Any:
    """A Responses content as a chat content: a string, or parts (text parts, and input images as image_url parts,
    which vLLM's tokenizer counts as the model does); anything else as its JSON text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return json.dumps(content)
    parts: list[dict[str, Any]] = []
    for p in content:
        if isinstance(p, dict) and isinstance(p.get("text"), str):
            parts.append({"type": "text", "text": p["text"]})
        elif isinstance(p, dict) and p.get("type") == "input_image" and isinstance(p.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": p["image_url"]}})
        else:
            parts.append({"type": "text", "text": json.dumps(p)})
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def responses_messages(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A Responses request's instructions and input as chat messages, for counting: message items keep their role
    and content; other items (function calls and their outputs, reasoning) count as their JSON text, which is longer
    than what the template renders, so the count errs high."""
    out: list[dict[str, Any]] = []
    if isinstance(instructions := body.get("instructions"), str) and instructions:
        out.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        return [*out, {"role": "user", "content": items}]
    if not isinstance(items, list):
        return None
    for item in items:
        if isinstance(item, dict) and item.get("role") in ("system", "developer", "user", "assistant"):
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": _content(item.get("content"))})
        else:
            out.append({"role": "user", "content": json.dumps(item)})
    return out


def responses_tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A Responses request's function tools in Chat Completions' shape (the only tools /tokenize renders)."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    out = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters") if k in t}}
           for t in tools if isinstance(t, dict) and t.get("type") == "function" and "name" in t]
    return out or None
