"""Image requests as streams, for the Image tab: OpenAI's Images streaming events (`image_generation.partial_image`,
`image_generation.completed`, and the `image_edit.*` pair) and the image server's progress comments
(`: progress {"step": k, "steps": N, "elapsed": s}`, which OpenAI clients ignore), read straight off the hub's SSE.

An engine that does not stream images answers with the usual JSON body; that works too (no previews then).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import httpx
import openai
from PIL import Image

from hub.sse import sse
from hub.ui.clients import error_message

PREVIEWS = 2  # partial images asked for per request (OpenAI allows 0 to 3)


@dataclass
class Progress:
    """One thing the stream said: a step done, a preview, a finished image."""

    step: int | None = None
    steps: int | None = None
    elapsed: float | None = None
    preview: Image.Image | None = None
    image: Image.Image | None = None


@dataclass
class ImageStream:
    """An open images response: iterate it for Progress; close it to stop the job (the engine stops at its next
    step when its client goes away)."""

    response: httpx.Response
    http: httpx.Client
    images: list[Image.Image] = field(default_factory=list)

    def close(self) -> None:
        self.response.close()
        self.http.close()

    def __iter__(self) -> Iterator[Progress]:
        try:
            if not self.response.headers.get("content-type", "").startswith("text/event-stream"):
                body = json.loads(self.response.read())
                for item in body.get("data") or []:
                    img = decode(item)
                    self.images.append(img)
                    yield Progress(image=img)
                return
            for event, data in sse(self.response.iter_lines()):
                if event == "comment":
                    if data.startswith("progress "):
                        p = json.loads(data.removeprefix("progress "))
                        yield Progress(step=p.get("step"), steps=p.get("steps"), elapsed=p.get("elapsed"))
                    continue
                body = json.loads(data)
                kind = body.get("type", event)
                if kind == "error" or "error" in body:
                    raise gr.Error(error_message(body, "the image model failed while it worked: see its logs"))
                if kind.endswith(".partial_image"):
                    yield Progress(preview=decode(body))
                elif kind.endswith(".completed"):
                    img = decode(body)
                    self.images.append(img)
                    yield Progress(image=img)
        except (httpx.HTTPError, ValueError) as err:
            raise gr.Error(f"the image stream broke off: {type(err).__name__}: {err}") from None
        finally:
            self.close()


def decode(item: dict[str, Any]) -> Image.Image:
    """The image of an event or a data item (b64_json)."""
    b64 = item.get("b64_json")
    if not b64:
        raise gr.Error("the image model answered without image data: see `hub logs <model>`")
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def open_stream(client: openai.OpenAI, path: str, *, json_body: dict[str, Any] | None = None,
                fields: dict[str, str] | None = None, files: dict[str, Any] | None = None) -> ImageStream:
    """POST an images request with `stream` on; an error answer becomes an openai APIStatusError as the SDK
    raises it (the web app turns those into gr.Error)."""
    http = httpx.Client(timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None), trust_env=False)
    headers = {"authorization": f"Bearer {client.api_key}"} if client.api_key else {}
    url = str(client.base_url).rstrip("/") + path
    if json_body is not None:
        req = http.build_request("POST", url, json={**json_body, "stream": True, "partial_images": PREVIEWS},
                                 headers=headers)
    else:
        form = {**(fields or {}), "stream": "true", "partial_images": str(PREVIEWS)}
        req = http.build_request("POST", url, data=form, files=files, headers=headers)
    try:
        resp = http.send(req, stream=True)
    except httpx.HTTPError:
        http.close()
        raise
    if resp.status_code != 200:
        try:
            body = json.loads(resp.read())
        except ValueError:
            body = None
        finally:
            resp.close()
            http.close()
        raise openai.APIStatusError(error_message(body, f"the hub answered {resp.status_code}"), response=resp,
                                    body=body)
    return ImageStream(resp, http)


def step_line(model: str, doing: str, p: Progress) -> str:
    """"generating with tiny-sd: step 3/20, 1.2s, about 6s left"."""
    line = f"{doing} {model}: step {p.step}/{p.steps}"
    if p.elapsed is not None and p.step:
        left = p.elapsed / p.step * max(0, (p.steps or p.step) - p.step)
        line += f", {p.elapsed:.1f}s, about {left:.0f}s left"
    return line
