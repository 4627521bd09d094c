"""The ray tier: a real `hub serve` whose models run under the ray runtime on a real local Ray cluster (a head of 1
CPU and two worker nodes with fake GPUs and labels, started here with ray.cluster_utils.Cluster: only the Ray
processes this module starts are stopped, never `ray stop`). The test responder and the real demo smollm2
(vLLM-CPU) are placed by their resources; a node removed without grace fails its model naming the node, and the
next request starts it on the other node; an unplaceable model gets a 503 naming what is missing; a restarted hub
adopts the running actors; nothing (process or actor) is left after a stop."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import ENVS_DIR, require, start_hub, still_running, wait_for
from tests.helpers import client, demo_tables, text_model

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.serve]  # engine: the serial tier (xdist)

GB = 1024**3
OBJECT_STORE = 80 * 1024**2  # Ray's minimum (the default takes 30% of RAM in /dev/shm)
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}


@dataclass
class LocalCluster:
    """The module's cluster, with this test process connected to it as a driver (to list actors and nodes)."""

    cluster: Any
    nodes: dict[str, Any]  # "a", "b" -> the worker node (ray's Node), replaced when a test removes one
    start_seconds: float
    rss_mb: float
    peak_mb: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.cluster.address

    def node_id(self, name: str) -> str:
        return self.nodes[name].node_id

    def add_worker(self, name: str) -> None:
        """A worker with 2 fake GPUs, 6 GB of Ray memory, and the labels box-<name> and box."""
        self.nodes[name] = self.cluster.add_node(num_cpus=1, num_gpus=2, resources={f"box-{name}": 1, "box": 1},
                                                 memory=6 * GB, object_store_memory=OBJECT_STORE)
        self.cluster.wait_for_nodes()

    def actors(self, namespace: str) -> list[str]:
        """Names of the live actors of a namespace."""
        import ray

        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace]


