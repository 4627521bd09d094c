"""A tiny real OpenAI-compatible server for tests and benchmarks (as llama-swap's simple-responder).

Run: python tests/responder.py --port PORT [--model NAME] [--delay S] [--hold-file PATH] [--start-delay S]
[--fail-start] [--sleepable]
It answers chat and completions by echoing (deterministically, so tests can assert on the text), streams SSE
chunks, makes real PNG images for generations and edits, hears audio uploads (it reports their size and digest)
and speaks (a real WAV of silence), keeps the responses it makes, echoes what it got on every other endpoint of the
hub's route table, and has endpoints to crash it (/test/crash) and to count requests (/test/stats). With
--sleepable it speaks vLLM's sleep mode (POST /sleep?level=N, POST /wake_up, GET /is_sleeping) and refuses
completions (503) while asleep, so a test can prove the hub woke it before forwarding; /test/stats counts sleeps and
wakes. With --context N it has a context of N "tokens" (a token is a word of the prompt's text): /tokenize and
/v1/messages/count_tokens count as vLLM's do, chat, completions and messages refuse an output limit that does not fit
with vLLM's message, and every answer says in `x-engine-max-tokens` which output limit it got. With --hold-file a
test holds chat and completion answers (counted in /test/stats as they arrive) until
it creates that file: a request stays in flight as long as the test needs, however slow the machine. With --record
FILE it appends each chat and completion request's answer text to FILE as the request arrives (a count that
outlives the responder: a hub killed and started again starts a new one). Only the
standard library and uvicorn/starlette (the hub's own environment).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import os
import struct
import sys
import time
import wave
import zlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid solid-colour PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\x00" + bytes(rgb) * width
    raw = zlib.compress(row * height)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def make_app(opts: argparse.Namespace) -> Starlette:
    stats = {"requests": 0, "pid": os.getpid(), "sleeps": 0, "wakes": 0, "asleep": False, "refused_asleep": 0}

    def images_in(parts: list) -> list[str]:
        """Each image_url part as "<mime> <bytes>", decoded from its data: URI."""
        out = []
        for p in parts:
            if isinstance(p, dict) and p.get("type") == "image_url":
                head, _, data = p["image_url"]["url"].partition(";base64,")
                out.append(f"{head.removeprefix('data:')} {len(base64.b64decode(data, validate=True))} bytes")
        return out

    def reply_text(body: dict) -> str:
        if "messages" in body:
            last = body["messages"][-1].get("content", "") if body["messages"] else ""
            if isinstance(last, list):
                seen = images_in(last)
                last = " ".join(p.get("text", "") for p in last if isinstance(p, dict) and p.get("type") == "text")
                last += "".join(f" [{s}]" for s in seen)
            return f"echo: {last}"
        prompt = body.get("prompt", "")
        return f"echo: {prompt if isinstance(prompt, str) else prompt[0]}"

    def words(body: dict) -> int:
        """The prompt's "tokens" (words of its text, system prompts and tools included)."""
        text = []
        for m in body.get("messages") or []:
            c = m.get("content", "") if isinstance(m, dict) else ""
            text += [c] if isinstance(c, str) else [p.get("text", "") for p in c if isinstance(p, dict)]
        system = body.get("system")
        text += [system] if isinstance(system, str) else [p.get("text", "") for p in system or ()]
        prompt = body.get("prompt")
        text += [prompt] if isinstance(prompt, str) else []
        text += [json.dumps(body["tools"])] if body.get("tools") else []
        return sum(len(t.split()) for t in text)

    def refuse_output(body: dict) -> Response | None:
        """vLLM's 400 for an output limit the context cannot hold, on an engine with --context."""
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if not opts.context or not isinstance(limit, int):
            return None
        n = words(body)
        if limit > opts.context:
            message = f"max_tokens={limit} cannot be greater than max_model_len={opts.context}. Please request " \
                      "fewer output tokens."
        elif n + limit > opts.context:
            message = (f"This model's maximum context length is {opts.context} tokens. However, your prompt "
                       f"contains {n} input tokens, which exceeds this limit even without any output tokens.")
        else:
            return None
        return JSONResponse({"error": {"message": message, "type": "BadRequestError", "param": "input_tokens",
                                       "code": 400}}, status_code=400)

    def limit_header(body: dict) -> dict[str, str]:
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
        return {"x-engine-max-tokens": str(limit)} if opts.context else {}

    async def tokenize(request: Request) -> Response:
        stats["tokenize"] = stats.get("tokenize", 0) + 1
        if not opts.context:
            return await echo(request)
        n = words(await request.json())
        return JSONResponse({"count": n, "max_model_len": opts.context, "tokens": list(range(n))})

    async def count_tokens(request: Request) -> Response:
        stats["tokenize"] = stats.get("tokenize", 0) + 1
        if not opts.context:
            return await echo(request)
        n = words(await request.json())
        if n > opts.context:  # as vLLM's count_tokens: a prompt past the context is refused, not counted
            return JSONResponse({"type": "error", "error": {"type": "BadRequestError", "message": (
                f"This model's maximum context length is {opts.context} tokens. However, your prompt contains at "
                f"least {opts.context + 1} input tokens")}}, status_code=400)
        return JSONResponse({"input_tokens": n})

    async def messages(request: Request) -> Response:
        if not opts.context:
            return await echo(request)
        body = await request.json()
        if refused := refuse_output(body):
            return refused
        return JSONResponse({"id": "msg-1", "type": "message", "role": "assistant", "model": body.get("model"),
                             "content": [{"type": "text", "text": "echo"}], "stop_reason": "end_turn",
                             "stop_sequence": None, "usage": {"input_tokens": words(body), "output_tokens": 1}},
                            headers=limit_header(body))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": opts.model, "object": "model", "owned_by": "test"}]})

    async def chat(request: Request) -> Response:
        stats["requests"] += 1
        if stats["asleep"]:
            stats["refused_asleep"] += 1
            return JSONResponse({"error": {"message": "the engine is asleep: POST /wake_up first",
                                           "type": "ServiceUnavailable", "param": None, "code": 503}}, 503)
        body = await request.json()
        parts = [p for m in body.get("messages", []) if isinstance(m.get("content"), list) for p in m["content"]]
        if opts.text_only and images_in(parts):
            return JSONResponse({"error": {"message": f"{body['model']} is not a multimodal model",
                                           "type": "BadRequestError", "param": None, "code": 400}}, status_code=400)
        if body.get("max_tokens") == -1:
            return JSONResponse({"error": {"message": "max_tokens must be positive", "type": "invalid_request_error",
                                           "param": "max_tokens", "code": None}}, status_code=400)
        if refused := refuse_output(body):
            return refused
        if opts.record:  # one line per request as it arrives, kept across the responder's restarts
            with open(opts.record, "a") as f:
                f.write(reply_text(body) + "\n")
        if opts.delay:
            await asyncio.sleep(opts.delay)
        while opts.hold_file and not os.path.exists(opts.hold_file):  # held until the test releases it
            await asyncio.sleep(0.02)
        text = reply_text(body)
        is_chat = request.url.path.endswith("chat/completions")
        rid, created = f"cmpl-{stats['requests']}", int(time.time())
        if body.get("stream"):
            async def events():
                words = text.split(" ")
                for i, w in enumerate(words):
                    piece = w if i == 0 else " " + w
                    if is_chat:
                        choice = {"index": 0, "delta": {"role": "assistant", "content": piece} if i == 0
                                  else {"content": piece}, "finish_reason": None}
                        obj = {"id": rid, "object": "chat.completion.chunk", "created": created,
                               "model": body["model"], "choices": [choice]}
                    else:
                        obj = {"id": rid, "object": "text_completion", "created": created, "model": body["model"],
                               "choices": [{"index": 0, "text": piece, "finish_reason": None}]}
                    yield f"data: {json.dumps(obj)}\n\n"
                    await asyncio.sleep(opts.chunk_delay)
                    if opts.die_mid_stream and i == 1:
                        os._exit(3)  # the connection closes without the chunked terminator
                end = {"index": 0, "finish_reason": "stop", **({"delta": {}} if is_chat else {"text": ""})}
                obj = {"id": rid, "object": "chat.completion.chunk" if is_chat else "text_completion",
                       "created": created, "model": body["model"], "choices": [end]}
                yield f"data: {json.dumps(obj)}\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):  # OpenAI's last chunk: usage only
                    n = len(words)
                    usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": 1 + n}
                    obj = {"id": rid, "object": obj["object"], "created": created, "model": body["model"],
                           "choices": [], "usage": usage}
                    yield f"data: {json.dumps(obj)}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream", headers=limit_header(body))
        usage = {"prompt_tokens": 1, "completion_tokens": len(text.split()), "total_tokens": 1 + len(text.split())}
        if is_chat:
            return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}], "usage": usage}, headers=limit_header(body))
        return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": body["model"],
                             "choices": [{"index": 0, "text": text, "finish_reason": "stop"}], "usage": usage},
                            headers=limit_header(body))

    def images_response(n: int, size: str, colour: tuple[int, int, int], stream: dict | None = None) -> Response:
        """The images, or (stream = the request's fields) OpenAI's streaming events with previews and the image
        server's progress comments, one step every --step-delay seconds."""
        w, h = (int(x) for x in size.split("x"))
        if stream is None:
            data = [{"b64_json": base64.b64encode(png(w, h, colour)).decode()} for _ in range(n)]
            return JSONResponse({"created": int(time.time()), "data": data})
        kind = "image_edit" if stream.get("edit") else "image_generation"
        steps, previews = int(stream.get("num_inference_steps") or 4), int(stream.get("partial_images") or 0)
        at = {round(steps * (i + 1) / (previews + 1)) for i in range(previews)}

        async def events():
            t0, shown = time.monotonic(), 0
            for step in range(1, steps + 1):
                await asyncio.sleep(opts.step_delay)
                elapsed = round(time.monotonic() - t0, 3)
                yield f": progress {json.dumps({'step': step, 'steps': steps, 'elapsed': elapsed})}\n\n"
                if step in at:
                    grey = png(w, h, (40 * (shown + 1), 40 * (shown + 1), 40 * (shown + 1)))
                    event = {"type": f"{kind}.partial_image", "b64_json": base64.b64encode(grey).decode(),
                             "partial_image_index": shown, "size": size, "output_format": "png"}
                    shown += 1
                    yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
            for i in range(n):
                event = {"type": f"{kind}.completed", "b64_json": base64.b64encode(png(w, h, colour)).decode(),
                         "size": size, "output_format": "png", "index": i}
                yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    async def generations(request: Request) -> Response:
        stats["requests"] += 1
        body = await request.json()
        if opts.delay:
            await asyncio.sleep(opts.delay)
        return images_response(int(body.get("n") or 1), body.get("size") or "64x64", (0, 200, 0),
                               body if body.get("stream") else None)

    async def edits(request: Request) -> Response:
        stats["requests"] += 1
        async with request.form() as form:
            images = form.getlist("image") + form.getlist("image[]")
            if not images:
                return JSONResponse({"error": {"message": "image is required", "type": "invalid_request_error",
                                               "param": "image", "code": None}}, status_code=400)
            names = [getattr(i, "filename", "") for i in images]
            mask = form.get("mask")
            n, size = int(form.get("n") or 1), str(form.get("size") or "64x64")
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
        stream = {**fields, "edit": True} if fields.get("stream") == "true" else None
        resp = images_response(n, size, (200, 0, 0) if mask is not None else (0, 0, 200), stream)
        resp.headers["x-test-images"] = ",".join(str(x) for x in names)
        return resp

    async def audio_in(request: Request) -> Response:
        stats["requests"] += 1
        async with request.form() as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return JSONResponse({"error": {"message": "file is required", "type": "invalid_request_error",
                                               "param": "file", "code": None}}, status_code=400)
            data = await upload.read()
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return JSONResponse({"text": f"heard {len(data)} bytes", "sha256": hashlib.sha256(data).hexdigest(),
                             "filename": upload.filename, "content_type": upload.content_type, "fields": fields,
                             "path": request.url.path})

    async def speech(request: Request) -> Response:
        stats["requests"] += 1
        body = await request.json()
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(b"\x00\x00" * 80 * len(str(body.get("input", ""))))
        return Response(buf.getvalue(), media_type="audio/wav")

    responses: dict[str, dict] = {}

    async def create_response(request: Request) -> Response:
        stats["requests"] += 1
        body = await request.json()
        rid = f"resp_{len(responses) + 1}_{os.getpid()}"
        obj = {"id": rid, "object": "response", "created_at": int(time.time()), "model": body["model"],
               "status": "completed", "output_text": f"echo: {body.get('input')}"}
        responses[rid] = obj
        if body.get("stream"):
            async def events():
                for kind in ("response.created", "response.completed"):
                    yield f"event: {kind}\ndata: {json.dumps({'type': kind, 'response': obj})}\n\n"
                    await asyncio.sleep(opts.chunk_delay)
                    if opts.die_mid_stream:
                        os._exit(3)
            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(obj)

    async def response_by_id(request: Request) -> Response:
        rid = request.path_params["rid"]
        if rid not in responses:
            return JSONResponse({"error": {"message": f"no response {rid}", "type": "invalid_request_error",
                                           "param": None, "code": None}}, status_code=404)
        if request.method == "DELETE":
            responses.pop(rid)
            return JSONResponse({"id": rid, "object": "response", "deleted": True})
        if request.url.path.endswith("/cancel"):
            responses[rid]["status"] = "cancelled"
        return JSONResponse(responses[rid])

    async def echo(request: Request) -> Response:
        stats["requests"] += 1
        body = await request.json()
        return JSONResponse({"path": request.url.path, "query": request.url.query, "model": body.get("model"),
                             "object": "echo"})

    async def sleep(request: Request) -> Response:
        level = int(request.query_params.get("level", "1"))
        await asyncio.sleep(0.05)
        stats["asleep"], stats["sleeps"] = True, stats["sleeps"] + 1
        return JSONResponse({"status": "sleeping", "level": level})

    async def wake_up(request: Request) -> Response:
        await asyncio.sleep(0.05)
        stats["asleep"], stats["wakes"] = False, stats["wakes"] + 1
        return JSONResponse({"status": "awake", "tags": request.query_params.getlist("tags") or None})

    async def is_sleeping(request: Request) -> Response:
        return JSONResponse({"is_sleeping": stats["asleep"]})

    async def crash(request: Request) -> Response:
        os._exit(3)

    async def stats_route(request: Request) -> Response:
        return JSONResponse(stats)

    return Starlette(routes=[
        Route("/health", health), Route("/v1/models", models),
        Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/completions", chat, methods=["POST"]),
        Route("/v1/images/generations", generations, methods=["POST"]),
        Route("/v1/images/edits", edits, methods=["POST"]),
        Route("/v1/audio/transcriptions", audio_in, methods=["POST"]),
        Route("/v1/audio/translations", audio_in, methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/responses/{rid}", response_by_id, methods=["GET", "DELETE"]),
        Route("/v1/responses/{rid}/cancel", response_by_id, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        *(Route(p, echo, methods=["POST"]) for p in (
            "/v1/embeddings", "/v1/score", "/score", "/v1/rerank", "/rerank", "/v2/rerank", "/detokenize")),
        Route("/test/crash", crash, methods=["POST"]), Route("/test/stats", stats_route),
        *([Route("/sleep", sleep, methods=["POST"]), Route("/wake_up", wake_up, methods=["POST"]),
           Route("/is_sleeping", is_sleeping)] if opts.sleepable else []),
    ])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="test")
    p.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    p.add_argument("--hold-file", help="hold every chat and completion answer until this file exists")
    p.add_argument("--record", help="append the answer text of each chat and completion request to this file as it "
                   "arrives")
    p.add_argument("--chunk-delay", type=float, default=0.01, help="seconds between stream chunks")
    p.add_argument("--start-delay", type=float, default=0.0, help="seconds before listening")
    p.add_argument("--die-mid-stream", action="store_true", help="exit in the middle of every stream")
    p.add_argument("--step-delay", type=float, default=0.05, help="seconds per step of a streamed image")
    p.add_argument("--text-only", action="store_true", help="refuse image parts, as vLLM does for text models")
    p.add_argument("--sleepable", action="store_true", help="speak vLLM's /sleep, /wake_up and /is_sleeping")
    p.add_argument("--context", type=int, default=0, help="a context of N words: count, refuse and report output "
                                                          "limits as vLLM does")
    p.add_argument("--fail-start", action="store_true", help="print an error and exit 1 instead of serving")
    opts = p.parse_args()
    print(f"responder: model {opts.model} on port {opts.port}", flush=True)
    if opts.fail_start:
        print("responder: CUDA out of memory (simulated start failure)", flush=True)
        sys.exit(1)
    if opts.start_delay:
        time.sleep(opts.start_delay)
    import uvicorn

    uvicorn.run(make_app(opts), host="127.0.0.1", port=opts.port, log_level="warning")


if __name__ == "__main__":
    main()
