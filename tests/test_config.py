"""Registry parsing: the shipped files load, every error names its key path and the valid values."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hub.config import HubSettings, ModelConfig, parse_duration
from hub.errors import ConfigError
from hub.registry import load_registry, parse_registry

ROOT = Path(__file__).resolve().parent.parent


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_registry(data)
    return e.value.problems


def test_seed_registry_loads_with_the_seed_lineup() -> None:
    reg = load_registry(ROOT / "models.toml")
    assert {"llama3-8b", "qwen2.5-14b-awq", "deepseek-coder", "qwen-image-edit"} <= set(reg.models)
    assert reg.models["qwen-image-edit"].type == "image" and reg.models["qwen-image-edit"].engine == "diffusers"
    assert all(reg.models[m].engine == "vllm" for m in ("llama3-8b", "qwen2.5-14b-awq", "deepseek-coder"))


def test_seed_registry_documents_every_key() -> None:
    text = (ROOT / "models.toml").read_text()
    for key in [*HubSettings.model_fields, *ModelConfig.model_fields]:
        if key == "args":
            continue  # each engine's own keys, documented in the README reference
        assert re.search(rf"^#?\s*{key}\s*=.*#", text, re.M), f"models.toml does not show and comment {key!r}"


def test_durations() -> None:
    assert parse_duration(90) == 90
    assert parse_duration("90s") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("1h") == 3600
    assert parse_duration("500ms") == 0.5
    for bad in ("soon", "-5", "1y", True, -1):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_unknown_engine_names_the_valid_ones() -> None:
    out = problems({"models": {"qwen": {"type": "text", "engine": "vlm"}}})
    assert out == ["models.qwen.engine: unknown engine 'vlm' (valid: vllm, diffusers, command, openai)"]


def test_unknown_type_and_key_and_bad_duration() -> None:
    out = problems({"hub": {"idle_ttl": "soon", "colour": 1},
                    "models": {"a": {"type": "video", "engine": "vllm", "source": "x", "size": 3}}})
    text = "\n".join(out)
    assert "hub.idle_ttl: 'soon' is not a duration" in text
    assert "hub.colour: unknown key (valid: host, port," in text
    assert "models.a.type: unknown type 'video' (valid: 'text', 'image', 'embedding', 'rerank'," in text
    assert "models.a.size: unknown key (valid: type, engine, source" in text


def test_missing_required_keys() -> None:
    assert problems({"models": {"a": {"engine": "vllm"}}}) == ["models.a.type: required key is missing"]
    out = problems({"models": {"b": {"type": "text", "engine": "vllm"}}})
    assert "models.b.source: engine 'vllm' needs a source (a local folder or a hub repo id)" in out


def test_engine_specific_keys() -> None:
    out = problems({"models": {
        "c": {"type": "text", "engine": "command", "args": {"command": ["server", "--port", "8000"]}},
        "d": {"type": "text", "engine": "command"},
        "o": {"type": "text", "engine": "openai", "args": {"base_url": "ftp://x"}},
        "p": {"type": "text", "engine": "openai", "args": {"base_url": "http://x/v1", "command": ["x"]}},
        "v": {"type": "text", "engine": "vllm", "source": "x", "args": {"max_model_length": 5}},
    }})
    assert "models.c.args.command: must contain the {port} placeholder so that the hub can choose the port" in out
    assert "models.d.args.command: required key is missing" in out
    assert "models.o.args.base_url: 'ftp://x' must start with http:// or https://" in out
    assert "models.p.args.command: unknown key (valid: base_url, api_key_env)" in out
    assert any(p.startswith("models.v.args.max_model_length: unknown key (valid: dtype, max_model_len") for p in out)


@pytest.mark.legacy_keys
def test_engine_keys_of_earlier_registries_move_into_args(caplog) -> None:
    """`command`/`health`/`base_url`/`api_key_env` at the top of a model's table still work: read as args, with a
    warning. The one test of that migration, on purpose: every other registry in the tests uses the current keys
    (tests/conftest.py fails a test whose registry logs that warning, by the text checked here)."""
    from tests.conftest import LEGACY_KEYS

    reg = parse_registry({"models": {
        "c": {"type": "text", "engine": "command", "command": ["srv", "{port}"], "health": "/ping"},
        "o": {"type": "text", "engine": "openai", "base_url": "http://x/v1", "api_key_env": "K"},
    }})
    assert reg.models["c"].args == {"command": ["srv", "{port}"], "health": "/ping"}
    assert reg.models["o"].args == {"base_url": "http://x/v1", "api_key_env": "K"}
    assert caplog.text.count(LEGACY_KEYS) == 4 and "read as args.command" in caplog.text
    out = problems({"models": {"c": {"type": "text", "engine": "command", "command": ["a", "{port}"],
                                     "args": {"command": ["b", "{port}"]}}}})
    assert out == ["models.c: command is set twice, in the model's table and in its args: keep args.command"]


def test_model_larger_than_budget_and_unknown_host() -> None:
    out = problems({"hub": {"memory_budget_gb": 16},
                    "models": {"big": {"type": "text", "engine": "vllm", "source": "x", "memory_gb": 20},
                               "far": {"type": "text", "engine": "vllm", "source": "x", "host": "nowhere"}}})
    assert any(p.startswith("models.big.memory_gb: 20 GB is more than the budget of host 'local' (16 GB)") for p in out)
    assert "models.far.host: unknown host 'nowhere' (valid: local)" in out


def test_invalid_model_id() -> None:
    out = problems({"models": {"bad id!": {"type": "text", "engine": "openai", "args": {"base_url": "http://x/v1"}}}})
    assert out == ["models.bad id!: invalid model id (letters, digits and . _ : - only)"]


def test_hub_check_cli(tmp_path: Path) -> None:
    def check(text: str) -> subprocess.CompletedProcess:
        p = tmp_path / "m.toml"
        p.write_text(text)
        return subprocess.run([sys.executable, "-m", "hub.cli", "check", "--config", str(p)],
                              capture_output=True, text=True)

    ok = check('[models.x]\ntype = "text"\nengine = "openai"\n[models.x.args]\nbase_url = "http://127.0.0.1:1/v1"\n')
    assert ok.returncode == 0 and "ok, 1 model(s)" in ok.stdout
    bad = check('[models.qwen]\ntype = "text"\nengine = "vlm"\n')
    assert bad.returncode == 1
    assert "models.qwen.engine: unknown engine 'vlm' (valid: vllm, diffusers, command, openai)" in bad.stderr
    broken = check("[models.x\n")
    assert broken.returncode == 1 and "invalid TOML" in broken.stderr
    missing = subprocess.run([sys.executable, "-m", "hub.cli", "check", "--config", str(tmp_path / "none.toml")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "cannot read the registry" in missing.stderr


def test_one_place_for_the_hubs_url_and_key(monkeypatch) -> None:
    """The hub's own URL (a wildcard bind means loopback) and its API key, for the server, the web app and clients."""
    from hub.config import Registry, client_api_key, client_url

    def reg(**hub) -> Registry:
        return Registry.model_validate({"hub": hub})

    assert reg(host="0.0.0.0", port=9).url == "http://127.0.0.1:9"
    assert reg(host="::", port=9).url == "http://[::1]:9"
    assert reg(host="10.1.2.3", port=9).url == "http://10.1.2.3:9"
    monkeypatch.delenv("HUB_URL", raising=False)
    monkeypatch.delenv("HUB_API_KEY", raising=False)
    monkeypatch.setenv("MY_KEY", "s3cret")
    keyed = reg(api_key_env="MY_KEY", port=7)
    assert keyed.api_key() == "s3cret" and reg().api_key() is None
    assert client_url(keyed) == "http://127.0.0.1:7" and client_api_key(keyed) == "s3cret"
    monkeypatch.setenv("HUB_URL", "http://box:8000/v1/")
    monkeypatch.setenv("HUB_API_KEY", "client-key")
    assert client_url(keyed) == "http://box:8000" and client_api_key(keyed) == "client-key"


