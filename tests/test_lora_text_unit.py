"""Unit tests of text LoRA adapters on the vllm engine: the --enable-lora flags built from `[models.x.loras]`, the
adapters vLLM cannot serve as given (refused with the key), the container mounts. vLLM serving them through the hub:
tests/test_lora_text.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.config import HostConfig
from hub.engines.base import LaunchContext
from hub.engines.vllm import VllmEngine, lora_rank
from hub.errors import ConfigError, RuntimeFailure
from hub.registry import parse_registry
from hub.runtimes.container import container_config


def adapter(folder: Path, r: int = 8) -> Path:
    """A peft adapter folder of rank `r` (its config only: the engine reads nothing else)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "target_modules": ["q_proj", "v_proj"]}))
    return folder


def ctx_for(model: dict, tmp_path: Path) -> LaunchContext:
    reg = parse_registry({"hub": {"state_dir": str(tmp_path / "state")}, "models": {"chat": model}},
                         tmp_path / "models.toml")
    return LaunchContext("chat", reg.models["chat"], reg, 8123, {})


def lora_flags(argv: list[str]) -> tuple[list[dict], dict[str, str]]:
    """(the --lora-modules entries, decoded; the other LoRA flags with their values) of a vLLM command line."""
    i = argv.index("--lora-modules")
    modules = []
    for item in argv[i + 1:]:
        if not item.startswith("{"):
            break
        modules.append(json.loads(item))
    rest = dict(zip(argv[i + 1 + len(modules)::2], argv[i + 2 + len(modules)::2], strict=False))
    return modules, {k: v for k, v in rest.items() if "lora" in k}


def test_adapters_become_lora_modules_named_as_the_gateway_sends_them(tmp_path):
    adapter(tmp_path / "loras" / "pirate", r=8)
    adapter(tmp_path / "state" / "models" / "poet", r=12)
    model = {"type": "text", "engine": "vllm", "source": "./m",
             "loras": {"pirate": "./loras/pirate", "poet": "{state_dir}/models/poet"}}
    spec = VllmEngine().launch(ctx_for(model, tmp_path))
    assert "--enable-lora" in spec.args
    modules, rest = lora_flags(spec.args)
    assert modules == [
        {"name": "chat:pirate", "path": str(tmp_path / "loras" / "pirate"), "base_model_name": "chat"},
        {"name": "chat:poet", "path": str(tmp_path / "state" / "models" / "poet"), "base_model_name": "chat"},
    ]
    assert rest == {"--max-loras": "2", "--max-lora-rank": "16"}  # rank 12 rounded up to a rank vLLM takes
    assert spec.extra_paths == [m["path"] for m in modules]  # mounted into a container like the model's folder


def test_args_override_the_rank_and_the_batch(tmp_path):
    for name in ("a", "b", "c"):
        adapter(tmp_path / name)
    model = {"type": "text", "engine": "vllm", "source": "./m", "loras": {n: f"./{n}" for n in "abc"},
             "args": {"max_loras": 1, "max_lora_rank": 64}}
    _, rest = lora_flags(VllmEngine().launch(ctx_for(model, tmp_path)).args)
    assert rest == {"--max-loras": "1", "--max-cpu-loras": "3", "--max-lora-rank": "64"}


def test_a_model_without_adapters_has_no_lora_flags(tmp_path):
    args = VllmEngine().launch(ctx_for({"type": "text", "engine": "vllm", "source": "./m"}, tmp_path)).args
    assert not [a for a in args if "lora" in a]


def test_hub_repo_adapter_of_a_local_model_is_left_to_vllm(tmp_path):
    model = {"type": "text", "engine": "vllm", "source": "./m", "loras": {"sql": "org/sql-lora"}}
    spec = VllmEngine().launch(ctx_for(model, tmp_path))
    modules, rest = lora_flags(spec.args)
    assert modules[0]["path"] == "org/sql-lora" and "--max-lora-rank" not in rest and spec.extra_paths == []


