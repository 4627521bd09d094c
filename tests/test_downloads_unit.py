"""Unit tests of downloads: the engines' patterns, where a model is pulled to, the status line, the job sharing and
the error mapping (hub/downloads/)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from huggingface_hub import errors as hf

from hub.config import ModelConfig
from hub.downloads import Downloads, describe_download, target_of
from hub.downloads import worker as worker_mod
from hub.downloads.target import Target, models_sharing
from hub.engines import get_engine
from hub.errors import Conflict
from hub.registry import parse_registry

CHECKPOINT = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
              "pytorch_model-00001-of-00002.bin", "original/consolidated.00.pth", "consolidated.safetensors",
              "flax_model.msgpack", "onnx/model.onnx", "tokenizer.json"]


def kept(patterns: tuple[list[str] | None, list[str] | None], files: list[str]) -> list[str]:
    from huggingface_hub.utils import filter_repo_objects

    allow, ignore = patterns
    return sorted(filter_repo_objects(files, allow_patterns=allow, ignore_patterns=ignore))


def model(**kw) -> ModelConfig:
    return ModelConfig(**{"type": "text", "engine": "vllm", "source": "org/m", **kw})


def test_vllm_takes_sharded_safetensors_and_skips_every_duplicate() -> None:
    got = kept(get_engine("vllm").download_patterns(model(), CHECKPOINT), CHECKPOINT)
    assert got == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                   "tokenizer.json"]


def test_vllm_keeps_bin_weights_where_the_repo_has_no_safetensors() -> None:
    files = ["config.json", "pytorch_model.bin", "tf_model.h5"]
    assert kept(get_engine("vllm").download_patterns(model(), files), files) == ["config.json", "pytorch_model.bin"]


def test_a_lone_consolidated_safetensors_is_kept() -> None:
    files = ["params.json", "consolidated.safetensors"]
    assert kept(get_engine("vllm").download_patterns(model(), files), files) == files[::-1]


def test_diffusers_skips_bin_duplicates_of_each_component() -> None:
    files = ["model_index.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
             "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"]
    m = model(type="image", engine="diffusers")
    assert kept(get_engine("diffusers").download_patterns(m, files), files) == [
        "model_index.json", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]


def test_the_registry_patterns_override_the_engine() -> None:
    t = Target("org/m", None, "/c", model(allow_patterns=["*.bin", "*.json"]))
    assert kept(t.patterns(CHECKPOINT), CHECKPOINT) == ["config.json", "pytorch_model-00001-of-00002.bin",
                                                         "tokenizer.json"]
    t = Target("org/m", None, "/c", model(ignore_patterns=["*.msgpack"]))
    assert "original/consolidated.00.pth" in kept(t.patterns(CHECKPOINT), CHECKPOINT)


def registry(tmp_path: Path) -> object:
    return parse_registry({
        "hub": {"state_dir": str(tmp_path)},
        "hosts": {"local": {"hf_cache": str(tmp_path / "hf")}, "gpu": {"docker": "tcp://gpu:2375"}},
        "models": {
            "a": {"type": "text", "engine": "vllm", "source": "org/m"},
            "b": {"type": "text", "engine": "vllm", "source": "org/m", "revision": "main"},
            "c": {"type": "text", "engine": "vllm", "source": "org/m", "revision": "v2"},
            "local": {"type": "text", "engine": "vllm", "source": "./folder"},
            "cmd": {"type": "text", "engine": "command", "source": "org/m", "args": {"command": ["x", "{port}"]}},
            "cmd-pulled": {"type": "text", "engine": "command", "source": "org/m", "allow_patterns": ["*"],
                           "args": {"command": ["x", "{port}"]}},
            "docker-local": {"type": "text", "engine": "vllm", "source": "org/m", "runtime": "docker",
                             "host": ["local", "gpu"]},
            "docker-remote": {"type": "text", "engine": "vllm", "source": "org/m", "runtime": "docker",
                              "host": "gpu"},
        }})


def test_where_each_model_is_pulled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "process-cache"))
    reg = registry(tmp_path)
    a = target_of(reg, "a")
    assert a and a.repo == "org/m" and a.engine_env()["HF_HUB_OFFLINE"] == "1"
    assert models_sharing(reg, a) == ["a", "b"], "main is the default revision; c pins another; cmd-pulled takes " \
        "other files (every file, where vllm skips the duplicates)"
    assert target_of(reg, "local") is None and target_of(reg, "cmd") is None
    docker = target_of(reg, "docker-local")
    assert docker and docker.cache_dir == str(tmp_path / "hf" / "hub")
    assert docker.engine_env() == {"HF_HUB_OFFLINE": "1"}, "the container reads the cache at its own path"
    assert target_of(reg, "docker-local", host="gpu") is None, "placed on the remote host: its container downloads"
    with pytest.raises(Conflict, match="its engine downloads org/m in its container on its first start"):
        target_of(reg, "docker-remote", strict=True)
    with pytest.raises(Conflict, match="its source is a local folder"):
        target_of(reg, "local", strict=True)
    with pytest.raises(Conflict, match="set allow_patterns"):
        target_of(reg, "cmd", strict=True)


def test_the_status_line() -> None:
    job = {"status": "downloading", "bytes_done": 12_300_000_000, "bytes_total": 57_700_000_000,
           "speed_bps": 95_000_000, "eta_s": 540}
    assert describe_download(job) == "12.3/57.7 GB, 95 MB/s, 9m left"
    assert describe_download({**job, "speed_bps": None, "eta_s": None}) == "12.3/57.7 GB"
    assert describe_download({**job, "bytes_done": 0, "bytes_total": 100_040, "speed_bps": 2_500,
                              "eta_s": 4000}) == "0.0/100.0 kB, 2.5 kB/s, 1h06m left"
    assert describe_download({"status": "checking"}) == "checking what to download"
    assert describe_download({"status": "failed", "error": "org/m is gated"}) == "failed: org/m is gated"
    assert describe_download({"status": "done", "bytes_total": 0}) == "done, nothing to download"


def test_one_job_per_cache_repo_and_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers of one key share its job; another revision or cache is another job (the worker is not run)."""
    async def run() -> None:
        held = asyncio.Event()

        async def fake_run(self, job, target) -> None:
            await held.wait()
            job.finish("done")

        monkeypatch.setattr(Downloads, "_run", fake_run)
        d = Downloads(tmp_path)
        m = model()
        first = d.start(Target("org/m", None, "/c", m), ["a"])
        assert d.start(Target("org/m", "main", "/c", m), ["b"]) is first and first.models == ["a", "b"]
        assert d.start(Target("org/m", "v2", "/c", m), ["c"]) is not first
        assert d.start(Target("org/m", None, "/other", m), ["a"]) is not first
        assert d.start(Target("org/m", None, "/c", model(allow_patterns=["*.bin"])), ["d"]) is not first
        assert d.start(Target("org/m", None, "/c", model(env={"HF_TOKEN": "t2"})), ["e"]) is not first, \
            "another token: another job (its token may read what the first one's cannot)"
        assert d.start(Target("org/m", None, "/c", model(env={"HF_ENDPOINT": "http://mirror"})), ["f"]) is not first
        assert d.of_model("b") is first
        held.set()
        await d.wait(first)
        assert d.start(Target("org/m", None, "/c", m), ["a"]) is not first, "a finished job is not joined"
        held.set()
        await d.shutdown()

    asyncio.run(run())


