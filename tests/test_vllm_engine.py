"""Unit tests of the vllm engine: the runtime-neutral spec built from the registry, the command line the process
runtime makes of it, and the GPU memory fraction from the GPUs the runtime reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.engines import vllm
from hub.engines.base import LaunchContext, LaunchSpec
from hub.engines.vllm import VllmEngine, gpu_memory_utilization
from hub.errors import ConfigError, RuntimeFailure
from hub.registry import parse_registry
from hub.runtimes.container import container_command
from hub.runtimes.process import ProcessRuntime

# Flags of vLLM's OpenAI-compatible server (`vllm serve --help`, docs "Engine Arguments" and "OpenAI-Compatible
# Server"); tests/test_vllm_real.py checks every flag the engine emits against the installed vLLM's own --help.
VLLM_FLAGS = {
    "--host", "--port", "--model", "--served-model-name", "--dtype", "--max-model-len", "--quantization",
    "--tensor-parallel-size", "--gpu-memory-utilization", "--enforce-eager", "--enable-sleep-mode",
    "--trust-remote-code", "--enable-auto-tool-choice", "--tool-call-parser", "--runner", "--convert",
    "--chat-template", "--tool-strict-level",
}
SWITCHES = {"--enforce-eager", "--enable-sleep-mode", "--trust-remote-code", "--enable-auto-tool-choice"}
VALUE_FLAGS = VLLM_FLAGS - SWITCHES
# a text model of no known family
TOOLS = {"--enable-auto-tool-choice": None, "--tool-call-parser": "hermes", "--tool-strict-level": "parameter"}


def ctx_for(model: dict, tmp_path: Path, gpus: dict[int, float] | None = None) -> LaunchContext:
    """A LaunchContext for model `m` of a one-model registry, on a host with `gpus` (index -> GB)."""
    reg = parse_registry({"hub": {"state_dir": str(tmp_path / "state")}, "models": {"m": model}},
                         tmp_path / "models.toml")
    return LaunchContext("m", reg.models["m"], reg, 8123, gpus or {})


def process_argv(spec: LaunchSpec, tmp_path: Path, envs: bool = True) -> tuple[list[str], dict[str, str]]:
    """The command line and environment the process runtime makes of `spec`, with envs under tmp_path."""
    envs_dir = tmp_path / "envs"
    if envs:
        (envs_dir / "vllm" / "bin").mkdir(parents=True, exist_ok=True)
        (envs_dir / "vllm" / "bin" / "python").touch()
    return ProcessRuntime(tmp_path / "logs", envs_dir).command_line(spec)


def flags(argv: list[str]) -> dict[str, str | None]:
    """{flag: value or None} of a vLLM command line, failing on anything that is not a known flag."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        flag = argv[i]
        assert flag in VLLM_FLAGS, f"{flag!r} is not a documented vLLM flag"
        assert flag not in out, f"{flag} given twice"
        if flag in VALUE_FLAGS:
            out[flag] = argv[i + 1]
            i += 2
        else:
            out[flag] = None
            i += 1
    return out


