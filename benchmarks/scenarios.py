"""Declarative benchmark scenarios: what to measure, never how (that is benchmarks/measure.py and friends).

A scenario is a pydantic model; `run_scenario` (benchmarks/run.py) dispatches on its `kind`. The demo lineup
(DEMO_SCENARIOS) targets models.demo.toml; the notebooks build their own from their parameter cell.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class TextScenario(_Scenario):
    """Streaming chat through the hub at several concurrency levels: TTFT, ITL, TPOT, E2EL, tokens/s."""

    kind: Literal["text"] = "text"
    model: str
    concurrency: list[Annotated[int, Field(ge=1)]] = [1, 4]
    requests: int = Field(8, ge=1, description="requests per concurrency level (at least the level itself)")
    max_tokens: int = Field(64, ge=1)
    prompt: str = "Write a short paragraph about the sea."
    warmup: int = Field(1, ge=0, description="requests sent first and not counted (they load the model)")


class ImageScenario(_Scenario):
    """Image generation through the hub: seconds per image by size and steps, and throughput with n > 1."""

    kind: Literal["image"] = "image"
    model: str
    sizes: list[str] = ["64x64"]
    steps: list[Annotated[int, Field(ge=1)]] = [4]
    n: list[Annotated[int, Field(ge=1)]] = [1, 2]
    repetitions: int = Field(3, ge=1)
    prompt: str = "a lighthouse on a cliff at sunset"
    steps_field: str = Field("num_inference_steps", description="the request field the image engine reads steps from")
    warmup: int = Field(1, ge=0)


class ImagePreviewScenario(_Scenario):
    """What streamed partial images cost: seconds per image with stream=true, partial_images and the per-step progress
    comments, against the same request unstreamed, interleaved."""

    kind: Literal["image_previews"] = "image_previews"
    model: str
    sizes: list[str] = ["64x64", "128x128"]
    steps: int = Field(8, ge=2)
    partial_images: int = Field(3, ge=0, le=3)
    repetitions: int = Field(10, ge=1, description="back-to-back pairs (plain, streamed) per size")
    prompt: str = "a lighthouse on a cliff at sunset"
    warmup: int = Field(1, ge=0)


class ImageBatchingScenario(_Scenario):
    """Images per second at one concurrency with batching off and on: two registrations of one Diffusers pipeline
    (max_batch 1 and max_batch N) in a hub of the benchmark's own, measured in interleaved rounds."""

    kind: Literal["image_batching"] = "image_batching"
    source: str | None = Field(None, description="a Diffusers pipeline folder or repo id (default: the demo's "
                               "tiny-sd under HUB_DEMO_MODELS, else .hub/models)")
    device: str = "cpu"
    cpu_threads: int | None = Field(1, ge=1, description="torch threads of each engine on CPU")
    size: str = "64x64"
    steps: int = Field(4, ge=1)
    concurrency: int = Field(8, ge=1)
    requests: int = Field(16, ge=1, description="requests per variant and round")
    max_batch: int = Field(8, ge=2, description="max_batch of the batching variant")
    rounds: int = Field(6, ge=1, description="rounds, each measuring both variants back to back")
    warmup: int = Field(2, ge=0, description="requests per variant sent first and not counted")
    prompt: str = "a lighthouse on a cliff at sunset"


class MemoryScenario(_Scenario):
    """Peak memory per model while it serves a small workload; the peaks go to the memory ledger."""

    kind: Literal["memory"] = "memory"
    models: list[str]
    cold: bool = Field(True, description="unload each model first, so its load peak is seen too")
    requests: int = Field(2, ge=1, description="requests of the small workload run while sampling")
    image_size: str = "64x64"
    image_steps: int = Field(4, ge=1)
    steps_field: str = "num_inference_steps"
    max_tokens: int = Field(32, ge=1)
    sample_interval: float = Field(0.1, gt=0, description="seconds between samples of the process tree")
    write_ledger: bool = True