def test_scheduling_limits_and_host_lists() -> None:
    cmd = {"type": "text", "engine": "command", "args": {"command": ["x", "{port}"]}}
    reg = parse_registry({"hub": {"max_run": "2m", "max_queue": 8},
                          "hosts": {"gpu": {"docker": "tcp://gpu:2375", "memory_budget_gb": 4}},
                          "models": {"a": {**cmd, "max_queue": 2, "min_residency": "5s", "host": ["local", "gpu"]},
                                     "b": cmd}})
    a, b = reg.limits_of("a"), reg.limits_of("b")
    assert (a.max_queue, a.max_run, a.min_residency) == (2, 120, 5), "its own keys, else [hub]'s"
    assert (b.max_queue, b.max_run, b.min_residency) == (8, 120, HubSettings().min_residency)
    assert reg.models["a"].hosts == ["local", "gpu"] and reg.models["b"].hosts == ["local"]
    text = "\n".join(problems({"models": {"e": {**cmd, "host": []}, "d": {**cmd, "host": ["local", "local"]},
                                          "q": {**cmd, "max_queue": 0}}}))
    assert "models.e.host: name at least one host" in text
    assert "models.d.host: a host is named twice in ['local', 'local']" in text
    assert "models.q.max_queue: Input should be greater than or equal to 1" in text
    out = problems({"hosts": {"gpu": {"docker": "tcp://gpu:2375", "memory_budget_gb": 4}},
                    "models": {"u": {**cmd, "host": ["local", "nowhere"]},
                               "big": {**cmd, "host": ["local", "gpu"], "memory_gb": 6}}})
    assert out == ["models.u.host: unknown host 'nowhere' (valid: local, gpu)",
                   "models.big.memory_gb: 6 GB is more than the budget of host 'gpu' (4 GB): raise memory_budget_gb "
                   "or lower memory_gb"]


def test_families_registry_serves_every_family_prepare_makes() -> None:
    from hub.demo import FAMILIES

    reg = load_registry(ROOT / "models.families.toml")
    assert set(reg.models) == {f.name for f in FAMILIES}
    for name, m in reg.models.items():
        assert m.type == "image" and m.source == f"{{state_dir}}/models/families/{name}" and "RANDOM" in m.description
    real = load_registry(ROOT / "models.toml")  # and the real lineup names a real model of every family
    assert {"sd1.5", "sdxl", "sd3.5", "flux.1-dev", "flux.1-kontext", "flux.2-klein", "qwen-image",
            "qwen-image-edit", "qwen-image-edit-plus"} <= set(real.models)