def test_process_argv_uses_the_engine_env_python_and_every_registry_arg(tmp_path):
    ctx = ctx_for({"type": "text", "engine": "vllm", "source": "{state_dir}/models/x", "memory_gb": 1,
                   "args": {"dtype": "bfloat16", "max_model_len": 2048, "quantization": "awq",
                            "tensor_parallel_size": 2, "enforce_eager": True, "enable_sleep_mode": True,
                            "trust_remote_code": True, "kv_cache_space_gb": 3,
                            "extra_args": ["--seed", "7"]}}, tmp_path)
    spec = VllmEngine().launch(ctx)
    argv, env = process_argv(spec, tmp_path)
    assert argv[:3] == [str(tmp_path / "envs" / "vllm" / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[-2:] == ["--seed", "7"]  # extra args pass through, last
    f = flags(argv[3:-2])
    assert f == {"--host": "127.0.0.1", "--model": str(tmp_path / "state" / "models" / "x"),
                 "--served-model-name": "m", "--port": "8123", "--dtype": "bfloat16", "--max-model-len": "2048",
                 "--quantization": "awq", "--tensor-parallel-size": "2", "--enforce-eager": None,
                 "--enable-sleep-mode": None, "--trust-remote-code": None, **TOOLS}
    assert spec.served_name == "m" and spec.health_path == "/health"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert env["VLLM_SERVER_DEV_MODE"] == "1"  # sleep mode's endpoints need it
    assert "--gpu-memory-utilization" not in f  # no GPU here: nothing derived


def test_minimal_model_gets_only_what_it_needs(tmp_path):
    spec = VllmEngine().launch(ctx_for({"type": "text", "engine": "vllm", "source": "org/repo"}, tmp_path))
    argv, env = process_argv(spec, tmp_path)
    assert flags(argv[3:]) == {"--host": "127.0.0.1", "--model": "org/repo", "--served-model-name": "m",
                               "--port": "8123", "--dtype": "auto", **TOOLS}
    assert "VLLM_CPU_KVCACHE_SPACE" not in env and spec.model_path is None  # a hub repo id: nothing to mount


def test_missing_engine_env_says_how_to_make_it(tmp_path):
    spec = VllmEngine().launch(ctx_for({"type": "text", "engine": "vllm", "source": "org/repo"}, tmp_path))
    with pytest.raises(RuntimeFailure, match="hub engines setup vllm"):
        process_argv(spec, tmp_path, envs=False)


@pytest.mark.parametrize(("memory_gb", "total_gb", "expected"), [
    (20, 80, 0.25),
    (10, 24, 0.42),      # 0.41666 rounds up: vLLM gets at least what was declared
    (22, 24, 0.92),
    (24, 24, 0.95),      # never the whole card
    (40, 24, 0.95),
    (0.01, 80, 0.01),    # never zero
    (7.2, 80, 0.09),     # 0.09 exactly, not 0.1 from float noise
])
def test_gpu_memory_utilization(memory_gb, total_gb, expected):
    assert gpu_memory_utilization(memory_gb, total_gb) == expected


def test_gpu_memory_utilization_needs_a_gpu_size():
    with pytest.raises(ValueError):
        gpu_memory_utilization(10, 0)


def test_fraction_derived_from_memory_gb_and_the_gpus_the_runtime_reports(tmp_path):
    gpus = {0: 80.0, 1: 24.0}

    def fraction(model: dict) -> str | None:
        spec = VllmEngine().launch(ctx_for(model, tmp_path, gpus))
        return flags(spec.args).get("--gpu-memory-utilization")

    model = {"type": "text", "engine": "vllm", "source": "org/repo", "memory_gb": 20}
    assert fraction(model) == "0.25"  # GPU 0 by default
    assert fraction({**model, "gpus": [1]}) == "0.84"  # 20 of GPU 1's 24 GB
    spec = VllmEngine().launch(ctx_for({**model, "gpus": [1]}, tmp_path, gpus))
    assert process_argv(spec, tmp_path)[1]["CUDA_VISIBLE_DEVICES"] == "1"  # the process runtime picks the GPU
    # tensor parallel: memory_gb is split over the GPUs, the smallest one decides
    assert fraction({**model, "memory_gb": 40, "args": {"tensor_parallel_size": 2}}) == "0.84"
    # an explicit fraction wins
    assert fraction({**model, "args": {"gpu_memory_utilization": 0.5}}) == "0.5"
    # no GPU known on the engine's host (vLLM-CPU, a remote Docker host): nothing derived
    assert flags(VllmEngine().launch(ctx_for(model, tmp_path)).args).get("--gpu-memory-utilization") is None


def test_container_command_is_the_same_spec(tmp_path):
    model = {"type": "text", "engine": "vllm", "source": "/models/llama", "memory_gb": 12,
             "args": {"max_model_len": 4096}}
    spec = VllmEngine().launch(ctx_for(model, tmp_path, {0: 24.0}))
    f = flags(container_command(spec))  # the image's entrypoint is the server: arguments only
    assert f["--gpu-memory-utilization"] == "0.5" and f["--served-model-name"] == "m"
    assert f["--host"] == "0.0.0.0"  # inside a container the server listens on every interface
    assert spec.image == vllm.DEFAULT_IMAGE and spec.gpus == "all" and spec.shared_memory
    assert spec.model_path == "/models/llama"  # the docker runtime mounts it
    assert spec.served_name == "m"


@pytest.mark.parametrize(("args", "fragment"), [
    ({"kv_cache_space_gb": 1.5}, "args.kv_cache_space_gb"),
    ({"gpu_memory_utilization": 1.5}, "args.gpu_memory_utilization"),
    ({"dtype": "int3"}, "args.dtype"),
    ({"max_len": 10}, "valid: dtype, max_model_len"),
])
def test_bad_args_are_config_errors_naming_the_key(args, fragment):
    with pytest.raises(ConfigError) as err:
        parse_registry({"models": {"m": {"type": "text", "engine": "vllm", "source": "x", "args": args}}})
    assert fragment in str(err.value.message)


@pytest.mark.parametrize(("source", "parser"), [
    ("meta-llama/Meta-Llama-3-8B-Instruct", "llama3_json"),
    ("Qwen/Qwen2.5-14B-Instruct-AWQ", "hermes"),
    ("Qwen/Qwen3-Coder-30B-A3B-Instruct", "qwen3_coder"),
    ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
    ("openai/gpt-oss-20b", "openai"),
    ("deepseek-ai/DeepSeek-V3.1", "deepseek_v31"),
    ("org/some-model", "hermes"),  # no known family: hermes tags, or plain text
])
def test_tool_calling_is_on_with_the_family_parser(tmp_path, source, parser):
    spec = VllmEngine().launch(ctx_for({"type": "text", "engine": "vllm", "source": source}, tmp_path))
    f = flags(spec.args)
    assert f["--tool-call-parser"] == parser and "--enable-auto-tool-choice" in f


def test_tool_parser_from_a_local_folder_config_and_response_template(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "mistral", "architectures": ["MistralForCausalLM"]}')
    model = {"type": "text", "engine": "vllm", "source": str(folder)}
    assert flags(VllmEngine().launch(ctx_for(model, tmp_path)).args)["--tool-call-parser"] == "mistral"
    (folder / "tokenizer_config.json").write_text('{"response_template": {"fields": {}}}')
    assert flags(VllmEngine().launch(ctx_for(model, tmp_path)).args)["--tool-call-parser"] == "hf"
    # set by hand, or off
    f = flags(VllmEngine().launch(ctx_for({**model, "args": {"tool_call_parser": "pythonic"}}, tmp_path)).args)
    assert f["--tool-call-parser"] == "pythonic" and f["--tool-strict-level"] == "parameter"
    vllms = flags(VllmEngine().launch(ctx_for({**model, "args": {"tool_strict_level": "auto"}}, tmp_path)).args)
    assert "--tool-strict-level" not in vllms and "--tool-call-parser" in vllms  # vLLM's own default
    off = {**model, "args": {"tool_call_parser": "none"}}
    assert "--enable-auto-tool-choice" not in flags(VllmEngine().launch(ctx_for(off, tmp_path)).args)
    cfg = ctx_for(off, tmp_path).model
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    why = VllmEngine().refusal(cfg, "chat", {"tools": tools})
    assert why and "args.tool_call_parser" in why
    assert VllmEngine().refusal(cfg, "chat", {"tools": tools, "tool_choice": "none"}) is None
    assert VllmEngine().refusal(ctx_for(model, tmp_path).model, "chat", {"tools": tools}) is None


def test_kind_picks_the_runner(tmp_path):
    def f(model: dict) -> dict:
        return flags(VllmEngine().launch(ctx_for({"engine": "vllm", "source": "org/x", **model}, tmp_path)).args)

    emb = f({"type": "embedding"})
    assert emb["--runner"] == "pooling" and "--tool-call-parser" not in emb
    assert f({"type": "rerank", "args": {"convert": "classify"}})["--convert"] == "classify"
    assert "--runner" not in f({"type": "transcription"}) and "--tool-call-parser" not in f({"type": "transcription"})
    with pytest.raises(ConfigError, match="does not serve 'image' models"):
        parse_registry({"models": {"m": {"type": "image", "engine": "vllm", "source": "x"}}})


def test_chat_template_file_goes_inline(tmp_path):
    (tmp_path / "tools.jinja").write_text("{{ messages }}")
    model = {"type": "text", "engine": "vllm", "source": "org/x", "args": {"chat_template": "tools.jinja"}}
    assert flags(VllmEngine().launch(ctx_for(model, tmp_path)).args)["--chat-template"] == "{{ messages }}"


def test_demo_registry_is_valid_and_commented():
    from hub.registry import load_registry

    root = Path(__file__).resolve().parent.parent
    reg = load_registry(root / "models.demo.toml")
    m = reg.models["smollm2"]
    assert (m.type, m.engine, reg.runtime_of("smollm2")) == ("text", "vllm", "process")
    assert m.args["enforce_eager"] is True and m.args["max_model_len"] == 2048
    assert reg.hub.memory_budget_gb and m.memory_gb and m.memory_gb <= reg.hub.memory_budget_gb
    for line in (root / "models.demo.toml").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line, f"uncommented key in models.demo.toml: {line}"