class ColdStartScenario(_Scenario):
    """A request to a stopped model: seconds to its first token (text) or first image."""

    kind: Literal["cold_start"] = "cold_start"
    model: str
    repetitions: int = Field(1, ge=1)
    max_tokens: int = Field(8, ge=1)
    image_size: str = "64x64"
    image_steps: int = Field(2, ge=1)
    steps_field: str = "num_inference_steps"


class SwapScenario(_Scenario):
    """With model A loaded, a request to model B: seconds to B's first token, and whether A was evicted."""

    kind: Literal["swap"] = "swap"
    model_a: str
    model_b: str
    repetitions: int = Field(1, ge=1)
    max_tokens: int = Field(8, ge=1)
    image_size: str = "64x64"
    image_steps: int = Field(2, ge=1)
    steps_field: str = "num_inference_steps"


class RouterOverheadScenario(_Scenario):
    """The same small chat, plain and streamed, direct to a test engine, through the hub and through its peers."""

    kind: Literal["router_overhead"] = "router_overhead"
    requests: int = Field(1000, ge=1, description="requests per target, concurrency level and mode, split across "
                          "rounds (at least 3x the concurrency per round)")
    concurrency: list[Annotated[int, Field(ge=1)]] = [1, 16, 64]
    modes: list[Literal["plain", "stream"]] = ["plain", "stream"]
    rounds: int = Field(5, ge=1, description="targets are measured in interleaved rounds, so drift hits all alike")
    warmup: int = Field(50, ge=0, description="requests per target before each level and mode, not counted")
    peers: list[Literal["bare", "vllm-router", "litellm"]] = Field(
        ["bare", "vllm-router", "litellm"], description="measured next to direct and the hub; one whose "
        "environment is missing is skipped")
    pin: bool = Field(True, description="proxies on one core, the engine and the load generator on the others")


class LoadScenario(_Scenario):
    """Many concurrent streams to a test engine, through the hub and direct: errors, the hub's RSS, added latency."""

    kind: Literal["load"] = "load"
    streams: int = Field(200, ge=1, description="concurrent streams per round")
    rounds: int = Field(3, ge=1, description="measured rounds per target, targets alternating")
    pin: bool = Field(True, description="the hub on one core, the engine and the load generator on the others")


class ContentionScenario(_Scenario):
    """Two responder models that do not fit together, called alternately by several clients: starts (swaps), total
    time and failures with the anti-thrash policy on and off (strict arrival order)."""

    kind: Literal["contention"] = "contention"
    clients: int = Field(4, ge=1)
    requests: int = Field(8, ge=1, description="requests per client, alternating between the two models")
    start_delay: float = Field(2.0, ge=0, description="the engines' artificial start delay (seconds)")
    delay: float = Field(0.2, ge=0, description="the engines' answer time (seconds)")
    max_run: float | None = Field(None, ge=0, description="max_run with the policy on (None: the hub's default)")
    min_residency: float | None = Field(None, ge=0, description="min_residency with the policy on (None: default)")


Scenario = Annotated[
    TextScenario | ImageScenario | ImagePreviewScenario | ImageBatchingScenario | MemoryScenario | ColdStartScenario
    | SwapScenario | RouterOverheadScenario | LoadScenario | ContentionScenario,
    Field(discriminator="kind"),
]

DEMO_TEXT = "smollm2"
DEMO_IMAGE = "tiny-sd"

DEMO_SCENARIOS: list[Scenario] = [
    TextScenario(name="demo-text", model=DEMO_TEXT, concurrency=[1, 2, 4], requests=8, max_tokens=32),
    ImageScenario(name="demo-image", model=DEMO_IMAGE, sizes=["64x64", "128x128"], steps=[2, 4], n=[1, 2]),
    ImagePreviewScenario(name="demo-image-previews", model=DEMO_IMAGE),
    MemoryScenario(name="demo-memory", models=[DEMO_TEXT, DEMO_IMAGE]),
    ColdStartScenario(name="demo-cold-text", model=DEMO_TEXT),
    ColdStartScenario(name="demo-cold-image", model=DEMO_IMAGE),
    SwapScenario(name="demo-swap", model_a=DEMO_TEXT, model_b=DEMO_IMAGE),
]