def response(status: int, url: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("GET", url))


@pytest.mark.parametrize(("err", "code", "words"), [
    (hf.GatedRepoError("403", response=response(403, "http://h/org/m/resolve/main/x")), "gated",
     ["org/m is gated", "accept its terms at http://h/org/m", "HF_TOKEN"]),
    (hf.RepositoryNotFoundError("404", response=response(404, "http://h/api/models/org/m")), "repo_not_found",
     ["org/m does not exist at http://h", "set HF_TOKEN"]),
    (hf.RevisionNotFoundError("404", response=response(404, "http://h/api/models/org/m/revision/v9")),
     "revision_not_found", ["org/m has no revision 'v9'"]),
    (hf.HfHubHTTPError("401", response=response(401, "http://h/api/models/org/m/tree/main")), "unauthorized",
     ["HF_TOKEN is missing or invalid"]),
    (httpx.ConnectError("refused"), "network", ["cannot reach http://h for org/m", "HF_ENDPOINT"]),
    (OSError(28, "No space left on device"), "disk_full", ["the disk of the cache filled up"]),
])
def test_error_mapping(err: BaseException, code: str, words: list[str]) -> None:
    got_code, message = worker_mod.explain(err, "org/m", "v9", "http://h")
    assert got_code == code
    for w in words:
        assert w in message


def test_a_dry_run_error_is_explained_by_its_cause() -> None:
    try:
        try:
            raise hf.RepositoryNotFoundError("404", response=response(404, "http://h/api/models/org/m"))
        except hf.RepositoryNotFoundError as cause:
            raise hf.DryRunError("Dry run cannot be performed") from cause
    except hf.DryRunError as err:
        assert worker_mod.explain(err, "org/m", None, "http://h")[0] == "repo_not_found"


def test_the_disk_check_refuses_with_both_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The free space is mocked at its one edge (shutil.disk_usage)."""
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100 * 10**9, 88 * 10**9, 12 * 10**9))
    why = worker_mod.disk_refusal(57_700_000_000, str(tmp_path / "not-yet" / "hub"))
    assert why and why.startswith("needs 57.7 GB, 12.0 GB free on /") and str(tmp_path / "not-yet") in why
    assert worker_mod.disk_refusal(11 * 10**9, str(tmp_path)) is None


def fake_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """Run `body` (sh) as the download worker: the jobs run `sys.executable -m hub.downloads.worker ...`."""
    script = tmp_path / "worker.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))
    return tmp_path / "pid"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_cancel_right_after_the_start_kills_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled before its worker was spawned: the worker, once spawned, is killed (it ran the whole pull)."""
    pidfile = fake_worker(tmp_path, monkeypatch, f'echo $$ > {tmp_path / "pid"}\necho \'{{"event": "checking"}}\'\n'
                          "exec sleep 60")

    async def run() -> None:
        d = Downloads(tmp_path / "logs")
        job = d.start(Target("org/m", None, str(tmp_path / "c"), model()), ["a"])
        assert (await asyncio.wait_for(d.cancel(job.id), 30)).status == "cancelled"
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.05)
        pid = int(pidfile.read_text())
        for _ in range(100):
            if gone(pid):
                break
            await asyncio.sleep(0.05)
        assert gone(pid), "the worker of a cancelled job still runs"
        await d.shutdown()

    asyncio.run(run())


def test_a_worker_line_that_is_no_event_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A line that is JSON but no object (a library printing to stdout) neither fails the job nor leaves the worker
    running unwatched."""
    fake_worker(tmp_path, monkeypatch, "echo '[1]'\necho 42\necho '{\"event\": \"done\", \"path\": \"/snap\"}'")

    async def run() -> None:
        d = Downloads(tmp_path / "logs")
        job = d.start(Target("org/m", None, str(tmp_path / "c"), model()), ["a"])
        await asyncio.wait_for(d.wait(job), 30)
        assert job.status == "done" and job.path == "/snap", (job.status, job.error)

    asyncio.run(run())