def ray_rss_mb() -> float:
    """RSS in MB of the Ray processes below this test process (the cluster's nodes and their workers)."""
    total = 0
    for p in psutil.Process().children(recursive=True):
        try:
            if "ray" in " ".join(p.cmdline()) or p.name().startswith(("raylet", "gcs_server", "ray::")):
                total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 1024**2


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    require(importlib.util.find_spec("ray") is not None, "Ray is not installed in the hub's environment: make ray")
    import ray
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # the cluster's processes and every hub started here inherit them
    began = time.monotonic()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "memory": 1 * GB,
                                                      "object_store_memory": OBJECT_STORE})
    lc = LocalCluster(c, {}, 0.0, 0.0)
    try:
        lc.add_worker("a")
        lc.add_worker("b")
        lc.start_seconds = time.monotonic() - began
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        ray.init(address=c.address, namespace="hub-tests", log_to_driver=False, logging_level="WARNING")
        for sig, handler in handlers.items():  # the driver's handlers stay out of the rest of the test session
            signal.signal(sig, handler)
        lc.rss_mb = lc.peak_mb = ray_rss_mb()
        done = threading.Event()

        def sample() -> None:  # the Ray processes' peak RSS while the tests run (workers and actors come and go)
            while not done.wait(1.0):
                lc.peak_mb = max(lc.peak_mb, ray_rss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        yield lc
        done.set()
        sampler.join()
    finally:
        print(f"\nray cluster: started in {lc.start_seconds:.1f}s, {lc.rss_mb:.0f} MB RSS then, {lc.peak_mb:.0f} MB at "
              f"the peak; {'; '.join(lc.notes)}")
        ray.shutdown()
        c.shutdown()
        for p in psutil.Process().children(recursive=True):  # a node that failed to start may leave some behind
            with contextlib.suppress(psutil.Error):
                if "site-packages/ray/" in " ".join(p.cmdline()) or p.name().startswith(("raylet", "gcs_server")):
                    p.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ray_hub(tmp_path, lc: LocalCluster, namespace: str, models: str, **hub_keys: str) -> Any:
    """A `hub serve` on the cluster, its actors in their own namespace."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    keys = "".join(f"{k} = {v}\n" for k, v in hub_keys.items())
    registry = f'[hub]\nray_address = "{lc.address}"\nray_namespace = "{namespace}"\n{keys}{models}'
    return start_hub(tmp_path, registry)


def entry(hub, model: str) -> dict:
    return hub.models()[model]


def gone(pid: int, timeout: float = 30) -> bool:
    """Whether process `pid` has exited within `timeout` seconds."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return not still_running([proc], timeout)


def stop_and_check(hub, lc: LocalCluster, namespace: str, pids: list[int]) -> None:
    """Stop the hub; no engine process and no actor of its namespace is left."""
    hub.stop()
    assert "Traceback" not in hub.log.read_text(), hub.log.read_text()[-3000:]
    for pid in pids:
        assert gone(pid), f"engine process {pid} outlived the hub's stop"
    wait_for(lambda: not lc.actors(namespace), f"no actor left in namespace {namespace}", 30)


def test_a_command_engine_is_placed_by_its_resources(cluster, tmp_path):
    more = 'runtime = "ray"\ngpus = [0]\nresources = { box-b = 1 }\nenv = { HUB_RAY_TEST = "passed" }'
    hub = ray_hub(tmp_path, cluster, "t-placed", text_model("echo", memory=2, more=more))
    try:
        r = client(hub).chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello"}])
        assert "hello" in r.choices[0].message.content
        e = entry(hub, "echo")
        assert e["state"] == "ready" and e["host"] == "ray" and e["runtime"] == "ray"
        info = e["process"]
        assert info["node_id"] == cluster.node_id("b"), "resources box-b place it on node b"
        assert info["actor"] == "hub-echo" and cluster.actors("t-placed") == ["hub-echo"]
        environ = psutil.Process(info["pid"]).environ()
        assert environ["HUB_RAY_TEST"] == "passed", "the spec's environment reaches the engine"
        assert environ["CUDA_VISIBLE_DEVICES"] in ("0", "1"), "Ray gave it one of node b's two GPUs"
        logs = hub.cli("logs", "echo")
        assert logs.returncode == 0 and "starting echo on Ray node" in logs.stdout
    except BaseException:
        print(hub.log.read_text()[-5000:])
        raise
    stop_and_check(hub, cluster, "t-placed", [info["pid"]])


def test_an_unplaceable_model_gets_a_503_naming_what_is_missing(cluster, tmp_path):
    more = 'runtime = "ray"\ngpus = [0, 1, 2]\nresources = { box-a = 1 }'
    hub = ray_hub(tmp_path, cluster, "t-unplaceable", text_model("big", memory=1, more=more),
                  ray_place_timeout='"2s"')
    r = httpx.post(hub.v1 + "/chat/completions", json={"model": "big", "messages": [{"role": "user", "content": "x"}]},
                   timeout=120)
    assert r.status_code == 503, r.text
    msg = r.json()["error"]["message"]
    assert "cannot be placed" in msg and "GPU 3" in msg and "--num-gpus=3" in msg, msg
    assert f"node {cluster.node_id('a')[:8]}" in msg and "has GPU 2" in msg, msg
    e = entry(hub, "big")
    assert e["state"] == "failed" and "cannot be placed" in e["reason"]
    assert not cluster.actors("t-unplaceable"), "the pending actor was removed"
    stop_and_check(hub, cluster, "t-unplaceable", [])


def test_a_restarted_hub_adopts_the_running_actor(cluster, tmp_path):
    models = text_model("echo", memory=1, more='runtime = "ray"\nresources = { box-a = 1 }')
    first = ray_hub(tmp_path, cluster, "t-adopt", models, keep_running="true")
    client(first).chat.completions.create(model="echo", messages=[{"role": "user", "content": "one"}])
    pid = entry(first, "echo")["process"]["pid"]
    first.stop()
    assert cluster.actors("t-adopt") == ["hub-echo"] and psutil.pid_exists(pid), "keep_running leaves it running"
    second = ray_hub(tmp_path, cluster, "t-adopt", models)  # the same registry folder: the same settings
    wait_for(lambda: entry(second, "echo")["state"] == "ready", "the second hub adopted echo", 60)
    e = entry(second, "echo")
    assert e["process"]["pid"] == pid, "adopted, not started again"
    r = client(second).chat.completions.create(model="echo", messages=[{"role": "user", "content": "two"}])
    assert "two" in r.choices[0].message.content
    stop_and_check(second, cluster, "t-adopt", [pid])


def test_a_lost_node_fails_its_model_and_the_next_request_starts_it_on_the_other(cluster, tmp_path):
    hub = ray_hub(tmp_path, cluster, "t-lost", text_model("echo", memory=4, more='runtime = "ray"\n'
                                                                                'resources = { box = 1 }'))
    c = client(hub)
    c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "one"}])
    info = entry(hub, "echo")["process"]
    name = next(n for n in ("a", "b") if cluster.node_id(n) == info["node_id"])
    other = cluster.node_id("b" if name == "a" else "a")
    lost = cluster.nodes.pop(name)
    began = time.monotonic()
    cluster.cluster.remove_node(lost, allow_graceful=False)
    try:
        wait_for(lambda: entry(hub, "echo")["state"] == "failed", "echo failed after its node was lost", 90)
        cluster.notes.append(f"a lost node noticed in {time.monotonic() - began:.1f}s")
        reason = entry(hub, "echo")["reason"]
        assert f"node {info['node_id'][:8]}" in reason and "died" in reason, reason
        assert gone(info["pid"]), "the engine went down with its node"
        r = c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "two"}])
        assert "two" in r.choices[0].message.content
        again = entry(hub, "echo")
        assert again["state"] == "ready" and again["process"]["node_id"] == other, "started on the other node"
        stop_and_check(hub, cluster, "t-lost", [again["process"]["pid"]])
    finally:
        if hub.proc.poll() is None:
            hub.stop()
        cluster.add_worker(name)  # the next tests see two workers again


