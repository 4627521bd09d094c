"""LoRA adapters in the registry: `[models.x.loras]`, the `<id>:<name>` ids, their /v1/models entries. The engines'
side (vLLM's --lora-modules, the image server's load_lora_weights) is tested with real engines elsewhere."""

from __future__ import annotations

import pytest

from hub.errors import ConfigError, ModelNotFound
from hub.manager import Manager
from hub.registry import parse_registry
from hub.router import adapter_object, models_list

REG = {
    "models": {
        "sd": {"type": "image", "engine": "diffusers", "source": "/m/sd",
               "loras": {"pixel": "/loras/pixel", "ink": {"source": "org/ink-lora", "scale": 0.7,
                                                          "weight_name": "ink.safetensors"}}},
        "chat": {"type": "text", "engine": "vllm", "source": "/m/chat", "loras": {"pirate": "/loras/pirate"}},
        "qwen:7b": {"type": "text", "engine": "vllm", "source": "/m/q"},
    }
}


def test_short_and_long_forms():
    reg = parse_registry(REG)
    assert reg.models["sd"].loras["pixel"].source == "/loras/pixel" and reg.models["sd"].loras["pixel"].scale == 1.0
    ink = reg.models["sd"].loras["ink"]
    assert (ink.source, ink.scale, ink.weight_name) == ("org/ink-lora", 0.7, "ink.safetensors")


def test_split_adapter():
    reg = parse_registry(REG)
    assert reg.split_adapter("sd:pixel") == ("sd", "pixel")
    assert reg.split_adapter("sd") == ("sd", None)
    assert reg.split_adapter("qwen:7b") == ("qwen:7b", None)  # a registered id with a colon is itself
    assert reg.split_adapter("sd:nope") == ("sd:nope", None)
    assert reg.split_adapter("chat:pixel") == ("chat:pixel", None)  # adapters belong to one model


@pytest.mark.parametrize("bad, says", [
    ({"embed": {"type": "embedding", "engine": "vllm", "source": "/m", "loras": {"a": "/x"}}},
     "serves no LoRA adapters for 'embedding'"),
    ({"sd": {"type": "image", "engine": "diffusers", "source": "/m", "loras": {"bad name": "/x"}}}, "loras"),
    ({"sd": {"type": "image", "engine": "diffusers", "source": "/m", "loras": {"a": {"scale": 1}}}}, "source"),
    ({"sd": {"type": "image", "engine": "diffusers", "source": "/m", "loras": {"a": "/x"}},
      "sd:a": {"type": "image", "engine": "diffusers", "source": "/m"}}, "also a model's id"),
])
def test_bad_loras_are_refused_with_the_key(bad, says):
    with pytest.raises(ConfigError) as err:
        parse_registry({"models": bad})
    assert says in str(err.value)


def test_slots_resolve_adapters_and_list_them():
    manager = Manager(parse_registry(REG))
    assert manager.slot("sd:ink").id == "sd" and manager.slot("qwen:7b").id == "qwen:7b"
    with pytest.raises(ModelNotFound) as err:
        manager.slot("sd:nope")
    assert "has no LoRA adapter 'nope'" in str(err.value) and "sd:pixel, sd:ink" in str(err.value)
    with pytest.raises(ModelNotFound) as err:
        manager.slot("qwen:8b")
    assert "qwen:8b" in str(err.value)
    ids = [m["id"] for m in models_list(manager.slots.values())]
    assert ids == ["sd", "sd:pixel", "sd:ink", "chat", "chat:pirate", "qwen:7b"]
    ink = adapter_object(manager.slot("sd"), "ink")
    assert ink["parent"] == "sd" and ink["root"] == "org/ink-lora" and ink["type"] == "image"
    assert ink["lora"] == {"name": "ink", "scale": 0.7}


def test_batch_lines_may_name_adapters_and_share_their_models_places():
    from hub.batches.service import Batches

    reg = parse_registry(REG)
    batches = Batches(reg, Manager(reg), gateway=None)  # type: ignore[arg-type]  # nothing is sent here
    assert batches.refusal("chat:pirate", "/v1/chat/completions") is None
    assert "has no LoRA adapter 'nope'" in (batches.refusal("chat:nope", "/v1/chat/completions") or "")
    assert "is an image model" in (batches.refusal("sd:pixel", "/v1/chat/completions") or "")
    assert batches.cap("sd:pixel") == batches.cap("sd")
    assert batches.runner.base("sd:pixel") == "sd" and batches.runner.base("qwen:7b") == "qwen:7b"


def test_admin_calls_on_an_adapter_id_act_on_its_model(tmp_path, monkeypatch):
    import asyncio

    from hub.admin import hub_memory
    from hub.ledger import MemoryReport

    reg = parse_registry({**REG, "hub": {"state_dir": str(tmp_path)}})
    manager = Manager(reg)
    asked = []
    monkeypatch.setattr(manager, "runtime", lambda s: type("R", (), {"logs": lambda self, mid, tail: asked.append(mid)
                                                                      or "log"})())
    assert manager.logs("sd:pixel") == "log" and asked == ["sd"]
    entry = asyncio.run(hub_memory("sd:pixel", MemoryReport(peak_gb=3.5, device="cuda"), manager))
    assert entry["id"] == "sd" and manager.ledger.get("sd") is not None and manager.ledger.get("sd:pixel") is None


def test_an_adapter_added_by_a_reload_waits_for_its_engines_restart():
    """A running model with a changed registry table keeps its old config until its engine restarts: an adapter
    the reload added is not served yet (GET /v1/models/<id>:<new> was a 500, a request went to an engine without it)."""
    manager = Manager(parse_registry(REG))
    new = {**REG, "models": {**REG["models"], "chat": {**REG["models"]["chat"],
                                                       "loras": {"pirate": "/loras/pirate", "poet": "/loras/poet"}}}}
    manager._use(parse_registry(new))  # the slot's config is the running engine's until it restarts
    with pytest.raises(ModelNotFound) as err:
        manager.slot("chat:poet")
    assert "next start" in str(err.value)
    assert manager.slot("chat:pirate").id == "chat"
