"""The first request of a model whose source is not downloaded yet, on a real engine: the demo smollm2 served as a
repo by the local Hugging Face server (tests/hfserver.py). The model shows `downloading` with progress, then ready,
and answers; vLLM reads it from the cache offline (no request reaches the server once the pull is done)."""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import DEMO_MODELS, ROOT, HubProcess, require, start_hub, wait_for
from tests.helpers import require_demo, toml_value
from tests.hfserver import FakeHub

pytestmark = pytest.mark.engine
REPO = "demo/smollm2"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeHub]:
    folder = DEMO_MODELS / "smollm2-135m-instruct"
    require(folder.exists(), f"demo model folder {folder} is missing: run `make demo-models`")
    server = FakeHub()
    server.add_repo(REPO, {"main": folder})
    server.throttle = 60_000_000  # 270 MB in a few seconds: progress can be seen
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-cache")


@pytest.fixture(scope="module")
def hub(fake: FakeHub, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    m = tomllib.loads((ROOT / "models.demo.toml").read_text())["models"]["smollm2"]
    lines = ["[hub]", 'start_timeout = "5m"', "[models.smollm2]", f'source = "{REPO}"']
    lines += [f"{k} = {toml_value(v)}" for k, v in m.items() if k not in ("args", "source", "loras")]
    lines += ["[models.smollm2.args]", *(f"{k} = {toml_value(v)}" for k, v in m["args"].items())]
    registry = "\n".join(lines) + "\n"
    require_demo(registry)
    h = start_hub(tmp_path_factory.mktemp("hub"), registry,
                  env={"HF_ENDPOINT": fake.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1"})
    yield h
    h.stop_leaving_nothing()


def test_the_first_request_downloads_then_the_engine_answers_from_the_cache_offline(hub: HubProcess, fake: FakeHub,
                                                                                    cache: Path) -> None:
    answers: list[httpx.Response] = []
    body = {"model": "smollm2", "temperature": 0, "max_tokens": 20,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    request = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{hub.v1}/chat/completions", json=body, timeout=600)))
    request.start()
    seen: list[tuple[str, int]] = []

    def downloading_with_progress() -> bool:
        m = hub.models()["smollm2"]
        d = m.get("download") or {}
        seen.append((m["state"], d.get("bytes_done", 0)))
        return m["state"] == "downloading" and 0 < d.get("bytes_done", 0) < (d.get("bytes_total") or 0)

    wait_for(downloading_with_progress, "smollm2 shows downloading with bytes arriving", 120, every=0.1)
    wait_for(lambda: hub.models()["smollm2"]["state"] != "downloading", "the download ends", 300)
    job = hub.models()["smollm2"]["download"]
    assert job["status"] == "done" and job["bytes_total"] > 260_000_000, job
    request.join(600)
    assert answers and answers[0].status_code == 200, answers[0].text if answers else seen
    assert "Paris" in answers[0].json()["choices"][0]["message"]["content"]
    m = hub.models()["smollm2"]
    assert m["state"] == "ready"
    env = psutil.Process(m["process"]["pid"]).environ()
    assert env.get("HF_HUB_OFFLINE") == "1" and env.get("HF_HUB_CACHE") == str(cache)
    after = [r for r in fake.requests if r[0] > job["finished_at"]]
    assert not after, f"the engine asked the hub server after the pull: {after}"
    assert Path(job["path"], "model.safetensors").stat().st_size > 260_000_000