def test_the_demo_smollm2_on_vllm_cpu_is_placed_by_its_resources(cluster, tmp_path):
    require((ENVS_DIR / "vllm" / "bin" / "python").exists(), f"engine environment {ENVS_DIR / 'vllm'} is missing: "
                                                             "run `make engines`")
    registry = demo_tables({"smollm2": "smollm2-135m-instruct"}).replace(
        "[models.smollm2]\n", '[models.smollm2]\nruntime = "ray"\nresources = { box-a = 1 }\n')
    source = next(ln.split("=", 1)[1].strip().strip('"') for ln in registry.splitlines() if ln.startswith("source"))
    require(os.path.isdir(source), f"demo model folder {source} is missing: run `make demo-models`")
    registry = registry.replace("[hub]\n", f'[hub]\nray_address = "{cluster.address}"\nray_namespace = "t-vllm"\n')
    hub = start_hub(tmp_path, registry)
    try:
        up = hub.cli("up", "smollm2", timeout=600)  # vLLM-CPU takes 30 s on an idle machine, minutes on a busy one
        assert up.returncode == 0, up.stderr + hub.log.read_text()[-3000:]
        r = client(hub).chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16)
        assert "Paris" in r.choices[0].message.content
        e = entry(hub, "smollm2")
        assert e["process"]["node_id"] == cluster.node_id("a"), "resources box-a place it on node a"
        cluster.notes.append(f"smollm2 ready in {e['ready_seconds']:.0f}s")
        pids = [e["process"]["pid"], *(p.pid for p in psutil.Process(e["process"]["pid"]).children(recursive=True))]
    except BaseException:
        print(hub.log.read_text()[-5000:])
        raise
    stop_and_check(hub, cluster, "t-vllm", pids)
