"""The docker tier: a real `hub serve` runs engines as containers on real Docker daemons (scripts/docker-ci.sh sets
them up: the local dockerd, a second one standing in for a remote host, the engine images). Traffic stays on
loopback: the test daemons have no bridge, so containers use host networking."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from docker.errors import DockerException, ImageNotFound
from openai import OpenAI

import docker
from tests.conftest import DEMO_MODELS, require

pytestmark = pytest.mark.docker

REMOTE = os.environ.get("HUB_REMOTE_DOCKER", "unix:///run/hub-remote-docker/docker.sock")
RESPONDER_IMAGE = "hub-responder:latest"
DIFFUSERS_IMAGE = "hub-diffusers:latest"
SETUP = "run scripts/docker-ci.sh as root"


def _client(url: str | None) -> docker.DockerClient | None:
    try:
        c = docker.DockerClient(base_url=url, timeout=30) if url else docker.from_env(timeout=30)
        c.ping()
        return c
    except DockerException:
        return None


def _need_image(client: docker.DockerClient, image: str) -> None:
    try:
        client.images.get(image)
    except ImageNotFound:
        require(False, f"image {image} is missing: {SETUP}")


def _ours(client: docker.DockerClient) -> list:
    return client.containers.list(all=True, filters={"label": "hub=1"})


def _daemon(url: str | None, where: str) -> Iterator[docker.DockerClient]:
    """A daemon with the responder image and none of the hub's containers, before and (asserted) after a test."""
    c = _client(url)
    require(c is not None, f"no Docker daemon {'at ' + url if url else 'on this machine'}: {SETUP}")
    _need_image(c, RESPONDER_IMAGE)
    for leftover in _ours(c):
        leftover.remove(force=True)
    yield c
    left = [x.name for x in _ours(c)]
    for x in _ours(c):
        x.remove(force=True)
    assert not left, f"containers left on the {where} daemon: {left}"


@pytest.fixture
def local() -> Iterator[docker.DockerClient]:
    """The local daemon; every test must leave none of the hub's containers behind."""
    yield from _daemon(None, "local")


@pytest.fixture
def remote() -> Iterator[docker.DockerClient]:
    """The second daemon (stand-in remote host)."""
    yield from _daemon(REMOTE, "remote")


def registry(tmp: Path, models: str, hub: str = "", hosts: str = "") -> str:
    """A docker registry: the local host with host networking and a private HF cache."""
    return (f'[hub]\nruntime = "docker"\nstop_timeout = 5\nstart_timeout = 120\n{hub}\n'
            f'[hosts.local]\nnetwork = "host"\nhf_cache = "{tmp / "hf"}"\n{hosts}\n{models}')


def responder_model(mid: str, kind: str = "text", host: str = "local", more: str = "") -> str:
    """A registry table: the responder image as a command engine; `more`: other keys of the model's table."""
    return (f'[models.{mid}]\ntype = "{kind}"\nengine = "command"\nimage = "{RESPONDER_IMAGE}"\nhost = "{host}"\n'
            f'{more}[models.{mid}.args]\ncommand = ["--port", "{{port}}", "--model", "{mid}"]\n')


