"""Output limits that fit the model: a request whose `max_tokens` (or `max_completion_tokens`, `max_output_tokens`)
is more than the model's context leaves after the prompt is clamped to what fits, as hosted APIs treat a limit as a
ceiling. Clients ask for what suits the largest models they know: Claude Code asks for 32000 tokens, and vLLM refuses
anything above what the context leaves (`max_completion_tokens=32000 cannot be greater than max_model_len=2048`).

The cost stays off requests that fit. A request's prompt holds at most as many tokens as its body has bytes (each
token of a byte-level tokenizer is at least one byte; JSON's quoting only adds bytes), plus what the chat template
adds (TEMPLATE_SLACK). When the output limit and that bound fit in the context, the request goes on untouched, with
no round trip. Only otherwise is the prompt counted by the engine's own tokenizer: vLLM's /tokenize (chat and
completions; Responses input converted to chat messages, which counts a little more than vLLM renders, so the
clamp errs on the safe side) or /v1/messages/count_tokens (Anthropic). The context is the model's `max_model_len`
from the registry, else what the engine's /tokenize says, asked once per engine (kept by its address); an engine
that does not say is left alone.

A prompt that leaves no room at all gets the engine's context-length error, in the client's dialect (hub/vocab.py:
Anthropic's "prompt is too long", on which Claude Code compacts): its limit, if larger than the whole context, is
lowered to one token, so that the engine names the prompt and not the limit (vLLM checks the limit first). A count
that fails (an engine without /tokenize) leaves the request unchanged.
Clamping is on by default; `fit_max_tokens = false` ([hub] or a model's table) passes the engine's 400 on instead.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any

from hub.upstream import Call, EngineError, EnginePool
from hub.vocab import CONTEXT_EXCEEDED

log = logging.getLogger("hub.fit")
# The body's output-limit keys per task (Chat Completions has two; vLLM uses max_completion_tokens when both are set)
OUTPUT_KEYS: dict[str, tuple[str, ...]] = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "messages": ("max_tokens",),
}
TEMPLATE_SLACK = 512  # tokens a chat template may add around the body's text (roles, special tokens, tool prose)
COUNT_TIMEOUT_S = 30.0
FULL = -1  # a count's answer when the engine says the prompt alone passes its context
JSON_HEADERS = b"user-agent: hub\r\naccept: application/json\r\ncontent-type: application/json\r\n"
REMEMBERED_ENGINES = 1024
CHAT_FIELDS = ("tools", "chat_template_kwargs", "mm_processor_kwargs")


class Fitted:
    """A clamped request: its new body, and the header that tells the client."""

    __slots__ = ("body", "note")

    def __init__(self, body: bytes, note: str) -> None:
        self.body, self.note = body, note


class Fit:
    """Clamps output limits to a model's context (see the module's docstring); one per gateway."""

    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool
        self.contexts: OrderedDict[str, int] = OrderedDict()  # an engine's address -> its max_model_len (0: unknown)

    def may_clamp(self, task: str, body: dict[str, Any], raw: bytes, base_url: str, context: int | None) -> bool:
        """Whether fit() has anything to do (the cheap test, without a coroutine, on every request): the body sets
        an output limit, and the engine's context is not known to hold it with the body's bound."""
        keys = OUTPUT_KEYS.get(task)
        if keys is None:
            return False
        limits = [v for k in keys if type(v := body.get(k)) is int]
        if not limits:
            return False
        context = context or self.contexts.get(base_url)
        return context is None or (context > 0 and max(limits) + len(raw) + TEMPLATE_SLACK > context)

    async def fit(self, task: str, body: dict[str, Any], raw: bytes, base_url: str, model: str,
                  context: int | None) -> Fitted | None:
        """The request with its output limit clamped, or None when it fits as it is (or cannot be counted)."""
        asked = {k: v for k in OUTPUT_KEYS[task] if isinstance(v := body.get(k), int) and not isinstance(v, bool)
                 and v > 0}
        if not asked:
            return None  # absent, null or invalid: the engine's own default or its own 400
        limit = max(asked.values())
        context = context or await self.context_of(base_url, model)
        if not context or limit + len(raw) + TEMPLATE_SLACK <= context:
            return None  # an engine that does not say its context is left alone, as is a request that fits
        counted = await self.count(task, body, base_url, model)
        if counted is None:
            return None
        prompt = counted
        room = 0 if prompt == FULL else context - prompt
        if limit <= room or (room < 1 and limit <= context):
            return None  # it fits, or the engine's context-length error will name the prompt
        if room < 1:
            room = 1
            note = f"1 (asked {limit}; the prompt alone fills the context of {context} tokens)"
        else:
            note = (f"{room} (asked {limit}; the context of {context} tokens leaves {room} after the prompt's "
                    f"{prompt})")
        clamped = {k: min(v, room) for k, v in asked.items()}
        log.info("model %r: output limit clamped to %s", model, note)
        return Fitted(json.dumps({**body, **clamped}).encode(), note)

    def remember(self, base_url: str, context: int) -> None:
        self.contexts[base_url] = context
        self.contexts.move_to_end(base_url)
        while len(self.contexts) > REMEMBERED_ENGINES:
            self.contexts.popitem(last=False)

    async def count(self, task: str, body: dict[str, Any], base_url: str, model: str) -> int | None:
        """The prompt's tokens by the engine's tokenizer (FULL: past the context); None if it cannot say."""
        if task == "messages":
            ask = {k: v for k, v in body.items() if k not in ("max_tokens", "stream", "metadata")}
            answer = await self.ask(base_url, "/v1/messages/count_tokens", {**ask, "model": model})
            n = answer.get("input_tokens") if answer else None
            return n if isinstance(n, int) else None
        if task == "completions":
            prompt = body.get("prompt")
            if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                return len(prompt)
            if not isinstance(prompt, str):
                return None  # a batch of prompts: each is counted by the engine, which refuses what does not fit
            ask: dict[str, Any] = {"model": model, "prompt": prompt}
        else:
            messages = body.get("messages") if task == "chat" else responses_messages(body)
            if not isinstance(messages, list):
                return None
            ask = {"model": model, "messages": messages, "add_generation_prompt": True}
            ask.update({k: body[k] for k in CHAT_FIELDS if body.get(k) is not None})
            if task == "responses":
                ask["tools"] = responses_tools(body)
        answer = await self.ask(base_url, "/tokenize", ask)
        n = answer.get("count") if answer else None
        return n if isinstance(n, int) else None

    async def context_of(self, base_url: str, model: str) -> int:
        """The engine's context, asked once per engine (vLLM's /tokenize says it with any count); 0: unknown, and
        not asked again (the engine's address changes with each start)."""
        if (known := self.contexts.get(base_url)) is not None:
            return known
        answer = await self.ask(base_url, "/tokenize", {"model": model, "prompt": "."})
        context = answer.get("max_model_len") if answer else None
        context = context if isinstance(context, int) and not isinstance(context, bool) and context > 0 else 0
        self.remember(base_url, context)
        return context

    async def ask(self, base_url: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST a JSON body to the engine; its JSON answer, or None on any failure (logged)."""
        try:
            resp = await self.pool.request("POST", base_url, path, JSON_HEADERS, json.dumps(body).encode(),
                                           COUNT_TIMEOUT_S, Call())
            try:
                data = await resp.read(COUNT_TIMEOUT_S)
            finally:
                resp.release()
        except EngineError as err:
            log.warning("counting a prompt at %s%s failed: %s", base_url, path, err)
            return None
        if resp.status == 400 and CONTEXT_EXCEEDED.search(data[:2000].decode("utf-8", "replace")):
            return {"count": FULL, "input_tokens": FULL}  # the prompt alone passes the context
        if resp.status != 200:
            log.info("counting a prompt at %s%s: the engine answered %s: %s", base_url, path, resp.status,
                     data[:300].decode("utf-8", "replace"))
            return None
        try:
            answer = json.loads(data)
        except ValueError:
            return None
        return answer if isinstance(answer, dict) else None


def _text(content: Any) -> str:
    """The text of a Responses content (a string, or parts with text)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] if isinstance(p, dict) and isinstance(p.get("text"), str) else json.dumps(p)
                         for p in content)
    return json.dumps(content)


def responses_messages(body: dict[str, Any]) -> list[dict[str, str]] | None:
    """A Responses request's instructions and input as chat messages, for counting: message items keep their role
    and text; other items (function calls and their outputs, reasoning) count as their JSON text, which is longer
    than what the template renders, so the count errs high."""
    out = []
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
            out.append({"role": role, "content": _text(item.get("content"))})
        else:
            out.append({"role": "user", "content": json.dumps(item)})
    return out


def responses_tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A Responses request's function tools in Chat Completions' shape (the only tools /tokenize renders)."""
    tools = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters") if k in t}}
             for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function" and "name" in t]
    return tools or None
