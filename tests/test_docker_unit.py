"""The docker runtime without a daemon: the container spec of each engine, checked against vLLM's documented
`docker run` line, through the docker SDK's own translation to the Engine API; config checks; clear errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from docker.errors import APIError
from docker.models.containers import _create_container_args

from hub.engines import get_engine
from hub.engines.base import LaunchContext
from hub.engines.vllm import DEFAULT_IMAGE as VLLM_IMAGE
from hub.errors import ConfigError, RuntimeFailure
from hub.registry import parse_registry
from hub.runtimes.container import config_hash, container_config, container_name
from hub.runtimes.docker import DockerRuntime, explain_api_error

# vLLM's documented line (docs.vllm.ai, "Using Docker"):
#   docker run --runtime nvidia --gpus all -v ~/.cache/huggingface:/root/.cache/huggingface \
#     --env "HF_TOKEN=$HF_TOKEN" -p 8000:8000 --ipc=host vllm/vllm-openai:<tag> --model <model>
HF_CACHE = str(Path("~/.cache/huggingface").expanduser())


def registry(extra: str = "", **model: str):
    """A registry with one docker model `m` (TOML keys given as keyword arguments)."""
    import tomllib

    keys = "\n".join(f"{k} = {v}" for k, v in model.items())
    return parse_registry(tomllib.loads(f'[hub]\nruntime = "docker"\n{extra}\n[models.m]\n{keys}\n'))


def spec_of(reg, port: int = 8000):
    m = reg.models["m"]
    return get_engine(m.engine).launch(LaunchContext("m", m, reg, port))


def engine_api(kw: dict) -> dict:
    """What the docker SDK sends to the daemon for these `containers.create` arguments."""
    return _create_container_args({**kw, "version": "1.41"})


def test_vllm_container_matches_documented_docker_run_line():
    reg = registry(type='"text"', engine='"vllm"', source='"Qwen/Qwen3-0.6B"')
    spec = spec_of(reg)
    kw = container_config("m", spec, 8000, reg.host_config("local"), hf_token="hf_secret")
    api = engine_api(kw)
    hc = api["host_config"]
    assert api["image"] == VLLM_IMAGE and VLLM_IMAGE.startswith("vllm/vllm-openai:v")  # pinned tag, not latest
    assert api["command"][:4] == ["--host", "0.0.0.0", "--model", "Qwen/Qwen3-0.6B"]  # the entrypoint's arguments
    assert api["command"][api["command"].index("--port") + 1] == "8000"
    assert hc["Runtime"] == "nvidia"  # --runtime nvidia
    assert hc["DeviceRequests"] == [{"Driver": "", "Count": -1, "DeviceIDs": [],
                                     "Capabilities": [["gpu"]], "Options": {}}]  # --gpus all
    assert f"{HF_CACHE}:/root/.cache/huggingface:rw" in hc["Binds"]  # -v ~/.cache/huggingface:/root/...
    assert api["environment"]["HF_TOKEN"] == "hf_secret"  # --env HF_TOKEN=$HF_TOKEN
    assert hc["PortBindings"] == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8000"}]}  # -p, on loopback
    assert hc["IpcMode"] == "host"  # --ipc=host
    assert hc["Init"] is True
    assert api["name"] == "hub-m"
    assert api["labels"]["hub"] == "1" and api["labels"]["hub.model"] == "m" and api["labels"]["hub.port"] == "8000"


def test_vllm_gpu_ids_and_no_token():
    reg = registry(type='"text"', engine='"vllm"', source='"org/model"', gpus="[0, 2]")
    api = engine_api(container_config("m", spec_of(reg), 8000, reg.host_config("local")))
    assert api["host_config"]["DeviceRequests"][0]["DeviceIDs"] == ["0", "2"]
    assert api["host_config"]["DeviceRequests"][0]["Count"] == 0
    assert "HF_TOKEN" not in api["environment"]


def test_diffusers_local_source_mounted_read_only_and_no_gpu(tmp_path: Path):
    model = tmp_path / "tiny-sd"
    model.mkdir()
    reg = registry(type='"image"', engine='"diffusers"', source=f'"{model}"')
    api = engine_api(container_config("m", spec_of(reg, 9001), 9001, reg.host_config("local")))
    hc = api["host_config"]
    assert f"{model}:{model}:ro" in hc["Binds"]
    assert "DeviceRequests" not in hc and "Runtime" not in hc
    assert "IpcMode" not in hc


def test_host_networking_and_host_settings():
    extra = ('[hosts.gpu]\ndocker = "ssh://me@gpu-pc"\naddress = "192.0.2.7"\nnetwork = "host"\n'
             'hf_cache = "/srv/hf"\nmemory_budget_gb = 24\n')
    reg = registry(extra, type='"text"', engine='"vllm"', source='"org/model"', host='"gpu"')
    api = engine_api(container_config("m", spec_of(reg), 8000, reg.host_config("gpu")))
    assert api["host_config"]["NetworkMode"] == "host" and "PortBindings" not in api["host_config"]
    assert "/srv/hf:/root/.cache/huggingface:rw" in api["host_config"]["Binds"]
    rt = DockerRuntime(reg, "gpu")
    assert rt.cfg.address == "192.0.2.7" and reg.budget_of("gpu") == 24


def test_config_hash_follows_settings_but_not_the_token_value():
    reg = registry(type='"text"', engine='"vllm"', source='"org/model"')
    host = reg.host_config("local")
    a = container_config("m", spec_of(reg), 8000, host, hf_token="one")
    b = container_config("m", spec_of(reg), 8000, host, hf_token="two")
    c = container_config("m", spec_of(reg, 8001), 8001, host, hf_token="one")
    assert a["labels"]["hub.config-hash"] == b["labels"]["hub.config-hash"] == config_hash(a)
    assert a["labels"]["hub.config-hash"] != c["labels"]["hub.config-hash"]
    assert "one" not in str(a["labels"])


def test_registry_checks_hosts():
    with pytest.raises(ConfigError) as e:
        registry('[hosts.remote]\naddress = "10.0.0.2"\n', type='"text"', engine='"vllm"', source='"x"')
    assert "hosts.remote.docker: required key is missing" in str(e.value)
    with pytest.raises(ConfigError) as e:
        registry('[hosts.remote]\ndocker = "tcp://h:2375"\nnetwork = "bridge"\n', type='"text"', engine='"vllm"',
                 source='"x"')
    assert "hosts.remote.network" in str(e.value) and "publish" in str(e.value)


def test_api_errors_say_what_to_do():
    port = explain_api_error("m", "local", APIError("x", explanation="Bind for 127.0.0.1:8000 failed: port is "
                                                                     "already allocated"))
    assert "in use" in port and "retry" in port
    gpu = explain_api_error("m", "local", APIError("x", explanation='could not select device driver "" with '
                                                                    "capabilities: [[gpu]]"))
    assert "NVIDIA Container Toolkit" in gpu
    assert container_name("qwen2.5:14b") == "hub-qwen2.5-14b"


def test_unreachable_daemon_is_a_clear_runtime_failure(tmp_path: Path):
    sock = tmp_path / "no-daemon.sock"
    reg = registry(f'[hosts.remote]\ndocker = "unix://{sock}"\n', type='"image"', engine='"diffusers"',
                   source='"org/model"', host='"remote"')
    rt = DockerRuntime(reg, "remote")
    with pytest.raises(RuntimeFailure) as e:
        asyncio.run(rt.start("m", spec_of(reg), 8000))
    msg = str(e.value)
    assert "cannot reach the Docker daemon of host 'remote'" in msg and str(sock) in msg and "docker -H" in msg


def test_model_without_image_is_refused():
    reg = registry(type='"text"', engine='"command"', args='{command = ["srv", "{port}"]}')
    with pytest.raises(RuntimeFailure, match="no image"):
        container_config("m", spec_of(reg), 8000, reg.host_config("local"))