def wait_state(hub, mid: str, state: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = hub.models()[mid]
        if m["state"] == state:
            return m
        time.sleep(0.3)
    raise AssertionError(f"{mid} not {state} within {timeout}s: {hub.models()[mid]}")


def test_cold_request_starts_container_and_down_removes_it(local, hub_factory, tmp_path):
    hub = hub_factory(registry(tmp_path, responder_model("echo") + responder_model("pic", "image")))
    assert local.containers.list(all=True, filters={"name": "hub-echo"}) == []
    client = OpenAI(base_url=hub.v1, api_key="none")
    reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello box"}])
    assert reply.choices[0].message.content == "echo: hello box"
    c = local.containers.get("hub-echo")
    assert c.status == "running"
    assert c.labels["hub"] == "1" and c.labels["hub.model"] == "echo" and c.labels["hub.config-hash"]
    assert c.attrs["HostConfig"]["Init"] is True and c.attrs["HostConfig"]["NetworkMode"] == "host"
    m = hub.models()["echo"]
    assert m["state"] == "ready" and m["runtime"] == "docker" and m["process"]["container"] == "hub-echo"

    img = client.images.generate(model="pic", prompt="a box", size="64x64", response_format="b64_json")
    assert base64.b64decode(img.data[0].b64_json)[:8] == b"\x89PNG\r\n\x1a\n"
    assert local.containers.get("hub-pic").status == "running"

    r = hub.cli("down", "echo")
    assert r.returncode == 0 and "stopped" in r.stdout, r.stderr
    assert local.containers.list(all=True, filters={"name": "hub-echo"}) == []
    assert hub.models()["echo"]["state"] == "stopped"
    logs = hub.cli("logs", "echo")
    assert logs.returncode == 0 and "container hub-echo" in logs.stdout  # the log outlives the container
    hub.stop()
    assert _ours(local) == []  # shutdown stopped pic too


def test_engine_crash_marks_model_failed_and_removes_container(local, hub_factory, tmp_path):
    hub = hub_factory(registry(tmp_path, responder_model("echo")))
    assert hub.cli("up", "echo").returncode == 0
    port = hub.models()["echo"]["process"]["port"]
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{port}/test/crash", timeout=5)
    m = wait_state(hub, "echo", "failed", 30)
    assert "exited with code 3" in m["reason"]
    deadline = time.monotonic() + 20
    while local.containers.list(all=True, filters={"name": "hub-echo"}) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert local.containers.list(all=True, filters={"name": "hub-echo"}) == []


def test_model_on_remote_host_runs_there(local, remote, hub_factory, tmp_path):
    hosts = f'[hosts.remote]\ndocker = "{REMOTE}"\nnetwork = "host"\nhf_cache = "{tmp_path / "hf2"}"\n'
    hub = hub_factory(registry(tmp_path, responder_model("far", host="remote"), hosts=hosts))
    client = OpenAI(base_url=hub.v1, api_key="none")
    reply = client.chat.completions.create(model="far", messages=[{"role": "user", "content": "over there"}])
    assert reply.choices[0].message.content == "echo: over there"
    assert remote.containers.get("hub-far").status == "running"
    assert local.containers.list(all=True, filters={"name": "hub-far"}) == []
    assert hub.models()["far"]["process"]["host"] == "remote"
    assert hub.cli("down", "far").returncode == 0
    assert remote.containers.list(all=True, filters={"name": "hub-far"}) == []


def test_restarted_hub_adopts_running_container(local, hub_factory, tmp_path):
    first = hub_factory(registry(tmp_path, responder_model("echo"), hub="keep_running = true"))
    assert first.cli("up", "echo").returncode == 0
    cid = local.containers.get("hub-echo").id
    first.stop()
    assert local.containers.get("hub-echo").status == "running"  # keep_running: left running

    # a stale stopped container of the hub (a model since removed) is cleaned up at start
    stale = local.containers.create(RESPONDER_IMAGE, ["--port", "1"], name="hub-gone", labels={"hub": "1"})
    second = hub_factory(registry(tmp_path, responder_model("echo")))
    m = wait_state(second, "echo", "ready", 30)
    assert m["process"]["id"] == local.containers.get("hub-echo").short_id
    assert local.containers.get("hub-echo").id == cid  # adopted, not restarted
    assert [c.name for c in _ours(local)] == ["hub-echo"]
    with pytest.raises(docker.errors.NotFound):
        local.containers.get(stale.id)
    client = OpenAI(base_url=second.v1, api_key="none")
    assert client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "again"}]) \
        .choices[0].message.content == "echo: again"
    second.stop()
    assert _ours(local) == []  # keep_running = false: stopped on shutdown


def test_changed_config_is_not_adopted(local, hub_factory, tmp_path):
    first = hub_factory(registry(tmp_path, responder_model("echo"), hub="keep_running = true"))
    assert first.cli("up", "echo").returncode == 0
    cid = local.containers.get("hub-echo").id
    first.stop()
    changed = responder_model("echo").replace('"--model", "echo"]', '"--model", "echo", "--delay", "0"]')
    second = hub_factory(registry(tmp_path, changed))
    assert second.models()["echo"]["state"] == "stopped"
    assert _ours(local) == []  # the old container (other settings) was removed, not adopted
    assert second.cli("up", "echo").returncode == 0
    assert local.containers.get("hub-echo").id != cid


def test_clear_errors_and_nothing_left(local, hub_factory, tmp_path):
    missing = responder_model("ghost").replace(RESPONDER_IMAGE, "hub-no-such-image:1")
    dead = responder_model("dead", host="dead")
    gpu = responder_model("gpu", more='gpus = "all"\n')
    hosts = f'[hosts.dead]\ndocker = "unix://{tmp_path / "nothing.sock"}"\nnetwork = "host"\n'
    hub = hub_factory(registry(tmp_path, missing + dead + gpu, hosts=hosts))

    def error(mid: str) -> str:
        r = httpx.post(hub.v1 + "/chat/completions", json={"model": mid, "messages": [{"role": "user",
                                                                                      "content": "x"}]}, timeout=60)
        assert r.status_code == 503, r.text
        return r.json()["error"]["message"]

    msg = error("ghost")
    assert "image 'hub-no-such-image:1'" in msg and "docker pull hub-no-such-image:1" in msg
    msg = error("dead")
    assert "cannot reach the Docker daemon of host 'dead'" in msg
    if "nvidia" not in (local.info().get("Runtimes") or {}):
        msg = error("gpu")
        assert "no NVIDIA runtime" in msg and "NVIDIA Container Toolkit" in msg
    assert _ours(local) == []
    states = hub.models()
    assert all(states[m]["state"] == "failed" for m in ("ghost", "dead"))