def test_a_folder_that_is_no_adapter_fails_the_start_saying_why(tmp_path):
    (tmp_path / "empty").mkdir()
    model = {"type": "text", "engine": "vllm", "source": "./m", "loras": {"x": "./empty"}}
    with pytest.raises(RuntimeFailure, match=r"LoRA adapter 'x'.*adapter_config\.json"):
        VllmEngine().launch(ctx_for(model, tmp_path))


@pytest.mark.parametrize("source, lora, says", [
    ("./m", "./x.safetensors", "loras.a.source: vLLM loads a peft adapter folder"),
    ("./m", {"source": "./x", "weight_name": "w.safetensors"}, "loras.a.weight_name"),
    ("./m", {"source": "./x", "scale": 0.5}, "loras.a.scale"),
])
def test_adapters_vllm_cannot_serve_are_refused_with_the_key(source, lora, says):
    with pytest.raises(ConfigError) as err:
        parse_registry({"models": {"chat": {"type": "text", "engine": "vllm", "source": source,
                                            "loras": {"a": lora}}}})
    assert says in str(err.value)


def test_max_lora_rank_takes_only_vllms_ranks():
    with pytest.raises(ConfigError, match="max_lora_rank"):
        parse_registry({"models": {"chat": {"type": "text", "engine": "vllm", "source": "./m",
                                            "args": {"max_lora_rank": 12}}}})
    assert [lora_rank([r]) for r in (1, 2, 8, 9, 300, 512, 600)] == [1, 8, 8, 16, 320, 512, 512]
    assert lora_rank([]) is None


def test_container_mounts_the_adapters_read_only(tmp_path):
    adapter(tmp_path / "pirate")
    model = {"type": "text", "engine": "vllm", "source": str(tmp_path / "m"), "loras": {"pirate": "./pirate"}}
    kw = container_config("chat", VllmEngine().launch(ctx_for(model, tmp_path)), 8123, HostConfig())
    assert kw["volumes"][str(tmp_path / "pirate")] == {"bind": str(tmp_path / "pirate"), "mode": "ro"}
    assert kw["volumes"][str(tmp_path / "m")]["mode"] == "ro"


def test_demo_adapter_needs_its_base_and_leaves_a_finished_folder_alone(tmp_path):
    from demo_models import smollm2_lora

    with pytest.raises(smollm2_lora.ConvertError, match="hub demo prepare smollm2-135m-instruct"):
        smollm2_lora.convert(tmp_path / "no-base", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    done = adapter(tmp_path / "out")
    (done / smollm2_lora.MARKER).write_text("{}")
    assert smollm2_lora.convert(tmp_path / "no-base", done).startswith("up to date")


def test_demo_adapter_comes_after_its_base_in_the_demo():
    from hub.demo import DEMO_MODELS

    names = [m.name for m in DEMO_MODELS]
    lora = DEMO_MODELS[names.index("smollm2-lora")]
    assert names.index("smollm2-lora") > names.index("smollm2-135m-instruct") and lora.env == "diffusers"
    assert lora.args == ("--base", "{models}/smollm2-135m-instruct")


def test_a_pulled_model_with_an_adapter_from_a_hub_repo_starts_online():
    from hub.downloads.target import Target

    reg = parse_registry({"models": {
        "chat": {"type": "text", "engine": "vllm", "source": "org/base", "loras": {"a": "org/adapter"}},
        "local": {"type": "text", "engine": "vllm", "source": "org/base", "loras": {"a": "./adapter"}}}})
    online = Target("org/base", None, "/cache", reg.models["chat"]).engine_env()
    assert "HF_HUB_OFFLINE" not in online and online["HF_HUB_CACHE"] == "/cache"
    assert Target("org/base", None, "/cache", reg.models["local"]).engine_env()["HF_HUB_OFFLINE"] == "1"
