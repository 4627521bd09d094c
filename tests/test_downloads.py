"""Downloads against a real `hub serve` and a local server that speaks the Hugging Face Hub's download protocol
(tests/hfserver.py; HF_ENDPOINT points at it, HF_HUB_CACHE at a temporary cache): pulls with progress, one job
shared by every caller, the engine's patterns, a revision pin, cancel, the errors, the disk check, `hub pull`, and a
model whose first request pulls its source (state downloading) on a command engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import HubProcess, responder_command, start_hub, wait_for
from tests.hfserver import FakeHub, tiny_checkpoint

TOKEN = "hf_test_token_not_secret"
LOCAL_SOURCE = "/nonexistent/local/model"


def vllm_model(mid: str, source: str, more: str = "") -> str:
    return f'[models.{mid}]\ntype = "text"\nengine = "vllm"\nsource = "{source}"\nmemory_gb = 1\n{more}\n'


def command_model(mid: str, source: str, more: str = "") -> str:
    return (f'[models.{mid}]\ntype = "text"\nengine = "command"\nsource = "{source}"\nallow_patterns = ["*"]\n'
            f"memory_gb = 1\n{more}\n[models.{mid}.args]\ncommand = {responder_command()}\n")


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    root = tmp_path_factory.mktemp("repos")
    server = FakeHub()
    server.add_repo("org/tiny", {"main": tiny_checkpoint(root / "tiny"),
                                 "v1": tiny_checkpoint(root / "tiny-v1", weights=4096, bin_too=False)})
    server.add_repo("org/big", {"main": tiny_checkpoint(root / "big", weights=1_000_000, bin_too=False)})
    server.add_repo("org/slow", {"main": tiny_checkpoint(root / "slow", weights=2_000_000, bin_too=False)})
    server.add_repo("org/cli", {"main": tiny_checkpoint(root / "cli", weights=300_000, bin_too=False)})
    server.add_repo("org/ui", {"main": tiny_checkpoint(root / "ui", weights=1_500_000, bin_too=False)})
    server.add_repo("org/echo", {"main": tiny_checkpoint(root / "echo", weights=100_000, bin_too=False)})
    server.add_repo("org/pat", {"main": tiny_checkpoint(root / "pat", weights=100_000)})
    server.add_repo("org/down", {"main": tiny_checkpoint(root / "down", weights=100_000, bin_too=False)})
    server.add_repo("org/huge", {"main": tiny_checkpoint(root / "huge", bin_too=False)},
                    sizes={"model.safetensors": 10**15})
    server.add_repo("org/gated", {"main": tiny_checkpoint(root / "gated", bin_too=False)}, gated=True)
    server.add_repo("org/private", {"main": tiny_checkpoint(root / "private", bin_too=False)}, token=TOKEN)
    server.add_repo("org/other-token", {"main": tiny_checkpoint(root / "other", bin_too=False)}, token="another")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-cache")


@pytest.fixture(scope="module")
def own_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("own-cache")


@pytest.fixture(scope="module")
def hub(fake: FakeHub, cache: Path, own_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    registry = "[hub]\nstart_timeout = \"6s\"\n" + "".join([
        vllm_model("tiny", "org/tiny"), vllm_model("tiny-alias", "org/tiny"),
        vllm_model("tiny-v1", "org/tiny", 'revision = "v1"'), vllm_model("nope-rev", "org/tiny", 'revision = "nope"'),
        vllm_model("big", "org/big"), vllm_model("slow", "org/slow"), vllm_model("cli", "org/cli"),
        vllm_model("missing", "org/missing"), vllm_model("huge", "org/huge"), vllm_model("gated", "org/gated"),
        vllm_model("private", "org/private"), vllm_model("other-token", "org/other-token"),
        vllm_model("local", LOCAL_SOURCE), vllm_model("ui", "org/ui"),
        command_model("echo-dl", "org/echo", 'max_wait = "2s"'), command_model("echo-patient", "org/echo"),
        vllm_model("pat-json", "org/pat", 'allow_patterns = ["*.json"]'),
        vllm_model("pat-bin", "org/pat", 'allow_patterns = ["*.bin"]'), command_model("echo-down", "org/down"),
        vllm_model("own-env", "org/other-token", f'env = {{HF_TOKEN = "another", HF_HUB_CACHE = "{own_cache}"}}'),
    ])
    env = {"HF_ENDPOINT": fake.url, "HF_HUB_CACHE": str(cache), "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_TELEMETRY": "1"}
    h = start_hub(tmp_path_factory.mktemp("hub"), registry, env=env)
    yield h
    h.stop_leaving_nothing()


def pull(hub: HubProcess, model: str) -> httpx.Response:
    return httpx.post(f"{hub.url}/hub/models/{model}/pull", timeout=30)


def job(hub: HubProcess, job_id: str) -> dict:
    r = httpx.get(f"{hub.url}/hub/downloads/{job_id}", timeout=10)
    r.raise_for_status()
    return r.json()


def finished(hub: HubProcess, job_id: str, timeout: float = 60) -> dict:
    wait_for(lambda: job(hub, job_id)["status"] in ("done", "failed", "cancelled"), f"download {job_id} ends", timeout)
    return job(hub, job_id)


def chat_in_background(hub: HubProcess, model: str) -> tuple[threading.Thread, list[httpx.Response]]:
    """A chat request sent from a thread (it waits while the model's source downloads): the thread, and the list its
    answer lands in."""
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(httpx.post(
        f"{hub.v1}/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        timeout=120)))
    thread.start()
    return thread, answers


def workers(hub: HubProcess) -> list[psutil.Process]:
    out = []
    for p in hub.engine_procs():
        try:
            if "hub.downloads.worker" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_a_pull_shows_progress_and_a_second_caller_joins_the_same_job(hub: HubProcess, fake: FakeHub) -> None:
    fake.throttle = 400_000
    first = pull(hub, "big")
    assert first.status_code == 202, first.text
    j = first.json()
    assert j["object"] == "hub.download" and j["repo"] == "org/big" and j["models"] == ["big"]
    again = pull(hub, "big")
    assert again.status_code == 202 and again.json()["id"] == j["id"], "a second pull joins the running job"
    seen = []

    def progressing() -> bool:
        now = job(hub, j["id"])
        seen.append((now["bytes_done"], now["files_done"]))
        return now["status"] in ("done", "failed", "cancelled")

    wait_for(progressing, "the pull of org/big ends", 60, every=0.1)
    end = job(hub, j["id"])
    assert end["status"] == "done", end
    assert end["bytes_total"] == end["bytes_done"] > 1_000_000 and end["files_total"] == end["files_done"] == 3
    middle = {b for b, _ in seen if 0 < b < end["bytes_total"]}
    assert len(middle) >= 2, f"bytes_done grows while it downloads: {seen}"
    assert Path(end["path"], "model.safetensors").stat().st_size == 1_000_000
    listed = httpx.get(f"{hub.url}/hub/downloads", timeout=10).json()
    assert listed["object"] == "list" and [d["id"] for d in listed["data"] if d["repo"] == "org/big"] == [j["id"]]
    assert hub.models()["big"]["download"]["id"] == j["id"]
    done = pull(hub, "big")
    assert done.status_code == 200 and done.json()["status"] == "done" and done.json()["path"] == end["path"]


def test_models_of_one_repo_share_a_job_and_the_engine_skips_duplicate_weights(hub: HubProcess,
                                                                              fake: FakeHub) -> None:
    fake.throttle = 0
    j = pull(hub, "tiny").json()
    assert sorted(j["models"]) == ["tiny", "tiny-alias"]
    end = finished(hub, j["id"])
    assert end["status"] == "done", end
    assert pull(hub, "tiny-alias").json()["status"] == "done", "the same files: complete for its twin"
    files = sorted(p.relative_to(end["path"]).as_posix() for p in Path(end["path"]).rglob("*") if p.is_file())
    assert files == ["config.json", "model.safetensors", "tokenizer.json"]
    sent = {path for repo, path in fake.sent if repo == "org/tiny"}
    assert "pytorch_model.bin" not in sent and "original/consolidated.00.pth" not in sent


def test_models_of_one_repo_with_other_patterns_do_not_share_a_job(hub: HubProcess, fake: FakeHub) -> None:
    """Two models of one repo whose patterns differ: each pull fetches its own files (joining the other's job
    would end 'done' without them, and the engine would then start offline on a cache that lacks them)."""
    fake.gate.clear()
    try:
        first = pull(hub, "pat-json").json()
        second = pull(hub, "pat-bin").json()
        assert first["models"] == ["pat-json"] and second["models"] == ["pat-bin"], (first, second)
        assert second["id"] != first["id"]
    finally:
        fake.gate.set()
    assert finished(hub, first["id"])["status"] == "done"
    end = finished(hub, second["id"])
    assert end["status"] == "done" and Path(end["path"], "pytorch_model.bin").is_file(), end


def test_a_revision_pin_pulls_that_revision(hub: HubProcess) -> None:
    main = pull(hub, "tiny").json()
    j = pull(hub, "tiny-v1").json()
    assert j["revision"] == "v1" and j["models"] == ["tiny-v1"]
    end = finished(hub, j["id"])
    assert end["status"] == "done" and end["commit"] != main["commit"]
    assert end["path"].endswith(end["commit"])
    assert Path(end["path"], "model.safetensors").stat().st_size == 4096
    assert end["cached_files"] == 2 and end["files_total"] == 1, "config and tokenizer are the same blobs as main's"
    bad = finished(hub, pull(hub, "nope-rev").json()["id"])
    assert bad["status"] == "failed" and bad["error_code"] == "revision_not_found"
    assert "org/tiny has no revision 'nope'" in bad["error"] and "models.toml" in bad["error"]


def test_cancel_kills_the_worker_and_a_new_pull_completes(hub: HubProcess, fake: FakeHub, cache: Path) -> None:
    fake.throttle = 100_000
    j = pull(hub, "slow").json()
    wait_for(lambda: job(hub, j["id"])["bytes_done"] > 0, "the slow pull has begun", 60)
    assert len(workers(hub)) == 1
    r = httpx.delete(f"{hub.url}/hub/downloads/{j['id']}", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    wait_for(lambda: not workers(hub), "the worker is gone", 30)
    assert not list(cache.glob("models--org--slow/blobs/*.incomplete")), "partial files are removed"
    again = httpx.delete(f"{hub.url}/hub/downloads/{j['id']}", timeout=10)
    assert again.status_code == 409 and "nothing to cancel" in again.json()["error"]["message"]
    fake.throttle = 0
    j2 = pull(hub, "slow").json()
    assert j2["id"] != j["id"]
    assert finished(hub, j2["id"])["status"] == "done"


@pytest.mark.parametrize(("model", "code", "words"), [
    ("missing", "repo_not_found", ["org/missing does not exist", "HF_TOKEN"]),
    ("other-token", "unauthorized", ["org/other-token", "401", "HF_TOKEN is missing or invalid"]),
    ("gated", "gated", ["org/gated is gated", "accept its terms at http://127.0.0.1", "/org/gated", "HF_TOKEN"]),
    ("huge", "disk_full", ["needs 1000.0 TB", "free on /", "free some space"]),
])
def test_failed_pulls_say_what_to_do(hub: HubProcess, model: str, code: str, words: list[str]) -> None:
    r = pull(hub, model)
    assert r.status_code == 202, r.text
    end = finished(hub, r.json()["id"])
    assert end["status"] == "failed" and end["error_code"] == code, end
    for w in words:
        assert w in end["error"], (w, end["error"])
    assert TOKEN not in json.dumps(end) and TOKEN not in hub.log.read_text()


def test_the_token_is_sent(hub: HubProcess) -> None:
    end = finished(hub, pull(hub, "private").json()["id"])
    assert end["status"] == "done", end


def test_a_models_own_token_and_cache_are_used_and_not_shown(hub: HubProcess, fake: FakeHub, own_cache: Path) -> None:
    """A model's env sets HF_TOKEN and HF_HUB_CACHE for its engine (which downloaded with them before the hub
    pulled): the pull uses them too, and the token is not on the worker's command line (any user's `ps` reads it)."""
    fake.gate.clear()
    try:
        j = pull(hub, "own-env").json()
        wait_for(lambda: workers(hub), "the worker runs", 30)
        for w in workers(hub):
            assert "another" not in " ".join(w.cmdline())
    finally:
        fake.gate.set()
    end = finished(hub, j["id"])
    assert end["status"] == "done", end
    assert end["path"].startswith(str(own_cache)), end["path"]


def test_nothing_to_pull_is_a_409_and_an_unknown_model_a_404(hub: HubProcess) -> None:
    r = pull(hub, "local")
    assert r.status_code == 409 and "its source is a local folder" in r.json()["error"]["message"]
    r = pull(hub, "nosuch")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{hub.url}/hub/downloads/dl-nosuch", timeout=10).status_code == 404


def test_hub_pull_draws_a_bar_ends_with_the_path_and_fails_in_one_line(hub: HubProcess, fake: FakeHub) -> None:
    fake.throttle = 300_000
    r = hub.cli("pull", "cli")
    assert r.returncode == 0, r.stderr
    assert "cli: org/cli downloaded: " in r.stdout and "models--org--cli/snapshots/" in r.stdout
    assert "org/cli" in r.stderr and "B/s" in r.stderr and "3/3 files" in r.stderr
    r = hub.cli("pull", "cli")
    assert r.returncode == 0 and "is in the cache" in r.stdout
    r = hub.cli("pull", "missing")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("hub: missing: failed: org/missing does not exist"), r.stderr
    r = hub.cli("pull", "--cancel", "cli")
    assert r.returncode == 1 and "has no pull under way" in r.stderr


def test_ctrl_c_cancels_the_pull_of_hub_pull(hub: HubProcess, fake: FakeHub, cache: Path) -> None:
    fake.throttle = 50_000
    for d in cache.glob("models--org--slow"):  # pulled by the cancel test: pull it from scratch
        subprocess.run(["rm", "-rf", str(d)], check=True)
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "pull", "slow", "--url", hub.url], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HUB_URL": ""})
    try:
        wait_for(lambda: any(w for w in workers(hub)), "the pull's worker runs", 60)
        wait_for(lambda: (hub.models()["slow"].get("download") or {}).get("bytes_done", 0) > 0, "bytes arrive", 60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "interrupted: cancelled the download of org/slow" in err, err
    assert hub.models()["slow"]["download"]["status"] == "cancelled"
    wait_for(lambda: not workers(hub), "the worker is gone", 30)
    fake.throttle = 0


def test_the_models_tab_pulls_with_a_live_bar_and_cancels(hub: HubProcess, fake: FakeHub) -> None:
    """The web app's handlers: "pull" streams the progress line while the Models tab's refresh draws a bar whose
    value grows; "cancel pull" stops it; a pull again completes and says where the model is."""
    import gradio as gr

    from hub.client import Admin
    from hub.ui.models import cancel_pull, pull_model, refresh_models

    admin = Admin(hub.url)
    fake.throttle = 300_000
    try:
        lines = pull_model(admin, "ui", poll=0.1)
        assert next(lines).startswith("pulling ui: ")
        values = []

        def bar_grows() -> bool:
            html = refresh_models(admin, "ui")[3]
            assert 'aria-label="download org/ui"' in html and "pull ui (org/ui)" in html, html
            values.append(float(html.split('aria-valuenow="')[1].split('"')[0]))
            return len(set(values)) >= 3 and values == sorted(values)

        wait_for(bar_grows, "the download bar of the Models tab moves", 30, every=0.3)
        assert cancel_pull(admin, "ui") == "pull of ui: cancelled"
        rest = list(lines)
        assert rest[-1] == "pull of ui cancelled", rest
        with pytest.raises(gr.Error, match="no pull of ui is under way"):
            cancel_pull(admin, "ui")
        assert "cancelled" in refresh_models(admin, "ui")[3]
    finally:
        fake.throttle = 0
    *_, last = pull_model(admin, "ui", poll=0.1)
    assert last.startswith("ui: done, 1.5 MB downloaded ("), last
    with pytest.raises(gr.Error, match="pick a model to pull"):
        next(pull_model(admin, None))


def test_a_first_request_pulls_the_source_then_starts_the_engine_offline(hub: HubProcess, fake: FakeHub,
                                                                         cache: Path) -> None:
    fake.gate.clear()  # the download is held until the test lets it go
    patient, answers = chat_in_background(hub, "echo-patient")
    try:
        wait_for(lambda: (hub.models()["echo-patient"].get("download") or {}).get("status") == "downloading",
                 "echo-patient downloads", 30)
        r = httpx.post(f"{hub.v1}/chat/completions", timeout=60,
                       json={"model": "echo-dl", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and r.headers.get("retry-after"), r.text
        msg = r.json()["error"]["message"]
        assert "echo-dl" in msg and "it is downloading: 0.0/100.0 kB" in msg and "retry later" in msg, msg
        models = hub.models()
        assert models["echo-dl"]["state"] == "downloading"
        assert models["echo-dl"]["download"]["id"] == models["echo-patient"]["download"]["id"], "one job for both"
        from hub.client import Admin
        from hub.ui.common import status_line
        line = status_line("echo-dl", Admin(hub.url).entry("echo-dl"), 4, "waiting for")
        assert line == "downloading echo-dl: 0.0/100.0 kB... 4s", line  # the Chat and Image tabs' status line
        ps = hub.cli("ps")
        assert "downloading" in ps.stdout and "└ downloading 0.0/100.0 kB" in ps.stdout, ps.stdout
        time.sleep(7)  # past start_timeout (6s): it counts from the end of the download
    finally:
        fake.gate.set()
    patient.join(120)
    assert answers and answers[0].status_code == 200, answers[0].text if answers else "no answer"
    models = hub.models()
    assert models["echo-patient"]["state"] == "ready" and models["echo-patient"]["download"]["status"] == "done"
    wait_for(lambda: hub.models()["echo-dl"]["state"] == "stopped", "echo-dl, which nobody waits for, is stopped", 30)
    assert "no request waits for it" in hub.models()["echo-dl"]["reason"]
    engine = psutil.Process(models["echo-patient"]["process"]["pid"])
    env = engine.environ()
    assert env.get("HF_HUB_OFFLINE") == "1" and env.get("HF_HUB_CACHE") == str(cache)
    jobs = httpx.get(f"{hub.url}/hub/downloads", timeout=10).json()["data"]
    assert hub.cli("down", "echo-patient").returncode == 0
    r = httpx.post(f"{hub.v1}/chat/completions", timeout=60,
                   json={"model": "echo-patient", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    again = psutil.Process(hub.models()["echo-patient"]["process"]["pid"]).environ()
    assert again.get("HF_HUB_OFFLINE") == "1", "a cold start from the cache runs offline too"
    assert httpx.get(f"{hub.url}/hub/downloads", timeout=10).json()["data"] == jobs, \
        "a cold start with its source in the cache lists no job (nothing was downloaded)"


def test_an_unload_while_downloading_stops_the_model_at_once(hub: HubProcess, fake: FakeHub) -> None:
    """`hub down` of a model whose source downloads: it is stopped now (its waiting request told so), not after the
    whole download and an engine start; the pull goes on for whoever else wants it."""
    fake.gate.clear()
    waiting, answers = chat_in_background(hub, "echo-down")
    try:
        wait_for(lambda: hub.models()["echo-down"]["state"] == "downloading", "echo-down downloads", 30)
        r = httpx.post(f"{hub.url}/hub/models/echo-down/unload", timeout=30)
        assert r.status_code == 200 and r.json()["state"] == "stopped", r.text
        waiting.join(30)
        assert answers and answers[0].status_code == 503, answers
        assert "unloaded" in answers[0].json()["error"]["message"], answers[0].text
        assert hub.models()["echo-down"]["download"]["status"] in ("queued", "checking", "downloading"), "it goes on"
    finally:
        fake.gate.set()
    end = finished(hub, hub.models()["echo-down"]["download"]["id"])
    assert end["status"] == "done" and hub.models()["echo-down"]["state"] == "stopped"