def test_image_model_on_diffusers_image(local, hub_factory, tmp_path):
    """The real Diffusers image server in its container, with the tiny random pipeline (its output is noise)."""
    _need_image(local, DIFFUSERS_IMAGE)
    model = DEMO_MODELS / "tiny-sd"
    require((model / "model_index.json").exists(), f"tiny model missing at {model}: make it with `make demo-models`")
    models = (f'[models.tiny-sd]\ntype = "image"\nengine = "diffusers"\nsource = "{model}"\n'
              '[models.tiny-sd.args]\ndevice = "cpu"\ndefault_size = "64x64"\ndefault_steps = 2\n')
    hub = hub_factory(registry(tmp_path, models))
    client = OpenAI(base_url=hub.v1, api_key="none", timeout=300)
    img = client.images.generate(model="tiny-sd", prompt="a red box", size="64x64", response_format="b64_json")
    assert base64.b64decode(img.data[0].b64_json)[:8] == b"\x89PNG\r\n\x1a\n"
    c = local.containers.get("hub-tiny-sd")
    assert c.status == "running" and c.image.tags == [DIFFUSERS_IMAGE]
    assert any(m["Source"] == str(model) and not m["RW"] for m in c.attrs["Mounts"])
    assert hub.cli("down", "tiny-sd").returncode == 0
    assert _ours(local) == []


def test_hub_build_builds_the_engine_image(local):
    """`hub build` builds docker/diffusers/Dockerfile on a registry host (docker-ci.sh built it: layers cached)."""
    import subprocess
    import sys

    _need_image(local, DIFFUSERS_IMAGE)
    want = local.images.get(DIFFUSERS_IMAGE).id
    base = os.environ.get("HUB_BASE_IMAGE", "hub-base:bookworm")
    r = subprocess.run([sys.executable, "-m", "hub.cli", "build", "--config", "no-such-registry.toml",
                        "--base-image", base, "--network", "host", "--device", "cpu"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert f"built {DIFFUSERS_IMAGE} ({want[:19]})" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hub.cli", "build", "--config", "no-such-registry.toml", "--host",
                        "gpu-pc"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "unknown host 'gpu-pc' (valid: local)" in r.stderr


def test_placement_across_two_daemons(local, remote, hub_factory, tmp_path):
    """A model allowed on both hosts starts where it fits, prefers a host that has its image, and evicts on the
    host whose models were used least recently when it fits nowhere; it runs on one host at a time."""
    tag = "hub-responder:placement-only-remote"
    remote.images.get(RESPONDER_IMAGE).tag(tag)
    try:
        hosts = (f'[hosts.remote]\ndocker = "{REMOTE}"\nnetwork = "host"\nhf_cache = "{tmp_path / "hf2"}"\n'
                 "memory_budget_gb = 1\n")
        both = 'host = ["local", "remote"]\nmemory_gb = 1\n'
        models = "".join(responder_model(m).replace('host = "local"\n', both) for m in ("one", "two", "four"))
        models += responder_model("three").replace('host = "local"\n', 'host = ["local", "remote"]\n') \
            .replace(RESPONDER_IMAGE, tag)
        hub = hub_factory(registry(tmp_path, models, hub="memory_budget_gb = 1", hosts=hosts))
        client = OpenAI(base_url=hub.v1, api_key="none")

        def ask(mid: str) -> dict:
            reply = client.chat.completions.create(model=mid, messages=[{"role": "user", "content": mid}])
            assert reply.choices[0].message.content == f"echo: {mid}"
            return hub.models()[mid]

        assert ask("one")["host"] == "local", "both have room and the image: the first listed"
        assert ask("two")["host"] == "remote", "local is full: remote has room, nothing is evicted"
        assert local.containers.get("hub-one").status == "running"
        assert remote.containers.get("hub-two").status == "running"
        assert ask("three")["host"] == "remote", "only the remote daemon has its image"
        assert local.containers.list(all=True, filters={"name": "hub-three"}) == []
        ask("two")  # one is now the least recently used model
        entry = ask("four")
        assert entry["host"] == "local" and entry["hosts"] == ["local", "remote"]
        assert hub.models()["one"]["state"] == "stopped" and "evicted to make room for 'four'" in \
            hub.models()["one"]["reason"]
        assert local.containers.list(all=True, filters={"name": "hub-one"}) == []
        assert remote.containers.get("hub-two").status == "running"
        assert ask("one")["host"] == "remote", "fits nowhere: evicts two (used before four), so it moves hosts"
        assert hub.models()["two"]["state"] == "stopped"
        assert remote.containers.get("hub-one").status == "running"
        assert local.containers.get("hub-four").status == "running"
        hub.stop()
    finally:
        remote.images.remove(tag)
